"""Known Jacobian sparsity: column coloring for compressed forward-mode Jacobians.

With a sparsity pattern of ``J`` (``m × n``, residuals × tangent coordinates), columns that
share no row can be probed by one JVP together (Curtis-Powell-Reid); a greedy coloring of the
column-intersection graph needs far fewer JVPs than ``n`` when each residual touches few
unknowns (a pose graph needs ``3 × (colors of the graph)`` instead of ``3 × poses``). The
pattern is static: it is turned into a hashable object once, before tracing.
"""

from __future__ import annotations

import hashlib

import numpy as np


def greedy_column_coloring(pattern: np.ndarray) -> np.ndarray:
    """Colors for the columns of a boolean ``(m, n)`` pattern so that no two columns with a
    common nonzero row share a color (largest-degree-first greedy).
    """
    pattern = np.asarray(pattern, bool)
    n = pattern.shape[1]
    # conflict[k, l]: columns k and l share a row
    p = pattern.astype(np.int64)
    conflict = (p.T @ p) > 0
    np.fill_diagonal(conflict, False)
    order = np.argsort(-conflict.sum(1), kind="stable")
    colors = np.full(n, -1, np.int64)
    for k in order:
        taken = set(colors[conflict[k]].tolist())
        c = 0
        while c in taken:
            c += 1
        colors[k] = c
    return colors


class JacobianSparsity:
    """A static (hashable) Jacobian sparsity pattern and its column coloring.

    Build it from a boolean array-like of shape ``(m, n)``; ``solve(..., jac_sparsity=...)``
    does this for you. Equality and hashing use the pattern's bytes, so the same pattern does
    not retrace.
    """

    def __init__(self, pattern):
        pattern = np.asarray(pattern)
        if pattern.ndim != 2:
            raise ValueError(
                f"jac_sparsity must be a 2-D (residuals × tangent coordinates) pattern; got "
                f"shape {pattern.shape}"
            )
        self.pattern = pattern != 0
        self.pattern.setflags(write=False)
        self.colors = greedy_column_coloring(self.pattern)
        self.colors.setflags(write=False)
        self.n_colors = int(self.colors.max()) + 1 if self.colors.size else 0
        digest = hashlib.sha1(np.packbits(self.pattern).tobytes()).hexdigest()
        self._key = (self.pattern.shape, digest)

    @property
    def shape(self) -> tuple[int, int]:
        return self.pattern.shape

    def seeds(self) -> np.ndarray:
        """``(n_colors, n)`` 0/1 matrix: seed ``c`` probes every column of color ``c``."""
        s = np.zeros((self.n_colors, self.pattern.shape[1]))
        s[self.colors, np.arange(self.pattern.shape[1])] = 1.0
        return s

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, JacobianSparsity) and self._key == other._key

    def __repr__(self) -> str:
        m, n = self.pattern.shape
        return f"JacobianSparsity({m}×{n}, nnz={int(self.pattern.sum())}, colors={self.n_colors})"
