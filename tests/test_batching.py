"""Padding/masking for problems of different sizes, and sharding a batch over devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnlls
from jaxnlls.batching import masked, pad_stack


def _line_data(n, slope, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    y = slope * x + 0.3 + 0.01 * rng.standard_normal(n)
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    return x.astype(dtype), y.astype(dtype)


def _residual(theta, p):
    (x, y), mask = p
    return masked(theta[0] * x + theta[1] - y, mask)


def test_pad_stack_and_masked_solve_equals_unpadded(tol):
    members = [_line_data(n, s, i) for i, (n, s) in enumerate([(5, 1.0), (9, -2.0), (3, 0.5)])]
    data, mask = pad_stack(members)
    assert data[0].shape == (3, 9) and mask.shape == (3, 9)
    np.testing.assert_array_equal(mask.sum(axis=1), [5, 9, 3])
    x0 = jnp.zeros(2, data[0].dtype)
    batched = jax.vmap(lambda d, m: jaxnlls.solve(_residual, x0, (d, m), throw=False).value)(data, mask)
    for i, (x, y) in enumerate(members):
        single = jaxnlls.solve(lambda t, p: t[0] * p[0] + t[1] - p[1], x0, (jnp.asarray(x), jnp.asarray(y))).value
        np.testing.assert_allclose(batched[i], single, rtol=tol.rtol * 100, atol=tol.atol * 100)


def test_pad_stack_errors():
    with pytest.raises(ValueError, match="no members"):
        pad_stack([])
    with pytest.raises(ValueError, match="disagree on length"):
        pad_stack([(np.zeros(3), np.zeros(4))])
    with pytest.raises(ValueError, match="smaller than the longest"):
        pad_stack([np.zeros(3), np.zeros(5)], size=4)
    with pytest.raises(ValueError, match="structure"):
        pad_stack([(np.zeros(3),), [np.zeros(3)]])


def test_shard_batch_over_four_host_devices():
    """Runs in a subprocess: the host device count is fixed when JAX initializes."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        import jaxnlls
        from jaxnlls.batching import shard_batch
        assert len(jax.devices()) == 4, jax.devices()
        rng = np.random.default_rng(0)
        x = np.linspace(0, 1, 16)
        ab = rng.uniform(-1, 1, (8, 2))
        y = jnp.asarray(np.exp(ab[:, :1] * x + ab[:, 1:]))
        def residual(t, y):
            return jnp.exp(t[0] * x + t[1]) - y
        solve = jax.jit(jax.vmap(lambda y: jaxnlls.solve(residual, jnp.zeros(2), y, throw=False).value))
        ys = shard_batch(y)
        assert len(ys.sharding.device_set) == 4
        out = solve(ys)
        assert len(out.sharding.device_set) == 4, out.sharding
        np.testing.assert_allclose(np.asarray(out), ab, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.asarray(out), np.asarray(solve(y)), rtol=1e-12, atol=1e-12)
        print("SHARDED_OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    assert "SHARDED_OK" in proc.stdout, proc.stderr[-3000:]


def test_shard_batch_rejects_indivisible():
    from jaxnlls.batching import shard_batch

    n = len(jax.devices())
    if n == 1:
        pytest.skip("one device divides every batch")
    with pytest.raises(ValueError, match="not divisible"):
        shard_batch(jnp.zeros((n + 1, 2)))
