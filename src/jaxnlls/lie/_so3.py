"""SO(3): 3-D rotations stored as a unit quaternion ``(w, x, y, z)`` (Hamilton convention)."""

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
from ._utils import (
    as_batch_shape,
    POLY_SMALL_SQ,
    AngleTerms,
    angle_terms,
    angle_terms_from_half,
    as_float,
    cos_half_of,
    half_angle_over_norm,
    jr_inv_coeff_of,
    normalize_any_scale,
    normalize_last,
    one_minus_cos_over_sq_of,
    quat_conj,
    quat_from_matrix_projected,
    quat_mul,
    quat_retract_jac,
    quat_rotate,
    quat_to_matrix,
    sin_half_over_theta_of,
    stack_last,
    sum_sq,
    theta_minus_sin_over_cube_of,
)


def quat_exp_from_terms(a: AngleTerms, omega: Array) -> Array:
    """:func:`quat_exp` given the :class:`AngleTerms` of ``|ω|²`` (shared with SE(3) ``exp``)."""
    # canonical w >= 0 (θ > π): flip the half-angle sin/cos before the coefficient functions
    neg = a.cos_half < 0
    a = a._replace(
        sin_half=jnp.where(neg, -a.sin_half, a.sin_half),
        cos_half=jnp.where(neg, -a.cos_half, a.cos_half),
    )
    w = cos_half_of(a)
    k = sin_half_over_theta_of(a)
    return stack_last([w, k * omega[..., 0], k * omega[..., 1], k * omega[..., 2]])


def quat_exp(omega: Array) -> Array:
    """Unit quaternion ``(cos(θ/2), sin(θ/2) ω/θ)`` with ``w >= 0`` (sign flipped for ``θ > π``)."""
    return quat_exp_from_terms(angle_terms(sum_sq(omega)), omega)


def quat_log_terms(q: Array) -> tuple[Array, AngleTerms]:
    """Rotation vector of ``q`` and the :class:`AngleTerms` of its angle (no extra sin/cos)."""
    w = q[..., 0]
    v = q[..., 1:]
    sign = jnp.where(w < 0, -1.0, 1.0).astype(w.dtype)
    wa = sign * w  # |w|, with derivative +1 at w = 0 (the sign of (x, y, z) is kept there)
    n2 = sum_sq(v)
    factor = 2.0 * half_angle_over_norm(wa, n2)  # θ / n
    omega = (sign * factor)[..., None] * v
    theta_sq = factor * factor * n2
    # sin(θ/2) = n / |q|, cos(θ/2) = |w| / |q|; only used outside the polynomial region (θ ≥ π/2)
    big = theta_sq >= POLY_SMALL_SQ
    n2_safe = jnp.where(big, n2, jnp.ones_like(n2))
    inv_norm = jax.lax.rsqrt(n2_safe + wa * wa)
    terms = angle_terms_from_half(theta_sq, jnp.sqrt(n2_safe) * inv_norm, wa * inv_norm)
    return omega, terms


def quat_log(q: Array) -> Array:
    """Rotation vector of a (not necessarily unit) quaternion, angle in ``[0, π]``.

    ``q`` and ``-q`` give the same result except at exactly ``π`` (``w = 0``), where the sign of
    ``(x, y, z)`` is kept. The gradient is finite everywhere except at ``q = 0``.
    """
    w = q[..., 0]
    v = q[..., 1:]
    sign = jnp.where(w < 0, -1.0, 1.0).astype(w.dtype)
    factor = 2.0 * half_angle_over_norm(sign * w, sum_sq(v))
    return (sign * factor)[..., None] * v


def _lin3(a: Array, b: Array, c: Array, w: Array) -> Array:
    """``a I + b ŵ + c w wᵀ`` built entry by entry (one fused elementwise kernel)."""
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    rows = [
        jnp.stack([a + c * x * x, -b * z + c * x * y, b * y + c * x * z], -1),
        jnp.stack([b * z + c * y * x, a + c * y * y, -b * x + c * y * z], -1),
        jnp.stack([-b * y + c * z * x, b * x + c * z * y, a + c * z * z], -1),
    ]
    # (for these 9 entries a nested stack beats a ``stack_last``-style select chain)
    return jnp.stack(rows, -2)


def so3_jac_right(omega: Array) -> Array:
    """``J_r(ω) = I - (1 - cos θ)/θ² ω̂ + (θ - sin θ)/θ³ ω̂²`` (with ``ω̂² = ωωᵀ - θ² I``)."""
    t2 = sum_sq(omega)
    a = angle_terms(t2)
    b = one_minus_cos_over_sq_of(a)
    c = theta_minus_sin_over_cube_of(a)
    return _lin3(1.0 - c * t2, -b, c, omega)


def so3_jac_right_inv_from_terms(a: AngleTerms, omega: Array) -> Array:
    d = jr_inv_coeff_of(a)
    return _lin3(1.0 - d * a.theta_sq, jnp.full_like(d, 0.5), d, omega)


def so3_jac_right_inv(omega: Array) -> Array:
    """``J_r⁻¹(ω) = I + ½ ω̂ + (1/θ² - (1 + cos θ)/(2 θ sin θ)) ω̂²`` (finite up to ``θ < 2π``)."""
    return so3_jac_right_inv_from_terms(angle_terms(sum_sq(omega)), omega)


def _rpy_to_quat(roll: Array, pitch: Array, yaw: Array) -> Array:
    cr, sr = jnp.cos(0.5 * roll), jnp.sin(0.5 * roll)
    cp, sp = jnp.cos(0.5 * pitch), jnp.sin(0.5 * pitch)
    cy, sy = jnp.cos(0.5 * yaw), jnp.sin(0.5 * yaw)
    # q = q_z(yaw) ⊗ q_y(pitch) ⊗ q_x(roll)
    return jnp.stack(
        [
            cy * cp * cr + sy * sp * sr,
            cy * cp * sr - sy * sp * cr,
            cy * sp * cr + sy * cp * sr,
            sy * cp * cr - cy * sp * sr,
        ],
        axis=-1,
    )


def _wrap_angle(t: Array) -> Array:
    """Wrap an angle in ``(-2π, 2π)`` to ``(-π, π]``."""
    t = jnp.where(t > jnp.pi, t - 2 * jnp.pi, t)
    return jnp.where(t <= -jnp.pi, t + 2 * jnp.pi, t)


class SO3(AbstractLieGroup):
    """3-D rotation as a unit quaternion ``params = (w, x, y, z)``; tangent = rotation vector.

    ``SO3(params)`` trusts its input; ``from_quaternion_xyzw/wxyz``, ``from_matrix`` and
    ``from_rpy`` normalize. ``exp`` returns ``w >= 0``; products and inverses do not
    canonicalize the sign (``q`` and ``-q`` are the same rotation, ``log`` handles both).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxnlls.lie import SO3
        >>> R = SO3.from_rpy(0.1, 0.2, 0.3)
        >>> R.log(), R.as_matrix(), R @ jnp.ones(3)
    """

    params: Float[Array, "*batch 4"]

    tangent_dim: ClassVar[int] = 3
    params_dim: ClassVar[int] = 4
    space_dim: ClassVar[int] = 3
    matrix_dim: ClassVar[int] = 3
    params_layout: ClassVar[str] = "(w, x, y, z)"
    identity_params: ClassVar[tuple[float, ...]] = (1.0, 0.0, 0.0, 0.0)

    # ---- constructors / converters ----

    @classmethod
    def from_quaternion_wxyz(cls, q: Float[Array, "*batch 4"]) -> SO3:
        """From a (possibly non-unit) quaternion in ``(w, x, y, z)`` order; normalized."""
        q = as_float(q)
        if q.ndim == 0 or q.shape[-1] != 4:
            raise ValueError(f"SO3 quaternion must have shape (..., 4); got {tuple(q.shape)}")
        return cls(normalize_any_scale(q))

    @classmethod
    def from_quaternion_xyzw(cls, q: Float[Array, "*batch 4"]) -> SO3:
        """From a (possibly non-unit) quaternion in ROS/SciPy ``(x, y, z, w)`` order; normalized."""
        q = as_float(q)
        if q.ndim == 0 or q.shape[-1] != 4:
            raise ValueError(f"SO3 quaternion must have shape (..., 4); got {tuple(q.shape)}")
        return cls.from_quaternion_wxyz(jnp.concatenate([q[..., 3:], q[..., :3]], axis=-1))

    def as_quaternion_wxyz(self) -> Float[Array, "*batch 4"]:
        return self.params

    def as_quaternion_xyzw(self) -> Float[Array, "*batch 4"]:
        """Quaternion in ROS/SciPy ``(x, y, z, w)`` order."""
        return jnp.concatenate([self.params[..., 1:], self.params[..., :1]], axis=-1)

    @classmethod
    def from_rotation_vector(cls, rotvec: Float[Array, "*batch 3"]) -> SO3:
        """Same as :meth:`exp` (axis × angle, radians)."""
        return cls.exp(rotvec)

    def as_rotation_vector(self) -> Float[Array, "*batch 3"]:
        return self.log()

    @classmethod
    def from_rpy(cls, roll, pitch, yaw) -> SO3:
        """``R = Rz(yaw) · Ry(pitch) · Rx(roll)``: intrinsic Z-Y'-X'' = extrinsic X-Y-Z (radians).

        This is the ROS / aerospace roll-pitch-yaw convention (SciPy ``from_euler("xyz", ...)``).
        """
        roll, pitch, yaw = jnp.broadcast_arrays(as_float(roll), as_float(pitch), as_float(yaw))
        return cls(_rpy_to_quat(roll, pitch, yaw))

    def as_rpy(self) -> tuple[Array, Array, Array]:
        """``(roll, pitch, yaw)`` with ``R = Rz(yaw) Ry(pitch) Rx(roll)``; pitch in ``[-π/2, π/2]``.

        ``from_rpy(*x.as_rpy())`` reproduces ``x`` to rounding everywhere, gimbal lock included.
        At gimbal lock (``|pitch| = π/2``) roll and yaw are not unique (only ``roll ∓ yaw`` is);
        the gradient is not finite there.
        """
        w, x, y, z = (self.params[..., i] for i in range(4))
        # q = q_z(yaw) q_y(pitch) q_x(roll) factors into half-angle sums and differences:
        #   (w + y, z - x) = a (cos, sin)((yaw - roll) / 2),
        #   (w - y, z + x) = b (cos, sin)((yaw + roll) / 2),
        # a = √(1 + sin pitch), b = √(1 - sin pitch). Reading the angles off these stays exact
        # near gimbal lock, where atan2 of matrix entries and arcsin lose all precision.
        a = jnp.hypot(w + y, z - x)
        b = jnp.hypot(w - y, z + x)
        pitch = jnp.arctan2(2 * (w * y - x * z), a * b)  # cos pitch = a b
        half_diff = jnp.arctan2(z - x, w + y)
        half_sum = jnp.arctan2(z + x, w - y)
        return _wrap_angle(half_sum - half_diff), pitch, _wrap_angle(half_sum + half_diff)

    @classmethod
    def from_x_radians(cls, theta) -> SO3:
        theta = as_float(theta)
        z = jnp.zeros_like(theta)
        return cls.exp(jnp.stack([theta, z, z], -1))

    @classmethod
    def from_y_radians(cls, theta) -> SO3:
        theta = as_float(theta)
        z = jnp.zeros_like(theta)
        return cls.exp(jnp.stack([z, theta, z], -1))

    @classmethod
    def from_z_radians(cls, theta) -> SO3:
        theta = as_float(theta)
        z = jnp.zeros_like(theta)
        return cls.exp(jnp.stack([z, z, theta], -1))

    # ---- group operations ----

    @classmethod
    def exp(cls, tangent: Float[Array, "*batch 3"]) -> SO3:
        return cls(quat_exp(check_tangent(cls, tangent)))

    def log(self) -> Float[Array, "*batch 3"]:
        return quat_log(self.params)

    def compose(self, other: SO3) -> SO3:
        a, b = bcast_params(self.params, other.params)
        return SO3(quat_mul(a, b))

    def inverse(self) -> SO3:
        return SO3(quat_conj(self.params))

    def act(self, points: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3"]:
        points = check_points(self, points)
        q, p = bcast_params(self.params, points)
        return quat_rotate(q, p)

    def adjoint(self) -> Float[Array, "*batch 3 3"]:
        return self.as_matrix()

    def as_matrix(self) -> Float[Array, "*batch 3 3"]:
        return quat_to_matrix(self.params)

    @classmethod
    def from_matrix(cls, matrix: Float[Array, "*batch 3 3"]) -> SO3:
        """Nearest rotation to ``matrix`` in Frobenius norm (same as the SVD projection)."""
        return cls(quat_from_matrix_projected(check_matrix(cls, matrix, 3)))

    def normalize(self) -> SO3:
        return SO3(normalize_last(self.params))

    # ---- Jacobians ----

    @classmethod
    def jac_right(cls, tangent: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3 3"]:
        return so3_jac_right(check_tangent(cls, tangent))

    @classmethod
    def jac_right_inv(cls, tangent: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3 3"]:
        return so3_jac_right_inv(check_tangent(cls, tangent))

    def retract_jac(self) -> Float[Array, "*batch 4 3"]:
        return quat_retract_jac(self.params)

    @classmethod
    def sample_uniform(cls, key: Array, batch_shape: Sequence[int] = (), dtype: Any = None) -> SO3:
        """Haar-uniform rotations (normalized Gaussian 4-vectors), ``w >= 0``."""
        dtype = resolve_dtype(dtype)
        q = jax.random.normal(key, as_batch_shape(batch_shape) + (4,), dtype)
        q = normalize_last(q)
        return cls(jnp.where(q[..., :1] < 0, -q, q))


