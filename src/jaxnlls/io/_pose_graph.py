"""Pose-graph files: g2o (``VERTEX_SE2``/``EDGE_SE2``, ``VERTEX_SE3:QUAT``/``EDGE_SE3:QUAT``)
and TORO 2D (``VERTEX2``/``EDGE2``/``EQUIV``). Pure numpy, host side.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np

from ._errors import FormatError, parse_float, parse_int, read_fields
from ._se_numpy import (
    se2_compose,
    se2_inverse,
    se2_log,
    se3_compose,
    se3_inverse,
    se3_log,
    wrap_angle,
)

__all__ = [
    "PoseGraph",
    "read_g2o",
    "read_toro",
    "read_pose_graph",
    "write_g2o",
    "project_to_psd",
    "xyzw_to_wxyz",
    "wxyz_to_xyzw",
    "INFORMATION_RTOL",
    "INFORMATION_FLOOR",
]

#: A ``d x d`` information matrix ``A`` is rejected (not positive definite, or singular to working
#: precision) when the smallest eigenvalue of its unit-diagonal scaling ``D^-1/2 A D^-1/2``
#: (``D = diag(A)``) is ``<= d * INFORMATION_RTOL``; a non-positive diagonal entry makes it so.
#: The scaling keeps definiteness and removes units: ``diag(1e6, 1e6, 1e-6)`` (a translation-only
#: constraint) is accepted, and so is any valid matrix times ``1e-20`` or ``1e20``.
INFORMATION_RTOL = 64 * float(np.finfo(np.float64).eps)
#: ``fix_information=True`` clips eigenvalues from below at ``INFORMATION_FLOOR`` times the largest
#: absolute eigenvalue of the matrix (or at ``INFORMATION_FLOOR`` itself for an all-zero matrix).
INFORMATION_FLOOR = 1e-9

# ids are stored as int64
_ID_MIN, _ID_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)

_G2O_TAGS = ("VERTEX_SE2", "EDGE_SE2", "VERTEX_SE3:QUAT", "EDGE_SE3:QUAT", "FIX")
_TORO_TAGS = ("VERTEX2", "EDGE2", "EQUIV")


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Reorders ``(..., 4)`` quaternions from ``(x, y, z, w)`` (files) to ``(w, x, y, z)``
    (:class:`jaxnlls.lie.SO3`)."""
    q = np.asarray(q)
    return np.concatenate([q[..., 3:4], q[..., 0:3]], axis=-1)


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Reorders ``(..., 4)`` quaternions from ``(w, x, y, z)`` to ``(x, y, z, w)``."""
    q = np.asarray(q)
    return np.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def project_to_psd(matrix: np.ndarray, floor: float = INFORMATION_FLOOR) -> np.ndarray:
    """Nearest symmetric positive-definite matrix by eigenvalue clipping.

    The matrix is symmetrized, then eigenvalues below ``floor * max|eigenvalue|`` are raised to
    that value (``floor`` itself when every eigenvalue is zero). For a symmetric input this is the
    Frobenius-nearest matrix whose spectrum is bounded below by the floor.

    Args:
        matrix: ``(..., d, d)`` array.
        floor: relative eigenvalue floor.

    Returns:
        ``(..., d, d)`` symmetric positive-definite array.
    """
    m = np.asarray(matrix, dtype=np.float64)
    # Work on m / max|m_ab|: entries near the float64 limit would otherwise overflow to inf in
    # the sums below (and eigh would return NaN). The floor is relative, so this is exact.
    s = _entry_scale(m)[..., None, None]
    m = m / s
    m = 0.5 * (m + np.swapaxes(m, -1, -2))
    w, v = np.linalg.eigh(m)
    scale = np.max(np.abs(w), axis=-1, keepdims=True)
    scale = np.where(scale > 0.0, scale, 1.0)
    w = np.maximum(w, floor * scale)
    out = (v * w[..., None, :]) @ np.swapaxes(v, -1, -2)
    return s * (0.5 * (out + np.swapaxes(out, -1, -2)))


def _scaled_eigenvalues(m: np.ndarray) -> np.ndarray:
    """``(..., d)`` ascending eigenvalues of each ``(..., d, d)`` matrix scaled to unit diagonal.

    The scaling is a congruence, so it keeps the signs of the eigenvalues (Sylvester's law): the
    result tells definiteness whatever the units. A zero diagonal entry is scaled by the largest
    one instead (its eigenvalue test fails either way).
    """
    diag = np.abs(np.diagonal(m, axis1=-2, axis2=-1))
    top = np.max(diag, axis=-1, keepdims=True)
    diag = np.where(diag > 0.0, diag, np.where(top > 0.0, top, 1.0))
    s = 1.0 / np.sqrt(diag)
    with np.errstate(over="ignore"):
        c = m * s[..., :, None] * s[..., None, :]
    # An off-diagonal |c_ab| >= 1 makes a 2x2 minor non-positive; clipping at 2 keeps it so and
    # keeps an overflowed entry (inf) out of eigvalsh.
    return np.linalg.eigvalsh(np.clip(c, -2.0, 2.0))


def _entry_scale(m: np.ndarray) -> np.ndarray:
    """``(...)`` largest absolute entry of each ``(..., d, d)`` matrix (1 for a zero matrix)."""
    s = np.max(np.abs(m), axis=(-2, -1))
    return np.where(s > 0.0, s, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class PoseGraph:
    """A 2D or 3D pose graph read from a file (host-side numpy arrays).

    Poses are stored in the file layout: SE(2) ``(x, y, theta)``; SE(3)
    ``(tx, ty, tz, qx, qy, qz, qw)`` (quaternion ``xyzw`` as in g2o, normalized on reading; see
    :meth:`pose_quaternions_wxyz` for the ``wxyz`` order of :class:`jaxnlls.lie.SO3`).

    Edge ``k`` joins ``poses[edges[k, 0]]`` (``i``) and ``poses[edges[k, 1]]`` (``j``); its
    measurement is pose ``j`` expressed in the frame of pose ``i`` whichever of the two is newer
    (files that store loop closures as (newer, older) need no special handling). Its information
    matrix is in the tangent order of :mod:`jaxnlls.lie` / g2o: ``(x, y, theta)`` in 2D and
    ``(x, y, z, rx, ry, rz)`` in 3D. The between residual is
    ``R_k Log(z_k^{-1} T_i^{-1} T_j)`` with ``R_k^T R_k = information[k]`` (the GTSAM
    ``BetweenFactor`` convention, and GTSAM's ``readG2o`` reads the same matrices into it).
    g2o itself uses the quaternion vector part, about ``θ/2``, as the rotation error, so its
    rotation residuals are about half of these and its reported χ² differs.

    Attributes:
        dim: 2 or 3.
        ids: ``(N,)`` vertex ids as written in the file, ascending; pose ``n`` is vertex
            ``ids[n]``. Edges use indices ``0..N-1``.
        poses: ``(N, 3)`` or ``(N, 7)`` initial estimates.
        edges: ``(E, 2)`` int64 pose indices ``(i, j)``.
        measurements: ``(E, 3)`` or ``(E, 7)`` relative poses ``T_i^{-1} T_j``.
        information: ``(E, 3, 3)`` or ``(E, 6, 6)`` symmetric positive-definite matrices.
        source: the file read.
        edge_lines: ``(E,)`` 1-based line of each edge in ``source``.
        chained: ``True`` when the file had no vertices and ``poses`` were built by composing
            measurements along a spanning tree from the first pose.
        equivalences: ``(K, 2)`` pose-index pairs of TORO ``EQUIV`` lines. They are only
            validated and stored: readers, the CLI and the reference scripts ignore them (as
            GTSAM does), so the poses of an ``EQUIV`` pair remain separate variables.
        fixed: ``(F,)`` pose indices listed by g2o ``FIX`` lines (stored, not enforced).
        repaired: ``(R,)`` edge indices whose information matrix was projected to the PSD
            cone by ``fix_information=True`` (empty otherwise).
    """

    dim: Literal[2, 3]
    ids: np.ndarray
    poses: np.ndarray
    edges: np.ndarray
    measurements: np.ndarray
    information: np.ndarray
    source: str = "<memory>"
    edge_lines: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), dtype=np.int64)
    )
    chained: bool = False
    equivalences: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 2), dtype=np.int64)
    )
    fixed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    repaired: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    @property
    def n_poses(self) -> int:
        return int(self.poses.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def tangent_dim(self) -> int:
        """3 for SE(2), 6 for SE(3)."""
        return 3 if self.dim == 2 else 6

    def sqrt_information(self) -> np.ndarray:
        """``(E, d, d)`` upper-triangular ``R`` with ``R^T R = information`` (whitening)."""
        return np.swapaxes(np.linalg.cholesky(self.information), -1, -2)

    def pose_quaternions_wxyz(self) -> np.ndarray:
        """``(N, 4)`` pose rotations as ``wxyz`` quaternions (3D graphs only)."""
        self._require_3d()
        return xyzw_to_wxyz(self.poses[:, 3:7])

    def measurement_quaternions_wxyz(self) -> np.ndarray:
        """``(E, 4)`` measured rotations as ``wxyz`` quaternions (3D graphs only)."""
        self._require_3d()
        return xyzw_to_wxyz(self.measurements[:, 3:7])

    def with_poses(self, poses: np.ndarray) -> PoseGraph:
        """A copy with other pose estimates (same layout and shape)."""
        poses = np.asarray(poses, dtype=np.float64)
        if poses.shape != self.poses.shape:
            raise ValueError(f"poses must have shape {self.poses.shape}, got {poses.shape}")
        return dataclasses.replace(self, poses=poses)

    def residuals(self, poses: np.ndarray | None = None) -> np.ndarray:
        """``(E, d)`` whitened between residuals ``R_k Log(z_k^{-1} T_i^{-1} T_j)`` (numpy)."""
        x = self.poses if poses is None else np.asarray(poses, dtype=np.float64)
        xi, xj = x[self.edges[:, 0]], x[self.edges[:, 1]]
        if self.dim == 2:
            err = se2_log(
                se2_compose(se2_inverse(self.measurements), se2_compose(se2_inverse(xi), xj))
            )
        else:
            err = se3_log(
                se3_compose(se3_inverse(self.measurements), se3_compose(se3_inverse(xi), xj))
            )
        return np.einsum("eab,eb->ea", self.sqrt_information(), err)

    def cost(self, poses: np.ndarray | None = None) -> float:
        """``0.5 * sum ||residuals||^2`` (the GTSAM ``graph.error`` convention, no prior)."""
        r = self.residuals(poses)
        return 0.5 * float(np.sum(r * r))

    def _require_3d(self) -> None:
        if self.dim != 3:
            raise ValueError("quaternions exist only for 3D (SE(3)) pose graphs")


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    kind: Literal["vertex", "edge", "equiv", "fix"]
    dim: int  # 0 for dimensionless records
    n_fields: int  # including the tag; -1 for "at least 2"
    info_order: Callable[[list[float]], np.ndarray] | None = None


def _upper_triangle(vals: list[float], d: int) -> np.ndarray:
    m = np.zeros((d, d))
    m[np.triu_indices(d)] = vals
    return m + np.triu(m, 1).T


def _toro_info(vals: list[float]) -> np.ndarray:
    xx, xy, yy, tt, xt, yt = vals
    return np.array([[xx, xy, xt], [xy, yy, yt], [xt, yt, tt]])


_SPECS: dict[str, _Spec] = {
    "VERTEX_SE2": _Spec("vertex", 2, 5),
    "EDGE_SE2": _Spec("edge", 2, 12, lambda v: _upper_triangle(v, 3)),
    "VERTEX_SE3:QUAT": _Spec("vertex", 3, 9),
    "EDGE_SE3:QUAT": _Spec("edge", 3, 31, lambda v: _upper_triangle(v, 6)),
    "FIX": _Spec("fix", 0, -1),
    "VERTEX2": _Spec("vertex", 2, 5),
    "EDGE2": _Spec("edge", 2, 12, _toro_info),
    "EQUIV": _Spec("equiv", 0, 3),
}


class _Line:
    """One tokenized record with location-aware number parsing."""

    __slots__ = ("path", "lineno", "tag", "tok")

    def __init__(self, path: str, lineno: int, tok: list[str]):
        self.path, self.lineno, self.tag, self.tok = path, lineno, tok[0], tok

    def error(self, reason: str) -> FormatError:
        return FormatError(self.path, self.lineno, reason, tag=self.tag)

    def int_at(self, k: int) -> int:
        s = self.tok[k]
        v = parse_int(s)
        if v is None:
            raise self.error(f"field {k} ({s!r}) is not an integer id")
        if not _ID_MIN <= v <= _ID_MAX:
            raise self.error(f"field {k}: id {s} does not fit in a 64-bit integer")
        return v

    def floats(self, start: int, stop: int) -> list[float]:
        out = []
        for k in range(start, stop):
            s = self.tok[k]
            v = parse_float(s)
            if v is None:
                raise self.error(f"field {k} ({s!r}) is not a number")
            if not math.isfinite(v):
                raise self.error(f"field {k} is not finite ({s!r})")
            out.append(v)
        return out


def _lines(path: str) -> Iterable[_Line]:
    for lineno, tok in read_fields(path, comment="#"):
        yield _Line(path, lineno, tok)


def _check_unit_quaternion(rec: _Line, q: list[float]) -> np.ndarray:
    arr = np.asarray(q)
    n = float(np.linalg.norm(arr))
    if abs(n - 1.0) > 1e-2:
        raise rec.error(f"quaternion (qx qy qz qw) has norm {n:.6g}, expected 1")
    # leave unit quaternions bit-exact (so write -> read round trips are exact)
    return arr if abs(n - 1.0) <= 8 * np.finfo(np.float64).eps else arr / n


def _read(
    path: str | os.PathLike[str],
    allowed: tuple[str, ...],
    fix_information: bool,
    family: str,
) -> PoseGraph:
    path = os.fspath(path)
    dim: int | None = None
    dim_line: _Line | None = None
    vertices: dict[int, tuple[np.ndarray, int]] = {}
    e_ids: list[tuple[int, int]] = []
    e_meas: list[np.ndarray] = []
    e_info: list[np.ndarray] = []
    e_lines: list[int] = []
    e_tags: list[str] = []
    equiv: list[tuple[int, int, int]] = []
    fixed: list[tuple[int, int]] = []

    for rec in _lines(path):
        tag = rec.tag
        spec = _SPECS.get(tag)
        if spec is None or tag not in allowed:
            hint = ""
            if spec is not None:
                other = "TORO" if tag in _TORO_TAGS else "g2o"
                hint = f" (a {other} tag: use read_pose_graph to accept both formats)"
            raise FormatError(
                path,
                rec.lineno,
                f"unknown tag {tag!r} in a {family} file; expected one of "
                f"{', '.join(allowed)}{hint}",
            )
        n = len(rec.tok)
        if spec.n_fields == -1:
            if n < 2:
                raise rec.error(f"expected at least 2 fields, got {n}")
        elif n != spec.n_fields:
            raise rec.error(f"expected {spec.n_fields} fields, got {n}")
        if spec.dim:
            if dim is None:
                dim, dim_line = spec.dim, rec
            elif spec.dim != dim:
                assert dim_line is not None
                raise rec.error(
                    f"{spec.dim}D record in a {dim}D graph (line {dim_line.lineno} is "
                    f"{dim_line.tag})"
                )
        if spec.kind == "vertex":
            vid = rec.int_at(1)
            vals = rec.floats(2, n)
            if vid in vertices:
                raise rec.error(
                    f"duplicate vertex id {vid} (first defined on line {vertices[vid][1]})"
                )
            if dim == 3:
                pose = np.concatenate([vals[:3], _check_unit_quaternion(rec, vals[3:7])])
            else:
                pose = np.asarray(vals)
            vertices[vid] = (pose, rec.lineno)
        elif spec.kind == "edge":
            i, j = rec.int_at(1), rec.int_at(2)
            if i == j:
                raise rec.error(f"edge joins vertex {i} to itself")
            d = 3 if dim == 2 else 6
            nm = 3 if dim == 2 else 7
            meas = rec.floats(3, 3 + nm)
            info_vals = rec.floats(3 + nm, n)
            if dim == 3:
                m = np.concatenate([meas[:3], _check_unit_quaternion(rec, meas[3:7])])
            else:
                m = np.asarray(meas)
            assert spec.info_order is not None
            info = spec.info_order(info_vals)
            assert info.shape == (d, d)
            e_ids.append((i, j))
            e_meas.append(m)
            e_info.append(info)
            e_lines.append(rec.lineno)
            e_tags.append(tag)
        elif spec.kind == "equiv":
            equiv.append((rec.int_at(1), rec.int_at(2), rec.lineno))
        else:  # FIX
            fixed.extend((rec.int_at(k), rec.lineno) for k in range(1, n))

    if dim is None:
        raise FormatError(path, None, f"no pose-graph records ({', '.join(allowed)}) found")
    if not e_ids:
        raise FormatError(path, None, "no edges found")
    d = 3 if dim == 2 else 6

    ij = np.asarray(e_ids, dtype=np.int64)
    measurements = np.stack(e_meas)
    information = np.stack(e_info)
    edge_lines = np.asarray(e_lines, dtype=np.int64)
    if dim == 2:
        measurements[:, 2] = wrap_angle(measurements[:, 2])

    chained = not vertices
    if chained:
        ids = np.unique(ij)
    else:
        ids = np.asarray(sorted(vertices), dtype=np.int64)
        known = set(vertices)
        for (i, j), ln, tag in zip(e_ids, e_lines, e_tags, strict=True):
            for v in (i, j):
                if v not in known:
                    raise FormatError(
                        path, ln, f"edge ({i}, {j}) names missing vertex {v}", tag=tag
                    )
    index = {int(v): k for k, v in enumerate(ids)}
    for a, b, ln in equiv:
        for v in (a, b):
            if v not in index:
                raise FormatError(path, ln, f"names missing vertex {v}", tag="EQUIV")
    for v, ln in fixed:
        if v not in index:
            raise FormatError(path, ln, f"names missing vertex {v}", tag="FIX")
    if ids[0] == 0 and ids[-1] == len(ids) - 1:  # contiguous ids: indices are the ids
        edges = ij
    else:
        edges = np.searchsorted(ids, ij).astype(np.int64)

    # information matrices: positive definite to working precision, or repaired
    eig = _scaled_eigenvalues(information)
    tol = d * INFORMATION_RTOL
    bad = np.nonzero(~(eig[:, 0] > tol))[0]
    repaired = np.zeros((0,), dtype=np.int64)
    if bad.size:
        if not fix_information:
            k = int(bad[0])
            ln = int(edge_lines[k])
            # a negative eigenvalue at round-off level is a singular (PSD) matrix, not indefinite
            what = "singular" if eig[k, 0] >= -tol else "not positive definite"
            more = f" ({bad.size} such edges in the file)" if bad.size > 1 else ""
            # the matrix's own eigenvalues (of A / max|entry|, so that huge entries cannot
            # overflow; one beyond float64 shows as inf)
            entry_scale = _entry_scale(information[k])
            with np.errstate(over="ignore"):
                shown = np.linalg.eigvalsh(information[k] / entry_scale) * entry_scale
            raise FormatError(
                path,
                ln,
                f"information matrix of edge ({e_ids[k][0]}, {e_ids[k][1]}) is {what}: "
                f"eigenvalues {np.array2string(shown, precision=4)}{more}; "
                "pass fix_information=True (jaxnlls pgo --fix-information) to project it to the "
                "nearest positive-definite matrix",
                tag=e_tags[k],
            )
        information = information.copy()
        information[bad] = project_to_psd(information[bad])
        repaired = bad.astype(np.int64)

    if chained:
        poses = _chain(path, dim, edges, measurements, edge_lines, len(ids), ids)
    else:
        poses = np.stack([vertices[int(v)][0] for v in ids])
        if dim == 2:
            poses[:, 2] = wrap_angle(poses[:, 2])

    equivalences = np.asarray([(index[a], index[b]) for a, b, _ in equiv], dtype=np.int64).reshape(
        -1, 2
    )
    fixed_idx = np.asarray(sorted({index[v] for v, _ in fixed}), dtype=np.int64)
    assert information.shape[1:] == (d, d)
    return PoseGraph(
        dim=dim,  # type: ignore[arg-type]
        ids=ids,
        poses=poses,
        edges=edges,
        measurements=measurements,
        information=information,
        source=path,
        edge_lines=edge_lines,
        chained=chained,
        equivalences=equivalences,
        fixed=fixed_idx,
        repaired=repaired,
    )


def _chain(
    path: str,
    dim: int,
    edges: np.ndarray,
    measurements: np.ndarray,
    edge_lines: np.ndarray,
    n: int,
    ids: np.ndarray,
) -> np.ndarray:
    """Initial poses by composing measurements along a spanning tree from pose 0.

    A 0-1 breadth-first search prefers odometry edges (consecutive ids) over loop closures, so
    the tree follows the odometry chain wherever it can.
    """
    adj: list[list[tuple[int, int, bool]]] = [[] for _ in range(n)]
    for k, (i, j) in enumerate(edges):
        adj[int(i)].append((int(j), k, True))
        adj[int(j)].append((int(i), k, False))
    compose = se2_compose if dim == 2 else se3_compose
    inverse = se2_inverse if dim == 2 else se3_inverse
    poses = np.zeros((n, 3 if dim == 2 else 7))
    if dim == 3:
        poses[:, 6] = 1.0
    dist = np.full(n, np.iinfo(np.int64).max)
    parent: list[tuple[int, int, bool] | None] = [None] * n
    dist[0] = 0
    dq: collections.deque[int] = collections.deque([0])
    order: list[int] = []
    done = np.zeros(n, dtype=bool)
    while dq:
        u = dq.popleft()
        if done[u]:
            continue
        done[u] = True
        order.append(u)
        for v, k, forward in adj[u]:
            w = 0 if abs(int(ids[u]) - int(ids[v])) == 1 else 1
            if dist[u] + w < dist[v]:
                dist[v] = dist[u] + w
                parent[v] = (u, k, forward)
                if w == 0:
                    dq.appendleft(v)
                else:
                    dq.append(v)
    if not done.all():
        missing = ids[~done]
        raise FormatError(
            path,
            None,
            f"file has no vertices and its edges do not connect all {n} poses: "
            f"{missing.size} (e.g. vertex {int(missing[0])}) cannot be reached from vertex "
            f"{int(ids[0])}, so no initial guess can be chained",
        )
    for v in order[1:]:
        p = parent[v]
        assert p is not None
        u, k, forward = p
        z = measurements[k] if forward else inverse(measurements[k])
        poses[v] = compose(poses[u], z)
    return poses


def read_g2o(path: str | os.PathLike[str], *, fix_information: bool = False) -> PoseGraph:
    """Reads a g2o pose graph (``VERTEX_SE2``/``EDGE_SE2`` or ``VERTEX_SE3:QUAT``/
    ``EDGE_SE3:QUAT``, optional ``FIX``; ``#`` comments and blank lines are skipped).

    Information matrices are the upper triangle, row-major; in 3D in the order
    ``(x, y, z, rx, ry, rz)``. Files without vertex lines are initialized by chaining the
    measurements along a spanning tree from the first pose (odometry edges preferred).

    Args:
        path: the file.
        fix_information: project information matrices that are not positive definite (by the
            scaled test of ``INFORMATION_RTOL``) to the nearest positive-definite matrix by
            clipping their eigenvalues at ``INFORMATION_FLOOR`` times the largest one; the
            repaired edge indices are in ``PoseGraph.repaired``. Without it such a matrix is an
            error.

    Returns:
        The :class:`PoseGraph`.

    Raises:
        FormatError: malformed line (field count, non-numeric or non-finite value, id outside
            the int64 range, non-unit quaternion, bytes that are not UTF-8, whitespace other
            than ASCII's such as U+00A0 between fields), unknown tag, mixed 2D/3D records,
            duplicate vertex id, edge naming a missing vertex, self-edge, non-positive-definite
            or singular information matrix, or an edges-only file whose edges do not connect all
            poses. The message names the file, the line and the tag (if the line has one).
    """
    return _read(path, _G2O_TAGS, fix_information, "g2o")


def read_toro(path: str | os.PathLike[str], *, fix_information: bool = False) -> PoseGraph:
    """Reads a TORO 2D graph (``VERTEX2``/``EDGE2``/``EQUIV``).

    ``EDGE2 i j dx dy dtheta I_xx I_xy I_yy I_tt I_xt I_yt``: note the information order
    differs from g2o; it is stored reordered to ``(x, y, theta)``. ``EQUIV a b`` lines are
    validated and kept in ``PoseGraph.equivalences`` but otherwise ignored (as GTSAM does).
    See :func:`read_g2o` for ``fix_information`` and errors.
    """
    return _read(path, _TORO_TAGS, fix_information, "TORO")


def read_pose_graph(path: str | os.PathLike[str], *, fix_information: bool = False) -> PoseGraph:
    """Reads a g2o or TORO pose graph, accepting the tags of both formats.

    See :func:`read_g2o` and :func:`read_toro`.
    """
    return _read(path, _G2O_TAGS + _TORO_TAGS, fix_information, "pose-graph")


def _fmt(v: float) -> str:
    return repr(float(v))


def write_g2o(
    path: str | os.PathLike[str], graph: PoseGraph, poses: np.ndarray | None = None
) -> None:
    """Writes a pose graph as g2o (exact round trip of every stored number).

    Args:
        path: output file.
        graph: the graph; vertices are written with their original ids.
        poses: optional replacement poses (e.g. the optimized ones), same layout as
            ``graph.poses``.

    TORO ``EQUIV`` records have no g2o equivalent and are dropped; ``FIX`` lines are kept.
    """
    x = graph.poses if poses is None else np.asarray(poses, dtype=np.float64)
    if x.shape != graph.poses.shape:
        raise ValueError(f"poses must have shape {graph.poses.shape}, got {x.shape}")
    d = graph.tangent_dim
    iu = np.triu_indices(d)
    vtag, etag = (
        ("VERTEX_SE2", "EDGE_SE2") if graph.dim == 2 else ("VERTEX_SE3:QUAT", "EDGE_SE3:QUAT")
    )
    out: list[str] = []
    for vid, p in zip(graph.ids, x, strict=True):
        out.append(" ".join([vtag, str(int(vid)), *map(_fmt, p)]))
    for (i, j), m, info in zip(graph.edges, graph.measurements, graph.information, strict=True):
        fields = [etag, str(int(graph.ids[i])), str(int(graph.ids[j]))]
        fields += map(_fmt, m)
        fields += map(_fmt, info[iu])
        out.append(" ".join(fields))
    if graph.fixed.size:
        out.append(" ".join(["FIX", *(str(int(graph.ids[k])) for k in graph.fixed)]))
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
