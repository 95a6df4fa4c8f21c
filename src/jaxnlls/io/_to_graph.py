"""Turn :class:`PoseGraph` / :class:`BALProblem` into :class:`jaxnlls.graph.FactorGraph` s.

Imported lazily by :mod:`jaxnlls.io` (the readers themselves need only numpy).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..factors import BalCamera, BalPoint, bal_reprojection, between, prior
from ..graph import FactorGraph, Var, VarValues
from ..lie import SE2, SE3
from ._bal import BALProblem
from ._chordal_host import chordal_poses
from ._pose_graph import PoseGraph, wrap_angle


class PoseSE2(Var, group=SE2):
    """A 2D pose of a pose graph read from a file (id = row of ``PoseGraph.poses``)."""


class PoseSE3(Var, group=SE3):
    """A 3D pose of a pose graph read from a file (id = row of ``PoseGraph.poses``)."""


def _dtype(dtype):
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.asarray(0.0).dtype  # JAX's default float (float64 under x64)


def poses_to_group(poses: np.ndarray, dim: int, dtype=None) -> SE2 | SE3:
    """File-layout poses ``(N, 3)`` ``(x, y, theta)`` / ``(N, 7)`` ``(t, q_xyzw)`` as a batched
    :class:`~jaxnlls.lie.SE2` / :class:`~jaxnlls.lie.SE3`."""
    dt = _dtype(dtype)
    # Parameters in numpy, one transfer: eager jnp ops compile one XLA kernel each, which
    # cost ~1 s per graph here (13 small kernels).
    p = np.asarray(poses, dtype=np.float64)
    if dim == 2:
        th = p[:, 2]
        return SE2(jnp.asarray(np.column_stack([np.cos(th), np.sin(th), p[:, 0], p[:, 1]]), dt))
    q = p[:, [6, 3, 4, 5]]  # file (x, y, z, w) -> (w, x, y, z)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return SE3(jnp.asarray(np.column_stack([q, p[:, 0:3]]), dt))


def group_to_poses(x: SE2 | SE3) -> np.ndarray:
    """Inverse of :func:`poses_to_group`: a host ``float64`` array in the file layout."""
    if isinstance(x, SE2):
        params = np.asarray(x.params, dtype=np.float64)
        theta = np.arctan2(params[:, 1], params[:, 0])
        return np.column_stack([params[:, 2], params[:, 3], wrap_angle(theta)])
    q = np.asarray(x.rotation().as_quaternion_xyzw(), dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    t = np.asarray(x.translation(), dtype=np.float64)
    return np.column_stack([t, q])


def chordal_initial_values(graph: PoseGraph, *, dtype=None) -> VarValues:
    """Initial values from the measurements alone: the chordal relaxation of
    :func:`~jaxnlls.graph.chordal_initialization` (GTSAM's ``InitializePose3``; also in 2D),
    weighted by the edges' information, with the first pose held at its value in the file.

    Computed on the host with scipy's sparse LU (the graph is host data already), so it costs
    no XLA compile; it equals :func:`~jaxnlls.graph.chordal_initialization` to round-off. The
    file's other poses are not used. On large-noise graphs this start avoids the poor local
    minima that the file's dead-reckoning guess leads to (``sphere_bignoise``,
    ``input_M3500a``: bench/RESULTS.md).

    Returns:
        :class:`VarValues` over :class:`PoseSE2` / :class:`PoseSE3` ids ``0..N-1``, the layout of
        :func:`pose_graph_to_factor_graph`.

    Raises:
        ValueError: a pose not connected to pose 0 by edges, or a failed linear solve.
    """
    pose_t: type[Var] = PoseSE2 if graph.dim == 2 else PoseSE3
    x0 = poses_to_group(chordal_poses(graph), graph.dim, _dtype(dtype))
    return VarValues.make({pose_t(np.arange(graph.n_poses)): x0})


def pose_graph_to_factor_graph(
    graph: PoseGraph, *, dtype=None, gauge="auto", init: str = "file"
) -> tuple[FactorGraph, VarValues, type[Var]]:
    """Between factors (GTSAM ``BetweenFactor`` convention) for every edge of a pose graph.

    Args:
        graph: a :class:`PoseGraph` from :func:`read_g2o` / :func:`read_toro`.
        dtype: float dtype of the values and factor data (default: JAX's default float).
        gauge: ``"auto"`` (default) holds the first pose fixed (no prior factor, so the cost
            is exactly the file's between cost); ``"prior"`` adds GTSAM's gauge instead, a
            unit-weight prior factor on the first pose at its initial value (that pose then
            moves inside each damped step, so LM follows GTSAM's iterates step for step; the
            prior's residual at the optimum is ~0). Anything else is passed to
            :meth:`FactorGraph.build`.
        init: ``"file"`` (default): the file's poses (chained odometry for edges-only files);
            ``"chordal"``: :func:`chordal_initial_values`.

    Returns:
        ``(factor_graph, initial_values, Pose)`` where ``Pose`` is :class:`PoseSE2` or
        :class:`PoseSE3` (ids ``0..N-1``, the rows of ``graph.poses``).
    """
    dt = _dtype(dtype)
    pose_t: type[Var] = PoseSE2 if graph.dim == 2 else PoseSE3
    z = poses_to_group(graph.measurements, graph.dim, dt)
    sqrt_info = jnp.asarray(graph.sqrt_information(), dt)
    factors = [between(pose_t(graph.edges[:, 0]), pose_t(graph.edges[:, 1]), z, sqrt_info)]
    x0 = poses_to_group(graph.poses, graph.dim, dt)
    if gauge == "prior":
        eye = jnp.eye(3 if graph.dim == 2 else 6, dtype=dt)
        factors.append(prior(pose_t(0), x0[0], eye))
        gauge = None
    fg = FactorGraph.build(factors, gauge=gauge)
    if init == "chordal":
        values = chordal_initial_values(graph, dtype=dt)
    elif init == "file":
        values = VarValues.make({pose_t(np.arange(graph.n_poses)): x0})
    else:
        raise ValueError(f"pose_graph_to_factor_graph: init must be 'file' or 'chordal', "
                         f"got {init!r}")
    return fg, values, pose_t


def bal_to_factor_graph(problem: BALProblem, *, dtype=None) -> tuple[FactorGraph, VarValues]:
    """Reprojection factors (BAL convention, unit weight) for every observation.

    Points behind a camera are not special-cased: their residual counts in the cost like every
    other (as in ``REFERENCE_COSTS.md``). Cameras are :class:`~jaxnlls.factors.BalCamera`
    (Euclidean 9-vectors), points :class:`~jaxnlls.factors.BalPoint`; there is no gauge fixing
    (the solver's damping handles the 7-dof similarity gauge).

    Returns:
        ``(factor_graph, initial_values)``.
    """
    dt = _dtype(dtype)
    factors = [
        bal_reprojection(
            BalCamera(problem.camera_index),
            BalPoint(problem.point_index),
            jnp.asarray(problem.observations, dt),
            jnp.ones((problem.n_observations,), dt),
        )
    ]
    fg = FactorGraph.build(factors, gauge=None)
    init = VarValues.make(
        {
            BalCamera(np.arange(problem.n_cameras)): jnp.asarray(problem.cameras, dt),
            BalPoint(np.arange(problem.n_points)): jnp.asarray(problem.points, dt),
        }
    )
    return fg, init
