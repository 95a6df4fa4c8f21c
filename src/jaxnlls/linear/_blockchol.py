"""Block Cholesky of a small factor graph's ``JᵀJ + D`` in batch-last layout, for ``vmap``.

Under ``vmap`` over thousands of same-structure graphs (4,096 SE(2) graphs of 30 unknowns), the
dense path assembles a ``(B, 30, 30)`` ``JᵀJ`` and factors it by batched LAPACK, one tiny
factorization per member, every structural zero included. Here the batch axis is moved last, so
every operation works on contiguous batch-long vectors (SIMD across graphs), and only the blocks
of the graph's pattern are touched: ``JᵢᵀJⱼ`` products per factor, summed into the nonzero
``(dᵢ, dⱼ)`` variable blocks, a left-looking block Cholesky over the symbolic fill pattern
(computed once per layout on the host), two block substitutions.

The elimination order is the layout's column order, and the pivot rule is that of
:func:`jaxnlls.linear._dense._loop_psd_solve`: a pivot below ``n·eps`` times its diagonal entry
of ``JᵀJ + D`` marks a singular direction whose solution component is zero. So the batched
answer is the unbatched dense solve's, up to rounding, singular members included.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._misc import short_sum
from ._blocksparse import BlockLayout
from ._dense import psd_solve

#: Largest plan (block products in the factorization) that is unrolled; beyond it the batched
#: LAPACK path is used. The program grows with the plan, and is compiled once per solve loop
#: (LM, its restart, the backward solve). 4,096 10-pose SE(2) loops with 2 chords (51 products):
#: the solve 1.4x faster for about 3 s more compile; 256 generated 16-pose graphs (74): 1.25x
#: faster for 8.7 s more compile, 32-pose ones (454): 1.5x for 28 s more.
MAX_BLOCK_UPDATES = 64


class BlockCholeskyPlan:
    """Host-side symbolic analysis of a layout's ``JᵀJ`` at the level of variables.

    Attributes:
        offsets, dims: per variable (layout column order), its first column and tangent size.
        lower: per variable ``j``, the sorted variables ``i > j`` with ``L[i, j] ≠ 0`` (fill
            included).
        terms: per stored block ``(i, j)`` (``i ≥ j``), the factor products that sum to it:
            ``(group, factor, slot_i, slot_j)``.
        n_updates: block products in the factorization (the size of the unrolled program).
    """

    def __init__(self, layout: BlockLayout):
        offsets, dims, first = [], [], []
        for off, count, dim in layout.var_blocks:
            first.append(len(offsets))
            offsets += [off + k * dim for k in range(count)]
            dims += [dim] * count
        self.offsets, self.dims, self.n = tuple(offsets), tuple(dims), layout.n_cols
        assert list(offsets) == sorted(offsets), "variables are expected in column order"
        self.slot_dims = tuple(tuple(layout.var_blocks[t][2] for t, _ in slots)
                               for slots in layout.slots)
        nv = len(offsets)
        adj: list[set[int]] = [set() for _ in range(nv)]
        terms: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        for g, slots in enumerate(layout.slots):
            var = np.stack([first[t] + idx for t, idx in slots], axis=1)  # (n_g, slots)
            for k, row in enumerate(var.tolist()):
                for s, vs in enumerate(row):
                    for t, vt in enumerate(row):
                        if vs >= vt:  # the lower block; (t, s) gives its transpose
                            terms.setdefault((vs, vt), []).append((g, k, s, t))
                        if vs != vt:
                            adj[vs].add(vt)
        self.terms = terms
        # elimination game in the natural order: the neighbours of j that come later form L's
        # column j, and become a clique
        lower: list[list[int]] = []
        for j in range(nv):
            later = sorted(i for i in adj[j] if i > j)
            lower.append(later)
            for a in later:
                adj[a].update(b for b in later if b != a)
        self.lower = tuple(tuple(c) for c in lower)
        rows: list[list[int]] = [[] for _ in range(nv)]  # rows[i]: the j < i with L[i, j] ≠ 0
        for j, col in enumerate(self.lower):
            for i in col:
                rows[i].append(j)
        self.rows = tuple(tuple(r) for r in rows)
        self.n_updates = sum(len(self._common(i, j)) for j in range(nv) for i in (j, *lower[j]))

    def _common(self, i: int, j: int) -> list[int]:
        """The ``k < j`` with both ``L[i, k]`` and ``L[j, k]`` stored."""
        return sorted(set(self.rows[i]) & set(self.rows[j]))


def block_cholesky_plan(layout: BlockLayout) -> BlockCholeskyPlan:
    """The layout's plan, computed once and cached on the layout (host metadata)."""
    if "block_cholesky" not in layout._cache:
        layout._cache["block_cholesky"] = BlockCholeskyPlan(layout)
    return layout._cache["block_cholesky"]


def _mm_t(X, Y):
    """``X Yᵀ`` for ``(a, k, B)`` and ``(b, k, B)``: broadcast and sum over the short ``k`` (a
    ``dot_general`` would move the batch axis first)."""
    return short_sum(X[:, None, :, :] * Y[None, :, :, :], axis=2)


def _chol_block(S, diag0, eps_n, tiny):
    """Cholesky of one ``(d, d, B)`` diagonal block with the safe-pivot rule; returns ``L`` (zero
    columns where a pivot failed) as a list of rows of ``(B,)`` vectors and the pivot flags."""
    d = S.shape[0]
    L = [[None] * d for _ in range(d)]
    good = []
    for j in range(d):
        p = S[j, j] - sum((L[j][k] * L[j][k] for k in range(j)), 0.0)
        ok = p > eps_n * jnp.maximum(diag0[j], tiny)
        ljj = jnp.sqrt(jnp.where(ok, p, 1.0))
        inv = jnp.where(ok, 1.0 / ljj, 0.0)
        L[j][j] = jnp.where(ok, ljj, 0.0)
        good.append(ok)
        for i in range(j + 1, d):
            L[i][j] = (S[i, j] - sum((L[i][k] * L[j][k] for k in range(j)), 0.0)) * inv
    return L, good


def _inv_diag(Ljj, good):
    """``1 / L[j, j]`` where the pivot held, else 0 (that solution component is zero)."""
    return [jnp.where(g, 1.0 / jnp.where(g, Ljj[j][j], 1.0), 0.0) for j, g in enumerate(good)]


def _right_solve_t(S, Ljj, inv):
    """``S Lⱼⱼ⁻ᵀ`` for ``S`` ``(a, d, B)``, column by column (zero columns at failed pivots)."""
    cols = []
    for j in range(len(inv)):
        c = S[:, j]
        for k in range(j):
            c = c - cols[k] * Ljj[j][k][None]
        cols.append(c * inv[j][None])
    return jnp.stack(cols, axis=1)


def _factor_and_solve(plan: BlockCholeskyPlan, blocks, damping, rhs):
    """Batch-last core: ``blocks[g]`` ``(n_g, r_g, c_g, B)``, ``damping`` and ``rhs`` ``(n, B)``.
    Returns ``x`` ``(n, B)`` and ``ok`` ``(B,)``."""
    dtype = rhs.dtype
    eps_n = plan.n * jnp.finfo(dtype).eps
    tiny = jnp.finfo(dtype).tiny
    # per factor group and ordered slot pair, the products JₛᵀJₜ of every factor: (n_g, dₛ, dₜ, B)
    starts = [np.concatenate([[0], np.cumsum(d)]).tolist() for d in plan.slot_dims]
    prods: dict[tuple[int, int, int], Any] = {}

    def product(g, s, t):
        if (g, s, t) not in prods:
            if (g, t, s) in prods:
                prods[(g, s, t)] = jnp.swapaxes(prods[(g, t, s)], 1, 2)
            else:
                Jg, st = blocks[g], starts[g]
                Js, Jt = Jg[:, :, st[s]:st[s + 1]], Jg[:, :, st[t]:st[t + 1]]
                prods[(g, s, t)] = short_sum(Js[:, :, :, None] * Jt[:, :, None, :], axis=1)
        return prods[(g, s, t)]

    def assembled(i, j):
        out = None
        for g, k, s, t in plan.terms.get((i, j), ()):
            p = product(g, s, t)[k]
            out = p if out is None else out + p
        if i == j:
            dmp = damping[plan.offsets[i]:plan.offsets[i] + plan.dims[i]]
            eye = jnp.eye(plan.dims[i], dtype=dtype)[:, :, None] * dmp[:, None, :]
            out = eye if out is None else out + eye
        return out

    L: dict[tuple[int, int], Any] = {}
    chol, invs, goods = [], [], []
    for j, dj in enumerate(plan.dims):
        Ajj = assembled(j, j)
        diag0 = [Ajj[a, a] for a in range(dj)]
        S = Ajj
        for k in plan._common(j, j):
            S = S - _mm_t(L[(j, k)], L[(j, k)])
        Ljj, good = _chol_block(S, diag0, eps_n, tiny)
        inv = _inv_diag(Ljj, good)
        chol.append(Ljj)
        invs.append(inv)
        goods += good
        for i in plan.lower[j]:
            S = assembled(i, j)
            if S is None:
                S = jnp.zeros((plan.dims[i], dj) + rhs.shape[1:], dtype)
            for k in plan._common(i, j):
                S = S - _mm_t(L[(i, k)], L[(j, k)])
            L[(i, j)] = _right_solve_t(S, Ljj, inv)
    # L y = b, then Lᵀ x = y, block by block
    nv = len(plan.dims)
    y = [None] * nv
    for i in range(nv):
        o, d = plan.offsets[i], plan.dims[i]
        s = rhs[o:o + d]
        for k in plan.rows[i]:
            s = s - short_sum(L[(i, k)] * y[k][None], axis=1)
        y[i] = _lower_solve(chol[i], invs[i], s)
    x = [None] * nv
    for j in reversed(range(nv)):
        s = y[j]
        for i in plan.lower[j]:
            s = s - short_sum(L[(i, j)] * x[i][:, None], axis=0)
        x[j] = _upper_solve(chol[j], invs[j], s)
    # the variables are in column order (offsets increase), so x stacks as the columns do
    return jnp.concatenate(x, axis=0), jnp.all(jnp.stack(goods), axis=0)


def _lower_solve(Ljj, inv, s):
    d = len(inv)
    y = []
    for a in range(d):
        v = s[a] - sum((Ljj[a][k] * y[k] for k in range(a)), 0.0)
        y.append(v * inv[a])
    return jnp.stack(y)


def _upper_solve(Ljj, inv, s):
    d = len(inv)
    x = [None] * d
    for a in reversed(range(d)):
        v = s[a] - sum((Ljj[k][a] * x[k] for k in range(a + 1, d)), 0.0)
        x[a] = v * inv[a]
    return jnp.stack(x)


def graph_psd_solve(lin, damping, rhs):
    """``(JᵀJ + diag(damping)) x = rhs`` for a factor graph's block-sparse linearization.

    Unbatched, or when the layout's plan is over ``MAX_BLOCK_UPDATES``: the dense ``JᵀJ`` and
    :func:`psd_solve`. Under ``vmap`` with a small plan (a ``custom_vmap`` rule): the batch-last
    block Cholesky of this module, differentiated implicitly, as :func:`psd_solve` is, through
    ``lax.custom_linear_solve`` with ``v ↦ Jᵀ(J v) + damping·v``.
    """
    layout = lin.jac.layout

    def dense(blocks, damping, rhs, cols):
        # the column indices come in as arguments: custom_vmap refuses a function that closes
        # over arrays, which inside a vmapped while_loop become batched constants
        A = jnp.diag(damping)
        for b, c in zip(blocks, cols):
            A = A.at[c[:, :, None], c[:, None, :]].add(jnp.einsum("nri,nrj->nij", b, b))
        return psd_solve(A, rhs, jnp.diagonal(A))

    plan = block_cholesky_plan(layout)
    if plan.n_updates <= MAX_BLOCK_UPDATES:
        solve = jax.custom_batching.custom_vmap(dense)

        @solve.def_vmap
        def _rule(axis_size, in_batched, blocks, damping, rhs, cols):
            blocks_b, damping_b, rhs_b, _ = in_batched

            def last(a, batched):
                if batched:
                    return jnp.moveaxis(a, 0, -1)
                return jnp.broadcast_to(a[..., None], a.shape + (axis_size,))

            args = (tuple(last(b, f) for b, f in zip(blocks, blocks_b)),
                    last(damping, damping_b), last(rhs, rhs_b))
            # materialize the transposes: fused into every reader, the strided gathers cost
            # more than one pass (session 12's feasibility script: 25 against 32 ms)
            args = jax.lax.optimization_barrier(args)
            x, ok = _factor_and_solve(plan, *args)
            return (x.T, ok), (True, True)
    else:  # the batched LAPACK path (``psd_solve``'s vmap rule) on the CSC-assembled JᵀJ
        return psd_solve(lin.gram() + jnp.diag(damping), rhs, lin.gram_diag() + damping)

    def matvec(v):
        return lin.rmv(lin.mv(v)) + damping * v

    cols = tuple(jnp.asarray(c) for c in layout.cols)
    return jax.lax.custom_linear_solve(
        matvec, rhs, lambda _, b: solve(lin.jac.blocks, damping, b, cols), symmetric=True,
        has_aux=True)
