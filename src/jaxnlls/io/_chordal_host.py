"""The chordal initialization of a :class:`PoseGraph` on the host (numpy + scipy.sparse).

The same two linear least-squares problems as :func:`jaxnlls.graph.chordal_initialization`
(same weights, same anchor, same projection onto the rotations; see that module for the
method), assembled as scipy sparse matrices and solved by one sparse LU each. A pose graph
read from a file is host data, and the one-off initialization of ``jaxnlls pgo --init
chordal`` then costs no XLA compile: 0.1 s on sphere_bignoise where the compiled version's
first call takes 1.0 s (tracing and compiling two factor-graph linearizations). The JAX
version stays the one to call under ``jit`` / ``vmap``; the tests hold the two to each other.
"""

from __future__ import annotations

import numpy as np

from ._pose_graph import PoseGraph
from ._se_numpy import quat_xyzw_to_matrix


def chordal_poses(graph: PoseGraph) -> np.ndarray:
    """Chordal initial poses of ``graph`` in the file layout, pose 0 held at its file value.

    Returns:
        ``(N, 3)`` ``(x, y, theta)`` or ``(N, 7)`` ``(t, q_xyzw)`` float64 poses.

    Raises:
        ValueError: a pose that no chain of edges joins to pose 0, or only edges with zero
            rotation or translation information; a linear solve that failed or gave
            non-finite values (non-finite measurements or information).
    """
    from ..graph._initialize import _check_connected

    d = graph.dim
    n, edges = graph.n_poses, np.asarray(graph.edges, np.int64)
    ids = np.asarray(graph.ids)
    _check_connected(edges, n, 0, ids=ids)
    z = np.asarray(graph.measurements, np.float64)
    if d == 2:
        Z, z_t = _rot2(z[:, 2]), z[:, :2]
        R0, t0 = _rot2(graph.poses[:1, 2])[0], graph.poses[0, :2]
    else:
        Z, z_t = quat_xyzw_to_matrix(z[:, 3:7]), z[:, :3]
        R0, t0 = quat_xyzw_to_matrix(graph.poses[:1, 3:7])[0], graph.poses[0, :3]
    w, L_t = _weights(np.asarray(graph.information, np.float64), d)
    # a pose joined to pose 0 only through zero-weight edges is undetermined; splu may still
    # factor the numerically singular system and return rotations made up of round-off
    _check_connected(edges[w > 0], n, 0, "edges with nonzero rotation information", ids)
    _check_connected(edges[np.any(L_t != 0, axis=(1, 2))], n, 0,
                     "edges with nonzero translation information", ids)
    ia, ib = edges[:, 0], edges[:, 1]
    eye = np.broadcast_to(np.eye(d), Z.shape)

    # rotations: every row y of R_n solves w (y_b - Zᵀ y_a) ≈ 0; the d rows are d right-hand
    # sides of one system, the anchor's rows (R_0ᵀ's columns) moved to the right
    rows = _solve_anchored(n, d, ia, ib, -w[:, None, None] * np.swapaxes(Z, 1, 2),
                           w[:, None, None] * eye, np.zeros((len(ia), d, d)), R0.T)
    R = _nearest_rotations(np.swapaxes(rows.reshape(n, d, d), 1, 2))  # R_n = block_nᵀ
    R[0] = R0

    # translations: L_t (R_aᵀ (t_b - t_a) - t) ≈ 0 with the rotations fixed
    M = L_t @ np.swapaxes(R[ia], 1, 2)
    t = _solve_anchored(n, d, ia, ib, -M, M, np.einsum("kij,kj->ki", L_t, z_t)[:, :, None],
                        t0[:, None])[:, 0].reshape(n, d)
    if d == 2:
        out = np.column_stack([t, np.arctan2(R[:, 1, 0], R[:, 0, 0])])
    else:
        from scipy.spatial.transform import Rotation

        out = np.column_stack([t, Rotation.from_matrix(R).as_quat()])  # xyzw
    out[0] = graph.poses[0]  # exactly as in the file (not re-derived: sign, angle wrap)
    return out


def _rot2(theta: np.ndarray) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _weights(info: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotation weights ``(E,)`` and translation square roots ``(E, d, d)``, as in
    :func:`jaxnlls.graph._initialize._weights`."""
    r = info.shape[-1] - d
    w = np.sqrt(np.maximum(np.trace(info[:, d:, d:], axis1=1, axis2=2), 0.0) / (2.0 * r))
    lam, V = np.linalg.eigh(info[:, :d, :d])
    return w, np.sqrt(np.maximum(lam, 0.0))[:, :, None] * np.swapaxes(V, 1, 2)


def _solve_anchored(n, d, ia, ib, block_a, block_b, rhs, anchor_value) -> np.ndarray:
    """Least squares over ``n`` blocks of ``d`` unknowns with block 0 fixed at
    ``anchor_value`` ``(d, k)``: residual rows ``block_a[e] x_{ia[e]} + block_b[e] x_{ib[e]} -
    rhs[e]`` (``rhs`` ``(E, d, k)``). Returns ``(n d, k)``, block 0 set to ``anchor_value``."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    n_edges = len(ia)
    row = np.arange(n_edges * d).reshape(n_edges, d, 1)
    cols = lambda v: (v[:, None, None] * d + np.arange(d)[None, None, :])
    r = np.broadcast_to(row, (n_edges, d, d))
    A = sp.csr_matrix(
        (np.concatenate([block_a.ravel(), block_b.ravel()]),
         (np.concatenate([r.ravel(), r.ravel()]),
          np.concatenate([np.broadcast_to(cols(ia), r.shape).ravel(),
                          np.broadcast_to(cols(ib), r.shape).ravel()]))),
        shape=(n_edges * d, n * d))
    b = rhs.reshape(n_edges * d, -1) - A[:, :d] @ anchor_value
    A_free = A[:, d:].tocsc()
    out = np.empty((n * d, b.shape[1]))
    out[:d] = anchor_value
    try:
        out[d:] = splu((A_free.T @ A_free).tocsc()).solve(np.asarray(A_free.T @ b))
    except RuntimeError as e:  # "Factor is exactly singular"
        raise ValueError(f"chordal initialization: a linear solve failed ({e})") from e
    if not np.all(np.isfinite(out)):
        raise ValueError("chordal initialization: a linear solve gave non-finite values "
                         "(non-finite measurements or information)")
    return out


def _nearest_rotations(M: np.ndarray) -> np.ndarray:
    """The rotation nearest to each ``M[k]`` in Frobenius norm (SVD, determinant +1)."""
    U, _, Vt = np.linalg.svd(M)
    s = np.ones(M.shape[:2])
    s[:, -1] = np.sign(np.linalg.det(U @ Vt))
    return (U * s[:, None, :]) @ Vt
