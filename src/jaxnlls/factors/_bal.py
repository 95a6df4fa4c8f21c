"""Bundle adjustment in the BAL convention (Agarwal et al., "Bundle Adjustment in the Large").

Camera: a 9-vector **Euclidean** variable ``(w(3), t(3), f, k1, k2)`` exactly as stored in BAL
files (Rodrigues rotation vector ``w``, translation ``t``, focal length, radial distortion), so
a BAL file loads without conversion and the update is additive (as in Ceres' BAL example).
Point: a 3-vector Euclidean variable. Projection::

    P = R(w) X + t,   p = -P[:2] / P[2],   pixel = f (1 + k1 |p|² + k2 |p|⁴) p

and the residual is ``pixel - observed`` (optionally scaled by ``weight``). Declare the
variable types with ``class Camera(Var, dim=9)`` and ``class Point(Var, dim=3)`` (or use
:class:`BalCamera` / :class:`BalPoint`).
"""

from __future__ import annotations

import jax.numpy as jnp

from ..graph import Var, factor


class BalCamera(Var, dim=9):
    """BAL camera ``(w(3), t(3), f, k1, k2)`` (Euclidean 9-vector)."""


class BalPoint(Var, dim=3):
    """3D point of a bundle-adjustment problem."""


def rodrigues_rotate(w, X):
    """``R(w) X`` for a rotation vector ``w`` (exact, with a safe small-angle branch)."""
    theta2 = jnp.sum(w * w)
    small = theta2 < jnp.finfo(w.dtype).eps
    t2 = jnp.where(small, 1.0, theta2)
    theta = jnp.sqrt(t2)
    k = w / theta
    c, s = jnp.cos(theta), jnp.sin(theta)
    kx = jnp.cross(k, X)
    big = X * c + kx * s + k * jnp.dot(k, X) * (1 - c)
    tiny = X + jnp.cross(w, X)
    return jnp.where(small, tiny, big)


def bal_project(camera, X):
    """Pixel prediction of point ``X`` by a BAL camera 9-vector."""
    P = rodrigues_rotate(camera[:3], X) + camera[3:6]
    p = -P[:2] / P[2]
    f, k1, k2 = camera[6], camera[7], camera[8]
    n2 = jnp.sum(p * p)
    return f * (1 + k1 * n2 + k2 * n2 * n2) * p


@factor(name="bal_reprojection", jac="fwd")
def bal_reprojection(vals, camera, point, observed, weight):
    """Reprojection residual ``weight · (project(camera, point) - observed)`` (2-vector)."""
    cam, X = vals[camera], vals[point]
    return jnp.asarray(weight, cam.dtype) * (bal_project(cam, X) - observed.astype(cam.dtype))
