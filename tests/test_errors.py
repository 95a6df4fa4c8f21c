"""Bad input: clear errors naming what and where, or a result code; never a silent NaN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxnlls


def _res(x, p):
    return x - p


def test_nonfinite_init_is_reported():
    x0 = jnp.asarray([1.0, jnp.nan])
    sol = jaxnlls.solve(_res, x0, jnp.ones(2), throw=False)
    assert int(sol.result) == jaxnlls.RESULTS.nonfinite_input
    with pytest.raises(Exception, match=r"non-finite .* \(`init` or `params` of jaxnlls.solve"):
        jaxnlls.solve(_res, x0, jnp.ones(2))


def test_nonfinite_params_are_reported():
    sol = jaxnlls.solve(_res, jnp.ones(2), jnp.asarray([jnp.inf, 1.0]), throw=False)
    assert int(sol.result) == jaxnlls.RESULTS.nonfinite_input


def test_nonfinite_residual_is_reported():
    def residual(x, p):
        return jnp.log(x - p)  # log of a negative number at the start

    sol = jaxnlls.solve(residual, jnp.zeros(2), jnp.ones(2), throw=False)
    assert int(sol.result) == jaxnlls.RESULTS.nonfinite_residual
    with pytest.raises(Exception, match="residual became non-finite"):
        jaxnlls.solve(residual, jnp.zeros(2), jnp.ones(2))


def test_integer_residual_rejected():
    with pytest.raises(TypeError, match=r"residual_fn returned residual.*dtype int"):
        jaxnlls.solve(lambda x, p: jnp.round(x).astype(jnp.int32), jnp.zeros(2), None)


def test_residual_dtype_mismatch_rejected(x64):
    if not x64:
        pytest.skip("needs float64 to build a mismatch")
    with pytest.raises(TypeError, match="dtype float32 but init has dtype float64"):
        jaxnlls.solve(lambda x, p: (x - p).astype(jnp.float32), jnp.zeros(2), jnp.ones(2))


def test_residual_tuple_leaf_named():
    def residual(x, p):
        return (x - p, jnp.arange(2))

    with pytest.raises(TypeError, match=r"residual\[1\]"):
        jaxnlls.solve(residual, jnp.zeros(2), jnp.ones(2))


def test_integer_init_rejected_with_path():
    with pytest.raises(TypeError, match=r"init\['b'\] has dtype int"):
        jaxnlls.solve(lambda x, p: x["a"] - x["b"], {"a": jnp.zeros(2), "b": jnp.zeros(2, jnp.int32)},
                      None)


def test_mixed_dtypes_rejected(x64):
    if not x64:
        pytest.skip("needs float64 to build a mix")
    with pytest.raises(TypeError, match="mix floating dtypes"):
        jaxnlls.solve(lambda x, p: jnp.concatenate([x["a"], x["b"]]),
                      {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(2, jnp.float64)}, None)


def test_mismatched_pytrees_named():
    def residual(x, p):
        return x["position"] - p

    with pytest.raises(KeyError, match=r"residual_fn\(init, params\) failed while tracing"):
        jaxnlls.solve(residual, {"pos": jnp.zeros(2)}, jnp.ones(2))


def test_python_branch_on_traced_value_keeps_jax_error_and_names_the_call():
    """JAX's tracer errors cannot be rebuilt from one string; before, re-raising them with the
    call's name failed inside the handler with an unrelated AttributeError."""

    def residual(x, p):
        if x[0] > p:  # a Python `if` on a traced value: the commonest residual bug
            return x - p
        return x + p

    with pytest.raises(jax.errors.TracerBoolConversionError) as info:
        jaxnlls.solve(residual, jnp.zeros(2), 1.0)
    assert any("solve: residual_fn(init, params) failed while tracing" in note
               for note in info.value.__notes__)
    with pytest.raises(jax.errors.ConcretizationTypeError, match=r"residual_fn\(init, params\)"):
        jaxnlls.solve(lambda x, p: x - float(x[0]), jnp.zeros(2), 1.0)


def test_shape_mismatch_inside_residual_named():
    def residual(x, p):
        return x - p  # (2,) - (3,)

    with pytest.raises(TypeError, match="structure of `init` and `params`"):
        jaxnlls.solve(residual, jnp.zeros(2), jnp.ones(3))


@pytest.mark.parametrize("bad", [0, -3])
def test_max_steps_below_one(bad):
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        jaxnlls.solve(_res, jnp.zeros(2), jnp.ones(2), max_steps=bad)


def test_max_steps_not_int():
    with pytest.raises(TypeError, match="max_steps must be a Python int"):
        jaxnlls.solve(_res, jnp.zeros(2), jnp.ones(2), max_steps=2.5)


def test_has_aux_needs_pair():
    with pytest.raises(TypeError, match="must return a pair"):
        jaxnlls.solve(_res, jnp.zeros(2), jnp.ones(2), has_aux=True)


def test_empty_residual_rejected():
    with pytest.raises(ValueError, match="empty residual"):
        jaxnlls.solve(lambda x, p: jnp.zeros((0,), x.dtype), jnp.zeros(2), None)


def test_bad_solver_and_adjoint_arguments():
    with pytest.raises(TypeError, match="solver must be"):
        jaxnlls.solve(_res, jnp.zeros(2), jnp.ones(2), solver="lm")
    with pytest.raises(ValueError, match="hessian"):
        jaxnlls.ImplicitAdjoint(hessian="newton")
    with pytest.raises(ValueError, match="k >= 1"):
        jaxnlls.TruncatedAdjoint(0)
    with pytest.raises(ValueError, match="eps > 0"):
        jaxnlls.DirectLossAdjoint(eps=0.0)
    # before: accepted, then an AttributeError ('NoneType' has no 'solve') deep in the loop
    for solver in (jaxnlls.LevenbergMarquardt, jaxnlls.GaussNewton, jaxnlls.Dogleg,
                   jaxnlls.graph.GraphLevenbergMarquardt):
        with pytest.raises(TypeError, match=rf"{solver.__name__}\(linear_solver=...\) must be"):
            solver(linear_solver=None)
    with pytest.raises(TypeError, match=r"lineax solvers belong to ImplicitAdjoint"):
        jaxnlls.LevenbergMarquardt(linear_solver=lx.CG(rtol=1e-6, atol=1e-6))


def test_result_messages_cover_every_code():
    codes = [v for k, v in vars(jaxnlls.RESULTS).items() if not k.startswith("_") and isinstance(v, int)]
    assert len(jaxnlls.RESULTS.all_messages()) == len(codes)
    for c in codes:
        assert jaxnlls.RESULTS.message(c)


def test_vmap_reports_per_member():
    x0 = jnp.zeros((3, 2))
    p = jnp.asarray([[1.0, 2.0], [jnp.nan, 0.0], [3.0, 4.0]])
    res = jax.vmap(lambda a, b: jaxnlls.solve(_res, a, b, throw=False).result)(x0, p)
    np.testing.assert_array_equal(
        res, [jaxnlls.RESULTS.successful, jaxnlls.RESULTS.nonfinite_input, jaxnlls.RESULTS.successful])


# the cost's minimum over the residual's domain lies on its boundary (x = 0.5, x = 0), where the
# gradient is 1.5 and 1/(2 sqrt(x)) + 1/2 > 0: no stationary point, so no success either
def _nan_beyond_half(x, p):
    return jnp.where(x > 0.5, jnp.nan, x - p)


def _sqrt_wall(x, p):
    return jnp.sqrt(x) + p


@pytest.mark.parametrize(
    "solver", [jaxnlls.GaussNewton(), jaxnlls.LevenbergMarquardt(), jaxnlls.Dogleg()],
    ids=lambda s: type(s).__name__,
)
def test_stopping_at_nonfinite_wall_is_reported(solver):
    """LM and dogleg shrink their steps after non-finite trials; stopping there used to be
    reported as success at a point whose gradient is far from zero."""
    x0 = jnp.asarray([[0.0], [4.0], [3.0]])
    p = jnp.asarray([2.0, 1.0, -5.0])
    fns = (_nan_beyond_half, _sqrt_wall, lambda x, p: jnp.log(x) - p)

    def one(i, x, p):
        return jax.lax.switch(i, [lambda x, p, f=f: jaxnlls.solve(
            f, x, p, solver=solver, throw=False) for f in fns], x, p)

    sols = jax.jit(jax.vmap(one))(jnp.arange(3), x0, p)
    bad = jaxnlls.RESULTS.nonfinite_residual
    np.testing.assert_array_equal(sols.result[:2], [bad, bad])
    # log(x) = -5 from x = 3: GN's first step crosses 0 (reported); LM and dogleg recover
    # from that non-finite trial and reach x = e^-5
    if isinstance(solver, jaxnlls.GaussNewton):
        assert int(sols.result[2]) == bad
    else:
        assert int(sols.result[2]) == jaxnlls.RESULTS.successful
        np.testing.assert_allclose(sols.value[2], np.exp(-5.0), rtol=1e-5)
    with pytest.raises(Exception, match="residual became non-finite"):
        jaxnlls.solve(_sqrt_wall, jnp.asarray([4.0]), jnp.asarray(1.0), solver=solver)
