"""Core data types of meshpose: cameras, poses, object models, observations and results.

Conventions (see ``DESIGN.md``; they are fixed here and never re-decided elsewhere):

* Units are metres everywhere.
* Cameras are OpenCV pinholes (x right, y down, z forward). Pixel ``(u, v)`` with integer coordinates is the
  *centre* of a pixel, so an image of ``width`` pixels spans ``[-0.5, width - 0.5]``.
* A pose is ``cam_from_obj``: ``x_cam = R @ x_obj + t``.
* The se(3) tangent order is ``[v, ω]`` (translation part first, then the rotation vector), and
  ``Pose.exp(xi)`` is the true SE(3) exponential (``t = V(ω) v``).

The types are frozen dataclasses of arrays/tensors; none is an ``nn.Module`` and none does work at import time.
This package sits at the bottom of the import graph: it imports no other meshpose module. Submodules by concern:
:mod:`~meshpose.types.camera`, :mod:`~meshpose.types.pose` (with the SE(3) maths), :mod:`~meshpose.types.model`
(objects and observations), :mod:`~meshpose.types.results`, :mod:`~meshpose.types.detection`; everything is
importable from ``meshpose.types``.
"""

from meshpose.types.camera import Camera
from meshpose.types.detection import Detection, EstimateResult
from meshpose.types.model import ObjectModel, Observation
from meshpose.types.pose import Pose, se3_exp, se3_log, skew
from meshpose.types.results import Failure, FailureCode, PoseEstimate, RefineInfo, RefineResult

__all__ = [
    "Camera",
    "Detection",
    "EstimateResult",
    "Failure",
    "FailureCode",
    "ObjectModel",
    "Observation",
    "Pose",
    "PoseEstimate",
    "RefineInfo",
    "RefineResult",
    "se3_exp",
    "se3_log",
    "skew",
]
