"""Solver configuration Modules and their per-iteration maths.

A solver proposes a tangent step from the current linearization and decides, from the
actual and predicted cost decrease, whether to accept it and how to adapt its damping or
trust region. The loop itself lives in ``jaxnlls._iterate`` and is shared by all solvers.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float

from .._misc import safe_div, safe_norm
from ..linear import AbstractLinearization, AbstractStepSolver, DenseCholesky, DenseLinearization


class AbstractSolver(eqx.Module):
    """Base of the Gauss-Newton family.

    Convergence (all traced, so they can be vmapped): an accepted step is converged when both
    ``‖δ‖ ≤ atol + rtol·‖x‖`` and ``|Δcost| ≤ atol + rtol·cost``; a rejected step is converged
    when ``‖δ‖ ≤ atol + rtol·‖x‖`` (no further progress is possible at this precision); and
    any iterate with ``max|∇cost| ≤ gtol`` is converged. The cost is ``½‖r‖²``. With
    ``stop_on_small_decrease=True`` an accepted step is also converged when its actual and
    predicted decreases are both ``≤ atol + rtol·cost`` (GTSAM's rule; see the field).
    """

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    gtol: eqx.AbstractVar[float]
    linear_solver: eqx.AbstractVar[AbstractStepSolver]
    verbose: eqx.AbstractVar[bool]

    #: Whether a failed step solve (whose fallback is not a step) is a rejected trial, answered
    #: by more damping: Levenberg-Marquardt's system changes with its damping, so a retry can
    #: succeed. Otherwise (Gauss-Newton, dogleg's Gauss-Newton step) the loop stops with
    #: ``RESULTS.linear_solve_failed``.
    retries_failed_solve: ClassVar[bool] = False

    def __check_init__(self):
        if not isinstance(self.linear_solver, AbstractStepSolver):
            hint = (" (lineax solvers belong to ImplicitAdjoint(linear_solver=...))"
                    if isinstance(self.linear_solver, lx.AbstractLinearSolver) else "")
            raise TypeError(
                f"{type(self).__name__}(linear_solver=...) must be a jaxnlls step solver such "
                "as DenseCholesky(), SparseCholesky(), BlockJacobiPCG() or SchurComplement(); "
                f"got {self.linear_solver!r}{hint}"
            )

    @abc.abstractmethod
    def init(self, lin: AbstractLinearization, cost, x_norm) -> Any:
        """Solver-specific state (damping, trust radius, ...)."""

    @abc.abstractmethod
    def propose(
        self, lin: AbstractLinearization, grad, aux
    ) -> tuple[Float[Array, " n"], Bool[Array, ""]]:
        """A step ``δ`` and whether its linear solve succeeded."""

    @abc.abstractmethod
    def update(self, aux, actual, predicted, finite, delta, lin) -> tuple[Bool[Array, ""], Any]:
        """Accept or reject; the new solver state."""

    #: Gauss-Newton stops on a non-finite trial (it has no way to shorten its step).
    stop_on_nonfinite: bool = eqx.field(default=False, static=True)
    #: Also converged: an accepted step whose actual *and* predicted cost decreases are both
    #: ``≤ atol + rtol·cost``, however long the step (GTSAM's and Theseus's error-decrease rule;
    #: looser than the default, which also needs the step to be small).
    stop_on_small_decrease: bool = eqx.field(default=False, static=True)


class GaussNewton(AbstractSolver):
    """Undamped Gauss-Newton: ``δ = -(JᵀJ)⁻¹ Jᵀ r``, every finite step accepted.

    Fast on well-posed, small-residual problems; diverges from poor starts. When ``JᵀJ`` is
    singular the step solver's fallback (pseudo-inverse) keeps the step finite.

    Differentiability: see :func:`jaxnlls.solve` (the adjoint decides; the solver does not).
    """

    rtol: float = 1e-8
    atol: float = 1e-8
    gtol: float = 0.0
    linear_solver: AbstractStepSolver = DenseCholesky()
    verbose: bool = eqx.field(default=False, static=True)
    stop_on_nonfinite: bool = eqx.field(default=True, static=True)

    def init(self, lin, cost, x_norm):
        return None

    def propose(self, lin, grad, aux):
        n = grad.shape[0]
        return self.linear_solver.solve(lin, jnp.zeros(n, grad.dtype), -grad)

    def update(self, aux, actual, predicted, finite, delta, lin):
        return finite, aux


class LMState(eqx.Module):
    damping: Float[Array, ""]
    nu: Float[Array, ""]
    scale: Float[Array, " n"]


class LevenbergMarquardt(AbstractSolver):
    """Levenberg-Marquardt with Nielsen's gain-ratio damping update.

    Step: ``(JᵀJ + λ D) δ = -Jᵀ r`` with ``D = I`` (Levenberg), or, with ``scaled=True``,
    Marquardt's diagonal scaling ``D = diag(JᵀJ)`` kept as the running maximum over iterations
    (as MINPACK does), which makes the method invariant to the scaling of the parameters and
    is what hard problems such as NIST Hahn1 need. A step is accepted when the gain ratio
    ``ρ = (actual decrease) / (predicted decrease)`` exceeds ``accept``; then
    ``λ ← λ·max(1/3, 1 - (2ρ - 1)³)``, otherwise ``λ ← λ·ν, ν ← 2ν``.
    The initial damping is ``initial_damping · max diag(JᵀJ)`` (unscaled) or
    ``initial_damping`` (scaled).
    """

    rtol: float = 1e-8
    atol: float = 1e-8
    gtol: float = 0.0
    linear_solver: AbstractStepSolver = DenseCholesky()
    initial_damping: float = 1e-3
    accept: float = 1e-4
    scaled: bool = eqx.field(default=False, static=True)
    verbose: bool = eqx.field(default=False, static=True)

    retries_failed_solve: ClassVar[bool] = True

    def _diag(self, lin, prev=None):
        d = lin.gram_diag()
        if prev is not None:
            d = jnp.maximum(prev, d)
        return d

    def init(self, lin, cost, x_norm):
        d = lin.gram_diag()
        dtype = lin.residual.dtype
        if self.scaled:
            lam = jnp.asarray(self.initial_damping, dtype)
            scale = d
        else:
            dmax = jnp.max(d)
            lam = self.initial_damping * jnp.where(dmax > 0, dmax, 1.0)
            scale = jnp.ones_like(d)
        return LMState(lam.astype(dtype), jnp.asarray(2.0, dtype), scale)

    def _damping_vector(self, aux):
        if self.scaled:
            smax = jnp.max(aux.scale)
            floor = jnp.finfo(aux.scale.dtype).eps * jnp.where(smax > 0, smax, 1.0)
            return aux.damping * jnp.maximum(aux.scale, floor)
        return aux.damping * aux.scale

    def propose(self, lin, grad, aux):
        return self.linear_solver.solve(lin, self._damping_vector(aux), -grad)

    def update(self, aux, actual, predicted, finite, delta, lin):
        rho = jnp.where(finite & (predicted > 0), safe_div(actual, predicted), -1.0)
        accept = finite & (rho > self.accept)
        factor = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        damping = jnp.where(accept, aux.damping * factor, aux.damping * aux.nu)
        nu = jnp.where(accept, jnp.asarray(2.0, aux.nu.dtype), 2.0 * aux.nu)
        # Keep the damping within floating range so a long run of rejections cannot overflow.
        tiny = jnp.finfo(aux.damping.dtype).tiny
        damping = jnp.clip(damping, tiny, 1 / jnp.finfo(aux.damping.dtype).eps ** 2)
        return accept, LMState(damping, nu, aux.scale)

    def rescale(self, aux, lin):
        """Marquardt scaling: running maximum of ``diag(JᵀJ)`` over the iterates seen."""
        if not self.scaled:
            return aux
        return LMState(aux.damping, aux.nu, jnp.maximum(aux.scale, lin.gram_diag()))


class DoglegState(eqx.Module):
    radius: Float[Array, ""]


class Dogleg(AbstractSolver):
    """Powell's dogleg trust-region method.

    The step is the Gauss-Newton step when it fits in the trust region, the steepest-descent
    (Cauchy) step clipped to the region when even that does not fit, and otherwise the point
    where the dogleg path between them leaves the region. The radius grows (×3, to at least
    the step) when the gain ratio exceeds 0.75 and halves below 0.25. The initial radius is
    ``initial_radius · max(‖x‖, 1)``. Where the Gauss-Newton solve fails (a singular system for
    a sparse step solver, an unconverged CG), the step is the Cauchy step alone.
    """

    rtol: float = 1e-8
    atol: float = 1e-8
    gtol: float = 0.0
    linear_solver: AbstractStepSolver = DenseCholesky()
    initial_radius: float = 1.0
    accept: float = 1e-4
    verbose: bool = eqx.field(default=False, static=True)

    def init(self, lin, cost, x_norm):
        dtype = lin.residual.dtype
        return DoglegState(jnp.asarray(self.initial_radius, dtype) * jnp.maximum(x_norm, 1.0))

    def propose(self, lin, grad, aux):
        n = grad.shape[0]
        gn, ok = self.linear_solver.solve(lin, jnp.zeros(n, grad.dtype), -grad)
        radius = aux.radius
        gnorm = safe_norm(grad)
        if isinstance(lin, DenseLinearization):
            jg2 = lin.quad(grad)
        else:
            Jg = lin.mv(grad)
            jg2 = jnp.sum(Jg * Jg)
        alpha = safe_div(gnorm**2, jg2)
        sd = -alpha * grad
        sd_norm = alpha * gnorm
        gn_norm = safe_norm(gn)
        clipped_sd = -safe_div(radius, gnorm) * grad
        diff = gn - sd
        c = jnp.sum(sd * diff)
        d = jnp.sum(diff * diff)
        disc = jnp.maximum(c * c + d * (radius**2 - sd_norm**2), 0.0)
        beta = safe_div(-c + jnp.sqrt(disc), d)
        blend = sd + jnp.clip(beta, 0.0, 1.0) * diff
        delta = jnp.where(
            gn_norm <= radius, gn, jnp.where(sd_norm >= radius, clipped_sd, blend)
        )
        # When the Gauss-Newton solve failed and its fallback is no step (a sparse or Schur
        # solver's zero, CG's unconverged iterate), the Cauchy step still is one: take it, as
        # Powell's method does, instead of stopping.
        gn_usable = ok | self.linear_solver.fallback_is_step
        cauchy = jnp.where(sd_norm >= radius, clipped_sd, sd)
        return jnp.where(gn_usable, delta, cauchy), jnp.asarray(True)

    def update(self, aux, actual, predicted, finite, delta, lin):
        rho = jnp.where(finite & (predicted > 0), safe_div(actual, predicted), -1.0)
        accept = finite & (rho > self.accept)
        step = safe_norm(delta)
        radius = jnp.where(
            rho > 0.75,
            jnp.maximum(aux.radius, 3.0 * step),
            jnp.where(rho < 0.25, 0.5 * jnp.minimum(aux.radius, step), aux.radius),
        )
        return accept, DoglegState(radius)
