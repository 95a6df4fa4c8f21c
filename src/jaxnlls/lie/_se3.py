"""SE(3): rigid motions stored as ``(qw, qx, qy, qz, tx, ty, tz)``; tangent ``(v, ω)``."""

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
from ._so3 import SO3, quat_exp, quat_log, so3_jac_right, so3_jac_right_inv
from ._utils import (
    as_float,
    cross,
    hat3,
    jr_inv_coeff,
    mm,
    normalize_last,
    one_minus_cos_over_sq,
    q_coeff2,
    q_coeff3,
    quat_conj,
    quat_from_matrix_projected,
    quat_mul,
    quat_retract_jac,
    quat_rotate,
    quat_to_matrix,
    sum_sq,
    theta_minus_sin_over_cube,
)


def _barfoot_q(rho: Array, phi: Array) -> Array:
    """Barfoot's ``Q(ρ, φ)``: upper-right block of the SE(3) left Jacobian ``J_l(ρ, φ)``."""
    t2 = sum_sq(phi)
    c1 = theta_minus_sin_over_cube(t2)[..., None, None]
    c2 = q_coeff2(t2)[..., None, None]
    c3 = q_coeff3(t2)[..., None, None]
    rx = hat3(rho)
    px = hat3(phi)
    pr = mm(px, rx)
    rp = mm(rx, px)
    prp = mm(pr, px)
    return (
        0.5 * rx
        + c1 * (pr + rp + prp)
        + c2 * (mm(px, pr) + mm(rp, px) - 3.0 * prp)
        + c3 * (mm(prp, px) + mm(px, prp))
    )


def se3_jac_right(tangent: Array) -> Array:
    v, w = tangent[..., :3], tangent[..., 3:]
    j = so3_jac_right(w)
    q = _barfoot_q(-v, -w)
    top = jnp.concatenate([j, q], axis=-1)
    bottom = jnp.concatenate([jnp.zeros_like(j), j], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


def se3_jac_right_inv(tangent: Array) -> Array:
    v, w = tangent[..., :3], tangent[..., 3:]
    ji = so3_jac_right_inv(w)
    q = _barfoot_q(-v, -w)
    top = jnp.concatenate([ji, -mm(mm(ji, q), ji)], axis=-1)
    bottom = jnp.concatenate([jnp.zeros_like(ji), ji], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


class SE3(AbstractLieGroup):
    """Rigid motion ``(R, t)``: ``params = (qw, qx, qy, qz, tx, ty, tz)``, tangent ``(v, ω)``.

    ``x @ p = R p + t``. ``Exp(v, ω) = (Exp(ω), V(ω) v)`` with ``V = J_l^{SO3}(ω)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxnlls.lie import SE3, SO3
        >>> T = SE3.from_rotation_and_translation(SO3.from_rpy(0.1, 0.0, 0.2), jnp.ones(3))
        >>> T.inverse() @ (T @ jnp.zeros(3))  # ≈ 0
    """

    params: Float[Array, "*batch 7"]

    tangent_dim: ClassVar[int] = 6
    params_dim: ClassVar[int] = 7
    space_dim: ClassVar[int] = 3
    matrix_dim: ClassVar[int] = 4
    params_layout: ClassVar[str] = "(qw, qx, qy, qz, tx, ty, tz)"
    identity_params: ClassVar[tuple[float, ...]] = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_rotation_and_translation(
        cls, rotation: SO3, translation: Float[Array, "*batch 3"]
    ) -> SE3:
        q, t = bcast_params(rotation.params, as_float(translation))
        return cls(jnp.concatenate([q, t], axis=-1))

    def rotation(self) -> SO3:
        return SO3(self.params[..., :4])

    def translation(self) -> Float[Array, "*batch 3"]:
        return self.params[..., 4:]

    @classmethod
    def exp(cls, tangent: Float[Array, "*batch 6"]) -> SE3:
        tangent = check_tangent(cls, tangent)
        v, w = tangent[..., :3], tangent[..., 3:]
        t2 = sum_sq(w)
        b = one_minus_cos_over_sq(t2)[..., None]
        c = theta_minus_sin_over_cube(t2)[..., None]
        wv = cross(w, v)
        t = v + b * wv + c * cross(w, wv)
        return cls(jnp.concatenate([quat_exp(w), t], axis=-1))

    def log(self) -> Float[Array, "*batch 6"]:
        w = quat_log(self.params[..., :4])
        t = self.params[..., 4:]
        d = jr_inv_coeff(sum_sq(w))[..., None]
        wt = cross(w, t)
        v = t - 0.5 * wt + d * cross(w, wt)
        return jnp.concatenate([v, w], axis=-1)

    def compose(self, other: SE3) -> SE3:
        a, b = bcast_params(self.params, other.params)
        q = quat_mul(a[..., :4], b[..., :4])
        t = a[..., 4:] + quat_rotate(a[..., :4], b[..., 4:])
        return SE3(jnp.concatenate([q, t], axis=-1))

    def inverse(self) -> SE3:
        qi = quat_conj(self.params[..., :4])
        return SE3(jnp.concatenate([qi, -quat_rotate(qi, self.params[..., 4:])], axis=-1))

    def act(self, points: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3"]:
        points = check_points(self, points)
        p, pts = bcast_params(self.params, points)
        return quat_rotate(p[..., :4], pts) + p[..., 4:]

    def adjoint(self) -> Float[Array, "*batch 6 6"]:
        """``[[R, t̂ R], [0, R]]`` for tangent order ``(v, ω)``."""
        r = quat_to_matrix(self.params[..., :4])
        tr = mm(hat3(self.params[..., 4:]), r)
        top = jnp.concatenate([r, tr], axis=-1)
        bottom = jnp.concatenate([jnp.zeros_like(r), r], axis=-1)
        return jnp.concatenate([top, bottom], axis=-2)

    def as_matrix(self) -> Float[Array, "*batch 4 4"]:
        r = quat_to_matrix(self.params[..., :4])
        top = jnp.concatenate([r, self.params[..., 4:, None]], axis=-1)
        bottom = jnp.broadcast_to(
            jnp.asarray([0.0, 0.0, 0.0, 1.0], self.dtype), self.batch_shape + (1, 4)
        )
        return jnp.concatenate([top, bottom], axis=-2)

    @classmethod
    def from_matrix(cls, matrix: Float[Array, "*batch 4 4"]) -> SE3:
        """From a homogeneous 4×4 matrix; the rotation block is projected onto SO(3)."""
        matrix = check_matrix(cls, matrix, 4)
        q = quat_from_matrix_projected(matrix[..., :3, :3])
        return cls(jnp.concatenate([q, matrix[..., :3, 3]], axis=-1))

    def normalize(self) -> SE3:
        return SE3(jnp.concatenate([normalize_last(self.params[..., :4]), self.params[..., 4:]], -1))

    @classmethod
    def jac_right(cls, tangent: Float[Array, "*batch 6"]) -> Float[Array, "*batch 6 6"]:
        """``[[J_r(ω), Q(-v, -ω)], [0, J_r(ω)]]`` (Barfoot's ``Q``)."""
        return se3_jac_right(check_tangent(cls, tangent))

    @classmethod
    def jac_right_inv(cls, tangent: Float[Array, "*batch 6"]) -> Float[Array, "*batch 6 6"]:
        """``[[J_r⁻¹, -J_r⁻¹ Q J_r⁻¹], [0, J_r⁻¹]]``."""
        return se3_jac_right_inv(check_tangent(cls, tangent))

    def retract_jac(self) -> Float[Array, "*batch 7 6"]:
        q = self.params[..., :4]
        r = quat_to_matrix(q)
        top = jnp.concatenate([jnp.zeros(q.shape[:-1] + (4, 3), q.dtype), quat_retract_jac(q)], -1)
        bottom = jnp.concatenate([r, jnp.zeros_like(r)], axis=-1)
        return jnp.concatenate([top, bottom], axis=-2)

    @classmethod
    def sample_uniform(cls, key: Array, batch_shape: Sequence[int] = (), dtype: Any = None) -> SE3:
        """Haar-uniform rotation, translation uniform in ``[-1, 1]³``."""
        dtype = resolve_dtype(dtype)
        k1, k2 = jax.random.split(key)
        rot = SO3.sample_uniform(k1, batch_shape, dtype)
        t = jax.random.uniform(k2, tuple(batch_shape) + (3,), dtype, -1.0, 1.0)
        return cls(jnp.concatenate([rot.params, t], axis=-1))


