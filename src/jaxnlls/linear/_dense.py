"""Dense symmetric positive (semi-)definite solves used by the step solvers and adjoints.

Small systems (n <= ``SMALL_N``) use an unrolled Cholesky written with elementwise operations:
under ``vmap`` on CPU, XLA's batched LAPACK ``potrf`` runs one tiny factorization per batch
member, which dominates the time of a batch of 2- to 8-parameter problems (measured with
``bench/curve.py``). Larger systems go through lineax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


#: Up to this size the Cholesky factorization is a ``fori_loop`` over columns written with
#: vectorized array operations. XLA:CPU's batched LAPACK ``potrf`` (used under ``vmap``)
#: deadlocked in jaxlib 0.10.2 inside the solve loop at batch 2,048 (threads blocked in
#: ``jax::ParallelBatchMap``, seen with gdb), and runs one tiny factorization per member anyway.
LOOP_N = 128


def _loop_psd_solve(A, b):
    """Right-looking Cholesky with safe pivots, then two substitutions, all in ``fori_loop``s.

    Same pivot rule as :func:`_small_psd_solve`: a pivot below ``n·eps`` times its own
    diagonal entry marks a singular direction whose solution component is set to zero.
    """
    n = A.shape[-1]
    idx = jnp.arange(n)
    diag0 = jnp.diagonal(A)
    eps = jnp.finfo(A.dtype).eps

    def factor(j, carry):
        L, good = carry
        d = L[j, j]
        ok_j = d > n * eps * jnp.maximum(diag0[j], jnp.finfo(A.dtype).tiny)
        ljj = jnp.sqrt(jnp.where(ok_j, d, 1.0))
        col = jnp.where(idx > j, L[:, j] / ljj, 0.0) * ok_j
        below = idx > j
        L = L - jnp.where(below[:, None] & below[None, :], col[:, None] * col[None, :], 0.0)
        L = L.at[:, j].set(jnp.where(idx == j, jnp.where(ok_j, ljj, 0.0), col))
        return L, good.at[j].set(ok_j)

    L, good = jax.lax.fori_loop(0, n, factor, (A, jnp.zeros(n, bool)))
    safe_diag = jnp.where(good, jnp.diagonal(L), 1.0)

    def forward(i, y):
        s = b[i] - jnp.sum(jnp.where(idx < i, L[i, :] * y, 0.0))
        return y.at[i].set(jnp.where(good[i], s / safe_diag[i], 0.0))

    y = jax.lax.fori_loop(0, n, forward, jnp.zeros_like(b))

    def backward(k, x):
        i = n - 1 - k
        s = y[i] - jnp.sum(jnp.where(idx > i, L[:, i] * x, 0.0))
        return x.at[i].set(jnp.where(good[i], s / safe_diag[i], 0.0))

    x = jax.lax.fori_loop(0, n, backward, jnp.zeros_like(b))
    return x, jnp.all(good)


def psd_solve(A: Float[Array, "n n"], b: Float[Array, " n"]) -> tuple[Array, Bool[Array, ""]]:
    """Solve ``A x = b`` for symmetric positive semi-definite ``A``.

    Cholesky with safe pivots: a numerically singular direction gets a zero solution
    component (for ``n ≤ LOOP_N``), so the answer is always finite; beyond ``LOOP_N``, XLA's
    Cholesky with a Tikhonov-regularized retry (``A + √eps·max|diag A|·I``).

    Returns:
        ``(x, ok)`` where ``ok`` is False when ``A`` was numerically singular.
    """
    n = A.shape[-1]
    if n <= SMALL_N:
        return _small_psd_solve(A, b)
    if n <= LOOP_N:
        return _loop_psd_solve(A, b)
    L = jnp.linalg.cholesky(A)
    x = jax.scipy.linalg.cho_solve((L, True), b)
    ok = jnp.all(jnp.isfinite(x))

    def fallback(_):
        scale = jnp.max(jnp.abs(jnp.diagonal(A)))
        mu = jnp.sqrt(jnp.finfo(A.dtype).eps) * jnp.where(scale > 0, scale, 1.0)
        Lr = jnp.linalg.cholesky(A + mu * jnp.eye(n, dtype=A.dtype))
        xr = jax.scipy.linalg.cho_solve((Lr, True), b)
        return jnp.where(jnp.isfinite(xr), xr, 0.0)

    x = jax.lax.cond(ok, lambda _: x, fallback, None)
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
    if n <= LOOP_N:
        return zero_col | ~_loop_psd_solve(B, jnp.zeros(n, A.dtype))[1]
    L = jnp.linalg.cholesky(B)
    piv = jnp.diagonal(L)
    return zero_col | ~jnp.all(jnp.isfinite(piv) & (piv * piv > _pivot_floor(B)))
