"""Sparse direct (Cholesky / LDLᵀ) step solver on the host, called from ``jit``.

Library choice (compared on this project's pose graphs, 2-core CPU, float64; times per
numeric factorization + solve of ``JᵀJ + λI`` after the one-off symbolic analysis):

=================  =========  =========  ===========  ==============================================
library            intel      M3500      sphere2500   notes
=================  =========  =========  ===========  ==============================================
CHOLMOD (cvxopt)   1.6 ms     3.9 ms     0.023 s      optional extra ``jaxnlls[cholmod]``; cvxopt is
                                                      GPL-3.0 (CHOLMOD's supernodal module GPL-2),
                                                      pip wheels with CHOLMOD and OpenBLAS bundled;
                                                      ``symbolic`` once, ``numeric`` per iteration
``qdldl``          1.0 ms     3.5 ms     0.13 s       Apache-2.0, pip wheels, AMD ordering +
                                                      symbolic analysis once, ``update()`` refactors
                                                      numerically with the same pattern
block supernodal   –          –          0.05 s       this module (numpy + scipy's LAPACK): AMD on
                                                      the *variable* graph, supernodes of whole
                                                      variables, multifrontal dense kernels
scipy ``splu``     11 ms      40 ms      0.22 s       BSD, already a dependency; LU, no reuse of the
                                                      symbolic analysis (fallback when qdldl absent)
``cholespy``       10 ms      27 ms      0.39 s       BSD, bundles CHOLMOD, but no numeric-only
                                                      refactorization API
scikit-sparse      –          –          –            CHOLMOD; sdist only (0.5.0): needs SuiteSparse
                                                      headers/libraries from the OS
=================  =========  =========  ===========  ==============================================

The base install is permissive (MIT project; qdldl Apache-2.0, scipy BSD), so CHOLMOD is an
*optional* extra, as in Theseus (MIT), whose sparse solve also uses CHOLMOD: installing
``jaxnlls[cholmod]`` brings GPL code into the process, and it is then used by
``backend="auto"`` where it is fastest. Without it, qdldl and the block supernodal
factorization below cover every case.

qdldl is a scalar (column-by-column) factorization: about 2.5 GFlop/s here, so it is fastest
when the factor has little fill (2D pose graphs, small graphs). 3D graphs with loop closures
everywhere (sphere2500: 0.6 GFlop per factorization) fill in; there CHOLMOD's supernodal
factorization is 5.8x faster than qdldl and the block supernodal factorization of this module
(:class:`_Supernodal`, dense LAPACK kernels on frontal matrices of whole variables, ~10 GFlop/s
single-threaded plus ~25 µs of Python per supernode) 2.2x. ``backend="auto"`` picks per
sparsity pattern from the supernodal symbolic analysis (flop count and number of supernodes;
deterministic, no timing): CHOLMOD when installed and the factorization is not small
(:data:`CHOLMOD_MIN_SECONDS`), else the faster of the supernodal backend and qdldl; scipy's
SuperLU when qdldl is not installed.

All of them run on the host via ``jax.experimental.buffer_callback`` (CPU numpy; see
:func:`sparse_solve` for why not ``jax.pure_callback``). Under ``vmap`` the
callback is made once per batch (``vmap_method="expand_dims"``) and solves the members with the
same symbolic analysis, split over a few threads for qdldl (:meth:`_HostFactor.solve_batch`;
``"auto"`` uses qdldl for batches even where it chose CHOLMOD for single solves: 256 members
of 384 unknowns take CHOLMOD 23 ms one after another, qdldl 20 ms in one thread).
256 SE(2) graphs of 128 poses, 5 LM steps, in one thread: 0.31 s for the batch, against 1.31 s
with :class:`~jaxnlls.linear.BlockJacobiPCG` (same run) and 0.76 s with one callback per
member. A batched supernodal factorization (every front factored for all members by one numpy
call) was tried and was 2x slower than this loop: numpy's batched ``solve``/``cholesky`` cost
~3 µs per small matrix, more than qdldl's whole pass.

The solve is wrapped in :func:`jax.lax.custom_linear_solve` with a JAX sparse mat-vec, so it
is differentiable in both modes (w.r.t. the right-hand side and the matrix) — unrolled
solves work, at the price of one extra host solve per backward step.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

try:  # jax >= 0.7
    from jax.experimental.buffer_callback import buffer_callback
except ImportError:  # pragma: no cover - older jax: pure_callback (see sparse_solve)
    buffer_callback = None

from ._blocksparse import BlockLayout, block_layout_of
from ._step import AbstractStepSolver


_BACKENDS = ("auto", "cholmod", "qdldl", "supernodal", "scipy")


def _backend(name: str) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"SparseCholesky backend must be one of {_BACKENDS}, got {name!r}")
    if name == "cholmod" and _cholmod() is None:
        raise ImportError(
            'SparseCholesky(backend="cholmod") needs cvxopt (CHOLMOD): pip install '
            '"jaxnlls[cholmod]" (GPL-3.0; see jaxnlls.linear._sparse)'
        )
    if name == "auto":
        try:
            import qdldl  # noqa: F401

            return "auto"
        except ImportError:  # pragma: no cover - depends on the install
            return "scipy"
    return name


_CHOLMOD: Any = None
#: cvxopt's CHOLMOD keeps one global workspace (``cholmod_common``): one call at a time
_CHOLMOD_LOCK = threading.Lock()


def _cholmod():
    """``(cvxopt.cholmod, cvxopt.spmatrix, cvxopt.matrix)``, or None without cvxopt."""
    global _CHOLMOD
    if _CHOLMOD is None:
        try:
            from cvxopt import cholmod, matrix, spmatrix
        except ImportError:
            _CHOLMOD = False
        else:
            _CHOLMOD = (cholmod, spmatrix, matrix)
    return _CHOLMOD or None


class _Cholmod:
    """CHOLMOD's supernodal ``LLᵀ`` through cvxopt: AMD ordering and symbolic factorization
    once per pattern (:func:`cholmod.symbolic`), then per solve only the values of the one
    sparse matrix are replaced (assigning ``.V`` keeps the pattern: 1 ms on sphere2500, where
    building a new ``spmatrix`` from triplets took 8-11 ms) and factored numerically."""

    def __init__(self, upper):
        cholmod, spmatrix, matrix = _cholmod()
        n = upper.shape[0]
        cols = np.repeat(np.arange(n), np.diff(upper.indptr))
        # the triplets in CSC order (sorted rows per column), so .V is in ``data``'s order
        rows_m = matrix(upper.indices.astype(np.int64).tolist(), tc="i")
        cols_m = matrix(cols.tolist(), tc="i")
        with _CHOLMOD_LOCK:
            self.A = spmatrix(matrix(np.asarray(upper.data, np.float64)), rows_m, cols_m, (n, n))
            if len(self.A.V) != upper.nnz:  # pragma: no cover - cvxopt merges duplicates only
                raise RuntimeError("CHOLMOD matrix lost entries of the pattern")
            self.F = cholmod.symbolic(self.A, uplo="U")

    def solve(self, data: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        """``A⁻¹ b``, or None when ``A`` is not (numerically) positive definite."""
        cholmod, _, matrix = _cholmod()
        with _CHOLMOD_LOCK:
            self.A.V = matrix(np.ascontiguousarray(data, np.float64))
            try:
                cholmod.numeric(self.A, self.F)
            except ArithmeticError:
                return None
            x = matrix(np.ascontiguousarray(b, np.float64))
            cholmod.solve(self.F, x)
        return np.array(x).reshape(b.shape)


# ----------------------------------------------------------------------- BLAS threads
_THREADS_LOCAL: Any = None


def _blas_threads_local():
    """``openblas_set_num_threads_local`` of scipy's bundled OpenBLAS, or None.

    It sets the thread count of the *calling* thread only (OpenBLAS ≥ 0.3.27), so the host
    factorization can run its dense kernels single-threaded without touching any global
    setting. On a loaded 2-core machine multi-threaded OpenBLAS is 10-50x slower on these
    frontal matrices than one thread (its worker threads spin against XLA's)."""
    global _THREADS_LOCAL
    if _THREADS_LOCAL is None:
        _THREADS_LOCAL = False
        import ctypes
        import glob
        import os

        import scipy

        libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
        for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
            try:
                fn = ctypes.CDLL(path).openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            _THREADS_LOCAL = fn
            break
    return _THREADS_LOCAL or None


class _OneBlasThread:
    def __enter__(self):
        fn = _blas_threads_local()
        self.old = fn(1) if fn is not None else None

    def __exit__(self, *exc):
        if self.old is not None:
            _blas_threads_local()(self.old)


# ----------------------------------------------------------------------- block supernodal
def _etree(indptr: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray:
    """Elimination tree (Liu) of the symmetric matrix with this strict upper triangle (CSC)."""
    parent = [-1] * n
    ancestor = [-1] * n
    ip, ix = indptr.tolist(), indices.tolist()
    for j in range(n):
        for p in range(ip[j], ip[j + 1]):
            i = ix[p]
            while i != -1 and i < j:
                nxt = ancestor[i]
                ancestor[i] = j
                if nxt == -1:
                    parent[i] = j
                i = nxt
    return np.asarray(parent, np.int64)


def _postorder(parent: np.ndarray) -> np.ndarray:
    n = len(parent)
    children: list[list[int]] = [[] for _ in range(n)]
    roots = []
    for j in range(n - 1, -1, -1):
        p = int(parent[j])
        (children[p] if p >= 0 else roots).append(j)
    out: list[int] = []
    stack = [(r, False) for r in roots]
    while stack:
        v, done = stack.pop()
        if done:
            out.append(v)
            continue
        stack.append((v, True))
        stack.extend((c, False) for c in children[v])
    return np.asarray(out, np.int64)


def _block_ordering(B) -> np.ndarray:
    """Fill-reducing ordering of the variable graph ``B`` (AMD via qdldl; RCM without it)."""
    import scipy.sparse as sp

    try:
        import qdldl
    except ImportError:  # pragma: no cover - depends on the install
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        return np.asarray(reverse_cuthill_mckee(B.tocsr(), symmetric_mode=True), np.int64)
    deg = np.asarray(B.sum(axis=1)).ravel()
    M = sp.triu(B + sp.diags(deg + 1.0)).tocsc()  # diagonally dominant: qdldl only orders it
    return np.asarray(qdldl.Solver(M).factors()[2], np.int64)


def _runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + l) for s, l in zip(starts, lengths)])``, vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(total)


class _Supernodal:
    """Multifrontal supernodal Cholesky ``A = LLᵀ`` of an SPD matrix on the host.

    Symbolic analysis (once per pattern): the matrix is viewed as a graph of *variables*
    (tangent blocks), ordered by AMD and postordered; column structures come from the
    elimination tree, and chains of the tree are merged into supernodes while few explicit
    zeros are added (every supernode holds whole variables). For each supernode the positions
    of its entries of ``A`` and of its children's update matrices in its frontal matrix are
    precomputed, so the numeric factorization is a loop of dense LAPACK/BLAS calls
    (``potrf``, ``trsm``, ``syrk``) plus flat scatters, run single-threaded.

    Args:
        indptr, indices: the upper triangle of ``A`` in CSC form (sorted indices).
        n: the order of ``A``.
        var_blocks: ``(offset, count, dim)`` per variable type (the layout's column blocks).
    """

    #: merge a chain into a supernode while it has at most this many columns, or while the
    #: explicit zeros it adds stay below ``relax`` of its stored entries
    small = 24
    relax = 0.1
    #: leaves with one front shape are batched when there are at least this many
    min_batch = 8

    def __init__(self, indptr, indices, n: int, var_blocks):
        import scipy.sparse as sp

        offs, dims_l = [], []
        for off, cnt, d in var_blocks:
            offs.append(off + d * np.arange(cnt))
            dims_l.append(np.full(cnt, d))
        boff = np.concatenate(offs).astype(np.int64)
        bdim = np.concatenate(dims_l).astype(np.int64)
        nb = len(bdim)
        block_of = np.repeat(np.arange(nb), bdim)
        indptr = np.asarray(indptr, np.int64)
        indices = np.asarray(indices, np.int64)
        cols = np.repeat(np.arange(n), np.diff(indptr))
        bi, bj = block_of[indices], block_of[cols]
        off = bi != bj
        B = sp.coo_matrix((np.ones(int(off.sum())), (bi[off], bj[off])), shape=(nb, nb)).tocsr()
        B = ((B + B.T) > 0).astype(np.float64)
        perm = _block_ordering(B)
        U = sp.triu(B[perm][:, perm], 1).tocsc()
        perm = perm[_postorder(_etree(U.indptr, U.indices, nb))]
        Bp = B[perm][:, perm]
        U = sp.triu(Bp, 1).tocsc()
        U.sort_indices()
        parent = _etree(U.indptr, U.indices, nb).tolist()
        low = sp.tril(Bp, -1).tocsc()
        lp, li = low.indptr.tolist(), low.indices.tolist()
        dims = bdim[perm].tolist()
        # block column structures (rows below the diagonal), children before parents
        struct: list[set] = [set() for _ in range(nb)]
        for j in range(nb):
            s = struct[j]
            s.update(li[lp[j] : lp[j + 1]])
            p = parent[j]
            if p >= 0:
                sp_ = struct[p]
                sp_ |= s
                sp_.discard(p)
        if len(set(dims)) == 1:
            sdim = [len(s) * dims[0] for s in struct]
        else:
            sdim = [sum(dims[x] for x in s) for s in struct]
        # supernodes: merge chains (parent(j-1) == j) while cheap
        starts = [0]
        cur_c = dims[0]
        cur_true = dims[0] * (dims[0] + 1) // 2 + dims[0] * sdim[0]
        for j in range(1, nb):
            dj = dims[j]
            own = dj * (dj + 1) // 2 + dj * sdim[j]
            if parent[j - 1] == j:
                c = cur_c + dj
                stored = c * (c + 1) // 2 + c * sdim[j]
                if c <= self.small or stored - (cur_true + own) <= self.relax * stored:
                    cur_c, cur_true = c, cur_true + own
                    continue
            starts.append(j)
            cur_c, cur_true = dj, own
        starts.append(nb)
        ns = len(starts) - 1
        self.n = n
        self.n_supernodes = ns
        self.L: list | None = None
        self.leaf_L: list = []
        self.flops = 0.0  # Σ k·m² over supernodes (k columns, m rows of the front)
        sn_of = np.repeat(np.arange(ns), np.diff(starts))
        par = np.asarray(parent, np.int64)
        has_child = np.zeros(ns, bool)
        has_child[sn_of[par[par >= 0]][sn_of[par[par >= 0]] != sn_of[par >= 0]]] = True
        leaf_shapes: dict[tuple[int, int], int] = {}
        for s in range(ns):
            k = sum(dims[starts[s] : starts[s + 1]])
            mr = sdim[starts[s + 1] - 1]
            self.flops += k * (k + mr) ** 2
            if not has_child[s]:
                leaf_shapes[(k, mr)] = leaf_shapes.get((k, mr), 0) + 1
        self.n_batched = sum(c for c in leaf_shapes.values() if c >= self.min_batch)
        self._symbolic: tuple | None = (
            n, nb, dims, starts, struct, parent, boff, perm, indices, cols
        )
        self.fronts: list[tuple[int, int, np.ndarray]] = []

    def _maps(self) -> None:
        """Positions of ``A``'s entries and of the children's updates in every front (once)."""
        assert self._symbolic is not None
        n, nb, dims, starts, struct, parent, boff, perm, indices, cols = self._symbolic
        ns = self.n_supernodes
        bstart = np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)
        dims_a = np.asarray(dims, np.int64)
        self.perm = _runs(boff[perm], dims_a)
        spos = np.empty(n, np.int64)
        spos[self.perm] = np.arange(n)
        sn_of_block = np.empty(nb, np.int64)
        self.fronts = []
        idxs = []
        for s in range(ns):
            f, last = starts[s], starts[s + 1]
            sn_of_block[f:last] = s
            rows_b = np.asarray(sorted(struct[last - 1]), np.int64)
            c0, c1 = int(bstart[f]), int(bstart[last])
            rows = _runs(bstart[rows_b], dims_a[rows_b])
            self.fronts.append((c0, c1, rows))
            idxs.append(np.concatenate([np.arange(c0, c1), rows]))
        # entries of A: (i <= j) upper, permuted to (lo, hi); stored at F[hi, lo] of the
        # supernode holding column lo; F is column-major, so flat position lo_loc * m + hi_loc
        pi, pj = spos[indices], spos[cols]
        lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
        sn_col = np.repeat(np.arange(ns), [c1 - c0 for c0, c1, _ in self.fronts])
        sn_e = sn_col[lo]
        order = np.argsort(sn_e, kind="stable")
        bounds = np.searchsorted(sn_e[order], np.arange(ns + 1))
        self.amap = []
        for s, (c0, _, _) in enumerate(self.fronts):
            e = order[bounds[s] : bounds[s + 1]]
            m = len(idxs[s])
            self.amap.append((e, (lo[e] - c0) * m + np.searchsorted(idxs[s], hi[e]), m))
        # children's update matrices: their lower triangle, scattered into the parent front
        self.cmap: list[list] = [[] for _ in range(ns)]
        tri: dict[int, tuple] = {}
        for s, (c0, c1, rows) in enumerate(self.fronts):
            mc = len(rows)
            p = parent[starts[s + 1] - 1]
            if p < 0:
                continue
            ps = int(sn_of_block[p])
            rel = np.searchsorted(idxs[ps], rows)
            if mc not in tri:
                tri[mc] = np.triu_indices(mc)
            jj, ii = tri[mc]
            self.cmap[ps].append((s, jj * mc + ii, rel[jj] * len(idxs[ps]) + rel[ii]))
        # leaves of the tree (most supernodes of a pose graph: single poses with equal-sized
        # fronts) are factored and solved together with batched numpy kernels, one batch per
        # front shape, instead of one Python iteration each
        shapes: dict[tuple[int, int], list[int]] = {}
        for s, (c0, c1, rows) in enumerate(self.fronts):
            if not self.cmap[s]:
                shapes.setdefault((c1 - c0, len(rows)), []).append(s)
        self.batched = np.zeros(ns, bool)
        self.leaf_groups = []
        for (k, mr), members in sorted(shapes.items()):
            if len(members) < self.min_batch:
                continue
            m = k + mr
            ids = np.asarray(members, np.int64)
            self.batched[ids] = True
            e_all = np.concatenate([self.amap[s][0] for s in members])
            pos_all = np.concatenate([i * m * m + self.amap[s][1] for i, s in enumerate(members)])
            cols_g = np.stack([np.arange(self.fronts[s][0], self.fronts[s][1]) for s in members])
            rows_g = np.stack([self.fronts[s][2] for s in members]).reshape(len(members), mr)
            self.leaf_groups.append((ids, k, m, e_all, pos_all, cols_g, rows_g))
        self.loop = [s for s in range(ns) if not self.batched[s]]
        self._symbolic = None

    def estimated_seconds(self) -> float:
        """Model of one factorization + solve (2-core CPU, fitted on the pgo3d/pgo2d graphs):
        dense kernels, plus Python overhead per looped supernode and per batched leaf."""
        n_loop = self.n_supernodes - self.n_batched
        return self.flops / 10e9 + 60e-6 * n_loop + 15e-6 * self.n_batched

    def factor(self, data: np.ndarray) -> bool:
        """Numeric factorization; False when ``A`` is not (numerically) positive definite."""
        from scipy.linalg import blas, lapack

        if self._symbolic is not None:
            self._maps()
        data = np.asarray(data, np.float64)
        Ls: list = [None] * self.n_supernodes
        upd: list = [None] * self.n_supernodes
        leaves = []
        for ids, k, m, e, pos, _, _ in self.leaf_groups:
            g = len(ids)
            Fm = np.zeros(g * m * m)
            Fm[pos] = data[e]
            F = Fm.reshape(g, m, m).transpose(0, 2, 1)  # lower triangles valid
            A11 = np.tril(F[:, :k, :k])
            A11 = A11 + np.tril(A11, -1).transpose(0, 2, 1)
            try:
                L11 = np.linalg.cholesky(A11)
            except np.linalg.LinAlgError:
                self.L = None
                return False
            L21t = np.linalg.solve(L11, F[:, k:, :k].transpose(0, 2, 1))  # L21ᵀ, contiguous
            L21 = L21t.transpose(0, 2, 1)
            # A leaf's F22 is structurally zero (an entry of A sits in the front of its lower
            # column, an ancestor here), so U = -L21 L21ᵀ, computed from contiguous operands:
            # subtracting from the strided F22 view took 5 of sphere2500's 45 ms.
            U = np.matmul(np.ascontiguousarray(L21), L21t)
            np.negative(U, out=U)
            for i, s in enumerate(ids.tolist()):
                upd[s] = U[i].T  # column-major view; lower triangle valid
            leaves.append((L11, L21))
        with _OneBlasThread():
            for s in self.loop:
                c0, c1, _ = self.fronts[s]
                e, pos, m = self.amap[s]
                Fm = np.zeros(m * m)
                Fm[pos] = data[e]
                for c, src, dst in self.cmap[s]:
                    Fm[dst] += upd[c].reshape(-1, order="F")[src]
                    upd[c] = None
                F = Fm.reshape(m, m).T  # column-major front; its lower triangle is valid
                k = c1 - c0
                L11, info = lapack.dpotrf(F[:k, :k], lower=1, clean=1, overwrite_a=1)
                if info != 0:
                    self.L = None
                    return False
                if m > k:
                    L21 = blas.dtrsm(1.0, L11, F[k:, :k], side=1, lower=1, trans_a=1)
                    upd[s] = blas.dsyrk(-1.0, L21, beta=1.0, c=F[k:, k:], lower=1, overwrite_c=1)
                else:
                    L21 = np.zeros((0, k))
                Ls[s] = (L11, L21)
        self.L = Ls
        self.leaf_L = leaves
        return True

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``A⁻¹ b`` with the last factorization."""
        from scipy.linalg import blas

        assert self.L is not None
        y = np.asarray(b, np.float64)[self.perm]
        for (_, _, _, _, _, cols, rows), (L11, L21) in zip(self.leaf_groups, self.leaf_L):
            z = np.linalg.solve(L11, y[cols][..., None])
            y[cols] = z[..., 0]
            y -= np.bincount(rows.reshape(-1), weights=(L21 @ z).reshape(-1), minlength=len(y))
        with _OneBlasThread():
            for s in self.loop:
                c0, c1, rows = self.fronts[s]
                L11, L21 = self.L[s]
                z = blas.dtrsv(L11, y[c0:c1], lower=1)
                y[c0:c1] = z
                if len(rows):
                    y[rows] -= blas.dgemv(1.0, L21, z)
            for s in reversed(self.loop):
                c0, c1, rows = self.fronts[s]
                L11, L21 = self.L[s]
                z = y[c0:c1]
                if len(rows):
                    z = z - blas.dgemv(1.0, L21, y[rows], trans=1)
                y[c0:c1] = blas.dtrsv(L11, z, lower=1, trans=1)
        for (_, _, _, _, _, cols, rows), (L11, L21) in zip(self.leaf_groups, self.leaf_L):
            z = y[cols][..., None] - L21.transpose(0, 2, 1) @ y[rows][..., None]
            y[cols] = np.linalg.solve(L11.transpose(0, 2, 1), z)[..., 0]
        x = np.empty_like(y)
        x[self.perm] = y
        return x


# ----------------------------------------------------------------------- per-pattern state
#: ``backend="auto"`` takes CHOLMOD (when cvxopt is installed) for patterns whose factorization
#: qdldl is estimated to take longer than this (flops / 2.5 GFlop/s, which overestimates it up
#: to 2x); below, qdldl's lower overhead wins or ties. Measured per factorization + solve:
#: intel (estimate 2 ms) qdldl 1.0 / CHOLMOD 1.6 ms, M3500 (7.5 ms) 3.5 / 3.9 ms, parking-garage
#: (17 ms) 9.8 / 6.9 ms, city10000 (66 ms) 37 / 19 ms, sphere2500 (254 ms) 134 / 23 ms.
CHOLMOD_MIN_SECONDS = 10e-3


class _HostFactor:
    """The per-pattern host state: the scipy CSC skeleton and the reusable factorization.

    The one-off work (importing scipy's sparse and LAPACK modules and qdldl, about 1 s in a
    fresh process; the symbolic analysis and the supernodal front maps, 0.3 s on sphere2500;
    qdldl's AMD ordering) runs in a background thread started when the solve is traced, so it
    overlaps XLA's compilation of the solve (2-core CPU: the compile of a 3D pose graph takes
    3-4 s). :meth:`solve` and the ``backend`` / ``supernodal`` attributes wait for it."""

    def __init__(self, layout: BlockLayout, backend: str):
        self.n = layout.n_cols
        self._slots: list[_Slot] = []
        self._pool: Any = None
        self._grow = threading.Lock()  # guards _slots and _pool growing
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._backend = backend
        self._batch_backend: str | None = None  # the backend of solve_batch
        self._supernodal: _Supernodal | None = None
        self._cholmod_factor: _Cholmod | None = None
        pattern = layout.gram_pattern()  # cached on the layout: computed here, not in the thread
        threading.Thread(target=self._analyse, args=(pattern, layout.var_blocks),
                         name="jaxnlls-sparse-analysis", daemon=True).start()

    def _analyse(self, pattern, var_blocks) -> None:
        try:
            import scipy.sparse as sp

            indptr, indices, _, _, nnz = pattern
            rows = np.asarray(indices, np.int64)
            cols = np.repeat(np.arange(self.n), np.diff(indptr))
            self.upper = sp.csc_matrix(
                (np.zeros(nnz), indices.astype(np.int32), indptr.astype(np.int32)),
                shape=(self.n, self.n),
            )
            self.upper.has_sorted_indices = True
            backend = self._backend
            solver = None
            if backend in ("auto", "supernodal"):
                self._supernodal = _Supernodal(indptr, indices, self.n, var_blocks)
            if backend == "auto":
                # qdldl's scalar LDLᵀ runs at ~2.5 GFlop/s (same flop count, no Python overhead)
                sn = self._supernodal
                assert sn is not None
                qdldl_s = sn.flops / 2.5e9
                if _cholmod() is not None and qdldl_s > CHOLMOD_MIN_SECONDS:
                    backend = "cholmod"
                elif sn.estimated_seconds() < 0.8 * qdldl_s:
                    backend = "supernodal"
                else:
                    backend = "qdldl"
                if backend != "supernodal":
                    self._supernodal = None
            if backend == "cholmod":
                self._cholmod_factor = _Cholmod(self.upper)
                # vmap's batches: qdldl in threads beats CHOLMOD one member after another
                # (256 members of 384 unknowns: 20 ms in one thread against 23 ms)
                if self._backend == "auto":
                    self._batch_backend = "qdldl"
            if self._supernodal is not None:
                self._supernodal._maps()
                from scipy.linalg import blas, lapack  # noqa: F401  (first import is slow)
            elif backend == "qdldl":
                try:
                    import qdldl
                except ImportError:  # pragma: no cover - depends on the install
                    backend = "scipy"
                else:
                    # AMD ordering and symbolic factorization now, on the identity with this
                    # pattern (explicit zeros are kept: later updates keep the pattern)
                    self.upper.data = (rows == cols).astype(np.float64)
                    solver = qdldl.Solver(self.upper, upper=True)
            self._backend = backend
            if self._batch_backend is None:
                self._batch_backend = backend
            self._slots = [_Slot(self.upper, solver)]
        except BaseException as e:  # re-raised by solve
            self._error = e
        finally:
            self._ready.set()

    def _wait(self) -> None:
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("sparse symbolic analysis failed") from self._error

    @property
    def backend(self) -> str:
        self._wait()
        return self._backend

    @property
    def supernodal(self) -> _Supernodal | None:
        self._wait()
        return self._supernodal

    def solve(self, data: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        """``A⁻¹ rhs`` for the matrix with upper-triangle values ``data``; NaN where singular."""
        self._wait()
        slot = self._slots[0]
        with slot.lock:
            return self._solve_in(slot, data, rhs, self._backend)

    def solve_batch(self, data: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        """:meth:`solve` for every row of ``data`` ``(B, nnz)`` and ``rhs`` ``(B, n)``.

        With qdldl the members are split over up to 4 threads (one CSC matrix and one qdldl
        solver each; qdldl releases the GIL): 2 threads on this project's 2-core machine solve
        512 systems of 384 unknowns in 30 ms against 53 ms in one."""
        self._wait()
        nb = len(rhs)
        backend = self._batch_backend
        workers = max(min(_n_cpus(), 4, nb // 8), 1) if backend == "qdldl" else 1
        with self._grow:
            while len(self._slots) < workers:
                self._slots.append(_Slot(self.upper.copy(), None))
            if workers > 1 and self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(min(_n_cpus(), 4),
                                                thread_name_prefix="jaxnlls-sparse")

        def run(w, idx):
            slot = self._slots[w]
            with slot.lock:
                return [self._solve_in(slot, data[i], rhs[i], backend) for i in idx]

        if workers == 1:
            return np.stack(run(0, range(nb)))
        parts = self._pool.map(run, range(workers), np.array_split(np.arange(nb), workers))
        return np.stack([x for part in parts for x in part])

    def _solve_in(self, slot: _Slot, data: np.ndarray, rhs: np.ndarray, backend: str):
        """One solve by ``backend`` with ``slot``'s state (held locked; the supernodal and
        CHOLMOD factors only in slot 0, the only slot when those backends are in use)."""
        b = np.asarray(rhs, np.float64)
        if not np.any(data):
            # singular, as any factorization would report; also the placeholder state of
            # the batched factor-graph loop's first iteration (graph/_restart.py)
            return np.full_like(b, np.nan)
        if backend == "supernodal":
            assert self._supernodal is not None
            if self._supernodal.factor(data):
                return self._supernodal.solve(b)
            # not positive definite: fall through to the LDLᵀ / LU of the same matrix
        elif backend == "cholmod":
            assert self._cholmod_factor is not None
            x = self._cholmod_factor.solve(data, b)
            if x is not None:
                return x
        return self._direct(slot, data, b)

    def _direct(self, slot: _Slot, data: np.ndarray, b: np.ndarray) -> np.ndarray:
        """qdldl's LDLᵀ (scipy's LU without it) of the matrix, in ``slot`` (held locked)."""
        A = slot.upper  # the pattern; only its values change
        A.data = np.asarray(data, np.float64)
        try:
            try:
                import qdldl
            except ImportError:  # pragma: no cover - depends on the install
                qdldl = None
            if self._backend != "scipy" and qdldl is not None:
                # upper=True: A is the upper triangle already; without it qdldl calls
                # scipy's triu on every update, 3x the time of the factorization itself
                if slot.solver is None:
                    slot.solver = qdldl.Solver(A, upper=True)  # raises on a zero pivot
                    return slot.solver.solve(b)
                slot.solver.update(A, upper=True)
                x = slot.solver.solve(b)
                # update() ignores qdldl's zero-pivot error and then solves with a stale,
                # half-updated factor: a wrong answer reported as success. Its D would show
                # the zero, but reading it (factors()) copies L: +85 ms on 256 graphs of 384
                # unknowns, 5 steps, against 17 µs per solve for this residual test.
                return x if _solved(A, x, b) else np.full_like(b, np.nan)
            from scipy.sparse.linalg import splu

            full = A + A.T - _diag(A)
            return splu(full.tocsc(), permc_spec="MMD_AT_PLUS_A").solve(b)
        except Exception:  # singular or not positive definite
            slot.solver = None
            return np.full_like(b, np.nan)


def _solved(upper, x: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``x`` solves ``A x = b`` for the symmetric ``A`` of upper triangle ``upper``
    (CSC, diagonal stored last in each column) to a backward error of ``√eps``: a backward-stable
    factorization gives ~eps however ill-conditioned ``A`` is, a stale factor ~1. About 17 µs
    for 384 unknowns through scipy's C kernels (47 µs through ``upper @ x + upper.T @ x``)."""
    if not np.all(np.isfinite(x)):
        return False
    from scipy.sparse import _sparsetools

    n = len(x)
    ax = np.zeros(n)
    # U x, then Uᵀ x: the CSC arrays of U read as CSR are those of Uᵀ
    _sparsetools.csc_matvec(n, n, upper.indptr, upper.indices, upper.data, x, ax)
    _sparsetools.csr_matvec(n, n, upper.indptr, upper.indices, upper.data, x, ax)
    ax -= upper.data[upper.indptr[1:] - 1] * x  # the diagonal was added twice
    ax -= b
    bound = np.abs(upper.data).max() * np.abs(x).sum() + np.abs(b).max()
    return bool(np.abs(ax).max() <= np.sqrt(np.finfo(np.float64).eps) * bound)


class _Slot:
    """The mutable state of one solve at a time: the CSC matrix whose values are set, and
    qdldl's solver (its ordering and factorization)."""

    def __init__(self, upper, solver):
        self.upper = upper
        self.solver = solver
        self.lock = threading.Lock()


def _n_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _diag(A):
    import scipy.sparse as sp

    return sp.diags(A.diagonal())


def host_factor(layout: BlockLayout, backend: str) -> _HostFactor:
    """The cached host factorization object of ``layout`` (created on first use)."""
    key = f"sparse_{backend}"
    if key not in layout._cache:
        layout._cache[key] = _HostFactor(layout, backend)
    return layout._cache[key]


def sym_csc_matvec(layout: BlockLayout, data, x):
    """``A x`` for the symmetric ``A`` whose upper triangle ``data`` is in the layout pattern."""
    indptr, indices, _, _, nnz = layout.gram_pattern()
    key = "csc_cols"
    if key not in layout._cache:
        layout._cache[key] = np.repeat(np.arange(layout.n_cols), np.diff(indptr)).astype(np.int32)
    cols = layout._cache[key]
    rows = indices
    offdiag = (rows != cols).astype(np.float32)
    y = jnp.zeros(layout.n_cols, x.dtype).at[rows].add(data * x[cols])
    y = y.at[cols].add(data * offdiag.astype(x.dtype) * x[rows])
    return y


def sparse_solve(layout: BlockLayout, data, rhs, backend: str = "auto"):
    """Solve ``A x = rhs`` (``A`` symmetric positive definite, upper triangle ``data``)."""
    backend = _backend(backend)
    fac = host_factor(layout, backend)
    out_type = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)

    def host(d, b):
        d, b = np.asarray(d), np.asarray(b)
        if b.ndim == 1:
            return fac.solve(d, b).astype(b.dtype)
        # under vmap: one call for the whole batch (leading axes, size 1 where unbatched)
        batch = np.broadcast_shapes(d.shape[:-1], b.shape[:-1])
        d = np.broadcast_to(d, batch + d.shape[-1:]).reshape(-1, d.shape[-1])
        bb = np.broadcast_to(b, batch + b.shape[-1:]).reshape(-1, b.shape[-1])
        return fac.solve_batch(d, bb).reshape(batch + b.shape[-1:]).astype(b.dtype)

    def host_buffers(ctx, out, d, b):
        del ctx
        np.asarray(out)[...] = host(d, b)

    # On CPU a buffer_callback, not pure_callback: pure_callback hands the callback its
    # operands device_put as jax Arrays, and on a machine with one CPU reading them inside the
    # callback could wait forever on the runtime that runs the callback (chordal initialization
    # of intel.g2o under `taskset -c 1`: 2 hangs in 3 runs); here they are the runtime's own
    # buffers. On a GPU those would be device memory, so pure_callback copies them to the host.
    if buffer_callback is not None and jax.default_backend() == "cpu":
        solve = buffer_callback(host_buffers, out_type, vmap_method="expand_dims")
    else:  # pragma: no cover - GPU/TPU, or jax without buffer_callback
        solve = functools.partial(jax.pure_callback, host, out_type, vmap_method="expand_dims")

    def solve_fn(_, b):
        return solve(data, b)

    return jax.lax.custom_linear_solve(
        lambda v: sym_csc_matvec(layout, data, v), rhs, solve_fn, symmetric=True
    )


class SparseCholesky(AbstractStepSolver):
    """Sparse direct solve of ``(JᵀJ + D) δ = rhs`` for factor graphs (host, CPU).

    Assembles the upper triangle of ``JᵀJ + D`` straight from the Jacobian blocks into a CSC
    pattern computed once per graph structure, then factors it on the host, with the symbolic
    analysis done once per pattern and reused by every iteration and solve: CHOLMOD's
    supernodal Cholesky when the optional extra ``jaxnlls[cholmod]`` (cvxopt, GPL-3.0) is
    installed, ``qdldl`` (scalar LDLᵀ, AMD ordering) or a block supernodal Cholesky (AMD on the
    variable graph, dense LAPACK kernels on frontal matrices; much faster than qdldl when the
    factor fills in, as on 3D pose graphs). scipy's SuperLU is the fallback when qdldl is not
    installed. A matrix that is not positive definite is refactored by qdldl's LDLᵀ (or LU); a
    singular one gives ``ok=False``. See the module docstring for the comparison that led to
    these choices.

    Under ``vmap`` one host callback per iteration solves all members in turn (see the module
    docstring); on a GPU, :class:`~jaxnlls.linear.BlockJacobiPCG` keeps everything on the device.

    Args:
        backend: ``"auto"`` (per sparsity pattern: CHOLMOD when installed and the
            factorization is not small, else supernodal or qdldl, whichever the symbolic
            analysis predicts to be faster; scipy when qdldl is absent), ``"cholmod"`` (raises
            ImportError without cvxopt), ``"supernodal"``, ``"qdldl"`` or ``"scipy"``.
    """

    backend: str = eqx.field(default="auto", static=True)

    def solve(self, lin, damping, rhs=None):
        layout = block_layout_of(lin)
        if rhs is None:
            rhs = -lin.rmv(lin.residual)
        data = lin.jac.gram_csc_data(damping)
        x = sparse_solve(layout, data, rhs, self.backend)
        ok = jnp.all(jnp.isfinite(x))
        return jnp.where(ok, x, 0.0), ok
