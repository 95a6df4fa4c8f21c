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


#: Up to this many unknowns, ``JᵀJ`` is formed as broadcast-multiply-reduce over the
#: contiguous residual axis. Under ``vmap`` on XLA:CPU a batched ``dot_general`` of tiny
#: matrices runs one small GEMM per batch member: on 4,096 fits with 2 unknowns and 64
#: residuals that was 8-10 ms against 0.4-0.7 ms elementwise (bench/curve.py, this machine).
ELEMENTWISE_N = 16


def gram_t(jac_t: Float[Array, "n m"]) -> Float[Array, "n n"]:
    """``JᵀJ`` from the transposed Jacobian ``Jᵀ`` (shape ``(n, m)``)."""
    if jac_t.shape[0] <= ELEMENTWISE_N:
        return jnp.sum(jac_t[:, None, :] * jac_t[None, :, :], axis=-1)
    return jac_t @ jac_t.T


class DenseLinearization(AbstractLinearization):
    """A dense Jacobian, stored transposed (``jac_t = Jᵀ``, shape ``(n, m)``), with ``JᵀJ``.

    The transposed layout is what forward-mode autodiff produces (one row per tangent
    direction) and keeps the residual axis contiguous for the products below.
    :meth:`compact` drops ``r`` and ``jac_t`` and keeps only ``JᵀJ`` and ``Jᵀr``, which is all a
    Cholesky-based solver needs: the solve loop carries that, so a batch of Jacobians never
    travels through the loop under ``vmap``.
    """

    residual: Float[Array, " m"] | None
    jac_t: Float[Array, "n m"] | None
    gram_matrix: Float[Array, "n n"]
    jtr: Float[Array, " n"]

    def __init__(self, residual, jac_t, gram_matrix=None, jtr=None):
        self.residual = residual
        self.jac_t = jac_t
        if gram_matrix is None:
            gram_matrix = gram_t(jac_t)
        if jtr is None:  # elementwise for narrow J, like JᵀJ
            if jac_t.shape[0] <= ELEMENTWISE_N:
                jtr = jnp.sum(jac_t * residual[None, :], axis=-1)
            else:
                jtr = jac_t @ residual
        self.gram_matrix = gram_matrix
        self.jtr = jtr

    def compact(self) -> DenseLinearization:
        """Keep only ``JᵀJ`` and ``Jᵀr`` (drop ``r`` and ``J``)."""
        return DenseLinearization(None, None, self.gram_matrix, self.jtr)

    def _need_jac(self):
        if self.jac_t is None:
            raise ValueError("this linearization was compacted; its Jacobian is not available")
        return self.jac_t

    def mv(self, v):
        return self._need_jac().T @ v

    def rmv(self, u):
        return self._need_jac() @ u

    def gram(self):
        return self.gram_matrix

    def quad(self, v):
        """``‖J v‖²`` from ``JᵀJ`` (works on a compacted linearization)."""
        return v @ (self.gram_matrix @ v)

    def gram_diag(self):
        return jnp.diagonal(self.gram_matrix)

    def as_matrix(self):
        return self._need_jac().T

    @property
    def tangent_size(self) -> int:
        return self.gram_matrix.shape[0]


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
