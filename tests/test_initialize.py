"""Chordal initialization of pose graphs (``jaxnlls.graph.chordal_initialization``).

References: exact measurements must give back the true poses; noisy ones must give the
least-squares solution of the relaxation computed independently with numpy (dense ``lstsq``
on the explicit linear system, SVD projection); the shared large-noise graphs must reach an
optimum no worse than GTSAM's from the file's guess.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnlls
from jaxnlls.graph import chordal_initialization
from jaxnlls.io import group_to_poses, pose_graph_to_factor_graph, read_pose_graph
from jaxnlls.lie import SE2, SE3, SO2, SO3
from jaxnlls.linear import DenseCholesky, SparseCholesky

REFERENCE = pathlib.Path(__file__).resolve().parents[1] / "bench" / "reference_costs.json"
N_POSES = 12
# a chain and three loop closures, one stored as (newer, older)
EDGES = np.array([(k, k + 1) for k in range(N_POSES - 1)] + [(0, 6), (3, 10), (11, 4)])


def _random_poses(group, key, n, dtype):
    kr, kt = jax.random.split(key)
    rot = (SO2 if group is SE2 else SO3).sample_uniform(kr, (n,), dtype)
    t = 3.0 * jax.random.normal(kt, (n, 2 if group is SE2 else 3), dtype)
    return group.from_rotation_and_translation(rot, t)


def _random_information(key, n_edges, d, dtype):
    A = jax.random.normal(key, (n_edges, d, d), dtype)
    return A @ jnp.swapaxes(A, -1, -2) + d * jnp.eye(d, dtype=dtype)[None]


def _dtype():
    return jnp.asarray(0.0).dtype


def _matrices(x):
    return np.asarray(x.as_matrix(), np.float64)


@pytest.mark.parametrize("group", [SE2, SE3], ids=["SE2", "SE3"])
def test_exact_measurements_give_back_the_poses(group, getkey, x64):
    dt = _dtype()
    truth = _random_poses(group, getkey(), N_POSES, dt)
    z = truth[EDGES[:, 0]].inverse() @ truth[EDGES[:, 1]]
    info = _random_information(getkey(), len(EDGES), group.tangent_dim, dt)
    x = chordal_initialization(EDGES, z, N_POSES, information=info, anchor=3,
                               anchor_pose=truth[3])
    assert x.params.shape == truth.params.shape and x.params.dtype == dt
    np.testing.assert_allclose(_matrices(x), _matrices(truth), atol=1e-9 if x64 else 1e-4)
    # the sparse host solve (used for large graphs) gives the same poses as the dense one
    xs = chordal_initialization(EDGES, z, N_POSES, information=info, anchor=3,
                                anchor_pose=truth[3], linear_solver=SparseCholesky())
    xd = chordal_initialization(EDGES, z, N_POSES, information=info, anchor=3,
                                anchor_pose=truth[3], linear_solver=DenseCholesky())
    np.testing.assert_allclose(_matrices(xs), _matrices(xd), atol=1e-10 if x64 else 1e-4)


def _project_rotation(M):
    U, _, Vt = np.linalg.svd(M)
    D = np.eye(M.shape[0])
    D[-1, -1] = np.sign(np.linalg.det(U @ Vt))
    return U @ D @ Vt


def _numpy_chordal(edges, Z, t_meas, info, n, anchor, R_anchor, t_anchor):
    """The relaxation as one explicit dense least-squares problem per stage (numpy lstsq)."""
    d = Z.shape[-1]
    dt = d
    dr = 1 if d == 2 else 3
    free = [k for k in range(n) if k != anchor]
    col = {k: i for i, k in enumerate(free)}
    # stage 1: unknowns vec(R_k) row-major, residual sqrt(tr(Ω_rr)/(2 dr)) (R_j - R_i Z)
    rows, rhs = [], []
    for (i, j), Zk, om in zip(edges, Z, info, strict=True):
        w = np.sqrt(np.trace(om[dt:, dt:]) / (2 * dr))
        for a in range(d):
            for b in range(d):
                row = np.zeros(len(free) * d * d)
                const = 0.0
                # R_j[a, b]
                if j == anchor:
                    const += R_anchor[a, b]
                else:
                    row[col[j] * d * d + a * d + b] += 1.0
                # -(R_i Z)[a, b] = -sum_c R_i[a, c] Z[c, b]
                for c in range(d):
                    if i == anchor:
                        const -= R_anchor[a, c] * Zk[c, b]
                    else:
                        row[col[i] * d * d + a * d + c] -= Zk[c, b]
                rows.append(w * row)
                rhs.append(-w * const)
    sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    R = np.zeros((n, d, d))
    R[anchor] = R_anchor
    for k in free:
        R[k] = _project_rotation(sol[col[k] * d * d:(col[k] + 1) * d * d].reshape(d, d))
    # stage 2: L_t (R_iᵀ (t_j - t_i) - t_k) with L_tᵀ L_t = Ω_tt
    rows, rhs = [], []
    for (i, j), tk, om in zip(edges, t_meas, info, strict=True):
        L = np.linalg.cholesky(om[:dt, :dt]).T
        A = np.zeros((d, len(free) * d))
        const = -tk.copy()
        for k, sign in ((j, 1.0), (i, -1.0)):
            if k == anchor:
                const = const + sign * R[i].T @ t_anchor
            else:
                A[:, col[k] * d:(col[k] + 1) * d] += sign * R[i].T
        rows.append(L @ A)
        rhs.append(-L @ const)
    t = np.zeros((n, d))
    t[anchor] = t_anchor
    ts = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
    for k in free:
        t[k] = ts[col[k] * d:(col[k] + 1) * d]
    return R, t


@pytest.mark.parametrize("group", [SE2, SE3], ids=["SE2", "SE3"])
def test_noisy_measurements_match_a_dense_numpy_solve(group, getkey, x64):
    dt = _dtype()
    truth = _random_poses(group, getkey(), N_POSES, dt)
    noise = 0.3 * jax.random.normal(getkey(), (len(EDGES), group.tangent_dim), dt)
    z = (truth[EDGES[:, 0]].inverse() @ truth[EDGES[:, 1]]).retract(noise)
    info = _random_information(getkey(), len(EDGES), group.tangent_dim, dt)
    x = chordal_initialization(EDGES, z, N_POSES, information=info, anchor=5,
                               anchor_pose=truth[5])
    R, t = _numpy_chordal(EDGES, np.asarray(z.rotation().as_matrix(), np.float64),
                          np.asarray(z.translation(), np.float64), np.asarray(info, np.float64),
                          N_POSES, 5, np.asarray(truth[5].rotation().as_matrix(), np.float64),
                          np.asarray(truth[5].translation(), np.float64))
    atol = 1e-9 if x64 else 2e-3
    np.testing.assert_allclose(np.asarray(x.rotation().as_matrix()), R, atol=atol)
    np.testing.assert_allclose(np.asarray(x.translation()), t, atol=atol * 10)
    # the noise is large enough that the relaxation is not the nonlinear optimum: the test
    # would not notice a solver that returned the truth or the nonlinear solution instead
    assert np.max(np.abs(np.asarray(truth.translation()) - t)) > 1e-2


def test_unit_weights_without_information(getkey, x64):
    dt = _dtype()
    truth = _random_poses(SE3, getkey(), N_POSES, dt)
    noise = 0.2 * jax.random.normal(getkey(), (len(EDGES), 6), dt)
    z = (truth[EDGES[:, 0]].inverse() @ truth[EDGES[:, 1]]).retract(noise)
    x = chordal_initialization(EDGES, z, N_POSES)  # anchor 0 at the identity
    # unit information: w² = tr(I₃)/6 = 1/2 in the numpy reference's convention
    eye = np.broadcast_to(np.eye(6), (len(EDGES), 6, 6))
    R, t = _numpy_chordal(EDGES, np.asarray(z.rotation().as_matrix(), np.float64),
                          np.asarray(z.translation(), np.float64), eye, N_POSES, 0, np.eye(3),
                          np.zeros(3))
    atol = 1e-9 if x64 else 2e-3
    np.testing.assert_allclose(np.asarray(x.rotation().as_matrix()), R, atol=atol)
    np.testing.assert_allclose(np.asarray(x.translation()), t, atol=atol * 10)


def test_jit_equals_eager_and_vmap_equals_loop(getkey, tol):
    dt = _dtype()
    truth = _random_poses(SE2, getkey(), N_POSES, dt)
    z0 = truth[EDGES[:, 0]].inverse() @ truth[EDGES[:, 1]]
    noise = 0.2 * jax.random.normal(getkey(), (3, len(EDGES), 3), dt)
    zs = jax.vmap(lambda n: z0.retract(n))(noise)

    def init(z):
        return chordal_initialization(EDGES, z, N_POSES, anchor_pose=truth[0])

    batched = jax.jit(jax.vmap(init))(zs)
    for b in range(3):
        one = init(zs[b])
        np.testing.assert_allclose(np.asarray(batched.params[b]), np.asarray(one.params),
                                   rtol=tol.rtol, atol=10 * tol.atol)
        np.testing.assert_allclose(np.asarray(jax.jit(init)(zs[b]).params),
                                   np.asarray(one.params), rtol=tol.rtol, atol=10 * tol.atol)


def test_bad_input_is_named():
    dt = _dtype()
    z = SE2.identity((len(EDGES),), dt)
    with pytest.raises(ValueError, match="not connected to the anchor.*pose 12"):
        chordal_initialization(EDGES, z, N_POSES + 1)  # pose 12 has no edge
    with pytest.raises(ValueError, match=r"information must have shape \(14, 3, 3\)"):
        chordal_initialization(EDGES, z, N_POSES, information=jnp.ones((14, 6, 6), dt))
    with pytest.raises(TypeError, match="batched SE2 or SE3, got SO3"):
        chordal_initialization(EDGES, SO3.identity((len(EDGES),), dt), N_POSES)
    with pytest.raises(ValueError, match="edge indices must lie in 0..9"):
        chordal_initialization(EDGES, z, 10)
    with pytest.raises(ValueError, match="14 edges but measurements of batch shape"):
        chordal_initialization(EDGES, z[:3], N_POSES)
    bad = SE2(z.params.at[2, 2].set(jnp.nan))
    with pytest.raises(Exception, match="chordal_initialization: a linear solve failed"):
        jax.block_until_ready(chordal_initialization(EDGES, bad, N_POSES))
    with pytest.raises(ValueError, match="anchor_pose must be one SE2.*got SE3"):
        chordal_initialization(EDGES, z, N_POSES, anchor_pose=SE3.identity(dtype=dt))
    with pytest.raises(ValueError, match=r"anchor_pose must be one SE2.*batch shape \(1,\)"):
        chordal_initialization(EDGES, z, N_POSES, anchor_pose=SE2.identity((1,), dt))


def test_a_single_pose_is_the_anchor():
    dt = _dtype()
    x = SE2.from_xy_theta(jnp.asarray(1.0, dt), jnp.asarray(2.0, dt), jnp.asarray(0.3, dt))
    out = chordal_initialization(np.zeros((0, 2), int), SE2.identity((0,), dt), 1, anchor_pose=x)
    assert out.params.shape == (1, 4) and out.params.dtype == dt
    np.testing.assert_array_equal(out.params[0], x.params)


def test_pose_graph_init_option_rejects_unknown(shared_data):
    pg = read_pose_graph(shared_data / "pgo2d/ring.g2o")
    with pytest.raises(ValueError, match="init must be 'file' or 'chordal'"):
        pose_graph_to_factor_graph(pg, init="odometry")


def _solve_from_chordal(shared_data, rel, max_steps=100):
    x64 = jax.config.read("jax_enable_x64")
    pg = read_pose_graph(shared_data / rel)
    fg, init, pose_t = pose_graph_to_factor_graph(pg, init="chordal")
    # the first pose stays where the file puts it (the gauge the file's solve uses too)
    np.testing.assert_allclose(group_to_poses(init.get(pose_t))[0], pg.poses[0],
                               atol=1e-12 if x64 else 1e-5)
    sol = fg.solve(init, max_steps=max_steps, throw=False)
    if x64:
        assert int(sol.result) == jaxnlls.RESULTS.successful, jaxnlls.RESULTS.message(
            int(sol.result))
    cost = pg.cost(group_to_poses(sol.value.get(pose_t)))  # independent numpy residual
    refs = json.loads(REFERENCE.read_text())["problems"]
    return cost, refs[rel]["reference_cost"], sol


@pytest.mark.parametrize("rel", ["pgo2d/ring.g2o", "pgo3d/tinyGrid3D.g2o"])
def test_chordal_start_reaches_gtsams_optimum(shared_data, rel):
    x64 = jax.config.read("jax_enable_x64")
    cost, ref, _ = _solve_from_chordal(shared_data, rel)
    np.testing.assert_allclose(cost, ref, rtol=1e-6 if x64 else 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "rel, below",
    [
        # GTSAM's reference from the file's guess is a poor local minimum on both
        ("pgo3d/sphere_bignoise_vertex3.g2o", 0.5),
        ("pgo2d/input_M3500a_g2o.g2o", 0.2),
        ("pgo2d/input_INTEL_g2o.g2o", 0.9),
    ],
)
def test_chordal_start_escapes_poor_local_minima(shared_data, rel, below):
    cost, ref, sol = _solve_from_chordal(shared_data, rel)
    assert int(sol.stats.steps) <= 20
    assert cost <= below * ref, (cost, ref)


# ------------------------------------------------------------- the host version (io)
@pytest.mark.parametrize("rel", ["pgo2d/ring.g2o", "pgo2d/intel.g2o",
                                 "pgo3d/tinyGrid3D.g2o", "pgo3d/parking-garage.g2o"])
def test_host_chordal_equals_the_compiled_one(shared_data, rel, x64):
    """``io.chordal_initial_values`` (scipy sparse LU on the host, what ``jaxnlls pgo --init
    chordal`` runs) equals ``graph.chordal_initialization`` (factor-graph linearizations
    under jit), with the file's first pose as the anchor."""
    from jaxnlls.io import chordal_initial_values, poses_to_group
    from jaxnlls.io._chordal_host import chordal_poses

    pg = read_pose_graph(shared_data / rel)
    host = chordal_poses(pg)
    dt = _dtype()
    group = SE2 if pg.dim == 2 else SE3
    compiled = chordal_initialization(
        pg.edges, poses_to_group(pg.measurements, pg.dim, dt), pg.n_poses,
        information=jnp.asarray(pg.information, dt), anchor=0,
        anchor_pose=poses_to_group(pg.poses[:1], pg.dim, dt)[0])
    x_host = poses_to_group(host, pg.dim, dt)
    assert isinstance(x_host, group)
    host_m = _matrices(x_host)
    # float32: the compiled relaxation's normal equations lose ~1e-3 of the graph's extent
    # (parking-garage: 0.4 m of its ~100 m translations)
    atol = 1e-8 if x64 else 5e-3 * max(1.0, float(np.max(np.abs(host_m))))
    np.testing.assert_allclose(host_m, _matrices(compiled), rtol=1e-8 if x64 else 1e-3,
                               atol=atol)
    np.testing.assert_array_equal(host[0], pg.poses[0])  # the anchor exactly as in the file
    # the io entry point is the host version, in the layout of pose_graph_to_factor_graph
    _, _, pose_t = pose_graph_to_factor_graph(pg)
    np.testing.assert_allclose(_matrices(chordal_initial_values(pg).get(pose_t)),
                               _matrices(x_host), atol=1e-12 if x64 else 1e-6)


def test_host_chordal_names_bad_graphs(shared_data):
    import dataclasses

    from jaxnlls.io._chordal_host import chordal_poses

    pg = read_pose_graph(shared_data / "pgo2d/ring.g2o")
    # drop every edge of the last pose: no chain joins it to pose 0
    keep = np.all(pg.edges != pg.n_poses - 1, axis=1)
    cut = dataclasses.replace(pg, edges=pg.edges[keep], measurements=pg.measurements[keep],
                              information=pg.information[keep], edge_lines=pg.edge_lines[keep])
    with pytest.raises(ValueError, match=f"not connected.*vertex {pg.ids[-1]}"):  # file's id
        chordal_poses(cut)
    # the anchor is returned exactly as the file has it, even as an unwrapped angle
    poses = pg.poses.copy()
    poses[0, 2] = 7.0
    np.testing.assert_array_equal(chordal_poses(dataclasses.replace(pg, poses=poses))[0],
                                  poses[0])
    # edges that exist but carry no rotation information do not determine the rotations
    info = pg.information.copy()
    far = np.any(pg.edges >= pg.n_poses // 2, axis=1) & np.any(pg.edges < pg.n_poses // 2,
                                                                  axis=1)
    info[far, 2, :] = info[far, :, 2] = 0.0  # ring: (x, y, theta), cut between the halves
    with pytest.raises(ValueError, match="not connected to the anchor.*nonzero rotation information"):
        chordal_poses(dataclasses.replace(pg, information=info))
    nan = pg.measurements.copy()
    nan[3, 0] = np.nan
    with pytest.raises(ValueError, match="chordal initialization: a linear solve"):
        chordal_poses(dataclasses.replace(pg, measurements=nan))


_ONE_CPU_SCRIPT = """
import os, sys, jax
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
jax.config.update("jax_enable_x64", True)
from jaxnlls.graph import chordal_initialization
from jaxnlls.io import poses_to_group, read_g2o
pg = read_g2o(sys.argv[1])
z = poses_to_group(pg.measurements, pg.dim)
for _ in range(3):
    jax.block_until_ready(chordal_initialization(pg.edges, z, pg.n_poses,
                                                 information=pg.information))
print("done")
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"),
                    reason="pinning the test process to one CPU needs os.sched_setaffinity (Linux)")
def test_host_sparse_solve_does_not_deadlock_on_one_cpu(shared_data):
    """On one CPU, reading `jax.pure_callback`'s operands inside the callback could wait forever
    on the runtime running it (2 hangs in 3 chordal initializations of intel.g2o); the host
    solver's callback is a `buffer_callback`, which hands over the runtime's own buffers."""
    import subprocess
    import sys

    try:
        out = subprocess.run(
            [sys.executable, "-c", _ONE_CPU_SCRIPT, str(shared_data / "pgo2d" / "intel.g2o")],
            capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("chordal_initialization with a host sparse solver hung on one CPU")
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-2000:]


def test_host_sparse_solve_pure_callback_branch_agrees(monkeypatch):
    """The `pure_callback` branch (GPU backends, jax without `buffer_callback`) gives the same
    answer as the CPU `buffer_callback`, also under `vmap` (the rotation rows)."""
    import jaxnlls.linear._sparse as sparse

    n = 60
    rng = np.random.default_rng(0)
    edges = np.array([(i, i + 1) for i in range(n - 1)]
                     + [(i, i + 9) for i in range(0, n - 9, 4)])
    noise = rng.normal(0.0, 0.3, (3, len(edges)))
    z = SE2.from_xy_theta(*(jnp.asarray(v, _dtype()) for v in noise))
    solver = SparseCholesky("qdldl")
    via_buffers = chordal_initialization(edges, z, n, linear_solver=solver)
    monkeypatch.setattr(sparse, "buffer_callback", None)
    jax.clear_caches()  # trace again, now through the other branch
    via_pure = chordal_initialization(edges, z, n, linear_solver=solver)
    np.testing.assert_allclose(via_pure.params, via_buffers.params, rtol=0, atol=0)
