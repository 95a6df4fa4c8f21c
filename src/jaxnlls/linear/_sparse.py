"""Sparse direct (Cholesky / LDLᵀ) step solver on the host, called from ``jit``.

Library choice (compared on this project's pose graphs, 2-core CPU, float64; times per
numeric factorization of ``JᵀJ + λI`` after the one-off symbolic analysis):

=================  =========  =========  ===========  ==============================================
library            intel      M3500      sphere2500   notes
=================  =========  =========  ===========  ==============================================
``qdldl``          3 ms       7 ms       0.19 s       Apache-2.0, pip wheels, AMD ordering +
                                                      symbolic analysis once, ``update()`` refactors
                                                      numerically with the same pattern  (chosen)
scipy ``splu``     11 ms      40 ms      0.22 s       BSD, already a dependency; LU, no reuse of the
                                                      symbolic analysis (fallback when qdldl absent)
``cholespy``       10 ms      27 ms      0.39 s       BSD, bundles CHOLMOD, but no numeric-only
                                                      refactorization API
scikit-sparse      –          –          –            CHOLMOD; needs SuiteSparse headers/libraries
                                                      from the OS (no plain ``pip`` install)
=================  =========  =========  ===========  ==============================================

``qdldl`` (the LDLᵀ factorization of the OSQP project) is therefore used when importable, and
scipy's SuperLU otherwise. Both run on the host via :func:`jax.pure_callback` (CPU numpy);
under ``vmap`` the callback runs once per batch member, so batched graphs should use
:class:`~jaxnlls.linear.BlockJacobiPCG` or dense solves instead.

The solve is wrapped in :func:`jax.lax.custom_linear_solve` with a JAX sparse mat-vec, so it
is differentiable in both modes (w.r.t. the right-hand side and the matrix) — unrolled
solves work, at the price of one extra host solve per backward step.
"""

from __future__ import annotations

import threading
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._blocksparse import BlockLayout, block_layout_of
from ._step import AbstractStepSolver


def _backend(name: str) -> str:
    if name == "auto":
        try:
            import qdldl  # noqa: F401

            return "qdldl"
        except ImportError:  # pragma: no cover - depends on the install
            return "scipy"
    if name not in ("qdldl", "scipy"):
        raise ValueError(f"SparseCholesky backend must be 'auto', 'qdldl' or 'scipy', got {name!r}")
    return name


class _HostFactor:
    """The per-pattern host state: the scipy CSC skeleton and the reusable factorization."""

    def __init__(self, layout: BlockLayout, backend: str):
        import scipy.sparse as sp

        indptr, indices, _, _, nnz = layout.gram_pattern()
        self.n = layout.n_cols
        self.backend = backend
        self.upper = sp.csc_matrix(
            (np.zeros(nnz), indices.astype(np.int32), indptr.astype(np.int32)),
            shape=(self.n, self.n),
        )
        self.upper.has_sorted_indices = True
        self.solver: Any = None
        self.lock = threading.Lock()

    def solve(self, data: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        with self.lock:
            A = self.upper.copy()
            A.data = np.asarray(data, np.float64)
            b = np.asarray(rhs, np.float64)
            try:
                if self.backend == "qdldl":
                    import qdldl

                    if self.solver is None:
                        self.solver = qdldl.Solver(A)
                    else:
                        self.solver.update(A)
                    x = self.solver.solve(b)
                else:
                    from scipy.sparse.linalg import splu

                    full = A + A.T - _diag(A)
                    x = splu(full.tocsc(), permc_spec="MMD_AT_PLUS_A").solve(b)
            except Exception:  # singular or not positive definite
                x = np.full_like(b, np.nan)
                self.solver = None
        return x


def _diag(A):
    import scipy.sparse as sp

    return sp.diags(A.diagonal())


def host_factor(layout: BlockLayout, backend: str) -> _HostFactor:
    """The cached host factorization object of ``layout`` (created on first use)."""
    key = f"sparse_{backend}"
    if key not in layout._cache:
        layout._cache[key] = _HostFactor(layout, backend)
    return layout._cache[key]


def sym_csc_matvec(layout: BlockLayout, data, x):
    """``A x`` for the symmetric ``A`` whose upper triangle ``data`` is in the layout pattern."""
    indptr, indices, _, _, nnz = layout.gram_pattern()
    key = "csc_cols"
    if key not in layout._cache:
        layout._cache[key] = np.repeat(np.arange(layout.n_cols), np.diff(indptr)).astype(np.int32)
    cols = layout._cache[key]
    rows = indices
    offdiag = (rows != cols).astype(np.float32)
    y = jnp.zeros(layout.n_cols, x.dtype).at[rows].add(data * x[cols])
    y = y.at[cols].add(data * offdiag.astype(x.dtype) * x[rows])
    return y


def sparse_solve(layout: BlockLayout, data, rhs, backend: str = "auto"):
    """Solve ``A x = rhs`` (``A`` symmetric positive definite, upper triangle ``data``)."""
    backend = _backend(backend)
    fac = host_factor(layout, backend)
    out_type = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)

    def host(d, b):
        return fac.solve(np.asarray(d), np.asarray(b)).astype(b.dtype)

    def solve_fn(_, b):
        return jax.pure_callback(host, out_type, data, b, vmap_method="sequential")

    return jax.lax.custom_linear_solve(
        lambda v: sym_csc_matvec(layout, data, v), rhs, solve_fn, symmetric=True
    )


class SparseCholesky(AbstractStepSolver):
    """Sparse direct solve of ``(JᵀJ + D) δ = rhs`` for factor graphs (host, CPU).

    Assembles the upper triangle of ``JᵀJ + D`` straight from the Jacobian blocks into a CSC
    pattern computed once per graph structure, then factors it on the host (``qdldl`` LDLᵀ
    with AMD ordering and a symbolic analysis done once per pattern and reused by every
    iteration and solve; scipy SuperLU when qdldl is not installed). See the module docstring
    for the comparison that led to this choice.

    Not for ``vmap`` over many graphs (the host callback runs sequentially per member): use
    :class:`~jaxnlls.linear.BlockJacobiPCG` or dense solves there.

    Args:
        backend: ``"auto"`` (qdldl if importable, else scipy), ``"qdldl"`` or ``"scipy"``.
    """

    backend: str = eqx.field(default="auto", static=True)

    def solve(self, lin, damping, rhs=None):
        layout = block_layout_of(lin)
        if rhs is None:
            rhs = -lin.rmv(lin.residual)
        data = lin.jac.gram_csc_data(damping)
        x = sparse_solve(layout, data, rhs, self.backend)
        ok = jnp.all(jnp.isfinite(x))
        return jnp.where(ok, x, 0.0), ok
