"""Matrix Lie groups for jaxnlls: SO(2), SE(2), SO(3), SE(3), Sim(3).

Conventions (``docs/conventions.md``): one ``params`` array per element with leading batch axes;
SO(3) quaternions stored ``(w, x, y, z)``; right perturbation ``x ⊕ δ = x · Exp(δ)``; tangent
order (translation, rotation[, log-scale]).
"""

from ._base import AbstractLieGroup as AbstractLieGroup, interpolate as interpolate
from ._se2 import SE2 as SE2
from ._se3 import SE3 as SE3
from ._sim3 import Sim3 as Sim3
from ._so2 import SO2 as SO2
from ._so3 import SO3 as SO3

__all__ = ["AbstractLieGroup", "SE2", "SE3", "SO2", "SO3", "Sim3", "interpolate"]
