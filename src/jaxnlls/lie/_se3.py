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
from ._so3 import SO3, quat_exp, quat_log
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


# 3×3 matrices as nested lists of batch-shaped arrays: products unroll into one fused
# elementwise kernel, much faster on CPU than batched (…, 3, 3) matmuls.


def _hat_l(w: Array) -> list[list[Array]]:
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    o = jnp.zeros_like(x)
    return [[o, -z, y], [z, o, -x], [-y, x, o]]


def _mm_l(a, b):
    return [[a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j] for j in range(3)]
            for i in range(3)]


def _lin_l(terms):
    """Σ c_k M_k for (coefficient, list-matrix) pairs; coefficients broadcast (batch-shaped)."""
    return [[sum(c * m[i][j] for c, m in terms) for j in range(3)] for i in range(3)]


def _neg_l(a):
    return [[-a[i][j] for j in range(3)] for i in range(3)]


def _rot_l(a, b, c, w):
    """``a I + b ŵ + c w wᵀ`` as a list-matrix."""
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    return [
        [a + c * x * x, -b * z + c * x * y, b * y + c * x * z],
        [b * z + c * y * x, a + c * y * y, -b * x + c * y * z],
        [-b * y + c * z * x, b * x + c * z * y, a + c * z * z],
    ]


def _blocks_to_array(tl, tr, bl, br) -> Array:
    rows = [tl[i] + tr[i] for i in range(3)] + [bl[i] + br[i] for i in range(3)]
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def _barfoot_q_l(rho: Array, phi: Array):
    """Barfoot's ``Q(ρ, φ)``: upper-right block of the SE(3) left Jacobian ``J_l(ρ, φ)``."""
    t2 = sum_sq(phi)
    c1 = theta_minus_sin_over_cube(t2)
    c2 = q_coeff2(t2)
    c3 = q_coeff3(t2)
    # materialize the transcendental coefficients once (XLA would otherwise recompute them for
    # each of the output entries that a fused concatenate pulls them into)
    c1, c2, c3 = jax.lax.optimization_barrier((c1, c2, c3))
    rx = _hat_l(rho)
    px = _hat_l(phi)
    pr = _mm_l(px, rx)
    rp = _mm_l(rx, px)
    prp = _mm_l(pr, px)
    return _lin_l([
        (0.5, rx),
        (c1, pr), (c1, rp), (c1, prp),
        (c2, _mm_l(px, pr)), (c2, _mm_l(rp, px)), (-3.0 * c2, prp),
        (c3, _mm_l(prp, px)), (c3, _mm_l(px, prp)),
    ])


def _barfoot_q(rho: Array, phi: Array) -> Array:
    q = _barfoot_q_l(rho, phi)
    return jnp.stack([jnp.stack(r, -1) for r in q], -2)


def _so3_jr_l(w: Array):
    t2 = sum_sq(w)
    b = one_minus_cos_over_sq(t2)
    c = theta_minus_sin_over_cube(t2)
    return _rot_l(1.0 - c * t2, -b, c, w)


def _so3_jr_inv_l(w: Array):
    t2 = sum_sq(w)
    d = jr_inv_coeff(t2)
    return _rot_l(1.0 - d * t2, jnp.full_like(t2, 0.5), d, w)


def se3_jac_right(tangent: Array) -> Array:
    v, w = tangent[..., :3], tangent[..., 3:]
    j, q = jax.lax.optimization_barrier((_so3_jr_l(w), _barfoot_q_l(-v, -w)))
    o = jnp.zeros_like(v[..., 0])
    zero = [[o] * 3 for _ in range(3)]
    return _blocks_to_array(j, q, zero, j)


def se3_jac_right_inv(tangent: Array) -> Array:
    v, w = tangent[..., :3], tangent[..., 3:]
    ji, q = jax.lax.optimization_barrier((_so3_jr_inv_l(w), _barfoot_q_l(-v, -w)))
    ji_a = jnp.stack([jnp.stack(r, -1) for r in ji], -2)
    q_a = jnp.stack([jnp.stack(r, -1) for r in q], -2)
    top = jnp.concatenate([ji_a, -jnp.matmul(jnp.matmul(ji_a, q_a), ji_a)], axis=-1)
    bottom = jnp.concatenate([jnp.zeros_like(ji_a), ji_a], axis=-1)
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


