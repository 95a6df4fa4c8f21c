r"""Whitening residuals by measurement weights (square-root information).

A residual block $r$ (the last axis of an array; leading axes index independent blocks)
with information matrix $\Lambda = \Sigma^{-1}$ has cost
$\tfrac12 r^\top \Lambda r = \tfrac12\|R r\|^2$ for any *square-root information* $R$ with
$R^\top R = \Lambda$. Whitening returns $r_w = R r$, so the weighted problem is an ordinary
least-squares problem (and composes with :mod:`jaxnlls.robust`: whiten first, then apply the
kernel, as GTSAM's robust noise models do).

Three weight kinds, each a pure function and a small Module:

| kind | argument shape (``d`` = block size) | whitened residual | information |
|---|---|---|---|
| scalar | ``(*batch,)`` (``()`` for one weight) | ``w * r`` | $w^2 I$ |
| diagonal | ``(*batch, d)`` | ``w * r`` (elementwise) | $\operatorname{diag}(w)^2$ |
| full | ``(*batch, d, d)`` | ``R @ r`` | $R^\top R$ |

The weight's ``batch`` shape must broadcast to the residual's leading shape; it is
broadcast explicitly (so ``jax_numpy_rank_promotion="raise"`` is respected): a single
``(d, d)`` matrix whitens all blocks of an ``(n, d)`` residual, an ``(n, d, d)`` stack
whitens block by block. A "per-residual weight" on scalar residuals of shape ``(n,)`` is
the diagonal case with ``d = n``.

**Conventions for the square root.** :func:`sqrt_info_from_information` and
:func:`sqrt_info_from_covariance` return, by default, the *upper*-triangular $R$ with
positive diagonal and $R^\top R = \Lambda$ (GTSAM's convention: $R = L^\top$ for the lower
Cholesky factor $\Lambda = L L^\top$). With ``triangle="lower"`` they return the
lower-triangular $R$ with $R^\top R = \Lambda$ (for a covariance $\Sigma = C C^\top$ this
is $R = C^{-1}$, computed by a triangular solve without forming $\Sigma^{-1}$). Both give
the same cost; any orthogonal $Q R$ would too. Note the lower-triangular $R$ is *not* the
lower Cholesky factor of $\Lambda$ (that one satisfies $L L^\top = \Lambda$).

Everything is batched over leading axes, follows the input dtypes, and is differentiable
with respect to the residual and the weights (Cholesky and triangular solves have JAX
derivative rules). Shape mistakes raise ``ValueError`` at trace time naming the argument.
"""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "AbstractWeight",
    "ScalarWeight",
    "DiagonalWeight",
    "SqrtInfoWeight",
    "whiten",
    "whiten_scalar",
    "whiten_diagonal",
    "whiten_sqrt_info",
    "sqrt_info_from_information",
    "sqrt_info_from_covariance",
]


# --------------------------------------------------------------------------------------
# checks


def _as_float(name: str, a) -> Array:
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    return a


def _concrete(a) -> np.ndarray | None:
    """``a`` as a numpy array, or None when it is traced (and so cannot be checked)."""
    return None if isinstance(a, jax.core.Tracer) else np.asarray(a)


def _check_finite(fn: str, name: str, a, why: str = "") -> None:
    v = _concrete(a)
    if v is not None and not np.all(np.isfinite(v)):
        raise ValueError(f"{fn}: {name} has non-finite entries{why}")


def _check_sigma(fn: str, sigma) -> None:
    v = _concrete(sigma)
    if v is not None and not np.all(np.isfinite(v) & (v > 0)):
        # sqrt_info = 1/sigma would be inf (sigma = 0) or silently flip sign (sigma < 0)
        raise ValueError(f"{fn}: sigma must be positive and finite, got {v}")


def _check_residual(fn: str, r: Array) -> None:
    if r.ndim < 1:
        raise ValueError(
            f"{fn}: residual r has shape {r.shape}; expected at least one axis (the block)"
        )


def _broadcast_batch(fn: str, name: str, w: Array, w_core: int, r: Array) -> Array:
    """Broadcast ``w``'s batch axes (all but its last ``w_core``) to ``r``'s batch axes."""
    batch = r.shape[:-1]
    w_batch = w.shape[: w.ndim - w_core]
    core = w.shape[w.ndim - w_core :]
    try:
        out_batch = jnp.broadcast_shapes(w_batch, batch)
    except ValueError:
        out_batch = None
    if out_batch != batch:
        raise ValueError(
            f"{fn}: {name} has batch shape {w_batch} (full shape {w.shape}), which does not "
            f"broadcast to the residual's batch shape {batch} (residual shape {r.shape})"
        )
    return jnp.broadcast_to(w, batch + core)


def _check_square(fn: str, name: str, a: Array, *, d: int | None = None) -> None:
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or (d is not None and a.shape[-1] != d):
        if d is None:
            expected = "(..., n, n)"
            suffix = ""
        else:
            expected = str(a.shape[:-2] + (d, d)) if a.ndim >= 2 else str((d, d))
            suffix = f" for a residual of size {d}"
        raise ValueError(f"{fn}: {name} has shape {a.shape}; expected {expected}{suffix}")


# --------------------------------------------------------------------------------------
# pure functions


def whiten_scalar(
    r: Float[Array, "*batch d"], sqrt_info: Float[ArrayLike, "*wbatch"]
) -> Float[Array, "*batch d"]:
    r"""Whiten blocks by one scalar square-root information each: ``sqrt_info[..., None] * r``.

    ``sqrt_info`` is $1/\sigma$ for an isotropic standard deviation $\sigma$; its shape must
    broadcast to ``r.shape[:-1]``. Information: ``sqrt_info**2 * I``.

    Raises:
        ValueError: ``r`` has no axis, or ``sqrt_info`` does not broadcast to its batch shape.

    Differentiability:
        Linear in ``r``; differentiable in ``sqrt_info``.
    """
    fn = "whiten_scalar"
    r = _as_float("r", r)
    w = _as_float("sqrt_info", sqrt_info)
    _check_residual(fn, r)
    w = _broadcast_batch(fn, "sqrt_info", w, 0, r)
    return w[..., None] * r


def whiten_diagonal(
    r: Float[Array, "*batch d"], sqrt_info: Float[ArrayLike, "*wbatch d"]
) -> Float[Array, "*batch d"]:
    r"""Whiten blocks by a diagonal square-root information: ``sqrt_info * r`` elementwise.

    ``sqrt_info[..., i]`` is $1/\sigma_i$; information ``diag(sqrt_info**2)``. The last axis
    must equal the block size ``d = r.shape[-1]``; leading axes broadcast to ``r.shape[:-1]``.

    Raises:
        ValueError: last axis of ``sqrt_info`` is not ``d``, or its batch does not broadcast.

    Differentiability:
        Linear in ``r``; differentiable in ``sqrt_info``.
    """
    fn = "whiten_diagonal"
    r = _as_float("r", r)
    w = _as_float("sqrt_info", sqrt_info)
    _check_residual(fn, r)
    d = r.shape[-1]
    if w.ndim < 1 or w.shape[-1] != d:
        raise ValueError(
            f"{fn}: sqrt_info has shape {w.shape}; expected (..., {d}) for a residual of size {d}"
        )
    w = _broadcast_batch(fn, "sqrt_info", w, 1, r)
    return w * r


def whiten_sqrt_info(
    r: Float[Array, "*batch d"], sqrt_info: Float[ArrayLike, "*wbatch d d"]
) -> Float[Array, "*batch d"]:
    r"""Whiten blocks by a full square-root information: ``sqrt_info @ r`` per block.

    ``sqrt_info`` is any $R$ with $R^\top R = \Lambda$ (e.g. from
    :func:`sqrt_info_from_information` or :func:`sqrt_info_from_covariance`); it need not be
    triangular. Shape ``(*wbatch, d, d)`` with ``wbatch`` broadcasting to ``r.shape[:-1]``.

    Raises:
        ValueError: ``sqrt_info`` is not ``(..., d, d)`` for ``d = r.shape[-1]``, or its batch
            does not broadcast (e.g. "sqrt_info has shape (3, 2); expected (3, 3) for a
            residual of size 3").

    Differentiability:
        Linear in ``r``; differentiable in ``sqrt_info``.
    """
    fn = "whiten_sqrt_info"
    r = _as_float("r", r)
    R = _as_float("sqrt_info", sqrt_info)
    _check_residual(fn, r)
    _check_square(fn, "sqrt_info", R, d=r.shape[-1])
    R = _broadcast_batch(fn, "sqrt_info", R, 2, r)
    return jnp.einsum("...ij,...j->...i", R, r)


# --------------------------------------------------------------------------------------
# square roots


def _flip(a: Array) -> Array:
    return jnp.flip(a, axis=(-2, -1))


def sqrt_info_from_information(
    information: Float[ArrayLike, "*batch d d"],
    *,
    triangle: Literal["upper", "lower"] = "upper",
) -> Float[Array, "*batch d d"]:
    r"""Triangular square-root information $R$ with $R^\top R = \Lambda$ (positive diagonal).

    Args:
        information: symmetric positive-definite $\Lambda$, shape ``(*batch, d, d)``.
        triangle: ``"upper"`` (default, GTSAM): $R = L^\top$ with $\Lambda = L L^\top$ the lower
            Cholesky factorization. ``"lower"``: the lower-triangular $R$ with
            $R^\top R = \Lambda$ (a reversed Cholesky; *not* the lower Cholesky factor).

    Raises:
        ValueError: ``information`` is not ``(..., d, d)``; bad ``triangle``.

    Only the lower triangle of ``information`` (diagonal included) is read, for either
    ``triangle``; the strict upper triangle is ignored. A concrete matrix that is not
    positive definite raises ``ValueError``; a traced one gives NaNs (it cannot be checked).

    Differentiability:
        Differentiable in the lower triangle of ``information`` (through the Cholesky
        factorization); the upper triangle gets zero cotangent.
    """
    fn = "sqrt_info_from_information"
    info = _as_float("information", information)
    _check_square(fn, "information", info)
    # Mirror the lower triangle explicitly: jnp.linalg.cholesky would average with the
    # transpose, i.e. read the upper triangle too.
    info = jnp.tril(info) + jnp.swapaxes(jnp.tril(info, -1), -1, -2)
    if triangle == "upper":
        R = jnp.swapaxes(jnp.linalg.cholesky(info), -1, -2)
    elif triangle == "lower":
        # flip(Λ) = C Cᵀ  =>  Λ = flip(C) flip(C)ᵀ with flip(C) upper, so R = flip(C)ᵀ is lower.
        C = jnp.linalg.cholesky(_flip(info))
        R = jnp.swapaxes(_flip(C), -1, -2)
    else:
        raise ValueError(f"{fn}: triangle must be 'upper' or 'lower', got {triangle!r}")
    _check_finite(fn, "the square root", R, " (information is not positive definite)")
    return R


def sqrt_info_from_covariance(
    covariance: Float[ArrayLike, "*batch d d"],
    *,
    triangle: Literal["upper", "lower"] = "upper",
) -> Float[Array, "*batch d d"]:
    r"""Triangular square-root information $R$ with $R^\top R = \Sigma^{-1}$ (positive diagonal).

    Computed by one Cholesky factorization of the covariance and a triangular solve (no
    explicit inverse of $\Sigma$).

    Args:
        covariance: symmetric positive-definite $\Sigma$, shape ``(*batch, d, d)``.
        triangle: ``"upper"`` (default): the same $R$ as
            ``sqrt_info_from_information(inv(covariance))``. ``"lower"``: $R = C^{-1}$ with
            $\Sigma = C C^\top$ the lower Cholesky factorization.

    Raises:
        ValueError: ``covariance`` is not ``(..., d, d)``; bad ``triangle``; a concrete
            ``covariance`` is not positive definite (a traced one gives NaNs).

    Differentiability:
        Differentiable in ``covariance``.
    """
    fn = "sqrt_info_from_covariance"
    cov = _as_float("covariance", covariance)
    _check_square(fn, "covariance", cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    if triangle == "lower":
        C = jnp.linalg.cholesky(cov)
        R = solve_triangular(C, eye, lower=True)
    elif triangle == "upper":
        # flip(Σ) = C Cᵀ  =>  Σ = V Vᵀ with V = flip(C) upper; R = V⁻¹ is upper and
        # Rᵀ R = V⁻ᵀ V⁻¹ = Σ⁻¹.
        V = _flip(jnp.linalg.cholesky(_flip(cov)))
        R = solve_triangular(V, eye, lower=False)
    else:
        raise ValueError(f"{fn}: triangle must be 'upper' or 'lower', got {triangle!r}")
    _check_finite(fn, "the square root", R, " (covariance is not positive definite)")
    return R


# --------------------------------------------------------------------------------------
# Modules


class AbstractWeight(eqx.Module):
    """A measurement weight: ``whiten(r)`` maps a residual block to its whitened form."""

    @abc.abstractmethod
    def whiten(self, r: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """The whitened residual ``R r`` (same shape and dtype as ``r``)."""

    @abc.abstractmethod
    def information(self, d: int) -> Float[Array, "*wbatch d d"]:
        r"""The information matrix $\Lambda = R^\top R$ for blocks of size ``d``."""


class ScalarWeight(AbstractWeight):
    r"""One scalar square-root information per block (isotropic noise $\sigma I$, $w = 1/\sigma$).

    ``sqrt_info`` is traced: batch it, vmap it, differentiate it. A zero entry gives its
    block zero information (the block is ignored); a concrete non-finite one raises
    ``ValueError``.
    """

    sqrt_info: Float[Array, "*wbatch"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        _check_finite("ScalarWeight", "sqrt_info", self.sqrt_info)

    @classmethod
    def from_sigma(cls, sigma: Float[ArrayLike, "*wbatch"]) -> ScalarWeight:
        """Weight for isotropic standard deviation ``sigma > 0`` (``sqrt_info = 1/sigma``)."""
        _check_sigma("ScalarWeight.from_sigma", sigma)
        return cls(1.0 / jnp.asarray(sigma))

    def whiten(self, r):
        return whiten_scalar(r, self.sqrt_info)

    def information(self, d: int):
        w2 = jnp.square(self.sqrt_info)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=w2.dtype), w2.shape + (d, d))
        return w2[..., None, None] * eye


class DiagonalWeight(AbstractWeight):
    r"""Diagonal square-root information (independent noise $\sigma_i$, ``sqrt_info = 1/sigma``)."""

    sqrt_info: Float[Array, "*wbatch d"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        if jnp.ndim(self.sqrt_info) < 1:
            raise ValueError(
                f"DiagonalWeight: sqrt_info has shape {jnp.shape(self.sqrt_info)}; expected "
                "(..., d) (use ScalarWeight for one scalar per block)"
            )
        _check_finite("DiagonalWeight", "sqrt_info", self.sqrt_info)

    @classmethod
    def from_sigma(cls, sigma: Float[ArrayLike, "*wbatch d"]) -> DiagonalWeight:
        """Weight for per-component standard deviations ``sigma > 0``."""
        _check_sigma("DiagonalWeight.from_sigma", sigma)
        return cls(1.0 / jnp.asarray(sigma))

    def whiten(self, r):
        return whiten_diagonal(r, self.sqrt_info)

    def information(self, d: int):
        if self.sqrt_info.shape[-1] != d:
            raise ValueError(
                f"DiagonalWeight.information: sqrt_info has shape {self.sqrt_info.shape}; "
                f"expected (..., {d})"
            )
        w2 = jnp.square(self.sqrt_info)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=w2.dtype), w2.shape + (d,))
        return w2[..., :, None] * eye


class SqrtInfoWeight(AbstractWeight):
    r"""Full square-root information $R$ (``(*wbatch, d, d)``, $R^\top R = \Lambda$)."""

    sqrt_info: Float[Array, "*wbatch d d"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        _check_square("SqrtInfoWeight", "sqrt_info", self.sqrt_info)
        _check_finite("SqrtInfoWeight", "sqrt_info", self.sqrt_info)

    @classmethod
    def from_information(
        cls,
        information: Float[ArrayLike, "*wbatch d d"],
        *,
        triangle: Literal["upper", "lower"] = "upper",
    ) -> SqrtInfoWeight:
        """Weight from an information matrix (see :func:`sqrt_info_from_information`)."""
        return cls(sqrt_info_from_information(information, triangle=triangle))

    @classmethod
    def from_covariance(
        cls,
        covariance: Float[ArrayLike, "*wbatch d d"],
        *,
        triangle: Literal["upper", "lower"] = "upper",
    ) -> SqrtInfoWeight:
        """Weight from a covariance matrix (see :func:`sqrt_info_from_covariance`)."""
        return cls(sqrt_info_from_covariance(covariance, triangle=triangle))

    def whiten(self, r):
        return whiten_sqrt_info(r, self.sqrt_info)

    def information(self, d: int):
        _check_square("SqrtInfoWeight.information", "sqrt_info", self.sqrt_info, d=d)
        R = self.sqrt_info
        return jnp.einsum("...ki,...kj->...ij", R, R)


def whiten(r: Float[Array, "*batch d"], weight: AbstractWeight) -> Float[Array, "*batch d"]:
    """Whiten ``r`` by a weight Module (``weight.whiten(r)``); see the module docstring.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxnlls.weights import SqrtInfoWeight, whiten
        >>> w = SqrtInfoWeight.from_covariance(jnp.diag(jnp.array([4.0, 1.0])))
        >>> print(whiten(jnp.array([2.0, 3.0]), w))
        [1. 3.]

    Differentiability:
        Linear in ``r``; differentiable in the weight's ``sqrt_info``.
    """
    if not isinstance(weight, AbstractWeight):
        raise TypeError(
            f"whiten: weight must be a ScalarWeight, DiagonalWeight or SqrtInfoWeight, got "
            f"{type(weight).__name__} (use whiten_scalar/whiten_diagonal/whiten_sqrt_info for "
            "raw arrays)"
        )
    return weight.whiten(r)
