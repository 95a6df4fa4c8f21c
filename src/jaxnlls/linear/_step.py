"""Step solvers: solve the damped normal equations ``(JᵀJ + D) δ = -Jᵀ r`` (or a given rhs)."""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float

from ._blockchol import graph_psd_solve
from ._blocksparse import BlockSparseLinearization
from ._dense import psd_solve
from ._linearization import AbstractLinearization, DenseLinearization


class AbstractStepSolver(eqx.Module):
    """Solves ``(JᵀJ + diag(damping)) δ = rhs`` given a linearization.

    ``rhs`` defaults to ``-Jᵀ r`` (the Gauss-Newton / Levenberg-Marquardt step).
    Returns ``(δ, ok)``; ``ok`` is False when the system was singular or the solve failed,
    in which case ``δ`` is still finite (a fallback answer).
    """

    needs_matrix: ClassVar[bool] = True
    #: Whether the ``δ`` returned with ``ok=False`` is still a step to take: the dense safe-pivot
    #: Cholesky's basic solution of a singular system is; the zero fallback of the sparse and
    #: Schur solvers, or an unconverged CG iterate, is not (see ``_iterate.judge``).
    fallback_is_step: ClassVar[bool] = False

    @abc.abstractmethod
    def solve(
        self,
        lin: AbstractLinearization,
        damping: Float[Array, " n"],
        rhs: Float[Array, " n"] | None = None,
    ) -> tuple[Float[Array, " n"], Bool[Array, ""]]: ...


class DenseCholesky(AbstractStepSolver):
    """Form ``JᵀJ + D`` and factor it by Cholesky with safe pivots: a numerically singular
    direction gets a zero solution component (a basic solution, ``ok=False``; see
    :func:`psd_solve`). The default for small problems. For a factor graph under ``vmap``, the
    factorization runs on the graph's block pattern with the batch axis last
    (:func:`jaxnlls.linear._blockchol.graph_psd_solve`)."""

    fallback_is_step: ClassVar[bool] = True

    def solve(self, lin, damping, rhs=None):
        if isinstance(lin, BlockSparseLinearization):
            # a factor graph: under `vmap`, a batch-last block Cholesky on the graph's pattern
            rhs = -lin.rmv(lin.residual) if rhs is None else rhs
            return graph_psd_solve(lin, damping, rhs)
        if isinstance(lin, DenseLinearization):
            A = lin.gram()
        else:  # any linearization that can materialize its Jacobian
            J = lin.as_matrix()
            A = J.T @ J
        A = A + jnp.diag(damping)
        if rhs is None:
            rhs = -(lin.jtr if isinstance(lin, DenseLinearization) else lin.rmv(lin.residual))
        return psd_solve(A, rhs)


class QR(AbstractStepSolver):
    """Least squares on the stacked system ``[J; √D] δ ≈ [-r; 0]`` by QR (lineax).

    Avoids squaring the condition number of ``J``; use it when ``J`` is ill-conditioned
    (e.g. NIST's harder problems in float32).
    """

    def solve(self, lin, damping, rhs=None):
        J = lin.as_matrix()
        n = J.shape[1]
        aug = jnp.concatenate([J, jnp.diag(jnp.sqrt(damping))], axis=0)
        if rhs is None:
            b = jnp.concatenate([-lin.residual, jnp.zeros(n, J.dtype)])
            sol = lx.linear_solve(lx.MatrixLinearOperator(aug), b, lx.QR(), throw=False)
            delta = sol.value
        else:
            _, R = jnp.linalg.qr(aug, mode="reduced")
            y = jax.scipy.linalg.solve_triangular(R.T, rhs, lower=True)
            delta = jax.scipy.linalg.solve_triangular(R, y, lower=False)
        ok = jnp.all(jnp.isfinite(delta))
        return jnp.where(ok, delta, 0.0), ok


class CG(AbstractStepSolver):
    """Matrix-free conjugate gradients on ``JᵀJ + D`` through ``J v`` and ``Jᵀ u`` (lineax CG).

    With a matrix-free linearization no Jacobian is ever formed: each CG iteration costs one
    JVP and one VJP of the residual. ``jacobi=True`` preconditions with ``diag(JᵀJ) + D``,
    which costs ``n`` JVPs per outer step for a matrix-free Jacobian.
    """

    rtol: float = 1e-10
    atol: float = 1e-12
    max_steps: int | None = eqx.field(default=None, static=True)
    jacobi: bool = eqx.field(default=False, static=True)

    needs_matrix: ClassVar[bool] = False

    def solve(self, lin, damping, rhs=None):
        if rhs is None:
            rhs = -lin.rmv(lin.residual)
        n = rhs.shape[0]
        struct = jax.ShapeDtypeStruct((n,), rhs.dtype)
        op = lx.FunctionLinearOperator(
            lambda v: lin.rmv(lin.mv(v)) + damping * v, struct, lx.positive_semidefinite_tag
        )
        options = {}
        if self.jacobi:
            diag = lin.gram_diag() + damping
            inv = jnp.where(diag > 0, 1.0 / jnp.where(diag > 0, diag, 1.0), 1.0)
            options["preconditioner"] = lx.DiagonalLinearOperator(inv)
            options["preconditioner"] = lx.TaggedLinearOperator(
                options["preconditioner"], lx.positive_semidefinite_tag
            )
        max_steps = self.max_steps if self.max_steps is not None else 10 * n
        solver = lx.CG(rtol=self.rtol, atol=self.atol, max_steps=max_steps)
        sol = lx.linear_solve(op, rhs, solver, options=options, throw=False)
        ok = jnp.all(jnp.isfinite(sol.value))
        converged = sol.result == lx.RESULTS.successful
        return jnp.where(ok, sol.value, 0.0), ok & converged
