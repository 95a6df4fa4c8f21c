"""Robust kernels, exact square-root robustification, GNC, and measurement weights."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnlls
from jaxnlls import robust, weights
from jaxnlls.robust import (
    DCS,
    L2,
    Arctan,
    Cauchy,
    Fair,
    GemanMcClure,
    GNCTruncatedLS,
    Huber,
    SoftL1,
    Trivial,
    TruncatedLS,
    Tukey,
    Welsch,
    gnc_schedule,
    gnc_solve,
    robustify,
)

X64 = jax.config.jax_enable_x64
FLOATS = [jnp.float32, jnp.float64] if X64 else [jnp.float32]
# compile-heavy tests: the default dtype by default; float32 under x64 is covered by the
# JAXNLLS_TEST_X64=0 run, so that variant is `slow` here
FLOATS_HEAVY = (
    [pytest.param(jnp.float32, marks=pytest.mark.slow), jnp.float64] if X64 else [jnp.float32]
)


# --------------------------------------------------------------------------------------
# independent float64 numpy references (the textbook formulas, no stabilization)


def _ref_rho(name: str, s: np.ndarray, c: float) -> np.ndarray:
    c2 = c * c
    x = s / c2
    if name == "L2":
        return s
    if name == "Huber":
        return np.where(s <= c2, s, 2 * c * np.sqrt(s) - c2)
    if name == "SoftL1":
        return 2 * c2 * (np.sqrt(1 + x) - 1)
    if name == "Cauchy":
        return c2 * np.log(1 + x)
    if name == "Fair":
        u = np.sqrt(s) / c
        return 2 * c2 * (u - np.log(1 + u))
    if name == "GemanMcClure":
        return s * c2 / (c2 + s)
    if name == "Welsch":
        return c2 * (1 - np.exp(-x))
    if name == "Tukey":
        return np.where(s <= c2, c2 / 3 * (1 - (1 - x) ** 3), c2 / 3)
    if name == "Arctan":
        return c2 * np.arctan(x)
    if name == "DCS":  # the integral of GTSAM's DCS weight from 0
        return s + np.where(s <= c2, 0.0, 4 * c2 * c2 * (1 / (2 * c2) - 1 / (c2 + s)) - (s - c2))
    if name == "TruncatedLS":
        return np.minimum(s, c2)
    if name == "GNCTruncatedLS":
        mu = GNC_MU
        mid = 2 * c * np.sqrt(s) * np.sqrt(mu * (mu + 1)) - mu * (c2 + s)
        return np.where(x <= mu / (mu + 1), s, np.where(x >= (mu + 1) / mu, c2, mid))
    raise AssertionError(name)


def _ref_weight(name: str, s: np.ndarray, c: float) -> np.ndarray:
    c2 = c * c
    x = s / c2
    if name == "L2":
        return np.ones_like(s)
    if name == "Huber":
        return np.minimum(1.0, c / np.sqrt(np.maximum(s, 1e-300)))
    if name == "SoftL1":
        return 1 / np.sqrt(1 + x)
    if name == "Cauchy":
        return 1 / (1 + x)
    if name == "Fair":
        return 1 / (1 + np.sqrt(s) / c)
    if name == "GemanMcClure":
        return 1 / (1 + x) ** 2
    if name == "Welsch":
        return np.exp(-x)
    if name == "Tukey":
        return np.where(s <= c2, (1 - x) ** 2, 0.0)
    if name == "Arctan":
        return 1 / (1 + x * x)
    if name == "DCS":  # GTSAM: w = (2 Φ / (Φ + e²))² for e² > Φ, with Φ = c²
        return np.where(s <= c2, 1.0, (2 * c2 / (c2 + s)) ** 2)
    if name == "TruncatedLS":
        return np.where(s < c2, 1.0, 0.0)
    if name == "GNCTruncatedLS":
        mu = GNC_MU
        mid = c * np.sqrt(mu * (mu + 1)) / np.sqrt(np.maximum(s, 1e-300)) - mu
        return np.where(x <= mu / (mu + 1), 1.0, np.where(x >= (mu + 1) / mu, 0.0, mid))
    raise AssertionError(name)


SCALE = 1.7
GNC_MU = 0.5  # control parameter of the GNC-TLS surrogate under test
KERNELS = {
    "L2": lambda c: L2(),
    "Huber": Huber,
    "SoftL1": SoftL1,
    "Cauchy": Cauchy,
    "Fair": Fair,
    "GemanMcClure": GemanMcClure,
    "Welsch": Welsch,
    "Tukey": Tukey,
    "Arctan": Arctan,
    "DCS": DCS,
    "TruncatedLS": TruncatedLS,
    "GNCTruncatedLS": lambda c: GNCTruncatedLS(c, GNC_MU),
}
SCALED = [k for k in KERNELS if k != "L2"]
# rho(s)/s = 1 + a t + O(t^2) with t = s/c^2 (Fair: t = sqrt(s)/c)
FIRST_ORDER = {
    "L2": 0.0,
    "Huber": 0.0,
    "SoftL1": -0.25,
    "Cauchy": -0.5,
    "Fair": -2.0 / 3,
    "GemanMcClure": -1.0,
    "Welsch": -0.5,
    "Tukey": -1.0,
    "Arctan": 0.0,
    "DCS": 0.0,
    "TruncatedLS": 0.0,
    "GNCTruncatedLS": 0.0,
}


def _make(name, scale=SCALE):
    return KERNELS[name](scale)


def _s_grid(c: float) -> np.ndarray:
    """Squared norms from 0 to far beyond the scale, avoiding the kinks at s/c^2 = 1 (TLS) and
    mu/(mu+1), (mu+1)/mu (GNC-TLS)."""
    return np.concatenate([[0.0], c * c * np.geomspace(1e-3, 1e3, 36)])


def _tols(dtype):
    return (1e-12, 1e-13) if dtype == jnp.float64 else (2e-6, 1e-6)


# --------------------------------------------------------------------------------------
# kernels: closed forms and derivatives


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", list(KERNELS))
def test_rho_weight_ratio(name, dtype):
    """rho and weight vs the textbook formulas; weight == d rho/ds by autodiff; s * rho_ratio
    == rho, with rho_ratio(0) == 1 and finite derivatives down to s = 0."""
    loss = _make(name)
    grid = _s_grid(SCALE)
    tiny = SCALE**2 * np.geomspace(1e-30, 1e-2, 15)
    s = jnp.asarray(np.concatenate([grid, tiny]), dtype)
    s64 = np.asarray(s, np.float64)
    rtol, atol = _tols(dtype)

    @jax.jit
    def evaluate(s):
        return dict(
            rho=loss.rho(s),
            weight=loss.weight(s),
            d_rho=jax.vmap(jax.grad(loss.rho))(s),
            ratio=loss.rho_ratio(s),
            d_ratio=jax.vmap(jax.grad(loss.rho_ratio))(s),
            dd_ratio=jax.vmap(jax.grad(jax.grad(loss.rho_ratio)))(s),
        )

    out = evaluate(s)
    for key in ("rho", "weight", "ratio"):
        assert out[key].dtype == dtype, key
    g = slice(0, grid.size)  # the moderate grid: naive float64 formulas are accurate there
    np.testing.assert_allclose(
        np.asarray(out["rho"], np.float64)[g], _ref_rho(name, grid, SCALE), rtol=rtol, atol=atol
    )
    np.testing.assert_allclose(
        np.asarray(out["weight"], np.float64)[g],
        _ref_weight(name, grid, SCALE),
        rtol=rtol,
        atol=atol,
    )
    np.testing.assert_allclose(out["d_rho"], out["weight"], rtol=10 * rtol, atol=10 * atol)
    # rho ≈ s near 0: rho(0) = 0, rho'(0) = 1, rho(s)/s -> 1
    assert float(out["rho"][0]) == 0.0 and float(out["d_rho"][0]) == pytest.approx(1.0)
    assert float(out["ratio"][0]) == 1.0
    np.testing.assert_allclose(s * out["ratio"], out["rho"], rtol=4 * rtol, atol=0)
    # small s (<= 0.01 c^2, down to 1e-30 c^2): first-order Taylor expansion of rho(s)/s,
    # coefficients derived by hand; remainder bounded by t^2
    t_small = tiny / SCALE**2 if name != "Fair" else np.sqrt(tiny) / SCALE
    ratio_small = np.asarray(out["ratio"], np.float64)[grid.size :]
    taylor = 1.0 + FIRST_ORDER[name] * t_small
    assert np.all(np.abs(ratio_small - taylor) <= t_small**2 + 4 * np.finfo(dtype).eps)
    assert np.all(s64 * np.asarray(out["ratio"]) <= s64 * (1 + 4 * rtol))  # rho(s) <= s
    assert np.all(np.isfinite(out["d_ratio"]))
    if name != "Fair":  # Fair's rho(s)/s ~ 1 - (2/3) sqrt(s)/c is not C^1 in s at 0
        assert np.all(np.isfinite(out["dd_ratio"]))


def test_trivial_alias_and_l2_identity():
    assert Trivial is L2
    r = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(L2().apply(r), r)


# --------------------------------------------------------------------------------------
# square-root robustification


@pytest.mark.parametrize("dtype", FLOATS_HEAVY)
@pytest.mark.parametrize("name", list(KERNELS))
def test_apply_cost_is_exact(name, dtype, getkey):
    loss = _make(name)
    # blocks with norms spread over 1e-4 .. 1e3 times the scale
    r = jax.random.normal(getkey(), (5, 4, 3), dtype)
    mag = jnp.asarray(np.geomspace(1e-4, 1e3, 5), dtype)[:, None, None] * SCALE
    r = r * mag
    rtol, atol = _tols(dtype)

    @jax.jit
    def evaluate(r):
        out = []
        for block_ndim in (0, 1, 2):
            axes = tuple(range(3 - block_ndim, 3))
            rp = loss.apply(r, block_ndim=block_ndim)
            tree = robustify(loss, {"a": r, "b": [r[0]]}, block_ndim=block_ndim)
            out.append(
                dict(
                    rp=rp,
                    half_sq=0.5 * jnp.sum(rp * rp, axis=axes),
                    half_rho=0.5 * loss.rho(jnp.sum(r * r, axis=axes)),
                    cost=loss.cost(r, block_ndim=block_ndim),
                    tree=tree,
                    leaf_b=loss.apply(r[0], block_ndim=block_ndim),
                )
            )
        return out

    for o in evaluate(r):
        assert o["rp"].shape == r.shape and o["rp"].dtype == dtype
        np.testing.assert_allclose(o["half_sq"], o["half_rho"], rtol=10 * rtol, atol=atol)
        np.testing.assert_allclose(o["cost"], jnp.sum(o["half_sq"]), rtol=10 * rtol)
        # robustify maps over a pytree with the same result per leaf
        np.testing.assert_array_equal(o["tree"]["a"], o["rp"])
        np.testing.assert_array_equal(o["tree"]["b"][0], o["leaf_b"])


@pytest.mark.parametrize("dtype", FLOATS_HEAVY)
@pytest.mark.parametrize("name", list(KERNELS))
def test_apply_finite_at_zero_and_large(name, dtype):
    loss = _make(name)
    eye = np.eye(3)

    def cost(r):
        rp = loss.apply(r)
        return 0.5 * jnp.sum(rp * rp)

    @jax.jit
    def everything(r):
        s = jnp.sum(r * r)
        return dict(
            rp=loss.apply(r),
            jf=jax.jacfwd(loss.apply)(r),
            jr=jax.jacrev(loss.apply)(r),
            hess=jax.hessian(cost)(r),
            grad=jax.grad(cost)(r),
            irls=loss.weight(s) * r,
            # autodiff forms the gradient as a difference of terms of size ~ rho(s)/|r|
            term=loss.rho(s) / jnp.maximum(jnp.sqrt(s), 1e-30),
        )

    zero = jnp.zeros(3, dtype)
    out = everything(zero)
    np.testing.assert_array_equal(out["rp"], zero)
    np.testing.assert_allclose(out["jf"], eye, atol=1e-6)
    np.testing.assert_allclose(out["jr"], eye, atol=1e-6)
    # Hessian of the robust cost at 0 is rho'(0) I = I, through second-order autodiff
    np.testing.assert_allclose(out["hess"], eye, atol=1e-5)
    # gradient w.r.t. the scale is finite (and zero) at r = 0
    if name != "L2":
        g = jax.grad(lambda c: jnp.sum(KERNELS[name](c).apply(zero)))(jnp.asarray(SCALE, dtype))
        assert float(g) == 0.0

    big = jnp.asarray([3e3, -4e3, 1e3], dtype) * SCALE
    for r in (big, jnp.asarray([1e-20, 0.0, 0.0], dtype), jnp.asarray([0.3, -0.2, 0.1], dtype)):
        out = everything(r)
        for key in ("rp", "jf", "jr", "hess", "grad"):
            assert np.all(np.isfinite(out[key])), key
        # gradient of the robust cost is rho'(s) r (the IRLS identity)
        atol = 50 * float(jnp.finfo(dtype).eps) * float(out["term"])
        np.testing.assert_allclose(
            out["grad"], out["irls"], rtol=1e-4 if dtype == jnp.float32 else 1e-10, atol=atol
        )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", list(KERNELS))
def test_derivatives_far_beyond_the_scale(name, dtype):
    """The small-argument series of Cauchy, Welsch, Fair and Arctan overflowed in float32 at
    |r| = 1e12 c, and inf * 0 in the unused branch made the gradient NaN; DCS's ratio did at
    1e5 c. The IRLS identity holds up to |r| = 1e6 c in float32 (beyond ~4e9 c, (s/c²)²
    overflows in the kernels' derivatives) and 1e12 c in float64."""
    loss = _make(name)
    cost = lambda r: 0.5 * jnp.sum(loss.apply(r) ** 2)
    grad, jac = jax.jit(jax.grad(cost)), jax.jit(jax.jacfwd(loss.apply))
    for m in (1e6, 1e12):
        r = jnp.asarray([3.0 * m, -4.0 * m, 0.0], dtype) * SCALE
        g = grad(r)
        assert np.all(np.isfinite(g)) and np.all(np.isfinite(jac(r))), m
        if dtype == jnp.float32 and m > 1e6:
            continue
        s = jnp.sum(r * r)
        term = float(loss.rho(s) / jnp.sqrt(s))  # autodiff's terms are this large
        np.testing.assert_allclose(g, loss.weight(s) * r, rtol=1e-4,
                                   atol=50 * float(jnp.finfo(dtype).eps) * term)


def test_sqrt_robustification_jacobian_structure():
    """The documented square-root Jacobian: d r'/d r = sqrt(rho/s) (I - n n^T)
    + rho' sqrt(s/rho) n n^T (not Triggs' sqrt(rho') (I - alpha n n^T))."""
    rng = np.random.default_rng(5)
    n_dir = rng.normal(size=3)
    n_dir /= np.linalg.norm(n_dir)
    norms = np.asarray([0.2, 0.9, 1.5, 2.5, 6.0]) * SCALE  # inside and beyond the cutoffs
    r = norms[:, None] * n_dir

    @jax.jit
    def jacobians(r):
        return {k: jax.vmap(jax.jacfwd(_make(k).apply))(r) for k in KERNELS}

    out = jacobians(r)
    proj = np.outer(n_dir, n_dir)
    for name, jac in out.items():
        loss = _make(name)
        s = jnp.asarray(norms**2)
        rho, w = np.asarray(loss.rho(s)), np.asarray(loss.weight(s))
        along = w * np.sqrt(norms**2 / rho)
        across = np.sqrt(rho / norms**2)
        expected = across[:, None, None] * (np.eye(3) - proj) + along[:, None, None] * proj
        np.testing.assert_allclose(jac, expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    "name",
    ["Tukey", "Welsch", "GemanMcClure", "Arctan", "DCS", "TruncatedLS", "GNCTruncatedLS"],
)
def test_bounded_kernels_saturate(name, dtype):
    c = SCALE
    loss = _make(name)
    eps = float(jnp.finfo(dtype).eps)
    sup = {"Tukey": c * c / 3, "Arctan": np.pi / 2 * c * c, "DCS": 3 * c * c}.get(name, c * c)
    # every row is beyond the cutoff of the truncating kernels (GNC-TLS: s >= 3 c^2 at mu=1/2)
    r = jnp.asarray([[2.0 * c, 0.0], [30.0 * c, -40.0 * c], [1e4 * c, 0.0]], dtype)

    @jax.jit
    def evaluate(r):
        s = jnp.sum(r * r, axis=-1)
        e = jnp.asarray(c, dtype)
        return dict(
            rho=loss.rho(s),
            weight=loss.weight(s),
            norm_rp=jnp.linalg.norm(loss.apply(r), axis=-1),
            grad=jax.vmap(jax.grad(lambda ri: 0.5 * jnp.sum(loss.apply(ri) ** 2)))(r),
            jac=jax.vmap(jax.jacfwd(loss.apply))(r),
            below=loss.rho(jnp.square(e * (1 - 1e-3))),
            scalar_jac=jax.jacfwd(lambda t: loss.apply(t, block_ndim=0))(3.0 * e[None]),
        )

    out = evaluate(r)
    assert np.all(out["rho"] <= sup * (1 + 1e-6))
    assert np.all(np.isfinite(out["jac"])) and np.all(np.isfinite(out["grad"]))
    np.testing.assert_allclose(out["norm_rp"], jnp.sqrt(out["rho"]), rtol=1e-5)
    if name in ("Tukey", "TruncatedLS", "GNCTruncatedLS"):
        # constant beyond the cutoff: rho = sup, zero weight, zero gradient of the cost
        np.testing.assert_allclose(out["rho"], sup, rtol=1e-6)
        np.testing.assert_array_equal(out["weight"], 0.0)
        np.testing.assert_allclose(out["grad"], 0.0, atol=100 * eps * c)
        if name == "Tukey":  # C^2 at the cutoff: rho(c^2 (1-d)^2) = c^2/3 (1 - O(d^3))
            assert abs(float(out["below"]) - sup) < 1e-7 * sup + 10 * eps * sup
        # a scalar residual beyond the cutoff has a zero Jacobian (it is ignored by GN)
        np.testing.assert_allclose(out["scalar_jac"], 0.0, atol=10 * eps)


@pytest.mark.parametrize("name", SCALED)
def test_grad_wrt_scale_fd(name, requires_x64, getkey):
    r = (
        jax.random.normal(getkey(), (6, 2), jnp.float64)
        * jnp.asarray([0.1, 0.5, 0.9, 1.6, 4.0, 20.0])[:, None]
    )
    s = jnp.sum(r * r, axis=-1)

    @jax.jit
    def f(c):
        rp = KERNELS[name](c).apply(r)
        # the robust cost, plus a term that exercises r' itself rather than only its norm
        return 0.5 * jnp.sum(rp * rp) + jnp.sum(jnp.sin(rp)) + jnp.sum(KERNELS[name](c).rho(s))

    cs = jnp.asarray([0.5, SCALE, 3.0])
    grads = jax.jit(jax.vmap(jax.grad(f)))(cs)
    eps = np.cbrt(np.finfo(np.float64).eps) * cs
    fd = (jax.vmap(f)(cs + eps) - jax.vmap(f)(cs - eps)) / (2 * eps)
    np.testing.assert_allclose(grads, fd, rtol=1e-7, atol=1e-9)


def test_scale_is_traced_leaf_and_dtype_follows_input():
    loss = Huber(1.5)
    leaves = jax.tree.leaves(loss)
    assert len(leaves) == 1 and eqx.is_array(leaves[0])
    assert loss.with_scale(2.0).scale == 2.0 and loss.scale == 1.5
    s32 = jnp.asarray([0.5, 9.0], jnp.float32)
    assert loss.rho(s32).dtype == jnp.float32
    assert loss.apply(jnp.ones((2, 3), jnp.float32)).dtype == jnp.float32
    # jit == eager, vmap over modules
    s = jnp.asarray([0.5, 9.0, 100.0])
    np.testing.assert_allclose(jax.jit(lambda m, x: m.rho(x))(loss, s), loss.rho(s))
    batch = jax.vmap(Cauchy)(jnp.asarray([1.0, 2.0]))
    out = jax.vmap(lambda m: m.rho(s))(batch)
    np.testing.assert_allclose(out[1], Cauchy(2.0).rho(s), rtol=1e-6)


def test_per_block_scales():
    """A scale per block (shape = the residual's batch shape) acts block by block."""
    rng = np.random.default_rng(4)
    r = rng.normal(size=(4, 3))
    scales = np.asarray([0.3, 1.0, 2.0, 5.0])
    for kernel in (Cauchy, Tukey, GemanMcClure):
        out = jax.jit(lambda c, r, k=kernel: k(c).apply(r))(scales, r)
        ref = np.stack([np.asarray(kernel(c).apply(r[i])) for i, c in enumerate(scales)])
        np.testing.assert_allclose(out, ref, rtol=1e-6)
        cost = kernel(scales).cost(r)
        ref_cost = sum(float(kernel(c).cost(r[i])) for i, c in enumerate(scales))
        np.testing.assert_allclose(cost, ref_cost, rtol=1e-6)


@pytest.mark.parametrize("name", SCALED)
def test_nonpositive_scale_rejected(name):
    """A zero, negative or non-finite scale used to give NaN (Huber, Cauchy, Fair), all-zero
    residuals (a zero cost for any x) or silently act as |scale|; now it is an error."""
    for bad in (0.0, -SCALE, np.nan, np.inf, [SCALE, 0.0]):
        with pytest.raises(ValueError, match=r"scale must be positive and finite"):
            _make(name, jnp.asarray(bad))
    with pytest.raises(ValueError, match=r"scale must be positive"):
        _make(name).with_scale(0.0)
    with pytest.raises(ValueError, match=r"GNCTruncatedLS: mu must be positive"):
        GNCTruncatedLS(SCALE, 0.0)
    # traced scales cannot be checked and still work under jit / vmap
    s = jnp.asarray([0.5, 9.0])
    out = jax.jit(jax.vmap(lambda c: _make(name, c).rho(s)))(jnp.asarray([SCALE, 2 * SCALE]))
    np.testing.assert_allclose(out[1], _ref_rho(name, np.asarray(s), 2 * SCALE), rtol=1e-5)


def test_batched_scale_must_not_enlarge_residual():
    """A scale of shape (n, 1) for n blocks used to broadcast r' to (n, n, d) without a word
    (with numpy's default rank promotion): n^2 blocks, and a different optimum."""
    r = jnp.asarray(np.random.default_rng(6).normal(size=(5, 2)))
    with jax.numpy_rank_promotion("allow"):
        for shape, block_ndim in (((5, 1), 1), ((3,), 1), ((5, 2, 1), 0)):
            with pytest.raises(ValueError, match=r"Cauchy: scale has shape"):
                Cauchy(jnp.full(shape, SCALE)).apply(r, block_ndim=block_ndim)
        # shapes that broadcast to the blocks keep r's shape: one scale per column of scalars
        cols = np.asarray([0.5, 2.0])
        out = Cauchy(jnp.asarray(cols)).apply(r, block_ndim=0)
    assert out.shape == r.shape
    s = np.asarray(r) ** 2
    np.testing.assert_allclose(np.asarray(out) ** 2, _ref_rho("Cauchy", s, cols), rtol=1e-6)


def test_apply_errors():
    with pytest.raises(ValueError, match="block_ndim=2"):
        Huber().apply(jnp.ones(3), block_ndim=2)
    with pytest.raises(TypeError, match="floating"):
        Huber().apply(jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match="scaled robust kernel"):
        gnc_solve(lambda x, p: x, jnp.zeros(2), None, loss=L2())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Huber", "SoftL1", "Cauchy", "Arctan"])
def test_robustify_matches_scipy_loss(name, requires_x64):
    """scipy.optimize.least_squares(loss=...) uses the same rho convention: minimizing our
    robustified residual with a plain loss must land on scipy's robust solution."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    x, y, _ = _line_data(np.float64)
    c = 0.1
    loss = KERNELS[name](c)
    scipy_name = {"Huber": "huber", "SoftL1": "soft_l1", "Cauchy": "cauchy",
                  "Arctan": "arctan"}[name]

    def raw(th):
        return th[0] * x + th[1] - y

    robust_fn = jax.jit(lambda th: loss.apply(raw(th), block_ndim=0))
    jac = jax.jit(jax.jacfwd(lambda th: loss.apply(raw(th), block_ndim=0)))
    kw = dict(xtol=1e-14, ftol=1e-14, gtol=1e-14)
    ours = scipy_opt.least_squares(
        lambda t: np.asarray(robust_fn(jnp.asarray(t))),
        np.zeros(2),
        jac=lambda t: np.asarray(jac(jnp.asarray(t))),
        **kw,
    )
    ref = scipy_opt.least_squares(raw, np.zeros(2), loss=scipy_name, f_scale=c, **kw)
    np.testing.assert_allclose(ours.x, ref.x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.cost, ref.cost, rtol=1e-8)


# --------------------------------------------------------------------------------------
# robust line fitting through jaxnlls.solve, and graduated non-convexity

TRUE_LINE = np.array([2.0, -1.0])


def _line_data(dtype, seed=0):
    """100 points on y = 2x - 1 with sigma 0.05 noise; 20% gross one-sided outliers."""
    rng = np.random.default_rng(seed)
    n = 100
    x = np.linspace(-1.0, 1.0, n)
    y = TRUE_LINE[0] * x + TRUE_LINE[1] + 0.05 * rng.normal(size=n)
    out = rng.choice(n, n // 5, replace=False)
    y[out] += rng.uniform(2.0, 8.0, size=out.size)
    return x.astype(dtype), y.astype(dtype), out


def _line_residual(theta, data):
    x, y = data
    return theta[0] * x + theta[1] - y


def _lm(dtype):
    # float32 cannot meet the float64 default tolerances; loosen them to its precision
    if dtype == jnp.float32:
        return jaxnlls.LevenbergMarquardt(rtol=1e-5, atol=1e-6)
    return jaxnlls.LevenbergMarquardt(rtol=1e-10, atol=1e-12)


def _robust_line_fit(loss, theta0, data):
    def residual_fn(theta, args):
        data, loss = args
        return loss.apply(_line_residual(theta, data), block_ndim=0)

    return jaxnlls.solve(
        residual_fn, theta0, (data, loss), solver=_lm(theta0.dtype), max_steps=200, throw=False
    )


@pytest.fixture
def line_problem(x64):
    dtype = np.float64 if x64 else np.float32
    x, y, _ = _line_data(dtype)
    return (jnp.asarray(x), jnp.asarray(y)), jnp.dtype(dtype)


def _err(theta):
    return np.linalg.norm(np.asarray(theta, np.float64) - TRUE_LINE, axis=-1)


def test_robust_line_fit_beats_l2(line_problem):
    data, dtype = line_problem
    theta0 = jnp.zeros(2, dtype)
    c = jnp.asarray(0.1, dtype)
    l2 = _robust_line_fit(L2(), theta0, data)
    assert int(l2.result) == jaxnlls.RESULTS.successful
    err_l2 = _err(l2.value)
    assert err_l2 > 0.5  # one-sided outliers drag the L2 intercept by ~1
    for loss in (Huber(c), Cauchy(c)):
        rob = _robust_line_fit(loss, theta0, data)
        assert int(rob.result) == jaxnlls.RESULTS.successful
        assert rob.value.dtype == dtype
        err_rob = _err(rob.value)
        assert err_rob < 0.05 and err_rob < err_l2 / 20, (type(loss).__name__, err_rob)


def test_gnc_geman_mcclure_from_bad_starts(line_problem):
    """Plain GM (LM from the start) lands in spurious minima from these starts; GNC-GM
    recovers the line from all of them, and ends where plain GM goes from a good start."""
    data, dtype = line_problem
    loss = GemanMcClure(jnp.asarray(0.15, dtype))
    bad = jnp.asarray([[-5.0, 10.0], [10.0, -10.0], [0.0, 5.0], [20.0, 20.0]], dtype)
    starts = jnp.concatenate([bad, jnp.asarray([TRUE_LINE], dtype)])

    plain = jax.vmap(lambda t0: _robust_line_fit(loss, t0, data))(starts)
    err_plain = _err(plain.value)
    assert np.all(err_plain[:-1] > 1.0), err_plain
    good = plain.value[-1]
    assert err_plain[-1] < 0.01

    gnc = jax.vmap(
        lambda t0: gnc_solve(
            _line_residual,
            t0,
            data,
            loss=loss,
            num_stages=8,
            block_ndim=0,
            solver=_lm(dtype),
            max_steps=200,
            throw=False,
        )
    )(bad)
    np.testing.assert_array_equal(gnc.result, jaxnlls.RESULTS.successful)
    assert np.all(_err(gnc.value) < 0.01), _err(gnc.value)
    np.testing.assert_allclose(
        gnc.value, jnp.broadcast_to(good, gnc.value.shape), rtol=1e-3, atol=1e-4
    )


@pytest.mark.parametrize(
    "name",
    [
        "TruncatedLS",
        pytest.param("Tukey", marks=pytest.mark.slow),
        pytest.param("Welsch", marks=pytest.mark.slow),
    ],
)
def test_gnc_other_kernels_from_bad_starts(name, line_problem):
    """GNC-TLS (mu increasing through GNCTruncatedLS, then TLS) and scale continuation for
    Tukey/Welsch recover the line from starts where every residual is beyond the cutoff."""
    data, dtype = line_problem
    loss = KERNELS[name](jnp.asarray(0.15 if name != "Tukey" else 0.25, dtype))
    bad = jnp.asarray([[-5.0, 10.0], [10.0, -10.0], [20.0, 20.0]], dtype)
    if name == "TruncatedLS":
        # plain TLS from there fits whichever few points lie near the starting line
        plain = jax.vmap(lambda t0: _robust_line_fit(loss, t0, data))(bad)
        assert np.all(_err(plain.value) > 1.0), _err(plain.value)
    gnc = jax.vmap(
        lambda t0: gnc_solve(
            _line_residual,
            t0,
            data,
            loss=loss,
            num_stages=8,
            block_ndim=0,
            solver=_lm(dtype),
            max_steps=200,
            throw=False,
        )
    )(bad)
    np.testing.assert_array_equal(gnc.result, jaxnlls.RESULTS.successful)
    assert np.all(_err(gnc.value) < 0.01), _err(gnc.value)
    # the TLS solution is the L2 fit of the points within the threshold
    if name == "TruncatedLS":
        x, y = (np.asarray(a, np.float64) for a in data)
        theta = np.asarray(gnc.value[0], np.float64)
        inl = np.abs(theta[0] * x + theta[1] - y) < 0.15
        ref = np.linalg.lstsq(np.stack([x[inl], np.ones(inl.sum())], 1), y[inl], rcond=None)[0]
        tol = 1e-9 if dtype == jnp.float64 else 1e-4
        np.testing.assert_allclose(gnc.value, np.broadcast_to(ref, (3, 2)), rtol=tol, atol=tol)


@pytest.mark.slow
def test_gnc_grad_is_final_stage_implicit_grad(requires_x64):
    """Gradients through gnc_solve (implicit, final stage) match central finite differences."""
    x, y, out = _line_data(np.float64)
    xs = jnp.asarray(x)
    bad = jnp.asarray([-5.0, 10.0])
    weights_out = jnp.asarray([1.0, 2.0])

    @jax.jit
    def via_gnc(yy, c):
        sol = gnc_solve(
            _line_residual,
            bad,
            (xs, yy),
            loss=GemanMcClure(c),
            num_stages=6,
            block_ndim=0,
            solver=_lm(jnp.float64),
            max_steps=200,
            throw=False,
        )
        return jnp.sum(sol.value * weights_out), sol.result

    def f(yy, c):
        return via_gnc(yy, c)[0]

    yy, c = jnp.asarray(y), jnp.asarray(0.15)
    assert int(via_gnc(yy, c)[1]) == jaxnlls.RESULTS.successful
    g_y, g_c = jax.jit(jax.grad(f, argnums=(0, 1)))(yy, c)
    eps = 1e-6
    fd_c = (f(yy, c + eps) - f(yy, c - eps)) / (2 * eps)
    np.testing.assert_allclose(g_c, fd_c, rtol=1e-5, atol=1e-8)
    inlier = int(np.setdiff1d(np.arange(x.size), out)[3])
    for i in (inlier, int(out[0])):  # an inlier and an outlier
        e = jnp.zeros(x.size).at[i].set(eps)
        fd = (f(yy + e, c) - f(yy - e, c)) / (2 * eps)
        np.testing.assert_allclose(g_y[i], fd, rtol=1e-5, atol=1e-8)


def test_gnc_schedule():
    mus = gnc_schedule(jnp.asarray(1000.0), 4)
    np.testing.assert_allclose(mus, [1000.0, 100.0, 10.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(gnc_schedule(50.0, 1), [1.0])
    with pytest.raises(ValueError, match="num_stages"):
        gnc_schedule(10.0, 0)


# --------------------------------------------------------------------------------------
# weights


def _spd(rng, batch, d, dtype):
    a = rng.normal(size=batch + (d, d))
    return (a @ np.swapaxes(a, -1, -2) + d * np.eye(d)).astype(dtype)


def _quad(r, info):
    """r^T Info r per block, in float64 numpy (the independent reference)."""
    r = np.asarray(r, np.float64)
    return np.einsum("...i,...ij,...j->...", r, np.asarray(info, np.float64), r)


@pytest.mark.parametrize("dtype", FLOATS)
def test_weights_match_quadratic_form(dtype):
    rng = np.random.default_rng(1)
    n, d = 5, 3
    r = rng.normal(size=(n, d)).astype(dtype)
    w = np.asarray(0.7, dtype)
    ws = rng.uniform(0.5, 2.0, size=n).astype(dtype)  # one scalar per block
    wd = rng.uniform(0.5, 2.0, size=d).astype(dtype)  # one diagonal shared by all blocks
    info = _spd(rng, (n,), d, dtype)  # one information per block
    cov = _spd(rng, (), d, dtype)  # one covariance shared by all blocks
    rtol = 1e-12 if dtype == jnp.float64 else 1e-5

    @jax.jit
    def evaluate(r, w, ws, wd, info, cov):
        out = dict(
            scalar=weights.whiten_scalar(r, w),
            scalar_b=weights.whiten(r, weights.ScalarWeight(ws)),
            scalar_info=weights.ScalarWeight(ws).information(d),
            diag=weights.whiten(r, weights.DiagonalWeight(wd)),
            diag_info=weights.DiagonalWeight(wd).information(d),
            diag_as_full=weights.whiten_sqrt_info(r, jnp.diag(wd)),
            scalar_as_diag=weights.whiten_diagonal(r, jnp.broadcast_to(ws[:, None], (n, d))),
            per_residual=weights.whiten_diagonal(r[:, 0], ws),
            cov_upper=weights.sqrt_info_from_covariance(cov),
            cov_lower=weights.sqrt_info_from_covariance(cov, triangle="lower"),
        )
        for tri in ("upper", "lower"):
            R = weights.sqrt_info_from_information(info, triangle=tri)
            out[f"R_{tri}"] = R
            out[f"full_{tri}"] = weights.whiten(r, weights.SqrtInfoWeight(R))
            out[f"full_info_{tri}"] = weights.SqrtInfoWeight(R).information(d)
            fw = weights.SqrtInfoWeight.from_covariance(cov, triangle=tri)
            out[f"from_cov_{tri}"] = fw.whiten(r)
        out["from_inv_cov"] = weights.sqrt_info_from_information(jnp.linalg.inv(cov))
        return out

    out = evaluate(r, w, ws, wd, info, cov)
    sq = lambda a: np.sum(np.asarray(a, np.float64) ** 2, axis=-1)  # noqa: E731
    eye = np.eye(d)
    np.testing.assert_allclose(sq(out["scalar"]), _quad(r, float(w) ** 2 * eye), rtol=rtol)
    info_s = ws.astype(np.float64)[:, None, None] ** 2 * eye
    np.testing.assert_allclose(sq(out["scalar_b"]), _quad(r, info_s), rtol=rtol)
    np.testing.assert_allclose(out["scalar_info"], info_s, rtol=rtol)
    np.testing.assert_allclose(
        sq(out["diag"]), _quad(r, np.diag(wd.astype(np.float64) ** 2)), rtol=rtol
    )
    np.testing.assert_allclose(out["diag_info"], np.diag(wd.astype(np.float64) ** 2), rtol=rtol)
    np.testing.assert_allclose(out["diag_as_full"], out["diag"], rtol=rtol)
    np.testing.assert_allclose(out["scalar_as_diag"], out["scalar_b"], rtol=rtol)
    # per-residual weights on scalar residuals are the diagonal case
    np.testing.assert_allclose(
        sq(out["per_residual"]), np.sum((ws.astype(np.float64) * r[:, 0]) ** 2), rtol=rtol
    )
    for tri in ("upper", "lower"):
        R = np.asarray(out[f"R_{tri}"])
        off = np.tril(R, -1) if tri == "upper" else np.triu(R, 1)
        np.testing.assert_array_equal(off, 0.0)
        assert np.all(np.diagonal(R, axis1=-2, axis2=-1) > 0)
        np.testing.assert_allclose(sq(out[f"full_{tri}"]), _quad(r, info), rtol=10 * rtol)
        np.testing.assert_allclose(out[f"full_info_{tri}"], info, rtol=10 * rtol, atol=10 * rtol)
        info_cov = np.linalg.inv(np.asarray(cov, np.float64))
        np.testing.assert_allclose(sq(out[f"from_cov_{tri}"]), _quad(r, info_cov), rtol=100 * rtol)
    np.testing.assert_allclose(
        out["cov_upper"], out["from_inv_cov"], rtol=100 * rtol, atol=100 * rtol
    )
    # lower from covariance is C^{-1} with cov = C C^T
    C = np.linalg.cholesky(np.asarray(cov, np.float64))
    np.testing.assert_allclose(np.asarray(out["cov_lower"], np.float64) @ C, eye, atol=100 * rtol)


def test_weights_batched_broadcasting():
    rng = np.random.default_rng(2)
    r = rng.normal(size=(2, 4, 3))
    R = rng.normal(size=(4, 3, 3))  # broadcast over the leading 2
    ref = np.einsum("jkl,ijl->ijk", R, r)
    out = jax.jit(weights.whiten_sqrt_info)(r, R)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    out = jax.jit(jax.vmap(weights.whiten_sqrt_info, in_axes=(0, None)))(r, R)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_weights_differentiable(requires_x64):
    rng = np.random.default_rng(3)
    d = 3
    r = rng.normal(size=(4, d))
    cov = _spd(rng, (), d, np.float64)
    direction = _spd(rng, (), d, np.float64)
    wd = np.asarray([0.5, 1.0, 2.0])

    def f_cov(t, tri):
        w = weights.SqrtInfoWeight.from_covariance(cov + t * direction, triangle=tri)
        return 0.5 * jnp.sum(w.whiten(r) ** 2)

    def f_info(t, tri):
        R = weights.sqrt_info_from_information(cov + t * direction, triangle=tri)
        return 0.5 * jnp.sum(weights.whiten_sqrt_info(r, R) ** 2)

    @jax.jit
    def grads():
        return dict(
            **{f"cov_{tri}": jax.grad(f_cov)(0.0, tri) for tri in ("upper", "lower")},
            **{f"info_{tri}": jax.grad(f_info)(0.0, tri) for tri in ("upper", "lower")},
            diag=jax.grad(lambda w: 0.5 * jnp.sum(weights.whiten_diagonal(r, w) ** 2))(wd),
            scalar=jax.grad(lambda w: 0.5 * jnp.sum(weights.whiten_scalar(r, w) ** 2))(1.5),
        )

    g = grads()
    # d/dt 1/2 r^T (cov + t D)^{-1} r = -1/2 r^T cov^{-1} D cov^{-1} r, and the information
    # path is linear in t
    ci = np.linalg.inv(cov)
    expected_cov = -0.5 * np.sum(_quad(r, ci @ direction @ ci))
    for tri in ("upper", "lower"):
        np.testing.assert_allclose(g[f"cov_{tri}"], expected_cov, rtol=1e-9)
        np.testing.assert_allclose(g[f"info_{tri}"], 0.5 * np.sum(_quad(r, direction)), rtol=1e-9)
    np.testing.assert_allclose(g["diag"], wd * np.sum(r * r, axis=0), rtol=1e-12)
    np.testing.assert_allclose(g["scalar"], 1.5 * np.sum(r * r), rtol=1e-12)


def test_weights_shape_errors():
    with pytest.raises(
        ValueError,
        match=r"sqrt_info has shape \(3, 2\); expected \(3, 3\) "
        r"for a residual of size 3",
    ):
        weights.whiten_sqrt_info(jnp.ones(3), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"sqrt_info has shape \(2,\); expected \(\.\.\., 3\)"):
        weights.whiten_diagonal(jnp.ones((5, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match=r"sqrt_info has batch shape \(4,\)"):
        weights.whiten_sqrt_info(jnp.ones((5, 3)), jnp.ones((4, 3, 3)))
    with pytest.raises(ValueError, match=r"sqrt_info has batch shape \(3,\)"):
        weights.whiten_scalar(jnp.ones((5, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="residual r has shape"):
        weights.whiten_scalar(jnp.asarray(1.0), 2.0)
    with pytest.raises(ValueError, match=r"information has shape \(3, 2\)"):
        weights.sqrt_info_from_information(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"covariance has shape \(3,\)"):
        weights.sqrt_info_from_covariance(jnp.ones(3))
    with pytest.raises(ValueError, match="triangle"):
        weights.sqrt_info_from_information(jnp.eye(2), triangle="left")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"SqrtInfoWeight: sqrt_info has shape \(2, 3\)"):
        weights.SqrtInfoWeight(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="DiagonalWeight"):
        weights.DiagonalWeight(jnp.asarray(1.0))
    with pytest.raises(TypeError, match="weight must be"):
        weights.whiten(jnp.ones(3), jnp.eye(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating"):
        weights.whiten_scalar(jnp.ones(3, jnp.int32), 1.0)


def test_weights_bad_values_rejected():
    """sigma = 0 used to give sqrt_info = inf (whitened residuals inf, or NaN where r = 0), a
    negative sigma a silently sign-flipped weight, and a non-SPD covariance a NaN square root;
    concrete bad values now raise. Zero sqrt_info is allowed: zero information."""
    for cls, sigma in ((weights.ScalarWeight, 0.0), (weights.DiagonalWeight, [1.0, 0.0])):
        for bad in (sigma, -1.0 * np.asarray(sigma) - 1.0, np.nan):
            with pytest.raises(ValueError, match=r"from_sigma: sigma must be positive and finite"):
                cls.from_sigma(jnp.asarray(bad))
    with pytest.raises(ValueError, match="ScalarWeight: sqrt_info has non-finite"):
        weights.ScalarWeight(jnp.asarray([1.0, np.inf]))
    with pytest.raises(ValueError, match="SqrtInfoWeight: sqrt_info has non-finite"):
        weights.SqrtInfoWeight(jnp.asarray([[1.0, np.nan], [0.0, 1.0]]))
    not_spd = jnp.asarray([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    for tri in ("upper", "lower"):
        with pytest.raises(ValueError, match="covariance is not positive definite"):
            weights.sqrt_info_from_covariance(not_spd, triangle=tri)
        with pytest.raises(ValueError, match="information is not positive definite"):
            weights.SqrtInfoWeight.from_information(not_spd, triangle=tri)
    # zero information ignores a block: its whitened residual and cost are exactly zero
    r = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    out = weights.whiten(r, weights.ScalarWeight(jnp.asarray([0.0, 2.0])))
    np.testing.assert_array_equal(out, [[0.0, 0.0], [6.0, 8.0]])
    # traced values are not checked (and positive ones work under jit)
    w = jax.jit(lambda s: weights.ScalarWeight.from_sigma(s).whiten(r))(jnp.asarray(0.5))
    np.testing.assert_allclose(w, 2 * r)


def test_robust_module_exports():
    for name in robust.__all__:
        assert hasattr(robust, name), name
    for name in weights.__all__:
        assert hasattr(weights, name), name


@pytest.mark.parametrize("tri", ["upper", "lower"])
def test_sqrt_info_from_information_reads_only_the_lower_triangle(tri, tol):
    """jnp.linalg.cholesky averages with the transpose; the documented contract is the lower
    triangle only, so garbage in the strict upper triangle must change nothing."""
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    rng = np.random.default_rng(7)
    info = _spd(rng, (3,), 4, dtype)
    garbage = np.tril(info) + np.triu(rng.normal(size=info.shape).astype(dtype) * 50, 1)
    R = weights.sqrt_info_from_information(info, triangle=tri)
    R_g = weights.sqrt_info_from_information(garbage, triangle=tri)
    np.testing.assert_allclose(R_g, R, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(
        np.swapaxes(R_g, -1, -2) @ R_g, info, rtol=10 * tol.rtol, atol=10 * tol.rtol
    )
    lower_only = weights.sqrt_info_from_information(np.tril(info), triangle=tri)
    np.testing.assert_allclose(lower_only, R, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("tri", ["upper", "lower"])
def test_sqrt_info_from_information_grad_wrt_lower_triangle(tri, requires_x64):
    rng = np.random.default_rng(8)
    d = 3
    info = _spd(rng, (), d, np.float64)
    rows, cols = np.tril_indices(d)
    upper_garbage = np.triu(rng.normal(size=(d, d)), 1)
    weight = rng.normal(size=(d, d))

    def f(v):  # a scalar function of R, through the lower-triangle entries only
        a = jnp.zeros((d, d)).at[rows, cols].set(v) + upper_garbage
        R = weights.sqrt_info_from_information(a, triangle=tri)
        return jnp.sum(weight * R) + jnp.sum(R**2 * weight**2)

    v0 = info[rows, cols]
    g = jax.grad(f)(v0)
    h = 1e-6
    fd = np.array([(f(v0 + h * e) - f(v0 - h * e)) / (2 * h) for e in np.eye(v0.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-8)
    # the strict upper triangle gets no cotangent
    g_full = jax.grad(
        lambda a: jnp.sum(weight * weights.sqrt_info_from_information(a, triangle=tri))
    )(jnp.asarray(info))
    np.testing.assert_array_equal(np.triu(np.asarray(g_full), 1), 0.0)


@pytest.mark.parametrize(
    "name",
    [
        "GemanMcClure",
        "TruncatedLS",
        pytest.param("Tukey", marks=pytest.mark.slow),
        pytest.param("Welsch", marks=pytest.mark.slow),
    ],
)
def test_gnc_per_block_scale_with_one_loose_block(name, x64):
    """mu_0 must come from max_b s_b / c_b^2: taking max_b s_b / max_b c_b^2 let one inlier
    with a loose scale shrink mu_0 to 1 (no continuation), and GNC returned a spurious
    minimum marked successful."""
    dtype = np.float64 if x64 else np.float32
    rng = np.random.default_rng(1)
    n = 60
    x = rng.uniform(-5, 5, n)
    y = 1.5 * x - 2.0 + 0.1 * rng.standard_normal(n)
    out = rng.random(n) < 0.4
    out[0] = False
    y[out] = rng.uniform(-30, 30, out.sum())
    truth = np.polyfit(x[~out], y[~out], 1)
    data = (jnp.asarray(x, dtype), jnp.asarray(y, dtype))
    init = jnp.asarray([-3.0, 10.0] if name == "TruncatedLS" else [-1.5, 2.0], dtype)

    @jax.jit
    def fit(scales):
        return gnc_solve(
            _line_residual,
            init,
            data,
            loss=KERNELS[name](scales),
            num_stages=8,
            block_ndim=0,
            solver=_lm(dtype),
            max_steps=200,
            throw=False,
        )

    uniform = np.full(n, 0.3, dtype)
    loose = uniform.copy()
    loose[0] = 1000.0  # one inlier block given a loose scale
    for scales in (uniform, loose):
        sol = fit(jnp.asarray(scales))
        assert int(sol.result) == jaxnlls.RESULTS.successful
        err = np.abs(np.asarray(sol.value, np.float64) - truth).max()
        assert err < 0.05, (name, scales[0], np.asarray(sol.value), err)
