"""``FactorGraph.build`` (host) and the traced evaluation of residuals and Jacobian blocks."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..linear._blocksparse import (
    BlockLayout,
    BlockSparseJacobian,
    BlockSparseLinearization,
    symmetric_blocks_csc_data,
)
from ..manifold import is_manifold
from ._factor import Factor, FactorType, _is_data, _SlotValues
from ._var import Var, VarValues, _Ids, _slot_var


class _Data:
    """Marker for a data leaf in a group's args template."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<data>"


_DATA = _Data()


def _is_var(x) -> bool:
    return isinstance(x, Var)


def _leaf_key(leaf) -> Any:
    if isinstance(leaf, Var):
        return ("var", type(leaf))
    if _is_data(leaf):
        a = leaf if isinstance(leaf, jax.Array | np.ndarray) else np.asarray(leaf)
        return ("data", jnp.result_type(a).name)
    return ("static", leaf)


class FactorGroup:
    """All factors of one type and argument structure, stacked (host-side description).

    Attributes:
        kind: the :class:`FactorType` (residual function, Jacobian mode).
        name: display name (``kind.name``, with a ``#k`` suffix when one kind has several groups).
        template: the args pytree with ``Var`` leaves replaced by slot variables, data leaves by
            a marker and static (non-array) leaves kept.
        slot_types: the ``Var`` type of each slot (slots are the ``Var`` leaves in order).
        size: number of factors in the group.
        has_loss: whether a robust loss is attached (its leaves are in the group's data).
        loss_axes: per leaf of the loss (``jax.tree.leaves`` order), ``0`` for a per-factor
            leaf (leading axis ``size``, mapped with the factor data) or ``None`` for a leaf
            shared by every factor; ``None`` without a loss.
    """

    def __init__(self, kind, name, template, slot_types, size, has_loss, key, loss_axes=None):
        self.kind: FactorType = kind
        self.name: str = name
        self.template = template
        self.slot_types: tuple[type[Var], ...] = slot_types
        self.size: int = size
        self.has_loss: bool = has_loss
        self.loss_axes: tuple[int | None, ...] | None = loss_axes
        self._key = key
        self._residual_dims: dict = {}  # see _residual_dim

    def __hash__(self) -> int:
        return hash((self.name, self.size))

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, FactorGroup)
            and self._key == other._key
            and self.size == other.size
            and self.name == other.name
        )

    def __repr__(self) -> str:
        return f"FactorGroup({self.name}, n={self.size})"

    def args(self, data_args: Any) -> tuple:
        """Merge the per-factor data into the template (inside the vmapped residual)."""
        return jax.tree.map(
            lambda t, d: d if t is _DATA else t,
            self.template,
            data_args,
            is_leaf=lambda x: _is_var(x) or x is _DATA or x is None,
        )


class GraphStructure:
    """Static structure of a factor graph: variable types and ids, factor groups, layout.

    Built once on the host by :meth:`FactorGraph.build`; hashable, with structural equality,
    so every graph with the same structure reuses the same compiled solve (and the same
    sparse symbolic factorization, cached on the :class:`~jaxnlls.linear.BlockLayout`).

    Attributes:
        var_types: variable types, sorted by name (the column order).
        var_ids: per type, the sorted unique ids used by the factors.
        groups: the :class:`FactorGroup` s, sorted by name (the row order).
        layout: the :class:`~jaxnlls.linear.BlockLayout` (column indices of every block).
    """

    def __init__(self, var_types, var_ids, groups, layout: BlockLayout, anchor=None):
        self.var_types: tuple[type[Var], ...] = var_types
        self.var_ids: tuple[_Ids, ...] = var_ids
        self.groups: tuple[FactorGroup, ...] = groups
        self.layout = layout
        self.anchor: Var | None = anchor
        self.anchor_cols: np.ndarray | None = None
        self.free_mask: np.ndarray | None = None
        if anchor is not None:
            self.anchor_cols = self.columns_of(anchor).reshape(-1)
            mask = np.ones(layout.n_cols)
            mask[self.anchor_cols] = 0.0
            self.free_mask = mask
        h = hashlib.sha1(layout._digest.encode())
        h.update(repr([t.type_name() for t in var_types]).encode())
        self._digest = h.hexdigest()

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, GraphStructure)
            and self._digest == other._digest
            and self.var_types == other.var_types
            and self.groups == other.groups
        )

    @property
    def tangent_size(self) -> int:
        return self.layout.n_cols

    def type_index(self, t: type[Var]) -> int:
        for i, ti in enumerate(self.var_types):
            if ti is t:
                return i
        raise KeyError(f"the graph has no variables of type {t.__name__}")

    def columns_of(self, var: Var) -> np.ndarray:
        """Tangent column indices of ``var`` (shape ``ids.shape + (tangent_dim,)``)."""
        i = self.type_index(type(var))
        ids = self.var_ids[i].array
        pos = np.searchsorted(ids, var.id)
        if np.any(pos >= len(ids)) or np.any(ids[np.minimum(pos, len(ids) - 1)] != var.id):
            raise KeyError(f"{var!r} is not a variable of this graph")
        off, _, d = self.layout.var_blocks[i]
        return off + np.asarray(pos)[..., None] * d + np.arange(d)

    def __repr__(self) -> str:
        vt = {t.__name__: len(ids) for t, ids in zip(self.var_types, self.var_ids)}
        gs = {g.name: g.size for g in self.groups}
        return f"GraphStructure(vars={vt}, factors={gs}, tangent={self.tangent_size})"


def _stack(chunks: list) -> Any:
    if all(isinstance(c, np.ndarray) for c in chunks):
        return np.concatenate(chunks, axis=0) if len(chunks) > 1 else chunks[0]
    return jnp.concatenate([jnp.asarray(c) for c in chunks], axis=0)


def _as_batch(leaf, batched: bool):
    if isinstance(leaf, jax.Array):
        return leaf if batched else leaf[None]
    a = np.asarray(leaf)
    return a if batched else a[None]


def _loss_spec(f: Factor) -> tuple[Any, tuple[int | None, ...] | None]:
    """``(grouping key, per-leaf axes)`` of a factor's robust loss.

    On a batched factor of ``n``, a loss leaf with leading axis ``n`` holds one value per
    factor: it is mapped with the factor data (axis ``0``) and stacked across the group, so
    its values are not part of the key. Scalar leaves (and every leaf of a single factor) are
    shared by the group (axis ``None``) and keyed by value.
    """
    if f.loss is None:
        return None, None
    with_path, l_def = jax.tree_util.tree_flatten_with_path(f.loss)
    key_leaves, axes = [], []
    for path, v in with_path:
        shape = tuple(np.shape(v))
        if f.batch is not None and shape:
            if shape[0] != f.batch:
                raise ValueError(
                    f"factor {f.kind.name}: batched over {f.batch} factors, so each array leaf "
                    f"of its robust loss must be a scalar (shared) or have leading axis "
                    f"{f.batch} (one per factor); loss{jax.tree_util.keystr(path)} has shape "
                    f"{shape}"
                )
            key_leaves.append(("per_factor", shape[1:], np.result_type(v).name))
            axes.append(0)
        else:
            key_leaves.append(("shared", shape, np.asarray(v).tobytes()))
            axes.append(None)
    return (l_def, tuple(key_leaves)), tuple(axes)


def _choose_anchor(gauge, var_types, var_ids, groups) -> Var | None:
    if gauge is None:
        return None
    if isinstance(gauge, Var):
        if gauge.id.ndim != 0:
            raise ValueError(f"gauge must be a single variable, got {gauge!r}")
        if type(gauge) not in var_types:
            raise KeyError(f"gauge {gauge!r}: no variable of that type in the graph")
        return gauge
    if gauge != "auto":
        raise ValueError(f"gauge must be 'auto', None or a Var, got {gauge!r}")
    if any(len(g.slot_types) == 1 for g in groups):
        return None  # some unary factor (prior) already fixes the gauge
    for t, ids in zip(var_types, var_ids):
        if t.group is not None and len(ids):  # a type only empty factors name has no ids
            return t(int(ids.array[0]))
    return None


def build_structure(factors, gauge: Any = "auto") -> tuple[GraphStructure, tuple]:
    """Group, stack and index factors (host). Returns ``(structure, data)``."""
    factors = list(factors)
    if not factors:
        raise ValueError("FactorGraph.build: no factors")
    buckets: dict[Any, dict] = {}
    order: list[Any] = []
    for f in factors:
        if not isinstance(f, Factor):
            raise TypeError(f"FactorGraph.build: {f!r} is not a Factor (made by an @factor type)")
        leaves, treedef = jax.tree.flatten(f.args, is_leaf=_is_var)
        kinds = tuple(_leaf_key(leaf) for leaf in leaves)
        trailing = tuple(
            np.shape(leaf)[(0 if f.batch is None else 1) :]
            for leaf, k in zip(leaves, kinds)
            if k[0] == "data"
        )
        loss_key, _ = _loss_spec(f)
        key = (f.kind, treedef, kinds, trailing, loss_key)
        if key not in buckets:
            buckets[key] = {"factors": [], "treedef": treedef, "kinds": kinds}
            order.append(key)
        buckets[key]["factors"].append((f, leaves))

    # deterministic group order: by kind name, then first appearance
    names = [k[0].name for k in order]
    idx_sorted = sorted(range(len(order)), key=lambda i: (names[i], i))
    counts: dict[str, int] = {}

    # variable ids per type
    ids_per_type: dict[type[Var], list[np.ndarray]] = {}
    for key in order:
        for f, leaves in buckets[key]["factors"]:
            for leaf in leaves:
                if isinstance(leaf, Var):
                    ids_per_type.setdefault(type(leaf), []).append(leaf.id.reshape(-1))
    # factors batched over zero ids leave no variable to solve for
    if not any(len(a) for chunks in ids_per_type.values() for a in chunks):
        raise ValueError("FactorGraph.build: the factors touch no variables (all id arrays empty)")
    var_types = tuple(sorted(ids_per_type, key=lambda t: t.type_name()))
    tnames = [t.type_name() for t in var_types]
    if len(set(tnames)) != len(tnames):
        raise TypeError(f"FactorGraph.build: two Var types share a name: {tnames}")
    var_ids = tuple(_Ids(np.unique(np.concatenate(ids_per_type[t]))) for t in var_types)
    type_pos = {t: i for i, t in enumerate(var_types)}
    var_blocks, off = [], 0
    for t, ids in zip(var_types, var_ids):
        var_blocks.append((off, len(ids), t.tangent_dim))
        off += len(ids) * t.tangent_dim

    groups, data, slots_all = [], [], []
    for i in idx_sorted:
        key = order[i]
        kind, treedef, kinds = key[0], buckets[key]["treedef"], buckets[key]["kinds"]
        members = buckets[key]["factors"]
        nm = kind.name
        counts[nm] = counts.get(nm, 0) + 1
        gname = nm if counts[nm] == 1 else f"{nm}#{counts[nm]}"
        # template
        first_leaves = members[0][1]
        tmpl_leaves, slot_types, slot = [], [], 0
        for leaf, k in zip(first_leaves, kinds):
            if k[0] == "var":
                tmpl_leaves.append(_slot_var(k[1], slot))
                slot_types.append(k[1])
                slot += 1
            elif k[0] == "data":
                tmpl_leaves.append(_DATA)
            else:
                tmpl_leaves.append(leaf)
        template = jax.tree.unflatten(treedef, tmpl_leaves)
        # stack ids and data
        slot_ids: list[list[np.ndarray]] = [[] for _ in slot_types]
        data_chunks: list[list] = [[] for k in kinds if k[0] == "data"]
        size = 0
        for f, leaves in members:
            batched = f.batch is not None
            size += f.batch if batched else 1
            s = j = 0
            for leaf, k in zip(leaves, kinds):
                if k[0] == "var":
                    slot_ids[s].append(leaf.id.reshape(-1))
                    s += 1
                elif k[0] == "data":
                    data_chunks[j].append(_as_batch(leaf, batched))
                    j += 1
        stacked = [_stack(c) for c in data_chunks]
        it = iter(stacked)
        data_leaves = [next(it) if k[0] == "data" else None for k in kinds]
        data_args = jax.tree.unflatten(treedef, data_leaves)
        loss, loss_axes = members[0][0].loss, _loss_spec(members[0][0])[1]
        if loss_axes is not None and 0 in loss_axes:
            # per-factor loss leaves are stacked over the group's factors like the data
            per_member = [jax.tree.leaves(f.loss) for f, _ in members]
            l_leaves = [
                _stack([ls[k] for ls in per_member]) if a == 0 else per_member[0][k]
                for k, a in enumerate(loss_axes)
            ]
            loss = jax.tree.unflatten(jax.tree.structure(loss), l_leaves)
        slots = []
        for t, chunks in zip(slot_types, slot_ids):
            ids = np.concatenate(chunks)
            ti = type_pos[t]
            slots.append((ti, np.searchsorted(var_ids[ti].array, ids)))
        slots_all.append(tuple(slots))
        groups.append(
            FactorGroup(
                kind, gname, template, tuple(slot_types), size, loss is not None, key, loss_axes
            )
        )
        data.append((data_args, loss))
    anchor = _choose_anchor(gauge, var_types, var_ids, groups)
    names = [g.name for g in groups]
    if anchor is not None:
        ti = type_pos[type(anchor)]
        pos = np.searchsorted(var_ids[ti].array, anchor.id.reshape(1))
        if pos[0] >= len(var_ids[ti]) or var_ids[ti].array[pos[0]] != anchor.id:
            raise KeyError(f"gauge {anchor!r} is not a variable of the graph")
        slots_all.append(((ti, pos),))
        names.append("<gauge>")
    layout = BlockLayout(tuple(var_blocks), tuple(slots_all), tuple(names), type_names=tnames)
    structure = GraphStructure(var_types, var_ids, tuple(groups), layout, anchor)
    return structure, tuple(data)


# --------------------------------------------------------------------------- traced evaluation
def _retract_leaf(x, d):
    return x.retract(d) if is_manifold(x) else x + d.astype(jnp.result_type(x))


def _apply_loss(loss, r):
    apply = getattr(loss, "apply", None)
    return apply(r) if apply is not None else loss(r)


def _ravel(out, name: str) -> jax.Array:
    leaves = jax.tree.leaves(out, is_leaf=is_manifold)
    for leaf in leaves:
        if is_manifold(leaf):
            raise TypeError(
                f"factor {name} returned a manifold element; return its local coordinates"
            )
    flat = [jnp.ravel(jnp.asarray(leaf)) for leaf in leaves]
    if not flat or sum(f.shape[0] for f in flat) == 0:
        raise TypeError(f"factor {name} returned an empty residual")
    r = jnp.concatenate(flat) if len(flat) > 1 else flat[0]
    # an integer residual has no derivative: jacfwd/jacrev would fail without naming the factor
    if not jnp.issubdtype(r.dtype, jnp.floating):
        raise TypeError(f"factor {name} returned a residual of dtype {r.dtype}, expected float")
    return r


#: errors raised while tracing a user function; re-raised with the factor's name
_TRACE_ERRORS = (TypeError, ValueError, AttributeError, IndexError, KeyError)


def _call(group: FactorGroup, fn, what: str, *args):
    """``fn(*args)``; trace-time mistakes (shapes, wrong types) re-raised naming the factor."""
    try:
        return fn(*args)
    except _TRACE_ERRORS as e:
        base = next(t for t in _TRACE_ERRORS if isinstance(e, t))
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise base(f"in factor {group.name}{what}: {msg}") from e


def _check_dtype(group: FactorGroup, r: jax.Array, dtype) -> None:
    # a wider residual than the variables (float64 data, float32 values) would change the
    # solver state's dtype inside its loop and fail there without naming the factor
    if jnp.promote_types(r.dtype, dtype) != dtype:
        raise TypeError(
            f"factor {group.name} returned a residual of dtype {r.dtype} but the variables have "
            f"dtype {jnp.dtype(dtype)}: cast its data to the variables' dtype"
        )


def _group_data(structure: GraphStructure, data: Any, g: int) -> tuple:
    """``data[g]`` as ``(args_data, loss)``, checked against the built group (data passed at
    solve time must have the structure and shapes of ``graph.data``)."""
    group = structure.groups[g]
    if not isinstance(data, tuple | list) or len(data) != len(structure.groups):
        raise ValueError(
            f"factor data must be a tuple of {len(structure.groups)} (args_data, loss) pairs, "
            f"one per factor group (as graph.data); got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, tuple | list) else "")
        )
    if not isinstance(data[g], tuple | list) or len(data[g]) != 2:
        raise ValueError(f"factor {group.name}: data must be an (args_data, loss) pair")
    data_args, loss = data[g]
    _, treedef, kinds, expected = group._key[:4]  # expected: trailing shapes of data leaves
    want_def = jax.tree.structure(
        jax.tree.unflatten(treedef, [0 if k[0] == "data" else None for k in kinds])
    )
    with_path, got_def = jax.tree_util.tree_flatten_with_path(data_args)
    if got_def != want_def:
        raise ValueError(
            f"factor {group.name}: data has structure {got_def}, expected {want_def} "
            "(the factor's arguments with Vars as None, as in graph.data)"
        )
    for (path, leaf), trailing in zip(with_path, expected):
        want = (group.size, *trailing)
        if tuple(jnp.shape(leaf)) != want:
            raise ValueError(
                f"factor {group.name}: data for {_arg_name(group, path)} has shape "
                f"{tuple(jnp.shape(leaf))}, expected {want} (n_factors, ...)"
            )
    if loss is not None and group.loss_axes is not None and 0 in group.loss_axes:
        l_leaves = jax.tree.leaves(loss)
        if len(l_leaves) != len(group.loss_axes):
            raise ValueError(
                f"factor {group.name}: the robust loss has {len(l_leaves)} leaves, expected "
                f"{len(group.loss_axes)} (as in graph.data)"
            )
        for leaf, a in zip(l_leaves, group.loss_axes):
            if a == 0 and jnp.shape(leaf)[:1] != (group.size,):
                raise ValueError(
                    f"factor {group.name}: a per-factor robust-loss leaf has shape "
                    f"{tuple(jnp.shape(leaf))}, expected leading axis {group.size} (n_factors)"
                )
    return data_args, loss


def _split_loss(group: FactorGroup, loss) -> tuple[list, Any]:
    """``(per_factor, rebuild)``: the loss leaves to vmap with the factor data, and
    ``rebuild(slice) -> loss`` for one factor (shared leaves are closed over)."""
    axes = group.loss_axes
    if loss is None or axes is None or 0 not in axes:
        return [], lambda _: loss
    leaves, treedef = jax.tree.flatten(loss)
    per_factor = [leaf for leaf, a in zip(leaves, axes) if a == 0]

    def rebuild(sliced):
        it = iter(sliced)
        return jax.tree.unflatten(
            treedef, [next(it) if a == 0 else leaf for leaf, a in zip(leaves, axes)]
        )

    return per_factor, rebuild


def _arg_name(group: FactorGroup, path) -> str:
    """The residual function's parameter name for a data leaf's path in the args tuple."""
    idx = getattr(path[0], "idx", None) if path else None
    try:
        params = list(inspect.signature(group.kind.residual_fn).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    if idx is None or idx >= len(params) or params[idx].kind not in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
    ):
        return f"argument {jax.tree_util.keystr(tuple(path))}"
    return params[idx].name + jax.tree_util.keystr(tuple(path[1:]))


def _gather(values: tuple, group: FactorGroup, slots) -> list:
    return [jax.tree.map(lambda p, idx=idx: p[idx], values[t]) for t, idx in slots]


def _group_fns(group: FactorGroup, dims: tuple[int, ...]):
    """Per-factor residual and local residual ``δ ↦ r(x ⊕ δ)`` for one group."""
    fn = group.kind.residual_fn

    def residual(slot_vals, data):
        data_args, loss = data
        args = group.args(data_args)
        out = _call(group, fn, "", _SlotValues(slot_vals), *args)
        r = _ravel(out, group.name)
        if loss is not None:
            r = _apply_loss(loss, r)
        return r

    def local(delta, slot_vals, data):
        parts, start = [], 0
        for v, d in zip(slot_vals, dims):
            parts.append(_retract_leaf(v, delta[start : start + d]))
            start += d
        return residual(parts, data)

    return residual, local


def group_residual(structure: GraphStructure, values: tuple, data: tuple, g: int) -> jax.Array:
    group = structure.groups[g]
    slots = structure.layout.slots[g]
    dims = tuple(structure.layout.var_blocks[t][2] for t, _ in slots)
    residual, _ = _group_fns(group, dims)
    slot_vals = _gather(values, group, slots)
    data_args, loss = _group_data(structure, data, g)
    per_factor, rebuild = _split_loss(group, loss)
    r = jax.vmap(lambda sv, da, lf: residual(sv, (da, rebuild(lf))))(
        slot_vals, data_args, per_factor
    )
    _check_dtype(group, r, _dtype_of(values))
    return r


def residual(structure: GraphStructure, values: tuple, data: tuple) -> jax.Array:
    """The flat whitened (and robustified) residual of the whole graph."""
    outs = [
        group_residual(structure, values, data, g).reshape(-1) for g in range(len(structure.groups))
    ]
    return jnp.concatenate(outs) if len(outs) > 1 else outs[0]


def _dtype_of(values: tuple):
    return jnp.result_type(*jax.tree.leaves(values))


def group_linearize(structure: GraphStructure, values: tuple, data: tuple, g: int):
    group = structure.groups[g]
    slots = structure.layout.slots[g]
    dims = tuple(structure.layout.var_blocks[t][2] for t, _ in slots)
    c = sum(dims)
    residual_fn, local = _group_fns(group, dims)
    slot_vals = _gather(values, group, slots)
    data_args, group_loss = _group_data(structure, data, g)
    per_factor, rebuild = _split_loss(group, group_loss)
    dtype = _dtype_of(values)
    kind = group.kind

    def one(sv, da, lf):
        d0 = jnp.zeros(c, dtype)
        loss = rebuild(lf)
        dat = (da, loss)
        if kind.linearize is not None or kind.jacobian is not None:
            r_raw_args = group.args(da)
            if kind.linearize is not None:
                m = _residual_dim(group, residual_fn, sv, da)
                pair = _call(group, kind.linearize, " (linearize=)", _SlotValues(sv), *r_raw_args)
                if not isinstance(pair, tuple | list) or len(pair) != 2:
                    raise TypeError(
                        f"factor {group.name}: linearize= must return (residual, blocks), got "
                        f"{_what(pair)}"
                    )
                out, blocks = pair
                r = _ravel(out, group.name)
                if r.shape != (m,):
                    raise ValueError(
                        f"factor {group.name}: linearize= returned a residual of shape "
                        f"{r.shape}, but the residual function returns ({m},)"
                    )
            else:
                r = residual_fn(sv, (da, None))
                m = r.shape[0]
                blocks = _call(group, kind.jacobian, " (jacobian=)", _SlotValues(sv), *r_raw_args)
            J = jnp.concatenate(_check_blocks(group, blocks, m, dims), axis=1).astype(r.dtype)
            if loss is not None:
                r_l, pull = jax.linearize(lambda rr: _apply_loss(loss, rr), r)
                return r_l, jax.vmap(pull, in_axes=1, out_axes=1)(J)
            return r, J
        mode = kind.jac
        if mode == "auto":
            m = jax.eval_shape(lambda d: local(d, sv, dat), d0).shape[0]
            mode = "fwd" if m >= c else "rev"

        def f(d):
            r = local(d, sv, dat)
            return r, r

        jac = jax.jacfwd if mode == "fwd" else jax.jacrev
        J, r = jac(f, has_aux=True)(d0)
        return r, J

    r, J = jax.vmap(one)(slot_vals, data_args, per_factor)
    _check_dtype(group, r, dtype)
    return r, J


def _residual_dim(group: FactorGroup, residual_fn, sv, da) -> int:
    """The residual function's output length for these argument shapes, traced once per
    group and shapes (the check of ``linearize=`` would otherwise re-trace the residual at
    every linearization trace: +0.1 s of tracing on sphere2500)."""
    key = tuple((jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves((sv, da)))
    if key not in group._residual_dims:
        group._residual_dims[key] = jax.eval_shape(lambda: residual_fn(sv, (da, None))).shape[0]
    return group._residual_dims[key]


def _what(x) -> str:
    return f"an array of shape {x.shape}" if isinstance(x, jax.Array) else type(x).__name__


def _check_blocks(group: FactorGroup, blocks, m: int, dims: tuple[int, ...]) -> list:
    """The analytic Jacobian blocks, checked: one ``(m, tangent_dim)`` block per ``Var``
    argument in argument order (a wrong shape would otherwise be read into other columns)."""
    if not isinstance(blocks, tuple | list):
        raise TypeError(
            f"factor {group.name}: the analytic Jacobian must be a tuple of {len(dims)} blocks "
            f"(one per Var argument), got {_what(blocks)}"
        )
    if len(blocks) != len(dims):
        raise ValueError(
            f"factor {group.name}: the analytic Jacobian has {len(blocks)} blocks, expected "
            f"{len(dims)} (one per Var argument, in argument order)"
        )
    out = []
    for k, (b, d, t) in enumerate(zip(blocks, dims, group.slot_types)):
        b = jnp.asarray(b)
        if b.shape != (m, d):
            raise ValueError(
                f"factor {group.name}: Jacobian block {k} (Var {t.__name__}) has shape "
                f"{b.shape}, expected ({m}, {d}) = (residual_dim, tangent_dim)"
            )
        out.append(b)
    return out


def group_cost_hessian(structure: GraphStructure, values: tuple, data: tuple, g: int):
    """Per factor of group ``g``: the Hessian of its cost ``½‖r(x ⊕ δ)‖²`` (robust loss
    included) with respect to its own tangent ``δ`` at 0, shape ``(n_g, c, c)``."""
    group = structure.groups[g]
    slots = structure.layout.slots[g]
    dims = tuple(structure.layout.var_blocks[t][2] for t, _ in slots)
    _, local = _group_fns(group, dims)
    slot_vals = _gather(values, group, slots)
    data_args, loss = _group_data(structure, data, g)
    per_factor, rebuild = _split_loss(group, loss)
    d0 = jnp.zeros(sum(dims), _dtype_of(values))

    def one(sv, da, lf):
        return jax.hessian(lambda d: 0.5 * jnp.sum(local(d, sv, (da, rebuild(lf))) ** 2))(d0)

    return jax.vmap(one)(slot_vals, data_args, per_factor)


def cost_hessian_csc_data(structure: GraphStructure, values: tuple, data: tuple, damping):
    """Upper-triangle CSC values (the normal equations' pattern) of the exact Hessian of the
    graph's cost in the tangent chart, plus ``damping`` on the diagonal; the gauge-fixed
    variable's rows and columns are the identity, as in :func:`linearize`."""
    blocks = [group_cost_hessian(structure, values, data, g) for g in range(len(structure.groups))]
    if structure.anchor is not None:
        mask = structure.free_mask
        blocks = [
            B * (mask[c][:, :, None] * mask[c][:, None, :]).astype(B.dtype)
            for B, c in zip(blocks, structure.layout.cols)
        ]
        d = len(structure.anchor_cols)
        blocks.append(jnp.eye(d, dtype=blocks[0].dtype)[None])
    return symmetric_blocks_csc_data(structure.layout, blocks, damping, blocks[0].dtype)


def linearize(structure: GraphStructure, values: tuple, data: tuple) -> BlockSparseLinearization:
    rs, Js = [], []
    for g in range(len(structure.groups)):
        r, J = group_linearize(structure, values, data, g)
        rs.append(r.reshape(-1))
        Js.append(J)
    if structure.anchor is not None:
        mask = structure.free_mask
        Js = [J * mask[c][:, None, :].astype(J.dtype) for J, c in zip(Js, structure.layout.cols)]
        d = len(structure.anchor_cols)
        dtype = Js[0].dtype
        rs.append(jnp.zeros(d, dtype))
        Js.append(jnp.eye(d, dtype=dtype)[None])
    res = jnp.concatenate(rs) if len(rs) > 1 else rs[0]
    return BlockSparseLinearization(res, BlockSparseJacobian(tuple(Js), structure.layout))


def retract(structure: GraphStructure, values: tuple, delta: jax.Array) -> tuple:
    if structure.free_mask is not None:
        delta = delta * structure.free_mask.astype(delta.dtype)
    out = []
    for v, (off, n, d) in zip(values, structure.layout.var_blocks):
        dv = delta[off : off + n * d].reshape(n, d)
        out.append(_retract_leaf(v, dv))
    return tuple(out)


def local(structure: GraphStructure, values: tuple, other: tuple) -> jax.Array:
    parts = []
    for v, w in zip(values, other):
        parts.append((v.local(w) if is_manifold(v) else w - v).reshape(-1))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def x_norm(values: tuple) -> jax.Array:
    leaves = jax.tree.leaves(values)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves))


# --------------------------------------------------------------------------- VarValues bridge
def values_to_tuple(structure: GraphStructure, vals: VarValues) -> tuple:
    """The graph's variables, in graph order, gathered from ``vals`` (static index maps)."""
    if not isinstance(vals, VarValues):
        raise TypeError(f"expected VarValues, got {type(vals).__name__}")
    out = []
    for t, ids in zip(structure.var_types, structure.var_ids):
        try:
            have = vals.ids_of(t)
        except KeyError:
            raise KeyError(f"initial values have no {t.__name__} variables") from None
        v = vals.get(t)
        if np.array_equal(have, ids.array):
            out.append(v)
            continue
        pos = np.searchsorted(have, ids.array)
        bad = (pos >= len(have)) | (have[np.minimum(pos, len(have) - 1)] != ids.array)
        if np.any(bad):
            missing = ids.array[bad][:5].tolist()
            raise KeyError(f"initial values lack {t.__name__} ids {missing}")
        out.append(jax.tree.map(lambda p, pos=pos: p[pos], v))
    return tuple(out)


def tuple_to_values(structure: GraphStructure, vals: VarValues, x: tuple) -> VarValues:
    """Write the graph's variables back into (a copy of) ``vals``."""
    for t, ids, xv in zip(structure.var_types, structure.var_ids, x):
        have = vals.ids_of(t)
        if np.array_equal(have, ids.array):
            vals = vals.replace(t, xv)
        else:
            pos = np.searchsorted(have, ids.array)
            old = vals.get(t)
            vals = vals.replace(t, jax.tree.map(lambda o, n, pos=pos: o.at[pos].set(n), old, xv))
    return vals


class _Problem(eqx.Module):
    """What :func:`jaxnlls._iterate.run` needs: linearize / residual / retract / x_norm."""

    structure: GraphStructure = eqx.field(static=True)
    data: Any

    def linearize(self, x):
        return linearize(self.structure, x, self.data)

    def residual(self, x):
        return residual(self.structure, x, self.data)

    def retract(self, x, delta):
        return retract(self.structure, x, delta)

    def x_norm(self, x):
        return x_norm(x)


def stack_data(graphs) -> Any:
    """Stack the data of same-structure graphs along a new leading axis (for ``vmap``)."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *graphs)

