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


def test_masked_rejects_mask_that_is_not_a_prefix_of_the_residual():
    r = jnp.ones((4, 2))
    np.testing.assert_array_equal(masked(r, jnp.array([True, False, True, False]))[:, 0],
                                  [1, 0, 1, 0])
    np.testing.assert_array_equal(masked(r, r > 0), r)  # same shape is fine
    for bad in (jnp.ones((4, 2, 1), bool), jnp.ones((2, 4), bool), jnp.ones(3, bool)):
        with pytest.raises(ValueError, match=r"mask shape \(.*\) is not a prefix of residual shape "
                                             r"\(4, 2\)"):
            masked(r, bad)
    # The slip from the docs' recipe: the whole (B, size) batch mask inside the vmapped member.
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(5,\)"):
        masked(jnp.ones(5), jnp.ones((2, 5), bool))


def test_pad_stack_edge_fill_repeats_last_real_row():
    a = (np.arange(2.0), np.arange(4.0).reshape(2, 2))
    b = (np.arange(3.0), np.arange(6.0).reshape(3, 2))
    (x, y), mask = pad_stack([a, b], size=4, fill="edge")
    np.testing.assert_array_equal(x[0], [0, 1, 1, 1])
    np.testing.assert_array_equal(y[0], [[0, 1], [2, 3], [2, 3], [2, 3]])
    np.testing.assert_array_equal(x[1], [0, 1, 2, 2])
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 0]])
    (x0, _), _ = pad_stack([a, b], size=4)  # default fill unchanged
    np.testing.assert_array_equal(x0[0], [0, 1, 0, 0])


def test_pad_stack_edge_fill_keeps_gradients_finite(x64):
    """log(x) is singular at the default fill 0.0: the padded rows' 0·inf is NaN in backward."""
    xs = [np.linspace(1, 2, 3), np.linspace(1, 2, 5)]
    members = [(x, 2.0 * np.log(3.0 * x)) for x in xs]

    def residual(th, p):
        (x, y), m = p
        return masked(th[0] * jnp.log(x) + th[1] - y, m)

    def total(a, data, mask):
        (x, y) = data
        solve = lambda p: jaxnlls.solve(residual, jnp.ones(2, y.dtype), p, throw=False)
        sol = jax.vmap(solve)(((a * x, y), mask))
        return jnp.sum(sol.value), sol.result

    a = jnp.asarray(3.0, jnp.float64 if x64 else jnp.float32)
    data0, mask0 = pad_stack(members)
    assert not np.isfinite(jax.grad(lambda a: total(a, data0, mask0)[0])(a))  # the trap
    data, mask = pad_stack(members, fill="edge")
    np.testing.assert_array_equal(total(a, data, mask)[1], 0)
    g = jax.grad(lambda a: total(a, data, mask)[0])(a)
    assert np.isfinite(g)
    if x64:
        h = 1e-6
        fd = (total(a + h, data, mask)[0] - total(a - h, data, mask)[0]) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6)
    np.testing.assert_allclose(g, -4.0 / 3.0, rtol=1e-3)  # each member: th0 + th1 = c - 2 log a


def test_pinned_padded_unknowns_solve_successfully():
    ys = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0, 5.0])]
    data, mask = pad_stack(ys)

    def residual(x, p):  # the docstrings' recipe: pin padded unknowns with masked(x, ~mask)
        y, m = p
        return jnp.concatenate([masked(x - y, m), masked(x, ~m)])

    x0 = jnp.zeros(5, data.dtype)
    sol = jax.vmap(lambda p: jaxnlls.solve(residual, x0, p, throw=False))((data, mask))
    np.testing.assert_array_equal(sol.result, 0)
    np.testing.assert_allclose(sol.value, [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]], atol=1e-5)
    jaxnlls.solve(residual, x0, (data[0], mask[0]))  # throw=True does not raise


def test_pad_stack_and_shard_batch_error_messages():
    with pytest.raises(ValueError, match=r"leaf \[1\] of member 0 is a scalar"):
        pad_stack([(np.zeros(3), 1.0), (np.zeros(2), 2.0)])
    with pytest.raises(ValueError, match=r"leaf \['y'\] has trailing shape \(3,\) in member 1 "
                                         r"but \(2,\) in member 0"):
        pad_stack([{"x": np.zeros(2), "y": np.zeros((2, 2))},
                   {"x": np.zeros(4), "y": np.zeros((4, 3))}])
    with pytest.raises(ValueError, match="fill='edge' needs a real row; member 1"):
        pad_stack([np.zeros(2), np.zeros(0)], fill="edge")
    with pytest.raises(ValueError, match="fill must be a number or 'edge'"):
        pad_stack([np.zeros(2)], fill="wrap")  # type: ignore[arg-type]
    from jaxnlls.batching import shard_batch

    with pytest.raises(ValueError, match="devices is empty"):
        shard_batch(jnp.zeros((2, 2)), devices=[])
