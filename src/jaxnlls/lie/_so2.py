"""SO(2): planar rotations stored as a unit complex number ``(cos θ, sin θ)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import (
    AbstractLieGroup,
    bcast_params,
    check_matrix,
    check_points,
    check_tangent,
    resolve_dtype,
)
from ._utils import as_batch_shape, as_float, normalize_last


def rot2_mul(a: Array, b: Array) -> Array:
    """Product of unit complex numbers ``(c, s)`` (same shapes)."""
    ca, sa, cb, sb = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    return jnp.stack([ca * cb - sa * sb, sa * cb + ca * sb], axis=-1)


def rot2_apply(cs: Array, p: Array) -> Array:
    c, s = cs[..., 0], cs[..., 1]
    x, y = p[..., 0], p[..., 1]
    return jnp.stack([c * x - s * y, s * x + c * y], axis=-1)


def rot2_matrix(cs: Array) -> Array:
    c, s = cs[..., 0], cs[..., 1]
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def rot2_from_matrix(m: Array) -> Array:
    """Nearest rotation (Frobenius) to a 2×2 block: angle ``atan2(m10 - m01, m00 + m11)``.

    This is the closed form of the SVD (orthogonal Procrustes) projection in 2-D.
    """
    theta = jnp.arctan2(m[..., 1, 0] - m[..., 0, 1], m[..., 0, 0] + m[..., 1, 1])
    return jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)


class SO2(AbstractLieGroup):
    """Planar rotation, ``params = (cos θ, sin θ)``; tangent ``(ω,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxnlls.lie import SO2
        >>> r = SO2.from_angle(jnp.pi / 2)
        >>> r @ jnp.array([1.0, 0.0])  # ≈ (0, 1)
    """

    params: Float[Array, "*batch 2"]

    tangent_dim: ClassVar[int] = 1
    params_dim: ClassVar[int] = 2
    space_dim: ClassVar[int] = 2
    matrix_dim: ClassVar[int] = 2
    params_layout: ClassVar[str] = "(cos, sin)"
    identity_params: ClassVar[tuple[float, ...]] = (1.0, 0.0)

    @classmethod
    def from_angle(cls, theta: Float[Array, "*batch"] | float) -> SO2:
        """Rotation by ``theta`` radians (batched over ``theta``'s shape)."""
        theta = as_float(theta)
        return cls(jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1))

    def angle(self) -> Float[Array, "*batch"]:
        """Rotation angle in ``(-π, π]``."""
        return jnp.arctan2(self.params[..., 1], self.params[..., 0])

    @classmethod
    def exp(cls, tangent: Float[Array, "*batch 1"]) -> SO2:
        tangent = check_tangent(cls, tangent)
        return cls.from_angle(tangent[..., 0])

    def log(self) -> Float[Array, "*batch 1"]:
        return self.angle()[..., None]

    def compose(self, other: SO2) -> SO2:
        a, b = bcast_params(self.params, other.params)
        return SO2(rot2_mul(a, b))

    def inverse(self) -> SO2:
        return SO2(jnp.stack([self.params[..., 0], -self.params[..., 1]], axis=-1))

    def act(self, points: Float[Array, "*batch 2"]) -> Float[Array, "*batch 2"]:
        points = check_points(self, points)
        cs, p = bcast_params(self.params, points)
        return rot2_apply(cs, p)

    def adjoint(self) -> Float[Array, "*batch 1 1"]:
        return jnp.ones(self.batch_shape + (1, 1), self.dtype)

    def as_matrix(self) -> Float[Array, "*batch 2 2"]:
        return rot2_matrix(self.params)

    @classmethod
    def from_matrix(cls, matrix: Float[Array, "*batch 2 2"]) -> SO2:
        matrix = check_matrix(cls, matrix, 2)
        return cls(rot2_from_matrix(matrix))

    def normalize(self) -> SO2:
        return SO2(normalize_last(self.params))

    @classmethod
    def jac_right(cls, tangent: Float[Array, "*batch 1"]) -> Float[Array, "*batch 1 1"]:
        tangent = check_tangent(cls, tangent)
        return jnp.ones(tangent.shape[:-1] + (1, 1), tangent.dtype)

    @classmethod
    def jac_right_inv(cls, tangent: Float[Array, "*batch 1"]) -> Float[Array, "*batch 1 1"]:
        return cls.jac_right(tangent)

    def retract_jac(self) -> Float[Array, "*batch 2 1"]:
        c, s = self.params[..., 0], self.params[..., 1]
        return jnp.stack([-s, c], axis=-1)[..., None]

    @classmethod
    def sample_uniform(cls, key: Array, batch_shape: Sequence[int] = (), dtype: Any = None) -> SO2:
        """Angle uniform in ``[-π, π)``."""
        dtype = resolve_dtype(dtype)
        theta = jax.random.uniform(key, as_batch_shape(batch_shape), dtype, -jnp.pi, jnp.pi)
        return cls.from_angle(theta)
