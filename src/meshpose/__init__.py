"""meshpose: 6D pose estimation and refinement of novel rigid objects by render-and-compare.

Import what you need from the subpackages; importing ``meshpose`` itself loads only the core types.
"""

from meshpose.types import (
    Camera,
    Detection,
    EstimateResult,
    ObjectModel,
    Observation,
    Pose,
    PoseEstimate,
    RefineInfo,
    RefineResult,
)

__version__ = "0.1.0"

__all__ = [
    "Camera",
    "Detection",
    "EstimateResult",
    "ObjectModel",
    "Observation",
    "Pose",
    "PoseEstimate",
    "RefineInfo",
    "RefineResult",
    "__version__",
]
