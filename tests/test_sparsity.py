"""Known Jacobian sparsity (``solve(..., jac_sparsity=...)``): coloring and compressed Jacobians."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnlls
from jaxnlls._linearize import make_dense_problem
from jaxnlls._sparsity import greedy_column_coloring
from jaxnlls.lie import SE2


def _loop_graph(n_poses=6, seed=0):
    """A small SE(2) loop with one chord: residual pytree (between, prior) and its pattern."""
    rng = np.random.default_rng(seed)
    edges = [(i, (i + 1) % n_poses) for i in range(n_poses)] + [(0, n_poses // 2)]
    ei = jnp.asarray([e[0] for e in edges])
    ej = jnp.asarray([e[1] for e in edges])
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    z = SE2.exp(jnp.asarray(rng.normal(size=(len(edges), 3)), dtype))
    x0 = SE2.exp(jnp.asarray(rng.normal(size=(n_poses, 3)), dtype))
    offsets = jnp.asarray(rng.normal(size=(2,)), dtype)

    def residual(x, params):
        z, bias = params
        between = (z.inverse() @ (x["pose"][ei].inverse() @ x["pose"][ej])).log()
        landmark = x["pose"][1].translation() - x["point"] - bias
        return {"between": between, "prior": x["pose"][0].log(), "landmark": landmark}

    # flattened residual order: dict keys sorted -> between, landmark, prior
    m = 3 * len(edges) + 2 + 3
    n = 3 * n_poses + 2  # tangent leaves sorted: point (2), pose (3 per pose)
    pat = np.zeros((m, n), bool)
    col = lambda i: slice(2 + 3 * i, 2 + 3 * i + 3)  # noqa: E731
    for k, (i, j) in enumerate(edges):
        pat[3 * k:3 * k + 3, col(i)] = True
        pat[3 * k:3 * k + 3, col(j)] = True
    r0 = 3 * len(edges)
    pat[r0:r0 + 2, col(1)] = True
    pat[r0:r0 + 2, 0:2] = True
    pat[r0 + 2:, col(0)] = True
    x = {"pose": x0, "point": jnp.asarray(rng.normal(size=(2,)), dtype)}
    return residual, x, (z, offsets), pat


@pytest.mark.parametrize("seed", range(5))
def test_coloring_is_valid(seed):
    rng = np.random.default_rng(seed)
    pat = rng.random((40, 25)) < 0.12
    colors = greedy_column_coloring(pat)
    for c in np.unique(colors):
        cols = pat[:, colors == c]
        assert np.all(cols.sum(1) <= 1), "two columns of one color share a row"


def test_coloring_of_an_even_loop_is_optimal():
    """A 10-pose SE(2) loop with chords (0, 5), (2, 7) is bipartite: 2 pose colors × 3."""
    pat = np.zeros((39, 30), bool)
    edges = [(i, (i + 1) % 10) for i in range(10)] + [(0, 5), (2, 7)]
    for k, (i, j) in enumerate(edges):
        pat[3 * k:3 * k + 3, 3 * i:3 * i + 3] = True
        pat[3 * k:3 * k + 3, 3 * j:3 * j + 3] = True
    pat[-3:, 0:3] = True
    assert jaxnlls.JacobianSparsity(pat).n_colors == 6


def test_compressed_jacobian_equals_dense(tol):
    residual, x, params, pat = _loop_graph()
    sp = jaxnlls.JacobianSparsity(pat)
    assert sp.n_colors < pat.shape[1]

    @jax.jit
    def lin_jit(x, params):
        return lin(None, x, params), lin(sp, x, params)

    def lin(s, x, params):
        prob = make_dense_problem(residual, x, params, matrix=True, jac="fwd", sparsity=s)
        out = prob.linearize(x)
        return out.residual, out.jac_t, out.gram_matrix, out.jtr

    (r_dense, j_dense, h_dense, g_dense), (r_sp, j_sp, h_sp, g_sp) = lin_jit(x, params)
    assert np.all(np.asarray(j_dense)[~pat.T] == 0), "test pattern misses a nonzero"
    np.testing.assert_allclose(r_sp, r_dense, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(j_sp, j_dense, rtol=tol.rtol, atol=tol.atol)
    # JᵀJ and Jᵀr formed from the compressed columns, never from the dense J
    np.testing.assert_allclose(h_sp, j_dense @ j_dense.T, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(g_sp, j_dense @ r_dense, rtol=tol.rtol, atol=tol.atol)
    assert np.any(np.asarray(h_sp) == 0), "the pattern should leave structural zeros in JᵀJ"
    # and against reverse mode, which never sees the pattern
    prob = make_dense_problem(residual, x, params, matrix=True, jac="rev")
    np.testing.assert_allclose(j_sp, prob.linearize(x).jac_t, rtol=tol.rtol, atol=tol.atol)


def test_solve_and_gradients_with_sparsity_match_dense(tol):
    residual, x, params, pat = _loop_graph(seed=3)
    solver = jaxnlls.LevenbergMarquardt(rtol=1e-12, atol=1e-12)

    def run(sparsity, bias):
        z, _ = params
        sol = jaxnlls.solve(residual, x, (z, bias), solver=solver, jac_sparsity=sparsity,
                            throw=False)
        return sol

    a, b = run(None, params[1]), run(pat, params[1])
    assert int(a.result) == int(b.result) == jaxnlls.RESULTS.successful
    for u, v in zip(jax.tree.leaves(a.value), jax.tree.leaves(b.value), strict=True):
        np.testing.assert_allclose(u, v, rtol=100 * tol.rtol, atol=100 * tol.atol)

    def loss(bias, sparsity):
        return jnp.sum(run(sparsity, bias).value["point"] ** 2)

    g_dense = jax.grad(loss)(params[1], None)
    g_sparse = jax.grad(loss)(params[1], pat)
    np.testing.assert_allclose(g_sparse, g_dense, rtol=tol.grad_rtol, atol=tol.grad_atol)


def test_vmap_with_sparsity_equals_loop(tol):
    residual, x, params, pat = _loop_graph(seed=1)
    z, bias = params
    biases = jnp.stack([bias, bias + 0.5, bias - 0.25])

    def one(b):
        return jaxnlls.solve(residual, x, (z, b), jac_sparsity=pat, throw=False).value["point"]

    batched = jax.vmap(one)(biases)
    looped = jnp.stack([one(b) for b in biases])
    np.testing.assert_allclose(batched, looped, rtol=100 * tol.rtol, atol=100 * tol.atol)


def test_same_pattern_does_not_retrace():
    residual, x, params, pat = _loop_graph()
    traces = []

    def counted(xx, p):
        traces.append(1)
        return residual(xx, p)

    jaxnlls.solve(counted, x, params, jac_sparsity=pat.copy(), throw=False)
    n = len(traces)
    jaxnlls.solve(counted, x, params, jac_sparsity=pat.copy(), throw=False)
    assert len(traces) == n
    assert jaxnlls.JacobianSparsity(pat) == jaxnlls.JacobianSparsity(pat.copy())
    assert hash(jaxnlls.JacobianSparsity(pat)) == hash(jaxnlls.JacobianSparsity(pat.copy()))


def test_bad_sparsity_inputs_are_named():
    residual, x, params, pat = _loop_graph()
    shape_msg = r"jac_sparsity has shape \(24, 20\); expected .*\(26, 20\)"
    with pytest.raises(ValueError, match=shape_msg):
        jaxnlls.solve(residual, x, params, jac_sparsity=pat[:-2])
    with pytest.raises(ValueError, match="2-D"):
        jaxnlls.solve(residual, x, params, jac_sparsity=pat[0])
    with pytest.raises(ValueError, match="matrix-free"):
        jaxnlls.solve(residual, x, params, jac_sparsity=pat,
                      solver=jaxnlls.LevenbergMarquardt(linear_solver=jaxnlls.CG()))
