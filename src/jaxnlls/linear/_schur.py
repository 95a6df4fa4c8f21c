"""Schur-complement elimination of one variable type (landmarks in bundle adjustment).

With the columns split into *reduced* variables ``r`` (cameras, poses) and *eliminated*
variables ``e`` (points), and no factor touching two eliminated variables, the damped normal
matrix is

    [[A, B], [Bᵀ, C]]   with C block diagonal (one d_e × d_e block per point),

so ``(A - B C⁻¹ Bᵀ) δ_r = b_r - B C⁻¹ b_e`` and ``δ_e = C⁻¹ (b_e - Bᵀ δ_r)``. The reduced
camera system is formed densely (``n_r ≤`` a few thousand) and factored by Cholesky; the
``B C⁻¹ Bᵀ`` term is accumulated from pairs of factors that observe the same point (the pair
list is computed once per graph structure on the host).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._blocksparse import BlockLayout, block_layout_of
from ._dense import psd_solve
from ._step import AbstractStepSolver


class _SchurPlan:
    """Host-side index plan for eliminating variable type ``e`` (cached per layout)."""

    def __init__(self, layout: BlockLayout, e: int):
        off_e, n_e, d_e = layout.var_blocks[e]
        n = layout.n_cols
        is_e = np.zeros(n, bool)
        is_e[off_e : off_e + n_e * d_e] = True
        red_cols = np.nonzero(~is_e)[0]
        n_red = len(red_cols)
        red_map = np.full(n, n_red, np.int64)
        red_map[red_cols] = np.arange(n_red)
        self.e, self.off_e, self.n_e, self.d_e = e, off_e, n_e, d_e
        self.n_red, self.red_cols = n_red, red_cols
        self.groups = []  # per group: (red_pos, red_idx (n, c_red), e_pos or None, e_var or None)
        obs_red, obs_var, obs_slices = [], [], []
        start = 0
        c_red_max = 0
        for g, (slots, cols) in enumerate(zip(layout.slots, layout.cols)):
            e_slots = [k for k, (t, _) in enumerate(slots) if t == e]
            if len(e_slots) > 1:
                raise ValueError(
                    f"Schur elimination: factor group {layout.names[g]} touches two eliminated "
                    f"{layout.type_names[e] if layout.type_names else e} variables; the "
                    "eliminated block would not be block-diagonal"
                )
            dims = [layout.var_blocks[t][2] for t, _ in slots]
            starts = np.concatenate([[0], np.cumsum(dims)])
            if e_slots:
                k = e_slots[0]
                e_pos = np.arange(starts[k], starts[k + 1])
                red_pos = np.setdiff1d(np.arange(starts[-1]), e_pos)
                e_var = slots[k][1]
            else:
                e_pos, e_var = None, None
                red_pos = np.arange(starts[-1])
            red_idx = red_map[cols[:, red_pos]] if len(red_pos) else np.zeros((len(cols), 0), int)
            self.groups.append((red_pos, red_idx.astype(np.int32), e_pos, e_var))
            if e_slots and len(red_pos):
                obs_red.append(red_idx)
                obs_var.append(e_var)
                obs_slices.append((g, start, start + len(cols)))
                start += len(cols)
                c_red_max = max(c_red_max, len(red_pos))
        self.c_red_max = c_red_max
        self.obs_slices = obs_slices
        if obs_var:
            pad = [
                np.pad(r, ((0, 0), (0, c_red_max - r.shape[1])), constant_values=n_red)
                for r in obs_red
            ]
            self.obs_red = np.concatenate(pad).astype(np.int32)
            self.obs_var = np.concatenate(obs_var).astype(np.int32)
            order = np.argsort(self.obs_var, kind="stable")
            sv = self.obs_var[order]
            uniq, first, counts = np.unique(sv, return_index=True, return_counts=True)
            k_of = np.repeat(counts, counts)  # for each sorted obs, the count of its var
            s_of = np.repeat(first, counts)  # and the start of its var's run
            total = int(np.sum(k_of))
            pi = np.repeat(np.arange(len(sv)), k_of)
            base = np.repeat(np.cumsum(k_of) - k_of, k_of)
            pj = s_of[pi] + (np.arange(total) - base)
            self.pair_i = order[pi].astype(np.int32)
            self.pair_j = order[pj].astype(np.int32)
        else:
            self.obs_red = np.zeros((0, 0), np.int32)
            self.obs_var = np.zeros((0,), np.int32)
            self.pair_i = self.pair_j = np.zeros((0,), np.int32)


def schur_plan(layout: BlockLayout, e: int) -> _SchurPlan:
    key = f"schur_{e}"
    if key not in layout._cache:
        layout._cache[key] = _SchurPlan(layout, e)
    return layout._cache[key]


def _resolve(layout: BlockLayout, eliminate: Any) -> int:
    name = eliminate if isinstance(eliminate, str) else None
    if name is None:
        tn = getattr(eliminate, "type_name", None)
        name = tn() if callable(tn) else str(eliminate)
    for i, t in enumerate(layout.type_names):
        if t == name or t.rsplit(".", 1)[-1] == name:
            return i
    raise KeyError(f"SchurComplement: no variable type {name!r} in the graph ({layout.type_names})")


def schur_solve(lin, damping, rhs, eliminate: Any):
    """Solve ``(JᵀJ + diag(damping)) δ = rhs`` by eliminating variable type ``eliminate``."""
    layout = block_layout_of(lin)
    plan = schur_plan(layout, _resolve(layout, eliminate))
    dtype = rhs.dtype
    n_red, n_e, d_e = plan.n_red, plan.n_e, plan.d_e
    S = jnp.zeros((n_red + 1, n_red + 1), dtype)
    C = jnp.zeros((n_e, d_e, d_e), dtype)
    Ws = []
    for g, (J, (red_pos, red_idx, e_pos, e_var)) in enumerate(zip(lin.jac.blocks, plan.groups)):
        Jr = J[:, :, red_pos] if len(red_pos) else None
        if Jr is not None:
            blk = jnp.einsum("nki,nkj->nij", Jr, Jr)
            S = S.at[red_idx[:, :, None], red_idx[:, None, :]].add(blk)
        if e_pos is not None:
            Je = J[:, :, e_pos]
            C = C.at[e_var].add(jnp.einsum("nki,nkj->nij", Je, Je))
            if Jr is not None:
                W = jnp.einsum("nki,nkj->nij", Jr, Je)
                W = jnp.pad(W, ((0, 0), (0, plan.c_red_max - W.shape[1]), (0, 0)))
                Ws.append(W)
    d_r = damping[plan.red_cols]
    d_e_vec = damping[plan.off_e : plan.off_e + n_e * d_e].reshape(n_e, d_e)
    b_r = rhs[plan.red_cols]
    b_e = rhs[plan.off_e : plan.off_e + n_e * d_e].reshape(n_e, d_e)
    C = C + jax.vmap(jnp.diag)(d_e_vec)
    scale = jnp.maximum(jnp.max(jnp.abs(C), axis=(1, 2)), jnp.finfo(dtype).tiny)
    Cinv = jnp.linalg.inv(C + (10 * jnp.finfo(dtype).eps) * scale[:, None, None] * jnp.eye(d_e, dtype=dtype)[None])
    y_e = jnp.einsum("nij,nj->ni", Cinv, b_e)
    S = S[:n_red, :n_red] + jnp.diag(d_r)
    bs = b_r
    if Ws:
        W = jnp.concatenate(Ws) if len(Ws) > 1 else Ws[0]  # (n_obs, c_red_max, d_e)
        V = jnp.einsum("oid,ode->oie", W, Cinv[plan.obs_var])
        PI, PJ = plan.pair_i, plan.pair_j
        contrib = jnp.einsum("pid,pjd->pij", V[PI], W[PJ])
        Sfull = jnp.zeros((n_red + 1, n_red + 1), dtype)
        Sfull = Sfull.at[plan.obs_red[PI][:, :, None], plan.obs_red[PJ][:, None, :]].add(contrib)
        S = S - Sfull[:n_red, :n_red]
        By = jnp.zeros(n_red + 1, dtype).at[plan.obs_red].add(
            jnp.einsum("oid,od->oi", W, y_e[plan.obs_var])
        )
        bs = b_r - By[:n_red]
    S = 0.5 * (S + S.T)
    x_r, ok = psd_solve(S, bs)
    t = b_e
    if Ws:
        xr_pad = jnp.concatenate([x_r, jnp.zeros(1, dtype)])
        Btx = jnp.einsum("oid,oi->od", W, xr_pad[plan.obs_red])
        t = t - jnp.zeros((n_e, d_e), dtype).at[plan.obs_var].add(Btx)
    x_e = jnp.einsum("nij,nj->ni", Cinv, t)
    x = jnp.zeros(layout.n_cols, dtype)
    x = x.at[plan.red_cols].set(x_r)
    x = x.at[plan.off_e : plan.off_e + n_e * d_e].set(x_e.reshape(-1))
    ok = ok & jnp.all(jnp.isfinite(x))
    return x, ok


class SchurComplement(AbstractStepSolver):
    """Eliminate one variable type (e.g. BA points) by the Schur complement, then solve the
    dense reduced system (e.g. cameras) by Cholesky.

    Requirements: no factor touches two variables of the eliminated type; the reduced
    system (all other variables) is small enough to be dense (up to a few thousand tangent
    coordinates). Pure JAX (runs on any device, vmaps).

    Args:
        eliminate: the ``Var`` subclass (or its name) to eliminate.
    """

    eliminate: Any = eqx.field(static=True)

    def solve(self, lin, damping, rhs=None):
        if rhs is None:
            rhs = -lin.rmv(lin.residual)
        x, ok = schur_solve(lin, damping, rhs, self.eliminate)
        return jnp.where(ok, x, 0.0), ok
