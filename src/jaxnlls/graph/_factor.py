"""Factors: a static residual function plus an args pytree of :class:`Var` s and data.

::

    @factor
    def between(vals, a: Pose, b: Pose, z: SE3, sqrt_info):
        return sqrt_info @ (z.inverse() @ (vals[a].inverse() @ vals[b])).log()

    f1 = between(Pose(0), Pose(1), z01, L)                       # one factor
    fs = between(Pose(ia), Pose(ib), SE3(zs_params), Ls)         # n factors at once (batched)

The residual function receives ``vals`` (look variables up with ``vals[var]``) followed by the
args exactly as given, except that each :class:`Var` keeps its type and the data leaves are the
per-factor slices. It returns a pytree of float arrays (flattened to one residual block).

Batched factors: every ``Var`` in the call holds an id array of the same length ``n`` and every
data leaf (array, or parameter array of a group element) has leading axis ``n``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import numpy as np

from ._var import Var

JacMode = Literal["auto", "fwd", "rev"]


class _SlotValues:
    """The ``vals`` object handed to a residual function: ``vals[var] -> value``."""

    __slots__ = ("_values",)

    def __init__(self, values: Sequence[Any]):
        self._values = values

    def __getitem__(self, var: Var) -> Any:
        slot = getattr(var, "_slot", None)
        if slot is None:
            raise KeyError(
                f"{var!r} is not an argument of this factor: residual functions may only look "
                "up the Vars passed to them"
            )
        return self._values[slot]


class Factor:
    """One factor (or a batch of ``n`` same-type factors), built by a :func:`factor` type.

    Host-side object; :meth:`jaxnlls.graph.FactorGraph.build` groups and stacks factors.

    Attributes:
        kind: the :class:`FactorType` that made it (residual function and Jacobian mode).
        args: the args pytree (``Var`` leaves and data leaves).
        loss: optional robust loss applied to the whitened residual block
            (``loss.apply(r)`` or ``loss(r)``, an equinox Module whose leaves are traced data).
            On a batched factor of ``n``, each array leaf is a scalar shared by all ``n``
            factors or has leading axis ``n``, one value per factor (``Huber(scales)`` with
            ``scales`` of shape ``(n,)``); ``FactorGraph.build`` rejects other shapes.
        batch: number of factors (``None`` for a single, unbatched factor).
    """

    __slots__ = ("kind", "args", "loss", "batch")

    def __init__(self, kind: FactorType, args: tuple, loss: Any = None):
        self.kind = kind
        self.args = args
        self.loss = loss
        leaves = jax.tree.leaves(args, is_leaf=lambda x: isinstance(x, Var))
        vars_ = [leaf for leaf in leaves if isinstance(leaf, Var)]
        if not vars_:
            raise TypeError(f"factor {kind.name}: no Var among the arguments")
        shapes = {v.id.shape for v in vars_}
        if len(shapes) != 1:
            raise ValueError(
                f"factor {kind.name}: all Vars must hold ids of one shape (() or (n,)), got "
                f"{sorted(shapes)}"
            )
        (shape,) = shapes
        self.batch = None if shape == () else int(shape[0])
        if self.batch is not None:
            for leaf in leaves:
                if isinstance(leaf, Var) or not _is_data(leaf):
                    continue
                s = np.shape(leaf)
                if len(s) == 0 or s[0] != self.batch:
                    raise ValueError(
                        f"factor {kind.name}: batched over {self.batch} ids, so every data "
                        f"leaf needs leading axis {self.batch}; got a leaf of shape {s}"
                    )

    def __repr__(self) -> str:
        n = "" if self.batch is None else f" x{self.batch}"
        return f"Factor({self.kind.name}{n})"


def _is_data(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | float | int | np.number) and not isinstance(
        leaf, bool
    )


class FactorType:
    """A factor constructor made by :func:`factor`; call it with the factor's args.

    ``kind(*args, loss=None)`` returns a :class:`Factor`. ``kind.residual_fn`` is the function.
    """

    def __init__(
        self,
        fn: Callable,
        jac: JacMode = "auto",
        jacobian: Callable | None = None,
        name: str | None = None,
        linearize: Callable | None = None,
        check: Callable | None = None,
    ):
        if jac not in ("auto", "fwd", "rev"):
            raise ValueError(f"factor {fn!r}: jac must be 'auto', 'fwd' or 'rev', got {jac!r}")
        self.residual_fn = fn
        self.jac = jac
        self.jacobian = jacobian
        self.linearize = linearize
        self.check = check
        self.name = name or f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"
        functools.update_wrapper(self, fn)

    def __call__(self, *args, loss: Any = None) -> Factor:
        if self.check is not None:
            self.check(*args)
        return Factor(self, args, loss)

    def __repr__(self) -> str:
        return f"<factor {self.name}>"


def factor(
    fn: Callable | None = None,
    *,
    jac: JacMode = "auto",
    jacobian: Callable | None = None,
    name: str | None = None,
    linearize: Callable | None = None,
    check: Callable | None = None,
) -> Any:
    """Turn a residual function ``fn(vals, *args) -> residual`` into a factor constructor.

    Args:
        fn: the residual function. ``vals[var]`` gives the current value of a ``Var`` argument;
            data arguments arrive as the per-factor slice. Must be pure and vmappable (it is
            evaluated for all factors of a group with one ``vmap``).
        jac: ``"auto"`` (forward mode when the residual is at least as long as the local tangent,
            else reverse), ``"fwd"`` or ``"rev"``: how Jacobian blocks are taken, by autodiff of
            ``δ ↦ fn(vals ⊕ δ)`` at ``δ = 0`` in the tangent space of each variable.
        jacobian: optional analytic Jacobian ``jacobian(vals, *args) -> tuple of blocks``, one
            ``(residual_dim, tangent_dim)`` block per ``Var`` argument in argument order (the
            order of ``jax.tree.leaves(args)``), in the right-perturbation tangent convention.
        name: display name (defaults to the function's qualified name).
        linearize: optional analytic linearization ``linearize(vals, *args) -> (residual,
            blocks)``: the residual (as ``fn`` returns it) together with the blocks of
            ``jacobian``, so that subexpressions they share (a group element's ``log``, its
            composition chain) are traced and computed once. Takes precedence over
            ``jacobian`` when building Jacobian blocks; ``fn`` is still used for residuals.
        check: optional ``check(*args)`` run on the host when a factor is made, with the args as
            given (``Var`` s and the whole, possibly batched, data): raise there to reject bad
            data with a message naming the factor, before anything is traced.

    Returns:
        A :class:`FactorType`; call it with the args to make a :class:`Factor`. A ``loss=``
        keyword attaches a robust loss to the whitened residual block (on batched factors,
        scalar or per-factor leaves: see :class:`Factor`).

    Example:
        >>> @factor
        ... def prior2(vals, p: Point, z):
        ...     return vals[p] - z
        >>> f = prior2(Point(np.arange(4)), np.zeros((4, 2)))
    """

    def wrap(f: Callable) -> FactorType:
        return FactorType(f, jac=jac, jacobian=jacobian, name=name, linearize=linearize,
                          check=check)

    return wrap if fn is None else wrap(fn)
