"""jaxnlls: differentiable nonlinear least squares in JAX.

``jaxnlls.solve(residual_fn, init, params)`` minimizes ``½‖r(x, params)‖²`` over pytrees whose
leaves may be Lie-group elements, and differentiates through the solution.
"""

from . import batching as batching, linear as linear, manifold as manifold, testing as testing
from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    DirectLossAdjoint as DirectLossAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    OneStepAdjoint as OneStepAdjoint,
    TruncatedAdjoint as TruncatedAdjoint,
    UnrollAdjoint as UnrollAdjoint,
)
from ._solution import RESULTS as RESULTS, Solution as Solution, Stats as Stats
from ._solve import solve as solve
from .linear import CG as CG, QR as QR, DenseCholesky as DenseCholesky
from .solvers import (
    AbstractSolver as AbstractSolver,
    Dogleg as Dogleg,
    GaussNewton as GaussNewton,
    LevenbergMarquardt as LevenbergMarquardt,
)

__version__ = "0.1.0"
