"""Tree-level retraction over mixed pytrees of arrays and Lie-group elements."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnlls import manifold
from jaxnlls.lie import SE3, SO2


def _mixed(key):
    k1, k2, k3 = jax.random.split(key, 3)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return {
        "pose": SE3.exp(0.5 * jax.random.normal(k1, (4, 6), dtype)),
        "heading": SO2.exp(jax.random.normal(k2, (1,), dtype)),
        "bias": jax.random.normal(k3, (3,), dtype),
    }


def test_tangent_zeros_and_size(getkey):
    x = _mixed(getkey())
    t = manifold.tangent_zeros(x)
    assert t["pose"].shape == (4, 6) and t["heading"].shape == (1,) and t["bias"].shape == (3,)
    assert manifold.tangent_size(x) == 24 + 1 + 3


def test_local_inverts_retract(getkey, tol):
    x = _mixed(getkey())
    delta = jax.tree.map(lambda t: 0.3 * jax.random.normal(getkey(), t.shape, t.dtype),
                         manifold.tangent_zeros(x))
    back = manifold.local(x, manifold.retract(x, delta))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(delta), strict=True):
        np.testing.assert_allclose(a, b, rtol=100 * tol.rtol, atol=100 * tol.atol)


def test_ravel_round_trip(getkey):
    x = _mixed(getkey())
    delta = jax.tree.map(lambda t: jnp.arange(t.size, dtype=t.dtype).reshape(t.shape),
                         manifold.tangent_zeros(x))
    flat, unravel = manifold.tangent_ravel(delta)
    assert flat.shape == (manifold.tangent_size(x),)
    for a, b in zip(jax.tree.leaves(unravel(flat)), jax.tree.leaves(delta), strict=True):
        np.testing.assert_array_equal(a, b)


def test_retract_zero_is_identity(getkey, tol):
    x = _mixed(getkey())
    y = manifold.retract(x, manifold.tangent_zeros(x))
    for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(x), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol.rtol, atol=tol.atol)


def test_is_manifold():
    assert manifold.is_manifold(SO2.identity())
    assert not manifold.is_manifold(jnp.zeros(2))


def test_tangent_to_ambient_matches_jvp_of_retract(getkey, tol):
    """The closed-form push-forward equals differentiating ``retract`` at zero, leaf by leaf."""
    from jaxnlls.lie import SE2, SO3, Sim3

    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    x = _mixed(getkey())
    x["planar"] = SE2.exp(jax.random.normal(getkey(), (2, 3), dtype))
    x["rot"] = SO3.exp(jax.random.normal(getkey(), (3,), dtype))
    x["sim"] = Sim3.exp(0.3 * jax.random.normal(getkey(), (7,), dtype))
    delta = jax.tree.map(lambda t: jax.random.normal(getkey(), t.shape, t.dtype),
                         manifold.tangent_zeros(x))
    zero = manifold.tangent_zeros(x)
    expected = jax.jvp(lambda d: manifold.retract(x, d), (zero,), (delta,))[1]
    got = manifold.tangent_to_ambient(x, delta)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=10 * tol.rtol, atol=10 * tol.atol)
