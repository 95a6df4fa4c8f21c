"""Gauss-Newton, Levenberg-Marquardt and dogleg solvers."""

from ._base import (
    AbstractSolver as AbstractSolver,
    Dogleg as Dogleg,
    GaussNewton as GaussNewton,
    LevenbergMarquardt as LevenbergMarquardt,
)
