"""Where a lost track looks for its object again: the hypotheses of the wider search, and the choice among refined
recovery hypotheses by how well their silhouettes fit the detections' masks.

Why the masks choose rather than the refiner's score: on real photos a refiner's score tells a pose from one turned
far about a nearly symmetric outline badly. On the LM-O sequence (``benchmarks/bench_track.py --gt-detections``,
session 34's per-frame rows, default mode) 82 of the 189 recoveries took a pose turned by more than 60°, whose fitted
occlusion-aware IoU with the detection's mask was then mostly 0.7–0.93 against 0.96–0.98 at the right pose, and the
track kept it for dozens of frames. A detector's mask outlines the visible object to the pixel, so among hypotheses
that all pass the score test the one whose silhouette fits it best is taken
(:attr:`~meshpose.track.config.TrackerConfig.recover_rank`; the figures that chose it are there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from meshpose.coarse.mask_fit import MaskFitConfig, fit_many_to_mask, occluder_mask, silhouette_area
from meshpose.coarse.score import box_iou
from meshpose.geometry.crop import object_box
from meshpose.geometry.lie import perturb_pose
from meshpose.types import Camera, Detection, ObjectModel, Observation, Pose

__all__ = ["MaskRanked", "detection_overlaps", "rank_by_mask", "search_hypotheses", "too_hidden"]


def search_hypotheses(base: Pose, count: int, rot_deg: float, trans_m: float, seed: int) -> list[Pose]:
    """``base`` and ``count`` copies of it turned by ``rot_deg`` (random axis) and shifted by ``trans_m`` metres,
    every second copy by half of both (a pose found near the last one is the likelier).

    Args:
        base: single ``cam_from_obj`` pose.
        count: perturbed copies.
        rot_deg: exact rotation of the full-radius copies, degrees.
        trans_m: translation of the full-radius copies, metres.
        seed: seed of the random axes (the same seed gives the same hypotheses).
    """
    gen = torch.Generator().manual_seed(seed)
    hyps = [base]
    for k in range(count):
        scale = 1.0 if k % 2 == 0 else 0.5
        hyps.append(perturb_pose(base, math.radians(rot_deg * scale), trans_m * scale, gen))
    return hyps


@dataclass(frozen=True, eq=False)
class MaskRanked:
    """A refined hypothesis after its fit to a detection's mask.

    Args:
        index: its index among the candidates given to :func:`rank_by_mask`.
        iou: the fitted silhouette's occlusion-aware IoU with the mask (``-1``: it could not be fitted).
        pose: the fitted single pose (the candidate itself when it could not be fitted).
    """

    index: int
    iou: float
    pose: Pose


def detection_overlaps(camera: Camera, model: ObjectModel, pose: Pose, detections: Sequence[Detection]) -> list[float]:
    """IoU of the box of ``model`` projected at ``pose`` (from a sample of ≤ ~256 of its points) with each
    detection's box; all 0 for a pose that reaches the camera plane (or is not finite): no box to compare."""
    try:
        box = object_box(camera, pose.reshape(), model.points[:: max(1, len(model.points) // 256)])
    except ValueError:
        return [0.0] * len(detections)
    return [box_iou(box, d.box_xyxy()) for d in detections]


def rank_by_mask(
    obs: Observation,
    model: ObjectModel,
    candidates: Sequence[Pose],
    detections: Sequence[Detection],
    config: MaskFitConfig | None = None,
) -> list[MaskRanked]:
    """Fit each candidate pose of ``model`` to the mask of the detection of its object that its projected box
    overlaps most (if any overlaps it), and rank them by the fitted IoU (best first; the other detections' masks
    count as possible occluders, :func:`~meshpose.coarse.mask_fit.occluder_masks`).

    Args:
        obs: the frame.
        model: the object.
        candidates: single ``cam_from_obj`` poses in front of the camera.
        detections: the frame's detections (any objects; those of ``model`` need masks to fit to).
        config: the fit's options.

    Returns:
        One :class:`MaskRanked` per candidate, highest IoU first (ties keep the candidates' order); candidates with
        no detection of their object to fit to, or that cannot be fitted, come last with ``iou = -1``.
    """
    dets = list(detections)
    mine = [k for k, d in enumerate(dets) if d.obj_id == model.obj_id and d.mask is not None]
    by_det: dict[int, list[int]] = {}
    for c, pose in enumerate(candidates):
        ious = detection_overlaps(obs.camera, model, pose, [dets[k] for k in mine])
        if ious and max(ious) > 0:
            by_det.setdefault(mine[int(np.argmax(ious))], []).append(c)
    ranked = {c: MaskRanked(c, -1.0, candidates[c].reshape()) for c in range(len(candidates))}
    for k, cs in by_det.items():
        occ = occluder_mask(dets, k)
        try:
            fits = fit_many_to_mask(obs, model, dets[k], [candidates[c] for c in cs], occluders=occ, config=config)
        except ValueError:
            continue
        for c, fit in zip(cs, fits, strict=True):
            ranked[c] = MaskRanked(c, float(fit.iou), fit.pose.reshape())
    return sorted(ranked.values(), key=lambda r: (-r.iou, r.index))


def too_hidden(camera: Camera, model: ObjectModel, det: Detection, pose: Pose, need: float) -> bool:
    """Whether the detection's mask holds less than ``need`` of the object's whole silhouette at ``pose``
    (:func:`~meshpose.coarse.mask_fit.silhouette_area`): the object mostly hidden, so that a re-estimate from the
    part that shows is a guess. ``False`` without a mask, with ``need <= 0`` or for a pose reaching the camera
    plane."""
    if need <= 0 or det.mask is None:
        return False
    try:
        full = silhouette_area(camera, model, pose.reshape())
    except ValueError:
        return False
    return full > 0 and float(det.mask.sum()) < need * full
