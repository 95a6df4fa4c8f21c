"""Bundle Adjustment in the Large (BAL) problem files. Pure numpy, host side."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ._errors import FormatError, parse_float, parse_int, read_fields

__all__ = ["BALProblem", "read_bal", "write_bal", "rodrigues_rotate"]


def rodrigues_rotate(rotvec: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Rotates ``(..., 3)`` points by ``(..., 3)`` rotation vectors (Rodrigues' formula)."""
    theta = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    small = theta < 1e-8
    th = np.where(small, 1.0, theta)
    k = rotvec / th
    cos, sin = np.cos(theta), np.sin(theta)
    full = (
        points * cos
        + np.cross(k, points) * sin
        + k * np.sum(k * points, axis=-1, keepdims=True) * (1.0 - cos)
    )
    first_order = points + np.cross(rotvec, points)
    return np.where(small, first_order, full)


@dataclasses.dataclass(frozen=True, eq=False)
class BALProblem:
    """A BAL bundle-adjustment problem (host-side numpy arrays).

    Camera model (BAL convention): ``P = R(w) X + t``, ``p = -P[:2] / P[2]``,
    ``pixel = f (1 + k1 |p|^2 + k2 |p|^4) p``. Points with ``P[2] > 0`` lie behind the camera
    (which looks down ``-z``); they are not special-cased, their residual counts in the cost like
    any other (the convention of ``REFERENCE_COSTS.md``).

    Attributes:
        cameras: ``(C, 9)``: Rodrigues rotation ``w`` (3), translation ``t`` (3), ``f``,
            ``k1``, ``k2``.
        points: ``(P, 3)`` world points.
        camera_index: ``(O,)`` int64 camera of each observation.
        point_index: ``(O,)`` int64 point of each observation.
        observations: ``(O, 2)`` measured pixel coordinates ``(u, v)``.
        source: the file read.
    """

    cameras: np.ndarray
    points: np.ndarray
    camera_index: np.ndarray
    point_index: np.ndarray
    observations: np.ndarray
    source: str = "<memory>"

    @property
    def n_cameras(self) -> int:
        return int(self.cameras.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def n_observations(self) -> int:
        return int(self.observations.shape[0])

    def residuals(
        self, cameras: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> np.ndarray:
        """``(O, 2)`` reprojection residuals ``predicted - observed`` (numpy reference)."""
        cams = self.cameras if cameras is None else np.asarray(cameras, dtype=np.float64)
        pts = self.points if points is None else np.asarray(points, dtype=np.float64)
        c = cams[self.camera_index]
        x = rodrigues_rotate(c[:, 0:3], pts[self.point_index]) + c[:, 3:6]
        p = -x[:, :2] / x[:, 2:3]
        r2 = np.sum(p * p, axis=-1, keepdims=True)
        distortion = 1.0 + c[:, 7:8] * r2 + c[:, 8:9] * r2 * r2
        return c[:, 6:7] * distortion * p - self.observations

    def cost(self, cameras: np.ndarray | None = None, points: np.ndarray | None = None) -> float:
        """``0.5 * sum ||residuals||^2`` over all observations."""
        r = self.residuals(cameras, points)
        return 0.5 * float(np.sum(r * r))

    def behind_camera(
        self, cameras: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> np.ndarray:
        """``(O,)`` bool: the observed point is behind its camera (``P[2] >= 0``)."""
        cams = self.cameras if cameras is None else np.asarray(cameras, dtype=np.float64)
        pts = self.points if points is None else np.asarray(points, dtype=np.float64)
        c = cams[self.camera_index]
        x = rodrigues_rotate(c[:, 0:3], pts[self.point_index]) + c[:, 3:6]
        return x[:, 2] >= 0.0


def _number(path: str, lineno: int, s: str, what: str) -> float:
    v = parse_float(s)
    if v is None:
        raise FormatError(path, lineno, f"{what} ({s!r}) is not a number")
    if not math.isfinite(v):
        raise FormatError(path, lineno, f"{what} is not finite ({s!r})")
    return v


def _integer(path: str, lineno: int, s: str, what: str) -> int:
    v = parse_int(s)
    if v is None:
        raise FormatError(path, lineno, f"{what} ({s!r}) is not an integer")
    return v


def read_bal(path: str | os.PathLike[str]) -> BALProblem:
    """Reads a BAL problem file.

    Layout: a header ``n_cameras n_points n_observations``; ``n_observations`` lines
    ``camera point u v``; then ``9 n_cameras + 3 n_points`` parameters (one per line in the
    published files; any layout of ASCII whitespace is accepted here). Blank lines are skipped
    anywhere.

    Raises:
        FormatError: wrong field count, non-numeric or non-finite value, index out of range,
            missing or trailing data (header counts that disagree with the body), bytes that are
            not UTF-8, whitespace other than ASCII's (such as U+00A0), or an observed point at
            depth 0 in its camera (its projection would be NaN). The message names the file and
            line.
    """
    path = os.fspath(path)
    lines = list(read_fields(path))
    if not lines:
        raise FormatError(path, None, "empty file")
    k0, head = lines[0]
    if len(head) != 3:
        raise FormatError(
            path,
            k0,
            f"header: expected 3 fields (n_cameras n_points n_observations), got {len(head)}",
        )
    n_cam, n_pt, n_obs = (
        _integer(path, k0, s, f"header field {i + 1}") for i, s in enumerate(head)
    )
    if min(n_cam, n_pt, n_obs) <= 0:
        raise FormatError(path, k0, f"header: counts must be positive, got {n_cam} {n_pt} {n_obs}")
    # named in the errors that a header disagreeing with the body leads to
    header = (
        f"(the header on line {k0} declares {n_cam} cameras, {n_pt} points, "
        f"{n_obs} observations)"
    )
    if len(lines) < 1 + n_obs:
        last = lines[-1][0]
        raise FormatError(
            path,
            last,
            f"expected {n_obs} observation lines, found {len(lines) - 1} before end of file "
            f"{header}",
        )
    cam_idx = np.empty(n_obs, dtype=np.int64)
    pt_idx = np.empty(n_obs, dtype=np.int64)
    obs = np.empty((n_obs, 2))
    for o in range(n_obs):
        k, tok = lines[1 + o]
        if len(tok) != 4:
            raise FormatError(
                path,
                k,
                f"observation {o}: expected 4 fields (camera point u v), got {len(tok)} {header}",
            )
        c = _integer(path, k, tok[0], "camera index")
        p = _integer(path, k, tok[1], "point index")
        if not 0 <= c < n_cam:
            raise FormatError(path, k, f"camera index {c} out of range [0, {n_cam})")
        if not 0 <= p < n_pt:
            raise FormatError(path, k, f"point index {p} out of range [0, {n_pt})")
        cam_idx[o], pt_idx[o] = c, p
        obs[o, 0] = _number(path, k, tok[2], "u")
        obs[o, 1] = _number(path, k, tok[3], "v")
    n_params = 9 * n_cam + 3 * n_pt
    # Count before allocating: a header with a huge count must be an error, not a MemoryError.
    found = sum(len(tok) for _, tok in lines[1 + n_obs :])
    if found < n_params:
        raise FormatError(
            path,
            lines[-1][0],
            f"expected {n_params} parameters (9 x {n_cam} cameras + 3 x {n_pt} points), "
            f"found {found} before end of file",
        )
    params = np.empty(n_params)
    m = 0
    for k, tok in lines[1 + n_obs :]:
        for s in tok:
            if m >= n_params:
                raise FormatError(
                    path,
                    k,
                    f"unexpected data after the {n_params} camera and point parameters {header}",
                )
            what = (
                f"camera {m // 9} parameter {m % 9}"
                if m < 9 * n_cam
                else f"point {(m - 9 * n_cam) // 3} coordinate {(m - 9 * n_cam) % 3}"
            )
            params[m] = _number(path, k, s, what)
            m += 1
    problem = BALProblem(
        cameras=params[: 9 * n_cam].reshape(n_cam, 9),
        points=params[9 * n_cam :].reshape(n_pt, 3),
        camera_index=cam_idx,
        point_index=pt_idx,
        observations=obs,
        source=path,
    )
    # A point at depth exactly 0 in its camera projects to x / 0: the residual and the cost
    # would be NaN (typically a file whose cameras and points are all zero).
    cams = problem.cameras[cam_idx]
    depth = (rodrigues_rotate(cams[:, 0:3], problem.points[pt_idx]) + cams[:, 3:6])[:, 2]
    flat = np.nonzero(depth == 0.0)[0]
    if flat.size:
        o = int(flat[0])
        more = f" ({flat.size} such observations)" if flat.size > 1 else ""
        raise FormatError(
            path,
            lines[1 + o][0],
            f"observation {o}: point {pt_idx[o]} is at depth 0 in camera {cam_idx[o]} "
            f"(P_z = 0), so its projection is undefined{more}",
        )
    return problem


def write_bal(
    path: str | os.PathLike[str],
    problem: BALProblem,
    cameras: np.ndarray | None = None,
    points: np.ndarray | None = None,
) -> None:
    """Writes a BAL file (exact round trip of every number).

    Args:
        path: output file.
        problem: observations and, unless replaced, cameras and points.
        cameras: optional ``(C, 9)`` replacement cameras (e.g. optimized ones).
        points: optional ``(P, 3)`` replacement points.
    """
    cams = problem.cameras if cameras is None else np.asarray(cameras, dtype=np.float64)
    pts = problem.points if points is None else np.asarray(points, dtype=np.float64)
    if cams.shape != problem.cameras.shape or pts.shape != problem.points.shape:
        raise ValueError(
            f"cameras/points must have shapes {problem.cameras.shape}/{problem.points.shape}, "
            f"got {cams.shape}/{pts.shape}"
        )
    out = [f"{problem.n_cameras} {problem.n_points} {problem.n_observations}"]
    for c, p, (u, v) in zip(
        problem.camera_index, problem.point_index, problem.observations, strict=True
    ):
        out.append(f"{int(c)} {int(p)} {float(u)!r} {float(v)!r}")
    out.extend(repr(float(x)) for x in cams.reshape(-1))
    out.extend(repr(float(x)) for x in pts.reshape(-1))
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
