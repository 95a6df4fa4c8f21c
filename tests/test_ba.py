"""Bundle adjustment on the shared BAL files (BAL convention, all observations counted)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxnlls
from jaxnlls.factors import BalCamera, BalPoint
from jaxnlls.io import bal_to_factor_graph, read_bal

# peers/REFERENCE_COSTS.md: GTSAM LM with a BAL-convention factor reached 13344.46 after its
# 200-iteration cap (scipy trf: 13388.41), so the optimum is at or below it.
PROBLEM49_REFERENCE = 13344.46


def test_residual_convention_matches_numpy(shared_data):
    """The factor graph's residual is the numpy BAL residual (scipy-checked in test_io)."""
    b = read_bal(shared_data / "bal/dubrovnik-3-7-pre.txt")
    fg, init = bal_to_factor_graph(b)
    r = np.asarray(fg.residual(init))
    x64 = jax.config.read("jax_enable_x64")
    np.testing.assert_allclose(
        r, b.residuals().reshape(-1), rtol=1e-10 if x64 else 1e-4, atol=1e-8 if x64 else 1e-2
    )


def test_dubrovnik_3_7(shared_data):
    """19 observations (38 residuals) for 48 unknowns: underdetermined, so the optimum is a zero
    residual; the solution must reproject every observation exactly (numpy check), and the
    result says the problem is rank deficient (RESULTS.singular: the minimizer is not unique)."""
    b = read_bal(shared_data / "bal/dubrovnik-3-7-pre.txt")
    fg, init = bal_to_factor_graph(b)
    x64 = jax.config.read("jax_enable_x64")
    # zero-residual and rank deficient: LM needs ~2000 steps with diagonal damping (cheap here)
    sol = fg.solve(init, max_steps=4000, throw=False)
    cams = np.asarray(sol.value.get(BalCamera), np.float64)
    pts = np.asarray(sol.value.get(BalPoint), np.float64)
    r = b.residuals(cams, pts)
    assert b.cost() > 1e3
    # 48 unknowns, so the dense step solver: it reports the rank deficiency of JᵀJ
    assert bool(sol.stats.rank_deficient)
    if x64:
        assert int(sol.result) == jaxnlls.RESULTS.singular
        assert np.max(np.abs(r)) < 1e-6
    else:
        # float32 pixel residuals of ~500 px resolve to ~1e-4 px: a cost floor of ~1e-2
        assert b.cost(cams, pts) < 1e-4 * b.cost()
    # float32: each residual is evaluated to ~eps·500 px = 3e-5 px, so a cost of ~1e-8 is known
    # to ~38 · 1e-4 · 3e-5 ≈ 1e-7 only (its relative error is O(1) at this floor)
    np.testing.assert_allclose(
        float(sol.stats.final_cost), b.cost(cams, pts), rtol=1e-6 if x64 else 1e-2,
        atol=1e-9 if x64 else 1e-6,
    )


@pytest.mark.slow
def test_problem_49_reaches_reference(shared_data, requires_x64):
    b = read_bal(shared_data / "bal/problem-49-7776-pre.txt")
    fg, init = bal_to_factor_graph(b)
    np.testing.assert_allclose(float(fg.cost(init)), 850912.46, rtol=1e-8)
    sol = fg.solve(init, max_steps=500, throw=False)
    assert int(sol.result) == jaxnlls.RESULTS.successful, jaxnlls.RESULTS.message(int(sol.result))
    cams = np.asarray(sol.value.get(BalCamera))
    pts = np.asarray(sol.value.get(BalPoint))
    cost = b.cost(cams, pts)
    np.testing.assert_allclose(float(sol.stats.final_cost), cost, rtol=1e-9)
    assert cost <= PROBLEM49_REFERENCE * (1 + 1e-6), cost
