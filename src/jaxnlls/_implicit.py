"""The implicit-function rules (with the factor graph's, the only ``custom_vjp`` rules).

At a solution ``x*`` let ``φ(δ, θ) = ½‖r(x* ⊕ δ, θ)‖²`` in the tangent chart of ``x*``,
``g = ∇_δ φ`` at ``δ = 0`` and ``H = ∂g/∂δ``. Stationarity ``g(0, θ) = 0`` defines ``x*(θ)``;
the implicit function theorem gives, for a cotangent ``x̄`` of the solution::

    δ̄ = VJP of (δ ↦ x* ⊕ δ) at 0 applied to x̄      # ambient -> tangent cotangent
    solve (H + μI) u = δ̄
    θ̄ = -VJP of (θ ↦ g(0, θ)) applied to u

``θ`` here is the closure-converted ``(residual_fn, params)`` pair, so arrays captured by
``residual_fn`` receive gradients too.

These rules are first-order: ``x*`` enters them as a constant, so an outer derivative of the
backward pass (``jax.hessian``, ``jacfwd`` of ``grad``, ``grad`` of ``grad``) would miss how
``x*`` moves and return a wrong second derivative without any sign of it. ``first_order_only``
turns that case into an error naming the adjoint.
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .linear import psd_solve
from .linear._linearization import gram_t
from .manifold import retract

#: Hessians up to this size are materialized and factored; larger ones use CG.
DENSE_MAX = 1024

_ITERATIVE = (lx.CG, lx.GMRES, lx.BiCGStab)  # (lx.NormalCG is a function returning a CG)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _first_order_only(what, value, watched):
    del watched
    return value


@_first_order_only.defjvp
def _first_order_only_jvp(what, primals, tangents):
    # JAX calls this rule only when some tangent is nonzero: ``value`` is a stop-gradient
    # solution, so ``watched`` (the differentiable inputs) is being differentiated in forward
    # mode around the custom_vjp rule, i.e. a second-order derivative.
    del primals, tangents
    raise NotImplementedError(
        f"{what}: second-order derivatives (jax.hessian, jacfwd of grad, grad of grad) are "
        "not available through this backward mode. Its gradient rule treats the solution as "
        "a constant, so the outer derivative would miss how the solution moves, and the result "
        "would be wrong. Use adjoint=UnrollAdjoint() to differentiate the iterations themselves "
        "to any order. TruncatedAdjoint(k) and OneStepAdjoint() also allow it, but they give "
        "the derivatives of their own approximations."
    )


def first_order_only(what: str, x_star: Any, inputs: Any) -> Any:
    """Identity on ``x_star`` that raises if ``inputs`` carry forward-mode tangents.

    Call it in a ``custom_vjp`` forward rule. Under plain reverse mode that rule sees primal
    values, so the check costs nothing. Under an outer ``jvp`` it sees tangents, which means
    a second-order derivative through the rule. ``what`` names the solve and the adjoint.
    """
    watched = eqx.filter(inputs, eqx.is_inexact_array)
    return _first_order_only(what, x_star, watched)


def _zeros_for_none(cot, like):
    return jax.tree.map(
        lambda c, x: jnp.zeros_like(x) if c is None else c,
        cot,
        like,
        is_leaf=lambda v: v is None,
    )


def tangent_cotangent(x_star, unravel, n, cot_x):
    """Pull an ambient cotangent of the solution back to the flat tangent at ``x*``."""
    dtype = jnp.result_type(*[a for a in jax.tree.leaves(x_star)])
    d0 = jnp.zeros(n, dtype)
    _, pull = jax.vjp(lambda d: retract(x_star, unravel(d)), d0)
    cot_x = _zeros_for_none(cot_x, x_star)
    return pull(cot_x)[0]


def solve_symmetric(matvec, materialize, rhs, linear_solver, damping: float):
    """Solve ``(H + μI) u = rhs`` for a symmetric ``H`` given by ``matvec`` / ``materialize``.

    ``linear_solver=None`` picks a dense factorization (Cholesky with pseudo-inverse fallback)
    up to ``DENSE_MAX`` unknowns and lineax CG beyond; any lineax solver may be given.
    """
    n = rhs.shape[0]
    if linear_solver is None:
        if n <= DENSE_MAX:
            H = materialize()
            return psd_solve(H + damping * jnp.eye(n, dtype=H.dtype), rhs)[0]
        linear_solver = lx.CG(rtol=1e-10, atol=1e-12, max_steps=10 * n)
    if isinstance(linear_solver, _ITERATIVE):
        struct = jax.ShapeDtypeStruct((n,), rhs.dtype)
        tags = lx.positive_semidefinite_tag if isinstance(linear_solver, lx.CG) else ()
        op = lx.FunctionLinearOperator(lambda v: matvec(v) + damping * v, struct, tags)
    else:
        H = materialize()
        tags = lx.positive_semidefinite_tag if isinstance(linear_solver, lx.Cholesky) else ()
        op = lx.MatrixLinearOperator(H + damping * jnp.eye(n, dtype=H.dtype), tags)
    return lx.linear_solve(op, rhs, linear_solver, throw=False).value


def tangent_gradient(flat, x_star, inputs, n):
    """``g(θ) = ∇_δ ½‖r(x* ⊕ δ, θ)‖²`` at ``δ = 0`` as a function of ``inputs``."""
    dtype = jnp.result_type(*[a for a in jax.tree.leaves(x_star)])
    d0 = jnp.zeros(n, dtype)

    def g(inp):
        return jax.grad(lambda d: 0.5 * jnp.sum(jnp.square(flat(x_star, inp, d))))(d0)

    return g


def hessian_ops(flat, x_star, inputs, n, hessian: str):
    """``(matvec, materialize)`` for the exact Hessian or its Gauss-Newton approximation."""
    dtype = jnp.result_type(*[a for a in jax.tree.leaves(x_star)])
    d0 = jnp.zeros(n, dtype)
    if hessian == "exact":
        grad_fn = jax.grad(lambda d: 0.5 * jnp.sum(jnp.square(flat(x_star, inputs, d))))

        def matvec(v):
            return jax.jvp(grad_fn, (d0,), (v,))[1]

        def materialize():
            return jax.jacfwd(grad_fn)(d0)

    else:
        f = lambda d: flat(x_star, inputs, d)  # noqa: E731

        def matvec(v):
            Jv = jax.jvp(f, (d0,), (v,))[1]
            return jax.vjp(f, d0)[1](Jv)[0]

        def materialize():
            jac_t = jax.vmap(lambda v: jax.jvp(f, (d0,), (v,))[1])(jnp.eye(n, dtype=dtype))
            return gram_t(jac_t)

    return matvec, materialize


@eqx.filter_custom_vjp
def implicit_solution(inputs, x_star, flat, n, hessian, damping, linear_solver):
    """Identity on ``x_star`` whose VJP w.r.t. ``inputs`` is the implicit-function rule."""
    del inputs, flat, n, hessian, damping, linear_solver
    return x_star


@implicit_solution.def_fwd
def _implicit_fwd(perturbed, inputs, x_star, flat, n, hessian, damping, linear_solver):
    del perturbed, flat, n, hessian, damping, linear_solver
    return first_order_only("jaxnlls.solve with ImplicitAdjoint", x_star, inputs), None


@implicit_solution.def_bwd
def _implicit_bwd(
    residuals, cot_x, perturbed, inputs, x_star, flat, n, hessian, damping, linear_solver
):
    del residuals, perturbed
    dbar = tangent_cotangent(x_star, flat.unravel, n, cot_x)
    matvec, materialize = hessian_ops(flat, x_star, inputs, n, hessian)
    u = solve_symmetric(matvec, materialize, dbar, linear_solver, damping)
    dtype = dbar.dtype
    d0 = jnp.zeros(n, dtype)
    if hessian == "exact":
        g = tangent_gradient(flat, x_star, inputs, n)
        _, vjp = eqx.filter_vjp(g, inputs)
        return vjp(-u)[0]
    # Gauss-Newton mixed term: ∂g/∂θ ≈ Jᵀ ∂r/∂θ, so θ̄ = -(∂r/∂θ)ᵀ J u.
    Ju = jax.jvp(lambda d: flat(x_star, inputs, d), (d0,), (u,))[1]
    _, vjp = eqx.filter_vjp(lambda inp: flat(x_star, inp, d0), inputs)
    return vjp(-Ju)[0]


def _perturbed_solution(flat, x_star, inputs, n, v, eps_signed, iterations, damping):
    """Minimize ``½‖r(x* ⊕ δ)‖² + ε⟨v, δ⟩`` over ``δ`` by Gauss-Newton from ``δ = 0``."""
    dtype = v.dtype
    f = lambda d: flat(x_star, inputs, d)  # noqa: E731

    def body(d, _):
        r, pull = jax.vjp(f, d)
        g = pull(r)[0] + eps_signed * v

        def matvec(w):
            return pull(jax.jvp(f, (d,), (w,))[1])[0]

        def materialize():
            return gram_t(jax.vmap(lambda w: jax.jvp(f, (d,), (w,))[1])(jnp.eye(n, dtype=dtype)))

        return d + solve_symmetric(matvec, materialize, -g, None, damping), None

    d, _ = jax.lax.scan(body, jnp.zeros(n, dtype), None, length=iterations)
    return d


@eqx.filter_custom_vjp
def direct_loss_solution(inputs, x_star, flat, n, eps, iterations, damping):
    """Identity on ``x_star`` whose VJP is the (central) direct-loss-minimization estimate."""
    del inputs, flat, n, eps, iterations, damping
    return x_star


@direct_loss_solution.def_fwd
def _dl_fwd(perturbed, inputs, x_star, flat, n, eps, iterations, damping):
    del perturbed, flat, n, eps, iterations, damping
    return first_order_only("jaxnlls.solve with DirectLossAdjoint", x_star, inputs), None


@direct_loss_solution.def_bwd
def _dl_bwd(residuals, cot_x, perturbed, inputs, x_star, flat, n, eps, iterations, damping):
    del residuals, perturbed
    dbar = tangent_cotangent(x_star, flat.unravel, n, cot_x)
    vnorm = jnp.sqrt(jnp.sum(dbar * dbar))
    v = jnp.where(vnorm > 0, dbar / jnp.where(vnorm > 0, vnorm, 1.0), 0.0)
    if eps is None:  # the central difference's step for this dtype (see DirectLossAdjoint)
        eps = float(jnp.finfo(dbar.dtype).eps) ** (1 / 3)

    def phi(inp, d):
        return 0.5 * jnp.sum(jnp.square(flat(x_star, inp, d)))

    d_plus = _perturbed_solution(flat, x_star, inputs, n, v, eps, iterations, damping)
    d_minus = _perturbed_solution(flat, x_star, inputs, n, v, -eps, iterations, damping)
    d_plus = jax.lax.stop_gradient(d_plus)
    d_minus = jax.lax.stop_gradient(d_minus)
    grad_inputs = eqx.filter_grad(lambda inp: (phi(inp, d_plus) - phi(inp, d_minus)))(inputs)
    scale = vnorm / (2 * eps)
    return jax.tree.map(lambda a: None if a is None else scale * a, grad_inputs,
                        is_leaf=lambda a: a is None)


