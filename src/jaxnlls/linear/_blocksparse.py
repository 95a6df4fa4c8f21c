"""Block-sparse Jacobians of factor graphs.

A factor graph's Jacobian is a stack of *groups* (one per factor type). Group ``g`` has
``n_g`` factors, each with a dense ``(r_g, c_g)`` block whose columns are the tangent
coordinates of the variables the factor touches. The column indices of every block are
computed once on the host (:class:`BlockLayout`) and reused by every linearization.

Rows are ordered group by group, factor by factor; columns are ordered variable type by
type (types sorted by name), variable by variable (sorted by id), tangent coordinate by
coordinate.
"""

from __future__ import annotations

import hashlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._misc import short_sum
from ._linearization import ELEMENTWISE_N, AbstractLinearization


class BlockLayout:
    """Host-side, hashable sparsity pattern of a block-sparse Jacobian (static metadata).

    Args:
        var_blocks: per variable type ``(offset, count, dim)``: its columns are
            ``offset + i·dim + [0, dim)`` for the ``i``-th variable of the type.
        slots: per group, per variable slot ``(type_index, var_index)`` where ``var_index`` is
            an ``(n_g,)`` int array of positions within that type.
        names: per group, a display name (errors and reports).

    Derived (computed once, cached on this object, never traced): column indices ``cols[g]``
    ``(n_g, c_g)``, the ``JᵀJ`` sparsity pattern (:meth:`gram_pattern`) and Schur pair lists.
    Equality is structural (a digest of all index arrays), so two graphs with the same
    structure share compiled code.
    """

    def __init__(
        self,
        var_blocks: tuple[tuple[int, int, int], ...],
        slots: tuple[tuple[tuple[int, np.ndarray], ...], ...],
        names: tuple[str, ...],
        type_names: tuple[str, ...] | list[str] = (),
    ):
        self.var_blocks = tuple(tuple(int(a) for a in vb) for vb in var_blocks)
        self.slots = tuple(
            tuple((int(t), np.ascontiguousarray(idx, dtype=np.int64)) for t, idx in group)
            for group in slots
        )
        self.names = tuple(names)
        self.type_names = tuple(type_names)
        self.n_cols = sum(n * d for _, n, d in self.var_blocks)
        cols = []
        for group in self.slots:
            parts = []
            for t, idx in group:
                off, _, d = self.var_blocks[t]
                parts.append(off + idx[:, None] * d + np.arange(d)[None, :])
            cols.append(np.concatenate(parts, axis=1).astype(np.int32))
        self.cols = tuple(cols)
        for c in self.cols:
            c.setflags(write=False)
        h = hashlib.sha1()
        h.update(repr((self.var_blocks, self.names, self.type_names)).encode())
        for group in self.slots:
            for t, idx in group:
                h.update(str(t).encode())
                h.update(idx.tobytes())
        self._digest = h.hexdigest()
        self._cache: dict[str, Any] = {}

    @property
    def n_groups(self) -> int:
        return len(self.slots)

    def group_sizes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.cols)

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, BlockLayout) and self._digest == other._digest

    def __repr__(self) -> str:
        groups = dict(zip(self.names, self.group_sizes()))
        return f"BlockLayout(n_cols={self.n_cols}, groups={groups})"

    # ----------------------------------------------------------------- host-side patterns
    def gram_pattern(self):
        """Sparsity pattern of the upper triangle of ``JᵀJ`` in CSC form (cached).

        Returns ``(indptr, indices, scatter, diag_pos, nnz)``: ``scatter[g]`` is an
        ``(n_g, c_g, c_g)`` int array mapping every entry of every per-factor ``JᵢᵀJᵢ`` block
        to its slot among the ``nnz`` stored entries (``nnz`` for entries below the diagonal,
        which are dropped); ``diag_pos`` locates the diagonal (always stored: damping lives
        there).
        """
        if "gram" in self._cache:
            return self._cache["gram"]
        n = self.n_cols
        rows_all, cols_all = [np.arange(n)], [np.arange(n)]
        for c in self.cols:
            r = np.broadcast_to(c[:, :, None], c.shape + (c.shape[1],)).reshape(-1)
            k = np.broadcast_to(c[:, None, :], c.shape + (c.shape[1],)).reshape(-1)
            rows_all.append(r)
            cols_all.append(k)
        rows = np.concatenate(rows_all).astype(np.int64)
        colz = np.concatenate(cols_all).astype(np.int64)
        upper = rows <= colz
        key = colz * n + rows  # CSC order: by column, then row
        ukeys = _sorted_unique(key[upper])
        nnz = len(ukeys)
        indices = (ukeys % n).astype(np.int32)
        colsof = ukeys // n
        indptr = np.zeros(n + 1, np.int64)
        np.add.at(indptr, colsof + 1, 1)
        indptr = np.cumsum(indptr).astype(np.int32)
        scatter = []
        for c in self.cols:
            r = c[:, :, None].astype(np.int64)
            k = c[:, None, :].astype(np.int64)
            kk = np.where(r <= k, k * n + r, -1)
            pos = np.searchsorted(ukeys, np.where(kk >= 0, kk, ukeys[0]))
            pos = np.where(kk >= 0, pos, nnz).astype(np.int32)
            scatter.append(pos)
        diag_pos = np.searchsorted(ukeys, np.arange(n, dtype=np.int64) * n + np.arange(n))
        out = (indptr, indices, tuple(scatter), diag_pos.astype(np.int32), nnz)
        self._cache["gram"] = out
        return out

    def gram_upper_plan(self) -> tuple:
        """Per group ``(I, J, pos)`` or None: the local column pairs ``I ≤ J`` of a factor's
        ``JᵢᵀJᵢ`` block and, per factor, the CSC slot of ``(min, max)`` of their global columns.

        ``(JᵀJ)[a, b] = (JᵀJ)[b, a]``, so each unordered pair is computed once and lands in the
        upper triangle whichever of its two columns comes first globally: 78 of the 144 entries
        of a 12-column between factor. None for a group where a factor names one column twice
        (its off-diagonal pair would count once instead of twice); that group keeps ``scatter``.
        """
        if "upper" in self._cache:
            return self._cache["upper"]
        indptr, indices, _, _, _ = self.gram_pattern()
        n = self.n_cols
        colsof = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        keys = colsof * n + indices  # sorted: CSC order
        plans = []
        for c in self.cols:
            cg = c.shape[1]
            I, J = np.triu_indices(cg)
            ci, cj = c[:, I].astype(np.int64), c[:, J].astype(np.int64)
            if np.any((ci == cj) & (I != J)[None, :]):
                plans.append(None)
                continue
            key = np.maximum(ci, cj) * n + np.minimum(ci, cj)
            plans.append((I, J, np.searchsorted(keys, key).astype(np.int32)))
        self._cache["upper"] = tuple(plans)
        return self._cache["upper"]

    def dense_index(self) -> np.ndarray:
        """``(n, n)`` indices into ``[CSC values of the upper triangle of JᵀJ..., 0]``: entry
        ``(a, b)`` reads the slot of ``(min, max)``, or the trailing zero where no factor couples
        the two columns (cached)."""
        if "dense" not in self._cache:
            indptr, indices, _, _, nnz = self.gram_pattern()
            index = np.full((self.n_cols, self.n_cols), nnz, np.int32)
            cols = np.repeat(np.arange(self.n_cols), np.diff(indptr))
            index[indices, cols] = index[cols, indices] = np.arange(nnz)
            index.setflags(write=False)
            self._cache["dense"] = index
        return self._cache["dense"]


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting: numpy 2's hash-based ``unique`` took 0.19 s on the 0.75 M keys
    of sphere_bignoise's ``JᵀJ`` (first-solution time), sorting and masking 0.03 s."""
    a = np.sort(a)
    keep = np.ones(a.shape, bool)
    keep[1:] = a[1:] != a[:-1]
    return a[keep]


def symmetric_blocks_csc_data(
    layout: BlockLayout, blocks, damping: Float[Array, " n"] | None, dtype
) -> Float[Array, " nnz"]:
    """Upper-triangle CSC values of ``Σᵢ Pᵢᵀ Bᵢ Pᵢ + diag(damping)`` for symmetric per-factor
    blocks ``Bᵢ`` (one ``(n_g, c_g, c_g)`` array per group, over the factor's columns): ``JᵢᵀJᵢ``
    for the normal equations, a factor's cost Hessian for the exact implicit adjoint."""
    _, _, scatter, diag_pos, nnz = layout.gram_pattern()
    data = jnp.zeros(nnz + 1, dtype)
    for B, s, plan in zip(blocks, scatter, layout.gram_upper_plan()):
        if plan is None:
            data = data.at[s.reshape(-1)].add(B.reshape(-1))
            continue
        I, J, pos = plan
        c = B.shape[2]
        vals = B.reshape(B.shape[0], c * c)[:, I * c + J]
        data = data.at[pos.reshape(-1)].add(vals.reshape(-1))
    if damping is not None:
        data = data.at[diag_pos].add(damping)
    return data[:nnz]


class BlockSparseJacobian(eqx.Module):
    """``J`` as dense per-factor blocks plus host-side column indices.

    Attributes:
        blocks: per group an ``(n_g, r_g, c_g)`` array (traced).
        layout: the static :class:`BlockLayout` (column indices, variable blocks).
    """

    blocks: tuple[Float[Array, "n r c"], ...]
    layout: BlockLayout = eqx.field(static=True)

    @property
    def shape(self) -> tuple[int, int]:
        m = sum(b.shape[0] * b.shape[1] for b in self.blocks)
        return (m, self.layout.n_cols)

    @property
    def dtype(self):
        return self.blocks[0].dtype

    def _split_rows(self, u):
        out, start = [], 0
        for b in self.blocks:
            size = b.shape[0] * b.shape[1]
            out.append(u[start : start + size].reshape(b.shape[0], b.shape[1]))
            start += size
        return out

    def mv(self, v: Float[Array, " n"]) -> Float[Array, " m"]:
        """``J v``."""
        outs = [
            jnp.einsum("nrc,nc->nr", b, v[c]).reshape(-1)
            for b, c in zip(self.blocks, self.layout.cols)
        ]
        return jnp.concatenate(outs) if len(outs) > 1 else outs[0]

    def rmv(self, u: Float[Array, " m"]) -> Float[Array, " n"]:
        """``Jᵀ u`` (scatter-add of the per-factor products)."""
        out = jnp.zeros(self.layout.n_cols, jnp.result_type(u, self.dtype))
        for b, c, ug in zip(self.blocks, self.layout.cols, self._split_rows(u)):
            out = out.at[c.reshape(-1)].add(jnp.einsum("nrc,nr->nc", b, ug).reshape(-1))
        return out

    def gram_diag(self) -> Float[Array, " n"]:
        """``diag(JᵀJ)``."""
        out = jnp.zeros(self.layout.n_cols, self.dtype)
        for b, c in zip(self.blocks, self.layout.cols):
            out = out.at[c.reshape(-1)].add(short_sum(b * b, axis=1).reshape(-1))
        return out

    def gram_block_diag(self) -> tuple[Float[Array, "n_t d d"], ...]:
        """Diagonal blocks of ``JᵀJ``, one ``(count, dim, dim)`` array per variable type."""
        outs = [jnp.zeros((n, d, d), self.dtype) for _, n, d in self.layout.var_blocks]
        for b, slots in zip(self.blocks, self.layout.slots):
            start = 0
            for t, idx in slots:
                d = self.layout.var_blocks[t][2]
                bk = b[:, :, start : start + d]
                outs[t] = outs[t].at[idx].add(jnp.einsum("nri,nrj->nij", bk, bk))
                start += d
        return tuple(outs)

    def gram_csc_data(self, damping: Float[Array, " n"] | None = None) -> Float[Array, " nnz"]:
        """Values of the upper triangle of ``JᵀJ + diag(damping)`` in the layout's CSC pattern."""
        blocks = []
        for b in self.blocks:
            if b.shape[2] <= ELEMENTWISE_N:  # tiny batched GEMMs are slow on XLA:CPU (gram_t)
                blocks.append(jnp.sum(b[:, :, :, None] * b[:, :, None, :], axis=1))
            else:
                blocks.append(jnp.einsum("nri,nrj->nij", b, b))
        return symmetric_blocks_csc_data(self.layout, blocks, damping, self.dtype)

    def gram_dense(self) -> Float[Array, "n n"]:
        """Dense ``JᵀJ``: the CSC values of its upper triangle (:meth:`gram_csc_data`) gathered
        into both triangles, so the dense ``J`` is never formed. Under ``vmap`` (4,096 SE(2)
        graphs of 30 unknowns) a scatter into a dense ``J`` followed by a batch of tiny GEMMs
        took 1.5x longer per solve; a gather-sum straight from the block products, 6x longer."""
        data = jnp.concatenate([self.gram_csc_data(), jnp.zeros(1, self.dtype)])
        return data[self.layout.dense_index()]

    def to_dense(self) -> Float[Array, "m n"]:
        """Dense ``J`` (tests and small problems)."""
        m, n = self.shape
        out = jnp.zeros((m, n), self.dtype)
        row = 0
        for b, c in zip(self.blocks, self.layout.cols):
            ng, rg, cg = b.shape
            rows = row + np.arange(ng * rg).reshape(ng, rg)
            out = out.at[rows[:, :, None], c[:, None, :]].add(b)
            row += ng * rg
        return out

    def to_bcoo(self):
        """``J`` as a :class:`jax.experimental.sparse.BCOO` matrix (duplicates summed on use)."""
        from jax.experimental import sparse

        m, n = self.shape
        rows_l, cols_l, data_l, row = [], [], [], 0
        for b, c in zip(self.blocks, self.layout.cols):
            ng, rg, cg = b.shape
            rows = row + np.arange(ng * rg).reshape(ng, rg)
            rows_l.append(np.broadcast_to(rows[:, :, None], (ng, rg, cg)).reshape(-1))
            cols_l.append(np.broadcast_to(c[:, None, :], (ng, rg, cg)).reshape(-1))
            data_l.append(b.reshape(-1))
            row += ng * rg
        idx = np.stack([np.concatenate(rows_l), np.concatenate(cols_l)], axis=1)
        return sparse.BCOO((jnp.concatenate(data_l), jnp.asarray(idx)), shape=(m, n))


class BlockSparseLinearization(AbstractLinearization):
    """Residual plus :class:`BlockSparseJacobian`: what the step solvers see for a graph."""

    residual: Float[Array, " m"]
    jac: BlockSparseJacobian

    def mv(self, v):
        return self.jac.mv(v)

    def rmv(self, u):
        return self.jac.rmv(u)

    def gram_diag(self):
        return self.jac.gram_diag()

    def as_matrix(self):
        return self.jac.to_dense()

    def gram(self):
        """Dense ``JᵀJ`` (see :meth:`BlockSparseJacobian.gram_dense`)."""
        return self.jac.gram_dense()

    @property
    def tangent_size(self) -> int:
        return self.jac.layout.n_cols


def block_layout_of(lin: Any) -> BlockLayout:
    """The layout of a block-sparse linearization (raises a clear error otherwise)."""
    if not isinstance(lin, BlockSparseLinearization):
        raise TypeError(
            f"this step solver needs a factor-graph (block-sparse) linearization, got "
            f"{type(lin).__name__}"
        )
    return lin.jac.layout

