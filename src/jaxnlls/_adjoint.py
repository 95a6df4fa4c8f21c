"""Backward modes, chosen with ``solve(..., adjoint=...)`` (STYLE section 7).

Each adjoint decides how the solution depends on the differentiable ``inputs`` (the
closure-converted ``residual_fn`` and ``params``). All share the forward loop of
``jaxnlls._iterate``; only ``UnrollAdjoint`` reverse-differentiates through it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from . import _implicit
from ._iterate import LoopState, gradient, run
from ._misc import stop_gradient_arrays
from .solvers import AbstractSolver


class AbstractAdjoint(eqx.Module):
    """How gradients flow from the solution back to ``params``.

    ``apply(make_problem, x0, inputs, solver, max_steps, inputs_finite)`` runs the forward
    solve and returns ``(value, loop_state)``, where ``value`` carries the gradient rule.
    """

    @abc.abstractmethod
    def apply(
        self,
        make_problem: Callable[[Any], Any],
        x0: Any,
        inputs: Any,
        solver: AbstractSolver,
        max_steps: int,
        inputs_finite: jax.Array,
    ) -> tuple[Any, LoopState]: ...

    #: Whether ``final_cost`` is differentiated through the value (unrolled modes) or by the
    #: envelope theorem at a fixed ``x*`` (modes that assume a stationary point).
    envelope: ClassVar[bool] = True


def _forward(make_problem, x0, inputs, solver, max_steps, inputs_finite):
    problem = make_problem(stop_gradient_arrays(inputs))
    state = run(problem, stop_gradient_arrays(x0), solver, max_steps, inputs_finite)
    return problem, stop_gradient_arrays(state)


class ImplicitAdjoint(AbstractAdjoint):
    """Implicit differentiation at the solution (the default).

    ``hessian="exact"`` uses the full Hessian of ``½‖r‖²`` through Hessian-vector products,
    so gradients match finite differences even when the residual at the optimum is large.
    ``hessian="gauss_newton"`` uses ``JᵀJ`` and the mixed term ``Jᵀ ∂r/∂θ``; it needs first
    derivatives only but is **approximate** on nonzero-residual problems (several per cent off
    on a noisy curve fit), exact on zero-residual ones.

    Args:
        hessian: ``"exact"`` or ``"gauss_newton"``.
        linear_solver: a lineax solver for ``(H + μI) u = δ̄``; ``None`` picks dense Cholesky
            (pseudo-inverse fallback) up to 1024 unknowns and CG beyond.
        damping: ``μ`` (use a small value for gauge-free problems).

    Differentiability: gradients w.r.t. ``params`` and arrays captured by ``residual_fn``; the
    gradient w.r.t. ``init`` is zero (the solution does not depend on the start locally).
    Only valid at a stationary point: check ``sol.result``.
    """

    hessian: Literal["exact", "gauss_newton"] = eqx.field(default="exact", static=True)
    linear_solver: lx.AbstractLinearSolver | None = None
    damping: float = 0.0

    def __check_init__(self):
        if self.hessian not in ("exact", "gauss_newton"):
            raise ValueError(
                f"ImplicitAdjoint(hessian=...) must be 'exact' or 'gauss_newton'; got {self.hessian!r}"
            )

    def apply(self, make_problem, x0, inputs, solver, max_steps, inputs_finite):
        problem, state = _forward(make_problem, x0, inputs, solver, max_steps, inputs_finite)
        value = _implicit.implicit_solution(
            inputs, state.x, problem.flat, problem.n, self.hessian, self.damping,
            self.linear_solver,
        )
        return value, state


class UnrollAdjoint(AbstractAdjoint):
    """Differentiate through every iteration (``lax.scan`` of ``max_steps`` masked steps).

    Exact for the finite computation that was run, including the dependence on ``init``.
    Memory grows with ``max_steps``; with ``checkpoint=True`` (default) each step's body is
    rematerialized on the backward pass, so only the loop carries are stored.

    Differentiability: gradients w.r.t. ``params``, captured arrays and ``init``.
    """

    checkpoint: bool = eqx.field(default=True, static=True)
    envelope: ClassVar[bool] = False

    def apply(self, make_problem, x0, inputs, solver, max_steps, inputs_finite):
        problem = make_problem(inputs)
        state = run(problem, x0, solver, max_steps, inputs_finite, unroll=True,
                    checkpoint=self.checkpoint)
        return state.x, state


def _gn_steps(problem, x, k, damping):
    """``k`` differentiable Gauss-Newton steps from ``x`` (no line search)."""
    from .linear import DenseLinearization

    def body(x, _):
        lin = problem.linearize(x)
        g = gradient(lin)
        matvec = lambda v: lin.rmv(lin.mv(v))  # noqa: E731
        materialize = lin.gram if isinstance(lin, DenseLinearization) else None
        if materialize is None:  # no matrix at hand: CG (forced by a large n)
            solver = lx.CG(rtol=1e-10, atol=1e-12, max_steps=10 * g.shape[0])
        else:
            solver = None
        delta = _implicit.solve_symmetric(matvec, materialize, -g, solver, damping)
        return problem.retract(x, delta), None

    x, _ = jax.lax.scan(body, x, None, length=k)
    return x


class TruncatedAdjoint(AbstractAdjoint):
    """Solve without gradients, then take ``k`` differentiable Gauss-Newton steps from there.

    Cheap and robust when the forward solve is not fully converged; as ``k`` grows on a
    converged zero-residual problem it approaches the implicit gradient.

    Differentiability: gradients w.r.t. ``params`` and captured arrays (not ``init``).
    """

    k: int = eqx.field(default=5, static=True)
    damping: float = 0.0
    envelope: ClassVar[bool] = False

    def __check_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"TruncatedAdjoint(k) needs an integer k >= 1; got {self.k!r}")

    def apply(self, make_problem, x0, inputs, solver, max_steps, inputs_finite):
        _, state = _forward(make_problem, x0, inputs, solver, max_steps, inputs_finite)
        problem = make_problem(inputs)
        value = _gn_steps(problem, state.x, self.k, self.damping)
        return value, state


class OneStepAdjoint(AbstractAdjoint):
    """One differentiable Gauss-Newton step from the (stop-gradient) solution.

    ``x_out = x* ⊕ δ(θ)``, ``δ(θ) = -H⁻¹ ∇_δ φ(0, θ)`` with ``H = JᵀJ`` held constant: the
    mixed term is exact, so on zero-residual problems it equals
    ``ImplicitAdjoint(hessian="gauss_newton")``. No custom rule, so forward mode and second
    derivatives work too: they are those of the one-step map. ``final_cost`` is differentiated
    through that map rather than by the envelope theorem: the same gradient at a stationary
    point, and a second derivative ``φ_θθ − φ_θx H⁻¹ φ_xθ`` that is exact at zero residual
    (where ``JᵀJ`` is the Hessian) and approximate otherwise, where the envelope form would
    give ``φ_θθ`` alone. Exact second derivatives: ``UnrollAdjoint``.

    Differentiability: gradients w.r.t. ``params`` and captured arrays (not ``init``).
    """

    damping: float = 0.0
    envelope: ClassVar[bool] = False

    def apply(self, make_problem, x0, inputs, solver, max_steps, inputs_finite):
        sg_problem, state = _forward(make_problem, x0, inputs, solver, max_steps, inputs_finite)
        problem = make_problem(inputs)
        x_star = state.x
        n = problem.n
        g = _implicit.tangent_gradient(problem.flat, x_star, inputs, n)(inputs)
        matvec, materialize = _implicit.hessian_ops(
            sg_problem.flat, x_star, sg_problem.inputs, n, "gauss_newton"
        )
        delta = -_implicit.solve_symmetric(
            lambda v: jax.lax.stop_gradient(matvec(v)),
            lambda: jax.lax.stop_gradient(materialize()),
            g,
            None,
            self.damping,
        )
        return problem.retract(x_star, delta), state


class DirectLossAdjoint(AbstractAdjoint):
    """Direct loss minimization: the backward pass re-solves a perturbed problem.

    For a solution cotangent ``v`` (normalized), it solves
    ``min_δ ½‖r(x* ⊕ δ, θ)‖² ± ε⟨v, δ⟩`` by ``iterations`` Gauss-Newton steps from ``x*`` and
    returns ``‖v‖ (∇_θφ(x₊) − ∇_θφ(x₋)) / (2ε)``: a central finite difference of the
    implicit rule that needs no second derivatives of the residual and no Hessian solve in
    the parameters; it tends to the exact implicit gradient as ``ε → 0``. Useful for
    non-smooth or robust residuals.

    ``eps=None`` (default): ``∛(machine eps)`` of the solution's dtype (6e-6 in float64, 5e-3
    in float32), the step that balances the difference's O(ε²) error against rounding. A fixed
    1e-4 gave float32 gradients about 1% off (Sim(3) and SE(3) registration).

    Differentiability: gradients w.r.t. ``params`` and captured arrays (not ``init``).
    """

    eps: float | None = None
    iterations: int = eqx.field(default=10, static=True)
    damping: float = 0.0

    def __check_init__(self):
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"DirectLossAdjoint(eps) needs eps > 0; got {self.eps!r}")

    def apply(self, make_problem, x0, inputs, solver, max_steps, inputs_finite):
        problem, state = _forward(make_problem, x0, inputs, solver, max_steps, inputs_finite)
        value = _implicit.direct_loss_solution(
            inputs, state.x, problem.flat, problem.n, self.eps, self.iterations, self.damping
        )
        return value, state
