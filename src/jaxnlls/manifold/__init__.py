"""Manifold protocol and tree-level retraction (see ``docs/conventions.md``)."""

from ._protocol import AbstractManifold as AbstractManifold, is_manifold as is_manifold
from ._tree import (
    ambient_arrays as ambient_arrays,
    local as local,
    retract as retract,
    tangent_ravel as tangent_ravel,
    tangent_size as tangent_size,
    tangent_to_ambient as tangent_to_ambient,
    tangent_zeros as tangent_zeros,
)
