"""The result of a solve: value, result code and statistics."""

from __future__ import annotations

from typing import Any

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int


class RESULTS:
    """Result codes stored in :attr:`Solution.result` (an int32 array, batched under vmap).

    Compare with ``sol.result == jaxnlls.RESULTS.successful``; ``RESULTS.message(code)`` gives the
    text. Everything except ``successful`` is raised as an error when ``throw=True``.
    """

    successful = 0
    max_steps_reached = 1
    nonfinite_input = 2
    nonfinite_residual = 3
    singular = 4
    linear_solve_failed = 5

    _messages = {
        0: "successful",
        1: "the solver reached max_steps without converging; its value is not a stationary "
        "point, so gradients through it are not trustworthy (raise max_steps or loosen rtol/atol)",
        2: "non-finite (NaN or inf) value in the inputs (`init` or `params` of jaxnlls.solve; "
        "the initial values or factor data of FactorGraph.solve)",
        3: "the residual became non-finite (NaN or inf) at the initial point or every trial step "
        "(the solver stopped against a NaN/inf region of the residual, not at a stationary point)",
        4: "the problem is rank deficient: J^T J is singular at the solution, so the minimizer is not "
        "unique (the returned value is finite, but implicit gradients are not defined); add a prior "
        "or regularization, or pass throw=False to accept it",
        5: "the linear solve for the step failed (J^T J + damping singular or not positive "
        "definite, or an iterative solver that did not converge) and the solver stopped where "
        "it was, which is not a stationary point; add a prior or gauge, use Levenberg-Marquardt, "
        "or raise the iterative solver's max_steps",
    }

    @classmethod
    def message(cls, code: int) -> str:
        return cls._messages.get(int(code), f"unknown result code {int(code)}")

    @classmethod
    def all_messages(cls) -> list[str]:
        return [cls._messages[i] for i in range(len(cls._messages))]


class Stats(eqx.Module):
    """Solve statistics.

    ``final_cost`` is $\\tfrac12\\|r(x^*, \\theta)\\|^2$ and is differentiable with respect to
    ``params`` by the envelope theorem: its gradient is $\\partial L/\\partial\\theta$ at the fixed
    ``x*``, the one-step backprop of imperative learning (valid at a stationary point).
    """

    steps: Int[Array, ""]
    initial_cost: Float[Array, ""]
    final_cost: Float[Array, ""]
    grad_norm: Float[Array, ""]
    accepted_steps: Int[Array, ""]
    rank_deficient: Bool[Array, ""]


class Solution(eqx.Module):
    """What :func:`jaxnlls.solve` returns.

    Attributes:
        value: the solution, with the same pytree structure as ``init``.
        result: an int32 result code, see :class:`RESULTS`.
        stats: :class:`Stats` (steps, initial/final cost, gradient norm, ...).
        aux: the auxiliary output of ``residual_fn`` at the solution (``has_aux=True``), else None.
    """

    value: Any
    result: Int[Array, ""]
    stats: Stats
    aux: Any
