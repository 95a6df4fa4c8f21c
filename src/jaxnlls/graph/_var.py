"""Typed variables of a factor graph and their stacked values.

A :class:`Var` subclass fixes the manifold of a family of variables at class level::

    class Pose(Var, group=SE3): ...      # Lie-group variable (tangent = SE3.tangent_dim)
    class Point(Var, dim=3): ...         # Euclidean variable, value shape (3,)

An *instance* is only an integer id (``Pose(4)``) or an array of ids (``Pose(np.arange(10))``).
Ids are host integers: they decide the sparsity pattern, so they are never traced.

:class:`VarValues` holds one stacked pytree per variable type, sorted by id: a Lie-group
element with batch shape ``(n,)`` for group variables, a ``(n, dim)`` array for Euclidean ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..manifold import is_manifold


class Var:
    """A typed variable id (or array of ids) in a factor graph.

    Subclass with exactly one of ``group=`` (a manifold class with ``tangent_dim``, e.g. a Lie
    group from :mod:`jaxnlls.lie`) or ``dim=`` (a Euclidean vector of that length)::

        class Pose(Var, group=SE2): ...
        class Landmark(Var, dim=2): ...

    Instances are cheap host-side handles: ``Pose(3)`` or ``Pose(np.array([0, 1, 2]))``.
    Inside a residual function, ``vals[var]`` returns the value of that variable.

    Attributes:
        id: ``np.ndarray`` of integer ids, shape ``()`` or ``(n,)``.
    """

    group: ClassVar[type | None] = None
    dim: ClassVar[int | None] = None
    tangent_dim: ClassVar[int] = 0
    __slots__ = ("id", "_slot")

    def __init_subclass__(cls, group: type | None = None, dim: int | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if group is not None and dim is not None:
            raise TypeError(f"Var subclass {cls.__name__}: give either group= or dim=, not both")
        if group is not None:
            if not hasattr(group, "tangent_dim"):
                raise TypeError(
                    f"Var subclass {cls.__name__}: group={group!r} has no tangent_dim "
                    "(expected an AbstractManifold / AbstractLieGroup subclass)"
                )
            cls.group = group
            cls.dim = None
            cls.tangent_dim = int(group.tangent_dim)  # type: ignore[attr-defined]
        elif dim is not None:
            if int(dim) <= 0:
                raise ValueError(f"Var subclass {cls.__name__}: dim must be positive, got {dim}")
            cls.group = None
            cls.dim = int(dim)
            cls.tangent_dim = int(dim)

    def __init__(self, id: Any):
        if type(self).tangent_dim == 0:
            raise TypeError(
                f"{type(self).__name__} has no manifold: declare it as "
                f"`class {type(self).__name__}(Var, group=SE3)` or `(Var, dim=3)`"
            )
        if isinstance(id, jax.core.Tracer):
            raise TypeError(
                f"{type(self).__name__}: variable ids must be concrete host integers "
                "(they define the sparsity pattern), got a traced value"
            )
        arr = np.asarray(id)
        if arr.ndim > 1 or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"{type(self).__name__}: id must be an int or a 1-D integer array, "
                f"got dtype {arr.dtype} shape {arr.shape}"
            )
        # ids beyond int64 would wrap around to other (negative) ids
        if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{type(self).__name__}: id {arr.max()} does not fit in int64")
        self.id = arr.astype(np.int64)
        self._slot: int | None = None

    @classmethod
    def type_name(cls) -> str:
        """Deterministic sort key of the variable type (module + qualified name)."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def default_value(cls, batch_shape: tuple[int, ...] = (), dtype=None):
        """Identity of the group, or zeros for a Euclidean variable."""
        if cls.group is not None:
            return cls.group.identity(batch_shape=batch_shape, dtype=dtype)  # type: ignore
        dtype = jnp.result_type(float) if dtype is None else dtype
        return jnp.zeros(batch_shape + (cls.dim,), dtype)  # type: ignore[operator]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id.tolist()})"


def _slot_var(cls: type[Var], slot: int) -> Var:
    v = cls.__new__(cls)
    v.id = np.asarray(-1)
    v._slot = slot
    return v


class _Ids:
    """Hashable wrapper of a sorted int64 id array (static metadata)."""

    __slots__ = ("array", "_hash")

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array, np.int64)
        self.array.setflags(write=False)
        self._hash = hash(self.array.tobytes())

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, _Ids) and np.array_equal(self.array, other.array)

    def __len__(self) -> int:
        return len(self.array)


def _leading(value) -> int:
    if is_manifold(value):
        return value.batch_shape[0] if value.batch_shape else -1
    return jnp.shape(value)[0] if jnp.ndim(value) > 1 else -1


def _index(value, idx):
    return jax.tree.map(lambda p: p[idx], value)


class VarValues(eqx.Module):
    """Values of all variables of a graph: one stacked pytree per :class:`Var` type.

    Build with :meth:`VarValues.make`. Values are traced (differentiable, vmappable); the
    types and ids are static.

    Example:
        >>> vals = VarValues.make({Pose(np.arange(3)): SE2.identity((3,)), Point(7): jnp.ones(2)})
        >>> vals[Pose(1)]          # one SE2 element
        >>> vals.get(Point)        # (1, 2) array, sorted by id
    """

    types: tuple[type[Var], ...] = eqx.field(static=True)
    ids: tuple[_Ids, ...] = eqx.field(static=True)
    values: tuple[Any, ...]

    @classmethod
    def make(cls, items: Mapping[Var, Any] | Iterable[tuple[Var, Any]]) -> VarValues:
        """Collect ``{var: value}`` pairs into a ``VarValues``.

        ``var`` may hold one id (value unbatched: a group element or ``(dim,)`` array) or an
        id array of length ``n`` (value stacked: batch ``(n,)`` / shape ``(n, dim)``). Several
        entries of one type are concatenated and sorted by id. Ids must be unique.

        Raises:
            ValueError: duplicate ids or a value of the wrong shape (names the variable type).
        """
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        per_type: dict[type[Var], list[tuple[np.ndarray, Any]]] = {}
        for var, value in pairs:
            if not isinstance(var, Var):
                raise TypeError(f"VarValues.make: key {var!r} is not a Var")
            t = type(var)
            ids = var.id
            if ids.ndim == 0:
                value = jax.tree.map(lambda p: jnp.asarray(p)[None], value)
                ids = ids[None]
            _check_value(t, value, len(ids))
            per_type.setdefault(t, []).append((ids, value))
        types = tuple(sorted(per_type, key=lambda t: t.type_name()))
        all_ids, all_vals = [], []
        for t in types:
            chunks = per_type[t]
            ids = np.concatenate([c[0] for c in chunks])
            if len(chunks) == 1:
                val = chunks[0][1]
            else:
                val = jax.tree.map(lambda *ps: jnp.concatenate(ps, 0), *[c[1] for c in chunks])
            order = np.argsort(ids, kind="stable")
            sids = ids[order]
            if len(sids) > 1 and np.any(sids[1:] == sids[:-1]):
                dup = sids[1:][sids[1:] == sids[:-1]][0]
                raise ValueError(f"VarValues.make: duplicate id {dup} for {t.__name__}")
            if not np.array_equal(order, np.arange(len(order))):
                val = _index(val, order)
            all_ids.append(_Ids(sids))
            all_vals.append(val)
        return cls(types, tuple(all_ids), tuple(all_vals))

    def _pos(self, t: type[Var]) -> int:
        for i, ti in enumerate(self.types):
            if ti is t:
                return i
        raise KeyError(f"VarValues has no variables of type {t.__name__}")

    def get(self, t: type[Var]) -> Any:
        """All values of type ``t``, stacked and sorted by id."""
        return self.values[self._pos(t)]

    def ids_of(self, t: type[Var]) -> np.ndarray:
        """Sorted ids of type ``t`` (host array)."""
        return self.ids[self._pos(t)].array

    def __getitem__(self, var: Var) -> Any:
        i = self._pos(type(var))
        ids = self.ids[i].array
        pos = np.searchsorted(ids, var.id)
        if np.any(pos >= len(ids)) or np.any(ids[np.minimum(pos, len(ids) - 1)] != var.id):
            raise KeyError(f"VarValues: {var!r} not present")
        return _index(self.values[i], pos)

    def replace(self, t: type[Var], value: Any) -> VarValues:
        """A copy with the stacked values of type ``t`` replaced."""
        i = self._pos(t)
        values = self.values[:i] + (value,) + self.values[i + 1 :]
        return VarValues(self.types, self.ids, values)


def _check_value(t: type[Var], value: Any, n: int) -> None:
    if t.group is not None:
        if not isinstance(value, t.group):
            raise TypeError(f"{t.__name__}: value must be a {t.group.__name__}, got {type(value)}")
        if tuple(value.batch_shape) != (n,):
            raise ValueError(
                f"{t.__name__}: value batch shape {tuple(value.batch_shape)} != ({n},) ids"
            )
    else:
        shape = jnp.shape(value)
        if shape != (n, t.dim):
            raise ValueError(f"{t.__name__}: value shape {shape} != ({n}, {t.dim})")
        # integer values have no tangent space: autodiff would fail without naming the variable
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise TypeError(
                f"{t.__name__}: values must have a floating dtype, got {jnp.result_type(value)}"
            )
