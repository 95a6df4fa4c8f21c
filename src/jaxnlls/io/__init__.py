"""File readers and writers (host-side numpy): g2o/TORO pose graphs and BAL problems.

The readers import only numpy and return plain dataclasses. ``pose_graph_to_factor_graph``,
``bal_to_factor_graph``, ``chordal_initial_values``, ``poses_to_group``, ``group_to_poses``,
``PoseSE2`` and ``PoseSE3`` (loaded lazily, they need JAX) turn them into
:class:`jaxnlls.graph.FactorGraph` s and their values. Every
reader raises :class:`FormatError` (a ``ValueError``) naming the file, the line and the record
tag on bad input.
"""

from typing import TYPE_CHECKING

from ._bal import BALProblem as BALProblem
from ._bal import read_bal as read_bal
from ._bal import rodrigues_rotate as rodrigues_rotate
from ._bal import write_bal as write_bal
from ._errors import FormatError as FormatError
from ._pose_graph import INFORMATION_FLOOR as INFORMATION_FLOOR
from ._pose_graph import INFORMATION_RTOL as INFORMATION_RTOL
from ._pose_graph import PoseGraph as PoseGraph
from ._pose_graph import project_to_psd as project_to_psd
from ._pose_graph import read_g2o as read_g2o
from ._pose_graph import read_pose_graph as read_pose_graph
from ._pose_graph import read_toro as read_toro
from ._pose_graph import write_g2o as write_g2o
from ._pose_graph import wxyz_to_xyzw as wxyz_to_xyzw
from ._pose_graph import xyzw_to_wxyz as xyzw_to_wxyz

if TYPE_CHECKING:
    from ._to_graph import PoseSE2 as PoseSE2
    from ._to_graph import PoseSE3 as PoseSE3
    from ._to_graph import bal_to_factor_graph as bal_to_factor_graph
    from ._to_graph import chordal_initial_values as chordal_initial_values
    from ._to_graph import group_to_poses as group_to_poses
    from ._to_graph import pose_graph_to_factor_graph as pose_graph_to_factor_graph
    from ._to_graph import poses_to_group as poses_to_group

_LAZY = {
    "PoseSE2",
    "PoseSE3",
    "pose_graph_to_factor_graph",
    "bal_to_factor_graph",
    "chordal_initial_values",
    "poses_to_group",
    "group_to_poses",
}


def __getattr__(name: str):
    # The factor-graph builders need JAX; import them on first use so that the readers stay
    # importable with numpy alone (bench/gtsam_reference.py runs them in another venv).
    if name in _LAZY:
        from . import _to_graph

        return getattr(_to_graph, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
