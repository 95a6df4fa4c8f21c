"""The single loop driver shared by every solver and adjoint.

``run`` takes a *problem* (anything with ``linearize(x)``, ``residual(x)``,
``retract(x, δ)`` and ``x_norm(x)``, such as :class:`jaxnlls._linearize.DenseProblem` or a
factor graph's problem) and iterates a solver with ``lax.while_loop`` (forward only) or
``lax.scan`` (reverse differentiable, for unrolling). Under ``vmap`` the while loop runs
until every member stops; members that have converged are frozen by ``select``.

Two evaluation schedules (``carry_linearization``):

- ``False`` (small dense problems, the default of ``solve``): linearize at the top of each
  iteration and evaluate only the residual at the trial point. The loop carry is tiny, which
  matters under ``vmap``: every carried array is selected once per iteration, and a batch of
  Jacobians is the largest thing in memory (profiled with XLA's cost analysis on 4,096 curve
  fits: 70 MB of memory traffic per iteration when carrying the Jacobian).
- ``True`` (large sparse problems): linearize at the trial point and carry the linearization,
  so each iteration evaluates the residual and Jacobian once.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._linearize import DenseProblem
from ._misc import safe_norm, tree_where
from ._solution import RESULTS
from .linear import AbstractLinearization, DenseLinearization
from .solvers import AbstractSolver, LevenbergMarquardt


class LoopState(eqx.Module):
    x: Any
    lin: AbstractLinearization | None
    cost: jax.Array
    grad: jax.Array
    aux: Any
    steps: jax.Array
    accepted: jax.Array
    done: jax.Array
    result: jax.Array
    initial_cost: jax.Array


def init_state(problem, x0, solver: AbstractSolver, inputs_finite, carry_linearization=True):
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
        x0,
        lin if carry_linearization else None,
        cost,
        grad,
        aux,
        zero,
        zero,
        result != RESULTS.successful,
        result,
        cost,
    )


def _predicted_decrease(lin, grad, delta):
    """``-(gᵀδ + ½‖Jδ‖²)``, using the small ``JᵀJ`` when it is at hand."""
    if isinstance(lin, DenseLinearization):
        quad = delta @ (lin.gram() @ delta)
    else:
        Jd = lin.mv(delta)
        quad = jnp.sum(Jd * Jd)
    return -(jnp.sum(grad * delta) + 0.5 * quad)


def step(problem, solver: AbstractSolver, state: LoopState) -> LoopState:
    """One iteration: propose, evaluate the trial point, accept or reject, test convergence."""
    carry = state.lin is not None
    if carry:
        lin, grad = state.lin, state.grad
    else:
        lin = problem.linearize(state.x)
        grad = lin.rmv(lin.residual)
    aux = state.aux
    if isinstance(solver, LevenbergMarquardt):
        aux = solver.rescale(aux, lin)
    delta, _ = solver.propose(lin, grad, aux)  # a failed solve returns a finite fallback
    x_try = problem.retract(state.x, delta)
    if carry:
        lin_try = problem.linearize(x_try)
        r_try = lin_try.residual
    else:
        lin_try = None
        r_try = problem.residual(x_try)
    cost_try = 0.5 * jnp.sum(r_try * r_try)
    predicted = _predicted_decrease(lin, grad, delta)
    # ½(‖r‖² - ‖r'‖²) = ½ (r - r')·(r + r'): accurate to rounding in r - r', not in ‖r‖².
    r = lin.residual
    actual = 0.5 * jnp.sum((r - r_try) * (r + r_try))
    # Below rounding the cost cannot tell a good step from a bad one; trust the model there
    # (gain ratio 1) unless the cost demonstrably rose, so LM keeps driving the gradient down
    # on nonzero-residual problems as Gauss-Newton does.
    noise = 16 * jnp.finfo(cost_try.dtype).eps * state.cost
    in_noise = (jnp.abs(predicted) <= noise) & (actual >= -noise)
    actual = jnp.where(in_noise, predicted, actual)
    finite = jnp.isfinite(cost_try)
    if carry:
        grad_try = lin_try.rmv(r_try)
        finite = finite & jnp.all(jnp.isfinite(grad_try))
    accept, aux = solver.update(aux, actual, predicted, finite, delta, lin)
    accept = accept & finite

    if carry:
        x, new_lin, cost, new_grad = tree_where(
            accept, (x_try, lin_try, cost_try, grad_try), (state.x, lin, state.cost, grad)
        )
    else:
        x, cost = tree_where(accept, (x_try, cost_try), (state.x, state.cost))
        new_lin, new_grad = None, grad  # gradient at the start of this step
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
    return LoopState(
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
    carry_linearization: bool | None = None,
) -> LoopState:
    """Iterate to convergence or ``max_steps``; returns the final loop state.

    The returned state always holds the linearization at the final ``x`` (``state.lin``) and
    the gradient there (``state.grad``). ``unroll=True`` uses a ``lax.scan`` of exactly
    ``max_steps`` masked iterations (reverse differentiable; the body is rematerialized with
    ``jax.checkpoint`` when ``checkpoint``).
    """
    if carry_linearization is None:  # small dense problems recompute; big graphs carry
        carry_linearization = not isinstance(problem, DenseProblem)
    state = init_state(problem, x0, solver, inputs_finite, carry_linearization)

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
    result = jnp.where(
        (~state.done) & (state.result == RESULTS.successful),
        RESULTS.max_steps_reached,
        state.result,
    ).astype(jnp.int32)
    if not carry_linearization:  # one more evaluation gives the final gradient and Jacobian
        lin = problem.linearize(state.x)
        state = eqx.tree_at(lambda s: (s.lin, s.grad), state, (lin, lin.rmv(lin.residual)),
                            is_leaf=lambda v: v is None)
    return eqx.tree_at(lambda s: s.result, state, result)
