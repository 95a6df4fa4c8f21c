"""XLA compiler options for jaxnlls's own ``jit`` entry points.

A pose-graph solve is one big XLA program (the SE(3) closed forms of the between factor, the
loop, the step solver), and on CPU its compile dominates a one-off solve: on sphere2500 about
2.8 s of compile against 0.22 s of solving. XLA:CPU's MLIR fusion emitters (the default in
current jaxlib) spend most of that in code generation; the older LLVM IR emitters compile the
same program 25-40% faster, and the solve runs as fast or faster (bench/RESULTS.md, "Session 11
figures": sphere2500 2.8 → 1.9-2.1 s, parking-garage 3.1-3.5 → 2.1-2.2 s, city10000 1.6 → 1.1 s;
steady state equal within noise, or better).

The options apply only where jaxnlls compiles the program itself: a call of
:func:`jaxnlls.solve`, :meth:`FactorGraph.solve <jaxnlls.graph.FactorGraph.solve>`,
:meth:`FactorGraph.marginal_covariance <jaxnlls.graph.FactorGraph.marginal_covariance>` or
:func:`~jaxnlls.graph.chordal_initialization` made outside any JAX transformation. Inside a
user's ``jit`` the user's options rule (JAX accepts compiler options on top-level ``jit`` only);
pass ``compiler_options=jaxnlls.compiler_options()`` there to get the same compile time.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import equinox as eqx
import jax

#: Use XLA:CPU's LLVM IR emitters instead of its MLIR fusion emitters (faster to compile).
_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def compiler_options() -> dict[str, Any]:
    """XLA compiler options under which jaxnlls compiles its own entry points.

    ``{"xla_cpu_use_fusion_emitters": False}`` when JAX's default backend is the CPU and the
    installed jaxlib knows that option (checked once, by compiling an identity); ``{}``
    otherwise (GPU/TPU, or a jaxlib without it).

    Example:
        >>> step = jax.jit(train_step, compiler_options=jaxnlls.compiler_options())
    """
    return dict(_CPU_OPTIONS) if _cpu_options_apply() else {}


@functools.cache
def _cpu_options_apply() -> bool:
    if jax.default_backend() != "cpu":
        return False
    try:
        jax.jit(lambda x: x, compiler_options=_CPU_OPTIONS).lower(0.0).compile()
    except Exception:  # an option this jaxlib does not know: "No such compile option"
        return False
    return True


def entry_jit(fun: Callable) -> Callable:
    """``eqx.filter_jit(fun)``, compiled with :func:`compiler_options` when called outside any
    JAX transformation (JAX accepts compiler options on top-level ``jit`` only; inside a user's
    ``jit``, ``vmap`` or ``grad`` the plain ``filter_jit`` is used). The options are chosen at
    the first call, not at import, so that importing jaxnlls does not start a JAX backend."""
    plain = eqx.filter_jit(fun)
    with_options: list[Callable] = []

    @functools.wraps(fun)
    def call(*args, **kwargs):
        if not _outside_transformations():
            return plain(*args, **kwargs)
        if not with_options:
            opts = compiler_options()
            with_options.append(eqx.filter_jit(fun, compiler_options=opts) if opts else plain)
        return with_options[0](*args, **kwargs)

    return call


def _outside_transformations() -> bool:
    try:  # no public API says whether a trace is active; without this one, no options
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover - depends on the jax version
        return False
    return trace_state_clean()
