"""Readers/writers in ``jaxnlls.io``: shared files (counts from the data README), format details,
round trips, chained initialization and error messages on bad files."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.transform import Rotation

from jaxnlls.io import (
    INFORMATION_FLOOR,
    FormatError,
    PoseGraph,
    project_to_psd,
    read_bal,
    read_g2o,
    read_pose_graph,
    read_toro,
    write_g2o,
    wxyz_to_xyzw,
    xyzw_to_wxyz,
)
from jaxnlls.io._se_numpy import (
    se2_compose,
    se2_inverse,
    se2_log,
    se3_compose,
    se3_inverse,
    se3_log,
)

# (path, dim, vertices, edges, consecutive (i, i+1) pairs, distinct pairs) from data/README.md
SHARED_GRAPHS = [
    ("pgo2d/CSAIL.g2o", 2, 1045, 1172, 1044, 1171),
    ("pgo2d/FR079.g2o", 2, 989, 1217, 988, 1217),
    ("pgo2d/city10000.g2o", 2, 10000, 20687, 9999, 20687),
    ("pgo2d/input_INTEL_g2o.g2o", 2, 1228, 1483, 1227, 1483),
    ("pgo2d/input_M3500_g2o.g2o", 2, 3500, 5453, 3499, 5453),
    ("pgo2d/input_M3500a_g2o.g2o", 2, 3500, 5453, 3499, 5453),
    ("pgo2d/intel.g2o", 2, 1728, 2512, 1727, 2512),
    ("pgo2d/manhattanOlson3500.g2o", 2, 3500, 5598, 3499, 5453),
    ("pgo2d/ring.g2o", 2, 434, 459, 433, 459),
    ("pgo2d/ringCity.g2o", 2, 2361, 3261, 2360, 3261),
    ("pgo2d/groundtruth/ring.g2o", 2, 434, 459, 433, 459),
    ("pgo2d/groundtruth/ringCity.g2o", 2, 2361, 3261, 2360, 3261),
    ("pgo2d/risam_csail/csail.g2o", 2, 1045, 1172, 1044, 1171),
    ("pgo2d/risam_csail/csail.toro", 2, 1045, 1172, 1044, 1171),
    ("pgo3d/parking-garage.g2o", 3, 1661, 6275, 1660, 6275),
    ("pgo3d/smallGrid3D.g2o", 3, 125, 297, 124, 297),
    ("pgo3d/sphere2500.g2o", 3, 2500, 4949, 2499, 4949),
    ("pgo3d/sphere_bignoise_vertex3.g2o", 3, 2200, 8647, 2199, 8647),
    ("pgo3d/tinyGrid3D.g2o", 3, 9, 11, 8, 11),
    ("misc/gtsam/Klaus3.g2o", 3, 3, 3, None, None),
    ("misc/gtsam/noisyToyGraph.txt", 2, 4, 5, None, None),
    ("misc/gtsam/pose2example.txt", 2, 11, 12, None, None),
    ("misc/gtsam/pose3example-grid.txt", 3, 27, 44, None, None),
    ("misc/gtsam/pose3example.txt", 3, 5, 6, None, None),
    ("misc/gtsam/toyExample.g2o", 3, 5, 6, None, None),
    ("misc/gtsam/w100.graph", 2, 100, 300, None, None),
]


def _is_symmetric_pd(m: np.ndarray) -> bool:
    return bool(
        np.allclose(m, np.swapaxes(m, -1, -2)) and np.all(np.linalg.eigvalsh(m)[..., 0] > 0)
    )


@pytest.mark.parametrize("rel, dim, n_v, n_e, n_consec, n_pairs", SHARED_GRAPHS)
def test_shared_graph_counts(shared_data, rel, dim, n_v, n_e, n_consec, n_pairs):
    g = read_pose_graph(shared_data / rel)
    assert g.dim == dim
    assert g.n_poses == n_v and g.n_edges == n_e
    assert g.poses.shape == (n_v, 3 if dim == 2 else 7)
    assert g.measurements.shape == (n_e, 3 if dim == 2 else 7)
    d = 3 if dim == 2 else 6
    assert g.information.shape == (n_e, d, d)
    assert g.edge_lines.shape == (n_e,) and np.all(np.diff(g.edge_lines) > 0)
    assert np.array_equal(g.ids, np.arange(n_v))
    assert np.all(np.isfinite(g.poses)) and _is_symmetric_pd(g.information)
    if dim == 3:
        np.testing.assert_allclose(np.linalg.norm(g.poses[:, 3:], axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(g.measurements[:, 3:], axis=1), 1.0, atol=1e-12)
    if n_consec is not None:
        lo, hi = g.edges.min(axis=1), g.edges.max(axis=1)
        pairs = set(zip(lo.tolist(), hi.tolist(), strict=True))
        assert len(pairs) == n_pairs
        assert sum(1 for a, b in pairs if b == a + 1) == n_consec
    assert np.isfinite(g.cost()) and g.cost() >= 0.0


def test_which_files_have_vertices(shared_data):
    assert read_g2o(shared_data / "pgo2d/CSAIL.g2o").chained
    assert not read_g2o(shared_data / "pgo2d/intel.g2o").chained


def test_loop_closures_stored_newer_older(shared_data):
    """ring.g2o stores loop closures as (newer, older); the noise-free ground-truth file has the
    same edges, so its measurements must equal T_i^-1 T_j of its vertices exactly (cost ~ 0)."""
    g = read_g2o(shared_data / "pgo2d/groundtruth/ring.g2o")
    assert np.sum(g.edges[:, 0] > g.edges[:, 1]) == 26
    back = g.edges[:, 0] > g.edges[:, 1]
    r = g.residuals()
    assert np.max(np.abs(r[back])) < 1e-3
    assert g.cost() < 1e-6


def test_initial_costs_match_gtsam_reference(shared_data):
    """Initial costs listed in peers/REFERENCE_COSTS.md (computed there with GTSAM)."""
    for rel, ref in [
        ("pgo2d/intel.g2o", 276.998),
        ("pgo2d/input_M3500_g2o.g2o", 1.31736e6),
        ("pgo3d/sphere2500.g2o", 1.30566e6),
        ("pgo3d/parking-garage.g2o", 8363.6),
    ]:
        assert read_g2o(shared_data / rel).cost() == pytest.approx(ref, rel=1e-5)


def test_toro_info_order_matches_g2o(shared_data):
    """riSAM ships CSAIL as TORO and g2o with the same numbers, info reordered."""
    a = read_toro(shared_data / "pgo2d/risam_csail/csail.toro")
    b = read_g2o(shared_data / "pgo2d/risam_csail/csail.g2o")
    np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_allclose(a.measurements, b.measurements, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.poses, b.poses, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.information, b.information, rtol=1e-12)
    # yy and theta-theta differ and xy is nonzero, so the reordering is exercised (the file has no
    # x-theta / y-theta terms; test_toro_info_order_unit covers those)
    assert np.all(a.information[:, 1, 1] != a.information[:, 2, 2])
    assert np.any(a.information[:, 0, 1] != 0.0)


def test_toro_info_order_unit(tmp_path):
    p = tmp_path / "t.graph"
    p.write_text("VERTEX2 0 0 0 0\nVERTEX2 1 1 0 0\nEDGE2 0 1 1 0 0 10 1 20 30 2 3\n")
    info = read_toro(p).information[0]
    np.testing.assert_array_equal(info, [[10, 1, 2], [1, 20, 3], [2, 3, 30]])


def test_g2o_info_upper_triangle_row_major(tmp_path):
    p = tmp_path / "g.g2o"
    vals = [10, 1, 2, 3, 4, 5, 20, 6, 7, 8, 9, 30, 11, 12, 13, 40, 14, 15, 50, 16, 60]
    p.write_text(
        "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
        "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 " + " ".join(map(str, vals)) + "\n"
    )
    m = read_g2o(p).information[0]
    np.testing.assert_array_equal(np.diag(m), [10, 20, 30, 40, 50, 60])
    np.testing.assert_array_equal(m[0], [10, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(m[:, 0], [10, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(m[1, 2:], [6, 7, 8, 9])
    np.testing.assert_array_equal(m[4, 5], 16)


def test_w100_equiv_stored(shared_data):
    g = read_toro(shared_data / "misc/gtsam/w100.graph")
    assert g.equivalences.shape == (40, 2)
    assert tuple(g.equivalences[0]) == (21, 1)


def test_quaternion_helpers(shared_data):
    g = read_g2o(shared_data / "pgo3d/tinyGrid3D.g2o")
    q = g.pose_quaternions_wxyz()
    np.testing.assert_array_equal(q[:, 0], g.poses[:, 6])
    np.testing.assert_array_equal(q[:, 1:], g.poses[:, 3:6])
    np.testing.assert_array_equal(wxyz_to_xyzw(q), g.poses[:, 3:])
    np.testing.assert_array_equal(
        xyzw_to_wxyz(g.measurements[:, 3:]), g.measurement_quaternions_wxyz()
    )
    with pytest.raises(ValueError, match="3D"):
        read_g2o(shared_data / "misc/gtsam/pose2example.txt").pose_quaternions_wxyz()


def test_sqrt_information(shared_data):
    g = read_g2o(shared_data / "pgo3d/smallGrid3D.g2o")
    r = g.sqrt_information()
    np.testing.assert_allclose(np.swapaxes(r, 1, 2) @ r, g.information, rtol=1e-12, atol=1e-9)
    assert np.all(np.tril(r, -1) == 0)


# ---------------------------------------------------------------------------------------------
# numpy Lie helpers against scipy (independent reference for the cost used in tests/benches)
# ---------------------------------------------------------------------------------------------


def _twist_matrix(xi: np.ndarray) -> np.ndarray:
    v, w = xi[:3], xi[3:]
    m = np.zeros((4, 4))
    m[:3, :3] = [[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]
    m[:3, 3] = v
    return m


def test_se3_log_against_scipy_expm():
    rng = np.random.default_rng(0)
    for scale in (1e-7, 0.3, 3.0):
        for _ in range(5):
            rot = Rotation.from_rotvec(rng.normal(size=3) * scale / np.sqrt(3))
            q = rot.as_quat()  # xyzw
            t = rng.normal(size=3)
            xi = se3_log(np.concatenate([t, q]))
            m = scipy.linalg.expm(_twist_matrix(xi))
            np.testing.assert_allclose(m[:3, :3], rot.as_matrix(), atol=1e-10)
            np.testing.assert_allclose(m[:3, 3], t, atol=1e-9)


def test_se2_log_against_scipy_expm():
    rng = np.random.default_rng(1)
    for th in (1e-9, -0.4, 2.5, -3.1):
        t = rng.normal(size=2)
        xi = se2_log(np.array([t[0], t[1], th]))
        m = scipy.linalg.expm(np.array([[0, -xi[2], xi[0]], [xi[2], 0, xi[1]], [0, 0, 0]]))
        np.testing.assert_allclose(m[:2, 2], t, atol=1e-10)
        np.testing.assert_allclose(np.arctan2(m[1, 0], m[0, 0]), th, atol=1e-12)


def test_se3_compose_inverse_against_matrices():
    rng = np.random.default_rng(2)

    def mat(p):
        m = np.eye(4)
        m[:3, :3] = Rotation.from_quat(p[3:]).as_matrix()
        m[:3, 3] = p[:3]
        return m

    a = np.concatenate([rng.normal(size=3), Rotation.random(random_state=3).as_quat()])
    b = np.concatenate([rng.normal(size=3), Rotation.random(random_state=4).as_quat()])
    np.testing.assert_allclose(mat(se3_compose(a, b)), mat(a) @ mat(b), atol=1e-12)
    np.testing.assert_allclose(mat(se3_inverse(a)), np.linalg.inv(mat(a)), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# chained initialization (edges-only files)
# ---------------------------------------------------------------------------------------------


def _random_graph(dim: int, n: int, seed: int) -> PoseGraph:
    """Exact measurements of random poses (pose 0 = identity), odometry + loop closures, some
    loop closures stored (newer, older)."""
    rng = np.random.default_rng(seed)
    if dim == 2:
        poses = np.column_stack([rng.normal(size=(n, 2)) * 3, rng.uniform(-np.pi, np.pi, n)])
        poses[0] = 0.0
        compose, inverse = se2_compose, se2_inverse
    else:
        poses = np.column_stack(
            [rng.normal(size=(n, 3)) * 3, Rotation.random(n, random_state=seed).as_quat()]
        )
        poses[0] = [0, 0, 0, 0, 0, 0, 1]
        compose, inverse = se3_compose, se3_inverse
    pairs = [(k, k + 1) for k in range(n - 1)]
    pairs += [(int(a), int(b)) for a, b in rng.integers(0, n, size=(n, 2)) if abs(a - b) > 1]
    edges = np.asarray(pairs, dtype=np.int64)
    meas = compose(inverse(poses[edges[:, 0]]), poses[edges[:, 1]])
    d = 3 if dim == 2 else 6
    a = rng.normal(size=(len(edges), d, d))
    info = a @ np.swapaxes(a, 1, 2) + d * np.eye(d)
    return PoseGraph(
        dim=dim, ids=np.arange(n), poses=poses, edges=edges, measurements=meas, information=info
    )


@pytest.mark.parametrize("dim", [2, 3])
def test_chained_initialization_recovers_poses(tmp_path, dim):
    g = _random_graph(dim, 30, seed=dim)
    full = tmp_path / "full.g2o"
    write_g2o(full, g)
    edges_only = tmp_path / "edges.g2o"
    edges_only.write_text(
        "".join(ln + "\n" for ln in full.read_text().splitlines() if ln.startswith("EDGE"))
    )
    h = read_g2o(edges_only)
    assert h.chained and h.n_poses == g.n_poses
    if dim == 2:
        np.testing.assert_allclose(h.poses[:, :2], g.poses[:, :2], atol=1e-9)
        np.testing.assert_allclose(np.cos(h.poses[:, 2] - g.poses[:, 2]), 1.0, atol=1e-12)
    else:
        np.testing.assert_allclose(h.poses[:, :3], g.poses[:, :3], atol=1e-9)
        np.testing.assert_allclose(
            np.abs(np.sum(h.poses[:, 3:] * g.poses[:, 3:], axis=1)), 1.0, atol=1e-12
        )
    assert h.cost() < 1e-12


def test_chained_prefers_odometry(shared_data):
    """CSAIL.g2o has no vertices: the chained guess must satisfy every odometry edge exactly."""
    g = read_g2o(shared_data / "pgo2d/CSAIL.g2o")
    odo = g.edges[:, 1] == g.edges[:, 0] + 1
    assert odo.sum() == 1044
    r = g.residuals()
    assert np.max(np.abs(r[odo])) < 1e-6
    assert np.max(np.abs(r[~odo])) > 1e-3  # loop closures are not satisfied by the odometry


def test_chained_disconnected_is_error(tmp_path):
    p = tmp_path / "dis.g2o"
    p.write_text("EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nEDGE_SE2 2 3 1 0 0 1 0 0 1 0 1\n")
    with pytest.raises(FormatError, match=r"dis\.g2o: .*cannot be reached from vertex 0"):
        read_g2o(p)


def test_noncontiguous_ids(tmp_path):
    p = tmp_path / "ids.g2o"
    p.write_text(
        "VERTEX_SE2 10 0 0 0\nVERTEX_SE2 20 1 0 0\nVERTEX_SE2 7 2 0 0\n"
        "EDGE_SE2 10 20 1 0 0 1 0 0 1 0 1\nEDGE_SE2 20 7 1 0 0 1 0 0 1 0 1\n"
    )
    g = read_g2o(p)
    np.testing.assert_array_equal(g.ids, [7, 10, 20])
    np.testing.assert_array_equal(g.edges, [[1, 2], [2, 0]])
    np.testing.assert_array_equal(g.poses[:, 0], [2, 0, 1])
    out = tmp_path / "out.g2o"
    write_g2o(out, g)
    h = read_g2o(out)
    np.testing.assert_array_equal(h.ids, g.ids)
    np.testing.assert_array_equal(h.edges, g.edges)


# ---------------------------------------------------------------------------------------------
# writer round trips
# ---------------------------------------------------------------------------------------------


def _assert_same_graph(a: PoseGraph, b: PoseGraph) -> None:
    assert a.dim == b.dim
    for name in ("ids", "poses", "edges", "measurements", "information", "fixed"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize(
    "rel", ["pgo2d/intel.g2o", "pgo3d/smallGrid3D.g2o", "pgo2d/CSAIL.g2o", "misc/gtsam/w100.graph"]
)
def test_write_read_round_trip(shared_data, tmp_path, rel):
    g = read_pose_graph(shared_data / rel)
    out = tmp_path / "out.g2o"
    write_g2o(out, g)
    h = read_g2o(out)
    _assert_same_graph(g, h)
    assert not h.chained
    write_g2o(tmp_path / "again.g2o", h)
    assert (tmp_path / "again.g2o").read_text() == out.read_text()


def test_angles_in_range_are_read_bit_for_bit(tmp_path):
    """Only angles outside [-π, π) are wrapped: the modular formula moved in-range ones by up
    to an ulp of π (1e-20 became 0, 1e-10 became 1.00000008e-10)."""
    p = tmp_path / "small.g2o"
    p.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 1e-20\nVERTEX_SE2 2 2 0 7.5\n"
                 "EDGE_SE2 0 1 1 0 1e-10 1 0 0 1 0 1\nEDGE_SE2 1 2 1 0 1.576173 1 0 0 1 0 1\n")
    g = read_g2o(p)
    np.testing.assert_array_equal(g.poses[:2, 2], [0.0, 1e-20])
    assert g.poses[2, 2] == pytest.approx(7.5 - 2 * np.pi, abs=1e-15)  # out of range: wrapped
    np.testing.assert_array_equal(g.measurements[:, 2], [1e-10, 1.576173])
    write_g2o(tmp_path / "o.g2o", g)
    _assert_same_graph(g, read_g2o(tmp_path / "o.g2o"))


def test_write_other_poses(shared_data, tmp_path):
    g = read_g2o(shared_data / "pgo3d/tinyGrid3D.g2o")
    new = g.poses.copy()
    new[:, :3] += 1.5
    write_g2o(tmp_path / "o.g2o", g, new)
    np.testing.assert_array_equal(read_g2o(tmp_path / "o.g2o").poses, new)
    with pytest.raises(ValueError, match="shape"):
        write_g2o(tmp_path / "o.g2o", g, new[:3])


def test_fix_lines_round_trip(tmp_path):
    p = tmp_path / "fix.g2o"
    p.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nFIX 1\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n")
    g = read_g2o(p)
    np.testing.assert_array_equal(g.fixed, [1])
    write_g2o(tmp_path / "o.g2o", g)
    np.testing.assert_array_equal(read_g2o(tmp_path / "o.g2o").fixed, [1])


# ---------------------------------------------------------------------------------------------
# information matrices: detection and repair
# ---------------------------------------------------------------------------------------------

_V2 = "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\n"


@pytest.mark.parametrize(
    "info, what",
    [
        ("1 0 0 -2 0 1", "not positive definite"),  # negative eigenvalue
        ("1 0 0 0 0 1", "singular"),  # zero eigenvalue
        ("1 1 0 1 0 1", "singular"),  # rank deficient off-diagonal
        ("1 2 0 1 0 1", "not positive definite"),  # indefinite through off-diagonal
        # rank 1 (v vᵀ, v = (1, 0.1, 0.3)): its smallest eigenvalue comes out as -3e-17
        ("1 0.1 0.3 0.01 0.03 0.09", "singular"),
        ("0 0 0 0 0 0", "singular"),  # all zero
        ("0 1 0 1 0 1", "not positive definite"),  # zero diagonal, nonzero off-diagonal
    ],
)
def test_bad_information_is_error(tmp_path, info, what):
    p = tmp_path / "info.g2o"
    p.write_text(_V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nEDGE_SE2 0 1 1 0 0 " + info + "\n")
    with pytest.raises(
        FormatError, match=r"info\.g2o:4: EDGE_SE2: information matrix .* " + what
    ) as e:
        read_g2o(p)
    assert e.value.line == 4 and e.value.tag == "EDGE_SE2"
    assert "fix_information=True" in str(e.value)
    g = read_g2o(p, fix_information=True)
    np.testing.assert_array_equal(g.repaired, [1])
    assert _is_symmetric_pd(g.information)
    np.testing.assert_array_equal(g.information[0], np.eye(3))  # good matrices untouched
    np.testing.assert_array_equal(g.sqrt_information()[0], np.eye(3))


def _info_text(m: np.ndarray) -> str:
    return " ".join(map(repr, m[np.triu_indices(3)].tolist()))


def test_ill_conditioned_information_is_accepted_unchanged(tmp_path):
    """Positive definite but badly scaled (a translation-only constraint): condition number 1e12
    used to be rejected as singular, and fix_information used to raise the 1e-6."""
    p = tmp_path / "info.g2o"
    p.write_text(_V2 + "EDGE_SE2 0 1 1 0 0 1e6 0 0 1e6 0 1e-6\n")
    for fix in (False, True):
        g = read_g2o(p, fix_information=fix)
        assert g.repaired.size == 0
        np.testing.assert_array_equal(g.information[0], np.diag([1e6, 1e6, 1e-6]))
        r = g.sqrt_information()[0]
        np.testing.assert_allclose(r.T @ r, g.information[0], rtol=1e-12)


@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_information_test_is_scale_invariant(tmp_path, scale):
    """Changing the units of the residual scales the information matrix: whether it is
    positive definite must not change with them."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    cases = [
        ((q * [1e-3, 1.0, 1e3]) @ q.T, None),
        (np.diag([1e6, 1e6, 1e-6]), None),
        ((q * [0.0, 1.0, 2.0]) @ q.T, "singular"),
        ((q * [-1e-3, 1.0, 2.0]) @ q.T, "not positive definite"),
    ]
    p = tmp_path / "info.g2o"
    for m, what in cases:
        p.write_text(_V2 + "EDGE_SE2 0 1 1 0 0 " + _info_text(scale * m) + "\n")
        if what is None:
            assert read_g2o(p).repaired.size == 0
        else:
            with pytest.raises(FormatError, match=r"info\.g2o:3: EDGE_SE2: .* is " + what):
                read_g2o(p)


def test_project_to_psd_is_eigenvalue_clipping():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    w = np.array([-3.0, 0.0, 2.0, 10.0])
    m = (q * w) @ q.T
    p = project_to_psd(m)
    wp, vp = np.linalg.eigh(p)
    np.testing.assert_allclose(
        wp, [INFORMATION_FLOOR * 10, INFORMATION_FLOOR * 10, 2.0, 10.0], rtol=1e-6, atol=1e-12
    )
    # same eigenvectors for the kept eigenvalues
    np.testing.assert_allclose(np.abs(vp[:, 2:].T @ q[:, 2:]), np.eye(2), atol=1e-10)
    # Frobenius distance equals the clipped amounts (nearest-PSD property)
    np.testing.assert_allclose(np.linalg.norm(p - m), np.hypot(3.0 + 1e-8, 1e-8), rtol=1e-6)
    spd = np.eye(3) * 2.0 + 0.1
    np.testing.assert_allclose(project_to_psd(spd), spd, rtol=1e-14)
    z = project_to_psd(np.zeros((2, 2)))
    np.testing.assert_allclose(z, INFORMATION_FLOOR * np.eye(2))


def test_fix_information_3d(tmp_path):
    info = np.eye(6)
    info[5, 5] = -1.0
    iu = np.triu_indices(6)
    p = tmp_path / "i3.g2o"
    p.write_text(
        "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
        "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 " + " ".join(map(str, info[iu])) + "\n"
    )
    with pytest.raises(FormatError, match=r"i3\.g2o:3: EDGE_SE3:QUAT: .*not positive definite"):
        read_g2o(p)
    g = read_g2o(p, fix_information=True)
    np.testing.assert_allclose(np.diag(g.information[0]), [1, 1, 1, 1, 1, INFORMATION_FLOOR])


# ---------------------------------------------------------------------------------------------
# malformed files: FormatError naming file, line and tag
# ---------------------------------------------------------------------------------------------

_E = "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"


@pytest.mark.parametrize(
    "text, line, tag, pattern",
    [
        (_V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0\n", 3, "EDGE_SE2", "expected 12 fields, got 11"),
        ("VERTEX_SE2 0 0 0\n", 1, "VERTEX_SE2", "expected 5 fields, got 4"),
        (
            _V2 + "EDGE_SE2 0 1 1 abc 0 1 0 0 1 0 1\n",
            3,
            "EDGE_SE2",
            r"field 4 \('abc'\) is not a number",
        ),
        (
            _V2 + "EDGE_SE2 0 x 1 0 0 1 0 0 1 0 1\n",
            3,
            "EDGE_SE2",
            r"field 2 \('x'\) is not an integer",
        ),
        ("VERTEX_SE2 0.5 0 0 0\n" + _E, 1, "VERTEX_SE2", "not an integer id"),
        (_V2 + "EDGE_SE2 0 1 nan 0 0 1 0 0 1 0 1\n", 3, "EDGE_SE2", "field 3 is not finite"),
        (_V2 + "EDGE_SE2 0 1 1 0 0 inf 0 0 1 0 1\n", 3, "EDGE_SE2", "field 6 is not finite"),
        ("VERTEX_SE2 0 0 0 -inf\n" + _E, 1, "VERTEX_SE2", "not finite"),
        (_V2 + "VERTEX_XY 2 0 0\n" + _E, 3, None, "unknown tag 'VERTEX_XY'"),
        (_V2 + "VERTEX_SE2 1 2 0 0\n" + _E, 3, "VERTEX_SE2", "duplicate vertex id 1 .*line 2"),
        (_V2 + "EDGE_SE2 0 5 1 0 0 1 0 0 1 0 1\n", 3, "EDGE_SE2", "missing vertex 5"),
        (_V2 + "EDGE_SE2 1 1 1 0 0 1 0 0 1 0 1\n", 3, "EDGE_SE2", "to itself"),
        (
            _V2 + "VERTEX_SE3:QUAT 2 0 0 0 0 0 0 1\n" + _E,
            3,
            "VERTEX_SE3:QUAT",
            "3D record in a 2D graph",
        ),
        (_V2 + "VERTEX2 2 0 0 0\n" + _E, 3, None, "a TORO tag"),
        (_V2 + _E + "FIX 9\n", 4, "FIX", "missing vertex 9"),
        # ids beyond int64 used to escape as a bare OverflowError
        pytest.param(
            "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 99999999999999999999 1 0 0\n" + _E,
            2,
            "VERTEX_SE2",
            "field 1: id 99999999999999999999 does not fit in a 64-bit integer",
            id="vertex-id-overflows-int64",
        ),
        pytest.param(
            "EDGE_SE2 0 -9223372036854775809 1 0 0 1 0 0 1 0 1\n",
            1,
            "EDGE_SE2",
            "field 2: id -9223372036854775809 does not fit",
            id="edge-id-overflows-int64",
        ),
        # Python's int()/float() accept digit separators and non-ASCII digits; files do not
        pytest.param(
            _V2 + "EDGE_SE2 0 1 1_0 0 0 1 0 0 1 0 1\n",
            3,
            "EDGE_SE2",
            r"field 3 \('1_0'\) is not a number",
            id="digit-separator",
        ),
        pytest.param(
            "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 \uff11 1 0 0\n" + _E,
            2,
            "VERTEX_SE2",
            r"field 1 \('\uff11'\) is not an integer id",
            id="fullwidth-digit-id",
        ),
        pytest.param(
            _V2 + "EDGE_SE2 0 1 \u0661 0 0 1 0 0 1 0 1\n",
            3,
            "EDGE_SE2",
            r"field 3 \('\u0661'\) is not a number",
            id="arabic-indic-digit",
        ),
    ],
)
def test_malformed_g2o(tmp_path, text, line, tag, pattern):
    p = tmp_path / "bad.g2o"
    p.write_text(text)
    with pytest.raises(FormatError, match=pattern) as e:
        read_g2o(p)
    err = e.value
    assert isinstance(err, ValueError)
    assert err.path == str(p) and err.line == line and err.tag == tag
    assert str(err).startswith(f"{p}:{line}: ")
    if tag is not None:
        assert f": {tag}: " in str(err)


def test_malformed_3d_quaternion(tmp_path):
    p = tmp_path / "q.g2o"
    p.write_text(
        "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 2\n"
        "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 "
        + " ".join(["1", "0", "0", "0", "0", "0"] * 3 + ["1", "0", "1"])
        + "\n"
    )
    with pytest.raises(FormatError, match=r"q\.g2o:2: VERTEX_SE3:QUAT: quaternion .* norm 2"):
        read_g2o(p)


def test_malformed_toro(tmp_path):
    p = tmp_path / "bad.graph"
    p.write_text("VERTEX2 0 0 0 0\nVERTEX2 1 1 0 0\nEQUIV 0 7\nEDGE2 0 1 1 0 0 1 0 1 1 0 0\n")
    with pytest.raises(FormatError, match=r"bad\.graph:3: EQUIV: names missing vertex 7"):
        read_toro(p)
    p.write_text("VERTEX2 0 0 0 0\nVERTEX_SE2 1 1 0 0\n")
    with pytest.raises(FormatError, match=r"bad\.graph:2: unknown tag 'VERTEX_SE2' .*a g2o tag"):
        read_toro(p)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.g2o"
    p.write_text("# only a comment\n\n")
    with pytest.raises(FormatError, match=r"empty\.g2o: no pose-graph records"):
        read_g2o(p)
    p.write_text(_V2)
    with pytest.raises(FormatError, match=r"empty\.g2o: no edges"):
        read_g2o(p)
    with pytest.raises(FormatError, match="cannot open"):
        read_g2o(tmp_path / "nope.g2o")


def test_comments_and_blank_lines_skipped(tmp_path):
    p = tmp_path / "c.g2o"
    p.write_text("# header\n\n" + _V2 + "\n   \n" + _E)
    g = read_g2o(p)
    assert g.n_edges == 1 and g.edge_lines[0] == 7


# ---------------------------------------------------------------------------------------------
# BAL
# ---------------------------------------------------------------------------------------------


def test_bal_dubrovnik(shared_data):
    b = read_bal(shared_data / "bal/dubrovnik-3-7-pre.txt")  # has blank separator lines
    assert (b.n_cameras, b.n_points, b.n_observations) == (3, 7, 19)
    assert b.cameras.shape == (3, 9) and b.points.shape == (7, 3)
    assert sorted(set(b.camera_index.tolist())) == [0, 1, 2]
    assert sorted(set(b.point_index.tolist())) == list(range(7))
    np.testing.assert_allclose(
        b.cameras[0, :3], [-1.6943983532198115e-02, 1.1171804676513932e-02, 2.4643508831711991e-03]
    )
    np.testing.assert_allclose(b.observations[0], [-3.859900e02, 3.871200e02])


def _bal_residuals_scipy(b) -> np.ndarray:
    c = b.cameras[b.camera_index]
    x = Rotation.from_rotvec(c[:, :3]).apply(b.points[b.point_index]) + c[:, 3:6]
    p = -x[:, :2] / x[:, 2:]
    r2 = np.sum(p**2, axis=1, keepdims=True)
    return c[:, 6:7] * (1 + c[:, 7:8] * r2 + c[:, 8:9] * r2**2) * p - b.observations


def test_bal_problem49(shared_data):
    b = read_bal(shared_data / "bal/problem-49-7776-pre.txt")
    assert (b.n_cameras, b.n_points, b.n_observations) == (49, 7776, 31843)
    np.testing.assert_allclose(b.residuals(), _bal_residuals_scipy(b), rtol=1e-9, atol=1e-8)
    assert b.cost() == pytest.approx(850912.46, rel=1e-8)  # peers/REFERENCE_COSTS.md
    assert int(b.behind_camera().sum()) == 31  # per REFERENCE_COSTS.md


@pytest.mark.parametrize(
    "text, line, pattern",
    [
        ("2 1\n", 1, "header: expected 3 fields"),
        ("1 1 x\n", 1, r"header field 3 \('x'\) is not an integer"),
        ("1 1 1\n0 0 1\n" + "0\n" * 12, 2, "expected 4 fields"),
        ("1 1 1\n1 0 1 2\n" + "0\n" * 12, 2, r"camera index 1 out of range \[0, 1\)"),
        ("1 1 1\n0 3 1 2\n" + "0\n" * 12, 2, r"point index 3 out of range"),
        ("1 1 1\n0 0 1 nan\n" + "0\n" * 12, 2, "v is not finite"),
        ("1 1 1\n0 0 1 2\n" + "0\n" * 11, 13, "expected 12 parameters .* found 11"),
        ("1 1 1\n0 0 1 2\n" + "0\n" * 13, 15, "unexpected data after the 12"),
        (
            "1 1 1\n0 0 1 2\n" + "0\n" * 9 + "1e400\n0\n0\n",
            12,
            "point 0 coordinate 0 is not finite",
        ),
        ("1 1 1\n0 0 1 2\n" + "0\n" * 4 + "q\n" + "0\n" * 7, 7, r"camera 0 parameter 4 \('q'\)"),
        ("1 1 2\n0 0 1 2\n", 2, "expected 2 observation lines, found 1"),
        # a huge header count used to raise MemoryError / "Maximum allowed dimension exceeded"
        pytest.param(
            "1000000000000 1 1\n0 0 1 2\n" + "0\n" * 12,
            14,
            r"expected 9000000000003 parameters .* found 12 before end of file",
            id="huge-camera-count",
        ),
        pytest.param(
            "1 100000000000000000000 1\n0 0 1 2\n" + "0\n" * 12,
            14,
            r"expected 300000000000000000009 parameters .* found 12",
            id="huge-point-count",
        ),
        # header and body disagree: the message points back at the header
        pytest.param(
            "1 1 1\n0 0 1 2\n0 0 3 4\n" + "0\n" * 12,
            12,
            r"unexpected data after the 12 camera and point parameters \(the header on line 1 "
            r"declares 1 cameras, 1 points, 1 observations\)",
            id="header-too-few-observations",
        ),
        pytest.param(
            "1 1 2\n0 0 1 2\n" + "0\n" * 12,
            3,
            r"observation 1: expected 4 fields \(camera point u v\), got 1 \(the header on line "
            r"1 declares 1 cameras, 1 points, 2 observations\)",
            id="header-too-many-observations",
        ),
        pytest.param(
            "1 1 1\n0 0 1_0 2\n" + "0\n" * 12, 2, r"u \('1_0'\) is not a number", id="separator"
        ),
        pytest.param(
            "1 1 1\n0 \u0660 1 2\n" + "0\n" * 12,
            2,
            r"point index \('\u0660'\) is not an integer",
            id="non-ascii-digit",
        ),
        # all-zero parameters: the point is at depth 0, the residual used to be a silent NaN
        pytest.param(
            "1 1 1\n0 0 1 2\n" + "0\n" * 12,
            2,
            r"observation 0: point 0 is at depth 0 in camera 0 \(P_z = 0\)",
            id="depth-zero",
        ),
    ],
)
def test_bal_malformed(tmp_path, text, line, pattern):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(FormatError, match=pattern) as e:
        read_bal(p)
    assert e.value.line == line and str(e.value).startswith(f"{p}:{line}: ")


def test_bal_blank_lines_and_layout(tmp_path):
    p = tmp_path / "ok.txt"
    p.write_text(
        "\n1 1 1\n\n0 0 1.5 -2\n\n" + " ".join(str(k) for k in range(9)) + "\n\n9\n10 11\n"
    )
    b = read_bal(p)
    np.testing.assert_array_equal(b.cameras[0], np.arange(9.0))
    np.testing.assert_array_equal(b.points[0], [9, 10, 11])
    np.testing.assert_array_equal(b.observations[0], [1.5, -2])


# ---------------------------------------------------------------------------------------------
# encodings and extreme values
# ---------------------------------------------------------------------------------------------

_BAL_OK = "1 1 1\n0 0 1.5 -2\n" + "0 0 0 0 0 1 500 0 0\n" + "0 0 -3\n"


@pytest.mark.parametrize(
    "reader, lines",
    [
        (read_g2o, [_V2.splitlines()[0], _V2.splitlines()[1], _E.strip()]),
        (read_bal, _BAL_OK.splitlines()),
    ],
    ids=["g2o", "bal"],
)
def test_non_utf8_bytes_named_by_line(tmp_path, reader, lines):
    """A stray Latin-1 byte used to fail the whole file without a line (g2o) or escape as a bare
    UnicodeDecodeError (BAL)."""
    p = tmp_path / "latin1.txt"
    data = [ln.encode() for ln in lines]
    data[2] = data[2] + b" \xe9"
    p.write_bytes(b"\n".join(data) + b"\n")
    with pytest.raises(FormatError, match=r"not UTF-8 text \(byte 0xe9 at column") as e:
        reader(p)
    assert e.value.line == 3 and str(e.value).startswith(f"{p}:3: ")


def test_non_utf8_comment_is_skipped(tmp_path):
    p = tmp_path / "c.g2o"
    p.write_bytes(b"# caf\xe9\n" + (_V2 + _E).encode())
    assert read_g2o(p).n_edges == 1


@pytest.mark.parametrize(
    "reader, text", [(read_g2o, _V2 + _E), (read_bal, _BAL_OK)], ids=["g2o", "bal"]
)
def test_utf8_bom_accepted(tmp_path, reader, text):
    """Windows editors start UTF-8 files with a byte-order mark; it used to be read as part of
    the first tag or header field."""
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    q = tmp_path / "plain.txt"
    q.write_text(text)
    a, b = reader(p), reader(q)
    for name in ("poses", "measurements", "cameras", "points", "observations"):
        if hasattr(a, name):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


_TORO_OK = "VERTEX2 0 0 0 0\nVERTEX2 1 1 0 0\nEDGE2 0 1 1 0 0 1 0 1 1 0 0\n"


@pytest.mark.parametrize("char", ["\u00a0", "\x1c", "\x1f", "\x85", "\u2028", "\u3000"])
@pytest.mark.parametrize(
    "reader, text",
    [(read_g2o, _V2 + _E), (read_toro, _TORO_OK), (read_bal, _BAL_OK)],
    ids=["g2o", "toro", "bal"],
)
def test_only_ascii_whitespace_separates_fields(tmp_path, reader, text, char):
    """str.split() also splits at Unicode and control 'whitespace' that C readers (and ours, for
    digits) do not accept: such a separator is an error naming the character, not a silent
    separator."""
    lines = text.splitlines()
    lines[1] = lines[1].replace(" ", char, 1)
    p = tmp_path / "sep.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match=f"U\\+{ord(char):04X}") as e:
        reader(p)
    assert e.value.line == 2 and str(e.value).startswith(f"{p}:2: ")


@pytest.mark.parametrize(
    "reader, text",
    [(read_g2o, _V2 + _E), (read_toro, _TORO_OK), (read_bal, _BAL_OK)],
    ids=["g2o", "toro", "bal"],
)
def test_ascii_whitespace_separates_fields(tmp_path, reader, text):
    """Runs of spaces, tabs, vertical tabs and form feeds (C's isspace) separate fields, and
    Windows line ends are accepted."""
    p, q = tmp_path / "ws.txt", tmp_path / "plain.txt"
    spaced = text.replace(" ", " \t\v\f ").replace("\n", " \r\n")
    p.write_bytes(spaced.encode())
    q.write_text(text)
    a, b = reader(p), reader(q)
    for name in ("poses", "measurements", "information", "cameras", "points", "observations"):
        if hasattr(a, name):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_unicode_whitespace_in_a_comment_is_skipped(tmp_path):
    p = tmp_path / "c.g2o"
    p.write_text("#\u00a0note\u2028\n" + _V2 + _E, encoding="utf-8")
    assert read_g2o(p).n_edges == 1


def test_information_with_huge_entries(tmp_path):
    """Entries near the float64 limit: a positive-definite matrix whose largest eigenvalue
    overflows used to be rejected as singular, and fix_information used to return NaN."""
    p = tmp_path / "big.g2o"
    p.write_text(_V2 + "EDGE_SE2 0 1 1 0 0 1e308 9e307 0 1e308 0 1e308\n")
    g = read_g2o(p)
    assert _is_symmetric_pd(g.information) and g.repaired.size == 0
    p.write_text(_V2 + "EDGE_SE2 0 1 1 0 0 1e308 0 0 -1e308 0 1e308\n")
    with pytest.raises(FormatError, match=r"big\.g2o:3: EDGE_SE2: .*not positive definite"):
        read_g2o(p)
    g = read_g2o(p, fix_information=True)
    np.testing.assert_array_equal(g.repaired, [0])
    assert np.all(np.isfinite(g.information)) and _is_symmetric_pd(g.information)
    np.testing.assert_allclose(np.diag(g.information[0]), [1e308, 1e308 * INFORMATION_FLOOR, 1e308])
    assert np.all(np.isfinite(g.sqrt_information()))


def test_formaterror_without_line(tmp_path):
    err = FormatError(pathlib.Path("a/b.g2o"), None, "oops")
    assert str(err) == "a/b.g2o: oops" and err.line is None
