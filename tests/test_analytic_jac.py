"""Analytic Jacobians in the generic solve: ``jaxnlls.solve(..., jac=callable)``.

References: autodiff of the same residual (same iterates, same solution), finite differences
for gradients through the solution, and ``jaxnlls.testing.check_jacobian`` for the layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxnlls
from jaxnlls.lie import SE2
from jaxnlls.testing import check_jacobian, fd_grad


def _dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


# --- a curve fit over a pytree of two Euclidean leaves -------------------------------------


def _curve():
    """``y = a0 exp(-a1 t) + b`` with x = {"amp": (a0, a1), "offset": b}: columns follow the
    sorted dict keys, so the Jacobian's column order is exercised."""
    dt = _dtype()
    t = jnp.linspace(0.0, 4.0, 25, dtype=dt)
    rng = np.random.default_rng(0)
    y = 2.5 * jnp.exp(-1.3 * t) + 0.3 + jnp.asarray(0.01 * rng.normal(size=25), dt)

    def residual(x, y):
        a, b = x["amp"], x["offset"]
        return a[0] * jnp.exp(-a[1] * t) + b[0] - y

    def jac(x, y):
        a = x["amp"]
        e = jnp.exp(-a[1] * t)
        return jnp.stack([e, -a[0] * t * e, jnp.ones_like(t)], axis=1)

    x0 = {"amp": jnp.asarray([1.0, 1.0], dt), "offset": jnp.zeros(1, dt)}
    return residual, jac, x0, y


SOLVERS = {
    "GN": lambda: jaxnlls.GaussNewton(rtol=1e-10, atol=1e-10),
    "LM": lambda: jaxnlls.LevenbergMarquardt(rtol=1e-10, atol=1e-10),
    "dogleg": lambda: jaxnlls.Dogleg(rtol=1e-10, atol=1e-10),
    "LM-QR": lambda: jaxnlls.LevenbergMarquardt(rtol=1e-10, atol=1e-10,
                                                linear_solver=jaxnlls.QR()),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_analytic_jacobian_takes_the_autodiff_path(name, tol):
    residual, jac, x0, y = _curve()
    solver = SOLVERS[name]()
    auto = jaxnlls.solve(residual, x0, y, solver=solver)
    mine = jaxnlls.solve(residual, x0, y, solver=solver, jac=jac)
    assert int(mine.result) == jaxnlls.RESULTS.successful
    assert int(mine.stats.steps) == int(auto.stats.steps)
    for k in x0:
        np.testing.assert_allclose(mine.value[k], auto.value[k], rtol=tol.rtol, atol=tol.atol)
    # the fit itself, against an independent reference: scipy's least_squares optimum
    ref = scipy.optimize.least_squares(
        lambda v: np.asarray(residual({"amp": v[:2], "offset": v[2:]}, np.asarray(y))),
        np.array([1.0, 1.0, 0.0]), xtol=1e-14, ftol=1e-14, gtol=1e-14)
    got = np.concatenate([np.asarray(mine.value["amp"]), np.asarray(mine.value["offset"])])
    np.testing.assert_allclose(got, ref.x, rtol=100 * tol.rtol, atol=100 * tol.atol)


def test_the_forward_loop_uses_the_given_jacobian(tol):
    """A Jacobian scaled by 2 keeps the stationary points (Jᵀr = 0) but halves each
    Gauss-Newton step, so the iterates (and the step count) must differ from autodiff's."""
    residual, jac, x0, y = _curve()
    solver = jaxnlls.GaussNewton(rtol=1e-10, atol=1e-10)
    auto = jaxnlls.solve(residual, x0, y, solver=solver)
    doubled = jaxnlls.solve(residual, x0, y, solver=solver, jac=lambda x, y: 2 * jac(x, y),
                            max_steps=200)
    assert int(doubled.result) == jaxnlls.RESULTS.successful
    assert int(doubled.stats.steps) > 2 * int(auto.stats.steps)
    np.testing.assert_allclose(doubled.value["amp"], auto.value["amp"], rtol=1e3 * tol.rtol,
                               atol=1e3 * tol.atol)


def test_analytic_jacobian_with_aux_and_under_jit(tol):
    residual, jac, x0, y = _curve()

    def with_aux(x, y):
        r = residual(x, y)
        return r, jnp.sum(r * r)

    def run(y):
        return jaxnlls.solve(with_aux, x0, y, jac=jac, has_aux=True)

    eager, jitted = run(y), jax.jit(run)(y)
    np.testing.assert_allclose(jitted.value["amp"], eager.value["amp"], rtol=tol.rtol)
    np.testing.assert_allclose(eager.aux, 2 * eager.stats.final_cost, rtol=tol.rtol)


def test_gradients_through_a_solve_with_analytic_jacobian(requires_x64):
    """Implicit and unrolled gradients w.r.t. the data equal central finite differences."""
    residual, jac, x0, y = _curve()
    solver = jaxnlls.LevenbergMarquardt(rtol=1e-13, atol=1e-13)

    def loss(y, adjoint):
        x = jaxnlls.solve(residual, x0, y, solver=solver, adjoint=adjoint, jac=jac).value
        return x["amp"][1] + 2.0 * x["offset"][0]

    fd = fd_grad(lambda y: loss(y, jaxnlls.ImplicitAdjoint()), y)
    for adjoint in (jaxnlls.ImplicitAdjoint(), jaxnlls.UnrollAdjoint()):
        g = jax.grad(loss)(y, adjoint)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_jacobian_closing_over_a_batched_array_vmaps(tol):
    """Arrays the Jacobian captures are closure-converted: vmap over them equals a loop."""
    dt = _dtype()
    t = jnp.linspace(0.0, 1.0, 8, dtype=dt)
    slopes = jnp.asarray([0.5, 1.0, 2.0], dt)

    def solve_for(s):
        target = jnp.sin(s * t)

        def residual(x, _):
            return jnp.sin(x[0] * t) - target

        def jac(x, _):
            return (t * jnp.cos(x[0] * t))[:, None]

        return jaxnlls.solve(residual, jnp.asarray([0.8], dt), None, jac=jac, throw=False).value

    batched = jax.vmap(solve_for)(slopes)
    looped = jnp.stack([solve_for(s) for s in slopes])
    np.testing.assert_allclose(batched, looped, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(batched[:, 0], slopes, rtol=100 * tol.rtol, atol=tol.atol)


# --- SE(2) poses and a Euclidean point: manifold columns in the right-perturbation chart -----


def _se2_graph(seed=0, n_poses=6):
    rng = np.random.default_rng(seed)
    dt = _dtype()
    edges = np.array([(i, (i + 1) % n_poses) for i in range(n_poses)] + [(0, n_poses // 2)])
    ei, ej = jnp.asarray(edges[:, 0]), jnp.asarray(edges[:, 1])
    truth = SE2.exp(jnp.asarray(rng.normal(size=(n_poses, 3)), dt))
    z = (truth[ei].inverse() @ truth[ej]) @ SE2.exp(jnp.asarray(0.05 * rng.normal(size=(
        len(edges), 3)), dt))
    bias = jnp.asarray(rng.normal(size=2), dt)
    x0 = {"point": jnp.zeros(2, dt),
          "pose": truth @ SE2.exp(jnp.asarray(0.2 * rng.normal(size=(n_poses, 3)), dt))}

    def residual(x, params):
        z, bias = params
        pose = x["pose"]
        between = (z.inverse() @ (pose[ei].inverse() @ pose[ej])).log()
        landmark = pose[1].translation() - x["point"] - bias
        return {"between": between, "landmark": landmark, "prior": pose[0].log()}

    def jac(x, params):
        """Rows: between (E×3), landmark (2), prior (3) (sorted keys); columns: point (2),
        then 3 per pose."""
        z, _ = params
        pose = x["pose"]
        T = pose[ei].inverse() @ pose[ej]
        e = (z.inverse() @ T).log()
        jb = SE2.jac_right_inv(e)  # ∂e/∂δj
        ja = -jb @ T.inverse().adjoint()  # ∂e/∂δi
        n_edges = len(edges)
        J = jnp.zeros((3 * n_edges + 5, 2 + 3 * n_poses), e.dtype)
        for k, (i, j) in enumerate(edges.tolist()):
            J = J.at[3 * k:3 * k + 3, 2 + 3 * i:5 + 3 * i].add(ja[k])
            J = J.at[3 * k:3 * k + 3, 2 + 3 * j:5 + 3 * j].add(jb[k])
        r0 = 3 * n_edges
        # translation of X·Exp(δ) moves by R δ_t to first order, not with δ_θ
        J = J.at[r0:r0 + 2, 5:7].set(pose[1].rotation().as_matrix())
        J = J.at[r0:r0 + 2, 0:2].set(-jnp.eye(2, dtype=e.dtype))
        J = J.at[r0 + 2:, 2:5].set(SE2.jac_right_inv(pose[0].log()))
        return J

    return residual, jac, x0, (z, bias)


def test_check_jacobian_accepts_the_se2_closed_forms_and_finds_a_wrong_entry():
    residual, jac, x0, params = _se2_graph()
    chk = check_jacobian(residual, jac, x0, params)
    assert chk.jac.shape == chk.autodiff_jac.shape == (3 * 7 + 5, 2 + 18)
    assert chk.rel_error < 100 * float(jnp.finfo(_dtype()).eps)

    def wrong(x, p):  # drop the rotation block of the landmark row: a typical slip
        return jac(x, p).at[21:23, 5:7].set(0.0)

    bad = check_jacobian(residual, wrong, x0, params)
    assert bad.rel_error > 1e-2
    assert 21 <= bad.worst[0] < 23 and 5 <= bad.worst[1] < 7


def test_se2_graph_with_analytic_jacobian(tol):
    residual, jac, x0, params = _se2_graph()
    solver = jaxnlls.GaussNewton(rtol=1e-10, atol=1e-10)
    auto = jaxnlls.solve(residual, x0, params, solver=solver)
    mine = jaxnlls.solve(residual, x0, params, solver=solver, jac=jac)
    assert int(mine.result) == jaxnlls.RESULTS.successful
    assert int(mine.stats.steps) == int(auto.stats.steps)
    np.testing.assert_allclose(mine.value["pose"].params, auto.value["pose"].params,
                               rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(mine.value["point"], auto.value["point"], rtol=tol.rtol,
                               atol=tol.atol)
    # stationarity of the returned point, from the autodiff gradient
    assert float(mine.stats.grad_norm) < 1e3 * tol.atol


def test_se2_graphs_with_analytic_jacobian_vmap_equals_loop(tol):
    graphs = [_se2_graph(seed) for seed in range(3)]
    residual, jac = graphs[0][0], graphs[0][1]
    # the edge lists are the same for every seed, so one residual/jac serves the batch
    x0 = jax.tree.map(lambda *a: jnp.stack(a), *[g[2] for g in graphs])
    params = jax.tree.map(lambda *a: jnp.stack(a), *[g[3] for g in graphs])

    def one(x, p):
        return jaxnlls.solve(residual, x, p, jac=jac, throw=False)

    batched = jax.jit(jax.vmap(one))(x0, params)
    for b, (_, _, xb, pb) in enumerate(graphs):
        sol = one(xb, pb)
        assert int(batched.stats.steps[b]) == int(sol.stats.steps)
        np.testing.assert_allclose(batched.value["pose"].params[b], sol.value["pose"].params,
                                   rtol=tol.rtol, atol=tol.atol)


def _se2_pattern(n_edges=7, n_poses=6):
    edges = [(i, (i + 1) % n_poses) for i in range(n_poses)] + [(0, n_poses // 2)]
    pat = np.zeros((3 * n_edges + 5, 2 + 3 * n_poses), bool)
    for k, (i, j) in enumerate(edges):
        pat[3 * k:3 * k + 3, 2 + 3 * i:5 + 3 * i] = True
        pat[3 * k:3 * k + 3, 2 + 3 * j:5 + 3 * j] = True
    r0 = 3 * n_edges
    pat[r0:r0 + 2, 5:8] = True
    pat[r0:r0 + 2, 0:2] = True
    pat[r0 + 2:, 2:5] = True
    return pat


def test_analytic_jacobian_with_sparsity_forms_the_same_normal_equations(tol):
    """With both, ``JᵀJ`` and ``Jᵀr`` come from the colored columns of the analytic J: equal to
    the dense products, and the solve takes the analytic path's steps to its solution."""
    from jaxnlls._linearize import make_dense_problem

    residual, jac, x0, params = _se2_graph()
    sp = jaxnlls.JacobianSparsity(_se2_pattern())
    J = np.asarray(jac(x0, params))
    pick, keep = sp.compression_picks()
    np.testing.assert_array_equal(J.reshape(-1)[pick] * keep, sp.seeds() @ J.T)

    def call_jac(x, inputs):
        return jac(x, inputs)

    prob = make_dense_problem(residual, x0, params, matrix=True, sparsity=sp, jac_call=call_jac)
    lin = prob.linearize(x0)
    r = np.asarray(prob.residual(x0))
    np.testing.assert_allclose(lin.gram(), J.T @ J, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(lin.jtr, J.T @ r, rtol=tol.rtol, atol=tol.atol)

    solver = jaxnlls.GaussNewton(rtol=1e-10, atol=1e-10)
    dense = jaxnlls.solve(residual, x0, params, solver=solver, jac=jac)
    both = jaxnlls.solve(residual, x0, params, solver=solver, jac=jac, jac_sparsity=sp)
    assert int(both.result) == jaxnlls.RESULTS.successful
    assert int(both.stats.steps) == int(dense.stats.steps)
    np.testing.assert_allclose(both.value["pose"].params, dense.value["pose"].params,
                               rtol=tol.rtol, atol=tol.atol)


# --- bad input ---------------------------------------------------------------------------


def test_analytic_jacobian_of_the_wrong_shape_is_named():
    residual, jac, x0, y = _curve()
    with pytest.raises(ValueError, match=r"returned shape \(3, 25\); expected .* \(25, 3\)"):
        jaxnlls.solve(residual, x0, y, jac=lambda x, y: jac(x, y).T)


def test_analytic_jacobian_of_the_wrong_dtype_is_named(x64):
    if not x64:
        pytest.skip("needs float64 to build a mismatch")
    residual, jac, x0, y = _curve()
    with pytest.raises(TypeError, match="returned dtype float32 but the residual has dtype"):
        jaxnlls.solve(residual, x0, y, jac=lambda x, y: jac(x, y).astype(jnp.float32))


def test_analytic_jacobian_that_is_not_an_array_is_named():
    residual, jac, x0, y = _curve()
    with pytest.raises(TypeError, match=r"jac\(init, params\) returned a tuple"):
        jaxnlls.solve(residual, x0, y, jac=lambda x, y: (jac(x, y),))


def test_analytic_jacobian_that_fails_to_trace_is_named():
    residual, _, x0, y = _curve()
    with pytest.raises(KeyError, match=r"jac\(init, params\) failed while tracing"):
        jaxnlls.solve(residual, x0, y, jac=lambda x, y: x["amplitude"])


@pytest.mark.parametrize("bad", [3, "analytic", None])
def test_jac_that_is_neither_a_mode_nor_a_function_is_rejected(bad):
    residual, _, x0, y = _curve()
    with pytest.raises(ValueError, match="jac must be 'auto', 'fwd', 'rev' or a function"):
        jaxnlls.solve(residual, x0, y, jac=bad)


def test_analytic_jacobian_with_a_matrix_free_solver_is_rejected():
    residual, jac, x0, y = _curve()
    with pytest.raises(ValueError, match="analytic jac needs a materialized Jacobian"):
        jaxnlls.solve(residual, x0, y, jac=jac,
                      solver=jaxnlls.LevenbergMarquardt(linear_solver=jaxnlls.CG()))
