"""Small problems and finite-difference helpers shared by the core tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxnlls

TIGHT = jaxnlls.LevenbergMarquardt(rtol=1e-14, atol=1e-14)


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    residual_fn: Callable
    x0: Any
    params: Any
    zero_residual: bool


def curve_problem(noise: float, seed: int = 0, n: int = 24) -> Problem:
    """y = exp(a x + b) (+ noise); unknowns (a, b); params = the data y."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(np.linspace(0.0, 1.0, n))
    y = jnp.exp(0.7 * x - 0.3) + noise * jnp.asarray(rng.standard_normal(n))

    def residual(theta, y):
        return jnp.exp(theta[0] * x + theta[1]) - y

    return Problem(f"curve(noise={noise})", residual, jnp.zeros(2), y, noise == 0.0)


def pytree_problem(noise: float, seed: int = 1) -> Problem:
    """Dict-valued unknowns, tuple-valued residual: a 2-link planar arm reaching targets."""
    rng = np.random.default_rng(seed)
    regularize = 0.3 if noise > 0 else 0.0
    targets = jnp.asarray([[1.2, 0.6], [0.4, 1.3]]) + noise * jnp.asarray(rng.standard_normal((2, 2)))

    def residual(x, p):
        lengths, tgt = p
        out = []
        for k in range(2):
            q = x["q"][k]
            e = jnp.stack([
                lengths[0] * jnp.cos(q[0]) + lengths[1] * jnp.cos(q[0] + q[1]),
                lengths[0] * jnp.sin(q[0]) + lengths[1] * jnp.sin(q[0] + q[1]),
            ])
            out.append(e - tgt[k])
        # a weak pull of the shared base offset towards 0.1 makes it part of the problem;
        # with noise, a joint-comfort term makes the optimum a nonzero-residual one
        comfort = regularize * (x["q"] - 0.5)
        return (jnp.concatenate(out) + x["base"][0], 0.5 * (x["base"] - 0.1), comfort)

    x0 = {"q": jnp.asarray([[0.3, 0.5], [1.0, 0.4]]), "base": jnp.zeros(1)}
    return Problem("arm", residual, x0, (jnp.asarray([1.0, 0.8]), targets), noise == 0.0)


def solve_value(problem: Problem, params, adjoint=None, solver=TIGHT, max_steps=200):
    sol = jaxnlls.solve(problem.residual_fn, problem.x0, params, solver=solver,
                        adjoint=adjoint, max_steps=max_steps)
    return sol.value


def loss_of(value) -> jax.Array:
    leaves = jax.tree.leaves(value)
    return sum(jnp.sum(jnp.sin(3.0 * v) + v**2) for v in leaves)


def central_directional(f: Callable, params, direction, eps: float) -> float:
    """Central difference of scalar ``f`` along ``direction`` (a pytree like ``params``)."""
    plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
    return (float(f(plus)) - float(f(minus))) / (2 * eps)


def random_like(tree, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(np.shape(a)), jnp.result_type(a)), tree)


def tree_dot(a, b) -> float:
    return float(sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)))
