"""Solving on Lie groups with ``jaxnlls.solve``: registration, rotation averaging, implicit grads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64
from scipy.spatial.transform import Rotation

import jaxnlls
from jaxnlls.lie import SE3, SO3
from jaxnlls.testing import fd_grad

DTYPE = jnp.float64 if X64 else jnp.float32
TIGHT = dict(rtol=1e-12, atol=1e-12) if X64 else dict(rtol=1e-6, atol=1e-6)


def close(a, b, rtol, atol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _cloud(seed, n=30, noise=0.0):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, 3))
    t_true = SE3.exp(jnp.asarray(rng.normal(size=6) * np.array([1, 1, 1, 0.8, 0.8, 0.8])))
    dst = np.asarray(t_true @ jnp.asarray(src)) + noise * rng.normal(size=(n, 3))
    return jnp.asarray(src, DTYPE), jnp.asarray(dst, DTYPE), SE3(t_true.params.astype(DTYPE))


def _register_residual(T, data):
    src, dst = data
    return T @ src - dst


def _kabsch(src, dst):
    """Closed-form least-squares rigid alignment (Kabsch/Umeyama without scale)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((dst - cd).T @ (src - cs))
    s = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ s @ vt
    return r, cd - r @ cs


@pytest.mark.parametrize("solver", ["gn", "lm"])
def test_se3_registration_recovers_transform(solver):
    src, dst, t_true = _cloud(0)
    s = jaxnlls.GaussNewton(**TIGHT) if solver == "gn" else jaxnlls.LevenbergMarquardt(**TIGHT)
    init = SE3.identity(dtype=DTYPE)
    sol = jaxnlls.solve(_register_residual, init, (src, dst), solver=s, max_steps=50)
    assert sol.result == jaxnlls.RESULTS.successful
    tol = 1e-9 if X64 else 2e-4
    close(t_true.local(sol.value), np.zeros(6), rtol=tol, atol=tol)
    close(sol.value.as_matrix(), t_true.as_matrix(), rtol=tol, atol=tol)


def test_se3_registration_noisy_matches_kabsch():
    src, dst, _ = _cloud(1, n=40, noise=0.05)
    sol = jaxnlls.solve(
        _register_residual, SE3.identity(dtype=DTYPE), (src, dst),
        solver=jaxnlls.LevenbergMarquardt(**TIGHT), max_steps=100,
    )
    r, t = _kabsch(src, dst)
    tol = 1e-8 if X64 else 2e-4
    close(sol.value.rotation().as_matrix(), r, rtol=tol, atol=tol)
    close(sol.value.translation(), t, rtol=tol, atol=tol)


def _measurements(seed, n=12, spread=0.4):
    rng = np.random.default_rng(seed)
    center = SO3.exp(jnp.asarray(rng.normal(size=3), DTYPE))
    noise = SO3.exp(jnp.asarray(spread * rng.normal(size=(n, 3)), DTYPE))
    return center @ noise


def _chordal_residual(R, meas):
    return R.as_matrix() - meas.as_matrix()  # broadcast (3, 3) against (n, 3, 3)


def _geodesic(R, meas):
    return (SO3(jnp.broadcast_to(R.params, meas.params.shape)).inverse() @ meas).log()


def test_rotation_averaging_chordal_matches_scipy_mean():
    meas = _measurements(2)
    sol = jaxnlls.solve(
        lambda R, m: _chordal_residual(SO3(jnp.broadcast_to(R.params, m.params.shape)), m),
        SO3.identity(dtype=DTYPE), meas, solver=jaxnlls.LevenbergMarquardt(**TIGHT),
    )
    ref = Rotation.from_quat(np.asarray(meas.as_quaternion_xyzw())).mean()  # chordal L2 mean
    tol = 1e-9 if X64 else 2e-5
    close(sol.value.as_matrix(), ref.as_matrix(), rtol=tol, atol=tol)


def test_rotation_averaging_geodesic_is_karcher_mean():
    meas = _measurements(3)
    sol = jaxnlls.solve(
        _geodesic, SO3.identity(dtype=DTYPE), meas, solver=jaxnlls.LevenbergMarquardt(**TIGHT)
    )
    # Karcher-mean optimality: the mean of Log(R⁻¹ R_i) vanishes ...
    tol = 1e-9 if X64 else 2e-5
    close(jnp.mean(_geodesic(sol.value, meas), axis=0), np.zeros(3), rtol=tol, atol=tol)
    # ... and a brute-force fixed-point iteration R ← R · Exp(mean Log(R⁻¹ R_i)) agrees.
    R = SO3(meas.params[0])
    for _ in range(100):
        R = R.retract(jnp.mean(_geodesic(R, meas), axis=0))
    close(sol.value.as_matrix(), R.as_matrix(), rtol=tol, atol=tol)
    # and it is close to (not equal to) the chordal mean for moderate spread
    ref = Rotation.from_quat(np.asarray(meas.as_quaternion_xyzw())).mean()
    close(sol.value.as_matrix(), ref.as_matrix(), rtol=0, atol=5e-2)


# ---- implicit gradients through the solution, in the tangent space of a reference x0 --------


def test_implicit_grad_registration_matches_fd(requires_x64):
    src, dst, t_true = _cloud(4, n=20, noise=0.05)
    x0 = t_true
    w = jnp.asarray(np.random.default_rng(5).normal(size=6), DTYPE)
    solver = jaxnlls.LevenbergMarquardt(rtol=1e-13, atol=1e-13)

    @jax.jit
    def loss(dst_):
        sol = jaxnlls.solve(
            _register_residual, SE3.identity(dtype=DTYPE), (src, dst_), solver=solver,
            adjoint=jaxnlls.ImplicitAdjoint(), max_steps=100,
        )
        return jnp.dot(w, x0.local(sol.value)) + 0.5 * jnp.sum(x0.local(sol.value) ** 2)

    g = jax.grad(loss)(dst)
    assert np.all(np.isfinite(np.asarray(g)))
    rng = np.random.default_rng(6)
    for _ in range(3):
        v = jnp.asarray(rng.normal(size=dst.shape), DTYPE)
        fd = fd_grad(loss, dst, direction=v, eps=1e-5)
        close(jnp.vdot(g, v), fd, rtol=1e-6, atol=1e-8)


def test_implicit_grad_rotation_averaging_matches_fd(requires_x64):
    """Gradient w.r.t. tangent perturbations of the measurements (data on the manifold)."""
    meas = _measurements(7, n=8)
    x0 = SO3(meas.params[0])
    w = jnp.asarray([0.3, -1.0, 0.5], DTYPE)
    solver = jaxnlls.LevenbergMarquardt(rtol=1e-13, atol=1e-13)

    @jax.jit
    def loss(delta):
        m = meas.retract(delta)
        sol = jaxnlls.solve(_geodesic, SO3.identity(dtype=DTYPE), m, solver=solver,
                            adjoint=jaxnlls.ImplicitAdjoint())
        return jnp.dot(w, x0.local(sol.value))

    delta = jnp.zeros((8, 3), DTYPE)
    g = jax.grad(loss)(delta)
    # the geodesic mean moves by ≈ (1/n) of each measurement's perturbation
    rng = np.random.default_rng(8)
    for _ in range(3):
        v = jnp.asarray(rng.normal(size=delta.shape), DTYPE)
        fd = fd_grad(loss, delta, direction=v, eps=1e-5)
        close(jnp.vdot(g, v), fd, rtol=1e-6, atol=1e-8)
