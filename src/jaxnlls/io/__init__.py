"""File readers and writers (host-side numpy): g2o/TORO pose graphs and BAL problems.

Nothing here imports JAX: the readers return plain numpy dataclasses that the CLI, benches and
user code turn into factor graphs. Every reader raises :class:`FormatError` (a ``ValueError``)
naming the file, the line and the record tag on bad input.
"""

from ._bal import (
    BALProblem as BALProblem,
)
from ._bal import (
    read_bal as read_bal,
)
from ._bal import (
    rodrigues_rotate as rodrigues_rotate,
)
from ._errors import FormatError as FormatError
from ._pose_graph import (
    INFORMATION_FLOOR as INFORMATION_FLOOR,
)
from ._pose_graph import (
    INFORMATION_RTOL as INFORMATION_RTOL,
)
from ._pose_graph import (
    PoseGraph as PoseGraph,
)
from ._pose_graph import (
    project_to_psd as project_to_psd,
)
from ._pose_graph import (
    read_g2o as read_g2o,
)
from ._pose_graph import (
    read_pose_graph as read_pose_graph,
)
from ._pose_graph import (
    read_toro as read_toro,
)
from ._pose_graph import (
    write_g2o as write_g2o,
)
from ._pose_graph import (
    wxyz_to_xyzw as wxyz_to_xyzw,
)
from ._pose_graph import (
    xyzw_to_wxyz as xyzw_to_wxyz,
)
