"""Lie groups: gradients (check_grads), numerics at 0 and π, converters vs SciPy, API, bad input."""

from __future__ import annotations



import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation, Slerp

from jaxnlls.lie import SE2, SE3, SO2, SO3, AbstractLieGroup, Sim3, interpolate
from jaxnlls.manifold import AbstractManifold, retract, tangent_size, tangent_zeros

GROUPS = [SO2, SE2, SO3, SE3, Sim3]
DTYPE = jnp.float64 if X64 else jnp.float32
TOL = dict(rtol=1e-10, atol=1e-10) if X64 else dict(rtol=1e-5, atol=1e-5)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

groups = pytest.mark.parametrize("G", GROUPS, ids=lambda g: g.__name__)
# Sim3's exp/log/Jacobians go through expm, whose derivatives compile slowly: slow marker.
groups_sim3_slow = pytest.mark.parametrize(
    "G",
    [SO2, SE2, SO3, SE3, pytest.param(Sim3, marks=pytest.mark.slow)],
    ids=lambda g: g.__name__,
)
# The test run's own dtype by default (CI runs x64 on and off); the other dtype under ``slow``.
OTHER = jnp.float32 if X64 else None
dtypes = pytest.mark.parametrize(
    "dtype",
    [DTYPE] + ([pytest.param(OTHER, marks=pytest.mark.slow)] if OTHER is not None else []),
    ids=lambda d: jnp.dtype(d).name,
)
# order 2 (forward-over-reverse etc.) compiles many transformed functions: slow marker.
orders = pytest.mark.parametrize("order", [1, pytest.param(2, marks=pytest.mark.slow)])


def close(a, b, **tol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **(tol or TOL))


def grad_tol(dtype):
    if dtype == jnp.float64:
        return dict(atol=1e-6, rtol=1e-6, eps=1e-5)
    return dict(atol=5e-2, rtol=5e-2, eps=1e-2)


# ---- gradients: check_grads in both modes, orders 1 and 2, generic points and exactly zero ----


@groups_sim3_slow
@dtypes
@orders
@pytest.mark.parametrize("where", ["zero", "generic"])
def test_check_grads_exp_log_act(G, dtype, order, where):
    """``jax.test_util.check_grads`` (fwd and rev) on exp, log and act at 0 and a generic point."""
    rng = np.random.default_rng(0)
    if where == "zero":
        d = jnp.zeros((G.tangent_dim,), dtype)
    else:
        d = jnp.asarray(0.7 * rng.normal(size=G.tangent_dim), dtype)
    x = G.exp(d)
    pts = jnp.asarray(rng.normal(size=(G.space_dim,)), dtype)
    tol = grad_tol(dtype)
    exp_p = jax.jit(lambda v: G.exp(v).params)
    log_p = jax.jit(lambda p: G(p).log())
    act_p = jax.jit(lambda p, q: G(p) @ q)
    check_grads(exp_p, (d,), order=order, modes=("fwd", "rev"), **tol)
    check_grads(log_p, (x.params,), order=order, modes=("fwd", "rev"), **tol)
    check_grads(act_p, (x.params, pts), order=order, modes=("fwd", "rev"), **tol)


@groups
def test_no_nan_at_identity_and_zero(G):
    """Values, gradients and Jacobians are finite at exactly zero / the identity."""
    z = jnp.zeros((G.tangent_dim,), DTYPE)
    e = G.identity(dtype=DTYPE)
    f = jax.jit(
        lambda v, p: (
            G.exp(v).params,
            G(p).log(),
            G.jac_right(v),
            G.jac_right_inv(v),
            jax.jacfwd(lambda w: G.exp(w).log())(v),
            jax.jacrev(lambda q: G(q).log())(p),
            jax.hessian(lambda w: jnp.sum(G.exp(w).params ** 2))(v),
        ),
        compiler_options=FAST_COMPILE,
    )
    out = f(z, e.params)
    for o in out:
        assert np.all(np.isfinite(np.asarray(o)))
    close(out[0], e.params)
    close(out[1], z)
    close(out[4], np.eye(G.tangent_dim))


@pytest.mark.parametrize("G", [SO3, SE3, Sim3], ids=lambda g: g.__name__)
def test_log_at_exactly_pi(G):
    """SO(3) log at exactly π (w = 0): right angle, finite value and gradient; both q signs."""
    axis = np.array([1.0, 2.0, -2.0]) / 3.0
    w = jnp.asarray(np.pi * axis, DTYPE)
    d = jnp.zeros((G.tangent_dim,), DTYPE)
    rot = slice(3, 6) if G is not SO3 else slice(0, 3)
    d = d.at[rot].set(w)
    x = G.exp(d)
    assert abs(float(x.params[0])) < 1e-6  # w == cos(π/2) ≈ 0
    logged = x.log()
    angle = np.linalg.norm(np.asarray(logged[rot]))
    close(angle, np.pi, rtol=1e-6, atol=1e-6)
    close(G.exp(logged).as_matrix(), x.as_matrix(), rtol=1e-6, atol=1e-6)
    # exactly w = 0 and its negation
    q = jnp.asarray(np.concatenate([[0.0], axis]), DTYPE)
    r1 = SO3(q).log()
    r2 = SO3(-q).log()
    close(jnp.abs(r1), np.pi * np.abs(axis), rtol=1e-6, atol=1e-6)
    close(jnp.abs(r2), np.pi * np.abs(axis), rtol=1e-6, atol=1e-6)
    g = jax.jacfwd(lambda p: SO3(p).log())(q)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.isfinite(np.asarray(G.jac_right_inv(d))))  # finite at θ = π (< 2π)


def test_exp_w_nonnegative_and_unit():
    rng = np.random.default_rng(1)
    d = jnp.asarray(rng.normal(size=(50, 3)) * 3.0, DTYPE)  # angles up to ~10 rad
    q = SO3.exp(d).params
    assert np.all(np.asarray(q[..., 0]) >= 0)
    close(jnp.linalg.norm(q, axis=-1), np.ones(50), rtol=1e-6, atol=1e-6)
    # retract renormalizes: many small steps do not drift off the unit sphere
    x = SO3.identity(dtype=DTYPE)
    step = jax.jit(lambda x, v: x.retract(v))
    for i in range(200):
        x = step(x, d[i % 50] * 0.01)
    close(jnp.linalg.norm(x.params), 1.0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32], ids=["f32"])
def test_float32_near_identity_precision(dtype):
    """float32 small-angle branches: exp/log accurate relative to the tangent size."""
    for scale in (1e-8, 1e-4, 1e-2, 0.2, 0.5):
        d = jnp.asarray(np.array([0.3, -0.5, 0.8, 0.1, 0.2, -0.4]) * scale, dtype)
        for G, v in ((SE3, d), (SO3, d[3:]), (SE2, d[:3])):
            out = G.exp(v).log()
            assert out.dtype == dtype
            close(out, v, rtol=2e-6, atol=1e-7 * scale + 1e-12)


# ---- converters vs SciPy --------------------------------------------------------------------


def test_quaternion_matrix_euler_vs_scipy():
    rng = np.random.default_rng(2)
    ref = Rotation.random(20, random_state=3)
    xyzw = ref.as_quat()  # scipy: (x, y, z, w)
    R = SO3.from_quaternion_xyzw(jnp.asarray(xyzw * 2.5, DTYPE))  # non-unit input is normalized
    close(R.as_matrix(), ref.as_matrix(), rtol=1e-6, atol=1e-6)
    q = np.asarray(R.as_quaternion_xyzw())
    close(np.abs(np.sum(q * xyzw, -1)), np.ones(20), rtol=1e-6, atol=1e-6)  # same up to sign
    close(SO3.from_quaternion_wxyz(R.as_quaternion_wxyz()).as_matrix(), ref.as_matrix(),
          rtol=1e-6, atol=1e-6)
    close(R.as_rotation_vector(), ref.as_rotvec(), rtol=1e-6, atol=1e-6)
    close(SO3.from_rotation_vector(ref.as_rotvec()).as_matrix(), ref.as_matrix(), rtol=1e-6,
          atol=1e-6)
    rpy = rng.uniform(-1.5, 1.5, size=(20, 3))
    R2 = SO3.from_rpy(rpy[:, 0], rpy[:, 1], rpy[:, 2])
    ref2 = Rotation.from_euler("xyz", rpy)  # extrinsic x-y-z == intrinsic Z-Y'-X''
    close(R2.as_matrix(), ref2.as_matrix(), rtol=1e-6, atol=1e-6)
    close(np.stack(R2.as_rpy(), -1), rpy, rtol=1e-6, atol=1e-6)
    close(SO3.from_z_radians(0.3).as_matrix(), Rotation.from_euler("z", 0.3).as_matrix(),
          rtol=1e-6, atol=1e-6)


def test_from_matrix_projects_like_svd():
    rng = np.random.default_rng(4)
    m = rng.normal(size=(10, 3, 3))
    u, _, vt = np.linalg.svd(m)
    det = np.linalg.det(u @ vt)
    ref = u @ np.diag([1.0, 1.0, 0.0]) @ vt + det[:, None, None] * (
        u[:, :, 2:] @ vt[:, 2:, :]
    )
    close(SO3.from_matrix(jnp.asarray(m, DTYPE)).as_matrix(), ref, rtol=1e-5, atol=1e-5)
    # noisy rotation matrices -> nearest rotation, also for SE3 / Sim3 blocks
    R = Rotation.random(5, random_state=5).as_matrix()
    noisy = R + 1e-3 * rng.normal(size=R.shape)
    uu, _, vv = np.linalg.svd(noisy)
    T = np.tile(np.eye(4), (5, 1, 1))
    T[:, :3, :3] = 2.0 * noisy
    T[:, :3, 3] = rng.normal(size=(5, 3))
    S = Sim3.from_matrix(jnp.asarray(T, DTYPE))
    close(S.rotation().as_matrix(), uu @ vv, rtol=1e-5, atol=1e-5)
    close(S.scale(), np.full(5, 2.0), rtol=1e-2, atol=1e-2)
    close(S.translation(), T[:, :3, 3])
    # derivative of from_matrix is finite at an exactly orthogonal input (SVD's is not)
    g = jax.jacfwd(lambda M: SO3.from_matrix(M).params)(jnp.asarray(R[0], DTYPE))
    assert np.all(np.isfinite(np.asarray(g)))
    m2 = rng.normal(size=(4, 2, 2))
    u2, _, v2 = np.linalg.svd(m2)
    d2 = np.linalg.det(u2 @ v2)
    ref2 = u2 @ np.einsum("bi,ij->bij", np.stack([np.ones(4), d2], -1), np.eye(2)) @ v2
    close(SO2.from_matrix(jnp.asarray(m2, DTYPE)).as_matrix(), ref2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("G", [SO3, SE3, Sim3], ids=lambda g: g.__name__)
def test_from_matrix_reverse_mode_at_exact_rotations(G):
    """Reverse-mode gradients of ``from_matrix`` are finite at exact rotations and equal forward
    mode. (``eigh``'s own derivative divides by the gaps between the three equal lower eigenvalues
    of the Davenport matrix there, and reverse mode gave 0 · inf = NaN.)"""
    rots = [np.eye(3), np.diag([-1.0, -1.0, 1.0]), Rotation.from_rotvec([0.5 * np.pi, 0, 0]),
            Rotation.random(random_state=7)]
    rots = [r if isinstance(r, np.ndarray) else r.as_matrix() for r in rots]
    weights = jnp.asarray(np.random.default_rng(8).normal(size=G.params_dim), DTYPE)

    def f(r):
        m = r if G is SO3 else jnp.eye(4, dtype=DTYPE).at[:3, :3].set(1.5 * r)
        return jnp.sum(G.from_matrix(m).params * weights)

    for r in rots:
        r = jnp.asarray(r, DTYPE)
        g_rev = jax.grad(f)(r)
        g_fwd = jax.jacfwd(f)(r)
        assert np.all(np.isfinite(np.asarray(g_rev)))
        close(g_rev, g_fwd, rtol=1e-5, atol=1e-5)


def test_from_matrix_gradient_vs_svd_projection(requires_x64):
    """d from_matrix / dM (both modes, order 2) against finite differences of the SVD projection."""
    rng = np.random.default_rng(9)
    m = Rotation.random(random_state=10).as_matrix() + 0.1 * rng.normal(size=(3, 3))

    def svd_proj(a):
        u, _, vt = np.linalg.svd(a)
        return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt

    h = 1e-6
    fd = np.zeros((3, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            e = np.zeros((3, 3))
            e[i, j] = h
            fd[:, :, i, j] = (svd_proj(m + e) - svd_proj(m - e)) / (2 * h)
    f = lambda a: SO3.from_matrix(a).as_matrix()  # noqa: E731
    close(jax.jacrev(f)(jnp.asarray(m)), fd, rtol=1e-7, atol=1e-7)
    check_grads(lambda a: SO3.from_matrix(a).params, (jnp.asarray(np.eye(3)),), order=2,
                modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-5)


@pytest.mark.parametrize("pitch_offset", [0.0, 1e-7, 1e-5, 1e-3])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rpy_round_trip_near_gimbal_lock(pitch_offset, sign):
    """``from_rpy(*as_rpy(R)) == R`` at and near |pitch| = π/2, for q and -q (the old
    atan2-of-matrix-entries / arcsin read-out returned angles off by up to 0.8 rad there)."""
    pitch = sign * (0.5 * np.pi - pitch_offset)
    rpy = np.array([[0.3, pitch, 0.7], [-2.5, pitch, 3.0], [0.0, pitch, -0.4]])
    R = SO3.from_rpy(*(jnp.asarray(rpy[:, i], DTYPE) for i in range(3)))
    ref = Rotation.from_euler("xyz", rpy).as_matrix()
    atol = 1e-12 if X64 else 1e-6
    for q in (R, SO3(-R.params)):
        roll, p, yaw = q.as_rpy()
        close(SO3.from_rpy(roll, p, yaw).as_matrix(), ref, rtol=0, atol=atol)
        close(p, rpy[:, 1], rtol=0, atol=atol)
        for a in (roll, yaw):
            assert np.all(np.abs(np.asarray(a)) <= np.pi)


def test_rpy_gradient_and_range():
    """Generic angles: exact round trip, angles wrapped to (-π, π], finite gradient."""
    rng = np.random.default_rng(11)
    rpy = rng.uniform([-np.pi, -1.5, -np.pi], [np.pi, 1.5, np.pi], size=(30, 3))
    R = SO3.from_rpy(*(jnp.asarray(rpy[:, i], DTYPE) for i in range(3)))
    for q in (R, SO3(-R.params)):
        close(np.stack(q.as_rpy(), -1), rpy, rtol=1e-6, atol=1e-6)
    g = jax.jacrev(lambda p: jnp.stack(SO3(p).as_rpy(), -1))(R.params[0])
    assert np.all(np.isfinite(np.asarray(g)))
    # chain rule: d as_rpy / d rpy at a generic point is the identity
    j = jax.jacfwd(lambda a: jnp.stack(SO3.from_rpy(a[0], a[1], a[2]).as_rpy()))(
        jnp.asarray(rpy[0], DTYPE)
    )
    close(j, np.eye(3), rtol=1e-4, atol=1e-4)


def test_slerp_vs_scipy():
    key = Rotation.random(2, random_state=6)
    ts = np.linspace(0.0, 1.0, 7)
    ref = Slerp([0.0, 1.0], key)(ts).as_matrix()
    a = SO3.from_quaternion_xyzw(jnp.asarray(key.as_quat()[0], DTYPE))
    b = SO3.from_quaternion_xyzw(jnp.asarray(key.as_quat()[1], DTYPE))
    out = interpolate(a, b, jnp.asarray(ts, DTYPE))  # broadcast t over a single element
    close(out.as_matrix(), ref, rtol=1e-6, atol=1e-6)


def test_named_constructors_and_accessors():
    T = SE2.from_xy_theta(jnp.asarray([1.0, 2.0]), 3.0, 0.5)
    assert T.batch_shape == (2,)
    close(T.translation(), [[1.0, 3.0], [2.0, 3.0]])
    close(T.rotation().angle(), [0.5, 0.5])
    T2 = SE2.from_rotation_and_translation(SO2.from_angle(0.5), jnp.asarray([1.0, 3.0]))
    close(T2.as_matrix(), T[0].as_matrix())
    R = SO3.from_rpy(0.1, 0.2, 0.3)
    t = jnp.asarray([1.0, -2.0, 0.5], DTYPE)
    P = SE3.from_rotation_and_translation(R, t)
    close(P.rotation().as_matrix(), R.as_matrix())
    close(P.translation(), t)
    S = Sim3.from_rotation_translation_scale(R, t, 3.0)
    close(S.scale(), 3.0)
    close(S @ jnp.zeros(3, DTYPE), t)
    close(S @ jnp.asarray([1.0, 0.0, 0.0], DTYPE), 3.0 * (R @ jnp.asarray([1.0, 0.0, 0.0])) + t)
    close(SE3.from_matrix(P.as_matrix()).as_matrix(), P.as_matrix())


@groups
def test_indexing_stacking_and_pytree(G):
    x = G.sample_uniform(jax.random.key(0), (4, 3), DTYPE)
    assert x.batch_shape == (4, 3) and x.dtype == DTYPE and len(x) == 4
    close(x[1].params, x.params[1])
    close(x[1, 2].params, x.params[1, 2])
    close(x[..., 0].params, x.params[:, 0])
    close(x[1:3].params, x.params[1:3])
    close(x[jnp.asarray([0, 2])].params, x.params[jnp.asarray([0, 2])])
    with pytest.raises(IndexError, match=G.__name__):
        x[0, 0, 0]
    with pytest.raises(IndexError, match=G.__name__):  # an Ellipsis does not hide the count
        x[..., 0, 0, 0]
    with pytest.raises(ValueError, match=rf"{G.__name__}.stack needs at least one element"):
        G.stack([])
    assert G.identity(3).batch_shape == (3,)  # a bare int, as in jnp.zeros
    assert G.sample_uniform(jax.random.key(1), 2, DTYPE).batch_shape == (2,)
    s = G.stack([x[0], x[1]])
    assert s.batch_shape == (2, 3)
    close(s.params, x.params[:2])
    s1 = G.stack([x[0], x[1]], axis=-1)
    assert s1.batch_shape == (3, 2)
    # a pytree leaf for the manifold tools
    assert isinstance(x, AbstractManifold) and isinstance(x, AbstractLieGroup)
    assert tangent_size(x) == 12 * G.tangent_dim
    z = tangent_zeros(x)
    close(retract(x, z).as_matrix(), x.as_matrix())
    assert G.identity((2,)).batch_shape == (2,)
    assert G.identity(dtype=jnp.float32).dtype == jnp.float32


# ---- bad input ---------------------------------------------------------------------------------


@groups
def test_bad_params_shape_and_dtype(G):
    with pytest.raises(ValueError, match=rf"{G.__name__} params must have shape \(\.\.\., {G.params_dim}\)"):
        G(jnp.zeros((G.params_dim + 1,)))
    with pytest.raises(ValueError, match=G.__name__):
        G(jnp.asarray(1.0))
    with pytest.raises(TypeError, match="floating dtype"):
        G(jnp.zeros((G.params_dim,), jnp.int32))
    with pytest.raises(ValueError, match=rf"{G.__name__} tangent must have shape"):
        G.exp(jnp.zeros((G.tangent_dim + 1,)))
    with pytest.raises(ValueError, match=rf"{G.__name__} tangent must have shape"):
        G.jac_right(jnp.zeros((2, G.tangent_dim - 1 if G.tangent_dim > 1 else 2)))
    x = G.identity()
    with pytest.raises(ValueError, match="acts on points"):
        x @ jnp.zeros((G.space_dim + 1,))
    with pytest.raises(ValueError, match="from_matrix expects"):
        G.from_matrix(jnp.eye(G.matrix_dim + 1))
    other = SO2 if G is not SO2 else SE2
    with pytest.raises(TypeError, match="groups must match"):
        x @ other.identity()


def test_soft_errors_message_example():
    with pytest.raises(ValueError) as err:
        SO3(jnp.zeros((3,)))
    assert str(err.value) == "SO3 params must have shape (..., 4) (w, x, y, z); got (3,)"


def test_integer_tangent_and_points_are_promoted():
    x = SE2.exp(jnp.asarray([1, 0, 0]))
    assert jnp.issubdtype(x.dtype, jnp.floating)
    close(x @ jnp.asarray([0, 0]), [1.0, 0.0])


def test_complex_input_is_rejected():
    """Casting would drop the imaginary part without a word (JAX only warns)."""
    with pytest.raises(TypeError, match="real arrays; got one of dtype complex"):
        SO3.exp(jnp.asarray([0.1 + 1j, 0.2, 0.3]))
    with pytest.raises(TypeError, match="SO3 acts on real points"):
        SO3.identity() @ jnp.asarray([1.0 + 2j, 0.0, 0.0])
    with pytest.raises(TypeError, match="real arrays"):
        SO3.from_matrix(jnp.eye(3) + 0j)


@pytest.mark.parametrize("scale", [1e-30, 1e-15, 1.0, 1e15, 1e30])
def test_quaternion_constructors_normalize_any_scale(scale):
    """Scaled by max|q_i| before squaring: in float32 |q| < 1e-19 gave NaN and |q| > 2e19 the
    zero quaternion (which then acted as the identity)."""
    q = jnp.asarray([0.3, 0.5, -0.2, 0.787], jnp.float32)
    unit = q / jnp.linalg.norm(q)
    x = SO3.from_quaternion_wxyz(q * scale)
    np.testing.assert_allclose(x.params, unit, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(SO3.from_quaternion_xyzw(jnp.roll(q * scale, -1)).params, unit,
                               rtol=1e-6, atol=1e-7)





@pytest.mark.parametrize(
    "G, R, n",
    [(SE2, SO2, 2), (SE3, SO3, 3), (Sim3, SO3, 3)],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_from_rotation_and_translation_validates_parts(G, R, n):
    """A wrong translation length is reported as such (it used to surface as a params-shape
    error), and a rotation of another group is rejected (an SE2 passed as SE3's rotation was
    silently read as a quaternion)."""

    def make(rot, t):
        if G is Sim3:
            return Sim3.from_rotation_translation_scale(rot, t, 2.0)
        return G.from_rotation_and_translation(rot, t)

    msg = rf"{G.__name__} translation must have shape \(\.\.\., {n}\)"
    with pytest.raises(ValueError, match=msg):
        make(R.identity(dtype=DTYPE), jnp.zeros((n + 1,), DTYPE))
    wrong = SE2.identity(dtype=DTYPE) if R is SO3 else SO3.identity(dtype=DTYPE)
    with pytest.raises(TypeError, match=rf"{G.__name__} rotation must be a {R.__name__}"):
        make(wrong, jnp.zeros((n,), DTYPE))
    x = make(R.identity((2,), DTYPE), jnp.ones((n,), DTYPE))
    assert x.batch_shape == (2,)
    close(x.translation(), np.ones((2, n)))
