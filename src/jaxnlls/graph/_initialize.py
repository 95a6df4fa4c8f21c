"""Chordal initialization of pose graphs (GTSAM's ``InitializePose3`` / Carlone et al. 2015).

Large-noise pose graphs (``sphere_bignoise``) started from dead reckoning take hundreds of
Levenberg-Marquardt steps: the rotations are far from the optimum, and rotation errors make the
problem strongly nonconvex. The chordal relaxation estimates all rotations at once by one sparse
linear least-squares solve, then the translations by another, and the nonlinear solve starts
from there:

1. **Rotations.** Relax ``R ∈ SO(d)`` to any ``d × d`` matrix and minimize
   ``Σ_k w_k² ‖R_j − R_i Z_k‖²_F`` over the edges ``k = (i, j)`` with the anchor's rotation held
   fixed (a linear problem), then project each estimate onto ``SO(d)`` (nearest rotation in
   Frobenius norm, :meth:`~jaxnlls.lie.SO3.from_matrix`).
2. **Translations.** With those rotations fixed, the between residual's translation part
   ``L_t (R_iᵀ (t_j − t_i) − t_k)`` is linear in the translations: one more linear solve, with the
   anchor's translation held fixed.

Weights: ``w_k² = tr(Ω_rr) / (2 r)`` from the rotation block of the edge's information ``Ω``
(``r`` rotation dimensions; ``‖R Exp(e) − R‖²_F ≈ 2‖e‖²`` for small ``e``, hence the 2) and
``L_t`` a square root (``L_tᵀ L_t = Ω_tt``) of the translation block ``Ω_tt`` (the translation
information given the rotations). Without information, unit weights.

Both solves are :class:`~jaxnlls.graph.FactorGraph` linearizations over Euclidean variables
solved by one step of the graph's automatic linear solver (sparse Cholesky for big graphs on
CPU, dense below 128 unknowns, PCG on GPU), so the initialization runs under ``jit`` and
``vmap`` like the rest of the library. It is not meant to be differentiated: the implicit
adjoint of the solve that follows gives zero gradient with respect to the initial values.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._compile import entry_jit
from ..lie import SE2, SE3, SO2, SO3
from ._factor import factor
from ._factor_graph import FactorGraph, auto_linear_solver
from ._var import Var, VarValues, _Ids


@factor(name="chordal_rotation_row", jac="fwd")
def _rotation_row_residual(vals, a, b, z, w):
    """One row of ``w (R_b − R_a Z)``: ``w (y_b − Zᵀ y_a)`` for the rows ``y`` of ``R_a, R_b``."""
    ya, yb = vals[a], vals[b]
    return w * (yb - z.astype(ya.dtype).T @ ya)


@factor(name="chordal_translation", jac="fwd")
def _translation_residual(vals, a, b, rot_a, t, sqrt_info_t):
    """``L_t (R_aᵀ (t_b − t_a) − t)`` with ``R_a`` fixed."""
    ta, tb = vals[a], vals[b]
    return sqrt_info_t.astype(ta.dtype) @ (rot_a.astype(ta.dtype).T @ (tb - ta) - t)


def _linear_least_squares(factors, anchor: Var, init: VarValues, linear_solver: Any):
    """Values minimizing a linear graph's cost, the anchor held at its value in ``init``."""
    graph = FactorGraph.build(factors, gauge=anchor)
    lin = graph.linearize(init)
    ls = auto_linear_solver(graph.structure) if linear_solver == "auto" else linear_solver
    zeros = jnp.zeros((graph.tangent_size,), lin.residual.dtype)
    delta, ok = ls.solve(lin, zeros, -lin.rmv(lin.residual))
    return graph.retract(init, delta), ok & jnp.all(jnp.isfinite(delta))


def _weights(information: Any, n_edges: int, dt: int, dr: int, dtype):
    """Scalar rotation weights ``(E,)`` and translation square-root information ``(E, dt, dt)``."""
    if information is None:
        return jnp.ones((n_edges,), dtype), jnp.broadcast_to(jnp.eye(dt, dtype=dtype),
                                                            (n_edges, dt, dt))
    info = jnp.asarray(information, dtype)
    d = dt + dr
    if info.shape != (n_edges, d, d):
        raise ValueError(
            f"chordal_initialization: information must have shape ({n_edges}, {d}, {d}) "
            f"(one {d}×{d} matrix per edge, tangent order (translation, rotation)), "
            f"got {info.shape}"
        )
    rot = info[:, dt:, dt:]
    w = jnp.sqrt(jnp.maximum(jnp.trace(rot, axis1=-2, axis2=-1), 0.0) / (2.0 * dr))
    # L_t = √Λ Vᵀ (so L_tᵀ L_t = Ω_tt) rather than a Cholesky factor: information repaired by
    # projection onto the PSD cone (read_g2o(fix_information=True)) may be singular
    lam, V = jnp.linalg.eigh(info[:, :dt, :dt])
    L_t = jnp.sqrt(jnp.maximum(lam, 0.0))[:, :, None] * jnp.swapaxes(V, -1, -2)
    return w, L_t


def chordal_initialization(
    edges: Any,
    measurements: SE2 | SE3,
    n_poses: int,
    *,
    information: Any = None,
    anchor: int = 0,
    anchor_pose: SE2 | SE3 | None = None,
    linear_solver: Any = "auto",
) -> SE2 | SE3:
    """Initial poses of a pose graph from its relative measurements alone (chordal relaxation).

    Args:
        edges: ``(E, 2)`` host integer array of pose indices ``(i, j)`` in ``0..n_poses-1``;
            every pose must be connected to the anchor.
        measurements: ``(E,)`` batched :class:`~jaxnlls.lie.SE2` / :class:`~jaxnlls.lie.SE3`,
            edge ``k`` measuring ``T_i⁻¹ T_j``.
        n_poses: number of poses.
        information: optional ``(E, d, d)`` information matrices in the group's tangent order
            (translation, rotation); they set the weights (module docstring). Default: unit.
        anchor: index of the pose held fixed (the gauge).
        anchor_pose: its value (default: the identity).
        linear_solver: step solver of the two linear solves (default: the graph's automatic
            choice, :func:`~jaxnlls.graph.auto_linear_solver`).

    Returns:
        ``(n_poses,)`` batched poses of the measurements' group, ``anchor_pose`` at ``anchor``.

    Raises:
        TypeError / ValueError (at call time) naming the argument: measurements not SE2/SE3,
        malformed or out-of-range edges, an information array of the wrong shape, or a pose no
        chain of edges joins to the anchor. At run time (``eqx.error_if``, also under ``jit``):
        a linear solve that failed or returned non-finite values (non-finite data).

    Differentiability:
        Not intended: an initial guess needs no gradient (the implicit adjoint of the solve
        that follows gives zero gradient with respect to ``init``), and it is not tested. Wrap
        the call in ``jax.lax.stop_gradient`` inside a differentiated function.

    Example:
        >>> x0 = chordal_initialization(edges, z, n, information=info, anchor_pose=poses[0])
        >>> sol = graph.solve(VarValues.make({Pose(np.arange(n)): x0}))
    """
    if not isinstance(measurements, (SE2, SE3)):
        raise TypeError(
            "chordal_initialization: measurements must be a batched SE2 or SE3, "
            f"got {type(measurements).__name__}"
        )
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
        raise ValueError(f"chordal_initialization: edges must be an (E, 2) integer array, "
                         f"got dtype {edges.dtype} shape {edges.shape}")
    n_edges = edges.shape[0]
    if measurements.params.shape[:-1] != (n_edges,):
        raise ValueError(
            f"chordal_initialization: {n_edges} edges but measurements of batch shape "
            f"{measurements.params.shape[:-1]}"
        )
    n_poses = int(n_poses)
    if edges.size and (edges.min() < 0 or edges.max() >= n_poses):
        raise ValueError(f"chordal_initialization: edge indices must lie in 0..{n_poses - 1}")
    if not 0 <= anchor < n_poses:
        raise ValueError(f"chordal_initialization: anchor {anchor} not in 0..{n_poses - 1}")
    _check_connected(edges, n_poses, anchor)

    group = type(measurements)
    dtype = measurements.params.dtype
    if anchor_pose is None:
        anchor_pose = group.identity(dtype=dtype)
    elif type(anchor_pose) is not group or anchor_pose.params.shape[:-1] != ():
        raise ValueError(
            f"chordal_initialization: anchor_pose must be one {group.__name__} (the "
            f"measurements' group), got {type(anchor_pose).__name__} of batch shape "
            f"{getattr(getattr(anchor_pose, 'params', None), 'shape', (None,))[:-1]}")
    if n_poses == 1:  # nothing to solve (and no factor to build a graph from)
        return group(jnp.asarray(anchor_pose.params, dtype)[None])
    return _chordal(_Ids(edges), n_poses, int(anchor), measurements, information, anchor_pose,
                    linear_solver)


@entry_jit
def _chordal(edges_static, n_poses, anchor, measurements, information, anchor_pose,
             linear_solver):
    # one compiled program per graph structure: dispatching the two linearizations eagerly
    # compiled hundreds of small kernels (8 s on sphere2500 instead of well under 1 s)
    edges = edges_static.array
    group = type(measurements)
    rot_group = SO2 if group is SE2 else SO3
    d = 2 if group is SE2 else 3
    dtype = measurements.params.dtype
    w, L_t = _weights(information, edges.shape[0], d, rot_group.tangent_dim, dtype)
    ia, ib = edges[:, 0], edges[:, 1]
    ids = np.arange(n_poses)
    Row, Trans = _VARS[d]

    # The relaxed problem separates by rows: row a of every R_n solves the same linear system
    # (d unknowns per pose), which differs between rows only in the anchor's fixed row.
    Z = measurements.rotation().as_matrix()
    anchor_rows = anchor_pose.rotation().as_matrix().astype(dtype)  # (d, d)

    def solve_rows(anchor_row):
        y0 = jnp.zeros((n_poses, d), dtype).at[anchor].set(anchor_row)
        vals, ok = _linear_least_squares([_rotation_row_residual(Row(ia), Row(ib), Z, w)],
                                         Row(anchor), VarValues.make({Row(ids): y0}),
                                         linear_solver)
        return vals.get(Row), ok

    rows, rows_ok = jax.vmap(solve_rows)(anchor_rows)  # rows[a, n] = row a of R_n
    R = rot_group.from_matrix(jnp.swapaxes(rows, 0, 1))

    t0 = jnp.zeros((n_poses, d), dtype).at[anchor].set(anchor_pose.translation().astype(dtype))
    trans_vals, trans_ok = _linear_least_squares(
        [_translation_residual(Trans(ia), Trans(ib), R[ia].as_matrix(),
                               measurements.translation(), L_t)],
        Trans(anchor), VarValues.make({Trans(ids): t0}), linear_solver)
    poses = group.from_rotation_and_translation(R, trans_vals.get(Trans))
    # the anchor exactly as given (projection round-off aside)
    poses = jax.tree.map(lambda p, a: p.at[anchor].set(a.astype(p.dtype)), poses, anchor_pose)
    return eqx.error_if(
        poses, ~(jnp.all(rows_ok) & trans_ok),
        "chordal_initialization: a linear solve failed (non-finite measurements or information, "
        "or edges whose weights leave some pose undetermined)")


class _Row2(Var, dim=2):
    """A row of a relaxed 2D rotation matrix."""


class _Row3(Var, dim=3):
    """A row of a relaxed 3D rotation matrix."""


class _Trans2(Var, dim=2):
    """2D translation."""


class _Trans3(Var, dim=3):
    """3D translation."""


# module level, so that repeated calls build the same graph structures (one compile each)
_VARS = {2: (_Row2, _Trans2), 3: (_Row3, _Trans3)}


def _check_connected(edges: np.ndarray, n_poses: int, anchor: int,
                     through: str = "any edge", ids: np.ndarray | None = None) -> None:
    """Raise naming a pose that no chain of ``edges`` joins to the anchor (singular system);
    ``through`` says which edges were counted, for the message, and ``ids`` (a file's vertex
    ids, pose ``n`` being vertex ``ids[n]``) makes it name vertices instead of indices."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    if n_poses == 1:
        return
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
                        shape=(n_poses, n_poses))
    _, labels = connected_components(adj, directed=False)
    lost = np.flatnonzero(labels != labels[anchor])
    if lost.size:
        if ids is None:
            anchor_name, lost_name = f"pose {anchor}", f"pose {int(lost[0])}"
        else:
            anchor_name, lost_name = f"vertex {ids[anchor]}", f"vertex {ids[int(lost[0])]}"
        raise ValueError(
            f"chordal_initialization: {lost.size} poses are not connected to the anchor "
            f"({anchor_name}) by {through}, e.g. {lost_name}"
        )
