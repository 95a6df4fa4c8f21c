"""``jaxnlls.solve``: the entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._compile import entry_jit
from ._linearize import make_dense_problem, ravel_residual
from ._sparsity import JacobianSparsity
from ._misc import all_finite, stop_gradient_arrays
from ._solution import RESULTS, Solution, Stats
from .linear import DenseLinearization, is_rank_deficient
from .manifold import is_manifold
from .solvers import AbstractSolver, LevenbergMarquardt


# ``inputs`` is ``(residual_fn, params)``, or ``(residual_fn, params, jac_fn)`` with an analytic
# Jacobian; the functions are closure-converted, so the arrays they capture are inputs too.


def _call_plain(x, inputs):
    return inputs[0](x, inputs[1])


def _call_strip_aux(x, inputs):
    return inputs[0](x, inputs[1])[0]


def _call_jac(x, inputs):
    return inputs[2](x, inputs[1])


def _path_str(path) -> str:
    return "init" + "".join(str(p) for p in path) if path else "init"


def _check_init(init) -> Any:
    """Trace-time checks on ``init``; returns its floating dtype."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(init, is_leaf=is_manifold)
    if not leaves:
        raise ValueError("solve: `init` has no array leaves; nothing to optimize")
    dtypes = {}
    for path, leaf in leaves:
        name = _path_str(path)
        if is_manifold(leaf):
            dtypes[name] = jnp.dtype(leaf.dtype)
            continue
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic | float):
            raise TypeError(
                f"solve: {name} is a {type(leaf).__name__}; leaves of `init` must be floating "
                "arrays or manifold elements (jaxnlls.lie groups)"
            )
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"solve: {name} has dtype {dtype}; leaves of `init` must be real floating point "
                "(e.g. jnp.asarray(x, jnp.float32))"
            )
        dtypes[name] = dtype
    distinct = set(dtypes.values())
    if len(distinct) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in dtypes.items())
        raise TypeError(f"solve: the leaves of `init` mix floating dtypes ({listing}); use one dtype")
    return distinct.pop()


def _check_residual(out, dtype, has_aux: bool) -> None:
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "solve(has_aux=True): residual_fn must return a pair (residual, aux); "
                f"got {type(out).__name__}"
            )
        out = out[0]
    leaves, _ = jax.tree_util.tree_flatten_with_path(out)
    if not leaves:
        raise ValueError("solve: residual_fn returned no arrays (an empty residual)")
    total = 0
    for path, leaf in leaves:
        name = "residual" + "".join(str(p) for p in path)
        if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
            raise TypeError(f"solve: residual_fn returned {name} of type {type(leaf).__name__}")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"solve: residual_fn returned {name} with dtype {leaf.dtype}; residuals must be "
                f"real floating point with the dtype of init ({dtype})"
            )
        if leaf.dtype != dtype:
            raise TypeError(
                f"solve: residual_fn returned {name} with dtype {leaf.dtype} but init has dtype "
                f"{dtype}; cast one of them so they agree"
            )
        total += int(np.prod(leaf.shape, dtype=int))
    if total == 0:
        raise ValueError("solve: residual_fn returned an empty residual (size 0)")


def _reraise_with_context(e: Exception, message: str):
    """Raise ``e``'s type with ``message``, caused by ``e``; call it inside ``except``.

    Some types cannot be rebuilt from one string: JAX's tracer errors such as
    ``TracerBoolConversionError`` (a Python ``if`` on a traced value) need more arguments,
    and ``KeyError`` repr-quotes its message. Those are re-raised as they are, with
    ``message`` attached as a note, so the user still sees both the cause and the call.
    """
    if type(e) is not KeyError:
        try:
            rebuilt = type(e)(message)
        except Exception:
            rebuilt = None
        if rebuilt is not None and str(rebuilt) == message:
            raise rebuilt from e
    e.add_note(message)
    raise e


@entry_jit
def _solve(residual_fn, init, params, solver, adjoint, max_steps, throw, has_aux, jac, sparsity):
    dtype = _check_init(init)
    try:
        out_struct = eqx.filter_eval_shape(residual_fn, init, params)
    except Exception as e:  # re-raise with the call that failed, keeping the cause
        _reraise_with_context(
            e,
            f"solve: residual_fn(init, params) failed while tracing: {e}. Check that the "
            "structure of `init` and `params` is what residual_fn expects.",
        )
    _check_residual(out_struct, dtype, has_aux)

    fn = eqx.filter_closure_convert(residual_fn, init, params)
    inputs = (fn, params)
    jac_call = None
    if callable(jac):
        try:
            eqx.filter_eval_shape(jac, init, params)  # its output is checked by the problem
        except Exception as e:
            _reraise_with_context(e, f"solve: jac(init, params) failed while tracing: {e}")
        inputs = (fn, params, eqx.filter_closure_convert(jac, init, params))
        jac_call = _call_jac
    call = _call_strip_aux if has_aux else _call_plain
    matrix = solver.linear_solver.needs_matrix

    mode = "analytic" if jac_call is not None else jac

    def make_problem(inp):
        return make_dense_problem(call, init, inp, matrix=matrix, jac=mode, sparsity=sparsity,
                                  jac_call=jac_call)

    inputs_finite = all_finite(init) & all_finite(params) & all_finite(inputs[0])
    if jac_call is not None:
        inputs_finite = inputs_finite & all_finite(inputs[2])
    value, state = adjoint.apply(make_problem, init, inputs, solver, max_steps, inputs_finite)

    # Envelope theorem: d/dθ of the optimal cost is ∂L/∂θ at a fixed x*.
    x_for_cost = stop_gradient_arrays(value) if adjoint.envelope else value
    final_r = ravel_residual(call(x_for_cost, inputs))
    final_cost = 0.5 * jnp.sum(final_r * final_r)

    result = state.result
    rank_deficient = jnp.asarray(False)
    if isinstance(state.lin, DenseLinearization):
        rank_deficient = is_rank_deficient(jax.lax.stop_gradient(state.lin.gram()))
        result = jnp.where(
            rank_deficient & (result == RESULTS.successful), RESULTS.singular, result
        ).astype(jnp.int32)

    aux = fn(value, params)[1] if has_aux else None
    stats = Stats(
        steps=state.steps,
        initial_cost=state.initial_cost,
        final_cost=final_cost,
        grad_norm=jnp.sqrt(jnp.sum(state.grad * state.grad)),
        accepted_steps=state.accepted,
        rank_deficient=rank_deficient,
    )
    if throw:
        value = eqx.branched_error_if(
            value, result != RESULTS.successful, result, RESULTS.all_messages()
        )
    return Solution(value=value, result=result, stats=stats, aux=aux)


def solve(
    residual_fn: Callable[..., Any],
    init: Any,
    params: Any = None,
    *,
    solver: AbstractSolver | None = None,
    adjoint: AbstractAdjoint | None = None,
    max_steps: int = 100,
    throw: bool = True,
    has_aux: bool = False,
    jac: str | Callable[..., Any] = "auto",
    jac_sparsity: Any = None,
) -> Solution:
    r"""Minimize $\tfrac12\|r(x, \theta)\|^2$ over ``x``, starting from ``init``.

    Args:
        residual_fn: ``residual_fn(x, params)`` returning a pytree of floating arrays (the
            residual ``r``), or ``(r, aux)`` with ``has_aux=True``. Pure; traced once per
            structure. Arrays it closes over are differentiable inputs too.
        init: the starting point, any pytree whose leaves are floating arrays (Euclidean,
            updated by ``+``) or manifold elements such as ``jaxnlls.lie.SE3`` (updated by the
            right retraction ``x · Exp(δ)``). All leaves must share one dtype.
        params: anything ``residual_fn`` needs (a pytree); differentiable.
        solver: ``GaussNewton``, ``LevenbergMarquardt`` (default) or ``Dogleg``; its fields set
            tolerances and the linear solver (``DenseCholesky`` default, ``QR``, ``CG``).
        adjoint: the backward mode: ``ImplicitAdjoint()`` (default, exact Hessian),
            ``UnrollAdjoint``, ``TruncatedAdjoint(k)``, ``DirectLossAdjoint(eps)``,
            ``OneStepAdjoint``.
        max_steps: iteration cap (a static integer ≥ 1).
        throw: raise if the result is not ``RESULTS.successful`` (use ``False`` under ``vmap``
            and inspect ``sol.result``).
        has_aux: ``residual_fn`` returns ``(residual, aux)``; ``sol.aux`` is aux at the solution.
        jac: ``"auto"`` (forward mode when there are fewer unknowns than residuals), ``"fwd"``
            or ``"rev"``: how the dense Jacobian is formed by autodiff. Or an analytic Jacobian,
            as in SciPy's ``least_squares``: a function ``jac(x, params)`` returning one
            ``(m, n)`` array, ``∂ r(x ⊕ δ, params) / ∂δ`` at ``δ = 0``; rows follow the
            flattened residual pytree, columns the flattened tangent of ``init``
            (``jaxnlls.manifold.tangent_ravel``; a manifold leaf contributes its
            ``tangent_dim`` columns in the right-perturbation chart ``x · Exp(δ)``). It is
            used by the forward iterations only; gradients through the solution still
            differentiate ``residual_fn``. ``jaxnlls.testing.check_jacobian`` compares it
            with autodiff.
        jac_sparsity: optional boolean ``(m, n)`` pattern of the Jacobian (rows: the flattened
            residual; columns: the flattened tangent of ``init``), as in SciPy's
            ``least_squares``; a :class:`jaxnlls.JacobianSparsity` is accepted too. Columns that
            share no row are probed by one JVP (greedy coloring), so a pose graph needs a few
            JVPs instead of one per unknown, and ``JᵀJ`` is formed from those colored columns.
            With an analytic ``jac`` the pattern only serves ``JᵀJ``. The pattern must cover
            every nonzero: entries it marks zero are taken as zero, unchecked.

    Returns:
        A :class:`Solution` with ``value``, ``result``, ``stats`` and ``aux``.

    Raises:
        ValueError / TypeError at trace time for malformed inputs (naming the leaf); at run
        time, with ``throw=True``, an error carrying the :class:`RESULTS` message.

    Differentiability:
        ``value`` is differentiable w.r.t. ``params`` and arrays captured by ``residual_fn`` by
        the chosen adjoint; w.r.t. ``init`` only with ``UnrollAdjoint`` (it is zero for the
        implicit modes, since a converged solution does not depend on its start).
        ``stats.final_cost`` is differentiable w.r.t. ``params`` by the envelope theorem.

    Example:
        >>> import jax.numpy as jnp, jaxnlls
        >>> r = lambda x, p: x - p
        >>> jaxnlls.solve(r, jnp.zeros(2), jnp.array([1.0, 2.0])).value
        Array([1., 2.], dtype=float32)
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer):
        raise TypeError(f"solve: max_steps must be a Python int >= 1; got {max_steps!r}")
    if max_steps < 1:
        raise ValueError(f"solve: max_steps must be >= 1; got {max_steps}")
    if solver is None:
        solver = LevenbergMarquardt()
    if adjoint is None:
        adjoint = ImplicitAdjoint()
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"solve: solver must be a jaxnlls solver; got {type(solver).__name__}")
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"solve: adjoint must be a jaxnlls adjoint; got {type(adjoint).__name__}")
    if callable(jac):
        if not solver.linear_solver.needs_matrix:
            raise ValueError(
                "solve: an analytic jac needs a materialized Jacobian; the matrix-free linear "
                f"solver {type(solver.linear_solver).__name__} does not use one"
            )
    elif not isinstance(jac, str) or jac not in ("auto", "fwd", "rev"):
        raise ValueError(
            f"solve: jac must be 'auto', 'fwd', 'rev' or a function jac(x, params) -> (m, n) "
            f"array; got {jac!r}"
        )
    sparsity = None
    if jac_sparsity is not None:
        sparsity = (
            jac_sparsity
            if isinstance(jac_sparsity, JacobianSparsity)
            else JacobianSparsity(jac_sparsity)
        )
        if not solver.linear_solver.needs_matrix:
            raise ValueError(
                "solve: jac_sparsity needs a materialized Jacobian; the matrix-free linear "
                f"solver {type(solver.linear_solver).__name__} does not use one"
            )
    return _solve(
        residual_fn, init, params, solver, adjoint, int(max_steps), throw, has_aux, jac, sparsity
    )
