"""The single loop driver shared by every solver and adjoint.

``run`` takes a *problem* (anything with ``linearize(x)``, ``retract(x, δ)`` and
``x_norm(x)``, such as :class:`jaxnlls._linearize.DenseProblem` or a factor graph's problem)
and iterates a solver with ``lax.while_loop`` (forward only) or ``lax.scan`` (reverse
differentiable, for unrolling). Under ``vmap`` the while loop runs until every member
stops; members that have converged are frozen by ``select``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._misc import safe_norm, tree_where
from ._solution import RESULTS
from .linear import AbstractLinearization
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


def init_state(problem, x0, solver: AbstractSolver, inputs_finite) -> LoopState:
    lin = problem.linearize(x0)
    r = lin.residual
    cost = 0.5 * jnp.sum(r * r)
    grad = lin.rmv(r)
    aux = solver.init(lin, cost, problem.x_norm(x0))
    finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(grad))
    result = jnp.where(
        inputs_finite,
        jnp.where(finite, RESULTS.successful, RESULTS.nonfinite_residual),
        RESULTS.nonfinite_input,
    ).astype(jnp.int32)
    zero = jnp.asarray(0, jnp.int32)
    return LoopState(
        x0, lin, cost, grad, aux, zero, zero, result != RESULTS.successful, result, cost
    )


def step(problem, solver: AbstractSolver, state: LoopState) -> LoopState:
    """One iteration: propose, evaluate the trial point, accept or reject, test convergence."""
    delta, solve_ok = solver.propose(state.lin, state.grad, state.aux)
    x_try = problem.retract(state.x, delta)
    lin_try = problem.linearize(x_try)
    r_try = lin_try.residual
    cost_try = 0.5 * jnp.sum(r_try * r_try)
    Jd = state.lin.mv(delta)
    predicted = -(jnp.sum(state.grad * delta) + 0.5 * jnp.sum(Jd * Jd))
    # ½(‖r‖² - ‖r'‖²) = ½ (r - r')·(r + r'): accurate to rounding in r - r', not in ‖r‖²,
    # so the gain ratio stays meaningful when the decrease is below eps·cost.
    r = state.lin.residual
    actual = 0.5 * jnp.sum((r - r_try) * (r + r_try))
    # Below rounding the cost cannot tell a good step from a bad one; trust the model there
    # (gain ratio 1) unless the cost demonstrably rose, so LM keeps driving the gradient down
    # on nonzero-residual problems as Gauss-Newton does.
    noise = 16 * jnp.finfo(cost_try.dtype).eps * state.cost
    in_noise = (jnp.abs(predicted) <= noise) & (actual >= -noise)
    actual = jnp.where(in_noise, predicted, actual)
    grad_try = lin_try.rmv(r_try)
    finite = jnp.isfinite(cost_try) & jnp.all(jnp.isfinite(grad_try))
    accept, aux = solver.update(state.aux, actual, predicted, finite, delta, state.lin)
    accept = accept & finite
    if isinstance(solver, LevenbergMarquardt):
        aux = solver.rescale(aux, lin_try, accept)

    x, lin, cost, grad = tree_where(
        accept, (x_try, lin_try, cost_try, grad_try), (state.x, state.lin, state.cost, state.grad)
    )
    # A relative tolerance below ~100 eps cannot be met in the working precision (float32).
    rtol = jnp.maximum(solver.rtol, 100 * jnp.finfo(cost_try.dtype).eps)
    tol_x = solver.atol + rtol * problem.x_norm(state.x)
    step_small = safe_norm(delta) <= tol_x
    cost_small = jnp.abs(actual) <= solver.atol + rtol * state.cost
    converged = jnp.where(accept, step_small & cost_small, step_small)
    converged = converged | (jnp.max(jnp.abs(grad)) <= solver.gtol)
    failed = (~finite) & solver.stop_on_nonfinite
    result = jnp.where(failed, RESULTS.nonfinite_residual, state.result).astype(jnp.int32)
    if solver.verbose:
        jax.debug.print(
            "step {s:4d}  cost {c:.10e}  |grad| {g:.3e}  |step| {d:.3e}  accepted {a}",
            s=state.steps + 1,
            c=cost,
            g=safe_norm(grad),
            d=safe_norm(delta),
            a=accept,
            ordered=True,
        )
    del solve_ok  # a failed linear solve already returns a finite fallback step
    return LoopState(
        x,
        lin,
        cost,
        grad,
        aux,
        state.steps + 1,
        state.accepted + accept.astype(jnp.int32),
        converged | failed,
        result,
        state.initial_cost,
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

    ``unroll=True`` uses a ``lax.scan`` of exactly ``max_steps`` masked iterations (reverse
    differentiable; the body is rematerialized with ``jax.checkpoint`` when ``checkpoint``).
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
        state = jax.lax.while_loop(
            lambda s: (~s.done) & (s.steps < max_steps), body, state
        )
    result = jnp.where(
        (~state.done) & (state.result == RESULTS.successful),
        RESULTS.max_steps_reached,
        state.result,
    ).astype(jnp.int32)
    return eqx.tree_at(lambda s: s.result, state, result)
