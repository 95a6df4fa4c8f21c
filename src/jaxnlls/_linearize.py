"""Residual and Jacobian of a user residual in the tangent chart at the current iterate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._sparsity import JacobianSparsity
from .linear import DenseLinearization, MatrixFreeLinearization
from .manifold import ambient_arrays, retract, tangent_to_ambient, tangent_zeros


def ravel_residual(out: Any) -> jax.Array:
    """Flatten a residual pytree to one vector (no copy for a single array)."""
    leaves = jax.tree.leaves(out)
    if len(leaves) == 1:
        return jnp.reshape(leaves[0], (-1,))
    return jnp.concatenate([jnp.reshape(a, (-1,)) for a in leaves])


class _FlatResidual(eqx.Module):
    """``(x, inputs, δ) ↦ r(x ⊕ δ, inputs)`` flattened; one object per problem (hashable)."""

    fn: Callable = eqx.field(static=True)
    unravel: Callable = eqx.field(static=True)

    def __call__(self, x, inputs, delta_flat):
        return ravel_residual(self.fn(retract(x, self.unravel(delta_flat)), inputs))


class _CombineStatic(eqx.Module):
    """``(x, dynamic inputs, δ) ↦ flat(x, combine(dynamic, static), δ)``; all fields static so
    a matrix-free linearization carries only arrays through the loop."""

    flat: _FlatResidual = eqx.field(static=True)
    static: Any = eqx.field(static=True)

    def __call__(self, x, inputs_dyn, delta_flat):
        return self.flat(x, eqx.combine(inputs_dyn, self.static), delta_flat)


class DenseProblem(eqx.Module):
    """A least-squares problem ``½‖r(x, inputs)‖²`` seen by the loop through flat tangents.

    ``fn(x, inputs)`` returns the residual pytree (aux already stripped). ``matrix`` picks
    a materialized Jacobian (forward or reverse mode) or a matrix-free linearization.
    ``jac_call(x, inputs)``, when given, returns the user's analytic ``(m, n)`` Jacobian in the
    tangent chart (``solve(jac=callable)``); it replaces autodiff in the forward loop only.
    """

    fn: Callable = eqx.field(static=True)
    inputs: Any
    unravel: Callable = eqx.field(static=True)
    flat: _FlatResidual
    flat_split: _CombineStatic
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)
    matrix: bool = eqx.field(static=True)
    jac: str = eqx.field(static=True)
    sparsity: JacobianSparsity | None = eqx.field(static=True, default=None)
    jac_call: Callable | None = eqx.field(static=True, default=None)

    def residual(self, x) -> jax.Array:
        return ravel_residual(self.fn(x, self.inputs))

    def retract(self, x, delta_flat):
        return retract(x, self.unravel(delta_flat))

    def x_norm(self, x):
        leaves = ambient_arrays(x)
        return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in leaves))

    def linearize(self, x):
        dtype = jnp.result_type(*[a for a in ambient_arrays(x)])
        d0 = jnp.zeros(self.n, dtype)

        def f(d):
            return self.flat(x, self.inputs, d)

        if not self.matrix:
            dyn, _ = eqx.partition(self.inputs, eqx.is_array)
            return MatrixFreeLinearization(f(d0), x, dyn, self.flat_split, self.n)
        if self.jac_call is not None:
            r = self.residual(x)
            jac = self.jac_call(x, self.inputs)
            if self.sparsity is None:
                return DenseLinearization(r, jnp.transpose(jac))
            # compress by static picks: row i of color c holds J[i, the column of color c in
            # row i] (at most one, by the coloring), then the structured normal equations
            sp = self.sparsity
            pick, keep = sp.compression_picks()
            compressed = jnp.take(jac.reshape(-1), jnp.asarray(pick)) * jnp.asarray(keep, dtype)
            gram, jtr = _normal_equations(sp, compressed, r)
            return DenseLinearization(r, jnp.transpose(jac), gram, jtr)
        mode = self.jac
        if self.sparsity is not None:
            mode = "fwd"
        elif mode == "auto":
            mode = "fwd" if self.n <= self.m else "rev"
        if mode == "fwd":
            # Columns of J: JVPs of r(x) along the parameter-space images of the tangent basis
            # (closed-form retract Jacobians), not through ``Exp`` at zero.
            def residual_at(xx):
                return ravel_residual(self.fn(xx, self.inputs))

            def column(v):
                return jax.jvp(residual_at, (x,), (tangent_to_ambient(x, self.unravel(v)),))

            if self.sparsity is None:
                eye = jnp.eye(self.n, dtype=dtype)
                r, jac_t = jax.vmap(column, out_axes=(None, 0))(eye)
            else:  # one JVP per color, then scatter each column's known rows back
                sp = self.sparsity
                seeds = jnp.asarray(sp.seeds(), dtype)
                r, compressed = jax.vmap(column, out_axes=(None, 0))(seeds)
                mask_t = jnp.asarray(sp.pattern.T, dtype)
                # Static row picks, not a gather: XLA:CPU fused the JVPs into a gather and
                # ran 3-4x slower than the uncompressed Jacobian (4,096 SE(2) pose graphs).
                rows = [compressed[c] for c in sp.colors.tolist()]
                jac_t = jnp.stack(rows) * mask_t  # dead code once the loop compacts it
                gram, jtr = _normal_equations(sp, compressed, r)
                return DenseLinearization(r, jac_t, gram, jtr)
        else:
            r, pullback = jax.vjp(f, d0)
            eye_m = jnp.eye(r.shape[0], dtype=r.dtype)
            jac_t = jax.vmap(lambda u: pullback(u)[0], out_axes=1)(eye_m)
        return DenseLinearization(r, jac_t)


def _normal_equations(sp: JacobianSparsity, compressed, r):
    """``JᵀJ`` and ``Jᵀr`` from the compressed Jacobian (see ``NormalEquationsPlan``)."""
    plan = sp.normal_equations_plan()
    dtype = compressed.dtype
    vals = [(compressed[c1] * compressed[c2]) @ jnp.asarray(W, dtype)
            for (c1, c2), W in plan.gram_groups]
    vals = jnp.concatenate(vals + [jnp.zeros(1, dtype)])
    gram = vals[plan.gram_gather].reshape(plan.n, plan.n)
    parts = [(compressed[c] * r) @ jnp.asarray(P, dtype) for c, P in plan.jtr_groups]
    jtr = jnp.concatenate(parts)[plan.jtr_gather]
    return gram, jtr


def make_dense_problem(
    fn, x0, inputs, *, matrix: bool, jac: str = "auto", sparsity: JacobianSparsity | None = None,
    jac_call: Callable | None = None,
) -> DenseProblem:
    """Build the problem at trace time; ``n`` and ``m`` are read off the shapes."""
    _, unravel = ravel_pytree(tangent_zeros(x0))
    n = sum(int(jnp.size(a)) for a in jax.tree.leaves(tangent_zeros(x0)))
    out = jax.eval_shape(lambda: ravel_residual(fn(x0, inputs)))
    flat = _FlatResidual(fn, unravel)
    _, static = eqx.partition(inputs, eqx.is_array)
    split = _CombineStatic(flat, static)
    m = int(out.shape[0])
    if sparsity is not None and sparsity.shape != (m, n):
        raise ValueError(
            f"solve: jac_sparsity has shape {sparsity.shape}; expected (residuals, tangent "
            f"coordinates) = ({m}, {n}): rows follow the flattened residual pytree, columns "
            "the flattened tangent of init (manifold leaves contribute tangent_dim each)"
        )
    if jac_call is not None:
        got = jax.eval_shape(lambda: jac_call(x0, inputs))
        _check_user_jacobian(got, m, n, out)
    return DenseProblem(fn, inputs, unravel, flat, split, n, m, matrix, jac, sparsity, jac_call)


def _check_user_jacobian(got, m: int, n: int, residual) -> None:
    """Trace-time checks on what ``solve(jac=callable)`` returned at ``init``."""
    if not (hasattr(got, "shape") and hasattr(got, "dtype")):
        raise TypeError(
            f"solve: jac(init, params) returned a {type(got).__name__}; it must return one "
            f"({m}, {n}) array (rows: the flattened residual, columns: the flattened tangent)"
        )
    if tuple(got.shape) != (m, n):
        raise ValueError(
            f"solve: jac(init, params) returned shape {tuple(got.shape)}; expected (residuals, "
            f"tangent coordinates) = ({m}, {n}): rows follow the flattened residual pytree, "
            "columns the flattened tangent of init (manifold leaves contribute tangent_dim "
            "each, in the right-perturbation chart x ⊕ δ)"
        )
    if got.dtype != residual.dtype:
        raise TypeError(
            f"solve: jac(init, params) returned dtype {got.dtype} but the residual has dtype "
            f"{residual.dtype}; cast the Jacobian so they agree"
        )
