"""Batching helpers: problems of different sizes in one ``vmap``, and sharding a batch.

``vmap`` needs every member of a batch to have the same shapes. ``pad_stack`` pads each
member's data to a common length along axis 0 and returns a mask; the residual multiplies by
the mask so padded rows contribute nothing:

>>> data, mask = pad_stack([x_a, x_b])                   # (2, n_max, ...), (2, n_max)
>>> def residual(theta, p):
...     (x, y), m = p
...     return masked(model(theta, x) - y, m)            # zero where padded
>>> jax.vmap(lambda p: jaxnlls.solve(residual, theta0, p, throw=False))((data, mask))

Padded *unknowns* have no residual and would make ``JᵀJ`` singular: pin them with a
residual ``(1 - mask) * x`` (see ``masked``'s docstring), or let LM's damping handle them.

``shard_batch`` places the leading axis of a batch across devices with ``jax.sharding``;
``jax.jit(jax.vmap(...))`` on sharded inputs then runs each shard on its device (XLA's SPMD
partitioner; no scheduler of our own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def pad_stack(members: Sequence[Any], *, size: int | None = None, fill: float = 0.0):
    """Stack pytrees whose leaves differ in length along axis 0, padding to ``size``.

    Args:
        members: pytrees of identical structure; leaf ``k`` of member ``i`` has shape
            ``(n_i, *rest_k)`` with the same ``rest_k`` for every member and the same ``n_i``
            across the leaves of member ``i``.
        size: the padded length (default: the largest ``n_i``).
        fill: the value written into padded rows.

    Returns:
        ``(stacked, mask)``: leaves of shape ``(len(members), size, *rest)`` and a boolean
        mask of shape ``(len(members), size)``, True on real rows.
    """
    if not members:
        raise ValueError("pad_stack: no members given")
    structs = [jax.tree.structure(m) for m in members]
    for i, s in enumerate(structs):
        if s != structs[0]:
            raise ValueError(f"pad_stack: member {i} has structure {s}, member 0 has {structs[0]}")
    lengths = []
    for i, m in enumerate(members):
        ns = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(m)}
        if len(ns) != 1:
            raise ValueError(f"pad_stack: leaves of member {i} disagree on length: {sorted(ns)}")
        lengths.append(ns.pop())
    size = max(lengths) if size is None else size
    if size < max(lengths):
        raise ValueError(f"pad_stack: size={size} is smaller than the longest member ({max(lengths)})")

    def pad(leaf):
        leaf = np.asarray(leaf)
        widths = [(0, size - leaf.shape[0])] + [(0, 0)] * (leaf.ndim - 1)
        return np.pad(leaf, widths, constant_values=fill)

    stacked = jax.tree.map(lambda *ls: jnp.stack([pad(x) for x in ls]), *members)
    mask = jnp.asarray(np.arange(size)[None, :] < np.asarray(lengths)[:, None])
    return stacked, mask


def masked(residual: jax.Array, mask: jax.Array) -> jax.Array:
    """Zero the residual rows where ``mask`` is False (broadcast over trailing axes).

    To pin padded unknowns ``x`` (shape ``(size, ...)``), append ``masked(x, ~mask)`` to the
    residual: it is zero for real rows and holds padded rows at zero.
    """
    m = jnp.reshape(mask, mask.shape + (1,) * (residual.ndim - mask.ndim))
    return jnp.where(m, residual, jnp.zeros((), residual.dtype))


def shard_batch(batch: Any, devices: Sequence[jax.Device] | None = None, axis_name: str = "batch"):
    """Place the leading axis of every array in ``batch`` across ``devices`` (default: all).

    The batch size must be divisible by the number of devices. Returns the sharded pytree;
    ``jax.jit(jax.vmap(f))(sharded)`` then computes each shard on its own device.
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), (axis_name,))
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))

    def put(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.shape[0] % len(devices):
            raise ValueError(
                f"shard_batch: batch size {leaf.shape[0]} is not divisible by {len(devices)} devices"
            )
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, batch)
