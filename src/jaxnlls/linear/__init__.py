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
from ._blocksparse import (
    BlockLayout as BlockLayout,
    BlockSparseJacobian as BlockSparseJacobian,
    BlockSparseLinearization as BlockSparseLinearization,
)
from ._pcg import BlockJacobiPCG as BlockJacobiPCG
from ._schur import SchurComplement as SchurComplement
from ._sparse import SparseCholesky as SparseCholesky
