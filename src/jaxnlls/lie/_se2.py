"""SE(2): planar rigid motions stored as ``(cos θ, sin θ, x, y)``; tangent ``(vx, vy, ω)``."""

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
    check_rotation_translation,
    check_tangent,
    resolve_dtype,
)
from ._so2 import SO2, rot2_apply, rot2_from_matrix, rot2_matrix, rot2_mul
from ._utils import (
    as_batch_shape,
    as_float,
    half_cot_coeff,
    normalize_last,
    one_minus_cos_over_sq,
    sinc,
    theta_minus_sin_over_cube,
)


def _v_coeffs(w: Array) -> tuple[Array, Array]:
    """``A = sin ω / ω`` and ``B = (1 - cos ω) / ω`` with ``V(ω) = [[A, -B], [B, A]]``."""
    w2 = w * w
    return sinc(w2), w * one_minus_cos_over_sq(w2)


class SE2(AbstractLieGroup):
    """Planar pose ``(R(θ), t)``: ``params = (cos θ, sin θ, x, y)``, tangent ``(vx, vy, ω)``.

    Example:
        >>> from jaxnlls.lie import SE2
        >>> T = SE2.from_xy_theta(1.0, 2.0, 0.3)
        >>> T.translation(), T.rotation().angle()
    """

    params: Float[Array, "*batch 4"]

    tangent_dim: ClassVar[int] = 3
    params_dim: ClassVar[int] = 4
    space_dim: ClassVar[int] = 2
    matrix_dim: ClassVar[int] = 3
    params_layout: ClassVar[str] = "(cos, sin, x, y)"
    identity_params: ClassVar[tuple[float, ...]] = (1.0, 0.0, 0.0, 0.0)

    # ---- constructors / accessors ----

    @classmethod
    def from_xy_theta(cls, x, y, theta) -> SE2:
        """Pose at ``(x, y)`` with heading ``theta`` (radians); arguments broadcast."""
        x, y, theta = jnp.broadcast_arrays(as_float(x), as_float(y), as_float(theta))
        return cls(jnp.stack([jnp.cos(theta), jnp.sin(theta), x, y], axis=-1))

    @classmethod
    def from_rotation_and_translation(
        cls, rotation: SO2, translation: Float[Array, "*batch 2"]
    ) -> SE2:
        translation = check_rotation_translation(cls, rotation, SO2, translation)
        rot, t = bcast_params(rotation.params, translation)
        return cls(jnp.concatenate([rot, t], axis=-1))

    def rotation(self) -> SO2:
        return SO2(self.params[..., :2])

    def translation(self) -> Float[Array, "*batch 2"]:
        return self.params[..., 2:]

    # ---- group operations ----

    @classmethod
    def exp(cls, tangent: Float[Array, "*batch 3"]) -> SE2:
        tangent = check_tangent(cls, tangent)
        vx, vy, w = tangent[..., 0], tangent[..., 1], tangent[..., 2]
        a, b = _v_coeffs(w)
        x = a * vx - b * vy
        y = b * vx + a * vy
        return cls(jnp.stack([jnp.cos(w), jnp.sin(w), x, y], axis=-1))

    def log(self) -> Float[Array, "*batch 3"]:
        c, s = self.params[..., 0], self.params[..., 1]
        x, y = self.params[..., 2], self.params[..., 3]
        w = jnp.arctan2(s, c)
        half = 0.5 * w
        a = half_cot_coeff(w * w)  # V⁻¹ = [[a, ω/2], [-ω/2, a]]
        return jnp.stack([a * x + half * y, -half * x + a * y, w], axis=-1)

    def compose(self, other: SE2) -> SE2:
        a, b = bcast_params(self.params, other.params)
        rot = rot2_mul(a[..., :2], b[..., :2])
        t = a[..., 2:] + rot2_apply(a[..., :2], b[..., 2:])
        return SE2(jnp.concatenate([rot, t], axis=-1))

    def inverse(self) -> SE2:
        cs_inv = jnp.stack([self.params[..., 0], -self.params[..., 1]], axis=-1)
        t = -rot2_apply(cs_inv, self.params[..., 2:])
        return SE2(jnp.concatenate([cs_inv, t], axis=-1))

    def act(self, points: Float[Array, "*batch 2"]) -> Float[Array, "*batch 2"]:
        points = check_points(self, points)
        p, pts = bcast_params(self.params, points)
        return rot2_apply(p[..., :2], pts) + p[..., 2:]

    def adjoint(self) -> Float[Array, "*batch 3 3"]:
        c, s = self.params[..., 0], self.params[..., 1]
        x, y = self.params[..., 2], self.params[..., 3]
        o, one = jnp.zeros_like(c), jnp.ones_like(c)
        return jnp.stack(
            [jnp.stack([c, -s, y], -1), jnp.stack([s, c, -x], -1), jnp.stack([o, o, one], -1)],
            -2,
        )

    def as_matrix(self) -> Float[Array, "*batch 3 3"]:
        r = rot2_matrix(self.params[..., :2])
        t = self.params[..., 2:, None]
        top = jnp.concatenate([r, t], axis=-1)
        bottom = jnp.broadcast_to(
            jnp.asarray([0.0, 0.0, 1.0], self.dtype), self.batch_shape + (1, 3)
        )
        return jnp.concatenate([top, bottom], axis=-2)

    @classmethod
    def from_matrix(cls, matrix: Float[Array, "*batch 3 3"]) -> SE2:
        """From a homogeneous 3×3 matrix; the rotation block is projected onto SO(2)."""
        matrix = check_matrix(cls, matrix, 3)
        rot = rot2_from_matrix(matrix[..., :2, :2])
        return cls(jnp.concatenate([rot, matrix[..., :2, 2]], axis=-1))

    def normalize(self) -> SE2:
        return SE2(jnp.concatenate([normalize_last(self.params[..., :2]), self.params[..., 2:]], -1))

    # ---- Jacobians ----

    @classmethod
    def jac_right(cls, tangent: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3 3"]:
        tangent = check_tangent(cls, tangent)
        vx, vy, w = tangent[..., 0], tangent[..., 1], tangent[..., 2]
        w2 = w * w
        a, b = _v_coeffs(w)
        b2 = one_minus_cos_over_sq(w2)  # (1 - cos ω) / ω²
        c1 = w * theta_minus_sin_over_cube(w2)  # (ω - sin ω) / ω²
        o, one = jnp.zeros_like(w), jnp.ones_like(w)
        return jnp.stack(
            [
                jnp.stack([a, b, vx * c1 - vy * b2], -1),
                jnp.stack([-b, a, vx * b2 + vy * c1], -1),
                jnp.stack([o, o, one], -1),
            ],
            -2,
        )

    @classmethod
    def jac_right_inv(cls, tangent: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3 3"]:
        tangent = check_tangent(cls, tangent)
        vx, vy, w = tangent[..., 0], tangent[..., 1], tangent[..., 2]
        w2 = w * w
        b2 = one_minus_cos_over_sq(w2)
        c1 = w * theta_minus_sin_over_cube(w2)
        a = half_cot_coeff(w2)
        h = 0.5 * w
        # [[M, m], [0, 1]]⁻¹ = [[M⁻¹, -M⁻¹ m], [0, 1]] with M⁻¹ = [[a, -ω/2], [ω/2, a]].
        m1 = vx * c1 - vy * b2
        m2 = vx * b2 + vy * c1
        o, one = jnp.zeros_like(w), jnp.ones_like(w)
        return jnp.stack(
            [
                jnp.stack([a, -h, -(a * m1 - h * m2)], -1),
                jnp.stack([h, a, -(h * m1 + a * m2)], -1),
                jnp.stack([o, o, one], -1),
            ],
            -2,
        )

    def retract_jac(self) -> Float[Array, "*batch 4 3"]:
        c, s = self.params[..., 0], self.params[..., 1]
        o = jnp.zeros_like(c)
        return jnp.stack(
            [
                jnp.stack([o, o, -s], -1),
                jnp.stack([o, o, c], -1),
                jnp.stack([c, -s, o], -1),
                jnp.stack([s, c, o], -1),
            ],
            -2,
        )

    @classmethod
    def sample_uniform(cls, key: Array, batch_shape: Sequence[int] = (), dtype: Any = None) -> SE2:
        """Heading uniform in ``[-π, π)``, translation uniform in ``[-1, 1]²``."""
        dtype = resolve_dtype(dtype)
        k1, k2 = jax.random.split(key)
        shape = as_batch_shape(batch_shape)
        theta = jax.random.uniform(k1, shape, dtype, -jnp.pi, jnp.pi)
        t = jax.random.uniform(k2, shape + (2,), dtype, -1.0, 1.0)
        return cls(jnp.concatenate([jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1), t], -1))

