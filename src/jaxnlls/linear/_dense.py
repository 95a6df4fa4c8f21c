"""Dense symmetric positive (semi-)definite solves used by the step solvers and adjoints.

Small systems (n <= ``SMALL_N``) use an unrolled Cholesky written with elementwise operations:
under ``vmap`` on CPU, XLA's batched LAPACK ``potrf`` runs one tiny factorization per batch
member, which dominates the time of a batch of 2- to 8-parameter problems (measured with
``bench/curve.py``). Larger systems go through lineax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float

SMALL_N = 8


def _pivot_floor(A):
    n = A.shape[-1]
    scale = jnp.max(jnp.abs(jnp.diagonal(A)))
    return n * jnp.finfo(A.dtype).eps * jnp.where(scale > 0, scale, 1.0)


def _small_psd_solve(A, b):
    """Unrolled Cholesky ``A = L Lᵀ`` with safe pivots, then two triangular solves.

    A pivot below ``n·eps·A_jj`` marks a direction in which ``A`` is (numerically)
    singular (relative to its own diagonal, so badly scaled but well-posed systems such as
    NIST Roszman1's normal equations are solved, not truncated): that component of the
    solution is set to zero, so the answer stays finite (a basic solution of the consistent
    part) and ``ok`` is False.
    """
    n = A.shape[-1]
    eps_n = n * jnp.finfo(A.dtype).eps
    L = [[None] * n for _ in range(n)]
    good = []
    for j in range(n):
        d = A[j, j] - sum(L[j][k] * L[j][k] for k in range(j))
        ok_j = d > eps_n * A[j, j]  # relative to its own diagonal, so scale-invariant
        good.append(ok_j)
        ljj = jnp.sqrt(jnp.where(ok_j, d, 1.0))
        inv = jnp.where(ok_j, 1.0 / ljj, 0.0)
        L[j][j] = jnp.where(ok_j, ljj, 0.0)
        for i in range(j + 1, n):
            L[i][j] = (A[i, j] - sum(L[i][k] * L[j][k] for k in range(j))) * inv
    # forward: L y = b
    y = []
    for i in range(n):
        s = b[i] - sum(L[i][k] * y[k] for k in range(i))
        y.append(jnp.where(good[i], s / jnp.where(good[i], L[i][i], 1.0), 0.0))
    # backward: Lᵀ x = y
    x = [None] * n
    for i in reversed(range(n)):
        s = y[i] - sum(L[k][i] * x[k] for k in range(i + 1, n))
        x[i] = jnp.where(good[i], s / jnp.where(good[i], L[i][i], 1.0), 0.0)
    ok = jnp.all(jnp.stack(good))
    return jnp.stack(x), ok


def psd_solve(A: Float[Array, "n n"], b: Float[Array, " n"]) -> tuple[Array, Bool[Array, ""]]:
    """Solve ``A x = b`` for symmetric positive semi-definite ``A``.

    Cholesky first; if ``A`` is not numerically positive definite, a pseudo-inverse
    (minimum-norm least-squares) solve via lineax's SVD, so the answer is always finite.

    Returns:
        ``(x, ok)`` where ``ok`` is False when the fallback was needed.
    """
    n = A.shape[-1]
    if n <= SMALL_N:
        return _small_psd_solve(A, b)
    op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    sol = lx.linear_solve(op, b, lx.Cholesky(), throw=False)
    ok = (sol.result == lx.RESULTS.successful) & jnp.all(jnp.isfinite(sol.value))

    def fallback(_):
        return lx.linear_solve(lx.MatrixLinearOperator(A), b, lx.SVD(), throw=False).value

    x = jax.lax.cond(ok, lambda _: sol.value, fallback, None)
    return x, ok


def is_rank_deficient(A: Float[Array, "n n"]) -> Bool[Array, ""]:
    """Whether the PSD matrix ``A`` is numerically singular.

    The test is scale-invariant: ``A`` is first scaled to unit diagonal (so badly scaled but
    well-posed problems such as NIST Hahn1 are not flagged), then a Cholesky pivot below
    ``n·eps`` marks a singular direction. A zero column is singular outright.
    """
    n = A.shape[-1]
    d = jnp.diagonal(A)
    zero_col = jnp.any(d <= 0)
    s = jnp.where(d > 0, 1.0 / jnp.sqrt(jnp.where(d > 0, d, 1.0)), 1.0)
    B = A * s[:, None] * s[None, :]
    if n <= SMALL_N:
        return zero_col | ~_small_psd_solve(B, jnp.zeros(n, A.dtype))[1]
    L = jnp.linalg.cholesky(B)
    piv = jnp.diagonal(L)
    return zero_col | ~jnp.all(jnp.isfinite(piv) & (piv * piv > _pivot_floor(B)))
