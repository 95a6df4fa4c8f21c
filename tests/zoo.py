"""A zoo of small nonlinear least-squares problems for tests.

Most problems are from Moré, Garbow & Hillstrom, "Testing unconstrained optimization
software", ACM TOMS 7 (1981) (numbers ``MGHnn`` below), plus a few exponential curve fits.
They include zero-residual problems (the minimum cost is 0) and nonzero-residual ones.

Every problem is a :class:`ZooProblem` whose residual takes ``(x, params)``; ``params`` is a
real array that genuinely enters the residual (observed data or a coefficient), so gradient
tests can differentiate the solution with respect to it. Residuals follow the dtype of ``x``
(constants are Python scalars or built with ``x.dtype``), so they run in float32 and float64.

Known minima (``x_star``, ``cost_star``) are from MGH where given; ``cost_star`` is in the
jaxnlls convention ``cost = 0.5 * ||r||^2`` (MGH tabulate ``||r||^2``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

__all__ = ["PROBLEMS", "ZooProblem", "get"]


@dataclasses.dataclass(frozen=True, eq=False)
class ZooProblem:
    """A small least-squares problem ``min_x 0.5 * ||residual_fn(x, params)||^2``.

    Attributes:
        name: short identifier.
        residual_fn: ``(x, params) -> r``, 1-D arrays in and out, pure JAX.
        x0: standard starting point (float64 numpy array).
        params: real array entering the residual (float64 numpy array).
        zero_residual: whether the minimum reached from ``x0`` has zero cost.
        x_star: known minimizer reached from ``x0`` (``None`` if not tabulated).
        cost_star: known minimum cost ``0.5 * ||r||^2`` (``None`` if not tabulated).
        unique_minimizer: whether the minimizer near the solution is isolated and well
            determined, so different solvers must agree on it (not only on the cost).
        gauss_newton: whether undamped Gauss-Newton converges from ``x0``.
        float32: whether the problem is solvable to a meaningful accuracy in float32 (the
            badly scaled ones are not).
    """

    name: str
    residual_fn: Callable
    x0: np.ndarray
    params: np.ndarray
    zero_residual: bool
    x_star: np.ndarray | None = None
    cost_star: float | None = None
    unique_minimizer: bool = True
    gauss_newton: bool = True
    float32: bool = True

    def cast(self, dtype) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(x0, params)`` as JAX arrays of ``dtype``."""
        return jnp.asarray(self.x0, dtype=dtype), jnp.asarray(self.params, dtype=dtype)

    def cost(self, x, params=None):
        """``0.5 * ||r(x, params)||^2`` (``params`` defaults to :attr:`params`)."""
        x = jnp.asarray(x)
        if params is None:
            params = jnp.asarray(self.params, dtype=x.dtype)
        r = self.residual_fn(x, params)
        return 0.5 * jnp.sum(r * r)


def _a(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _grid(start, stop, x) -> jnp.ndarray:
    """Integers ``start..stop`` inclusive, in the dtype of ``x``."""
    return jnp.arange(start, stop + 1, dtype=x.dtype)


# ----------------------------------------------------------------------------- residuals


def _rosenbrock(x, p):
    # MGH1: p = (a, b): r = (a (x2 - x1^2), b - x1); minimizer (b, b^2).
    return jnp.stack([p[0] * (x[1] - x[0] ** 2), p[1] - x[0]])


def _freudenstein_roth(x, p):
    # MGH2: p = (13, 29).
    x1, x2 = x[0], x[1]
    return jnp.stack(
        [-p[0] + x1 + ((5 - x2) * x2 - 2) * x2, -p[1] + x1 + ((x2 + 1) * x2 - 14) * x2]
    )


def _powell_badly_scaled(x, p):
    # MGH3: p = (1e4, 1.0001).
    return jnp.stack([p[0] * x[0] * x[1] - 1, jnp.exp(-x[0]) + jnp.exp(-x[1]) - p[1]])


def _brown_badly_scaled(x, p):
    # MGH4: p = (1e6, 2e-6, 2); minimizer (p0, p1) when p0 * p1 = p2.
    return jnp.stack([x[0] - p[0], x[1] - p[1], x[0] * x[1] - p[2]])


def _beale(x, p):
    # MGH5: r_i = y_i - x1 (1 - x2^i), y = (1.5, 2.25, 2.625).
    i = _grid(1, 3, x)
    return p - x[0] * (1 - x[1] ** i)


def _jennrich_sampson(x, p):
    # MGH6 with m = 10: r_i = p0 + p1 i - (exp(i x1) + exp(i x2)).
    i = _grid(1, 10, x)
    return p[0] + p[1] * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))


def _helical_valley(x, p):
    # MGH7 with the radius 1 replaced by p0: minimizer (p0, 0, 0).
    x1, x2, x3 = x[0], x[1], x[2]
    theta = jnp.arctan(x2 / x1) / (2 * jnp.pi) + jnp.where(x1 < 0, 0.5, 0.0)
    return jnp.stack([10 * (x3 - 10 * theta), 10 * (jnp.sqrt(x1**2 + x2**2) - p[0]), x3])


def _bard(x, p):
    # MGH8: p = y (15 observations).
    u = _grid(1, 15, x)
    v = 16 - u
    w = jnp.minimum(u, v)
    return p - (x[0] + u / (v * x[1] + w * x[2]))


def _gaussian(x, p):
    # MGH9: r_i = x1 exp(-x2 (t_i - x3)^2 / 2) - y_i, t_i = (8 - i) / 2.
    t = (8 - _grid(1, 15, x)) / 2
    return x[0] * jnp.exp(-x[1] * (t - x[2]) ** 2 / 2) - p


def _meyer_scaled(x, p):
    # MGH10 rescaled (Nielsen): r_i = x1 exp(10 x2 / (u_i + x3) - 13) - y_i,
    # u_i = 0.45 + 0.05 i, y_i = 1e-3 * (MGH10 data).
    u = 0.45 + 0.05 * _grid(1, 16, x)
    return x[0] * jnp.exp(10 * x[1] / (u + x[2]) - 13) - p


def _watson(x, p):
    # MGH20 with n = 6: t_i = i / 29, i = 1..29, plus r_30 = x1, r_31 = x2 - x1^2 - 1.
    # p0 is the constant subtracted in the first 29 residuals (1 in MGH).
    n = x.shape[0]
    t = _grid(1, 29, x) / 29
    j = _grid(1, n, x)
    powers = t[:, None] ** (j[None, :] - 1)  # t^(j-1), shape (29, n)
    # sum_{j=2}^n (j-1) x_j t^(j-2) and (sum_{j=1}^n x_j t^(j-1))^2
    s1 = (powers[:, :-1] * ((j[1:] - 1) * x[1:])[None, :]).sum(axis=1)
    s2 = (powers * x[None, :]).sum(axis=1)
    r = s1 - s2**2 - p[0]
    return jnp.concatenate([r, jnp.stack([x[0], x[1] - x[0] ** 2 - 1])])


def _box3d(x, p):
    # MGH12 with m = 10 and the second decay rate 10 replaced by p0: minimizer (1, p0, 1).
    t = 0.1 * _grid(1, 10, x)
    return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (jnp.exp(-t) - jnp.exp(-p[0] * t))


def _powell_singular(x, p):
    # MGH13: p = (10, sqrt 5, sqrt 10); singular Jacobian at the minimizer 0.
    x1, x2, x3, x4 = x[0], x[1], x[2], x[3]
    return jnp.stack(
        [x1 + p[0] * x2, p[1] * (x3 - x4), (x2 - 2 * x3) ** 2, p[2] * (x1 - x4) ** 2]
    )


def _kowalik_osborne(x, p):
    # MGH15: r_i = y_i - x1 (u_i^2 + u_i x2) / (u_i^2 + u_i x3 + x4).
    u = jnp.asarray(_KOWALIK_U, dtype=x.dtype)
    return p - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def _brown_dennis(x, p):
    # MGH16 with m = 20; p = (1, 1) scales exp(t) and cos(t).
    t = _grid(1, 20, x) / 5
    a = x[0] + t * x[1] - p[0] * jnp.exp(t)
    b = x[2] + x[3] * jnp.sin(t) - p[1] * jnp.cos(t)
    return a**2 + b**2


def _biggs_exp6(x, p):
    # MGH18 with m = 13: data y_i = exp(-t) - 5 exp(-10 t) + 3 exp(-4 t) are the params.
    t = 0.1 * _grid(1, 13, x)
    return x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1]) + x[5] * jnp.exp(-t * x[4]) - p


def _osborne1(x, p):
    # MGH17: r_i = y_i - (x1 + x2 exp(-t_i x4) + x3 exp(-t_i x5)), t_i = 10 (i - 1).
    t = 10 * _grid(0, 32, x)
    return p - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


def _osborne2(x, p):
    # MGH19: four-term model on 65 points, t_i = (i - 1) / 10.
    t = _grid(0, 64, x) / 10
    model = (
        x[0] * jnp.exp(-t * x[4])
        + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
        + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
        + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7])
    )
    return p - model


def _exp_decay(x, p):
    # y_i = x1 exp(-x2 t_i) + x3 at t_i = 0, 0.25, ..., 4.75; p = y.
    t = _grid(0, 19, x) / 4
    return x[0] * jnp.exp(-x[1] * t) + x[2] - p


# ----------------------------------------------------------------------------- data

_BARD_Y = _a(
    0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39
)
_GAUSSIAN_Y = _a(
    0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
    0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009,
)  # fmt: skip
_MEYER_Y = 1e-3 * _a(
    34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744,
    8261, 7030, 6005, 5147, 4427, 3820, 3307, 2872,
)  # fmt: skip
_KOWALIK_Y = _a(
    0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246
)
_KOWALIK_U = _a(4, 2, 1, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625)
_OSBORNE1_Y = _a(
    0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
    0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
    0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406,
)  # fmt: skip
_OSBORNE2_Y = _a(
    1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746,
    0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649,
    0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395,
    0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653,
    0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739,
    0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054,
)  # fmt: skip


def _biggs_y() -> np.ndarray:
    t = 0.1 * np.arange(1, 14)
    return np.exp(-t) - 5 * np.exp(-10 * t) + 3 * np.exp(-4 * t)


def _exp_decay_y() -> np.ndarray:
    # Exact data from (2.5, 1.3, 0.5) plus a fixed, deterministic perturbation (nonzero residual).
    t = np.arange(20) / 4
    return 2.5 * np.exp(-1.3 * t) + 0.5 + 0.01 * np.sin(3.0 * np.arange(20))


# ----------------------------------------------------------------------------- the zoo

PROBLEMS: tuple[ZooProblem, ...] = (
    ZooProblem(
        "rosenbrock", _rosenbrock, _a(-1.2, 1.0), _a(10.0, 1.0), True,
        x_star=_a(1.0, 1.0), cost_star=0.0,
    ),
    ZooProblem(
        # From the standard start every method here reaches the local minimum
        # (11.41..., -0.8968...) with ||r||^2 = 48.9842..., not the global zero at (5, 4).
        "freudenstein_roth", _freudenstein_roth, _a(0.5, -2.0), _a(13.0, 29.0), False,
        cost_star=0.5 * 48.98425367924,
        gauss_newton=False,
    ),
    ZooProblem(
        "powell_badly_scaled", _powell_badly_scaled, _a(0.0, 1.0), _a(1e4, 1.0001), True,
        x_star=_a(1.098159e-5, 9.106147), cost_star=0.0, float32=False,
    ),
    ZooProblem(
        "brown_badly_scaled", _brown_badly_scaled, _a(1.0, 1.0), _a(1e6, 2e-6, 2.0), True,
        x_star=_a(1e6, 2e-6), cost_star=0.0, float32=False, gauss_newton=False,
    ),
    ZooProblem(
        "beale", _beale, _a(1.0, 1.0), _a(1.5, 2.25, 2.625), True,
        x_star=_a(3.0, 0.5), cost_star=0.0,
    ),
    ZooProblem(
        # Jacobian columns coincide at the minimizer (x1 = x2): rank deficient there.
        "jennrich_sampson", _jennrich_sampson, _a(0.3, 0.4), _a(2.0, 2.0), False,
        x_star=_a(0.2578252, 0.2578252), cost_star=0.5 * 124.362182355, gauss_newton=False,
    ),
    ZooProblem(
        "helical_valley", _helical_valley, _a(-1.0, 0.0, 0.0), _a(1.0), True,
        x_star=_a(1.0, 0.0, 0.0), cost_star=0.0,
    ),
    ZooProblem(
        "bard", _bard, _a(1.0, 1.0, 1.0), _BARD_Y, False,
        x_star=_a(0.08241056, 1.133036, 2.343695), cost_star=0.5 * 8.21487730657e-3,
    ),
    ZooProblem(
        "gaussian", _gaussian, _a(0.4, 1.0, 0.0), _GAUSSIAN_Y, False,
        x_star=_a(0.3989561, 1.000019, 0.0), cost_star=0.5 * 1.12793276961e-8,
    ),
    ZooProblem(
        "meyer_scaled", _meyer_scaled, _a(8.85, 4.0, 2.5), _MEYER_Y, False,
        x_star=_a(2.481778, 6.181346, 3.452236), cost_star=0.5 * 87.9458551718e-6,
        float32=False,
    ),
    ZooProblem(
        "watson6", _watson, np.zeros(6), _a(1.0), False,
        cost_star=0.5 * 2.28767005355e-3,
    ),
    ZooProblem(
        # Also zero at (10, 1, -1) and on x1 = x2, x3 = 0; the standard start reaches (1, 10, 1).
        "box3d", _box3d, _a(0.0, 10.0, 20.0), _a(10.0), True,
        x_star=_a(1.0, 10.0, 1.0), cost_star=0.0,
    ),
    ZooProblem(
        # Singular Jacobian at the minimizer: every method converges only linearly in x.
        "powell_singular", _powell_singular, _a(3.0, -1.0, 0.0, 1.0),
        _a(10.0, np.sqrt(5.0), np.sqrt(10.0)), True,
        x_star=np.zeros(4), cost_star=0.0, unique_minimizer=False,
    ),
    ZooProblem(
        # Undamped GN converges to another stationary point (x2 < 0, ||r||^2 = 4.24e-4).
        "kowalik_osborne", _kowalik_osborne, _a(0.25, 0.39, 0.415, 0.39), _KOWALIK_Y, False,
        x_star=_a(0.1928069, 0.1912823, 0.1230565, 0.1360623),
        cost_star=0.5 * 3.07505603849e-4, gauss_newton=False,
    ),
    ZooProblem(
        # Large residual: the Gauss-Newton model misses the second-order term, so undamped GN
        # does not converge and dogleg converges only linearly (radius-limited steps).
        "brown_dennis", _brown_dennis, _a(25.0, 5.0, -5.0, -1.0), _a(1.0, 1.0), False,
        x_star=_a(-11.59444, 13.20363, -0.4034394, 0.2367787), cost_star=0.5 * 85822.2016263,
        gauss_newton=False,
    ),
    ZooProblem(
        # Zero at (1, 10, 1, 5, 4, 3) and at permutations of the exponential terms (SciPy's LM
        # finds (4, 10, 3, 5, 1, 1)); undamped GN hits a singular J^T J from the standard start.
        "biggs_exp6", _biggs_exp6, _a(1.0, 2.0, 1.0, 1.0, 1.0, 1.0), _biggs_y(), True,
        cost_star=0.0, unique_minimizer=False, gauss_newton=False,
    ),
    ZooProblem(
        "osborne1", _osborne1, _a(0.5, 1.5, -1.0, 0.01, 0.02), _OSBORNE1_Y, False,
        x_star=_a(0.3754100, 1.935847, -1.464687, 0.01286753, 0.02212270),
        cost_star=0.5 * 5.46489469748e-5,
    ),
    ZooProblem(
        "osborne2", _osborne2,
        _a(1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), _OSBORNE2_Y, False,
        x_star=_a(1.309977, 0.4315538, 0.6336617, 0.5994305, 0.7541832, 0.9042886,
                  1.365811, 4.823699, 2.398685, 4.568875, 5.675342),
        cost_star=0.5 * 4.01377362935e-2, gauss_newton=False,  # undamped GN overflows
    ),
    ZooProblem(
        "exp_decay", _exp_decay, _a(1.0, 1.0, 0.0), _exp_decay_y(), False,
    ),
)  # fmt: skip


def get(name: str) -> ZooProblem:
    """The zoo problem called ``name``."""
    for p in PROBLEMS:
        if p.name == name:
            return p
    raise KeyError(f"no zoo problem named {name!r}; have {[p.name for p in PROBLEMS]}")
