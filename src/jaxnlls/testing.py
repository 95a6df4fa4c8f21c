"""Public helpers for checking gradients through solves, and analytic Jacobians.

``check_grads`` compares an adjoint's gradient with central finite differences and with
``UnrollAdjoint`` on the same problem, so a gradient through a solve is never trusted blindly.
``check_jacobian`` compares a hand-written ``solve(jac=...)`` with forward-mode autodiff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._adjoint import AbstractAdjoint, ImplicitAdjoint, UnrollAdjoint
from ._linearize import make_dense_problem
from ._solution import RESULTS
from ._solve import solve
from .solvers import AbstractSolver, LevenbergMarquardt


def fd_grad(f: Callable[[Any], jax.Array], params: Any, *, eps: float | None = None,
            direction: Any = None) -> Any:
    """Central finite-difference gradient of a scalar ``f`` at ``params``.

    With ``direction`` given, returns the directional derivative (a scalar) instead, which
    costs two evaluations rather than ``2·size(params)``. ``eps`` defaults to
    ``cbrt(machine eps) · max(1, |params|_∞)``.
    """
    flat, unravel = ravel_pytree(params)
    flat = np.asarray(flat)
    if eps is None:
        eps = float(np.cbrt(np.finfo(flat.dtype).eps)) * max(1.0, float(np.max(np.abs(flat))))
    if direction is not None:
        d = np.asarray(ravel_pytree(direction)[0])
        return (f(unravel(flat + eps * d)) - f(unravel(flat - eps * d))) / (2 * eps)
    g = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        g[i] = (float(f(unravel(flat + e))) - float(f(unravel(flat - e)))) / (2 * eps)
    return unravel(jnp.asarray(g))


def tree_allclose(a: Any, b: Any, *, rtol: float = 1e-7, atol: float = 0.0) -> bool:
    """``allclose`` leaf by leaf (arrays only; structures must match)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
               for x, y in zip(la, lb, strict=True))


class GradCheck(eqx.Module):
    """What :func:`check_grads` measured (relative errors in the 2-norm)."""

    grad: Any
    fd_grad: Any
    unroll_grad: Any
    rel_error_fd: float
    rel_error_unroll: float
    result: int

    @property
    def ok(self) -> bool:
        return self.result == RESULTS.successful


def _rel(a, b) -> float:
    fa = np.asarray(ravel_pytree(a)[0])
    fb = np.asarray(ravel_pytree(b)[0])
    return float(np.linalg.norm(fa - fb) / max(np.linalg.norm(fb), 1e-300))


def check_grads(
    residual_fn: Callable,
    init: Any,
    params: Any,
    loss: Callable[[Any], jax.Array],
    *,
    adjoint: AbstractAdjoint | None = None,
    solver: AbstractSolver | None = None,
    max_steps: int = 200,
    eps: float | None = None,
) -> GradCheck:
    """Compare ``d loss(solve(...).value) / d params`` from ``adjoint`` with finite differences
    and with unrolling.

    The solves use tight tolerances (``rtol = atol = 1e-13`` unless ``solver`` is given); run
    in float64 for meaningful finite differences. Raises if the solve did not converge,
    since implicit gradients are only defined at a stationary point.

    Returns:
        A :class:`GradCheck` with both gradients and their relative errors.

    Example:
        >>> import jax, jax.numpy as jnp, jaxnlls
        >>> jax.config.update("jax_enable_x64", True)
        >>> r = lambda x, p: jnp.array([x[0] - p[0], 10 * (x[1] - x[0] ** 2)])
        >>> chk = jaxnlls.testing.check_grads(r, jnp.zeros(2), jnp.array([0.5]), jnp.sum)
        >>> chk.rel_error_fd < 1e-6
        True
    """
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    solver = LevenbergMarquardt(rtol=1e-13, atol=1e-13) if solver is None else solver

    def objective(p, adj):
        sol = solve(residual_fn, init, p, solver=solver, adjoint=adj, max_steps=max_steps,
                    throw=False)
        return loss(sol.value), sol.result

    (_, result), grad = jax.value_and_grad(lambda p: objective(p, adjoint), has_aux=True)(params)
    if int(result) != RESULTS.successful:
        raise RuntimeError(f"check_grads: the solve did not converge: {RESULTS.message(result)}")
    unroll = jax.grad(lambda p: objective(p, UnrollAdjoint())[0])(params)
    fd = fd_grad(lambda p: objective(p, adjoint)[0], params, eps=eps)
    return GradCheck(grad, fd, unroll, _rel(grad, fd), _rel(grad, unroll), int(result))


class JacobianCheck(eqx.Module):
    """What :func:`check_jacobian` measured: both ``(m, n)`` Jacobians and their difference."""

    jac: np.ndarray
    autodiff_jac: np.ndarray
    max_abs_error: float
    rel_error: float  # ‖J − J_autodiff‖_F / ‖J_autodiff‖_F
    worst: tuple[int, int]  # (residual row, tangent column) of the largest difference


def check_jacobian(residual_fn: Callable, jac: Callable, x: Any, params: Any = None
                   ) -> JacobianCheck:
    """Compare an analytic Jacobian for ``jaxnlls.solve(residual_fn, ..., jac=jac)`` with
    forward-mode autodiff of ``δ ↦ residual_fn(x ⊕ δ, params)`` at ``δ = 0``.

    Both are in the layout ``solve`` expects: rows the flattened residual, columns the flattened
    tangent of ``x`` (right perturbations ``x · Exp(δ)`` on manifold leaves). ``worst`` points
    at the entry to fix: its row is a residual coordinate, its column a tangent coordinate.

    Example:
        >>> import jax.numpy as jnp, jaxnlls
        >>> r = lambda x, p: jnp.array([x[0] * x[1] - p, x[1] - 1.0])
        >>> J = lambda x, p: jnp.array([[x[1], x[0]], [0.0, 1.0]])
        >>> jaxnlls.testing.check_jacobian(r, J, jnp.array([2.0, 3.0]), 1.0).max_abs_error
        0.0
    """
    problem = make_dense_problem(lambda xx, p: residual_fn(xx, p), x, params, matrix=True,
                                 jac="fwd")
    ad = np.asarray(problem.linearize(x).jac_t).T
    got = np.asarray(jac(x, params))
    if got.shape != ad.shape:
        raise ValueError(
            f"check_jacobian: jac returned shape {got.shape}; expected (residuals, tangent "
            f"coordinates) = {ad.shape}"
        )
    diff = np.abs(got - ad)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    rel = float(np.linalg.norm(got - ad) / max(float(np.linalg.norm(ad)), 1e-300))
    return JacobianCheck(got, ad, float(diff.max()), rel, (int(worst[0]), int(worst[1])))
