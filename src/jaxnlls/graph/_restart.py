"""The restart strategy of :meth:`jaxnlls.graph.FactorGraph.solve`: plain GTSAM-style LM first,
then, when that has not converged within ``restart_after`` steps, LM with diagonal (Marquardt)
damping from the *initial* values; the lower-cost run is returned.

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

from .._iterate import LoopState, init_state, run, step
from .._misc import tree_where
from .._solution import RESULTS
from ..solvers import AbstractSolver
from ._lm import GraphLevenbergMarquardt, GraphLMState


def run_with_restart(problem, x0, solver: AbstractSolver, max_steps: int,
                     inputs_finite) -> LoopState:
    """``_iterate.run`` with the restart of :class:`GraphLevenbergMarquardt` (see there).

    Without a restart (another solver, ``restart_after < 0`` or ``restart_after >= max_steps``)
    this is exactly ``run``. Otherwise one ``while_loop`` runs plain LM; a member that has not
    converged after ``restart_after`` steps keeps that state aside and starts again from the
    initial state (the same linearization, carried) with the damping mode flag switched to
    diagonal and the factor to ``restart_factor``, for the remaining budget. One loop, not two:
    the linearization is compiled once per loop, and the restart cost 20–25% more compile time
    as a second loop. The returned state is the lower-cost of the two runs, with
    ``steps``/``accepted`` counted over both, and the result of the run it comes from
    (``max_steps_reached`` when neither converged). Members that converge in plain LM never
    restart (also under ``vmap``).
    """
    if not (isinstance(solver, GraphLevenbergMarquardt) and 0 <= solver.restart_after < max_steps):
        return run(problem, x0, solver, max_steps, inputs_finite)
    k = solver.restart_after
    s0 = init_state(problem, x0, solver, inputs_finite)
    restart_aux = GraphLMState(
        s0.aux.damping, jnp.asarray(True), jnp.asarray(solver.restart_factor, s0.aux.factor.dtype)
    )
    s_restart = eqx.tree_at(lambda t: t.aux, s0, restart_aux)
    capped = jnp.asarray(RESULTS.max_steps_reached, jnp.int32)

    def body(carry):
        s, first, phase = carry
        new = step(problem, solver, s)
        switch = (phase == 0) & (new.steps >= k) & ~new.done
        fresh = eqx.tree_at(lambda t: (t.steps, t.accepted), s_restart, (new.steps, new.accepted))
        first = tree_where(switch, eqx.tree_at(lambda t: t.result, new, capped), first)
        return tree_where(switch, fresh, new), first, jnp.where(switch, 1, phase)

    s, first, phase = jax.lax.while_loop(
        lambda c: (~c[0].done) & (c[0].steps < max_steps), body, (s0, s0, jnp.asarray(0))
    )
    result = jnp.where((~s.done) & (s.result == RESULTS.successful),
                       RESULTS.max_steps_reached, s.result).astype(jnp.int32)
    s = eqx.tree_at(lambda t: t.result, s, result)
    use_first = (phase == 1) & ~(jnp.isfinite(s.cost) & ~(s.cost > first.cost))
    out = tree_where(use_first, first, s)
    return eqx.tree_at(lambda t: (t.steps, t.accepted), out, (s.steps, s.accepted))
