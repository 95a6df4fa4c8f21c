"""The solve loop of :meth:`jaxnlls.graph.FactorGraph.solve` (default adjoint) and its restart
strategy: plain GTSAM-style LM first, then, when that has not converged within ``restart_after``
steps, LM with diagonal (Marquardt) damping from the *initial* values; the lower-cost run is
returned.

Why the loop evaluates ``x0`` in its first iteration (unlike :func:`jaxnlls._iterate.run`,
which linearizes at ``x0`` before the loop): XLA then compiles the linearization once, not
twice, and a factor graph's linearization is big (the SE(3) between factor alone compiles in
2.7 s; on sphere2500 the solve compiled in 8.8–9.3 s of CPU time before, 6.3 s after). The dense
path keeps the other order: its linearizations are cheap to compile, and under ``vmap`` over
thousands of small problems this order's extra carries and selects cost more than they save
(bench/curve.py, 4,096 fits, with this loop: LM 14 → 25 ms per batch, dogleg 12 → 17 ms).

Why a restart and not a switch in place: on the pose graphs where plain LM is slow
(``input_M3500a``: a worse local minimum; ``sphere_bignoise``: a worse local minimum after
~830 steps; ``input_INTEL_g2o``: nearly singular information matrices, thousands of steps),
the basin is decided in the first few large steps. Switching to diagonal damping after 10–30
plain steps lands in the same minimum as plain LM (measured: 3878.3 on M3500a for a switch
after 10, 15, 20, 25 or 30 steps, 3 758 126 on sphere_bignoise after 30), while diagonal
damping from the initial guess reaches 3563.0 / 3.69e6 / 117.7 (GTSAM's reference: 3609.2 /
3 705 024 / 125.6). This is the procedure of ``bench/gtsam_reference.py`` (plain LM, then
``diagonalDamping=True`` from the initial guess, keep the lower).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._iterate import LoopState, finish, judge, log_step, propose, state_at
from .._misc import tree_where
from .._solution import RESULTS
from ..solvers import AbstractSolver
from ._lm import GraphLevenbergMarquardt, GraphLMState


def run_with_restart(problem, x0, solver: AbstractSolver, max_steps: int,
                     inputs_finite) -> LoopState:
    """``_iterate.run`` (forward only) for factor graphs, with the restart of
    :class:`GraphLevenbergMarquardt` (see there).

    One iteration proposes a step from the current state (:func:`jaxnlls._iterate.propose`),
    linearizes the trial point and accepts or rejects it (:func:`jaxnlls._iterate.judge`). The
    first iteration evaluates ``x0`` itself instead (no step counted; the state
    :func:`jaxnlls._iterate.state_at` builds there): the ``cond`` on the first-iteration flag
    skips the proposal, so the state the loop starts from, a placeholder of zeros, never
    reaches the step solver. Under ``vmap`` (a batched loop predicate batches every carry) that
    ``cond`` is a ``select``: the first iteration also solves for a step from the placeholder,
    whose all-zero matrix the host sparse solvers return as failed without factoring it, and
    which is discarded.

    Restart (``GraphLevenbergMarquardt`` with ``0 <= restart_after < max_steps``): the same
    ``while_loop`` runs plain LM; a member that has not converged after ``restart_after`` steps
    keeps that state aside and takes a fresh iteration, which evaluates ``x0`` again, with the
    damping mode flag switched to diagonal and the factor to ``restart_factor``, for the
    remaining budget. One loop, not two: the linearization is compiled once per loop, and the
    restart cost 20–25% more compile time as a second loop. Re-evaluating ``x0`` (once, for a
    restarted member) instead of carrying its state keeps one loop state fewer in the carry:
    under ``vmap`` every carried state is selected in every iteration (4,096 SE(2) graphs on
    one core: 263–275 against 286–294 ms for the solve, 1 s less compile). The
    returned state is the lower-cost of the two runs, with ``steps``/``accepted`` counted over
    both, and the result of the run it comes from (``max_steps_reached`` when neither
    converged). Members that converge in plain LM never restart (also under ``vmap``).
    """
    restart = isinstance(solver, GraphLevenbergMarquardt) and 0 <= solver.restart_after < max_steps

    def start_at(x, lin):
        return state_at(problem, x, lin, solver, inputs_finite)

    shapes = jax.eval_shape(lambda x: start_at(x, problem.linearize(x)), x0)  # traced only
    s0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)  # placeholder, never used
    at_x0 = (s0.aux, jnp.zeros_like(s0.grad), x0, jnp.zeros_like(s0.cost), jnp.asarray(True))
    capped = jnp.asarray(RESULTS.max_steps_reached, jnp.int32)

    def body(carry):
        s, fresh, first, phase = carry
        # the trial point (aux, δ, x ⊕ δ, predicted decrease); x0 itself in a fresh iteration
        proposal = jax.lax.cond(fresh, lambda: at_x0, lambda: propose(problem, solver, s))
        lin = problem.linearize(proposal[2])
        started = start_at(proposal[2], lin)
        if restart:  # a fresh start in phase 1 is the restart: diagonal damping, counts go on
            restarted = phase == 1
            aux = GraphLMState(
                started.aux.damping,
                restarted,
                jnp.where(restarted, jnp.asarray(solver.restart_factor, started.aux.factor.dtype),
                          started.aux.factor),
            )
            started = eqx.tree_at(lambda t: (t.aux, t.steps, t.accepted), started,
                                  (aux, s.steps, s.accepted))
        new = tree_where(fresh, started, judge(problem, solver, s, proposal, lin, log=False))
        log_step(solver, new, proposal[1], fresh | (new.accepted > s.accepted))  # step 0: x0
        if not restart:
            return new, jnp.asarray(False), first, phase
        # keep the plain run aside and start again from x0 in the next (fresh) iteration
        switch = (phase == 0) & ~fresh & (new.steps >= solver.restart_after) & ~new.done
        first = tree_where(switch, eqx.tree_at(lambda t: t.result, new, capped), first)
        return new, switch, first, jnp.where(switch, 1, phase)

    def running(carry):
        s, fresh = carry[:2]
        return fresh | ((~s.done) & (s.steps < max_steps))

    restart_carry = (s0, jnp.asarray(0)) if restart else (None, None)
    carry = (s0, jnp.asarray(True), *restart_carry)
    s, _, first, phase = jax.lax.while_loop(running, body, carry)
    s = finish(s)
    if not restart:
        return s
    use_first = (phase == 1) & ~(jnp.isfinite(s.cost) & ~(s.cost > first.cost))
    out = tree_where(use_first, first, s)
    return eqx.tree_at(lambda t: (t.steps, t.accepted), out, (s.steps, s.accepted))
