"""Host-side (numpy) SE(2)/SE(3) helpers in the file layouts.

SE(2) poses are ``(x, y, theta)``; SE(3) poses are ``(tx, ty, tz, qx, qy, qz, qw)`` (g2o order,
quaternion ``xyzw``). Used to chain odometry for files without vertices and by tests; the
solver itself works on :mod:`jaxnlls.lie` groups.
"""

from __future__ import annotations

import numpy as np


def wrap_angle(theta: np.ndarray) -> np.ndarray:
    """Wraps angles to ``[-pi, pi)``; angles already there are returned bit for bit (the
    modular formula moves them by up to an ulp of pi, so 1e-20 became 0 on reading)."""
    theta = np.asarray(theta)
    inside = (theta >= -np.pi) & (theta < np.pi)
    return np.where(inside, theta, (theta + np.pi) % (2.0 * np.pi) - np.pi)


def se2_compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a ∘ b`` for ``(..., 3)`` arrays ``(x, y, theta)``."""
    c, s = np.cos(a[..., 2]), np.sin(a[..., 2])
    x = a[..., 0] + c * b[..., 0] - s * b[..., 1]
    y = a[..., 1] + s * b[..., 0] + c * b[..., 1]
    return np.stack([x, y, wrap_angle(a[..., 2] + b[..., 2])], axis=-1)


def se2_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of ``(..., 3)`` poses ``(x, y, theta)``."""
    c, s = np.cos(a[..., 2]), np.sin(a[..., 2])
    x = -(c * a[..., 0] + s * a[..., 1])
    y = -(-s * a[..., 0] + c * a[..., 1])
    return np.stack([x, y, wrap_angle(-a[..., 2])], axis=-1)


def quat_xyzw_multiply(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product ``p ⊗ q`` of ``(..., 4)`` quaternions stored ``xyzw``."""
    px, py, pz, pw = np.moveaxis(p, -1, 0)
    qx, qy, qz, qw = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
            pw * qw - px * qx - py * qy - pz * qz,
        ],
        axis=-1,
    )


def quat_xyzw_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotates ``(..., 3)`` vectors by ``(..., 4)`` unit quaternions ``xyzw``."""
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """``(..., 4)`` unit quaternions ``xyzw`` to ``(..., 3, 3)`` rotation matrices."""
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def se3_compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a ∘ b`` for ``(..., 7)`` poses ``(t, q_xyzw)``."""
    t = a[..., :3] + quat_xyzw_rotate(a[..., 3:], b[..., :3])
    q = quat_xyzw_multiply(a[..., 3:], b[..., 3:])
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.concatenate([t, q], axis=-1)


def se3_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of ``(..., 7)`` poses ``(t, q_xyzw)``."""
    q_inv = np.concatenate([-a[..., 3:6], a[..., 6:]], axis=-1)
    t = -quat_xyzw_rotate(q_inv, a[..., :3])
    return np.concatenate([t, q_inv], axis=-1)


def se2_log(a: np.ndarray) -> np.ndarray:
    """SE(2) logarithm of ``(..., 3)`` poses, tangent order ``(vx, vy, omega)``."""
    th = wrap_angle(a[..., 2])
    small = np.abs(th) < 1e-4
    th_safe = np.where(small, 1.0, th)
    # V^{-1} = [[A, B], [-B, A]] with A = (θ/2) cot(θ/2) = θ sinθ / (2(1 - cosθ)), B = θ/2.
    half = 0.5 * th_safe
    a_big = half / np.tan(np.where(small, 1.0, half))
    a_small = 1.0 - th**2 / 12.0 - th**4 / 720.0
    coef_a = np.where(small, a_small, a_big)
    coef_b = 0.5 * th
    vx = coef_a * a[..., 0] + coef_b * a[..., 1]
    vy = -coef_b * a[..., 0] + coef_a * a[..., 1]
    return np.stack([vx, vy, th], axis=-1)


def so3_log_xyzw(q: np.ndarray) -> np.ndarray:
    """Rotation vectors of ``(..., 4)`` unit quaternions ``xyzw`` (angle in ``[0, pi]``)."""
    q = np.where(q[..., 3:] < 0.0, -q, q)
    u, w = q[..., :3], q[..., 3]
    n = np.linalg.norm(u, axis=-1)
    angle = 2.0 * np.arctan2(n, w)
    small = n < 1e-8
    scale = np.where(small, 2.0 / np.where(w == 0, 1.0, w), angle / np.where(small, 1.0, n))
    return scale[..., None] * u


def se3_log(a: np.ndarray) -> np.ndarray:
    """SE(3) logarithm of ``(..., 7)`` poses ``(t, q_xyzw)``, tangent ``(v, omega)``."""
    omega = so3_log_xyzw(a[..., 3:])
    t = a[..., :3]
    th2 = np.sum(omega * omega, axis=-1)
    th = np.sqrt(th2)
    small = th < 1e-4
    th_s = np.where(small, 1.0, th)
    # V^{-1} = I - W/2 + c W^2, c = (1 - θ sinθ / (2 (1 - cosθ))) / θ^2
    c_big = (1.0 - th_s * np.sin(th_s) / (2.0 * (1.0 - np.cos(th_s)))) / th_s**2
    c_small = 1.0 / 12.0 + th2 / 720.0
    c = np.where(small, c_small, c_big)
    wt = np.cross(omega, t)
    wwt = np.cross(omega, wt)
    v = t - 0.5 * wt + c[..., None] * wwt
    return np.concatenate([v, omega], axis=-1)
