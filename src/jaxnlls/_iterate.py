"""The single loop driver shared by every solver and adjoint.

``run`` takes a *problem* (anything with ``linearize(x)``, ``residual(x)``,
``retract(x, δ)`` and ``x_norm(x)``, such as :class:`jaxnlls._linearize.DenseProblem` or a
factor graph's problem) and iterates a solver with ``lax.while_loop`` (forward only) or
``lax.scan`` (reverse differentiable, for unrolling). Under ``vmap`` the while loop runs
until every member stops; members that have converged are frozen by ``select``.

Each iteration evaluates the residual and Jacobian once, at the trial point, and the
linearization is carried to the next iteration. Here the one at ``x0`` is computed before the
loop; the factor-graph loop (:func:`jaxnlls.graph._restart.run_with_restart`) evaluates ``x0``
in its first iteration instead, built from the same pieces (:func:`state_at`, :func:`propose`,
:func:`judge`), so that XLA compiles its big linearization once.

Dense linearizations are *compacted* first when the step solver only needs ``JᵀJ`` and ``Jᵀr``
(``DenseCholesky``): under ``vmap`` every carried array is selected once per iteration, and a
batch of Jacobians is the largest thing in memory (XLA cost analysis on 4,096 curve fits: 70 MB
of memory traffic per iteration with the Jacobian carried, about a third of that compacted).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._misc import safe_norm, tree_where
from ._solution import RESULTS
from .linear import AbstractLinearization, DenseCholesky, DenseLinearization
from .solvers import AbstractSolver, LevenbergMarquardt


class LoopState(eqx.Module):
    x: Any
    lin: AbstractLinearization
    cost: jax.Array
    grad: jax.Array
    aux: Any
    steps: jax.Array
    accepted: jax.Array
    done: jax.Array
    result: jax.Array
    initial_cost: jax.Array
    wall: jax.Array  # a non-finite trial since the last accepted step larger than tolerance


def gradient(lin) -> jax.Array:
    """``Jᵀ r`` (precomputed for dense linearizations)."""
    if isinstance(lin, DenseLinearization):
        return lin.jtr
    return lin.rmv(lin.residual)


def _compactor(solver: AbstractSolver):
    if isinstance(solver.linear_solver, DenseCholesky):
        return lambda lin: lin.compact() if isinstance(lin, DenseLinearization) else lin
    return lambda lin: lin


def state_at(problem, x, lin, solver: AbstractSolver, inputs_finite) -> LoopState:
    """The loop state at a starting point ``x`` linearized as ``lin`` (no step taken yet)."""
    r = lin.residual
    cost = 0.5 * jnp.sum(r * r)
    grad = gradient(lin)
    aux = solver.init(lin, cost, problem.x_norm(x))
    finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(grad))
    result = jnp.where(
        inputs_finite,
        jnp.where(finite, RESULTS.successful, RESULTS.nonfinite_residual),
        RESULTS.nonfinite_input,
    ).astype(jnp.int32)
    zero = jnp.asarray(0, jnp.int32)
    return LoopState(
        x, _compactor(solver)(lin), cost, grad, aux, zero, zero,
        result != RESULTS.successful, result, cost, jnp.asarray(False),
    )


def init_state(problem, x0, solver: AbstractSolver, inputs_finite) -> LoopState:
    return state_at(problem, x0, problem.linearize(x0), solver, inputs_finite)


def _predicted_decrease(lin, grad, delta):
    """``-(gᵀδ + ½‖Jδ‖²)``, from ``JᵀJ`` when it is at hand."""
    if isinstance(lin, DenseLinearization):
        quad = lin.quad(delta)
    else:
        Jd = lin.mv(delta)
        quad = jnp.sum(Jd * Jd)
    return -(jnp.sum(grad * delta) + 0.5 * quad)


def propose(problem, solver: AbstractSolver, state: LoopState):
    """A step from the current linearization: ``(aux, δ, x ⊕ δ, predicted decrease, ok)``,
    ``ok`` False when the step's linear solve failed (``δ`` is then the step solver's finite
    fallback)."""
    lin, grad, aux = state.lin, state.grad, state.aux
    if isinstance(solver, LevenbergMarquardt):
        aux = solver.rescale(aux, lin)
    delta, ok = solver.propose(lin, grad, aux)
    x_try = problem.retract(state.x, delta)
    return aux, delta, x_try, _predicted_decrease(lin, grad, delta), ok


def step(problem, solver: AbstractSolver, state: LoopState) -> LoopState:
    """One iteration: propose, evaluate the trial point, accept or reject, test convergence."""
    proposal = propose(problem, solver, state)
    return judge(problem, solver, state, proposal, problem.linearize(proposal[2]))


def judge(
    problem, solver: AbstractSolver, state: LoopState, proposal, lin_full, *, log: bool = True
) -> LoopState:
    """Accept or reject the trial point of ``proposal`` (from :func:`propose`), linearized as
    ``lin_full``, against ``state``; test convergence."""
    aux, delta, x_try, predicted, solve_ok = proposal
    lin, grad = state.lin, state.grad
    r_try = lin_full.residual
    cost_try = 0.5 * jnp.sum(r_try * r_try)
    lin_try = _compactor(solver)(lin_full)
    r = lin.residual
    if r is None:  # compacted: nothing of size m is carried, so only the costs are at hand
        actual = state.cost - cost_try
    else:  # ½(‖r‖² - ‖r'‖²) = ½ (r - r')·(r + r'): accurate to rounding in r - r'
        actual = 0.5 * jnp.sum((r - r_try) * (r + r_try))
    grad_try = gradient(lin_try)
    # Near convergence the decrease is below the rounding of the cost itself: each residual
    # carries its own rounding, so two costs of ~1 differ by noise of 10-100 eps (4,096 SE(2)
    # graphs: LM rejected steps predicted to gain 2.8e-14 on a cost of 2.47 and took 20 steps
    # under vmap instead of 9). There, estimate the decrease from the gradients at both ends,
    # -½ (g + g')·δ: exact for a quadratic, second-order accurate otherwise, and its rounding
    # scales with ‖g‖‖δ‖ rather than with the cost. (For x ⊕ δ = x·Exp(δ) the path's end
    # direction in the trial point's chart is δ itself.)
    eps = jnp.finfo(cost_try.dtype).eps
    tiny = jnp.sqrt(eps) * state.cost
    trapezoid = -0.5 * jnp.sum((grad + grad_try) * delta)
    actual = jnp.where((jnp.abs(predicted) <= tiny) & (jnp.abs(actual) <= tiny), trapezoid,
                       actual)
    # Below rounding the cost cannot tell a good step from a bad one; trust the model there
    # (gain ratio 1) unless the cost demonstrably rose, so LM keeps driving the gradient down
    # on nonzero-residual problems as Gauss-Newton does.
    noise = 16 * eps * state.cost
    in_noise = (jnp.abs(predicted) <= noise) & (actual >= -noise)
    actual = jnp.where(in_noise, predicted, actual)
    finite = jnp.isfinite(cost_try) & jnp.all(jnp.isfinite(grad_try))
    # A failed linear solve returns a fallback step: zero for the sparse and Schur solvers, an
    # unconverged iterate for CG. Such a trial is not a step of the method: LM rejects it and
    # raises its damping (its system changes with it); other solvers stop below. (The dense
    # safe-pivot solve's fallback for a singular JᵀJ is a basic solution, a real step, taken as
    # one; where it is small the point is a minimum, and the final rank test says singular.)
    no_step = ~solve_ok & (not solver.linear_solver.fallback_is_step)
    retry = solver.retries_failed_solve
    trial_ok = finite & ~no_step if retry else finite
    accept, aux = solver.update(aux, actual, predicted, trial_ok, delta, lin)
    accept = accept & trial_ok

    x, new_lin, cost, new_grad = tree_where(
        accept, (x_try, lin_try, cost_try, grad_try), (state.x, lin, state.cost, grad)
    )
    # A relative tolerance below ~100 eps cannot be met in the working precision (float32).
    rtol = jnp.maximum(solver.rtol, 100 * jnp.finfo(cost_try.dtype).eps)
    tol_x = solver.atol + rtol * problem.x_norm(state.x)
    step_small = safe_norm(delta) <= tol_x
    cost_small = jnp.abs(actual) <= solver.atol + rtol * state.cost
    if solver.stop_on_small_decrease:  # GTSAM's rule: an accepted step that gains ~nothing
        model_small = jnp.abs(predicted) <= solver.atol + rtol * state.cost
        converged = jnp.where(accept, cost_small & (step_small | model_small), step_small)
    else:
        converged = jnp.where(accept, step_small & cost_small, step_small)
    grad_small = jnp.max(jnp.abs(new_grad)) <= solver.gtol
    if retry:
        converged = converged & ~no_step  # the zero fallback is not a small step
    converged = converged | grad_small
    # LM and dogleg shrink their steps after a non-finite trial; when they then stop on a
    # small step with no larger accepted step since, they stopped at a NaN/inf wall of the
    # residual, not at a stationary point: report it rather than success.
    wall = (state.wall | ~finite) & ~(accept & ~step_small)
    failed = (~finite) & solver.stop_on_nonfinite | (wall & converged & ~grad_small)
    result = jnp.where(failed, RESULTS.nonfinite_residual, state.result)
    # without a retry the fallback's small step would stop the loop as if converged, at a point
    # that is not a stationary point (GN with a sparse solver on a graph with an unobserved
    # variable stopped "successful" at its start): report the failure instead
    solve_failed = no_step & converged & ~grad_small & ~failed
    result = jnp.where(solve_failed, RESULTS.linear_solve_failed, result).astype(jnp.int32)
    new = LoopState(
        x,
        new_lin,
        cost,
        new_grad,
        aux,
        state.steps + 1,
        state.accepted + accept.astype(jnp.int32),
        converged | failed,
        result,
        state.initial_cost,
        wall,
    )
    if log:
        log_step(solver, new, delta, accept)
    return new


def log_step(solver: AbstractSolver, state: LoopState, delta, accepted) -> None:
    """The progress line of ``verbose`` solvers."""
    if solver.verbose:
        jax.debug.print(
            "step {s:4d}  cost {c:.10e}  |grad| {g:.3e}  |step| {d:.3e}  accepted {a}",
            s=state.steps,
            c=state.cost,
            g=safe_norm(state.grad),
            d=safe_norm(delta),
            a=accepted,
            ordered=True,
        )


def run(
    problem,
    x0,
    solver: AbstractSolver,
    max_steps: int,
    inputs_finite,
    *,
    unroll: bool = False,
    checkpoint: bool = True,
) -> LoopState:
    """Iterate to convergence or ``max_steps``; returns the final loop state.

    The returned state holds the (possibly compacted) linearization at the final ``x`` and the
    gradient there. ``unroll=True`` uses a ``lax.scan`` of exactly
    ``max_steps`` masked iterations (reverse differentiable; the body is rematerialized with
    ``jax.checkpoint`` when ``checkpoint``).
    """
    state = init_state(problem, x0, solver, inputs_finite)

    def body(s):
        return step(problem, solver, s)

    if unroll:
        body_fn = jax.checkpoint(body) if checkpoint else body

        def scan_body(s, _):
            new = body_fn(s)
            return tree_where(s.done, s, new), None

        state, _ = jax.lax.scan(scan_body, state, None, length=max_steps)
    else:
        state = jax.lax.while_loop(lambda s: (~s.done) & (s.steps < max_steps), body, state)
    return finish(state)


def finish(state: LoopState) -> LoopState:
    """``max_steps_reached`` for a state that stopped without converging or failing."""
    result = jnp.where(
        (~state.done) & (state.result == RESULTS.successful),
        RESULTS.max_steps_reached,
        state.result,
    ).astype(jnp.int32)
    return eqx.tree_at(lambda s: s.result, state, result)
