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


def _ambient_leaf(xi, di):
    """Directional derivative of ``xi ⊕ δ`` at ``δ = 0`` along ``di`` (a tangent of ``xi``).

    Uses the closed-form ``retract_jac`` of a manifold leaf when it has one and holds a single
    parameter array (the Lie groups); otherwise differentiates ``retract`` itself.
    """
    if not is_manifold(xi):
        return di.astype(jnp.result_type(xi))
    params, treedef = jax.tree.flatten(xi)
    jac = getattr(xi, "retract_jac", None)
    if jac is not None and len(params) == 1:
        # multiply-reduce, not einsum: a batched dot_general of tiny matrices is slow on CPU
        dp = jnp.sum(jac() * di.astype(params[0].dtype)[..., None, :], axis=-1)
        return jax.tree.unflatten(treedef, [dp])
    zero = jnp.zeros_like(di)
    return jax.jvp(lambda d: xi.retract(d), (zero,), (di,))[1]


def tangent_to_ambient(x: Any, delta: Any) -> Any:
    """Push a tangent pytree forward to a parameter-space tangent of ``x``: the derivative of
    ``t ↦ retract(x, t·δ)`` at ``t = 0``, with the same pytree structure as ``x``.

    ``jax.jvp(f, (x,), (tangent_to_ambient(x, δ),))`` equals the JVP of ``f(retract(x, ·))`` at
    zero along ``δ``, without differentiating ``Exp`` (its Taylor branches cost as much as the
    residual's own JVP on small problems).
    """
    return jax.tree.map(_ambient_leaf, x, delta, is_leaf=is_manifold)


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
