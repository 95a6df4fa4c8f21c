"""Property tests for the Lie groups: axioms, exp/log, adjoint, Jacobians vs autodiff.

Every group × batch shapes ``()``, ``(1,)``, ``(3, 2)``. Hypothesis draws the random seeds and the
tangent regime (exactly zero, tiny, generic, near the cut locus π). The maths under test runs in
one ``jit``-compiled function per property (cached by shape), so examples are cheap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64
from hypothesis import Phase, given, settings, strategies as st

from jaxnlls.lie import SE2, SE3, SO2, SO3, Sim3

GROUPS = [SO2, SE2, SO3, SE3, Sim3]
BATCHES = [(), (1,), (3, 2)]
DTYPE = jnp.float64 if X64 else jnp.float32
TOL = dict(rtol=1e-9, atol=1e-9) if X64 else dict(rtol=2e-4, atol=2e-4)
JTOL = dict(rtol=1e-7, atol=1e-7) if X64 else dict(rtol=2e-3, atol=2e-3)

seeds = st.integers(min_value=0, max_value=2**31 - 1)
# seeds do not shrink meaningfully: skip the (slow) shrink phase
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
prop = settings(max_examples=6, phases=NO_SHRINK)

ROT = {SO2: (0, 1), SE2: (2, 3), SO3: (0, 3), SE3: (3, 6), Sim3: (3, 6)}

groups = pytest.mark.parametrize("G", GROUPS, ids=lambda g: g.__name__)
# The maths is elementwise over batch axes, so the full property sweep runs by default on the
# (3, 2) batch; () and (1,) rerun it under the ``slow`` marker (shape handling for them is
# covered quickly by ``test_batch_shapes_agree``). Compile time dominates these tests.
batches = pytest.mark.parametrize(
    "batch",
    [pytest.param((), marks=pytest.mark.slow), pytest.param((1,), marks=pytest.mark.slow), (3, 2)],
    ids=str,
)
REGIMES = ("zero", "tiny", "generic", "near_pi")
# Compile time dominates; the checks do not need an optimized executable.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def close(a, b, **tol):
    tol = tol or TOL
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol)


def sample(G, seed, batch):
    return G.sample_uniform(jax.random.key(seed), batch, DTYPE)


def sample_tangent(G, seed, batch, regime):
    """Tangent whose rotation angle lies inside the injectivity radius, in a given regime."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=batch + (G.tangent_dim,))
    if regime == "zero":
        return jnp.zeros(d.shape, DTYPE)
    lo, hi = ROT[G]
    u = d[..., lo:hi] / np.linalg.norm(d[..., lo:hi], axis=-1, keepdims=True)
    r = rng.uniform(size=batch + (1,))
    if regime == "tiny":
        angle, scale = 10.0 ** (-9 + 6 * r), 1e-3
    elif regime == "generic":
        angle, scale = 0.05 + 2.9 * r, 1.0
    else:  # π - 10^[-6, -2] (float64) or π - 10^[-3, -2] (float32)
        lo_exp = -6 if X64 else -3
        angle, scale = np.pi - 10.0 ** (lo_exp + (-2 - lo_exp) * r), 1.0
    d = d * scale
    d[..., lo:hi] = u * angle
    return jnp.asarray(d, DTYPE)


def jit_check(fn):
    """Cache one ``jit`` per (check, group); jit itself caches per input shape."""

    @functools.cache
    def for_group(G):
        return jax.jit(functools.partial(fn, G), compiler_options=FAST_COMPILE)

    return for_group


def mv(m, v):
    return jnp.einsum("...ij,...j->...i", m, v)


def run_checks(pairs, tols=None, per_regime=()):
    """Compare (actual, expected) pairs; names in ``per_regime`` are split along REGIMES."""
    for name, (a, b) in pairs.items():
        a, b = np.asarray(a), np.asarray(b)
        items = (
            [(f"{name} [{r}]", a[i], b[i]) for i, r in enumerate(REGIMES)]
            if name in per_regime
            else [(name, a, b)]
        )
        for label, ai, bi in items:
            tol = (tols or {}).get(label, (tols or {}).get(name, TOL))
            assert np.all(np.isfinite(ai)), label
            np.testing.assert_allclose(ai, bi, err_msg=label, **tol)


@jit_check
def _properties(G, x, y, z, ds, pts, many):
    e = G.identity(x.batch_shape, x.dtype)
    M = lambda g: g.as_matrix()  # noqa: E731
    out = {
        "assoc": (M((x @ y) @ z), M(x @ (y @ z))),
        "right identity": (M(x @ e), M(x)),
        "left identity": (M(e @ x), M(x)),
        "right inverse": (M(x @ x.inverse()), M(e)),
        "left inverse": (M(x.inverse() @ x), M(e)),
        "compose = matmul": (M(x @ y), M(x) @ M(y)),
        "inverse = matinv": (M(x.inverse()), jnp.linalg.inv(M(x))),
        "exp(log x) = x": (M(G.exp(x.log())), M(x)),
        "normalize": (M(x.normalize()), M(x)),
        "from_matrix(as_matrix)": (M(G.from_matrix(M(x))), M(x)),
        "Ad homomorphism": ((x @ y).adjoint(), x.adjoint() @ y.adjoint()),
    }
    # all regimes at once: ds has shape (len(REGIMES),) + batch + (tangent_dim,)
    xb = G(jnp.broadcast_to(x.params, ds.shape[:1] + x.params.shape))
    out["log(exp d) = d"] = (G.exp(ds).log(), ds)
    out["local(retract)"] = (xb.local(xb.retract(ds)), ds)
    out["adjoint identity"] = (M(xb @ G.exp(ds)), M(G.exp(mv(xb.adjoint(), ds)) @ xb))
    # action vs homogeneous matrix
    m = M(x)
    n = G.space_dim
    ref = mv(m[..., :n, :n], pts)
    if m.shape[-1] > n:
        ref = ref + m[..., :n, n]
    x0 = G(x.params.reshape((-1, G.params_dim))[0])
    m0 = M(x0)
    ref0 = many @ m0[:n, :n].T + (m0[None, :n, n] if m0.shape[-1] > n else 0.0)
    out["act = matrix"] = (x @ pts, ref)
    out["act broadcast"] = (x0 @ many, ref0)
    out["act inverse"] = (x.inverse() @ (x @ pts), pts)
    # geodesic interpolation
    mid = x.interpolate(y, 0.5)
    out["interp t=0"] = (G.interpolate(x, y, 0.0).as_matrix(), M(x))
    out["interp t=1"] = (x.interpolate(y, 1.0).as_matrix(), M(y))
    out["interp midpoint"] = (x.local(mid), mid.local(y))
    return out


@groups
@batches
@prop
@given(seed=seeds)
def test_group_properties(G, batch, seed):
    """Axioms, exp/log round trips (δ at 0, tiny, generic, near π), adjoint, action, interpolation."""
    x, y, z = (sample(G, seed + i, batch) for i in range(3))
    ds = jnp.stack([sample_tangent(G, seed + 3, batch, r) for r in REGIMES])
    rng = np.random.default_rng(seed)
    pts = jnp.asarray(rng.normal(size=batch + (G.space_dim,)), DTYPE)
    many = jnp.asarray(rng.normal(size=(5, G.space_dim)), DTYPE)
    # near π, log's condition number grows like 1/(π - θ): float32 is checked more loosely.
    loose = {} if X64 else {k: dict(rtol=5e-3, atol=5e-3) for k in
                            ("log(exp d) = d [near_pi]", "local(retract) [near_pi]")}
    loose.update({k: JTOL for k in ("interp t=1", "interp midpoint")})
    per_regime = ("log(exp d) = d", "local(retract)", "adjoint identity")
    run_checks(_properties(G)(x, y, z, ds, pts, many), loose, per_regime)
    assert (x @ y).batch_shape == batch and (x @ y).dtype == DTYPE


def _per_element(fun, d):
    """Apply a per-element Jacobian function over the batch axes of ``d`` (flattened vmap)."""
    out = jax.vmap(fun)(d.reshape((-1, d.shape[-1])))
    return out.reshape(d.shape[:-1] + out.shape[1:])


def _jacobians(G, mode, ds, x):
    jac = jax.jacfwd if mode == "fwd" else jax.jacrev
    zero = jnp.zeros((G.tangent_dim,), x.dtype)
    p = x.params.reshape((-1, G.params_dim))

    def right(di):
        return jac(lambda e: G.exp(di).inverse().compose(G.exp(di + e)).log())(zero)

    def right_inv(di):
        return jac(lambda e: G.exp(di).compose(G.exp(e)).log())(zero)

    def left(di):
        return jac(lambda e: G.exp(di + e).compose(G.exp(di).inverse()).log())(zero)

    def left_inv(di):
        return jac(lambda e: G.exp(e).compose(G.exp(di)).log())(zero)

    rj = jax.vmap(lambda pi: jac(lambda e: G(pi).retract(e).params)(zero))(p)
    lj = jax.vmap(lambda pi: jac(lambda e: G(pi).retract(e).log())(zero))(p)
    eye = jnp.broadcast_to(jnp.eye(G.tangent_dim, dtype=ds.dtype), ds.shape + (G.tangent_dim,))
    return {
        "jac_right": (G.jac_right(ds), _per_element(right, ds)),
        "jac_right_inv": (G.jac_right_inv(ds), _per_element(right_inv, ds)),
        "jac_left": (G.jac_left(ds), _per_element(left, ds)),
        "jac_left_inv": (G.jac_left_inv(ds), _per_element(left_inv, ds)),
        "J_r J_r^-1 = I": (G.jac_right(ds) @ G.jac_right_inv(ds), eye),
        "retract_jac": (x.retract_jac(), rj.reshape(x.batch_shape + rj.shape[1:])),
        "log_jac": (x.log_jac(), lj.reshape(x.batch_shape + lj.shape[1:])),
    }


_jac_fwd = jit_check(functools.partial(_jacobians, mode="fwd"))
_jac_rev = jit_check(functools.partial(_jacobians, mode="rev"))


def _check_jacobians(G, batch, seed, mode):
    # near π: 0.99 keeps the compositions inside the autodiff reference off the log branch cut
    ds = jnp.stack(
        [sample_tangent(G, seed, batch, r) * (0.99 if r == "near_pi" else 1.0) for r in REGIMES]
    )
    x = sample(G, seed + 1, batch)
    pairs = (_jac_fwd if mode == "fwd" else _jac_rev)(G)(ds=ds, x=x)
    per_regime = ("jac_right", "jac_right_inv", "jac_left", "jac_left_inv", "J_r J_r^-1 = I")
    run_checks(pairs, {k: JTOL for k in pairs}, per_regime)


@groups
@batches
@settings(max_examples=4, phases=NO_SHRINK)
@given(seed=seeds)
def test_jacobians_match_jacfwd(G, batch, seed):
    """Closed-form J_r, J_r⁻¹, J_l, J_l⁻¹, retract_jac, log_jac vs ``jax.jacfwd``."""
    _check_jacobians(G, batch, seed, "fwd")


@pytest.mark.slow
@groups
@pytest.mark.parametrize("batch", BATCHES, ids=str)
@settings(max_examples=4, phases=NO_SHRINK)
@given(seed=seeds)
def test_jacobians_match_jacrev(G, batch, seed):
    """Same as above against ``jax.jacrev`` (slow: reverse mode through expm compiles slowly)."""
    _check_jacobians(G, batch, seed, "rev")


@jit_check
def _ops(G, x, y, d, pts):
    return [
        G.exp(d).params, x.log(), (x @ y).params, x.inverse().params, x @ pts, x.adjoint(),
        G.jac_right(d), G.jac_right_inv(d), x.retract_jac(), x.retract(d).params,
    ]


@groups
def test_batch_shapes_agree(G):
    """Batch shapes (), (1,), (3, 2): every op equals the per-element result of the (3, 2) batch."""
    x, y = sample(G, 0, (3, 2)), sample(G, 1, (3, 2))
    d = sample_tangent(G, 2, (3, 2), "generic")
    pts = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, G.space_dim)), DTYPE)
    full = _ops(G)(x, y, d, pts)
    one = _ops(G)(x[1:2, 1], y[1:2, 1], d[1:2, 1], pts[1:2, 1])
    scalar = _ops(G)(x[2, 0], y[2, 0], d[2, 0], pts[2, 0])
    for f, o, s in zip(full, one, scalar, strict=True):
        close(o, f[1:2, 1])
        close(s, f[2, 0])


@groups
def test_vmap_and_jit_match_batched(G):
    x, y = sample(G, 0, (4,)), sample(G, 1, (4,))
    d = sample_tangent(G, 2, (4,), "generic")

    def f(a, b, di):
        return (a @ b).retract(di).log()

    batched = jax.jit(f, compiler_options=FAST_COMPILE)(x, y, d)
    close(jax.jit(jax.vmap(f), compiler_options=FAST_COMPILE)(x, y, d), batched)
