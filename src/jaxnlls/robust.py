r"""Robust loss kernels, exact square-root robustification, and graduated non-convexity.

A robust kernel replaces the squared norm of a residual block by a slower-growing function
of it. With $r$ a residual block (the last axis of an array), $s = \|r\|^2$ and $c$ the
kernel's ``scale``, the cost of the block is

$$ \tfrac12 \rho(s), \qquad \rho(0) = 0,\quad \rho'(0) = 1,\quad \rho(s) \approx s
\text{ near } 0 $$

(the Ceres / GTSAM convention: the kernel acts on the *squared* norm, and a block whose
residual is small compared with $c$ costs the same as in plain least squares). With
$x = s / c^2$ and $u = \sqrt{s} / c = \|r\| / c$:

| kernel | $\rho(s)$ | $\rho'(s)$ (IRLS weight) | bounded? |
|---|---|---|---|
| :class:`L2` (``Trivial``) | $s$ | $1$ | no |
| :class:`Huber` | $s$ if $s \le c^2$, else $2c\sqrt{s} - c^2$ | $\min(1, c/\sqrt s)$ | no |
| :class:`SoftL1` | $2c^2(\sqrt{1 + x} - 1)$ | $1/\sqrt{1 + x}$ | no (linear) |
| :class:`Cauchy` | $c^2 \log(1 + x)$ | $1/(1 + x)$ | no (log) |
| :class:`Fair` | $2c^2(u - \log(1 + u))$ | $1/(1 + u)$ | no (linear) |
| :class:`GemanMcClure` | $c^2 x / (1 + x) = s c^2 / (c^2 + s)$ | $1/(1 + x)^2$ | $\rho \to c^2$ |
| :class:`Welsch` | $c^2 (1 - e^{-x})$ | $e^{-x}$ | $\rho \to c^2$ |
| :class:`Tukey` | $\tfrac{c^2}{3}(1-(1-x)^3)$ for $x \le 1$, else $c^2/3$ | $(1-x)^2$, $0$ | yes |
| :class:`Arctan` | $c^2 \arctan(x)$ | $1/(1 + x^2)$ | $\rho \to \pi c^2/2$ |
| :class:`DCS` | $s$ if $x \le 1$, else $c^2(3 - 4/(1 + x))$ | $1$, else $4/(1 + x)^2$ | $\rho \to 3c^2$ |
| :class:`TruncatedLS` | $\min(s, c^2)$ | $1$ for $s < c^2$, else $0$ | yes |
| :class:`GNCTruncatedLS` | Yang et al.'s GNC-TLS surrogate (see the class) | piecewise | yes |

``rho(s)`` and ``weight(s)`` are elementwise functions of $s$ (any shape); ``weight`` is
$\rho'(s)$, the iteratively-reweighted-least-squares weight (for a scalar residual $e$,
$\partial_e \tfrac12\rho(e^2) = \rho'(e^2)\, e$).

Classical 95%-efficiency tuning constants for unit-variance residuals (pass them as
``scale``; the default is ``1.0``): Huber 1.345, Cauchy 2.3849, Fair 1.3998, Welsch 2.9846,
Tukey 4.6851.

**Exact square-root robustification.** ``loss.apply(r)`` (or :func:`robustify`) returns

$$ r' = \sqrt{\rho(s)/s}\; r, \qquad \tfrac12\|r'\|^2 = \tfrac12\rho(s) \text{ exactly}, $$

so a robust problem is an ordinary least-squares problem ``residual_fn(x, p) =
loss.apply(r(x, p))`` that every jaxnlls solver accepts unchanged. The factor
$\sqrt{\rho(s)/s}$ is evaluated in a closed form that is accurate near $s = 0$ (series
branches) and uses the double-``where`` trick, so the value *and* all derivatives of $r'$
are finite at $r = 0$ (where $r' = r$ to first order) and for large $r$ (bounded kernels
saturate: $\|r'\| \to \sqrt{\rho(\infty)}$).

Because the cost $\tfrac12\|r'\|^2$ *is* the robust cost, its minimizers, stationary
points and gradients are exactly those of $\tfrac12\sum\rho(s)$, and jaxnlls's implicit
gradients (``ImplicitAdjoint(hessian="exact")``) of a robust solve are exact, including
with respect to ``scale``. What changes is only the Gauss-Newton curvature. Gauss-Newton
on $r'$ uses the exact Jacobian of $r'$; with $n = r/\|r\|$ and $J = \partial r/\partial x$,

$$ J' = \sqrt{\rho/s}\,(I - n n^\top) J + \rho'\sqrt{s/\rho}\; n n^\top J . $$

This is the "square-root" robustification, *not* Triggs' correction used by Ceres (which
uses $\sqrt{\rho'}\,(I - \alpha n n^\top) J$ with $\alpha$ chosen from $\rho''$ so that the
curvature along $n$ approximates $\rho' + 2s\rho''$, clamped when that is negative).
Implications:

- $J'^\top J'$ is positive semi-definite by construction (nothing to clamp) and the
  gradient $J'^\top r' = \tfrac12\nabla_x\sum\rho$ is exact, so GN/LM converge to the same
  stationary points as any other robust solver; only step lengths and iteration counts
  differ from Ceres.
- Curvature along $n$ is $\rho'^2 s/\rho$, which for the concave kernels here lies in
  $[0, \rho']$ (below the IRLS weight) and is $0$ where $\rho' = 0$: a scalar residual beyond
  Tukey's cutoff contributes neither gradient nor curvature. Across $n$ (blocks of size
  $> 1$ only) it is $\rho/s \ge \rho'$, so a saturated vector block still adds some
  tangential curvature (acts like extra damping) but no gradient.
- ``ImplicitAdjoint(hessian="gauss_newton")`` uses $J'^\top J'$ and is only approximate for
  robust problems (the true Hessian contains $\rho''$ terms and may be indefinite for
  redescending kernels); the default ``hessian="exact"`` is exact.

**Graduated non-convexity.** :func:`gnc_solve` solves a sequence of problems with the
kernel's scale enlarged to $c\sqrt{\mu_k}$, $\mu_0 \gg 1 \to \mu_{K-1} = 1$, each warm
started from the previous solution (Yang, Antonante, Tzoumas, Carlone, "Graduated
Non-Convexity for Robust Spatial Perception", RA-L 2020). For :class:`GemanMcClure` this is
exactly their GNC-GM surrogate $\rho_\mu(s) = \mu c^2 s/(\mu c^2 + s)$. For
:class:`TruncatedLS` it runs their GNC-TLS continuation (:class:`GNCTruncatedLS`, $\mu$
increasing) and finishes with TLS.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PyTree

__all__ = [
    "AbstractRobustLoss",
    "AbstractScaledLoss",
    "L2",
    "Trivial",
    "Huber",
    "SoftL1",
    "Cauchy",
    "Fair",
    "GemanMcClure",
    "Welsch",
    "Tukey",
    "Arctan",
    "DCS",
    "TruncatedLS",
    "GNCTruncatedLS",
    "robustify",
    "gnc_solve",
    "gnc_schedule",
]


# --------------------------------------------------------------------------------------
# helpers


def _float_dtype(s: Array):
    dtype = jnp.result_type(s)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"robust kernels need a floating-point argument, got dtype {dtype}")
    return dtype


def _safe_div(num_fn: Callable[[Array], Array], x: Array, small: float,
              coeffs: tuple[float, ...]):
    """``num_fn(x) / x`` for ``x > small``, the power series ``coeffs`` in ``x`` otherwise,
    with NaN-free gradients: each branch sees only arguments of its own range (the series at a
    large ``x`` would overflow, and ``inf * 0`` in the unused branch's derivative is NaN)."""
    big = x > small
    x_big = jnp.where(big, x, jnp.ones_like(x))
    x_small = jnp.where(big, jnp.zeros_like(x), x)
    return jnp.where(big, num_fn(x_big) / x_big, _horner(coeffs, x_small))


def _horner(coeffs: tuple[float, ...], x: Array) -> Array:
    """``coeffs[0] + coeffs[1] x + ...`` evaluated by Horner's rule."""
    out = jnp.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def _stop_gradient_tree(tree):
    return jax.tree.map(lambda a: lax.stop_gradient(a) if eqx.is_array(a) else a, tree)


def _check_positive(owner: str, name: str, value) -> None:
    """Reject a concrete non-positive or non-finite kernel parameter (traced ones pass)."""
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value)
    if v.size and not np.all(np.isfinite(v) & (v > 0)):
        raise ValueError(f"{owner}: {name} must be positive and finite, got {v}")


def _scale_like(owner: str, name: str, value, s: Array) -> Array:
    """``value`` (a scalar or one per block) cast to ``s``'s dtype and broadcast to its shape.

    A shape that would broadcast ``s`` to a larger shape is an error: it would silently
    create extra residual blocks (e.g. scale ``(n, 1)`` against ``n`` blocks gives ``n × n``).
    """
    c = jnp.asarray(value).astype(s.dtype)
    try:
        ok = jnp.broadcast_shapes(c.shape, s.shape) == s.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{owner}: {name} has shape {c.shape}, which does not broadcast to the residual's "
            f"block (batch) shape {s.shape}; use a scalar or one value per block"
        )
    return jnp.broadcast_to(c, s.shape)


def _safe_sqrt(s: Array) -> Array:
    """``sqrt(s)`` with a zero (not infinite) derivative at ``s = 0``."""
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, jnp.ones_like(s))), jnp.zeros_like(s))


# --------------------------------------------------------------------------------------
# base classes


class AbstractRobustLoss(eqx.Module):
    r"""A robust kernel $\rho$ of the squared norm $s = \|r\|^2$; block cost $\tfrac12\rho(s)$.

    Subclasses implement ``rho``, ``weight`` ($\rho'$) and ``rho_ratio`` ($\rho(s)/s$, stable
    at $s = 0$ where it equals 1). All three are elementwise in ``s`` and follow its dtype.
    """

    @abc.abstractmethod
    def rho(self, s: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""The kernel $\rho(s)$ of the squared norm ``s`` (``rho(s) ≈ s`` near 0)."""

    @abc.abstractmethod
    def weight(self, s: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""$\rho'(s)$, the IRLS weight of a block with squared norm ``s`` (1 at ``s = 0``)."""

    @abc.abstractmethod
    def rho_ratio(self, s: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""$\rho(s)/s$, evaluated stably (equal to 1 at ``s = 0``, finite gradients there)."""

    def apply(
        self, r: Float[Array, "*batch *block"], *, block_ndim: int = 1
    ) -> Float[Array, "*batch *block"]:
        r"""Robustified residual $r' = \sqrt{\rho(s)/s}\, r$, so $\|r'\|^2 = \rho(s)$ exactly.

        Args:
            r: residual blocks. The trailing ``block_ndim`` axes form one block (its squared
                norm is ``s``); leading axes index independent blocks.
            block_ndim: number of trailing axes per block. ``1`` (default): the last axis is
                the block (e.g. ``(n_points, 2)`` reprojection errors). ``0``: every scalar
                is its own block (e.g. ``(n_points,)`` line-fit residuals; equivalent to
                ``r[..., None]`` with ``block_ndim=1``).

        A batched ``scale`` (one per block) must have the shape of ``r``'s batch axes (or
        broadcast to it without enlarging it); a scalar scale applies to every block.

        Returns:
            An array of the same shape and dtype as ``r``.

        Raises:
            ValueError: ``r`` has fewer than ``block_ndim`` axes, or a batched ``scale`` does
                not broadcast to its batch axes.
            TypeError: ``r`` is not floating point.

        Differentiability:
            Differentiable to any order in ``r`` and in the kernel's ``scale`` (a traced field),
            including at ``r = 0`` and beyond the cutoff of saturating kernels.
        """
        r = jnp.asarray(r)
        _float_dtype(r)
        if block_ndim < 0 or r.ndim < block_ndim:
            raise ValueError(
                f"robust loss apply: residual r has shape {r.shape} but block_ndim={block_ndim} "
                f"needs at least {block_ndim} axes"
            )
        axes = tuple(range(r.ndim - block_ndim, r.ndim))
        s = jnp.sum(r * r, axis=axes)  # shape: r's batch (so a batched scale lines up)
        factor = jnp.sqrt(self.rho_ratio(s))
        return jnp.reshape(factor, factor.shape + (1,) * block_ndim) * r

    def cost(self, r: Float[Array, "*batch *block"], *, block_ndim: int = 1) -> Float[Array, ""]:
        r"""Total robust cost $\tfrac12\sum_{\text{blocks}}\rho(\|r_b\|^2)$ of ``r``."""
        r = jnp.asarray(r)
        _float_dtype(r)
        if block_ndim < 0 or r.ndim < block_ndim:
            raise ValueError(
                f"robust loss cost: residual r has shape {r.shape} but block_ndim={block_ndim} "
                f"needs at least {block_ndim} axes"
            )
        axes = tuple(range(r.ndim - block_ndim, r.ndim))
        s = jnp.sum(r * r, axis=axes)
        return 0.5 * jnp.sum(self.rho(s))


class AbstractScaledLoss(AbstractRobustLoss):
    """A robust kernel with a traced ``scale`` $c$ (a residual norm; gradients flow into it).

    ``scale`` is stored as a JAX array (Python floats are converted), so it is a pytree leaf:
    it can be vmapped over, passed through ``jaxnlls.solve`` as part of ``params``, and
    differentiated. It must be positive and finite: a concrete value that is not raises
    ``ValueError`` at construction (a traced one cannot be checked). A batched scale must
    broadcast to the shape of ``s`` (one value per block) without enlarging it.
    """

    scale: eqx.AbstractVar[Float[Array, "*scale_batch"]]

    def __check_init__(self):
        _check_positive(type(self).__name__, "scale", self.scale)

    def with_scale(self, scale: Float[ArrayLike, "*scale_batch"]) -> AbstractScaledLoss:
        """A copy of this kernel with ``scale`` replaced (used by graduated non-convexity)."""
        _check_positive(type(self).__name__, "scale", scale)
        return eqx.tree_at(lambda loss: loss.scale, self, jnp.asarray(scale))

    def _x(self, s: Float[ArrayLike, "*shape"]) -> tuple[Array, Array, Array]:
        s = jnp.asarray(s)
        _float_dtype(s)
        c2 = jnp.square(_scale_like(type(self).__name__, "scale", self.scale, s))
        return s, c2, s / c2


# --------------------------------------------------------------------------------------
# kernels


class L2(AbstractRobustLoss):
    r"""Plain least squares: $\rho(s) = s$, $\rho'(s) = 1$, ``apply(r) == r``."""

    def rho(self, s):
        s = jnp.asarray(s)
        _float_dtype(s)
        return s

    def weight(self, s):
        s = jnp.asarray(s)
        _float_dtype(s)
        return jnp.ones_like(s)

    def rho_ratio(self, s):
        s = jnp.asarray(s)
        _float_dtype(s)
        return jnp.ones_like(s)


Trivial = L2
"""Alias of :class:`L2` (Ceres' name)."""


class Huber(AbstractScaledLoss):
    r"""Huber: quadratic up to $\|r\| = c$, linear beyond.

    $\rho(s) = s$ for $s \le c^2$, $2c\sqrt{s} - c^2$ otherwise; $\rho'(s) = \min(1, c/\sqrt s)$.
    Convex. 95% efficiency at $c = 1.345\sigma$.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        s_out = jnp.where(inner, c2, s)  # safe: sqrt argument >= c^2 > 0
        return jnp.where(inner, s, 2.0 * jnp.sqrt(s_out * c2) - c2)

    def weight(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_out = jnp.where(inner, jnp.ones_like(x), x)
        return jnp.where(inner, jnp.ones_like(x), lax.rsqrt(x_out))

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_out = jnp.where(inner, jnp.ones_like(x), x)
        return jnp.where(inner, jnp.ones_like(x), (2.0 * jnp.sqrt(x_out) - 1.0) / x_out)


class SoftL1(AbstractScaledLoss):
    r"""Soft L1 (pseudo-Huber, Ceres ``SoftLOneLoss``): smooth, quadratic near 0, linear far.

    $\rho(s) = 2c^2(\sqrt{1 + s/c^2} - 1)$, $\rho'(s) = 1/\sqrt{1 + s/c^2}$. Convex.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        return 2.0 * s / (jnp.sqrt(1.0 + x) + 1.0)

    def weight(self, s):
        s, c2, x = self._x(s)
        return lax.rsqrt(1.0 + x)

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        return 2.0 / (jnp.sqrt(1.0 + x) + 1.0)


class Cauchy(AbstractScaledLoss):
    r"""Cauchy (Lorentzian): $\rho(s) = c^2\log(1 + s/c^2)$, $\rho'(s) = 1/(1 + s/c^2)$.

    Non-convex (for $\|r\| > c$), unbounded but only logarithmic. 95% efficiency at
    $c = 2.3849\sigma$.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        return c2 * jnp.log1p(x)

    def weight(self, s):
        s, c2, x = self._x(s)
        return 1.0 / (1.0 + x)

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        small = _eps(x.dtype) ** (1.0 / 4.0)
        return _safe_div(jnp.log1p, x, small, (1.0, -1.0 / 2, 1.0 / 3, -1.0 / 4, 1.0 / 5))


class Fair(AbstractScaledLoss):
    r"""Fair: $\rho(s) = 2c^2(u - \log(1 + u))$ with $u = \sqrt{s}/c$; $\rho'(s) = 1/(1 + u)$.

    Convex, $C^2$ in $r$, asymptotically linear. 95% efficiency at $c = 1.3998\sigma$.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def _u(self, s):
        s, c2, x = self._x(s)
        return s, c2, _safe_sqrt(x)

    def rho(self, s):
        s, c2, u = self._u(s)
        return s * self._ratio_u(u)

    def weight(self, s):
        s, c2, u = self._u(s)
        return 1.0 / (1.0 + u)

    def rho_ratio(self, s):
        s, c2, u = self._u(s)
        return self._ratio_u(u)

    @staticmethod
    def _ratio_u(u):
        # 2 (u - log1p(u)) / u^2; the subtraction cancels for small u, so use the series
        # 2 * sum_{k>=2} (-u)^(k-2) / k there (error ~ u^7 / 4.5 at the threshold eps^(1/8)).
        small = _eps(u.dtype) ** (1.0 / 8.0)
        big = u > small
        u_safe = jnp.where(big, u, jnp.ones_like(u))
        series = _horner(tuple(2.0 * (-1.0) ** k / (k + 2) for k in range(7)),
                         jnp.where(big, jnp.zeros_like(u), u))  # no overflow at large u
        return jnp.where(big, 2.0 * (u_safe - jnp.log1p(u_safe)) / (u_safe * u_safe), series)


class GemanMcClure(AbstractScaledLoss):
    r"""Geman-McClure: $\rho(s) = s c^2/(c^2 + s)$, $\rho'(s) = c^4/(c^2 + s)^2$.

    Bounded ($\rho \to c^2$), redescending, non-convex beyond $\|r\| = c/\sqrt3$. GNC's
    surrogate $\rho_\mu$ is Geman-McClure with scale $c\sqrt\mu$ (see :func:`gnc_solve`).
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        return s / (1.0 + x)

    def weight(self, s):
        s, c2, x = self._x(s)
        return 1.0 / jnp.square(1.0 + x)

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        return 1.0 / (1.0 + x)


class Welsch(AbstractScaledLoss):
    r"""Welsch (Leclerc): $\rho(s) = c^2(1 - e^{-s/c^2})$, $\rho'(s) = e^{-s/c^2}$.

    Bounded ($\rho \to c^2$), redescending, smooth. 95% efficiency at $c = 2.9846\sigma$.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        return -c2 * jnp.expm1(-x)

    def weight(self, s):
        s, c2, x = self._x(s)
        return jnp.exp(-x)

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        small = _eps(x.dtype) ** (1.0 / 4.0)
        return _safe_div(lambda t: -jnp.expm1(-t), x, small,
                         (1.0, -1.0 / 2, 1.0 / 6, -1.0 / 24, 1.0 / 120))


class Tukey(AbstractScaledLoss):
    r"""Tukey biweight (bisquare): zero influence beyond $\|r\| = c$.

    $\rho(s) = \tfrac{c^2}{3}\big(1 - (1 - s/c^2)^3\big)$ for $s \le c^2$ and the constant
    $c^2/3$ beyond; $\rho'(s) = (1 - s/c^2)^2$ for $s \le c^2$, $0$ beyond. $\rho$ is $C^2$ in
    $s$ at the cutoff. 95% efficiency at $c = 4.6851\sigma$.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_in = jnp.where(inner, x, jnp.ones_like(x))
        s_in = jnp.where(inner, s, c2)
        # c^2/3 (1 - (1-x)^3) = s (1 - x + x^2/3), without cancellation near 0
        return jnp.where(inner, s_in * _horner((1.0, -1.0, 1.0 / 3), x_in), c2 / 3.0)

    def weight(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        return jnp.where(inner, jnp.square(1.0 - jnp.where(inner, x, jnp.ones_like(x))), 0.0)

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_in = jnp.where(inner, x, jnp.ones_like(x))
        x_out = jnp.where(inner, jnp.ones_like(x), x)
        return jnp.where(inner, _horner((1.0, -1.0, 1.0 / 3), x_in), 1.0 / (3.0 * x_out))


class Arctan(AbstractScaledLoss):
    r"""Arctan (SciPy ``loss="arctan"``, Ceres ``ArctanLoss(c^2)``): $\rho(s) = c^2\arctan(s/c^2)$.

    $\rho'(s) = 1/(1 + (s/c^2)^2)$. Bounded ($\rho \to \pi c^2/2$), smooth, redescending; it
    limits the influence of a single residual like a hard cap, without a kink.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        return c2 * jnp.arctan(x)

    def weight(self, s):
        s, c2, x = self._x(s)
        return 1.0 / (1.0 + jnp.square(x))

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        # arctan(x)/x = 1 - x²/3 + x⁴/5 - x⁶/7 + x⁸/9 - ... (error ~x¹⁰/11 below eps^(1/4))
        small = _eps(x.dtype) ** (1.0 / 4.0)
        return _safe_div(jnp.arctan, x, small,
                         (1.0, 0.0, -1.0 / 3, 0.0, 1.0 / 5, 0.0, -1.0 / 7, 0.0, 1.0 / 9))


class DCS(AbstractScaledLoss):
    r"""Dynamic covariance scaling (Agarwal, Tipaldi, Spinello, Stachniss, Burgard, ICRA 2013;
    GTSAM ``noiseModel::mEstimator::DCS``), the pose-graph kernel for wrong loop closures.

    DCS scales a residual by $\min(1, 2\Phi/(\Phi + s))$, so its IRLS weight is
    $\rho'(s) = 1$ for $s \le \Phi$ and $(2\Phi/(\Phi + s))^2$ beyond, with
    $\Phi = c^2$: ``DCS(scale=sqrt(phi))`` is GTSAM's ``DCS(phi)`` (GTSAM's ``c`` is $\Phi$, a
    squared norm; here ``scale`` is a residual norm like every other kernel's). The $\rho$ with
    that weight, $\rho(0) = 0$, is $s$ for $s \le c^2$ and $c^2(3 - 4c^2/(c^2 + s))$ beyond:
    bounded ($\rho \to 3c^2$), $C^1$ at $s = c^2$, redescending. (GTSAM's ``DCS::loss``
    returns $\Phi s/(\Phi + s)$, a different function with its own weight; its solver uses only
    the weight, which matches this class.)
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_out = jnp.where(inner, jnp.ones_like(x), x)
        return jnp.where(inner, s, c2 * (3.0 - 4.0 / (1.0 + x_out)))

    def weight(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_out = jnp.where(inner, jnp.ones_like(x), x)
        return jnp.where(inner, jnp.ones_like(x), 4.0 / jnp.square(1.0 + x_out))

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_out = jnp.where(inner, jnp.ones_like(x), x)
        # (3 - 4/(1+x))/x = 4/(1+x) - 1/x: no product x(1+x), whose square in the derivative
        # overflowed float32 from |r| ~ 1e5 c
        return jnp.where(inner, jnp.ones_like(x), 4.0 / (1.0 + x_out) - 1.0 / x_out)


class TruncatedLS(AbstractScaledLoss):
    r"""Truncated least squares (TLS): $\rho(s) = \min(s, c^2)$; $\rho'(s) = 1$ if $s < c^2$ else 0.

    Bounded, not smooth at $\|r\| = c$ (a block exactly at the threshold has an undefined
    derivative; elsewhere derivatives are those of plain least squares on the inliers).
    Solve it with :func:`gnc_solve`, which follows the GNC-TLS continuation
    (:class:`GNCTruncatedLS`) before a final TLS stage.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def rho(self, s):
        s, c2, x = self._x(s)
        return jnp.minimum(s, c2)

    def weight(self, s):
        s, c2, x = self._x(s)
        return jnp.where(x < 1, jnp.ones_like(x), jnp.zeros_like(x))

    def rho_ratio(self, s):
        s, c2, x = self._x(s)
        inner = x <= 1
        x_out = jnp.where(inner, jnp.ones_like(x), x)
        return jnp.where(inner, jnp.ones_like(x), 1.0 / x_out)


class GNCTruncatedLS(AbstractScaledLoss):
    r"""The GNC surrogate of :class:`TruncatedLS` (Yang et al. 2020, eq. for GNC-TLS).

    With $s_1 = \tfrac{\mu}{\mu+1}c^2$ and $s_2 = \tfrac{\mu+1}{\mu}c^2$:
    $\rho_\mu(s) = s$ for $s \le s_1$; $2c\sqrt{s}\sqrt{\mu(\mu+1)} - \mu(c^2 + s)$ for
    $s_1 < s < s_2$; $c^2$ for $s \ge s_2$. $\rho'_\mu = 1$, $c\sqrt{\mu(\mu+1)/s} - \mu$, $0$
    ($C^1$ in $s$). Nearly convex (a Huber-like ramp up to $c^2/\mu$) for small $\mu$, and
    $\rho_\mu \to \min(s, c^2)$ as $\mu \to \infty$. ``mu`` is a traced field.
    """

    scale: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)
    mu: Float[Array, "*scale_batch"] = eqx.field(default=1.0, converter=jnp.asarray)

    def __check_init__(self):
        _check_positive("GNCTruncatedLS", "mu", self.mu)

    def _regions(self, s):
        s, c2, x = self._x(s)
        mu = _scale_like("GNCTruncatedLS", "mu", self.mu, s)
        x1 = mu / (mu + 1.0)
        x2 = (mu + 1.0) / mu
        inner = x <= x1
        outer = x >= x2
        mid = ~(inner | outer)
        x_mid = jnp.where(mid, x, jnp.ones_like(x))  # > 0 in the middle region
        return s, c2, x, mu, inner, outer, x_mid

    def rho(self, s):
        s, c2, x, mu, inner, outer, x_mid = self._regions(s)
        k = jnp.sqrt(mu * (mu + 1.0))
        mid = c2 * (2.0 * jnp.sqrt(x_mid) * k - mu * (1.0 + x_mid))
        return jnp.where(inner, s, jnp.where(outer, c2, mid))

    def weight(self, s):
        s, c2, x, mu, inner, outer, x_mid = self._regions(s)
        k = jnp.sqrt(mu * (mu + 1.0))
        mid = k * lax.rsqrt(x_mid) - mu
        return jnp.where(inner, jnp.ones_like(x), jnp.where(outer, jnp.zeros_like(x), mid))

    def rho_ratio(self, s):
        s, c2, x, mu, inner, outer, x_mid = self._regions(s)
        k = jnp.sqrt(mu * (mu + 1.0))
        mid = (2.0 * jnp.sqrt(x_mid) * k - mu * (1.0 + x_mid)) / x_mid
        x_out = jnp.where(outer, x, jnp.ones_like(x))
        return jnp.where(inner, jnp.ones_like(x), jnp.where(outer, 1.0 / x_out, mid))


# --------------------------------------------------------------------------------------
# pytree-level robustification


def robustify(loss: AbstractRobustLoss, r: PyTree[Array], *, block_ndim: int = 1) -> PyTree[Array]:
    r"""Apply ``loss`` to every leaf of a residual pytree (see :meth:`AbstractRobustLoss.apply`).

    Each leaf's trailing ``block_ndim`` axes form one block. The result has the structure,
    shapes and dtypes of ``r`` and $\tfrac12\|r'\|^2 = \tfrac12\sum_b\rho(\|r_b\|^2)$ exactly.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxnlls.robust import Huber, robustify
        >>> r = {"proj": jnp.ones((10, 2)), "prior": jnp.zeros(3)}
        >>> out = robustify(Huber(0.5), r)
        >>> out["proj"].shape
        (10, 2)

    Differentiability:
        As :meth:`AbstractRobustLoss.apply`: exact derivatives in ``r`` and ``loss.scale``.
    """
    return jax.tree.map(lambda leaf: loss.apply(leaf, block_ndim=block_ndim), r)


# --------------------------------------------------------------------------------------
# graduated non-convexity


def gnc_schedule(mu_init: Float[ArrayLike, ""], num_stages: int) -> Float[Array, " num_stages"]:
    r"""Geometric continuation $\mu_k = \mu_0^{1 - k/(K-1)}$, $k = 0..K-1$, ending at $\mu = 1$.

    ``mu_init`` may be traced; ``num_stages`` ($K \ge 1$) is static. With $K = 1$ the only
    stage is $\mu = 1$ (the target kernel).
    """
    if num_stages < 1:
        raise ValueError(f"gnc_schedule: num_stages must be >= 1, got {num_stages}")
    mu_init = jnp.asarray(mu_init)
    if num_stages == 1:
        return jnp.ones((1,), dtype=mu_init.dtype)
    t = 1.0 - jnp.arange(num_stages, dtype=mu_init.dtype) / (num_stages - 1)
    return jnp.power(mu_init, t)


def gnc_solve(
    residual_fn: Callable[[Any, Any], PyTree[Array]],
    init: Any,
    params: Any,
    *,
    loss: AbstractScaledLoss,
    num_stages: int = 8,
    mu_init: Float[ArrayLike, ""] | None = None,
    mu_max_factor: float = 2.0,
    mu_final: float = 1e3,
    block_ndim: int = 1,
    solver: Any = None,
    adjoint: Any = None,
    max_steps: int = 100,
    throw: bool = True,
):
    r"""Graduated non-convexity: solve a robust problem by continuation from a convex surrogate.

    ``residual_fn(x, params)`` returns the *raw* (non-robust) residual pytree; every leaf's
    trailing ``block_ndim`` axes form one block. Stage $k$ solves

    $$ \min_x \tfrac12\sum_b \rho_{c\sqrt{\mu_k}}(\|r_b(x)\|^2) $$

    with ``jaxnlls.solve`` warm-started from stage $k-1$, where $\rho_{c'}$ is ``loss`` with its
    scale replaced by $c'$. The schedule (:func:`gnc_schedule`) goes geometrically from
    $\mu_0$ to exactly $\mu_{K-1} = 1$, so the last stage is the target problem. With a large
    $\mu_0$ every residual is in the kernel's quadratic region and the first stage is
    (nearly) the convex least-squares problem, whose solution does not depend on ``init``.

    For :class:`GemanMcClure` this is GNC-GM of Yang et al. (RA-L 2020): their surrogate
    $\mu c^2 e^2/(\mu c^2 + e^2)$ is Geman-McClure with scale $c\sqrt\mu$, and the default
    $\mu_0 = \max(1, 2\max_b s_b / c_b^2)$ (``mu_max_factor = 2``, residuals at ``init``;
    $c_b$ is block $b$'s scale, so a per-block ``scale`` is compared block by block) is
    theirs. Each stage minimizes the surrogate directly with LM instead of their
    alternation of weighted least squares and closed-form weight updates; the fixed points
    coincide. For :class:`Tukey`, :class:`Welsch` (or any other scaled kernel) the same scale
    continuation is a heuristic (no convexity guarantee for the first stage).

    For :class:`TruncatedLS` the continuation is GNC-TLS instead: the first $K-1$ stages use
    :class:`GNCTruncatedLS` with $\mu$ increasing geometrically from
    $\mu_0 = \min_b c_b^2/(2 s_b - c_b^2)$ over blocks with $2 s_b > c_b^2$ (no block
    saturated; ``mu_max_factor`` replaces the 2)
    to ``mu_final``, and the last stage is TLS itself (its solution is the least-squares fit of
    the blocks within $c$, found by GNC).

    The stages run in a ``lax.scan`` over a fixed number of stages, so ``gnc_solve`` jits and
    vmaps; under ``vmap`` ``mu_init`` is computed per problem.

    Args:
        residual_fn: ``(x, params) -> residual pytree`` (raw residuals, before the kernel).
        init: initial value (any pytree accepted by ``jaxnlls.solve``).
        params: differentiable parameters passed to ``residual_fn``.
        loss: the target kernel (any :class:`AbstractScaledLoss`, typically
            :class:`GemanMcClure` or :class:`TruncatedLS`); its ``scale`` is the final $c$.
        num_stages: number of stages $K$ (static), including the final (target) stage.
        mu_init: $\mu_0$; default $\max(1, f\max_b s_b(\text{init})/c_b^2)$ with
            $f$ = ``mu_max_factor`` (GNC-TLS: $\min_b c_b^2/(f s_b - c_b^2)$ over blocks with
            $f s_b > c_b^2$, at most ``mu_final``).
        mu_max_factor: factor $f$ in the default $\mu_0$.
        mu_final: GNC-TLS only: $\mu$ of the last surrogate stage (static float).
        block_ndim: trailing axes per residual block (see :meth:`AbstractRobustLoss.apply`).
        solver, adjoint, max_steps: passed to every ``jaxnlls.solve`` call (``None`` keeps
            ``solve``'s defaults). ``max_steps`` is per stage.
        throw: applies to the final stage only (intermediate stages never throw).

    Returns:
        The ``jaxnlls.Solution`` of the final stage (the target kernel ``loss``);
        ``sol.stats`` are that stage's.

    Differentiability:
        Only the final stage is differentiated: its warm start (the output of the earlier
        stages) and $\mu_0$ are wrapped in ``stop_gradient``, and the final stage is an
        ordinary ``jaxnlls.solve`` with the given ``adjoint``. With ``ImplicitAdjoint`` the
        gradient w.r.t. ``params`` and ``loss.scale`` is the exact implicit gradient of the
        robust problem's local minimizer that GNC found (valid when it converged:
        check ``sol.result``). No gradient flows to ``init``.
    """
    import jaxnlls  # local import: jaxnlls/__init__ may re-export this module

    if not isinstance(loss, AbstractScaledLoss):
        raise TypeError(
            f"gnc_solve: loss must be a scaled robust kernel (e.g. GemanMcClure), got "
            f"{type(loss).__name__}"
        )
    if num_stages < 1:
        raise ValueError(f"gnc_solve: num_stages must be >= 1, got {num_stages}")

    solve_kwargs: dict[str, Any] = {"max_steps": max_steps}
    if solver is not None:
        solve_kwargs["solver"] = solver
    if adjoint is not None:
        solve_kwargs["adjoint"] = adjoint

    def robust_fn(x, args):
        p, kernel = args
        return robustify(kernel, residual_fn(x, p), block_ndim=block_ndim)

    leaves = jax.tree.leaves(residual_fn(init, params))
    if not leaves:
        raise ValueError("gnc_solve: residual_fn returned an empty pytree")
    dtype = jnp.result_type(*leaves)
    scale = jnp.asarray(loss.scale).astype(dtype)

    def block_ratio(leaf):
        # max_b s_b / c_b^2 over this leaf's blocks: each block against its own scale, so one
        # loose-scale block cannot hide the others (a max over s and c separately would).
        leaf = jnp.asarray(leaf)
        if leaf.ndim < block_ndim:
            raise ValueError(
                f"gnc_solve: a residual leaf has shape {leaf.shape} but block_ndim="
                f"{block_ndim} needs at least {block_ndim} axes"
            )
        axes = tuple(range(leaf.ndim - block_ndim, leaf.ndim))
        s = jnp.sum(leaf * leaf, axis=axes)
        c2 = jnp.square(_scale_like(f"gnc_solve: {type(loss).__name__}", "scale", loss.scale, s))
        return jnp.max(s / c2, initial=0.0).astype(dtype)

    # the largest normalized squared block norm x_max = max_b s_b / c_b^2 at init sets the
    # default mu_0 (every kernel here is a function of x = s / c^2)
    x_max = lax.stop_gradient(jnp.max(jnp.stack([block_ratio(leaf) for leaf in leaves])))
    params_nograd = _stop_gradient_tree(params)
    c_nograd = lax.stop_gradient(scale)

    if isinstance(loss, TruncatedLS):
        # GNC-TLS: mu increases from mu_0 to mu_final; the final stage is TLS itself
        # (mu = inf). Block b is unsaturated while x_b < (mu + 1) / mu, i.e. mu < 1/(x_b - 1);
        # with the margin f, mu_0 = min_b c_b^2 / (f s_b - c_b^2) over blocks with
        # f s_b > c_b^2, which is 1 / (f x_max - 1) as 1/(f x - 1) decreases in x.
        if mu_init is None:
            excess = mu_max_factor * x_max - 1.0
            mu0 = jnp.where(excess > 0, 1.0 / jnp.where(excess > 0, excess, 1.0), mu_final)
            mu0 = jnp.minimum(mu0, mu_final)
        else:
            mu0 = jnp.asarray(mu_init, dtype=dtype)
        mu0 = lax.stop_gradient(mu0)
        frac = jnp.arange(num_stages - 1, dtype=dtype) / max(num_stages - 2, 1)
        mus = mu0 * jnp.power(jnp.asarray(mu_final, dtype) / mu0, frac)

        def stage_loss(mu):
            return GNCTruncatedLS(c_nograd, mu)

    else:
        # scale continuation c sqrt(mu), mu from mu_0 down to 1 (the last, target stage);
        # mu_0 = max(1, f max_b s_b / c_b^2) puts every block well inside its quadratic region
        if mu_init is None:
            mu0 = jnp.maximum(1.0, mu_max_factor * x_max)
        else:
            mu0 = jnp.asarray(mu_init, dtype=dtype)
        mus = gnc_schedule(lax.stop_gradient(mu0), num_stages)[:-1]

        def stage_loss(mu):
            return loss.with_scale(c_nograd * jnp.sqrt(mu))

    def stage(x, mu):
        sol = jaxnlls.solve(
            robust_fn, x, (params_nograd, stage_loss(mu)), throw=False, **solve_kwargs
        )
        return sol.value, None

    x = _stop_gradient_tree(init)
    if num_stages > 1:
        x, _ = lax.scan(stage, x, mus)
        x = _stop_gradient_tree(x)
    return jaxnlls.solve(robust_fn, x, (params, loss), throw=throw, **solve_kwargs)
