"""2D detections (what a coarse estimator starts from) and the per-detection result of an estimator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshpose.types.results import Failure, PoseEstimate

__all__ = ["Detection", "EstimateResult"]


@dataclass(frozen=True, eq=False)
class Detection:
    """One 2D detection of an object in an image (a box from a detector, a click, or ground truth).

    Args:
        obj_id: the object (category) id.
        bbox: ``(4,)`` float ``[x, y, w, h]`` in pixels, BOP/COCO convention: ``(x, y)`` the top-left corner of the
            box, ``w, h`` its size (the pixel grid's edges, so a box covering pixels 0…9 is ``[0, 0, 10, 10]``
            whatever the convention that pixel centres are integers).
        mask: ``(H, W)`` bool modal mask (the visible part) over the whole image, or ``None`` (a box only).
        score: detector confidence (1 for ground truth).
        scene_id, im_id: where it comes from (kept for results files; ``-1`` when unknown).

    Example:
        >>> d = Detection(obj_id=5, bbox=np.array([10.0, 20.0, 30.0, 40.0]))
        >>> d.box_xyxy().tolist()
        [10.0, 20.0, 40.0, 60.0]
    """

    obj_id: int
    bbox: np.ndarray
    mask: np.ndarray | None = None
    score: float = 1.0
    scene_id: int = -1
    im_id: int = -1

    def box_xyxy(self) -> np.ndarray:
        """``(4,)`` ``[x0, y0, x1, y1]`` pixel-edge coordinates of the box."""
        x, y, w, h = np.asarray(self.bbox, dtype=np.float64)
        return np.array([x, y, x + w, y + h])


@dataclass(frozen=True, eq=False)
class EstimateResult:
    """What a coarse estimator found for one detection.

    Args:
        detection: the detection.
        hypotheses: pose hypotheses, best first (empty when the estimator failed on this detection).
        failure: why it failed (``None`` when it did not); the other detections of the image are unaffected.
        time_s: seconds spent on this detection.
        info: method-specific diagnostics (e.g. per-stage timings, the template ids used).
    """

    detection: Detection
    hypotheses: list[PoseEstimate]
    failure: Failure | None = None
    time_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether at least one hypothesis was found."""
        return self.failure is None and len(self.hypotheses) > 0
