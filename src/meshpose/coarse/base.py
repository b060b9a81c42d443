"""The estimator seam: the protocol every coarse pose estimator implements, and the checks they share.

A coarse estimator finds the pose of an object from a 2D detection (a box, optionally a modal mask) and the
object's mesh, with no initial pose. It returns, per detection, an :class:`~meshpose.types.EstimateResult`: the
pose hypotheses best first, or a :class:`~meshpose.types.Failure` (code + message) for that detection alone, so
that one bad detection never costs the others of the image.

``DESIGN.md`` gave the seam as ``list[list[PoseEstimate]]``; it returns :class:`EstimateResult` per detection
instead, because a detection that fails needs its reason (the issue's "clear per-detection failures") and a list
of poses has no place for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from meshpose.types import (
    Detection,
    EstimateResult,
    Failure,
    FailureCode,
    ObjectModel,
    Observation,
    PoseEstimate,
)

__all__ = ["Estimator", "check_detection", "distinct_poses", "estimate_each"]

log = logging.getLogger(__name__)

#: A box narrower or lower than this (pixels, after clipping to the image) is no detection.
MIN_BOX_PX = 4.0
#: A mask with fewer pixels than this is empty.
MIN_MASK_PX = 16


@runtime_checkable
class Estimator(Protocol):
    """A coarse pose estimator (``meshpose estimate --method``).

    Attributes:
        name: the preset name.
        modality: what it needs: ``"rgb"``, or ``"rgbd"`` (refuses an observation without depth).
    """

    name: str
    modality: Literal["rgb", "rgbd"]

    def estimate(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        detections: Sequence[Detection],
        *,
        hypotheses: int = 1,
    ) -> list[EstimateResult]:
        """Pose hypotheses for each detection.

        Args:
            obs: the image (and depth for ``rgbd``).
            objects: the models of the objects the detections may name (matched by ``obj_id``).
            detections: the 2D detections in ``obs``.
            hypotheses: hypotheses wanted per detection (at most; fewer when the method finds fewer).

        Returns:
            One :class:`EstimateResult` per detection, in order.
        """
        ...


def check_detection(obs: Observation, objects: dict[int, ObjectModel], det: Detection) -> Failure | None:
    """Why ``det`` cannot be used in ``obs`` (``None`` when it can).

    Checks: the object is known; the box is finite, of positive size and overlaps the image by at least
    :data:`MIN_BOX_PX` pixels each way; a mask, when given, has the image's size and at least :data:`MIN_MASK_PX`
    pixels.

    Example:
        >>> from meshpose.types import Camera
        >>> cam = Camera(np.array([[500.0, 0, 32], [0, 500.0, 24], [0, 0, 1]]), 64, 48)
        >>> obs = Observation(np.zeros((48, 64, 3), np.uint8), cam)
        >>> check_detection(obs, {}, Detection(3, np.array([0.0, 0, 10, 10]))).code.value
        'unknown_object'
    """
    if det.obj_id not in objects:
        known = ", ".join(str(k) for k in sorted(objects)) or "none"
        return Failure(FailureCode.UNKNOWN_OBJECT, f"object {det.obj_id} has no model (known: {known})")
    box = np.asarray(det.bbox, dtype=np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        return Failure(FailureCode.BAD_DETECTION, f"bbox must be 4 finite numbers [x, y, w, h], got {det.bbox!r}")
    w_img, h_img = obs.camera.width, obs.camera.height
    x0, y0, x1, y1 = det.box_xyxy()
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w_img)), min(y1, float(h_img))
    if cx1 - cx0 < MIN_BOX_PX or cy1 - cy0 < MIN_BOX_PX:
        return Failure(
            FailureCode.BAD_DETECTION,
            f"bbox [x={box[0]:.1f}, y={box[1]:.1f}, w={box[2]:.1f}, h={box[3]:.1f}] is (almost) off the "
            f"{w_img}x{h_img} image or has no area",
        )
    if det.mask is not None:
        if det.mask.shape != (h_img, w_img):
            return Failure(
                FailureCode.BAD_DETECTION, f"mask is {det.mask.shape[1]}x{det.mask.shape[0]}, image {w_img}x{h_img}"
            )
        n = int(np.count_nonzero(det.mask))
        if n < MIN_MASK_PX:
            return Failure(FailureCode.BAD_DETECTION, f"mask is empty ({n} pixels, need {MIN_MASK_PX})")
    return None


def distinct_poses(
    R: np.ndarray,
    t: np.ndarray,
    count: int,
    max_t: float,
    max_deg: float,
    symmetries: np.ndarray | None = None,
) -> list[int]:
    """The hypotheses an estimator keeps from its ranked candidates: greedily, in the given order (best first), each
    candidate that is not within ``max_deg`` degrees *and* ``max_t`` metres of one already kept (under one of the
    object's ``symmetries``), until ``max(1, count)`` are kept.

    Args:
        R: ``(N, 3, 3)``; t: ``(N, 3)`` the candidate poses (``cam_from_obj``, metres), best first.
        count: hypotheses wanted.
        max_t: translation tolerance, metres.
        max_deg: rotation tolerance, degrees.
        symmetries: ``(S, 4, 4)`` ``obj_from_obj`` transforms (``None``: the identity only).

    Returns:
        Indices into the candidates, in order.

    Example:
        >>> R = np.stack([np.eye(3)] * 3)
        >>> distinct_poses(R, np.array([[0, 0, 1.0], [0, 0, 1.001], [0.2, 0, 1.0]]), 3, 0.01, 15.0)
        [0, 2]
    """
    S = np.eye(4)[None] if symmetries is None else np.asarray(symmetries, np.float64)
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64)
    kept: list[int] = []
    copies: list[tuple[np.ndarray, np.ndarray]] = []  # the symmetric copies of each kept pose
    for i in range(len(R)):
        if len(kept) >= max(1, count):
            break
        close = False
        for Rs, ts in copies:
            cos = (np.einsum("sij,ij->s", Rs, R[i]) - 1.0) / 2.0
            ang = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
            if np.any((ang <= max_deg) & (np.linalg.norm(ts - t[i], axis=1) <= max_t)):
                close = True
                break
        if not close:
            kept.append(i)
            copies.append((R[i] @ S[:, :3, :3], S[:, :3, 3] @ R[i].T + t[i]))
    return kept


def estimate_each(
    obs: Observation,
    objects: Sequence[ObjectModel],
    detections: Sequence[Detection],
    one: Callable[[Detection, ObjectModel], tuple[list[PoseEstimate], Failure | None, dict]],
    *,
    method: str,
) -> list[EstimateResult]:
    """Run ``one(detection, model)`` for each detection: checks first, timing, and no failure spreading.

    A detection that fails :func:`check_detection` is not passed to ``one``. An exception inside ``one`` for one
    detection becomes that detection's :data:`~meshpose.types.FailureCode.NUMERICAL` failure (logged with its
    traceback) and the others go on.

    Args:
        obs: the observation.
        objects: the object models.
        detections: the detections.
        one: the method's per-detection work: returns ``(hypotheses best first, failure or None, info)``.
        method: the preset name (prefixes failure messages).
    """
    by_id = {m.obj_id: m for m in objects}
    out: list[EstimateResult] = []
    for det in detections:
        t0 = time.perf_counter()
        failure = check_detection(obs, by_id, det)
        hyps: list[PoseEstimate] = []
        info: dict = {}
        if failure is None:
            try:
                hyps, failure, info = one(det, by_id[det.obj_id])
            except (ValueError, RuntimeError, np.linalg.LinAlgError, FloatingPointError) as exc:
                log.warning("%s: detection of object %d failed", method, det.obj_id, exc_info=True)
                failure = Failure(FailureCode.NUMERICAL, f"{type(exc).__name__}: {exc}")
        if failure is not None:
            failure = failure.with_prefix(method)
            hyps = []
        out.append(EstimateResult(det, hyps, failure, time.perf_counter() - t0, info))
    return out
