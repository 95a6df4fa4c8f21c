"""The compiler options of jaxnlls's own jit entry points (src/jaxnlls/_compile.py)."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxnlls
from jaxnlls import _compile


def test_cpu_gets_the_llvm_ir_emitters_and_a_copy():
    opts = jaxnlls.compiler_options()
    assert opts == {"xla_cpu_use_fusion_emitters": False}  # the suite runs on CPU
    opts["xla_cpu_use_fusion_emitters"] = True  # the caller's copy: the next call is unchanged
    assert jaxnlls.compiler_options() == {"xla_cpu_use_fusion_emitters": False}
    # usable in a user's jit, with the same numbers as without it
    f = lambda x: jnp.sin(x) @ jnp.cos(x)
    x = jnp.linspace(0.0, 1.0, 7)
    np.testing.assert_array_equal(jax.jit(f, compiler_options=jaxnlls.compiler_options())(x),
                                  jax.jit(f)(x))


def test_an_option_the_jaxlib_lacks_gives_no_options(monkeypatch):
    monkeypatch.setattr(_compile, "_CPU_OPTIONS", {"xla_cpu_no_such_option_in_any_jaxlib": 1})
    _compile._cpu_options_apply.cache_clear()
    try:
        assert jaxnlls.compiler_options() == {}
    finally:
        _compile._cpu_options_apply.cache_clear()


def test_entry_points_compile_with_the_options(monkeypatch):
    seen = []
    real = _compile.eqx.filter_jit

    def recording_filter_jit(fun, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real(fun, **kwargs)

    monkeypatch.setattr(_compile.eqx, "filter_jit", recording_filter_jit)
    solve = _compile.entry_jit(lambda x: jaxnlls.solve(lambda y, p: y - p, x, 2.0).value)
    assert seen == [None]  # the plain jit; the options are chosen at the first call
    np.testing.assert_allclose(solve(jnp.asarray(0.0)), 2.0, rtol=1e-12)
    np.testing.assert_allclose(solve(jnp.asarray(1.0)), 2.0, rtol=1e-12)
    assert seen == [None, {"xla_cpu_use_fusion_emitters": False}]  # once, then reused


def test_entry_points_inside_user_transformations_take_no_options():
    # JAX rejects compiler options on a nested jit: the entry points must not pass them there
    residual = lambda y, p: jnp.stack([y[0] - p, y[1] - 2.0 * p])
    x0 = jnp.zeros(2)
    expected = jaxnlls.solve(residual, x0, 3.0).value
    np.testing.assert_allclose(jax.jit(lambda: jaxnlls.solve(residual, x0, 3.0).value)(),
                               expected)  # concrete arguments inside a jit
    np.testing.assert_allclose(jax.vmap(lambda p: jaxnlls.solve(residual, x0, p).value)(
        jnp.asarray([3.0, 1.0]))[0], expected)
    np.testing.assert_allclose(jax.grad(lambda p: jaxnlls.solve(residual, x0, p).value[1])(3.0),
                               2.0, rtol=1e-6)
