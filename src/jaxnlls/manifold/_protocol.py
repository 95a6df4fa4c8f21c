"""The manifold protocol: what a non-Euclidean leaf of a solve variable must provide.

A solve variable is any pytree. Its leaves are either floating-point arrays (Euclidean,
updated by ``+``) or instances of :class:`AbstractManifold` (updated by ``retract``).
The solver only ever sees flat tangent vectors; this module is the bridge.

Conventions (fixed for the whole library, see ``docs/conventions.md``):

- ``x.retract(delta)`` is the *right* perturbation ``x ⊕ δ = x · Exp(δ)`` for Lie groups.
- ``x.local(y)`` is its inverse, ``Log(x⁻¹ y)``, so ``x.local(x.retract(d)) == d``.
- A manifold leaf may be batched: ``x.batch_shape`` is its leading shape and the tangent
  has shape ``batch_shape + (tangent_dim,)``.
"""

from __future__ import annotations

import abc

import equinox as eqx
from jaxtyping import Array, Float


class AbstractManifold(eqx.Module):
    """A manifold-valued leaf of a solve variable (Lie groups subclass this).

    Subclasses declare ``tangent_dim`` as a class attribute and implement ``retract``,
    ``local``, ``batch_shape`` and ``dtype``. They must be equinox Modules whose array
    fields hold the parameters (so ``jit``/``vmap``/``grad`` see them).
    """

    tangent_dim: eqx.AbstractClassVar[int]

    @abc.abstractmethod
    def retract(self, delta: Float[Array, "*batch tangent"]) -> AbstractManifold:
        """Move along the tangent ``delta`` (right perturbation ``x · Exp(δ)``)."""

    @abc.abstractmethod
    def local(self, other: AbstractManifold) -> Float[Array, "*batch tangent"]:
        """Tangent ``δ`` with ``self.retract(δ) == other`` (``Log(self⁻¹ · other)``)."""

    @property
    @abc.abstractmethod
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch shape of this element (``()`` for a single element)."""

    @property
    @abc.abstractmethod
    def dtype(self):
        """Floating dtype of the parameters; the tangent uses the same dtype."""


def is_manifold(x) -> bool:
    """True for a manifold leaf (used as ``is_leaf`` in tree maps)."""
    return isinstance(x, AbstractManifold)
