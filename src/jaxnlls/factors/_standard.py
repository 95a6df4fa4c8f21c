"""Standard factors: prior, between, point-to-point, point-to-plane, 2D range and bearing.

Every factor takes a square-root information matrix (or scalar weight) that whitens its
residual, so ``½‖r‖²`` is the negative log-likelihood up to a constant. Batch them by passing id
arrays and stacked data (see :func:`jaxnlls.graph.factor`). Tangent conventions follow
:mod:`jaxnlls.lie`: right perturbations, SE(n) tangent ordered (translation, rotation).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..graph import factor
from ..lie import AbstractLieGroup
from ..manifold import is_manifold


def _real(value, name: str):
    """``value`` as an array, refusing complex data (a cast to the residual's real dtype would
    drop the imaginary part with only a warning)."""
    a = jnp.asarray(value)
    if jnp.iscomplexobj(a):
        raise TypeError(f"{name} is complex ({a.dtype}); factor data must be real")
    return a


def _check_sqrt_info(L, d: int) -> None:
    # a (1,) weight would broadcast and a (k, d) matrix would silently drop residual rows
    if L.shape not in ((), (d,), (d, d)):
        raise ValueError(
            f"sqrt_info has shape {L.shape}; a {d}-dim residual needs ({d}, {d}), ({d},) or ()"
        )


def _w(sqrt_info, r):
    """``L r`` for a matrix ``L``, or ``w r`` for a scalar / diagonal vector weight."""
    L = _real(sqrt_info, "sqrt_info")
    _check_sqrt_info(L, r.shape[0])
    if L.ndim == 2:
        return L.astype(r.dtype) @ r
    return L.astype(r.dtype) * r


def _measured(z, x, var: str):
    """The measurement ``z`` as an element of ``x``'s group, in ``x``'s dtype (float64 data
    with float32 variables would otherwise promote the residual and break the solver loop)."""
    if type(z) is not type(x):
        got = type(z).__name__ if is_manifold(z) else f"array of shape {jnp.shape(z)}"
        raise TypeError(f"z is a {got}, expected a {type(x).__name__} (the group of {var})")
    if isinstance(z, AbstractLieGroup) and z.dtype != x.dtype:
        z = type(z)(z.params.astype(x.dtype))
    return z


def _between_lin(vals, a, b, z, sqrt_info):
    """Residual and analytic blocks of ``L Log(z⁻¹ a⁻¹ b)``, sharing ``T = a⁻¹ b`` and ``e``:
    ``∂/∂δb = Jr⁻¹(e)``, ``∂/∂δa = -Jr⁻¹(e) Ad(T⁻¹)``."""
    xa, xb = vals[a], vals[b]
    z = _measured(z, xa, "a")
    T = xa.inverse() @ xb
    e = (z.inverse() @ T).log()
    Jinv = type(xa).jac_right_inv(e)
    Jb = Jinv
    Ja = -Jinv @ T.inverse().adjoint()
    L = _real(sqrt_info, "sqrt_info")
    _check_sqrt_info(L, e.shape[0])
    if L.ndim == 2:
        Lc = L.astype(e.dtype)
        return Lc @ e, (Lc @ Ja, Lc @ Jb)
    w = L.astype(e.dtype)
    wr = w if w.ndim == 0 else w[:, None]  # a scalar weight, or a diagonal scaling the rows
    return w * e, (wr * Ja, wr * Jb)


def _between_jac(vals, a, b, z, sqrt_info):
    """Analytic blocks of ``Log(z⁻¹ a⁻¹ b)``: ``∂/∂δb = Jr⁻¹(e)``, ``∂/∂δa = -Jr⁻¹(e) Ad(T⁻¹)``."""
    return _between_lin(vals, a, b, z, sqrt_info)[1]


def _between_res(vals, a, b, z, sqrt_info):
    xa, xb = vals[a], vals[b]
    z = _measured(z, xa, "a")
    return _w(sqrt_info, (z.inverse() @ (xa.inverse() @ xb)).log())


between = factor(_between_res, jacobian=_between_jac, linearize=_between_lin, name="between")
between.__doc__ = """Relative-pose factor ``r = L · Log(z⁻¹ · (x_a⁻¹ · x_b))`` (GTSAM ``BetweenFactor``).

Works for every Lie-group variable (SE2, SE3, SO3, Sim3, SO2): ``z`` is the measured
``x_a⁻¹ x_b`` as a group element (stacked for a batch), ``sqrt_info`` an upper-triangular
``L`` with ``LᵀL = Ω`` in the group's tangent order (``(d, d)``, or a ``(d,)`` diagonal).
Analytic Jacobians (``Jr⁻¹`` and the adjoint), so large pose graphs compile fast.

Example:
    >>> between(Pose(ia), Pose(ib), SE3(z_params), L)   # n edges at once
"""

between_autodiff = factor(_between_res, jac="fwd", name="between_autodiff")
between_autodiff.__doc__ = "``between`` with autodiff Jacobians (reference for tests)."


@factor(name="prior")
def prior(vals, x, z, sqrt_info):
    """Unary prior ``r = L · Log(z⁻¹ · x)`` for a group variable, ``L · (x - z)`` for a
    Euclidean one (GTSAM ``PriorFactor``)."""
    v = vals[x]
    if is_manifold(v):
        return _w(sqrt_info, (_measured(z, v, "x").inverse() @ v).log())
    return _w(sqrt_info, v - _measured_vec(z, v, "x"))


def _measured_vec(z, x, var: str):
    """A Euclidean measurement ``z`` of ``x``'s shape, in ``x``'s dtype."""
    if jnp.shape(z) != x.shape:
        raise ValueError(f"z has shape {jnp.shape(z)}, expected {x.shape} (the shape of {var})")
    return jnp.asarray(z, x.dtype)


@factor(name="between_euclidean", jac="fwd")
def between_euclidean(vals, a, b, z, sqrt_info):
    """Relative-position factor for Euclidean variables: ``r = L · ((x_b - x_a) - z)``."""
    return _w(sqrt_info, (vals[b] - vals[a]) - _measured_vec(z, vals[a], "a"))


@factor(name="point_to_point", jac="fwd")
def point_to_point(vals, pose, p_src, p_dst, sqrt_info):
    """Registration factor ``r = L · (x · p_src - p_dst)`` (SE2/SE3 pose, 2D/3D points):
    the pose maps source points onto their matched destination points (ICP / Umeyama)."""
    x = vals[pose]
    return _w(sqrt_info, (x @ p_src.astype(x.dtype)) - p_dst.astype(x.dtype))


def _check_normals(pose, p_src, p_dst, normal, weight):
    """Host-side check of concrete normals (traced ones are not checked)."""
    try:
        n = np.asarray(normal)
    except Exception:  # a tracer: the factor was made inside a transformation
        return
    if n.dtype.kind == "c":
        return  # refused with a TypeError when the factor is evaluated
    nn = np.sum(np.square(n, dtype=np.float64), axis=-1)
    bad = ~(np.isfinite(nn) & (nn > 0))
    if np.any(bad):
        k = int(np.flatnonzero(np.ravel(bad))[0])
        raise ValueError(
            f"factor point_to_plane: normal {k} is zero or not finite; a normal must be a "
            "nonzero vector (its length does not matter: it is normalized)"
        )


def _point_to_plane(vals, pose, p_src, p_dst, normal, weight):
    x = vals[pose]
    d = (x @ _real(p_src, "p_src").astype(x.dtype)) - _real(p_dst, "p_dst").astype(x.dtype)
    w = _real(weight, "weight").astype(x.dtype)  # data in the variables' dtype, as everywhere
    n = _real(normal, "normal").astype(x.dtype)
    nn = jnp.sum(n * n)
    # double where: a finite (zero) derivative at n = 0
    n_hat = jnp.where(nn > 0, n / jnp.sqrt(jnp.where(nn > 0, nn, 1.0)), 0.0)
    return jnp.reshape(w * jnp.sum(n_hat * d), (1,))


point_to_plane = factor(_point_to_plane, jac="fwd", name="point_to_plane", check=_check_normals)
point_to_plane.__doc__ = """Point-to-plane factor ``r = w · n̂ᵀ(x · p_src - p_dst)`` (scalar
residual; ``normal`` is the destination surface normal, ``weight`` a scalar ``1/σ``).

The normal is normalized, ``n̂ = n/‖n‖``, so its length does not scale the residual (weight with
``weight``). A zero or non-finite normal raises ``ValueError`` naming the factor and the normal
when the factor is made; a traced zero normal (data replaced at solve time) gives a zero
residual and Jacobian row, which the solve reports as singular rather than NaN.
"""


def _landmark_in_pose(x, lm):
    return x.inverse() @ lm


@factor(name="range2d", jac="fwd")
def range2d(vals, pose, landmark, measured, weight):
    """2D range ``r = w · (‖l - t_x‖ - z)`` from an SE2 pose to a 2D Euclidean landmark."""
    x, lm = vals[pose], vals[landmark]
    diff = lm - x.translation()
    dist = jnp.sqrt(jnp.sum(diff * diff) + jnp.finfo(diff.dtype).tiny)
    w = _real(weight, "weight").astype(dist.dtype)
    z = _real(measured, "measured").astype(dist.dtype)
    return jnp.reshape(w * (dist - z), (1,))


def _wrap(a):
    return jnp.arctan2(jnp.sin(a), jnp.cos(a))


def _bearing(local):
    """``atan2(l_y, l_x)``, 0 with a zero derivative at ``l = 0`` (where the bearing is undefined
    and ``atan2``'s derivative is NaN): a landmark at the pose is reported as a singular
    direction by the solve, not as a non-finite residual."""
    r2 = jnp.sum(local * local)
    safe = jnp.where(r2 > 0, local, jnp.ones_like(local))
    return jnp.where(r2 > 0, jnp.arctan2(safe[1], safe[0]), 0.0)


@factor(name="bearing2d", jac="fwd")
def bearing2d(vals, pose, landmark, measured, weight):
    """2D bearing ``r = w · wrap(atan2(l_y, l_x) - z)`` of a landmark in the SE2 pose frame."""
    local = _landmark_in_pose(vals[pose], vals[landmark])
    w = _real(weight, "weight").astype(local.dtype)
    z = _real(measured, "measured").astype(local.dtype)
    return jnp.reshape(w * _wrap(_bearing(local) - z), (1,))


@factor(name="range_bearing2d", jac="fwd")
def range_bearing2d(vals, pose, landmark, bearing, range_, sqrt_info):
    """Combined 2D bearing-range ``r = L · (wrap(bearing_pred - bearing), range_pred - range)``
    (GTSAM ``BearingRangeFactor2D``; Victoria Park's LANDMARK lines)."""
    local = _landmark_in_pose(vals[pose], vals[landmark])
    b = _wrap(_bearing(local) - _real(bearing, "bearing").astype(local.dtype))
    rng = jnp.sqrt(jnp.sum(local * local) + jnp.finfo(local.dtype).tiny)
    rng = rng - _real(range_, "range_").astype(local.dtype)
    return _w(sqrt_info, jnp.stack([b, rng]))
