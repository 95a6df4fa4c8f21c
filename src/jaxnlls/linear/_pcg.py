"""Block-Jacobi preconditioned conjugate gradients for factor graphs (any JAX device)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._blocksparse import block_layout_of
from ._step import AbstractStepSolver


def pcg(
    matvec: Callable[[Array], Array],
    b: Float[Array, " n"],
    precond: Callable[[Array], Array],
    rtol: float,
    atol: float,
    max_steps: int,
) -> tuple[Array, Array]:
    """Preconditioned CG for ``A x = b`` (``A`` symmetric positive definite).

    Stops when ``‖A x - b‖ ≤ atol + rtol·‖b‖`` or after ``max_steps``. Returns ``(x, converged)``.
    Pure JAX (``lax.while_loop``), so it vmaps and runs on accelerators.
    """
    dtype = b.dtype
    bnorm = jnp.sqrt(jnp.sum(b * b))
    tol = atol + rtol * bnorm
    x0 = jnp.zeros_like(b)
    r0 = b
    z0 = precond(r0)
    rz0 = jnp.sum(r0 * z0)

    def cond(c):
        _, r, _, _, k, _ = c
        return (jnp.sqrt(jnp.sum(r * r)) > tol) & (k < max_steps)

    def body(c):
        x, r, p, rz, k, _ = c
        Ap = matvec(p)
        pAp = jnp.sum(p * Ap)
        alpha = jnp.where(pAp > 0, rz / jnp.where(pAp > 0, pAp, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * Ap
        z = precond(r)
        rz_new = jnp.sum(r * z)
        beta = jnp.where(rz != 0, rz_new / jnp.where(rz != 0, rz, 1.0), 0.0)
        p = z + beta * p
        return x, r, p, rz_new, k + 1, pAp

    init = (x0, r0, z0, rz0, jnp.asarray(0, jnp.int32), jnp.asarray(1.0, dtype))
    x, r, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    converged = jnp.sqrt(jnp.sum(r * r)) <= tol
    return x, converged


def block_jacobi(lin, damping) -> Callable[[Array], Array]:
    """The block-Jacobi preconditioner ``v ↦ blockdiag(JᵀJ + D)⁻¹ v`` (one block per variable)."""
    layout = block_layout_of(lin)
    blocks = lin.jac.gram_block_diag()
    invs = []
    for (off, n, d), B in zip(layout.var_blocks, blocks):
        Dv = damping[off : off + n * d].reshape(n, d)
        B = B + jax.vmap(jnp.diag)(Dv)
        scale = jnp.maximum(jnp.max(jnp.abs(B), axis=(1, 2)), jnp.finfo(B.dtype).tiny)
        eye = jnp.eye(d, dtype=B.dtype)
        # tiny relative ridge keeps rank-deficient blocks invertible
        Breg = B + (jnp.finfo(B.dtype).eps * 10) * scale[:, None, None] * eye[None]
        invs.append(jnp.linalg.inv(Breg))

    def apply(v):
        outs = []
        for (off, n, d), Bi in zip(layout.var_blocks, invs):
            outs.append(jnp.einsum("nij,nj->ni", Bi, v[off : off + n * d].reshape(n, d)).ravel())
        return jnp.concatenate(outs) if len(outs) > 1 else outs[0]

    return apply


class BlockJacobiPCG(AbstractStepSolver):
    """CG on ``JᵀJ + D`` (matrix-free, block-sparse ``J v`` / ``Jᵀ u``) with a block-Jacobi
    preconditioner (the inverse of each variable's ``d × d`` diagonal block of ``JᵀJ + D``).

    Pure JAX: runs on GPU/TPU and under ``vmap`` (the default for batched graphs). Wrapped in
    :func:`jax.lax.custom_linear_solve`, so it is differentiable in both modes.

    ``ok`` is False when CG did not reach its tolerance within ``max_steps`` (the iterate is
    still returned as the step) or the result is not finite.

    Args:
        rtol, atol: stop when ``‖residual‖ ≤ atol + rtol·‖rhs‖``.
        max_steps: CG iteration cap (``None``: the tangent size, at most 2000).
    """

    rtol: float = 1e-10
    atol: float = 0.0
    max_steps: int | None = eqx.field(default=None, static=True)

    def solve(self, lin, damping, rhs=None):
        layout = block_layout_of(lin)
        if rhs is None:
            rhs = -lin.rmv(lin.residual)
        n = layout.n_cols
        max_steps = self.max_steps if self.max_steps is not None else min(n, 2000)
        rtol = max(self.rtol, float(jnp.finfo(rhs.dtype).eps) * 10)
        M = block_jacobi(lin, damping)

        def matvec(v):
            return lin.rmv(lin.mv(v)) + damping * v

        def solve_fn(mv, b):
            return pcg(mv, b, M, rtol, self.atol, max_steps)

        x, converged = jax.lax.custom_linear_solve(matvec, rhs, solve_fn, symmetric=True,
                                                   has_aux=True)
        finite = jnp.all(jnp.isfinite(x))
        # an unconverged iterate is still returned (a usable inexact step), but not as success
        return jnp.where(finite, x, 0.0), finite & converged
