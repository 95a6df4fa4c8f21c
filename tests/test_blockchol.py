"""The batch-last block Cholesky that factors small graphs' step systems under ``vmap``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnlls.graph import FactorGraph, Var, VarValues, factor
from jaxnlls.linear import DenseCholesky
from jaxnlls.linear import _blockchol
from jaxnlls.linear._dense import _loop_psd_solve

from test_graph import Pose, _dtype, _linearize, lm_obs, small_graph

_solve = jax.jit(jax.vmap(lambda lin, d, b: DenseCholesky().solve(lin, d, b)))


def _members(graph, init, data_fn=None, n=4, seed=0):
    """Linearizations of ``n`` same-structure graphs (the values perturbed, and ``data_fn(k)``
    as factor data when given), stacked, with random damping and right-hand sides."""
    rng = np.random.default_rng(seed)
    lins = []
    for k in range(n):
        delta = jnp.asarray(rng.normal(size=graph.tangent_size) * 0.05, _dtype())
        vals = graph.retract(init, delta)
        g = graph if data_fn is None else graph.with_data(data_fn(k))
        lins.append(_linearize(g, vals))
    lin = jax.tree.map(lambda *xs: jnp.stack(xs), *lins)
    size = graph.tangent_size
    damping = jnp.asarray(rng.uniform(0.01, 1.0, (n, size)), _dtype())
    rhs = jnp.asarray(rng.normal(size=(n, size)), _dtype())
    return lins, lin, damping, rhs


def _dense(lin, damping, rhs):
    """The unbatched reference: the safe-pivot loop Cholesky on the dense ``JᵀJ + D``."""
    J = lin.jac.to_dense()
    return _loop_psd_solve(J.T @ J + jnp.diag(damping), rhs)


def test_plan_fill_equals_the_dense_factor_pattern():
    """The symbolic fill (natural order) is the nonzero pattern of a numeric Cholesky factor."""
    graph, init, _ = small_graph(1)
    plan = _blockchol.block_cholesky_plan(graph.structure.layout)
    lin = _linearize(graph, init)
    J = np.asarray(lin.jac.to_dense(), np.float64)
    A = J.T @ J + np.eye(J.shape[1])
    L = np.linalg.cholesky(A)
    for j, col in enumerate(plan.lower):
        oj, dj = plan.offsets[j], plan.dims[j]
        for i in range(j + 1, len(plan.dims)):
            oi, di = plan.offsets[i], plan.dims[i]
            nonzero = np.any(np.abs(L[oi:oi + di, oj:oj + dj]) > 1e-12)
            assert nonzero == (i in col), (i, j)


def test_vmap_equals_the_dense_loop(tol):
    """Poses (SE2, 3 columns) and landmarks (2 columns), damping and a given right-hand side."""
    graph, init, _ = small_graph(3)
    assert _blockchol.block_cholesky_plan(graph.structure.layout).n_updates \
        <= _blockchol.MAX_BLOCK_UPDATES
    lins, lin, damping, rhs = _members(graph, init)
    x, ok = _solve(lin, damping, rhs)
    assert bool(jnp.all(ok))
    for k, lk in enumerate(lins):
        ref, ok_ref = _dense(lk, damping[k], rhs[k])
        assert bool(ok_ref)
        np.testing.assert_allclose(x[k], ref, rtol=tol.rtol * 100,
                                   atol=tol.atol * 100 * float(jnp.max(jnp.abs(ref))))


def test_singular_members_get_the_loops_basic_solution(tol):
    """Undamped systems where one member's landmark is unobserved (its columns are zero): the
    same pivots fail as in the unbatched loop, so the batched answer is the same basic
    solution, and ``ok`` is False for that member only."""
    graph, init, _ = small_graph(4)
    k_obs = graph.group_index(lm_obs)
    (pose, lm, z, w), loss = graph.data[k_obs]
    masks = [np.ones(len(w)), np.arange(len(w)) % 3 != 0, np.arange(len(w)) != 0]

    def data_fn(k):
        data = list(graph.data)
        data[k_obs] = ((pose, lm, z, w * jnp.asarray(masks[k % 3], w.dtype)), loss)
        return tuple(data)

    lins, lin, _, _ = _members(graph, init, data_fn, n=3)
    zeros = jnp.zeros((3, graph.tangent_size), _dtype())
    rhs = jax.vmap(lambda l: -l.rmv(l.residual))(lin)
    x, ok = _solve(lin, zeros, rhs)
    for k, lk in enumerate(lins):
        ref, ok_ref = _dense(lk, zeros[k], rhs[k])
        assert bool(ok[k]) == bool(ok_ref)
        np.testing.assert_allclose(x[k], ref, rtol=tol.rtol * 1e3,
                                   atol=tol.atol * 1e3 * float(jnp.max(jnp.abs(ref))))
    assert [bool(o) for o in ok] == [True, False, True]


class Scalar(Var, dim=1):
    pass


@factor
def _twice(vals, a, b, w):
    """A factor naming the same variable in both slots (its block sums four products)."""
    return w * (vals[a] * vals[b] - 2.0)


def test_a_factor_naming_one_variable_twice(tol):
    dt = _dtype()
    graph = FactorGraph.build(
        [_twice(Scalar(np.array([0, 1, 1])), Scalar(np.array([0, 1, 2])),
                jnp.asarray([1.0, 2.0, 3.0], dt))], gauge=None)
    vals = VarValues.make({Scalar(np.arange(3)): jnp.asarray([[0.7], [1.3], [0.4]], dt)})
    lin = _linearize(graph, vals)
    lins = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), lin)
    damping = jnp.full((2, 3), 0.1, dt)
    rhs = jnp.ones((2, 3), dt)
    x, ok = _solve(lins, damping, rhs)
    for k in range(2):
        ref, _ = _dense(jax.tree.map(lambda a: a[k], lins), damping[k], rhs[k])
        np.testing.assert_allclose(x[k], ref, rtol=tol.rtol * 100, atol=tol.atol * 100)


def test_nested_vmap_and_shared_operands(tol):
    """A vmap of a vmap, and a vmap where the Jacobian is shared and only the rhs is batched."""
    graph, init, _ = small_graph(5)
    lins, lin, damping, rhs = _members(graph, init)
    nested = jax.jit(jax.vmap(jax.vmap(lambda l, d, b: DenseCholesky().solve(l, d, b))))
    pair = jax.tree.map(lambda a: a.reshape((2, 2) + a.shape[1:]), (lin, damping, rhs))
    x2, _ = nested(*pair)
    x, _ = _solve(lin, damping, rhs)
    np.testing.assert_allclose(x2.reshape(x.shape), x, rtol=tol.rtol, atol=tol.atol)
    shared = jax.jit(jax.vmap(lambda b: DenseCholesky().solve(lins[0], damping[0], b)))
    xs, _ = shared(rhs)
    for k in range(len(lins)):
        ref, _ = _dense(lins[0], damping[0], rhs[k])
        np.testing.assert_allclose(xs[k], ref, rtol=tol.rtol * 100,
                                   atol=tol.atol * 100 * float(jnp.max(jnp.abs(ref))))


def test_gradient_through_the_batched_solve(requires_x64):
    """Reverse mode through the vmapped step solve (the unrolled adjoint's path) equals the
    gradient of the dense solve."""
    graph, init, _ = small_graph(6)
    _, lin, damping, rhs = _members(graph, init, n=3)

    def loss(blocks, solve):
        lk = type(lin)(residual=lin.residual, jac=type(lin.jac)(blocks, lin.jac.layout))
        return jnp.sum(jnp.sin(jax.vmap(solve)(lk, damping, rhs)[0]))

    g_block = jax.grad(loss)(lin.jac.blocks, lambda l, d, b: DenseCholesky().solve(l, d, b))
    g_dense = jax.grad(loss)(lin.jac.blocks, lambda l, d, b: (jnp.linalg.solve(
        l.jac.to_dense().T @ l.jac.to_dense() + jnp.diag(d), b), None))
    for a, b in zip(g_block, g_dense):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_a_plan_over_the_limit_keeps_the_batched_lapack_path(tol, monkeypatch):
    monkeypatch.setattr(_blockchol, "MAX_BLOCK_UPDATES", 0)
    graph, init, _ = small_graph(7)
    lins, lin, damping, rhs = _members(graph, init)
    x, ok = jax.jit(jax.vmap(lambda l, d, b: DenseCholesky().solve(l, d, b)))(lin, damping, rhs)
    for k, lk in enumerate(lins):
        ref, _ = _dense(lk, damping[k], rhs[k])
        np.testing.assert_allclose(x[k], ref, rtol=tol.rtol * 100,
                                   atol=tol.atol * 100 * float(jnp.max(jnp.abs(ref))))


def test_solve_of_a_batch_of_graphs_equals_the_loop(tol, x64, n_poses=12):
    """``vmap(graph.solve)`` through the block path equals solving each graph alone."""
    from jaxnlls.factors import between, prior
    from jaxnlls.lie import SE2

    rng = np.random.default_rng(n_poses)
    dt = _dtype()
    ia = np.arange(n_poses)
    ib = (ia + 1) % n_poses

    def one(seed):
        r = np.random.default_rng(seed)
        z = SE2.exp(jnp.asarray(r.normal(size=(n_poses, 3)) * 0.3 + [1.0, 0.0, 0.5], dt))
        return z

    zs = [one(s) for s in range(3)]
    graph = FactorGraph.build([between(Pose(ia), Pose(ib), zs[0], jnp.ones((n_poses, 3), dt)),
                               prior(Pose(0), SE2.identity(dtype=dt), jnp.eye(3, dtype=dt))])
    x0 = SE2.exp(jnp.asarray(rng.normal(size=(n_poses, 3)) * 0.1, dt))
    ids = Pose(np.arange(n_poses))
    (b_args, b_loss), rest = graph.data[0], graph.data[1:]

    def run(z):
        data = (((b_args[0], b_args[1], z, b_args[3]), b_loss),) + rest
        return graph.solve(VarValues.make({ids: x0}), data, throw=False)

    batched = jax.jit(jax.vmap(run))(jax.tree.map(lambda *a: jnp.stack(a), *zs))
    for k, z in enumerate(zs):
        single = run(z)
        if x64:  # in float32 rounding can leave one of the two just short of the tolerance
            assert int(batched.result[k]) == int(single.result)
        np.testing.assert_allclose(batched.value.get(Pose).params[k],
                                   single.value.get(Pose).params,
                                   rtol=tol.rtol * 1e3, atol=tol.atol * 1e3)


def test_short_sum_is_the_sum_and_stays_off_ynnpack():
    """``short_sum`` equals ``jnp.sum`` (values, signed zeros, non-finite values, gradients,
    ``vmap``); and where XLA:CPU gives ``jnp.sum``'s reduce to YNNPACK, it keeps this one."""
    from jaxnlls._misc import short_sum

    dtype = _dtype()
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(3, 4, 5)), dtype)
    for axis in (0, 1, 2, -1):
        np.testing.assert_array_equal(short_sum(a, axis), jnp.sum(a, axis))
    special = jnp.asarray([[-0.0, -0.0], [1.0, jnp.inf], [jnp.nan, 1.0]], dtype)
    np.testing.assert_array_equal(jnp.signbit(short_sum(special[:1], 1)),
                                  jnp.signbit(jnp.sum(special[:1], 1)))
    np.testing.assert_array_equal(short_sum(special, 1), jnp.sum(special, 1))
    # (the generic reduce's JVP may sum in another order: equal to rounding)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(short_sum(x, 1) ** 2))(a),
                               jax.grad(lambda x: jnp.sum(jnp.sum(x, 1) ** 2))(a),
                               rtol=8 * float(jnp.finfo(dtype).eps))
    np.testing.assert_array_equal(jax.vmap(lambda x: short_sum(x, 0))(a), jnp.sum(a, 1))

    L = jnp.ones((3, 3, 4096), dtype)
    y = jnp.ones((3, 4096), dtype)

    def hlo(sum_fn):
        return jax.jit(lambda L, y: y - sum_fn(L * y[None], 1)).lower(L, y).compile().as_text()

    if "__ynn_fusion" not in hlo(jnp.sum):
        return  # this backend or XLA version does not use YNNPACK for the plain sum
    assert "__ynn_fusion" not in hlo(short_sum)
