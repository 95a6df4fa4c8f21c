"""Linearizations and linear solvers for the Gauss-Newton step."""

from ._dense import is_rank_deficient as is_rank_deficient, psd_solve as psd_solve
from ._linearization import (
    AbstractLinearization as AbstractLinearization,
    DenseLinearization as DenseLinearization,
    MatrixFreeLinearization as MatrixFreeLinearization,
)
from ._step import (
    CG as CG,
    QR as QR,
    AbstractStepSolver as AbstractStepSolver,
    DenseCholesky as DenseCholesky,
)
