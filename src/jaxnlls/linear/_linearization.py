"""Linearizations of a residual in the tangent chart: what the step solvers consume."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractLinearization(eqx.Module):
    """The residual ``r`` (flat, shape ``(m,)``) and its Jacobian ``J`` (``m × n``) at a point.

    Solvers only use the operations below, so a block-sparse or matrix-free Jacobian plugs in
    unchanged. ``n`` is the tangent dimension.
    """

    residual: eqx.AbstractVar[Float[Array, " m"]]

    @abc.abstractmethod
    def mv(self, v: Float[Array, " n"]) -> Float[Array, " m"]:
        """``J v``."""

    @abc.abstractmethod
    def rmv(self, u: Float[Array, " m"]) -> Float[Array, " n"]:
        """``Jᵀ u``."""

    @abc.abstractmethod
    def gram_diag(self) -> Float[Array, " n"]:
        """``diag(JᵀJ)`` (column norms squared), for Marquardt scaling and preconditioning."""

    @property
    @abc.abstractmethod
    def tangent_size(self) -> int:
        """``n`` (static)."""


class DenseLinearization(AbstractLinearization):
    """A dense Jacobian matrix; used for small and medium problems."""

    residual: Float[Array, " m"]
    jac: Float[Array, "m n"]

    def mv(self, v):
        return self.jac @ v

    def rmv(self, u):
        return self.jac.T @ u

    def gram_diag(self):
        return jnp.sum(self.jac * self.jac, axis=0)

    def as_matrix(self):
        return self.jac

    @property
    def tangent_size(self) -> int:
        return self.jac.shape[1]


class MatrixFreeLinearization(AbstractLinearization):
    """A Jacobian given only through ``jvp``/``vjp`` of ``fn(point, inputs, δ)`` at ``δ = 0``.

    Nothing is materialized. ``fn`` must be the same Python object at every iterate (it is a
    static field), so build it once per problem. ``gram_diag`` costs ``n`` JVPs, so solvers that
    need it (Marquardt scaling, Jacobi preconditioning) should only be used when ``n`` is moderate.
    """

    residual: Float[Array, " m"]
    point: Any
    inputs: Any
    fn: Callable = eqx.field(static=True)
    n: int = eqx.field(static=True)

    def _f(self, d):
        return self.fn(self.point, self.inputs, d)

    def mv(self, v):
        return jax.jvp(self._f, (jnp.zeros_like(v),), (v,))[1]

    def rmv(self, u):
        _, pullback = jax.vjp(self._f, jnp.zeros(self.n, u.dtype))
        return pullback(u)[0]

    def gram_diag(self):
        eye = jnp.eye(self.n, dtype=self.residual.dtype)
        cols = jax.vmap(self.mv, out_axes=1)(eye)
        return jnp.sum(cols * cols, axis=0)

    @property
    def tangent_size(self) -> int:
        return self.n
