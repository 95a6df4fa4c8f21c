"""jaxnlls: differentiable nonlinear least squares in JAX.

``jaxnlls.solve(residual_fn, init, params)`` minimizes ``½‖r(x, params)‖²`` over pytrees whose
leaves may be Lie-group elements, and differentiates through the solution.
"""

from . import (
    batching as batching,
    factors as factors,
    graph as graph,
    io as io,
    lie as lie,
    linear as linear,
    manifold as manifold,
    robust as robust,
    testing as testing,
    weights as weights,
)
from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    DirectLossAdjoint as DirectLossAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    OneStepAdjoint as OneStepAdjoint,
    TruncatedAdjoint as TruncatedAdjoint,
    UnrollAdjoint as UnrollAdjoint,
)
from ._compile import compiler_options as compiler_options
from ._solution import RESULTS as RESULTS, Solution as Solution, Stats as Stats
from ._solve import solve as solve
from ._sparsity import JacobianSparsity as JacobianSparsity
from .graph import FactorGraph as FactorGraph, Var as Var, VarValues as VarValues, factor as factor
from .linear import CG as CG, QR as QR, DenseCholesky as DenseCholesky
from .solvers import (
    AbstractSolver as AbstractSolver,
    Dogleg as Dogleg,
    GaussNewton as GaussNewton,
    LevenbergMarquardt as LevenbergMarquardt,
)

__version__ = "0.1.0"
