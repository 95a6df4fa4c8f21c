"""``AbstractLieGroup``: the interface every matrix Lie group in :mod:`jaxnlls.lie` implements.

Conventions (see ``docs/conventions.md``): right perturbation ``x ⊕ δ = x · Exp(δ)``,
``x ⊖ y``-style ``x.local(y) = Log(x⁻¹ y)``, tangent order (translation, rotation[, log-scale]).
Each group stores exactly one array ``params`` of shape ``batch_shape + (params_dim,)``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Self

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..manifold import AbstractManifold
from ._utils import as_batch_shape, as_float, broadcast_batch


class AbstractLieGroup(AbstractManifold):
    """A batched element of a matrix Lie group, stored as one parameter array.

    Subclasses (``SO2``, ``SE2``, ``SO3``, ``SE3``, ``Sim3``) are final equinox Modules with a
    single field ``params``. Everything is batched over the leading axes, works under
    ``jit``/``vmap``/``grad``, and follows the dtype of its inputs.

    The raw constructor ``G(params)`` checks shape and dtype only; it trusts you to pass a valid
    (e.g. unit-quaternion) element. Constructors from user data (``from_matrix``,
    ``from_quaternion_*``, ``from_xy_theta``...) normalize/project.
    """

    params: eqx.AbstractVar[Float[Array, "*batch params_dim"]]
    params_dim: eqx.AbstractClassVar[int]
    space_dim: eqx.AbstractClassVar[int]
    matrix_dim: eqx.AbstractClassVar[int]
    params_layout: eqx.AbstractClassVar[str]
    identity_params: eqx.AbstractClassVar[tuple[float, ...]]

    def __check_init__(self):
        p = self.params
        name = type(self).__name__
        shape = getattr(p, "shape", None)
        dtype = getattr(p, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(
                f"{name} params must be an array of shape (..., {self.params_dim}) "
                f"{self.params_layout}; got {type(p).__name__}"
            )
        if len(shape) == 0 or shape[-1] != self.params_dim:
            raise ValueError(
                f"{name} params must have shape (..., {self.params_dim}) {self.params_layout}; "
                f"got {tuple(shape)}"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{name} params must have a floating dtype (float32/float64); got {dtype}"
            )

    # ---- abstract maths (implemented in closed form by each group) ----------------------------

    @classmethod
    @abc.abstractmethod
    def exp(cls, tangent: Float[Array, "*batch tangent_dim"]) -> Self:
        """Exponential map ``Exp: R^tangent_dim -> G`` (batched over leading axes)."""

    @abc.abstractmethod
    def log(self) -> Float[Array, "*batch tangent_dim"]:
        """Logarithm ``Log: G -> R^tangent_dim`` (principal branch, rotation angle in ``[0, π]``)."""

    @abc.abstractmethod
    def compose(self, other: Self) -> Self:
        """Group product ``self · other`` (batch shapes broadcast)."""

    @abc.abstractmethod
    def inverse(self) -> Self:
        """Group inverse ``self⁻¹``."""

    @abc.abstractmethod
    def act(self, points: Float[Array, "*batch space_dim"]) -> Float[Array, "*batch space_dim"]:
        """Action on points ``(..., space_dim)`` (batch shapes broadcast)."""

    @abc.abstractmethod
    def adjoint(self) -> Float[Array, "*batch tangent_dim tangent_dim"]:
        """Adjoint matrix ``Ad_x`` with ``x · Exp(δ) = Exp(Ad_x δ) · x``."""

    @abc.abstractmethod
    def as_matrix(self) -> Float[Array, "*batch matrix_dim matrix_dim"]:
        """Homogeneous matrix representation."""

    @classmethod
    @abc.abstractmethod
    def from_matrix(cls, matrix: Float[Array, "*batch matrix_dim matrix_dim"]) -> Self:
        """Element from a matrix; the rotation block is projected onto the group."""

    @abc.abstractmethod
    def normalize(self) -> Self:
        """Project the parameters back onto the group (unit quaternion / unit complex)."""

    @classmethod
    @abc.abstractmethod
    def jac_right(cls, tangent: Float[Array, "*batch tangent_dim"]) -> Array:
        """Right Jacobian ``J_r(δ)``: ``Exp(δ + ε) ≈ Exp(δ) · Exp(J_r(δ) ε)``."""

    @classmethod
    @abc.abstractmethod
    def jac_right_inv(cls, tangent: Float[Array, "*batch tangent_dim"]) -> Array:
        """Inverse right Jacobian ``J_r(δ)⁻¹``: ``Log(Exp(δ) · Exp(ε)) ≈ δ + J_r⁻¹(δ) ε``."""

    @abc.abstractmethod
    def retract_jac(self) -> Float[Array, "*batch params_dim tangent_dim"]:
        """``d params(x ⊕ δ) / dδ`` at ``δ = 0`` (closed form)."""

    @classmethod
    @abc.abstractmethod
    def sample_uniform(
        cls, key: Array, batch_shape: Sequence[int] = (), dtype: Any = None
    ) -> Self:
        """Random elements (rotation uniform / Haar; see the group's docstring for the rest)."""

    # ---- concrete, shared by all groups ------------------------------------------------------

    @classmethod
    def identity(cls, batch_shape: Sequence[int] = (), dtype: Any = None) -> Self:
        """The identity element, broadcast to ``batch_shape``."""
        p = jnp.asarray(cls.identity_params, dtype=dtype if dtype is not None else float)
        return cls(jnp.broadcast_to(p, as_batch_shape(batch_shape) + (cls.params_dim,)))

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.params.shape[:-1])

    @property
    def dtype(self):
        return self.params.dtype

    def retract(self, delta: Float[Array, "*batch tangent_dim"]) -> Self:
        """``x ⊕ δ = x · Exp(δ)``, renormalized (unit quaternion / unit complex)."""
        return self.compose(type(self).exp(delta)).normalize()

    def local(self, other: Self) -> Float[Array, "*batch tangent_dim"]:
        """``Log(x⁻¹ · other)`` so that ``x.retract(x.local(y)) == y``."""
        _check_same_group(self, other, "local")
        return self.inverse().compose(other).log()

    def __matmul__(self, other):
        """``x @ y`` composes two elements; ``x @ points`` acts on points ``(..., space_dim)``."""
        if isinstance(other, AbstractLieGroup):
            _check_same_group(self, other, "@")
            return self.compose(other)
        return self.act(other)

    def __getitem__(self, idx) -> Self:
        """Index the batch axes: ``x[i]``, ``x[1:3]``, ``x[..., 0]``, ``x[mask]``."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        used = 0
        for i in idx:
            if i is None or i is Ellipsis:
                continue
            is_mask = hasattr(i, "dtype") and jnp.issubdtype(i.dtype, jnp.bool_)
            used += i.ndim if is_mask else 1
        if used > len(self.batch_shape):
            raise IndexError(
                f"{type(self).__name__} has batch shape {self.batch_shape}; "
                f"too many indices ({used}) for its batch axes"
            )
        if any(i is Ellipsis for i in idx):
            idx = idx + (slice(None),)  # the Ellipsis must not reach the params axis
        return type(self)(self.params[idx])

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError(f"len() of an unbatched {type(self).__name__}")
        return self.batch_shape[0]

    @classmethod
    def stack(cls, elements: Sequence[Self], axis: int = 0) -> Self:
        """Stack elements of this group along a new batch axis."""
        elements = list(elements)
        if not elements:
            raise ValueError(f"{cls.__name__}.stack needs at least one element")
        for e in elements:
            if type(e) is not cls:
                raise TypeError(f"{cls.__name__}.stack got a {type(e).__name__}")
        ndim = len(elements[0].batch_shape) + 1 if elements else 1
        if not -ndim <= axis < ndim:
            raise ValueError(f"{cls.__name__}.stack: axis {axis} out of range for batch ndim {ndim}")
        if axis < 0:
            axis = axis + ndim
        return cls(jnp.stack([e.params for e in elements], axis=axis))

    @classmethod
    def jac_left(cls, tangent: Float[Array, "*batch tangent_dim"]) -> Array:
        """Left Jacobian ``J_l(δ) = J_r(-δ)``: ``Exp(δ + ε) ≈ Exp(J_l(δ) ε) · Exp(δ)``."""
        return cls.jac_right(-as_float(tangent))

    @classmethod
    def jac_left_inv(cls, tangent: Float[Array, "*batch tangent_dim"]) -> Array:
        """Inverse left Jacobian ``J_l(δ)⁻¹ = J_r(-δ)⁻¹``."""
        return cls.jac_right_inv(-as_float(tangent))

    def log_jac(self) -> Float[Array, "*batch tangent_dim tangent_dim"]:
        """Jacobian of ``Log`` under right perturbation: ``d Log(x · Exp(δ)) / dδ = J_r⁻¹(Log x)``."""
        return type(self).jac_right_inv(self.log())

    def interpolate(self, other: Self, t: Float[Array, "*batch"] | float) -> Self:
        """Geodesic interpolation ``x · Exp(t · Log(x⁻¹ y))`` (slerp for rotations); ``t ∈ [0, 1]``."""
        d = self.local(other)
        t = jnp.asarray(t, dtype=d.dtype)
        shape = jnp.broadcast_shapes(t.shape, d.shape[:-1])
        d = jnp.broadcast_to(d, shape + d.shape[-1:])
        return self.retract(jnp.broadcast_to(t, shape)[..., None] * d)


def _check_same_group(a: AbstractLieGroup, b: Any, op: str) -> None:
    if type(a) is not type(b):
        raise TypeError(f"{type(a).__name__} {op} {type(b).__name__}: groups must match")


def interpolate(a: AbstractLieGroup, b: AbstractLieGroup, t) -> AbstractLieGroup:
    """Geodesic interpolation between ``a`` (``t = 0``) and ``b`` (``t = 1``); slerp on SO(3)."""
    return a.interpolate(b, t)


def check_tangent(cls: type, tangent) -> Array:
    """Validate and convert a tangent argument of ``cls`` (trace-time error naming the group)."""
    tangent = as_float(tangent)
    if tangent.ndim == 0 or tangent.shape[-1] != cls.tangent_dim:
        raise ValueError(
            f"{cls.__name__} tangent must have shape (..., {cls.tangent_dim}); "
            f"got {tuple(tangent.shape)}"
        )
    return tangent


def check_rotation_translation(cls: type, rotation, rot_cls: type, translation) -> Array:
    """Validate the parts given to ``cls.from_rotation_*``; returns the translation as floats.

    Without this, a wrong translation length surfaced as a confusing params-shape error, and a
    rotation of another group with the right number of parameters was silently reinterpreted.
    """
    if type(rotation) is not rot_cls:
        raise TypeError(
            f"{cls.__name__} rotation must be a {rot_cls.__name__}; got {type(rotation).__name__}"
        )
    translation = as_float(translation)
    n = rot_cls.space_dim
    if translation.ndim == 0 or translation.shape[-1] != n:
        raise ValueError(
            f"{cls.__name__} translation must have shape (..., {n}); got {tuple(translation.shape)}"
        )
    return translation


def check_points(g: AbstractLieGroup, points) -> Array:
    points = jnp.asarray(points)
    if points.ndim == 0 or points.shape[-1] != g.space_dim:
        raise ValueError(
            f"{type(g).__name__} acts on points of shape (..., {g.space_dim}); "
            f"got {tuple(points.shape)}"
        )
    if jnp.issubdtype(points.dtype, jnp.complexfloating):
        raise TypeError(f"{type(g).__name__} acts on real points; got dtype {points.dtype}")
    if not jnp.issubdtype(points.dtype, jnp.floating):
        points = points.astype(g.dtype)
    return points


def check_matrix(cls: type, matrix, n: int) -> Array:
    matrix = as_float(matrix)
    if matrix.ndim < 2 or matrix.shape[-2:] != (n, n):
        raise ValueError(
            f"{cls.__name__}.from_matrix expects shape (..., {n}, {n}); got {tuple(matrix.shape)}"
        )
    return matrix


def bcast_params(*arrays: Array) -> list[Array]:
    """Broadcast batch shapes of parameter / point arrays against each other."""
    return broadcast_batch(*arrays)


def resolve_dtype(dtype) -> Any:
    """``dtype`` or, for ``None``, the default float dtype (float64 under x64)."""
    return jnp.asarray(0.0, dtype=dtype if dtype is not None else float).dtype
