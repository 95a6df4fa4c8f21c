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
        self._plan = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.pattern.shape

    def seeds(self) -> np.ndarray:
        """``(n_colors, n)`` 0/1 matrix: seed ``c`` probes every column of color ``c``."""
        s = np.zeros((self.n_colors, self.pattern.shape[1]))
        s[self.colors, np.arange(self.pattern.shape[1])] = 1.0
        return s

    def compression_picks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pick, keep)``, both ``(n_colors, m)``: the compressed Jacobian (one column sum
        per color) is ``J.ravel()[pick] * keep`` for a dense ``(m, n)`` ``J``, since each row
        has at most one column of each color; ``keep`` is 0 where it has none."""
        m, n = self.pattern.shape
        pick = np.zeros((self.n_colors, m), np.int32)
        keep = np.zeros((self.n_colors, m), bool)
        rows, cols = np.nonzero(self.pattern)
        pick[self.colors[cols], rows] = rows * n + cols
        keep[self.colors[cols], rows] = True
        return pick, keep

    def normal_equations_plan(self) -> NormalEquationsPlan:
        """The static index structure that forms ``JᵀJ`` and ``Jᵀr`` from compressed columns
        (built once per pattern, on first use)."""
        if self._plan is None:
            self._plan = NormalEquationsPlan(self.pattern, self.colors, self.n_colors)
        return self._plan

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, JacobianSparsity) and self._key == other._key

    def __repr__(self) -> str:
        m, n = self.pattern.shape
        return f"JacobianSparsity({m}×{n}, nnz={int(self.pattern.sum())}, colors={self.n_colors})"


class NormalEquationsPlan:
    """``JᵀJ`` and ``Jᵀr`` straight from the compressed Jacobian ``C`` (``n_colors × m``).

    ``J[r, a] = C[color(a), r]`` where ``pattern[r, a]``. An entry of ``JᵀJ`` pairs two
    columns, so it is a masked dot product of two rows of ``C``:
    ``(JᵀJ)[a, b] = Σ_r W_ab[r] C[ca, r] C[cb, r]`` with the static mask
    ``W_ab = pattern[:, a] & pattern[:, b]``. Entries are grouped by their color pair, so each
    group is one product ``(C[c1] * C[c2]) @ W`` with a static ``(m, entries)`` matrix ``W``.
    Under ``vmap`` those are plain matrix products with the batch as the long dimension, where
    the dense ``Jᵀ J`` is a batch of tiny products that XLA:CPU runs one by one (4,096 SE(2)
    pose graphs of 30 unknowns: 13 ms against 49 ms, and the dense Jacobian is never formed).
    Only entries that can be nonzero, and only one triangle, are computed.
    """

    def __init__(self, pattern: np.ndarray, colors: np.ndarray, n_colors: int):
        m, n = pattern.shape
        p = pattern.astype(np.int64)
        upper = np.argwhere(np.triu((p.T @ p) > 0))  # (a, b) with a <= b that can be nonzero
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (a, b) in enumerate(upper):
            c1, c2 = sorted((int(colors[a]), int(colors[b])))
            groups.setdefault((c1, c2), []).append(k)
        self.gram_groups = []  # ((c1, c2), W (m × entries))
        order = []
        for key in sorted(groups):
            ks = groups[key]
            W = pattern[:, upper[ks, 0]] & pattern[:, upper[ks, 1]]
            self.gram_groups.append((key, W.astype(np.float64)))
            order += ks
        position = np.empty(len(upper), np.int64)
        position[np.asarray(order, np.int64)] = np.arange(len(upper))
        # index into [group values..., 0] for every entry of the dense n × n matrix
        gather = np.full((n, n), len(upper), np.int64)
        gather[upper[:, 0], upper[:, 1]] = position
        gather[upper[:, 1], upper[:, 0]] = position
        self.gram_gather = gather.reshape(-1)
        self.jtr_groups = []  # (c, pattern[:, columns of color c])
        cols = []
        for c in range(n_colors):
            cc = np.flatnonzero(colors == c)
            self.jtr_groups.append((c, pattern[:, cc].astype(np.float64)))
            cols.append(cc)
        inverse = np.empty(n, np.int64)
        inverse[np.concatenate(cols)] = np.arange(n)
        self.jtr_gather = inverse
        self.n = n
