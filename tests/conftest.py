"""Shared test configuration.

x64 is on unless ``JAXNLLS_TEST_X64=0``; CI runs the fast subset a second time with it off.
Rank and dtype promotion are strict so silent broadcasting or up-casting is caught.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax
import pytest

X64 = os.environ.get("JAXNLLS_TEST_X64", "1") != "0"
jax.config.update("jax_enable_x64", X64)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "standard")

try:  # hypothesis profile for CI: deterministic, no deadline, few examples
    from hypothesis import settings

    settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True)
    settings.load_profile("ci")
except ImportError:  # pragma: no cover
    pass

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclasses.dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    grad_rtol: float
    grad_atol: float


@pytest.fixture
def tol() -> Tol:
    if X64:
        return Tol(rtol=1e-8, atol=1e-10, grad_rtol=1e-6, grad_atol=1e-8)
    return Tol(rtol=1e-4, atol=1e-5, grad_rtol=1e-2, grad_atol=1e-3)


@pytest.fixture
def x64() -> bool:
    return X64


@pytest.fixture
def requires_x64():
    if not X64:
        pytest.skip("finite-difference reference needs float64 (JAXNLLS_TEST_X64=0 run)")


@pytest.fixture
def getkey():
    keys = iter(jax.random.split(jax.random.key(0), 10_000))
    return lambda: next(keys)


@pytest.fixture
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (../shared/data)")
    return SHARED_DATA
