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

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._iterate import LoopState, init_state, run, step
from .._misc import tree_where
from .._solution import RESULTS
from ..solvers import AbstractSolver
from ._lm import GraphLevenbergMarquardt


def restart_solver(solver: GraphLevenbergMarquardt) -> GraphLevenbergMarquardt:
    """The solver of the second run: diagonal damping, ``factor = restart_factor``."""
    return dataclasses.replace(solver, diagonal=True, factor=solver.restart_factor,
                               restart_after=-1)


def run_with_restart(problem, x0, solver: AbstractSolver, max_steps: int,
                     inputs_finite) -> LoopState:
    """``_iterate.run`` with the restart of :class:`GraphLevenbergMarquardt` (see there).

    Without a restart (another solver, ``restart_after < 0`` or ``restart_after >= max_steps``)
    this is exactly ``run``. Otherwise the first run gets ``restart_after`` steps; if it stopped
    for any reason but the step cap, it is returned unchanged (no extra work: a ``lax.cond``,
    and under ``vmap`` the second loop starts finished for those members). The returned state
    is the lower-cost of the two runs, with ``steps``/``accepted`` summed over both, and the
    result of the run it comes from (``max_steps_reached`` when neither converged).
    """
    if not (isinstance(solver, GraphLevenbergMarquardt) and 0 <= solver.restart_after < max_steps):
        return run(problem, x0, solver, max_steps, inputs_finite)
    first = run(problem, x0, solver, solver.restart_after, inputs_finite)
    need = first.result == RESULTS.max_steps_reached
    second_solver = restart_solver(solver)
    budget = max_steps - solver.restart_after

    def again(first):
        s = init_state(problem, x0, second_solver, inputs_finite)
        s = eqx.tree_at(lambda t: t.done, s, s.done | ~need)

        def body(t):
            return step(problem, second_solver, t)

        s = jax.lax.while_loop(lambda t: (~t.done) & (t.steps < budget), body, s)
        result = jnp.where((~s.done) & (s.result == RESULTS.successful),
                           RESULTS.max_steps_reached, s.result).astype(jnp.int32)
        s = eqx.tree_at(lambda t: t.result, s, result)
        use = need & jnp.isfinite(s.cost) & ~(s.cost > first.cost)
        out = tree_where(use, s, first)
        extra = jnp.where(need, 1, 0).astype(first.steps.dtype)
        return eqx.tree_at(
            lambda t: (t.steps, t.accepted, t.initial_cost),
            out,
            (first.steps + extra * s.steps, first.accepted + extra * s.accepted,
             first.initial_cost),
        )

    return jax.lax.cond(jnp.any(need), again, lambda f: f, first)
