"""Small tree and numerics helpers shared by the solvers."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_float_array(x) -> bool:
    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def tree_where(pred, on_true: Any, on_false: Any) -> Any:
    """``jnp.where`` leaf by leaf (array leaves only; static leaves must agree)."""

    def leaf(a, b):
        if eqx.is_array(a):
            return jnp.where(pred, a, b)
        return a

    return jax.tree.map(leaf, on_true, on_false)


def stop_gradient_arrays(tree: Any) -> Any:
    """``lax.stop_gradient`` on every array leaf, leaving static leaves alone."""
    return jax.tree.map(lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, tree)


def short_sum(a, axis: int):
    """``jnp.sum(a, axis)`` for a short axis of a batched array, as a reduce XLA:CPU emits itself.

    XLA:CPU (jax 0.10) hands add-reductions with 4,096 elements or more to YNNPACK, whose kernels
    for a short axis over a long batch were several times slower than XLA's own loop: in 4,096
    batched SE(2) graph solves on one core they took 70 of 228 ms (the block Cholesky's block
    products and substitutions, ``diag(JᵀJ)``); the whole solve went from 264 to 197 ms.
    YNNPACK only takes a reducer that is exactly ``add(p, q)``; ``p - (-q)`` is the same sum,
    bit for bit (negation is exact), and XLA's simplifier leaves it alone. Differentiable and
    batchable like any ``lax.reduce``; on other backends it is an ordinary sum.
    """
    return jax.lax.reduce(a, np.zeros((), a.dtype), lambda p, q: p - (-q), (axis % a.ndim,))


def safe_norm(v, axis=None):
    """Euclidean norm whose gradient is 0 (not NaN) at ``v = 0``."""
    sq = jnp.sum(v * v, axis=axis)
    nonzero = sq > 0
    safe_sq = jnp.where(nonzero, sq, 1)
    return jnp.where(nonzero, jnp.sqrt(safe_sq), 0)


def safe_div(num, den):
    """``num / den`` with 0 where ``den == 0`` (and a finite gradient there)."""
    nz = den != 0
    return jnp.where(nz, num / jnp.where(nz, den, 1), 0)


def tree_dtype(tree: Any):
    """Common floating dtype of the array leaves of ``tree`` (float32 if there are none)."""
    dtypes = [jnp.result_type(a) for a in jax.tree.leaves(tree) if eqx.is_array(a)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.inexact)]
    if not dtypes:
        return jnp.dtype(jnp.float32)
    return jnp.result_type(*dtypes)


def eps(dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def all_finite(tree: Any):
    """Scalar bool: every float array leaf is finite."""
    leaves = [a for a in jax.tree.leaves(tree) if is_float_array(a)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves]))
