"""What a tracker reports per object and frame (:class:`TrackResult`, its status and failure codes), and
:func:`check_frame`, which tells a frame that cannot be tracked in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from meshpose.types import Observation, Pose

__all__ = ["BAD_FRAME", "LOST", "LOW_SCORE", "OUTSIDE_IMAGE", "REFINE", "TrackResult", "TrackStatus", "check_frame"]

TrackStatus = Literal["tracking", "lost", "recovered", "failed"]

#: Failure codes of a track's frame (a refiner's own codes, e.g. ``"not_visible"``, pass through unchanged).
REFINE = "refine"  # the refiner raised on the frame
LOW_SCORE = "low_score"  # refined, but the score is under the threshold
OUTSIDE_IMAGE = "outside_image"  # the predicted pose leaves the image (or goes behind the camera)
BAD_FRAME = "bad_frame"  # the frame could not be used (unreadable image, NaN depth)
LOST = "lost"  # the track is lost and did not come back in this frame


@dataclass(frozen=True)
class TrackResult:
    """One track's outcome on one frame.

    Args:
        track_id: the track (``Tracker.add``'s return value; ``start`` numbers them from 0 in order).
        obj_id: its object.
        pose: the pose reported for the frame (refined; for a lost track or a frame that could not be used, the
            prediction or the last good pose).
        score: the refiner's score of ``pose`` (0 when there is none).
        status: ``"tracking"``, ``"recovered"`` (lost before, found again in this frame), ``"failed"`` (a bad
            frame of a track not lost yet), or ``"lost"``.
        code: why the frame was bad (``None`` for a good one): ``"low_score"``, ``"outside_image"``,
            ``"bad_frame"``, ``"refine"`` (the refiner raised), ``"lost"``, or the refiner's own failure code.
        message: the reason for people.
        time_s: seconds this frame cost the track (its share of the joint refinement plus its own recovery).
        info: diagnostics (``"recovery"``: what recovered it, ``"hypotheses"`` tried, ``"predicted"`` pose; with
            detections ``"box_iou"``, ``"mask_iou"``, ``"mask_cover"`` and ``"fitted"`` of the mask fit,
            ``"redetected"`` and the ``"redetect_scores"`` of the tracked and the re-estimated pose…).
    """

    track_id: int
    obj_id: int
    pose: Pose
    score: float
    status: TrackStatus
    code: str | None = None
    message: str | None = None
    time_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the frame went well (tracking or recovered)."""
        return self.status in ("tracking", "recovered")


def check_frame(obs: Observation) -> str | None:
    """Why a frame cannot be used (``None`` when it can): an image that is not ``H×W×3`` of the camera's size, or a
    depth map without a single valid pixel (a broken sensor frame: :class:`~meshpose.types.Observation` reads
    NaN/inf depth as missing, 0; a frame whose depth is all NaN is no frame to track in).

    Example:
        >>> from meshpose.types import Camera
        >>> cam = Camera(np.array([[50.0, 0, 8], [0, 50.0, 6], [0, 0, 1]]), 16, 12)
        >>> depth = np.full((12, 16), np.nan, np.float32)
        >>> check_frame(Observation(np.zeros((12, 16, 3), np.uint8), cam, depth=depth))
        'depth has no valid pixel (all missing, NaN or inf)'
    """
    rgb = np.asarray(obs.rgb)
    w, h = obs.camera.width, obs.camera.height
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != (h, w):
        return f"image is {tuple(rgb.shape)}, expected ({h}, {w}, 3)"
    if obs.depth is not None:
        d = np.asarray(obs.depth)
        if not np.any(np.isfinite(d) & (d > 0)):
            return "depth has no valid pixel (all missing, NaN or inf)"
    return None
