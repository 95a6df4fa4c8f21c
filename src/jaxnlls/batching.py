"""Batching helpers: problems of different sizes in one ``vmap``, and sharding a batch.

``vmap`` needs every member of a batch to have the same shapes. ``pad_stack`` pads each
member's data to a common length along axis 0 and returns a mask; the residual masks the
padded rows so they contribute nothing:

>>> data, mask = pad_stack([x_a, x_b], fill="edge")      # (2, n_max, ...), (2, n_max)
>>> def residual(theta, p):
...     (x, y), m = p
...     return masked(model(theta, x) - y, m)            # zero where padded
>>> jax.vmap(lambda p: jaxnlls.solve(residual, theta0, p, throw=False))((data, mask))

Padded rows are still evaluated and differentiated: ``masked`` only selects. If ``model``
is not finite and differentiable at the padding value (``log``, ``1/x``, ``sqrt`` at the
default ``fill=0.0``), the forward solve is fine but gradients are NaN, because the select's
backward pass multiplies a zero cotangent by an infinite derivative. ``fill="edge"`` repeats
each member's last real row instead, a point where the model is known to be well defined.

Padded *unknowns* have no residual and make ``JᵀJ`` singular (the solve reports
``RESULTS.singular``): pin them by appending ``masked(x, ~mask)`` to the residual (see
``masked``'s docstring).

``shard_batch`` places the leading axis of a batch across devices with ``jax.sharding``;
``jax.jit(jax.vmap(...))`` on sharded inputs then runs each shard on its device (XLA's SPMD
partitioner; no scheduler of our own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def pad_stack(
    members: Sequence[Any], *, size: int | None = None, fill: float | Literal["edge"] = 0.0
):
    """Stack pytrees whose leaves differ in length along axis 0, padding to ``size``.

    Args:
        members: pytrees of identical structure; leaf ``k`` of member ``i`` has shape
            ``(n_i, *rest_k)`` with the same ``rest_k`` for every member and the same ``n_i``
            across the leaves of member ``i``.
        size: the padded length (default: the largest ``n_i``).
        fill: the value written into padded rows, or ``"edge"`` to repeat each member's last
            real row (use it when the residual is not finite or not differentiable at a
            constant fill; see the module docstring). ``"edge"`` needs ``n_i >= 1``.

    Returns:
        ``(stacked, mask)``: leaves of shape ``(len(members), size, *rest)`` and a boolean
        mask of shape ``(len(members), size)``, True on real rows.

    Raises:
        ValueError: on mismatched structures, lengths or trailing shapes, scalar leaves, a
            ``size`` below the longest member, or ``fill="edge"`` with an empty member.
    """
    if not members:
        raise ValueError("pad_stack: no members given")
    if isinstance(fill, str) and fill != "edge":
        raise ValueError(f"pad_stack: fill must be a number or 'edge', got {fill!r}")
    structs = [jax.tree.structure(m) for m in members]
    for i, s in enumerate(structs):
        if s != structs[0]:
            raise ValueError(f"pad_stack: member {i} has structure {s}, member 0 has {structs[0]}")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(members[0])]
    leaves = [[np.asarray(x) for x in jax.tree.leaves(m)] for m in members]
    lengths = []
    for i, ls in enumerate(leaves):
        for path, leaf in zip(paths, ls):
            if leaf.ndim == 0:
                raise ValueError(f"pad_stack: leaf {path or '<root>'} of member {i} is a scalar; "
                                 "every leaf needs a leading (padded) axis")
        ns = {leaf.shape[0] for leaf in ls}
        if len(ns) != 1:
            raise ValueError(f"pad_stack: leaves of member {i} disagree on length: {sorted(ns)}")
        lengths.append(ns.pop())
    for k, path in enumerate(paths):
        for i, ls in enumerate(leaves):
            if ls[k].shape[1:] != leaves[0][k].shape[1:]:
                raise ValueError(
                    f"pad_stack: leaf {path or '<root>'} has trailing shape {ls[k].shape[1:]} in "
                    f"member {i} but {leaves[0][k].shape[1:]} in member 0"
                )
    size = max(lengths) if size is None else size
    if size < max(lengths):
        raise ValueError(
            f"pad_stack: size={size} is smaller than the longest member ({max(lengths)})"
        )
    if fill == "edge" and min(lengths) == 0:
        raise ValueError(f"pad_stack: fill='edge' needs a real row; member {lengths.index(0)} is "
                         "empty")

    def pad(leaf):
        widths = [(0, size - leaf.shape[0])] + [(0, 0)] * (leaf.ndim - 1)
        if fill == "edge":
            return np.pad(leaf, widths, mode="edge")
        return np.pad(leaf, widths, constant_values=fill)

    stacked_leaves = [jnp.stack([pad(ls[k]) for ls in leaves]) for k in range(len(paths))]
    stacked = jax.tree.unflatten(structs[0], stacked_leaves)
    mask = jnp.asarray(np.arange(size)[None, :] < np.asarray(lengths)[:, None])
    return stacked, mask


def masked(residual: jax.Array, mask: jax.Array) -> jax.Array:
    """Zero the residual rows where ``mask`` is False (broadcast over trailing axes).

    ``mask``'s shape must be a prefix of ``residual``'s: inside a ``vmap`` over members that is
    the member's own ``(size,)`` row, not the whole ``(B, size)`` batch mask.

    To pin padded unknowns ``x`` (shape ``(size, ...)``), append ``masked(x, ~mask)`` to the
    residual: it is zero for real rows and holds padded rows at zero.

    Padded rows are still evaluated; this is a select, so a NaN or infinite derivative there
    still poisons gradients (0·inf in the backward pass). Pad with ``pad_stack(...,
    fill="edge")`` when the residual is singular at the fill value.

    Raises:
        ValueError: when ``mask``'s shape is not a prefix of ``residual``'s.
    """
    if mask.ndim > residual.ndim or mask.shape != residual.shape[: mask.ndim]:
        # Broadcasting would silently change the residual's shape, i.e. solve another problem.
        raise ValueError(
            f"masked: mask shape {mask.shape} is not a prefix of residual shape {residual.shape}"
        )
    m = jnp.reshape(mask, mask.shape + (1,) * (residual.ndim - mask.ndim))
    return jnp.where(m, residual, jnp.zeros((), residual.dtype))


def shard_batch(batch: Any, devices: Sequence[jax.Device] | None = None, axis_name: str = "batch"):
    """Place the leading axis of every array in ``batch`` across ``devices`` (default: all).

    The batch size must be divisible by the number of devices. Returns the sharded pytree;
    ``jax.jit(jax.vmap(f))(sharded)`` then computes each shard on its own device.

    Raises:
        ValueError: for an empty ``devices`` or a batch size not divisible by its length.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("shard_batch: devices is empty")
    mesh = Mesh(np.array(devices), (axis_name,))
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))

    def put(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0:
            raise ValueError("shard_batch: a scalar leaf has no batch axis to shard")
        if leaf.shape[0] % len(devices):
            raise ValueError(
                f"shard_batch: batch size {leaf.shape[0]} is not divisible by "
                f"{len(devices)} devices"
            )
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, batch)
