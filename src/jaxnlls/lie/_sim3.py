"""Sim(3): similarity transforms ``p ↦ s R p + t``.

Stored as ``(qw, qx, qy, qz, tx, ty, tz, s)`` (scale itself, ``s > 0``); tangent
``(v, ω, σ)`` with ``σ = log`` of the scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
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
from ._so3 import SO3, quat_exp, quat_log
from ._utils import (
    as_batch_shape,
    as_float,
    eye_like,
    hat3,
    matvec,
    normalize_last,
    quat_conj,
    quat_from_matrix_projected,
    quat_mul,
    quat_retract_jac,
    quat_rotate,
    quat_to_matrix,
)


def _phi1(m: Array) -> Array:
    """``φ₁(M) = Σ_k M^k / (k+1)!`` via the exponential of the block matrix ``[[M, I], [0, 0]]``.

    Exact up to the Padé accuracy of ``expm`` (machine precision), entire in ``M``, so there is
    no small-angle or small-scale special case and gradients are finite everywhere.
    """
    n = m.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(n, dtype=m.dtype), m.shape)
    zeros = jnp.zeros_like(m)
    big = jnp.concatenate(
        [jnp.concatenate([m, eye], -1), jnp.concatenate([zeros, zeros], -1)], -2
    )
    return jsl.expm(big)[..., :n, n:]


def _w_matrix(omega: Array, sigma: Array) -> Array:
    """``W(ω, σ) = ∫₀¹ e^{στ} Exp(τω) dτ = φ₁(σ I + ω̂)`` (translation part of ``Exp``)."""
    x = hat3(omega) + sigma[..., None, None] * eye_like(omega, 3)
    return _phi1(x)


def _ad(tangent: Array) -> Array:
    """Lie-algebra adjoint ``ad(ξ)`` for ``ξ = (v, ω, σ)``, shape ``(..., 7, 7)``."""
    v, w, s = tangent[..., :3], tangent[..., 3:6], tangent[..., 6]
    wx = hat3(w)
    eye = eye_like(w, 3)
    z33 = jnp.zeros_like(wx)
    z31 = jnp.zeros(w.shape[:-1] + (3, 1), w.dtype)
    z13 = jnp.zeros(w.shape[:-1] + (1, 3), w.dtype)
    z11 = jnp.zeros(w.shape[:-1] + (1, 1), w.dtype)
    row1 = jnp.concatenate([wx + s[..., None, None] * eye, hat3(v), -v[..., None]], -1)
    row2 = jnp.concatenate([z33, wx, z31], -1)
    row3 = jnp.concatenate([z13, z13, z11], -1)
    return jnp.concatenate([row1, row2, row3], -2)


class Sim3(AbstractLieGroup):
    """Similarity ``(s, R, t)``: ``params = (qw, qx, qy, qz, tx, ty, tz, s)``, tangent ``(v, ω, σ)``.

    ``x @ p = s R p + t``; ``Exp(v, ω, σ) = (e^σ, Exp(ω), W(ω, σ) v)``. The raw constructor trusts
    ``s > 0`` and a unit quaternion. ``exp``/``log`` translation parts and the Jacobians use the
    entire matrix function ``φ₁`` (via ``expm``), so they have no singular special cases.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxnlls.lie import Sim3, SO3
        >>> S = Sim3.from_rotation_translation_scale(SO3.identity(), jnp.zeros(3), 2.0)
        >>> S @ jnp.ones(3)  # (2, 2, 2)
    """

    params: Float[Array, "*batch 8"]

    tangent_dim: ClassVar[int] = 7
    params_dim: ClassVar[int] = 8
    space_dim: ClassVar[int] = 3
    matrix_dim: ClassVar[int] = 4
    params_layout: ClassVar[str] = "(qw, qx, qy, qz, tx, ty, tz, s)"
    identity_params: ClassVar[tuple[float, ...]] = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_rotation_translation_scale(
        cls, rotation: SO3, translation: Float[Array, "*batch 3"], scale
    ) -> Sim3:
        """From a rotation, a translation and a positive scale (arguments broadcast)."""
        translation = check_rotation_translation(cls, rotation, SO3, translation)
        q, t, s = bcast_params(rotation.params, translation, as_float(scale)[..., None])
        return cls(jnp.concatenate([q, t, s], axis=-1))

    def rotation(self) -> SO3:
        return SO3(self.params[..., :4])

    def translation(self) -> Float[Array, "*batch 3"]:
        return self.params[..., 4:7]

    def scale(self) -> Float[Array, "*batch"]:
        return self.params[..., 7]

    @classmethod
    def exp(cls, tangent: Float[Array, "*batch 7"]) -> Sim3:
        tangent = check_tangent(cls, tangent)
        v, w, sigma = tangent[..., :3], tangent[..., 3:6], tangent[..., 6]
        t = matvec(_w_matrix(w, sigma), v)
        return cls(jnp.concatenate([quat_exp(w), t, jnp.exp(sigma)[..., None]], axis=-1))

    def log(self) -> Float[Array, "*batch 7"]:
        w = quat_log(self.params[..., :4])
        sigma = jnp.log(self.params[..., 7])
        v = jnp.linalg.solve(_w_matrix(w, sigma), self.params[..., 4:7, None])[..., 0]
        return jnp.concatenate([v, w, sigma[..., None]], axis=-1)

    def compose(self, other: Sim3) -> Sim3:
        a, b = bcast_params(self.params, other.params)
        q = quat_mul(a[..., :4], b[..., :4])
        t = a[..., 4:7] + a[..., 7:] * quat_rotate(a[..., :4], b[..., 4:7])
        return Sim3(jnp.concatenate([q, t, a[..., 7:] * b[..., 7:]], axis=-1))

    def inverse(self) -> Sim3:
        qi = quat_conj(self.params[..., :4])
        s_inv = 1.0 / self.params[..., 7:]
        t = -s_inv * quat_rotate(qi, self.params[..., 4:7])
        return Sim3(jnp.concatenate([qi, t, s_inv], axis=-1))

    def act(self, points: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3"]:
        points = check_points(self, points)
        p, pts = bcast_params(self.params, points)
        return p[..., 7:] * quat_rotate(p[..., :4], pts) + p[..., 4:7]

    def adjoint(self) -> Float[Array, "*batch 7 7"]:
        """``[[sR, t̂ R, -t], [0, R, 0], [0, 0, 1]]`` for tangent order ``(v, ω, σ)``."""
        r = quat_to_matrix(self.params[..., :4])
        t = self.params[..., 4:7]
        s = self.params[..., 7, None, None]
        z31 = jnp.zeros(t.shape[:-1] + (3, 1), t.dtype)
        z13 = jnp.zeros(t.shape[:-1] + (1, 3), t.dtype)
        one = jnp.ones(t.shape[:-1] + (1, 1), t.dtype)
        row1 = jnp.concatenate([s * r, hat3(t) @ r, -t[..., None]], -1)
        row2 = jnp.concatenate([jnp.zeros_like(r), r, z31], -1)
        row3 = jnp.concatenate([z13, z13, one], -1)
        return jnp.concatenate([row1, row2, row3], -2)

    def as_matrix(self) -> Float[Array, "*batch 4 4"]:
        r = quat_to_matrix(self.params[..., :4]) * self.params[..., 7, None, None]
        top = jnp.concatenate([r, self.params[..., 4:7, None]], axis=-1)
        bottom = jnp.broadcast_to(
            jnp.asarray([0.0, 0.0, 0.0, 1.0], self.dtype), self.batch_shape + (1, 4)
        )
        return jnp.concatenate([top, bottom], axis=-2)

    @classmethod
    def from_matrix(cls, matrix: Float[Array, "*batch 4 4"]) -> Sim3:
        """From ``[[A, t], [0, 1]]``: ``R`` = nearest rotation to ``A``, ``s = tr(Rᵀ A) / 3``."""
        matrix = check_matrix(cls, matrix, 4)
        a = matrix[..., :3, :3]
        q = quat_from_matrix_projected(a)
        s = jnp.sum(quat_to_matrix(q) * a, axis=(-2, -1)) / 3.0
        return cls(jnp.concatenate([q, matrix[..., :3, 3], s[..., None]], axis=-1))

    def normalize(self) -> Sim3:
        return Sim3(
            jnp.concatenate([normalize_last(self.params[..., :4]), self.params[..., 4:]], -1)
        )

    @classmethod
    def jac_right(cls, tangent: Float[Array, "*batch 7"]) -> Float[Array, "*batch 7 7"]:
        """``J_r(ξ) = φ₁(-ad ξ) = Σ_k (-ad ξ)^k / (k+1)!``."""
        tangent = check_tangent(cls, tangent)
        return _phi1(-_ad(tangent))

    @classmethod
    def jac_right_inv(cls, tangent: Float[Array, "*batch 7"]) -> Float[Array, "*batch 7 7"]:
        return jnp.linalg.inv(cls.jac_right(tangent))

    def retract_jac(self) -> Float[Array, "*batch 8 7"]:
        q = self.params[..., :4]
        s = self.params[..., 7, None, None]
        r = quat_to_matrix(q)
        b = q.shape[:-1]
        z = lambda m, n: jnp.zeros(b + (m, n), q.dtype)  # noqa: E731
        row_q = jnp.concatenate([z(4, 3), quat_retract_jac(q), z(4, 1)], -1)
        row_t = jnp.concatenate([s * r, z(3, 3), z(3, 1)], -1)
        row_s = jnp.concatenate([z(1, 3), z(1, 3), s], -1)
        return jnp.concatenate([row_q, row_t, row_s], -2)

    @classmethod
    def sample_uniform(cls, key: Array, batch_shape: Sequence[int] = (), dtype: Any = None) -> Sim3:
        """Haar-uniform rotation, translation uniform in ``[-1, 1]³``, log-scale in ``[-1, 1]``."""
        dtype = resolve_dtype(dtype)
        k1, k2, k3 = jax.random.split(key, 3)
        shape = as_batch_shape(batch_shape)
        rot = SO3.sample_uniform(k1, shape, dtype)
        t = jax.random.uniform(k2, shape + (3,), dtype, -1.0, 1.0)
        log_s = jax.random.uniform(k3, shape + (1,), dtype, -1.0, 1.0)
        return cls(jnp.concatenate([rot.params, t, jnp.exp(log_s)], axis=-1))
