"""Standard factors for :mod:`jaxnlls.graph` (all batchable with id arrays + stacked data).

- :func:`prior`, :func:`between` (any Lie group: SE2, SE3, SO3, Sim3; analytic Jacobians),
  :func:`between_euclidean`
- :func:`point_to_point`, :func:`point_to_plane` (registration)
- :func:`range2d`, :func:`bearing2d`, :func:`range_bearing2d` (2D landmark SLAM)
- :func:`bal_reprojection` with :class:`BalCamera` / :class:`BalPoint` (bundle adjustment)
"""

from ._bal import (
    BalCamera as BalCamera,
    BalPoint as BalPoint,
    bal_project as bal_project,
    bal_reprojection as bal_reprojection,
    rodrigues_rotate as rodrigues_rotate,
)
from ._standard import (
    bearing2d as bearing2d,
    between as between,
    between_autodiff as between_autodiff,
    between_euclidean as between_euclidean,
    point_to_plane as point_to_plane,
    point_to_point as point_to_point,
    prior as prior,
    range2d as range2d,
    range_bearing2d as range_bearing2d,
)
