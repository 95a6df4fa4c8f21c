"""Numerical helpers shared by the Lie groups (private).

Small-angle handling follows the double-``where`` pattern: the exact formula is evaluated on a
*safe* argument (``1`` inside the small region) and the Taylor series is selected there, so neither
branch produces NaN values or gradients, even at exactly zero. The switch point balances Taylor
truncation against floating-point cancellation and is derived from ``jnp.finfo(dtype).eps``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jaxtyping import Array, Float


def as_float(x) -> Array:
    """``jnp.asarray`` that turns non-floating input into the default float dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.asarray(0.0).dtype)
    return x


def small_threshold(dtype, order: int, n_terms: int) -> float:
    """Threshold on ``θ²`` below which a Taylor series replaces the exact formula.

    ``order`` is the power of ``θ`` lost to cancellation by the exact formula (plus slack for the
    derivatives we want accurate); ``n_terms`` Taylor terms truncate at ``θ^(2 n_terms)``. The
    two errors ``eps / θ^order`` and ``θ^(2 n_terms)`` are balanced.
    """
    eps = float(jnp.finfo(dtype).eps)
    return eps ** (2.0 / (order + 2 * n_terms))


def series(theta_sq: Array, coeffs: Sequence[float]) -> Array:
    """``Σ_k coeffs[k] θ^(2k)`` by Horner's rule in ``θ²``."""
    out = jnp.full_like(theta_sq, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * theta_sq + c
    return out


def taylor_switch(
    theta_sq: Array,
    exact: Callable[[Array], Array],
    coeffs: Sequence[float],
    order: int,
) -> Array:
    """Evaluate an even function of ``θ`` given ``θ²``: series near 0, ``exact(θ²)`` elsewhere."""
    thr = small_threshold(theta_sq.dtype, order, len(coeffs))
    small = theta_sq < thr
    safe = jnp.where(small, jnp.ones_like(theta_sq), theta_sq)
    return jnp.where(small, series(theta_sq, coeffs), exact(safe))


# ---- scalar coefficient functions of θ² (all even in θ) ----------------------------------------


def sinc(theta_sq: Array) -> Array:
    """``sin θ / θ``."""

    def exact(t2):
        t = jnp.sqrt(t2)
        return jnp.sin(t) / t

    return taylor_switch(theta_sq, exact, (1.0, -1 / 6, 1 / 120, -1 / 5040), order=2)


def cos_sqrt(theta_sq: Array) -> Array:
    """``cos θ`` from ``θ²`` with a finite gradient at 0."""
    return taylor_switch(
        theta_sq, lambda t2: jnp.cos(jnp.sqrt(t2)), (1.0, -1 / 2, 1 / 24, -1 / 720), order=2
    )


def one_minus_cos_over_sq(theta_sq: Array) -> Array:
    """``(1 - cos θ) / θ²`` (computed as ``2 sin²(θ/2)/θ²``: no cancellation)."""

    def exact(t2):
        h = 0.5 * jnp.sqrt(t2)
        s = jnp.sin(h)
        return 2.0 * s * s / t2

    return taylor_switch(theta_sq, exact, (1 / 2, -1 / 24, 1 / 720, -1 / 40320), order=2)


def theta_minus_sin_over_cube(theta_sq: Array) -> Array:
    """``(θ - sin θ) / θ³``."""

    def exact(t2):
        t = jnp.sqrt(t2)
        return (t - jnp.sin(t)) / (t2 * t)

    return taylor_switch(
        theta_sq, exact, (1 / 6, -1 / 120, 1 / 5040, -1 / 362880, 1 / 39916800), order=5
    )


def half_cot_coeff(theta_sq: Array) -> Array:
    """``(θ/2) cot(θ/2)`` (equals 1 at 0; finite for ``|θ| < 2π``)."""

    def exact(t2):
        h = 0.5 * jnp.sqrt(t2)
        return h * jnp.cos(h) / jnp.sin(h)

    return taylor_switch(theta_sq, exact, (1.0, -1 / 12, -1 / 720, -1 / 30240), order=2)


def jr_inv_coeff(theta_sq: Array) -> Array:
    """``(1 - (θ/2) cot(θ/2)) / θ² = 1/θ² - (1 + cos θ) / (2 θ sin θ)``, finite at ``θ = π``."""

    def exact(t2):
        h = 0.5 * jnp.sqrt(t2)
        return (1.0 - h * jnp.cos(h) / jnp.sin(h)) / t2

    return taylor_switch(
        theta_sq, exact, (1 / 12, 1 / 720, 1 / 30240, 1 / 1209600, 1 / 47900160), order=4
    )


def q_coeff2(theta_sq: Array) -> Array:
    """``(θ² + 2 cos θ - 2) / (2 θ⁴)`` (Barfoot's SE(3) ``Q`` matrix)."""

    def exact(t2):
        t = jnp.sqrt(t2)
        return (t2 + 2.0 * jnp.cos(t) - 2.0) / (2.0 * t2 * t2)

    return taylor_switch(
        theta_sq, exact, (1 / 24, -1 / 720, 1 / 40320, -1 / 3628800, 1 / 479001600), order=6
    )


def q_coeff3(theta_sq: Array) -> Array:
    """``(2θ - 3 sin θ + θ cos θ) / (2 θ⁵)`` (Barfoot's SE(3) ``Q`` matrix)."""

    def exact(t2):
        t = jnp.sqrt(t2)
        return (2.0 * t - 3.0 * jnp.sin(t) + t * jnp.cos(t)) / (2.0 * t2 * t2 * t)

    return taylor_switch(
        theta_sq, exact, (1 / 120, -1 / 2520, 1 / 120960, -1 / 9979200, 1 / 1245404160), order=7
    )


# ---- small vector helpers ----------------------------------------------------------------------


def hat3(w: Float[Array, "*b 3"]) -> Float[Array, "*b 3 3"]:
    """Skew-symmetric matrix ``ŵ`` with ``ŵ p = w × p``."""
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    o = jnp.zeros_like(x)
    return jnp.stack(
        [jnp.stack([o, -z, y], -1), jnp.stack([z, o, -x], -1), jnp.stack([-y, x, o], -1)], -2
    )


def cross(a: Array, b: Array) -> Array:
    """Cross product on the last axis (explicit, broadcast-free: shapes must match)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return jnp.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def sum_sq(x: Array) -> Array:
    return jnp.sum(x * x, axis=-1)


def eye_like(x: Array, n: int) -> Array:
    """Identity ``(..., n, n)`` with the batch shape of ``x[..., 0]`` and its dtype."""
    return jnp.broadcast_to(jnp.eye(n, dtype=x.dtype), x.shape[:-1] + (n, n))


def mm(a: Array, b: Array) -> Array:
    """Batched small-matrix product as a fused elementwise sum (fast for 3×3 on CPU)."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def matvec(m: Array, v: Array) -> Array:
    return jnp.einsum("...ij,...j->...i", m, v)


def broadcast_batch(*arrays: Array) -> list[Array]:
    """Broadcast the *batch* part (all but the last axis) of each array to a common shape."""
    batch = jnp.broadcast_shapes(*(a.shape[:-1] for a in arrays))
    return [jnp.broadcast_to(a, batch + a.shape[-1:]) for a in arrays]


# ---- quaternions (w, x, y, z), Hamilton convention ---------------------------------------------


def quat_mul(p: Array, q: Array) -> Array:
    pw, px, py, pz = p[..., 0], p[..., 1], p[..., 2], p[..., 3]
    qw, qx, qy, qz = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return jnp.stack(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ],
        axis=-1,
    )


def quat_conj(q: Array) -> Array:
    return jnp.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def quat_rotate(q: Array, p: Array) -> Array:
    """Rotate points ``p`` by unit quaternions ``q`` (same batch shape): ``R(q) p``."""
    w = q[..., :1]
    v = q[..., 1:]
    t = 2.0 * cross(v, p)
    return p + w * t + cross(v, t)


def quat_to_matrix(q: Array) -> Array:
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = [
        jnp.stack([1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)], -1),
        jnp.stack([2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)], -1),
        jnp.stack([2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)], -1),
    ]
    return jnp.stack(rows, -2)


def quat_from_matrix_projected(m: Float[Array, "*b 3 3"]) -> Float[Array, "*b 4"]:
    """Quaternion (w >= 0) of the rotation nearest to ``m`` in Frobenius norm.

    Maximizes ``tr(Rᵀ M) = qᵀ K q`` over unit ``q`` (Davenport / Bar-Itzhack): the top
    eigenvector of the symmetric 4×4 ``K``. This is the same projection as the SVD solution
    ``U diag(1, 1, det(U Vᵀ)) Vᵀ`` but, unlike SVD, stays differentiable at exactly orthogonal
    inputs (the top eigenvalue is simple there).
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    k = jnp.stack(
        [
            jnp.stack([m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            jnp.stack([m21 - m12, m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            jnp.stack([m02 - m20, m01 + m10, -m00 + m11 - m22, m12 + m21], -1),
            jnp.stack([m10 - m01, m02 + m20, m12 + m21, -m00 - m11 + m22], -1),
        ],
        -2,
    )
    _, vecs = jnp.linalg.eigh(k)
    q = vecs[..., :, -1]
    return jnp.where(q[..., :1] < 0, -q, q)


def quat_retract_jac(q: Array) -> Array:
    """``d (q ⊗ Exp(ω)) / dω`` at ``ω = 0``: ``½ L(q)[:, 1:]``, shape ``(..., 4, 3)``."""
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        jnp.stack([-x, -y, -z], -1),
        jnp.stack([w, -z, y], -1),
        jnp.stack([z, w, -x], -1),
        jnp.stack([-y, x, w], -1),
    ]
    return 0.5 * jnp.stack(rows, -2)


def normalize_last(x: Array) -> Array:
    return x / jnp.sqrt(sum_sq(x))[..., None]
