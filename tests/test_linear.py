"""Dense symmetric solves (``jaxnlls.linear.psd_solve``): the batched LAPACK path under ``vmap``
must give the loop Cholesky's answers, flags and derivatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnlls.linear import is_rank_deficient, psd_solve
from jaxnlls.linear._dense import (
    LOOP_N,
    REDO_CHUNK,
    SMALL_N,
    UNROLLED_SUBSTITUTION_N,
    _loop_psd_solve,
)

N = 12  # between SMALL_N and LOOP_N: the size that takes the batched LAPACK path
assert SMALL_N < N <= UNROLLED_SUBSTITUTION_N < UNROLLED_SUBSTITUTION_N + 8 <= LOOP_N


def _dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _batch(batch=7, seed=0, n=N):
    """SPD systems; member 2 has an exactly zero row/column, member 4 two equal columns."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((batch, n + 4, n))
    M[4, :, 7] = M[4, :, 3]
    A = np.einsum("bki,bkj->bij", M, M)
    A[2, 5, :] = 0.0
    A[2, :, 5] = 0.0
    b = rng.standard_normal((batch, n))
    return jnp.asarray(A, _dtype()), jnp.asarray(b, _dtype())


@pytest.mark.parametrize("n", [N, UNROLLED_SUBSTITUTION_N + 8], ids=["unrolled", "lapack_trsm"])
def test_vmap_equals_loop_with_singular_members(tol, n):
    """Both substitutions of the batched rule (unrolled on batch vectors, LAPACK's)."""
    A, b = _batch(n=n)
    x, ok = jax.jit(jax.vmap(psd_solve))(A, b)
    for i in range(A.shape[0]):
        xi, oki = jax.jit(_loop_psd_solve)(A[i], b[i])  # the unbatched reference: safe-pivot loop
        assert bool(ok[i]) == bool(oki), i
        scale = max(1.0, float(jnp.max(jnp.abs(xi))))
        np.testing.assert_allclose(x[i], xi, rtol=1e3 * tol.rtol, atol=1e3 * tol.atol * scale)
    assert not bool(ok[2]) and not bool(ok[4])
    assert bool(jnp.all(jnp.isfinite(x)))
    good = np.asarray(ok)
    A64, b64 = np.asarray(A, np.float64)[good], np.asarray(b, np.float64)[good]
    ref = np.linalg.solve(A64, b64[..., None])[..., 0]
    np.testing.assert_allclose(x[good], ref, rtol=1e3 * tol.rtol, atol=1e3 * tol.atol)


def test_more_failing_members_than_one_redo_chunk(tol):
    """Failed members are redone ``REDO_CHUNK`` at a time: with 2.5 chunks' worth of singular
    members scattered over the batch (three of them all zeros), and under a nested ``vmap``,
    every member still gets the loop's answer and flag."""
    batch = 4 * REDO_CHUNK
    A, b = _batch(batch=batch, seed=2)
    singular = np.random.default_rng(3).permutation(batch)[: 5 * REDO_CHUNK // 2]
    A = A.at[singular, 6, :].set(0.0).at[singular, :, 6].set(0.0)
    A = A.at[singular[:3]].set(0.0)  # all-zero members: answered 0 without the redo
    looped = [jax.jit(_loop_psd_solve)(A[i], b[i]) for i in range(batch)]
    x_ref = np.stack([np.asarray(x) for x, _ in looped])
    ok_ref = np.asarray([bool(ok) for _, ok in looped])
    assert not ok_ref[singular].any() and len(singular) > 2 * REDO_CHUNK
    flat = jax.jit(jax.vmap(psd_solve))(A, b)
    # nested: two halves, each a batch of its own inside the outer vmap
    halves = lambda a: a.reshape((2, batch // 2) + a.shape[1:])  # noqa: E731
    x2, ok2 = jax.jit(jax.vmap(jax.vmap(psd_solve)))(halves(A), halves(b))
    nested = (x2.reshape(batch, -1), ok2.reshape(batch))
    # the diagonal given separately (a factor graph's gram_diag): the pivot test and the
    # all-zero test read it instead of A
    given = jax.jit(jax.vmap(lambda a, r: psd_solve(a, r, jnp.diagonal(a))))(A, b)
    scale = max(1.0, float(np.abs(x_ref).max()))
    assert not np.any(x_ref[singular[:3]])
    for x, ok in (flat, nested, given):
        assert np.array_equal(np.asarray(ok), ok_ref)
        np.testing.assert_allclose(x, x_ref, rtol=1e3 * tol.rtol, atol=1e3 * tol.atol * scale)


def test_vmap_with_shared_matrix_equals_loop(tol):
    A, b = _batch()
    x, ok = jax.vmap(psd_solve, in_axes=(None, 0))(A[0], b)
    assert bool(jnp.all(ok))
    for i in range(b.shape[0]):
        np.testing.assert_allclose(x[i], jax.jit(psd_solve)(A[0], b[i])[0], rtol=100 * tol.rtol,
                                   atol=100 * tol.atol)


def test_rank_check_under_vmap_equals_loop():
    A, _ = _batch()
    batched = jax.vmap(is_rank_deficient)(A)
    looped = [bool(jax.jit(is_rank_deficient)(a)) for a in A]
    assert [bool(v) for v in batched] == looped == [False, False, True, False, True, False, False]
    # the same test with the diagonal given separately (a factor graph's gram_diag)
    with_diag = jax.vmap(lambda a: is_rank_deficient(a, jnp.diagonal(a)))(A)
    assert [bool(v) for v in with_diag] == looped
    # scale invariance holds for both forms: badly scaled but well-posed is not singular
    s = jnp.asarray(np.logspace(-3, 3, A.shape[-1]), A.dtype)
    scaled = A * s[None, :, None] * s[None, None, :]
    assert [bool(v) for v in jax.vmap(is_rank_deficient)(scaled)] == looped
    assert [bool(v) for v in jax.vmap(lambda a: is_rank_deficient(a, jnp.diagonal(a)))(scaled)] \
        == looped


def test_batched_solves_inside_a_vmapped_while_loop(tol):
    """The solve loop's shape: one solve per iteration of a vmapped ``while_loop`` (where two
    independent batched LAPACK calls deadlocked XLA:CPU), with a singular member forcing the
    loop-Cholesky redo on every iteration."""
    A, b = _batch(batch=64, seed=1)
    A = A.at[2, 5, :].set(0.0).at[2, :, 5].set(0.0)

    def iterate(A, b):
        def body(c):
            i, x = c
            y, _ = psd_solve(A + i * jnp.eye(N, dtype=A.dtype), b - 0.1 * x)
            return i + 1, y

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, jnp.zeros_like(b)))[1]

    batched = jax.jit(jax.vmap(iterate))(A, b)
    for i in (0, 2, 63):
        np.testing.assert_allclose(batched[i], jax.jit(iterate)(A[i], b[i]), rtol=1e3 * tol.rtol,
                                   atol=1e3 * tol.atol)


@pytest.mark.usefixtures("requires_x64")
def test_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    M = jnp.asarray(rng.standard_normal((N + 3, N)))
    b = jnp.asarray(rng.standard_normal(N))

    @jax.jit
    def loss(M, b):  # A built symmetric, as the solvers build JᵀJ + D
        return jnp.sum(jnp.sin(psd_solve(M.T @ M + 0.5 * jnp.eye(N), b)[0]))

    gM, gb = jax.grad(loss, argnums=(0, 1))(M, b)
    for (k, l) in [(0, 0), (3, 7), (N + 2, N - 1)]:
        e = jnp.zeros_like(M).at[k, l].set(1e-6)
        fd = (loss(M + e, b) - loss(M - e, b)) / 2e-6
        np.testing.assert_allclose(gM[k, l], fd, rtol=1e-6, atol=1e-8)
    e = jnp.zeros_like(b).at[4].set(1e-6)
    np.testing.assert_allclose(gb[4], (loss(M, b + e) - loss(M, b - e)) / 2e-6, rtol=1e-6)
    # the same derivatives under vmap (the batched LAPACK path)
    gv = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0))(M, jnp.stack([b, b]))
    np.testing.assert_allclose(gv[0][1], gM, rtol=1e-10, atol=1e-12)
    # forward mode too
    jf = jax.jacfwd(lambda b: psd_solve(M.T @ M + 0.5 * jnp.eye(N), b)[0])(b)
    np.testing.assert_allclose(jf, jnp.linalg.inv(M.T @ M + 0.5 * jnp.eye(N)), rtol=1e-9,
                               atol=1e-12)


def test_large_systems_under_vmap_equal_loop(tol):
    """Beyond ``LOOP_N`` the unbatched solve retries a failed Cholesky with Tikhonov
    regularization; under ``vmap`` (here inside a ``while_loop``) each member must get exactly
    that, the failing member included."""
    n = LOOP_N + 8
    rng = np.random.default_rng(5)
    M = rng.standard_normal((4, n + 2, n))
    A = np.einsum("bki,bkj->bij", M, M)
    A[1, 3, :] = A[1, :, 3] = 0.0  # singular: LAPACK fails, the retry answers
    A, b = jnp.asarray(A, _dtype()), jnp.asarray(rng.standard_normal((4, n)), _dtype())

    def iterate(A, b):
        body = lambda c: (c[0] + 1, psd_solve(A, b + 0.1 * c[1])[0])  # noqa: E731
        return jax.lax.while_loop(lambda c: c[0] < 2, body, (0, jnp.zeros_like(b)))[1]

    batched = jax.jit(jax.vmap(iterate))(A, b)
    ok = jax.vmap(psd_solve)(A, b)[1]
    assert [bool(v) for v in ok] == [True, False, True, True]
    for i in range(4):
        ref = jax.jit(iterate)(A[i], b[i])
        scale = float(jnp.max(jnp.abs(ref)))
        np.testing.assert_allclose(batched[i], ref, rtol=1e3 * tol.rtol,
                                   atol=1e3 * tol.atol * scale)
