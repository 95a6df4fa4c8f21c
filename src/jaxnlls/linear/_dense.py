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


def _loop_psd_solve(A, b, diag0=None):
    """Right-looking Cholesky with safe pivots, then two substitutions, all in ``fori_loop``s.

    Same pivot rule as :func:`_small_psd_solve`: a pivot below ``n·eps`` times its own
    diagonal entry marks a singular direction whose solution component is set to zero.
    ``diag0``: ``A``'s diagonal when the caller has it (see :func:`psd_solve`).
    """
    n = A.shape[-1]
    idx = jnp.arange(n)
    diag0 = jnp.diagonal(A) if diag0 is None else diag0
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


def _pivots_ok(diag_A, L):
    """The safe-pivot rule of :func:`_loop_psd_solve` applied to a LAPACK factor ``L`` of a
    matrix with diagonal ``diag_A`` (relative to that diagonal, so scale-invariant)."""
    n = L.shape[-1]
    d = jnp.diagonal(L, axis1=-2, axis2=-1)
    floor = n * jnp.finfo(L.dtype).eps * jnp.maximum(diag_A, jnp.finfo(L.dtype).tiny)
    return jnp.all(jnp.isfinite(d) & (d * d > floor), axis=-1)


def _cho_solve(L, b):
    return jax.scipy.linalg.cho_solve((L, True), b[..., None])[..., 0]


#: Under ``vmap``, up to this size the two triangular solves are unrolled substitutions on
#: batch-long vectors; XLA:CPU's batched triangular solve handles one small system at a time.
#: The whole batched solve of 4,096 systems of 12 unknowns: 2.4 ms against 5.7 ms. At 30
#: unknowns it gained 5% for 2.4 s more compile (n² fused elementwise operations), hence the limit.
UNROLLED_SUBSTITUTION_N = 16


def _batched_cho_solve(L, b):
    """``(L Lᵀ)⁻¹ b`` for a batch ``L`` ``(B, n, n)``, ``b`` ``(B, n)``."""
    n = L.shape[-1]
    if n > UNROLLED_SUBSTITUTION_N:
        return _cho_solve(L, b)
    y = []
    for i in range(n):
        s = b[:, i]
        for k in range(i):
            s = s - L[:, i, k] * y[k]
        y.append(s / L[:, i, i])
    x = [None] * n
    for i in reversed(range(n)):
        s = y[i]
        for k in range(i + 1, n):
            s = s - L[:, k, i] * x[k]
        x[i] = s / L[:, i, i]
    return jnp.stack(x, axis=-1)


def _tikhonov_solve(A, b):
    """Cholesky of ``A + √eps·max|diag A|·I``, zero where even that fails."""
    scale = jnp.max(jnp.abs(jnp.diagonal(A)))
    mu = jnp.sqrt(jnp.finfo(A.dtype).eps) * jnp.where(scale > 0, scale, 1.0)
    x = _cho_solve(jnp.linalg.cholesky(A + mu * jnp.eye(A.shape[-1], dtype=A.dtype)), b)
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _large_psd_solve(A, b, _diag=None):
    """XLA's Cholesky, with a Tikhonov-regularized retry when it fails."""
    x = _cho_solve(jnp.linalg.cholesky(A), b)
    ok = jnp.all(jnp.isfinite(x))
    return jax.lax.cond(ok, lambda: x, lambda: _tikhonov_solve(A, b)), ok


#: Members that fail the batched LAPACK solve are redone this many at a time (see
#: :func:`_batched_rule`).
REDO_CHUNK = 32


def _batched_rule(safe_pivots: bool):
    """``vmap`` rule: one batched LAPACK Cholesky for the whole batch, redo where it failed.

    A ``fori_loop`` Cholesky under ``vmap`` streams the whole batch of matrices through memory
    once per column (4,096 systems of 30 unknowns: 315 ms), where XLA's batched ``potrf``
    factors each matrix in cache (13-20 ms, 40-45 ms with the solves). Members that fail the
    unbatched solve's test (``safe_pivots``: the pivot rule of :func:`_loop_psd_solve`, redone
    by that loop; otherwise a non-finite solution, redone with Tikhonov regularization) are
    redone by a ``while_loop`` that takes up to ``REDO_CHUNK`` of them per iteration, under a
    ``cond`` that skips it when none failed, so every member gets the unbatched solve's answer
    and the redo costs what the failures need. Members without a positive diagonal entry (the
    all-zero placeholders of the factor-graph loop's first iteration under ``vmap``) fail every
    pivot of the loop, whose answer is 0; they get it without the redo. On 4,096 × 30 (median
    ms, no failure / 8 singular members / all singular / all zero): 34 / 35 / 160 / 33, where
    redoing the whole batch whenever any member failed took 44 / 204 / 200 / 217.

    The ``cond`` also orders the two factorizations. Two *independent* batched LAPACK calls in
    one vmapped ``while_loop`` body deadlock XLA:CPU's thread pool (jaxlib 0.10.2, reproduced
    with two ``jnp.linalg.cholesky`` calls on 4,096 30 × 30 matrices); the redo depends on the
    first factorization's pivot test, so it cannot run beside it.
    """

    def redo_one(A, b, d):
        return _loop_psd_solve(A, b, d)[0] if safe_pivots else _tikhonov_solve(A, b)

    def rule(axis_size, in_batched, A, b, d):
        A_batched, b_batched, d_batched = in_batched
        n = A.shape[-1]
        A = A if A_batched else jnp.broadcast_to(A, (axis_size, n, n))
        b = b if b_batched else jnp.broadcast_to(b, (axis_size, n))
        d = d if d_batched else jnp.broadcast_to(d, (axis_size, n))
        L = jnp.linalg.cholesky(A)
        # a member that fails gets a non-finite or meaningless x here, and is redone below
        x = _batched_cho_solve(L, b)
        ok = _pivots_ok(d, L) if safe_pivots else jnp.all(jnp.isfinite(x), axis=-1)
        chunk = min(REDO_CHUNK, axis_size)

        def redo_some(carry):
            x, todo = carry
            # the first `chunk` members still to redo; padding indices (= axis_size) are
            # clipped when reading and dropped when writing
            idx = jnp.nonzero(todo, size=chunk, fill_value=axis_size)[0]
            again = jax.vmap(redo_one)(jnp.take(A, idx, axis=0, mode="clip"),
                                       jnp.take(b, idx, axis=0, mode="clip"),
                                       jnp.take(d, idx, axis=0, mode="clip"))
            return (x.at[idx].set(again, mode="drop"),
                    todo.at[idx].set(False, mode="drop"))

        todo = ~ok
        if safe_pivots:
            # without a positive diagonal entry every pivot fails and the loop answers 0
            empty = jnp.all(d <= 0, axis=-1)
            x = jnp.where(empty[:, None], jnp.zeros_like(x), x)
            todo = todo & ~empty

        def redo(carry):
            return jax.lax.while_loop(lambda c: jnp.any(c[1]), redo_some, carry)

        # the `cond` matters inside a vmapped solve loop: without it, LM on 4,096 SE(2) graphs
        # (no failures) took 0.95-1.08 s against 0.87-0.92 s
        x, _ = jax.lax.cond(jnp.any(todo), redo, lambda c: c, (x, todo))
        return (x, ok), (True, True)

    return rule


_loop_solve = jax.custom_batching.custom_vmap(_loop_psd_solve)
_loop_solve.def_vmap(_batched_rule(safe_pivots=True))
_large_solve = jax.custom_batching.custom_vmap(_large_psd_solve)
_large_solve.def_vmap(_batched_rule(safe_pivots=False))


def _implicit_solve(solve, A, b, d):
    """``solve(A, b, d)`` differentiated implicitly: ``custom_vmap`` has no reverse-mode rule,
    so the solve goes through ``lax.custom_linear_solve``: ``dx = A⁻¹(db - dA x)``, with the same
    solve for the tangent (``A`` is symmetric). That is the derivative of the exact solution;
    differentiating the factorization itself gave the same for nonsingular ``A``. (``d``, the
    diagonal, only decides the pivot test.)"""
    d = jax.lax.stop_gradient(d)
    return jax.lax.custom_linear_solve(
        lambda v: A @ v, b, lambda _, rhs: solve(A, rhs, d), symmetric=True, has_aux=True
    )


def psd_solve(A: Float[Array, "n n"], b: Float[Array, " n"],
              diag: Float[Array, " n"] | None = None) -> tuple[Array, Bool[Array, ""]]:
    """Solve ``A x = b`` for symmetric positive semi-definite ``A``.

    Cholesky with safe pivots: a numerically singular direction gets a zero solution
    component (for ``n ≤ LOOP_N``), so the answer is always finite; beyond ``LOOP_N``, XLA's
    Cholesky with a Tikhonov-regularized retry (``A + √eps·max|diag A|·I``). Under ``vmap``,
    systems with ``n > SMALL_N`` are factored by one batched LAPACK call (see
    :func:`_batched_rule`).

    ``diag``: ``A``'s diagonal when the caller has it from elsewhere (a factor graph's
    ``gram_diag`` from its Jacobian blocks, plus the damping), for the pivot test, so that under
    ``vmap`` the batched factorization is the one reader of ``A`` (see
    :func:`is_rank_deficient`).

    Returns:
        ``(x, ok)`` where ``ok`` is False when ``A`` was numerically singular.
    """
    n = A.shape[-1]
    if n <= SMALL_N:
        return _small_psd_solve(A, b)
    d = jnp.diagonal(A) if diag is None else diag
    return _implicit_solve(_loop_solve if n <= LOOP_N else _large_solve, A, b, d)


def is_rank_deficient(A: Float[Array, "n n"], diag: Float[Array, " n"] | None = None
                      ) -> Bool[Array, ""]:
    """Whether the PSD matrix ``A`` is numerically singular.

    The test is scale-invariant (so badly scaled but well-posed problems such as NIST Hahn1
    are not flagged): a Cholesky pivot below ``n·eps`` times its diagonal entry marks a
    singular direction, and a non-positive diagonal entry is singular outright.

    ``diag``: ``A``'s diagonal, when the caller has it from elsewhere (a factor graph's
    ``gram_diag`` from its Jacobian blocks), so that ``A`` is read once, by the factorization.
    Under ``vmap``, in one program with the ``JᵀJ`` assembly, a second reader of ``A`` (its
    diagonal) cost 25 ms on 4,096 systems of 30 unknowns.
    """
    n = A.shape[-1]
    d = jnp.diagonal(A) if diag is None else diag
    if n <= SMALL_N:  # the unrolled solve's own rule, on A scaled to unit diagonal
        s = jnp.where(d > 0, 1.0 / jnp.sqrt(jnp.where(d > 0, d, 1.0)), 1.0)
        ok = _small_psd_solve(A * s[:, None] * s[None, :], jnp.zeros(n, A.dtype))[1]
    else:  # LAPACK's factor, no solve and no redo (4,096 × 30: 12 ms against 33 ms)
        ok = _pivots_ok(d, jnp.linalg.cholesky(A))
    return jnp.any(d <= 0) | ~ok
