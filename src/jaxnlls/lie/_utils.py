"""Numerical helpers shared by the Lie groups (private).

Small-angle handling follows the double-``where`` pattern: the exact formula is evaluated on a
*safe* argument (``1`` inside the small region) and the Taylor series is selected there, so neither
branch produces NaN values or gradients, even at exactly zero. For the SE(2)/SO(2) helpers the
switch point balances Taylor truncation against floating-point cancellation and is derived from
``jnp.finfo(dtype).eps``; the SO(3)/SE(3) helpers (:func:`angle_terms` and the ``*_of``
coefficient functions) instead use full-precision polynomials below ``θ = π/2`` and one polynomial
sin/cos pair above it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def as_float(x) -> Array:
    """``jnp.asarray`` that turns integer or boolean input into the default float dtype; complex
    input is an error (casting would drop the imaginary part without a word)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"jaxnlls.lie takes real arrays; got one of dtype {x.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.asarray(0.0).dtype)
    return x


def as_batch_shape(batch_shape) -> tuple[int, ...]:
    """``batch_shape`` as a tuple; a bare integer ``n`` means ``(n,)``, as in ``jnp.zeros``."""
    if isinstance(batch_shape, int):
        return (batch_shape,)
    return tuple(batch_shape)


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


# ---- one-sincos trigonometry -------------------------------------------------------------------
#
# XLA:CPU's ``sin``/``cos``/``atan2`` are 10-30x the cost of a fused multiply-add chain, and most
# group operations need several of them of one angle. Below, every coefficient function of the
# rotation angle is built from ONE polynomial sin/cos pair of the half angle ``h = θ/2`` (Cody-Waite
# reduction to ``|r| ≤ π/4`` plus Taylor polynomials accurate to the dtype's precision), and in the
# region ``θ < π/2`` from Taylor polynomials in ``θ²`` directly: no ``sqrt`` or division there, so
# values AND gradients (any order) are finite and accurate at exactly ``θ = 0``. The large-angle
# branch sees a safe ``θ = 1`` inside that region (the double-``where`` pattern).

_HALF_PI = 0.5 * math.pi
# Cody-Waite split of π/2 (leading parts with trailing zero bits, so ``k * P1`` is exact).
_PIO2_F32 = (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8)
_PIO2_F64 = (1.57079625129699707031, 7.54978941586159635336e-8, 5.39030285815811905290e-15)
POLY_SMALL_SQ = _HALF_PI * _HALF_PI  # θ² below which coefficient functions are polynomials


def _is_f64(dtype) -> bool:
    return jnp.finfo(dtype).bits > 32


def _coeffs(dtype, gen: Callable[[int], float], n32: int, n64: int) -> list[float]:
    return [gen(k) for k in range(n64 if _is_f64(dtype) else n32)]


def _sin_over_x_sq(z: Array) -> Array:
    """``sin(x)/x`` as a polynomial in ``z = x²`` (``|x| ≤ π/4``, full precision)."""
    return series(z, _coeffs(z.dtype, lambda k: (-1) ** k / math.factorial(2 * k + 1), 6, 9))


def _cos_sq(z: Array) -> Array:
    """``cos(x)`` as a polynomial in ``z = x²`` (``|x| ≤ π/4``, full precision)."""
    return series(z, _coeffs(z.dtype, lambda k: (-1) ** k / math.factorial(2 * k), 7, 10))


def sincos(x: Array) -> tuple[Array, Array]:
    """``(sin x, cos x)`` for any finite ``x`` from one range reduction and two short polynomials.

    Accurate to a few ulp for ``|x| ≲ 10⁴`` (float32) / ``10⁹`` (float64), always bounded with
    ``sin² + cos² = 1`` to rounding; differentiable (the quadrant index has zero derivative).
    """
    p1, p2, p3 = _PIO2_F64 if _is_f64(x.dtype) else _PIO2_F32
    k = jnp.round(x * (1.0 / _HALF_PI))
    r = ((x - k * p1) - k * p2) - k * p3
    z = r * r
    s = r * _sin_over_x_sq(z)
    c = _cos_sq(z)
    quadrant = k - 4.0 * jnp.floor(0.25 * k)  # k mod 4 in {0, 1, 2, 3}
    swap = (quadrant == 1.0) | (quadrant == 3.0)
    sin_x = jnp.where(swap, c, s)
    cos_x = jnp.where(swap, s, c)
    sin_x = jnp.where(quadrant >= 2.0, -sin_x, sin_x)
    cos_x = jnp.where((quadrant == 1.0) | (quadrant == 2.0), -cos_x, cos_x)
    return sin_x, cos_x


class AngleTerms(NamedTuple):
    """Shared quantities of the rotation angle ``θ = sqrt(theta_sq)``.

    ``small`` marks ``θ < π/2`` (polynomial region). ``theta``, ``sin_half`` and ``cos_half`` are
    for the exact (large-angle) formulas and hold the values of a safe ``θ = 1`` inside the small
    region.
    """

    theta_sq: Array
    small: Array
    theta: Array  # safe θ
    sin_half: Array  # sin(θ/2) at safe θ
    cos_half: Array  # cos(θ/2) at safe θ


def angle_terms(theta_sq: Array) -> AngleTerms:
    small = theta_sq < POLY_SMALL_SQ
    theta = jnp.sqrt(jnp.where(small, jnp.ones_like(theta_sq), theta_sq))
    sin_half, cos_half = sincos(0.5 * theta)
    return AngleTerms(theta_sq, small, theta, sin_half, cos_half)


def angle_terms_from_half(theta_sq: Array, sin_half: Array, cos_half: Array) -> AngleTerms:
    """:class:`AngleTerms` when ``sin(θ/2)``, ``cos(θ/2)`` are already known (e.g. from a log)."""
    small = theta_sq < POLY_SMALL_SQ
    theta = jnp.sqrt(jnp.where(small, jnp.ones_like(theta_sq), theta_sq))
    sin_half = jnp.where(small, jnp.full_like(theta_sq, math.sin(0.5)), sin_half)
    cos_half = jnp.where(small, jnp.full_like(theta_sq, math.cos(0.5)), cos_half)
    return AngleTerms(theta_sq, small, theta, sin_half, cos_half)


def _switch(
    a: AngleTerms,
    gen: Callable[[int], float],
    n32: int,
    n64: int,
    num: Array,
    den: Array | None = None,
    wide: bool = False,
) -> Array:
    """Taylor polynomial in ``θ²`` for ``θ < π/2`` (``wide``: ``θ < π``, for formulas that
    cancel), the exact ``num / den`` elsewhere.

    Both regions end in ONE division: on XLA:CPU a division is where a fused elementwise
    computation is materialized instead of being re-evaluated for every output entry that
    uses it (e.g. the nine entries of a 3×3 Jacobian).
    """
    use = (a.theta_sq < math.pi * math.pi) if wide else a.small
    # the polynomial also sees a safe argument: no overflow (hence no NaN gradient) for large θ
    t2 = jnp.where(use, a.theta_sq, jnp.zeros_like(a.theta_sq))
    out = jnp.where(use, series(t2, _coeffs(t2.dtype, gen, n32, n64)), num)
    if den is None:
        return out
    return out / jnp.where(use, jnp.ones_like(den), den)


# Taylor coefficients in θ² (index k ↦ coefficient of θ^(2k)); term counts give full precision
# for θ < π/2, or θ < π for the ``wide`` ones.


def cos_half_of(a: AngleTerms) -> Array:
    """``cos(θ/2)``."""
    return _switch(a, lambda k: (-1) ** k / (4**k * math.factorial(2 * k)), 6, 10, a.cos_half)


def sin_half_over_theta_of(a: AngleTerms) -> Array:
    """``sin(θ/2) / θ``."""
    gen = lambda k: 0.5 * (-1) ** k / (4**k * math.factorial(2 * k + 1))  # noqa: E731
    return _switch(a, gen, 6, 9, a.sin_half, a.theta)


def sin_over_theta_of(a: AngleTerms) -> Array:
    """``sin θ / θ``."""
    gen = lambda k: (-1) ** k / math.factorial(2 * k + 1)  # noqa: E731
    return _switch(a, gen, 7, 11, 2.0 * a.sin_half * a.cos_half, a.theta)


def one_minus_cos_over_sq_of(a: AngleTerms) -> Array:
    """``(1 - cos θ) / θ² = 2 sin²(θ/2) / θ²``."""
    gen = lambda k: (-1) ** k / math.factorial(2 * k + 2)  # noqa: E731
    return _switch(a, gen, 7, 11, 2.0 * a.sin_half * a.sin_half, a.theta * a.theta)


def theta_minus_sin_over_cube_of(a: AngleTerms) -> Array:
    """``(θ - sin θ) / θ³``."""
    t = a.theta
    gen = lambda k: (-1) ** k / math.factorial(2 * k + 3)  # noqa: E731
    return _switch(a, gen, 8, 13, t - 2.0 * a.sin_half * a.cos_half, t * t * t, wide=True)


def _bernoulli_even(n: int) -> list[Fraction]:
    """``B_0, B_2, …, B_{2n}`` (exact)."""
    b = [Fraction(0)] * (2 * n + 1)
    for m in range(2 * n + 1):
        b[m] = Fraction(1) if m == 0 else -sum(
            Fraction(math.comb(m + 1, j)) * b[j] for j in range(m)
        ) / (m + 1)
    return [b[2 * i] for i in range(n + 1)]


_B2 = _bernoulli_even(16)


def jr_inv_coeff_of(a: AngleTerms) -> Array:
    """``(1 - (θ/2) cot(θ/2)) / θ²`` (finite for ``θ < 2π``)."""
    t, sh = a.theta, a.sin_half
    gen = lambda k: float((-1) ** k * _B2[k + 1] / math.factorial(2 * k + 2))  # noqa: E731
    return _switch(a, gen, 7, 14, sh - 0.5 * t * a.cos_half, sh * t * t)


def q_coeff2_of(a: AngleTerms) -> Array:
    """``(θ² + 2 cos θ - 2) / (2 θ⁴) = (θ²/2 - 2 sin²(θ/2)) / θ⁴``."""
    t2 = a.theta * a.theta
    gen = lambda k: (-1) ** k / math.factorial(2 * k + 4)  # noqa: E731
    return _switch(a, gen, 8, 13, 0.5 * t2 - 2.0 * a.sin_half * a.sin_half, t2 * t2, wide=True)


def q_coeff3_of(a: AngleTerms) -> Array:
    """``(2θ - 3 sin θ + θ cos θ) / (2 θ⁵)``."""
    t, sh, ch = a.theta, a.sin_half, a.cos_half
    sin_t = 2.0 * sh * ch
    cos_t = 1.0 - 2.0 * sh * sh
    t2 = t * t
    gen = lambda k: (-1) ** k * (k + 1) / math.factorial(2 * k + 5)  # noqa: E731
    num = 2.0 * t - 3.0 * sin_t + t * cos_t
    return _switch(a, gen, 8, 13, num, 2.0 * t2 * t2 * t, wide=True)


# ---- atan2 for the quaternion log ------------------------------------------------------------------

_TAN_PI_8 = math.tan(math.pi / 8)


def _atan_over_x_sq(z: Array) -> Array:
    """``atan(x)/x`` as a polynomial in ``z = x² ≤ tan²(π/8)`` (full precision)."""
    return series(z, _coeffs(z.dtype, lambda k: (-1) ** k / (2 * k + 1), 10, 21))


def half_angle_over_norm(w: Array, n2: Array) -> Array:
    """``atan2(n, w) / n`` for ``w ≥ 0``, ``n = sqrt(n2) ≥ 0`` (not both 0).

    Near ``n = 0`` (``n < tan(π/8) w``) this is ``P(n²/w²)/w`` with ``P(z) = atan(√z)/√z`` a
    polynomial: no ``sqrt``/division by ``n``, so gradients are finite at ``n = 0``. Elsewhere
    ``atan2`` is reduced to ``|u| ≤ tan(π/8)`` with ``u = lo/hi`` or ``(lo - hi)/(lo + hi)``.
    """
    w2 = w * w
    small = n2 < (_TAN_PI_8 * _TAN_PI_8) * w2
    n = jnp.sqrt(jnp.where(small, jnp.ones_like(n2), n2))
    swap = n > w
    lo = jnp.where(swap, w, n)
    hi = jnp.where(swap, n, w)
    mid = lo > _TAN_PI_8 * hi
    # one division for both regions: z = n²/w² (small) or u = lo/hi, (lo - hi)/(lo + hi)
    t = jnp.where(small, n2, jnp.where(mid, lo - hi, lo)) / jnp.where(
        small, w2, jnp.where(mid, lo + hi, hi)
    )
    p = _atan_over_x_sq(jnp.where(small, t, t * t))
    at = jnp.where(mid, 0.25 * math.pi, 0.0) + t * p  # atan(lo / hi) in [0, π/4]
    half = jnp.where(swap, _HALF_PI - at, at)
    # ... and one for the result (also the point where XLA materializes it)
    return jnp.where(small, p, half) / jnp.where(small, w, n)


# ---- output assembly ------------------------------------------------------------------------------


def stack_last(values: Sequence[Array]) -> Array:
    """``jnp.stack(values, -1)`` for a few cheap batch-shaped arrays, built by ``where`` on an iota.

    On XLA:CPU a fused ``stack``/``concatenate`` root picks its operand by a branch per output
    element, which blocks vectorization; a select chain is branch-free (each element evaluates
    every value, so use it for cheap or already-materialized values). 2-3x faster for the
    3- and 4-vectors of ``act``, ``compose`` and ``exp``.
    """
    shape = jnp.broadcast_shapes(*(v.shape for v in values))
    dtype = jnp.result_type(*values)
    idx = jax.lax.broadcasted_iota(jnp.int32, shape + (len(values),), len(shape))
    out = jnp.broadcast_to(jnp.asarray(values[-1], dtype)[..., None], shape + (len(values),))
    for i in range(len(values) - 2, -1, -1):
        out = jnp.where(idx == i, jnp.asarray(values[i], dtype)[..., None], out)
    return out


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
    """``Σ x_i²`` over the last axis; for the short vectors here as an explicit elementwise sum,
    which XLA:CPU fuses into the consumer (a reduction is its own kernel and, on a slice, a copy).
    """
    n = x.shape[-1]
    if 0 < n <= 4:
        out = x[..., 0] * x[..., 0]
        for i in range(1, n):
            out = out + x[..., i] * x[..., i]
        return out
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


def quat_mul_components(p: Array, q: Array) -> list[Array]:
    """The four components ``(w, x, y, z)`` of ``p q`` (to be stacked once with others)."""
    pw, px, py, pz = p[..., 0], p[..., 1], p[..., 2], p[..., 3]
    qw, qx, qy, qz = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return [
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    ]


def quat_mul(p: Array, q: Array) -> Array:
    return stack_last(quat_mul_components(p, q))


def quat_conj(q: Array) -> Array:
    return jnp.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def quat_rotate_components(q: Array, p: Array, offset: Array | None = None) -> list[Array]:
    """The three components of ``R(q) p (+ offset)`` for unit quaternions ``q``.

    ``p + w t + v × t`` with ``t = 2 v × p``, written per component so that XLA fuses it into one
    elementwise loop (a vector-valued ``t`` would be materialized between the two cross products).
    """
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    px, py, pz = p[..., 0], p[..., 1], p[..., 2]
    tx = 2.0 * (y * pz - z * py)
    ty = 2.0 * (z * px - x * pz)
    tz = 2.0 * (x * py - y * px)
    out = [
        px + w * tx + (y * tz - z * ty),
        py + w * ty + (z * tx - x * tz),
        pz + w * tz + (x * ty - y * tx),
    ]
    if offset is not None:
        out = [o + offset[..., i] for i, o in enumerate(out)]
    return out


def quat_rotate(q: Array, p: Array, offset: Array | None = None) -> Array:
    """Rotate points ``p`` by unit quaternions ``q`` (same batch shape): ``R(q) p (+ offset)``."""
    return stack_last(quat_rotate_components(q, p, offset))


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
    inputs (the top eigenvalue is simple there). It has no derivative (NaN) where the nearest
    rotation is not unique (repeated top eigenvalue: a zero or rank-1 matrix, ``diag(1, 1, -1)``).
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
    q = _top_eigvec(k)
    return jnp.where(q[..., :1] < 0, -q, q)


@jax.custom_jvp
def _top_eigvec(k: Float[Array, "*b 4 4"]) -> Float[Array, "*b 4"]:
    """Unit eigenvector of the largest eigenvalue of the symmetric ``k``."""
    return jnp.linalg.eigh(k)[1][..., :, -1]


@_top_eigvec.defjvp
def _top_eigvec_jvp(primals, tangents):
    # ``eigh``'s own rule divides by the gaps between ALL eigenvalue pairs: for a rotation the
    # three lower eigenvalues of K are equal, so reverse mode gives 0 · inf = NaN. The top
    # eigenvector only needs the gap below λ: (λI - K) dv = (I - v vᵀ) dK v with vᵀ dv = 0,
    # solved as (λI - K + v vᵀ) dv = ... (invertible iff λ is simple). Written in terms of
    # ``_top_eigvec`` itself, so higher derivatives avoid ``eigh``'s rule too.
    (k,), (dk,) = primals, tangents
    v = _top_eigvec(k)
    kv = jnp.einsum("...ij,...j->...i", k, v)
    dkv = jnp.einsum("...ij,...j->...i", dk, v)
    lam = jnp.sum(v * kv, axis=-1)
    rhs = dkv - jnp.sum(v * dkv, axis=-1, keepdims=True) * v
    eye = jnp.eye(4, dtype=k.dtype)
    a = lam[..., None, None] * eye - k + v[..., :, None] * v[..., None, :]
    return v, jnp.linalg.solve(a, rhs[..., None])[..., 0]


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


def normalize_any_scale(x: Array) -> Array:
    """``x / |x|`` for user input of any finite nonzero scale: dividing by ``max |x_i|`` first
    keeps the squared norm from underflowing (|x| < 1e-19 in float32 gave NaN) or overflowing
    (|x| > 2e19 gave the zero quaternion). ``normalize_last`` stays the fast path for the
    near-unit parameters of ``retract``."""
    m = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    return normalize_last(x / jnp.where(m > 0, m, jnp.ones_like(m)))
