"""Standard factors: residuals against numpy closed forms, analytic vs autodiff Jacobians."""

from __future__ import annotations

import importlib.util

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnlls.factors import (
    bal_project,
    bearing2d,
    between,
    between_autodiff,
    point_to_plane,
    point_to_point,
    prior,
    range2d,
    range_bearing2d,
)
from jaxnlls.graph import FactorGraph, Var, VarValues
from jaxnlls.lie import SE2, SE3, SO3, Sim3

_lin = eqx.filter_jit(lambda g, v: g.linearize(v).jac.to_dense())
_res = eqx.filter_jit(lambda g, v: g.residual(v))


def _dt():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


@pytest.mark.parametrize("group", [SE3, SO3, Sim3])
def test_between_analytic_jacobian_matches_autodiff(group, getkey, tol):
    class V(Var, group=group):
        pass

    n = 4
    x = group.sample_uniform(getkey(), (n,))
    x = group(x.params.astype(_dt()))
    z = group(group.sample_uniform(getkey(), (n - 1,)).params.astype(_dt()))
    d = group.tangent_dim
    L = jnp.asarray(np.triu(np.random.default_rng(0).normal(size=(n - 1, d, d))) + 3 * np.eye(d),
                    _dt())
    ia, ib = np.arange(n - 1), np.arange(1, n)
    vals = VarValues.make({V(np.arange(n)): x})
    ga = FactorGraph.build([between(V(ia), V(ib), z, L)], gauge=None)
    gb = FactorGraph.build([between_autodiff(V(ia), V(ib), z, L)], gauge=None)
    rtol = 1e-7 if jax.config.jax_enable_x64 else 2e-3
    np.testing.assert_allclose(_lin(ga, vals), _lin(gb, vals), rtol=rtol, atol=rtol)


def _rot_np(w, X):
    th = np.linalg.norm(w)
    k = w / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K
    return R @ X


def test_bal_projection_matches_numpy(tol):
    rng = np.random.default_rng(0)
    for _ in range(5):
        cam = np.concatenate([rng.normal(size=3) * 0.5, rng.normal(size=3), [500.0, 1e-2, -1e-3]])
        X = rng.normal(size=3) + np.array([0, 0, -5.0])
        P = _rot_np(cam[:3], X) + cam[3:6]
        p = -P[:2] / P[2]
        r2 = p @ p
        ref = cam[6] * (1 + cam[7] * r2 + cam[8] * r2 * r2) * p
        ours = bal_project(jnp.asarray(cam, _dt()), jnp.asarray(X, _dt()))
        np.testing.assert_allclose(ours, ref, rtol=tol.rtol * 10)
    # small-angle branch: zero rotation is the identity
    cam0 = jnp.asarray(np.concatenate([np.zeros(3), np.zeros(3), [1.0, 0, 0]]), _dt())
    X = jnp.asarray([1.0, 2.0, -4.0], _dt())
    np.testing.assert_allclose(bal_project(cam0, X), [0.25, 0.5], rtol=tol.rtol)
    g = jax.grad(lambda c: jnp.sum(bal_project(c, X)))(cam0)
    assert bool(jnp.all(jnp.isfinite(g)))


class P2(Var, group=SE2):
    pass


class L2(Var, dim=2):
    pass


def test_range_bearing_residuals_match_numpy(tol):
    dt = _dt()
    pose = SE2.from_xy_theta(jnp.asarray(1.0, dt), jnp.asarray(-2.0, dt), jnp.asarray(0.7, dt))
    lm = np.array([4.0, 1.5])
    vals = VarValues.make({P2(0): pose, L2(5): jnp.asarray(lm, dt)})
    c, s = np.cos(0.7), np.sin(0.7)
    local = np.array([[c, s], [-s, c]]) @ (lm - np.array([1.0, -2.0]))
    bearing = np.arctan2(local[1], local[0])
    rng_ = np.linalg.norm(local)
    zb, zr = 0.3, 2.0
    L = jnp.asarray([[2.0, 0.1], [0.0, 3.0]], dt)
    g = FactorGraph.build(
        [
            range2d(P2(0), L2(5), jnp.asarray(zr, dt), jnp.asarray(2.0, dt)),
            bearing2d(P2(0), L2(5), jnp.asarray(zb, dt), jnp.asarray(3.0, dt)),
            range_bearing2d(P2(0), L2(5), jnp.asarray(zb, dt), jnp.asarray(zr, dt), L),
        ],
        gauge=None,
    )
    r = np.asarray(_res(g, vals))
    # groups are ordered by factor name: bearing2d, range2d, range_bearing2d
    expect = np.concatenate([
        [3.0 * (bearing - zb)],
        [2.0 * (rng_ - zr)],
        np.asarray(L) @ np.array([bearing - zb, rng_ - zr]),
    ])
    np.testing.assert_allclose(r, expect, rtol=tol.rtol * 10, atol=tol.atol * 10)


class P3(Var, group=SE3):
    pass


def test_point_to_point_recovers_transform(getkey, tol):
    dt = _dt()
    T = SE3.sample_uniform(getkey(), ())
    T = SE3(T.params.astype(dt))
    src = jax.random.normal(getkey(), (20, 3), dt)
    dst = T @ src
    n = src.shape[0]
    g = FactorGraph.build(
        [point_to_point(P3(np.zeros(n, np.int64)), src, dst, jnp.ones((n, 3), dt))], gauge=None
    )
    init = VarValues.make({P3(0): SE3.identity((), dt)})
    sol = g.solve(init, throw=False)
    got = sol.value[P3(0)]
    err = got.local(T)
    assert float(jnp.max(jnp.abs(err))) < (1e-8 if jax.config.jax_enable_x64 else 1e-3)
    # point-to-plane residual equals n̂ᵀ(T·p - q) with the normal normalized: its length
    # (here 0.5-5) does not weight the residual (it did, silently)
    normals = jax.random.normal(getkey(), (n, 3), dt)
    normals = normals * jnp.linspace(0.5, 5.0, n, dtype=dt)[:, None]
    unit = normals / jnp.linalg.norm(normals, axis=1, keepdims=True)
    g2 = FactorGraph.build(
        [point_to_plane(P3(np.zeros(n, np.int64)), src, dst + 0.1, normals, jnp.full(n, 2.0, dt))],
        gauge=None,
    )
    r = _res(g2, VarValues.make({P3(0): T}))
    np.testing.assert_allclose(r, 2.0 * jnp.sum(unit * -0.1, 1), rtol=1e-4, atol=1e-4)
    # a zero normal names no plane (it silently removed the factor)
    with pytest.raises(ValueError, match="point_to_plane: normal 3 is zero or not finite"):
        point_to_plane(P3(np.zeros(n, np.int64)), src, dst, normals.at[3].set(0.0),
                       jnp.ones(n, dt))


@pytest.mark.parametrize("batched", [False, True])
def test_between_scalar_weight_linearizes(batched, tol):
    """A scalar ``sqrt_info`` (one per edge when batched) is documented and worked for the cost,
    but the fused linearization indexed it as a vector (IndexError)."""
    dt = _dt()
    x = SE3.exp(jnp.asarray(np.random.default_rng(0).normal(size=(3, 6)), dt))
    z = SE3.exp(jnp.asarray(np.random.default_rng(1).normal(size=(2, 6)) * 0.1, dt))
    ia, ib = np.arange(2), np.arange(1, 3)
    w = jnp.asarray([2.0, 0.5], dt)
    if batched:
        scalar = between(P3(ia), P3(ib), z, w)
    else:
        scalar = between(P3(0), P3(1), z[0], w[0])
        ia, ib, z, w = ia[:1], ib[:1], z[:1], w[:1]
    matrix = between(P3(ia), P3(ib), z, w[:, None, None] * jnp.eye(6, dtype=dt)[None])
    vals = VarValues.make({P3(np.arange(3)): x})
    ga, gb = (FactorGraph.build([f], gauge=None) for f in (scalar, matrix))
    np.testing.assert_allclose(_lin(ga, vals), _lin(gb, vals), rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(_lin_r(ga, vals), _res(gb, vals), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("kind", ["bearing2d", "range_bearing2d"])
def test_bearing_of_a_landmark_at_the_pose_is_finite(kind):
    """At zero range the bearing is undefined and ``atan2``'s derivative is NaN: the Jacobian was
    NaN and the solve blamed the residual. Now a zero row, reported as a singular direction."""
    dt = _dt()
    # θ = 0 so that the landmark's position in the pose frame is exactly zero
    pose = SE2.from_xy_theta(jnp.asarray(1.0, dt), jnp.asarray(2.0, dt), jnp.asarray(0.0, dt))
    f = (bearing2d(P2(0), L2(5), jnp.asarray(0.2, dt), jnp.asarray(1.0, dt))
         if kind == "bearing2d" else
         range_bearing2d(P2(0), L2(5), jnp.asarray(0.2, dt), jnp.asarray(1.0, dt),
                         jnp.eye(2, dtype=dt)))
    g = FactorGraph.build([f, prior(P2(0), pose, jnp.ones(3, dt))], gauge=None)
    vals = VarValues.make({P2(0): pose, L2(5): pose.translation()})
    J = np.asarray(_lin(g, vals))
    assert np.all(np.isfinite(J))
    row = 0 if kind == "bearing2d" else 3  # groups by name: bearing2d < prior < range_...
    assert np.all(J[row, :2] == 0.0)  # the bearing row w.r.t. the landmark (L2 < P2)
    sol = g.solve(vals, throw=False, max_steps=5)
    assert int(sol.result) != 3  # not "the residual became non-finite"


def test_complex_factor_data_is_refused():
    """A complex ``sqrt_info`` or weight lost its imaginary part with only a warning."""
    dt = _dt()
    g = FactorGraph.build([between(_Pose2(0), _Pose2(1), SE2.identity(dtype=dt),
                                   (1 + 5j) * jnp.eye(3))], gauge=None)
    with pytest.raises(TypeError, match="in factor between: sqrt_info is complex"):
        g.linearize(g.initial_values(dt))
    g = FactorGraph.build([range2d(_Pose2(0), _Pt(0), jnp.asarray(1.0, dt), 2j)], gauge=None)
    with pytest.raises(TypeError, match="in factor range2d: weight is complex"):
        g.linearize(g.initial_values(dt))


_lin_r = eqx.filter_jit(lambda g, v: g.linearize(v).residual)


@pytest.mark.parametrize("group", [SE2, SE3])
@pytest.mark.parametrize("diag", [False, True], ids=["full_L", "diag_w"])
def test_between_fused_linearization(group, diag, getkey, tol):
    """``between``'s fused ``linearize`` (residual and blocks from one evaluation) equals its
    residual function and its ``jacobian``-only path; also for a diagonal weight vector."""
    from jaxnlls.factors._standard import _between_jac, _between_res
    from jaxnlls.graph import factor

    class V(Var, group=group):
        pass

    n = 5
    d = group.tangent_dim
    x = group(group.sample_uniform(getkey(), (n,)).params.astype(_dt()))
    z = group(group.sample_uniform(getkey(), (n - 1,)).params.astype(_dt()))
    rng = np.random.default_rng(1)
    if diag:
        L = jnp.asarray(rng.uniform(0.5, 2.0, size=(n - 1, d)), _dt())
    else:
        L = jnp.asarray(np.triu(rng.normal(size=(n - 1, d, d))) + 3 * np.eye(d), _dt())
    ia, ib = np.arange(n - 1), np.arange(1, n)
    vals = VarValues.make({V(np.arange(n)): x})
    jac_only = factor(_between_res, jacobian=_between_jac, name="between_jac_only")
    ga = FactorGraph.build([between(V(ia), V(ib), z, L)], gauge=None)
    gb = FactorGraph.build([jac_only(V(ia), V(ib), z, L)], gauge=None)
    gc = FactorGraph.build([between_autodiff(V(ia), V(ib), z, L)], gauge=None)
    rtol = 1e-7 if jax.config.jax_enable_x64 else 2e-3
    np.testing.assert_allclose(_lin_r(ga, vals), _res(ga, vals), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(_lin_r(ga, vals), _lin_r(gb, vals), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(_lin(ga, vals), _lin(gb, vals), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(_lin(ga, vals), _lin(gc, vals), rtol=rtol, atol=rtol)


def _loop_graph(n_poses, dt, seed=0, extra=()):
    """A 3D pose graph with many loop closures (fill-in), gauge on pose 0 (plus ``extra``
    factors)."""
    rng = np.random.default_rng(seed)
    edges = [(k, k + 1) for k in range(n_poses - 1)]
    loops = [(k, (k * 7 + 3) % n_poses) for k in range(0, n_poses, 2)]
    edges += [(a, b) for a, b in loops if a != b]
    ia = np.asarray([a for a, _ in edges])
    ib = np.asarray([b for _, b in edges])
    x = SE3.exp(jnp.asarray(rng.normal(size=(n_poses, 6)), dt))
    z = SE3.exp(jnp.asarray(rng.normal(size=(len(edges), 6)) * 0.3, dt))
    L = jnp.asarray(np.triu(rng.normal(size=(len(edges), 6, 6)) * 0.1) + np.eye(6), dt)
    g = FactorGraph.build([between(P3(ia), P3(ib), z, L), *extra])
    return g, VarValues.make({P3(np.arange(n_poses)): x})


@pytest.mark.parametrize("same_twice", [False, True], ids=["pairs_once", "scatter_fallback"])
def test_gram_csc_data_is_upper_triangle_of_dense_normal_matrix(same_twice, tol):
    """``JᵀJ + D`` in CSC form equals the dense ``JᵀJ`` from ``J``: each column pair is computed
    once and lands in the upper triangle for edges stored either way round (loop closures
    ``(k, 7k+3 mod n)``); a factor naming one variable twice keeps the full scatter."""
    extra = []
    if same_twice:  # r = Log(z⁻¹ x⁻¹ x): both blocks on one variable
        z = SE3.exp(jnp.asarray([[0.1, 0.2, 0.3, 0.1, -0.2, 0.3]] * 2, _dt()))
        L = jnp.broadcast_to(jnp.eye(6, dtype=_dt()), (2, 6, 6))
        extra = [between(P3(np.array([2, 5])), P3(np.array([2, 5])), z, L)]
    g, vals = _loop_graph(17 + same_twice, _dt(), extra=extra)
    lin = jax.jit(lambda v: g.linearize(v))(vals)
    layout = lin.jac.layout
    plans = layout.gram_upper_plan()
    assert sum(p is None for p in plans) == same_twice  # only the factor with x twice
    indptr, indices, _, _, nnz = layout.gram_pattern()
    n = layout.n_cols
    damping = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.0, n), _dt())
    data = np.asarray(jax.jit(lambda l, d: l.jac.gram_csc_data(d))(lin, damping))
    J = np.asarray(lin.jac.to_dense())
    ref = J.T @ J + np.diag(np.asarray(damping))
    got = np.zeros((n, n))
    got[indices, np.repeat(np.arange(n), np.diff(indptr))] = data
    assert np.all(np.tril(got, -1) == 0)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, np.triu(ref), rtol=tol.rtol, atol=tol.atol * scale)


@pytest.mark.parametrize("same_twice", [False, True], ids=["pairs_once", "scatter_fallback"])
def test_dense_gram_of_a_graph_equals_jt_j(same_twice, tol):
    """The dense ``JᵀJ`` that :class:`DenseCholesky` factors (gathered from the CSC values, both
    triangles) equals ``JᵀJ`` of the dense ``J``; under ``vmap`` it equals a loop."""
    extra = []
    if same_twice:
        z = SE3.exp(jnp.asarray([[0.1, 0.2, 0.3, 0.1, -0.2, 0.3]], _dt()))
        extra = [between(P3(np.array([3])), P3(np.array([3])), z, jnp.eye(6, dtype=_dt())[None])]
    g, vals = _loop_graph(9, _dt(), extra=extra)
    lin = jax.jit(lambda v: g.linearize(v))(vals)
    J = np.asarray(lin.jac.to_dense())
    got = np.asarray(jax.jit(lambda l: l.gram())(lin))
    ref = J.T @ J
    np.testing.assert_allclose(got, ref, rtol=tol.rtol, atol=tol.atol * np.abs(ref).max())
    assert np.array_equal(got, got.T)
    # a batch of three perturbed graphs
    noise = jnp.asarray(np.random.default_rng(1).normal(size=(3, 9, 6)) * 0.1, _dt())
    xs = vals.get(P3) @ SE3.exp(noise)
    gram_of = jax.jit(lambda p: g.linearize(vals.replace(P3, SE3(p))).gram())
    batched = np.asarray(jax.vmap(gram_of)(xs.params))
    for k in range(3):
        np.testing.assert_allclose(batched[k], np.asarray(gram_of(xs.params[k])),
                                   rtol=tol.rtol, atol=tol.atol * np.abs(batched[k]).max())


def _sparse_step_equals_dense(n_poses, damping, backend):
    """The damped GN step of a loop graph by ``SparseCholesky(backend)`` equals the dense one,
    also for a given right-hand side after refactoring the pattern with another diagonal.
    Returns the linearization, the damping, the dense step and the host factorization."""
    from jaxnlls.linear import DenseCholesky
    from jaxnlls.linear._sparse import SparseCholesky, host_factor

    g, vals = _loop_graph(n_poses, jnp.float64)  # callers pass a distinct size per case
    lin = g.linearize(vals)
    n = g.tangent_size
    d = jnp.full((n,), damping)
    ref = np.asarray(DenseCholesky().solve(lin, d)[0])
    got, ok = SparseCholesky(backend).solve(lin, d)
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
    rhs = jnp.asarray(np.random.default_rng(2).normal(size=n))
    d2 = jnp.asarray(np.random.default_rng(4).uniform(1.0, 2.0, n)) + damping
    got2 = np.asarray(SparseCholesky(backend).solve(lin, d2, rhs)[0])
    ref2 = np.asarray(DenseCholesky().solve(lin, d2, rhs)[0])
    np.testing.assert_allclose(got2, ref2, rtol=1e-8, atol=1e-10 * np.abs(ref2).max())
    return lin, d, ref, host_factor(g.structure.layout, backend)


@pytest.mark.parametrize("damping", [1e-3, 0.0])
@pytest.mark.parametrize("min_batch", [1, 10**9], ids=["leaves_batched", "all_looped"])
def test_supernodal_step_equals_dense_and_qdldl(damping, min_batch, requires_x64, monkeypatch):
    """The block supernodal sparse Cholesky gives the dense (and qdldl) damped GN step, with
    the leaves of the elimination tree factored in batches or one by one."""
    pytest.importorskip("scipy")
    from jaxnlls.linear._sparse import SparseCholesky, _Supernodal

    monkeypatch.setattr(_Supernodal, "min_batch", min_batch)
    lin, d, ref, fac = _sparse_step_equals_dense(40 + (min_batch == 1), damping, "supernodal")
    assert fac.backend == "supernodal" and fac.supernodal is not None
    assert 1 < fac.supernodal.n_supernodes < 40  # several variables per supernode
    assert (fac.supernodal.n_batched > 0) == (min_batch == 1)
    if importlib.util.find_spec("qdldl") is not None:
        qd = np.asarray(SparseCholesky("qdldl").solve(lin, d)[0])
        np.testing.assert_allclose(qd, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())


@pytest.mark.parametrize("damping", [1e-3, 0.0])
def test_cholmod_step_equals_dense_step(damping, requires_x64):
    """CHOLMOD (cvxopt) gives the dense damped GN step, also after a refactorization with other
    values on the same pattern (the values are replaced in place, in the pattern's order)."""
    pytest.importorskip("cvxopt")
    lin, d, ref, fac = _sparse_step_equals_dense(38 + (damping == 0.0), damping, "cholmod")
    assert fac.backend == "cholmod" and fac._batch_backend == "cholmod"
    # CHOLMOD itself factored it (a failed Cholesky would fall back to qdldl's LDLᵀ)
    data, b = np.asarray(lin.jac.gram_csc_data(d)), np.asarray(-lin.rmv(lin.residual))
    direct = fac._cholmod_factor.solve(data, b)
    assert direct is not None
    np.testing.assert_allclose(direct, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())


def test_cholmod_backend_without_cvxopt_names_the_extra(monkeypatch):
    from jaxnlls.linear import _sparse

    monkeypatch.setattr(_sparse, "_CHOLMOD", False)
    with pytest.raises(ImportError, match=r"jaxnlls\[cholmod\]"):
        _sparse.SparseCholesky("cholmod").solve(*_small_lin())


def _small_lin():
    g, vals = _loop_graph(6, _dt())
    return g.linearize(vals), jnp.full((g.tangent_size,), 1.0, _dt())


@pytest.mark.parametrize("backend", ["supernodal", "cholmod"])
def test_cholesky_not_positive_definite_falls_back(backend):
    """A matrix that is not positive definite is not factored by Cholesky; the solve falls back
    to the LDLᵀ / LU of the same matrix rather than returning garbage."""
    if backend == "cholmod":
        pytest.importorskip("cvxopt")
    from jaxnlls.linear._sparse import _HostFactor

    g, _ = _loop_graph(12 + (backend == "cholmod"), _dt())
    layout = g.structure.layout
    fac = _HostFactor(layout, backend)
    indptr, indices, _, diag_pos, nnz = layout.gram_pattern()
    rng = np.random.default_rng(0)
    n = layout.n_cols
    data = np.zeros(nnz)
    data[diag_pos] = rng.uniform(1, 2, n) * np.where(np.arange(n) % 5 == 0, -1.0, 1.0)
    b = rng.normal(size=n)
    x = fac.solve(data, b)
    if backend == "cholmod":
        assert fac._cholmod_factor is not None and fac._cholmod_factor.solve(data, b) is None
    else:
        assert fac.supernodal is not None and not fac.supernodal.factor(data)
    np.testing.assert_allclose(data[diag_pos] * x, b, rtol=1e-10)


@pytest.mark.parametrize("backend", ["qdldl", "supernodal", "cholmod"])
def test_solve_batch_equals_per_member_dense_solves(backend, monkeypatch):
    """The batched host solve (``vmap``'s one callback; qdldl splits the members over threads)
    gives each member's dense solve; an all-zero and an indefinite member come back as NaN
    (qdldl) or by the LDLᵀ/LU fallback (supernodal, CHOLMOD), exactly as the single solve
    does."""
    pytest.importorskip({"qdldl": "qdldl", "cholmod": "cvxopt"}.get(backend, "scipy"))
    from jaxnlls.linear import _sparse

    monkeypatch.setattr(_sparse, "_n_cpus", lambda: 4)  # threads even on a 1-core runner
    n_poses = {"supernodal": 14, "qdldl": 15, "cholmod": 16}[backend]  # a fresh pattern each
    g, _ = _loop_graph(n_poses, _dt())
    layout = g.structure.layout
    fac = _sparse._HostFactor(layout, backend)
    indptr, indices, _, diag_pos, nnz = layout.gram_pattern()
    n = layout.n_cols
    cols = np.repeat(np.arange(n), np.diff(indptr))
    rng = np.random.default_rng(1)
    members = []
    for _ in range(40):  # random SPD matrices with this pattern: MᵀM restricted + diagonal shift
        upper = rng.normal(size=nnz) * 0.1
        upper[diag_pos] = 0.0
        full = np.zeros((n, n))
        full[indices, cols] = upper
        full = full + full.T
        upper[diag_pos] = np.abs(full).sum(1) + rng.uniform(0.5, 1.5, n)  # diagonally dominant
        members.append(upper)
    data = np.stack(members)
    data[5] = 0.0  # singular: NaN
    rhs = rng.normal(size=(40, n))
    got = fac.solve_batch(data, rhs)
    single = np.stack([fac.solve(d, b) for d, b in zip(data, rhs)])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(single))
    assert np.isnan(got[5]).all() and not np.isnan(np.delete(got, 5, 0)).any()
    for k in range(40):
        if k == 5:
            continue
        full = np.zeros((n, n))
        full[indices, cols] = data[k]
        full = full + np.triu(full, 1).T
        scale = np.abs(rhs[k]).max()
        np.testing.assert_allclose(full @ got[k], rhs[k], rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(got[k], single[k], rtol=1e-10, atol=1e-12)


def _banded_graph(n_poses, strides):
    edges = [(k, k + 1) for k in range(n_poses - 1)]
    edges += [(k, k + s) for s in strides for k in range(n_poses - s)]
    ia = np.asarray([a for a, _ in edges])
    ib = np.asarray([b for _, b in edges])
    z = SE3.exp(jnp.zeros((len(edges), 6), _dt()))
    L = jnp.broadcast_to(jnp.eye(6, dtype=_dt()), (len(edges), 6, 6))
    return FactorGraph.build([between(P3(ia), P3(ib), z, L)])


def test_supernodal_auto_choice_follows_fill(monkeypatch):
    """``backend="auto"`` without cvxopt: a chain (no fill, tiny fronts: per-supernode overhead
    dominates) goes to qdldl; a graph with long loop closures (dense fronts) to the supernodal
    backend."""
    pytest.importorskip("qdldl")
    from jaxnlls.linear import _sparse

    monkeypatch.setattr(_sparse, "_CHOLMOD", False)
    chain = _sparse._HostFactor(_banded_graph(400, []).structure.layout, "auto")
    assert chain.backend == "qdldl" and chain.supernodal is None
    filled = _sparse._HostFactor(_banded_graph(200, [5, 11, 23]).structure.layout, "auto")
    assert filled.backend == "supernodal" and filled.supernodal is not None


def test_cholmod_auto_choice_follows_fill():
    """``backend="auto"`` with cvxopt: the filled graph goes to CHOLMOD (its ``vmap`` batches to
    qdldl in threads), the chain still to qdldl."""
    pytest.importorskip("qdldl")
    pytest.importorskip("cvxopt")
    from jaxnlls.linear._sparse import _HostFactor

    chain = _HostFactor(_banded_graph(401, []).structure.layout, "auto")
    assert chain.backend == "qdldl"
    filled = _HostFactor(_banded_graph(201, [5, 11, 23, 47]).structure.layout, "auto")
    assert filled.backend == "cholmod" and filled.supernodal is None
    assert filled._batch_backend == "qdldl"


# ----------------------------------------------------------------------------- bad input
class _Pose2(Var, group=SE2):
    pass


class _Pt(Var, dim=2):
    pass


@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda dt: between(_Pose2(0), _Pose2(1), SE3.identity(dtype=dt), jnp.eye(3, dtype=dt)),
         TypeError, r"in factor between: z is a SE3, expected a SE2 \(the group of a\)"),
        # a (1,) weight broadcast and a (2, 3) matrix dropped a residual row, both silently
        (lambda dt: between(_Pose2(0), _Pose2(1), SE2.identity(dtype=dt), jnp.ones(1, dt)),
         ValueError, r"in factor between: sqrt_info has shape \(1,\); a 3-dim residual needs "
         r"\(3, 3\), \(3,\) or \(\)"),
        (lambda dt: between(_Pose2(0), _Pose2(1), SE2.identity(dtype=dt), jnp.ones((2, 3), dt)),
         ValueError, r"in factor between: sqrt_info has shape \(2, 3\)"),
        (lambda dt: prior(_Pose2(0), jnp.zeros(4, dt), jnp.eye(3, dtype=dt)), TypeError,
         r"in factor prior: z is a array of shape \(4,\), expected a SE2 \(the group of x\)"),
        (lambda dt: prior(_Pt(0), jnp.zeros(3, dt), jnp.eye(2, dtype=dt)), ValueError,
         r"in factor prior: z has shape \(3,\), expected \(2,\) \(the shape of x\)"),
        (lambda dt: point_to_point(_Pose2(0), jnp.ones(2, dt), jnp.ones(2, dt), jnp.ones(1, dt)),
         ValueError, r"in factor point_to_point: sqrt_info has shape \(1,\); a 2-dim residual"),
    ],
    ids=["between_group", "between_L1", "between_L23", "prior_array", "prior_shape", "p2p_L1"],
)
def test_standard_factor_input_errors_name_factor_and_argument(make, err, match):
    dt = _dt()
    graph = FactorGraph.build([make(dt)], gauge=None)
    init = graph.initial_values(dt)
    with pytest.raises(err, match=match):
        graph.linearize(init)


def test_float64_measurements_follow_float32_poses(x64):
    if not x64:
        pytest.skip("needs float64 data next to float32 values")
    z = SE2.from_xy_theta(jnp.ones(3), jnp.zeros(3), jnp.full(3, 0.1))  # float64 data
    ia = np.arange(3)
    pt = (z[0] @ z[0] @ z[0]).translation() + jnp.asarray([2.0, 0.0])  # zero residual
    graph = FactorGraph.build([
        between(_Pose2(ia), _Pose2(ia + 1), z, jnp.tile(jnp.eye(3) * 2, (3, 1, 1))),
        range2d(_Pose2(3), _Pt(0), jnp.asarray(2.0), jnp.asarray(1.0)),
        prior(_Pose2(0), SE2.identity(), jnp.ones(3)),
        prior(_Pt(0), pt, jnp.ones(2)),
    ])

    def init(dt):
        return VarValues.make({_Pose2(np.arange(4)): SE2.identity((4,), dt),
                               _Pt(0): jnp.asarray([4.0, 1.0], dt)})

    # was: "cond branches must have equal output types" from inside the solver loop
    sol = graph.solve(init(jnp.float32))
    ref = graph.solve(init(jnp.float64))
    assert sol.value.get(_Pose2).dtype == jnp.float32
    np.testing.assert_allclose(sol.value.get(_Pose2).params, ref.value.get(_Pose2).params,
                               rtol=1e-4, atol=1e-4)
