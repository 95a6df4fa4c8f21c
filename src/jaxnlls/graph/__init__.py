"""Sparse factor graphs: typed variables, factors, ``FactorGraph.build`` and its solve.

::

    from jaxnlls.graph import FactorGraph, Var, VarValues, factor
    from jaxnlls.lie import SE2

    class Pose(Var, group=SE2): ...

    graph = FactorGraph.build([between(Pose(ia), Pose(ib), z_ab, sqrt_info_ab)])
    sol = graph.solve(VarValues.make({Pose(ids): poses0}))

See ``docs``/STYLE section 6 for the design (one ``vmap`` per factor group, Jacobian blocks in
the tangent space, the sparsity pattern computed once on the host).
"""

from ._factor import Factor as Factor, FactorType as FactorType, factor as factor
from ._factor_graph import (
    DENSE_MAX as DENSE_MAX,
    FactorGraph as FactorGraph,
    auto_linear_solver as auto_linear_solver,
    default_solver as default_solver,
)
from ._graph import (
    FactorGroup as FactorGroup,
    GraphStructure as GraphStructure,
    stack_data as stack_data,
)
from ._initialize import chordal_initialization as chordal_initialization
from ._lm import GraphLevenbergMarquardt as GraphLevenbergMarquardt
from ._var import Var as Var, VarValues as VarValues
