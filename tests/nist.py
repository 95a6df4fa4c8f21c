"""Reader and hand-written models for the NIST StRD nonlinear-regression data sets.

Each ``.dat`` file (``shared/data/nist_strd``) carries, in a fixed-layout header: the model
formula, the number of parameters, two starting points, the certified parameter values with
their standard deviations, the certified residual sum of squares, and the line range of the
data block (``Data (lines N to M)``; columns ``y x`` or ``y x1 x2``).

The models below are transcribed by hand from the formula text in each header. The residual
used everywhere is ``y - model(b, x)``, except for Nelson whose header models ``log[y]``, so its
residual is ``log(y) - model(b, x)``. The certified residual sum of squares is
``sum(residual**2)`` (= ``2 * cost`` in jaxnlls' ``cost = 0.5 * ||r||^2`` convention).

This module is shared by ``tests/test_nist.py`` and ``bench/nist.py``; it depends only on
numpy and jax.numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

__all__ = [
    "MODELS",
    "NAMES",
    "NistModel",
    "NistProblem",
    "load",
    "load_all",
    "log_relative_error",
    "solver_settings",
]

_PI = 3.141592653589793238462643383279  # as printed in the Roszman1 header


# --------------------------------------------------------------------------- models
# b is a 1-D parameter vector (b[0] == b1 in the NIST notation), x is the predictor column
# (or, for Nelson, an (n, 2) array of (x1, x2)).


def _chwirut(b, x):
    # y = exp[-b1*x]/(b2+b3*x)
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


def _danwood(b, x):
    # y = b1*x**b2
    return b[0] * x ** b[1]


def _enso(b, x):
    # y = b1 + b2*cos(2*pi*x/12) + b3*sin(2*pi*x/12)
    #        + b5*cos(2*pi*x/b4) + b6*sin(2*pi*x/b4)
    #        + b8*cos(2*pi*x/b7) + b9*sin(2*pi*x/b7)
    w = 2 * _PI * x
    return (
        b[0]
        + b[1] * jnp.cos(w / 12)
        + b[2] * jnp.sin(w / 12)
        + b[4] * jnp.cos(w / b[3])
        + b[5] * jnp.sin(w / b[3])
        + b[7] * jnp.cos(w / b[6])
        + b[8] * jnp.sin(w / b[6])
    )


def _gauss(b, x):
    # y = b1*exp(-b2*x) + b3*exp(-(x-b4)**2/b5**2) + b6*exp(-(x-b7)**2/b8**2)
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
        + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2)
    )


def _hahn1(b, x):
    # y = (b1+b2*x+b3*x**2+b4*x**3) / (1+b5*x+b6*x**2+b7*x**3)
    num = b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3
    den = 1 + b[4] * x + b[5] * x**2 + b[6] * x**3
    return num / den


def _kirby2(b, x):
    # y = (b1 + b2*x + b3*x**2) / (1 + b4*x + b5*x**2)
    return (b[0] + b[1] * x + b[2] * x**2) / (1 + b[3] * x + b[4] * x**2)


def _lanczos(b, x):
    # y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def _mgh17(b, x):
    # y = b1 + b2*exp[-x*b4] + b3*exp[-x*b5]
    return b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4])


def _misra1a(b, x):
    # y = b1*(1-exp[-b2*x])
    return b[0] * (1 - jnp.exp(-b[1] * x))


def _misra1b(b, x):
    # y = b1 * (1-(1+b2*x/2)**(-2))
    return b[0] * (1 - (1 + b[1] * x / 2) ** (-2))


def _misra1c(b, x):
    # y = b1 * (1-(1+2*b2*x)**(-.5))
    return b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5))


def _misra1d(b, x):
    # y = b1*b2*x*((1+b2*x)**(-1))
    return b[0] * b[1] * x * ((1 + b[1] * x) ** (-1))


def _nelson(b, x):
    # log[y] = b1 - b2*x1 * exp[-b3*x2]
    x1, x2 = x[:, 0], x[:, 1]
    return b[0] - b[1] * x1 * jnp.exp(-b[2] * x2)


def _roszman1(b, x):
    # y = b1 - b2*x - arctan[b3/(x-b4)]/pi
    return b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / _PI


@dataclasses.dataclass(frozen=True)
class NistModel:
    """A hand-transcribed model: ``fn(b, x)``, its parameter count, and whether the response
    is modelled on the log scale (Nelson)."""

    fn: Callable
    n_params: int
    log_response: bool = False


MODELS: dict[str, NistModel] = {
    "Chwirut1": NistModel(_chwirut, 3),
    "Chwirut2": NistModel(_chwirut, 3),
    "DanWood": NistModel(_danwood, 2),
    "ENSO": NistModel(_enso, 9),
    "Gauss1": NistModel(_gauss, 8),
    "Gauss2": NistModel(_gauss, 8),
    "Gauss3": NistModel(_gauss, 8),
    "Hahn1": NistModel(_hahn1, 7),
    "Kirby2": NistModel(_kirby2, 5),
    "Lanczos1": NistModel(_lanczos, 6),
    "Lanczos2": NistModel(_lanczos, 6),
    "Lanczos3": NistModel(_lanczos, 6),
    "MGH17": NistModel(_mgh17, 5),
    "Misra1a": NistModel(_misra1a, 2),
    "Misra1b": NistModel(_misra1b, 2),
    "Misra1c": NistModel(_misra1c, 2),
    "Misra1d": NistModel(_misra1d, 2),
    "Nelson": NistModel(_nelson, 3, log_response=True),
    "Roszman1": NistModel(_roszman1, 4),
}

NAMES: tuple[str, ...] = tuple(MODELS)


@functools.cache
def _residual_fn(fn: Callable) -> Callable:
    def residual(b, data):
        x, target = data
        return target - fn(b, x)

    residual.__name__ = residual.__qualname__ = f"residual{fn.__name__}"
    return residual


# --------------------------------------------------------------------------- reader


@dataclasses.dataclass(frozen=True, eq=False)
class NistProblem:
    """One NIST StRD nonlinear-regression problem as read from its ``.dat`` file.

    Attributes:
        name: data set name, e.g. ``"Misra1a"``.
        difficulty: ``"Lower"``, ``"Average"`` or ``"Higher"`` (from the header).
        n_params: number of parameters stated in the header (``"N Parameters"``).
        model_text: the formula lines of the header, verbatim (stripped).
        start1, start2: the two NIST starting points, shape ``(n_params,)``.
        certified: certified parameter values, shape ``(n_params,)``.
        certified_std: certified standard deviations, shape ``(n_params,)``.
        certified_rss: certified residual sum of squares.
        y: responses, shape ``(n_obs,)``.
        x: predictors, shape ``(n_obs,)`` or ``(n_obs, n_predictors)``.
    """

    name: str
    difficulty: str
    n_params: int
    model_text: str
    start1: np.ndarray
    start2: np.ndarray
    certified: np.ndarray
    certified_std: np.ndarray
    certified_rss: float
    y: np.ndarray
    x: np.ndarray

    @property
    def model(self) -> NistModel:
        return MODELS[self.name]

    def start(self, which: int) -> np.ndarray:
        """Starting point 1 or 2."""
        if which not in (1, 2):
            raise ValueError(f"{self.name}: start must be 1 or 2, got {which}")
        return self.start1 if which == 1 else self.start2

    def data(self, dtype=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(x, target)`` as JAX arrays; ``target`` is ``log(y)`` for log-response models.

        Use as the ``params`` argument of :meth:`residual`. ``dtype`` defaults to JAX's default
        float type (float32 when x64 is off).
        """
        target = np.log(self.y) if self.model.log_response else self.y
        return jnp.asarray(self.x, dtype=dtype), jnp.asarray(target, dtype=dtype)

    @property
    def residual(self) -> Callable:
        """``residual(b, data) = target - model(b, x)``, with ``data = (x, target)`` from
        :meth:`data`.

        The same function object is returned for every problem sharing a model (e.g. Gauss1-3),
        so jit caches keyed on the function are shared between them and between both starts.
        """
        return _residual_fn(self.model.fn)

    def rss(self, b, data=None):
        """Residual sum of squares at ``b``."""
        if data is None:
            data = self.data(dtype=jnp.asarray(b).dtype)
        r = self.residual(b, data)
        return jnp.sum(r * r)


_LINES_RE = re.compile(r"(Starting Values|Certified Values|Data)\s*\(lines\s+(\d+)\s+to\s+(\d+)\)")
_NPARAMS_RE = re.compile(r"^\s*(\d+)\s+Parameters\b")
_PARAM_RE = re.compile(r"^\s*b(\d+)\s*=\s*(.*)$")
_DIFFICULTY_RE = re.compile(r"(Lower|Average|Higher) Level of Difficulty")


def _float(tok: str) -> float:
    return float(tok)


def load(path: str | pathlib.Path) -> NistProblem:
    """Parse one NIST StRD nonlinear-regression ``.dat`` file.

    Raises:
        ValueError: if the header does not have the expected layout (the message names the
            file and line).
    """
    path = pathlib.Path(path)
    name = path.stem
    lines = path.read_text().splitlines()

    ranges: dict[str, tuple[int, int]] = {}
    for line in lines[:20]:
        m = _LINES_RE.search(line)
        if m:
            ranges[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    for key in ("Starting Values", "Certified Values", "Data"):
        if key not in ranges:
            raise ValueError(f"{path}: header lacks '{key} (lines N to M)'")

    # Model block: from the "Model:" line up to the starting-values table.
    model_start = next(
        (i for i, ln in enumerate(lines) if ln.startswith("Model:")),
        None,
    )
    if model_start is None:
        raise ValueError(f"{path}: no 'Model:' line")
    n_params = None
    model_lines = []
    for i in range(model_start, ranges["Starting Values"][0] - 1):
        text = lines[i].removeprefix("Model:").strip()
        if not text:
            continue
        if "Starting" in text:
            break
        m = _NPARAMS_RE.match(text)
        if m:
            n_params = int(m.group(1))
            continue
        if n_params is not None:  # formula lines follow the parameter count
            model_lines.append(text)
    if n_params is None:
        raise ValueError(f"{path}: no 'N Parameters' line in the model block")

    difficulty = next((m.group(1) for ln in lines[:40] if (m := _DIFFICULTY_RE.search(ln))), "")

    # Parameter table: "b1 = start1 start2 certified std" on the starting-value lines.
    lo, hi = ranges["Starting Values"]
    rows = []
    for lineno in range(lo, hi + 1):
        m = _PARAM_RE.match(lines[lineno - 1])
        if not m:
            raise ValueError(f"{path}:{lineno}: expected 'bK = ...', got {lines[lineno - 1]!r}")
        if int(m.group(1)) != len(rows) + 1:
            raise ValueError(f"{path}:{lineno}: parameters out of order")
        toks = m.group(2).split()
        if len(toks) != 4:
            raise ValueError(f"{path}:{lineno}: expected 4 numbers, got {toks}")
        rows.append([_float(t) for t in toks])
    table = np.asarray(rows, dtype=np.float64)

    # Certified residual sum of squares lies in the certified-values range after the table.
    lo_c, hi_c = ranges["Certified Values"]
    rss = None
    for lineno in range(lo_c, hi_c + 1):
        ln = lines[lineno - 1]
        if ln.startswith("Residual Sum of Squares:"):
            rss = _float(ln.split(":")[1])
    if rss is None:
        raise ValueError(f"{path}: no 'Residual Sum of Squares:' in lines {lo_c}-{hi_c}")

    # Data block; the column header is on the line before it ("Data:  y  x" or "y  x1  x2").
    lo_d, hi_d = ranges["Data"]
    columns = lines[lo_d - 2].removeprefix("Data:").split()
    if not columns or columns[0] != "y":
        raise ValueError(f"{path}:{lo_d - 1}: expected a 'Data: y x ...' column header")
    data = np.asarray(
        [[_float(t) for t in lines[k - 1].split()] for k in range(lo_d, hi_d + 1)],
        dtype=np.float64,
    )
    if data.shape[1] != len(columns):
        raise ValueError(f"{path}: data has {data.shape[1]} columns, header says {columns}")
    y = data[:, 0]
    x = data[:, 1] if data.shape[1] == 2 else data[:, 1:]

    return NistProblem(
        name=name,
        difficulty=difficulty,
        n_params=n_params,
        model_text="\n".join(model_lines),
        start1=table[:, 0],
        start2=table[:, 1],
        certified=table[:, 2],
        certified_std=table[:, 3],
        certified_rss=rss,
        y=y,
        x=x,
    )


def load_all(directory: str | pathlib.Path) -> dict[str, NistProblem]:
    """Every known problem in ``directory`` (``shared/data/nist_strd``), keyed by name."""
    directory = pathlib.Path(directory)
    return {name: load(directory / f"{name}.dat") for name in NAMES}


def log_relative_error(value, reference) -> np.ndarray:
    """NIST's LRE, ``-log10(|value - reference| / |reference|)``, elementwise, capped at 15.

    An exact match gives 15 (the cap); a reference of 0 uses the absolute error.
    """
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    err = np.abs(value - reference)
    scale = np.where(reference == 0, 1.0, np.abs(reference))
    with np.errstate(divide="ignore"):
        lre = -np.log10(err / scale)
    return np.minimum(np.where(np.isfinite(lre) | (err == 0), lre, 0.0), 15.0)


# --------------------------------------------------------------------------- solver settings

# Settings for jaxnlls.LevenbergMarquardt per problem, shared by tests/test_nist.py and
# bench/nist.py. The default is plain LM (identity damping) with tight tolerances; every
# exception says why. Keys are (name, start); a bare name applies to both starts.
DEFAULT_SETTINGS = {"scaled": False, "max_steps": 1000}
SETTINGS: dict[str | tuple[str, int], dict] = {
    # Parameters spanning 7 (Hahn1), 8 (Roszman1) and 11 (Nelson) orders of magnitude: plain LM
    # also reaches >= 10 digits, but Marquardt scaling needs 2-4x fewer steps.
    "Hahn1": {"scaled": True},
    "Nelson": {"scaled": True},
    "Roszman1": {"scaled": True},
}


def solver_settings(name: str, start: int) -> dict:
    """``{"scaled": bool, "max_steps": int}`` for problem ``name`` from start ``start``."""
    out = dict(DEFAULT_SETTINGS)
    out.update(SETTINGS.get(name, {}))
    out.update(SETTINGS.get((name, start), {}))
    return out
