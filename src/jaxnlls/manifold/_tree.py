"""Tree-level retraction: map a tangent pytree onto a variable pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from ._protocol import is_manifold


def _leaves(x) -> list:
    return jax.tree.leaves(x, is_leaf=is_manifold)


def retract(x: Any, delta: Any) -> Any:
    """``x ⊕ δ`` leaf by leaf: ``retract`` on manifold leaves, ``+`` on arrays."""

    def leaf(xi, di):
        return xi.retract(di) if is_manifold(xi) else xi + di.astype(jnp.result_type(xi))

    return jax.tree.map(leaf, x, delta, is_leaf=is_manifold)


def local(x: Any, y: Any) -> Any:
    """Tangent pytree ``δ`` with ``retract(x, δ) == y``."""

    def leaf(xi, yi):
        return xi.local(yi) if is_manifold(xi) else yi - xi

    return jax.tree.map(leaf, x, y, is_leaf=is_manifold)


def tangent_zeros(x: Any) -> Any:
    """A zero tangent pytree for ``x`` (same structure, manifold leaves replaced by arrays)."""

    def leaf(xi):
        if is_manifold(xi):
            return jnp.zeros(tuple(xi.batch_shape) + (xi.tangent_dim,), xi.dtype)
        return jnp.zeros(jnp.shape(xi), jnp.result_type(xi))

    return jax.tree.map(leaf, x, is_leaf=is_manifold)


def tangent_size(x: Any) -> int:
    """Total number of tangent coordinates of ``x`` (a static Python int)."""
    size = 0
    for xi in _leaves(x):
        if is_manifold(xi):
            size += int(np.prod(xi.batch_shape, dtype=int)) * xi.tangent_dim
        else:
            size += int(np.prod(jnp.shape(xi), dtype=int))
    return size


def tangent_ravel(delta: Any) -> tuple[Float[Array, " n"], Callable[[Array], Any]]:
    """Flatten a tangent pytree to one vector; returns ``(flat, unravel)``."""
    return ravel_pytree(delta)


def ambient_arrays(x: Any) -> list[Array]:
    """All parameter arrays of ``x`` (manifold parameters included), for norms and checks."""
    return [leaf for leaf in jax.tree.leaves(x) if isinstance(leaf, jax.Array | np.ndarray)]
