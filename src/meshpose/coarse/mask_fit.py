"""Fit a coarse pose's silhouette to its detection mask: a derivative-free search of the 6 pose coordinates that
maximises the occlusion-aware IoU of the rendered silhouette with the detection's modal mask.

A monocular pose from 2D-3D matches measures the distance worst (a one-pixel error in the apparent size of a 60 px
object is 2 % of its depth) and its rotation only as well as the matches; a detector's mask outlines the visible
object to the pixel. Which pixels the mask cannot speak for:

* where **another detection's mask** lies, the object may be hidden behind that object — a rendered silhouette
  pixel there is neither right nor wrong (not counted in the union);
* **outside the image** nothing is observed (not counted either).

``IoU' = |S ∩ M| / |(S \\ U) ∪ M|`` with ``S`` the rendered silhouette, ``M`` the detection mask and ``U`` the
pixels that cannot speak. The search is a compass (pattern) search: from the current pose, every coordinate is
stepped both ways — image-plane shift (crop pixels, at the object's distance), distance along the viewing ray (log
factor), rotation about the camera axes through the object origin — all ``12`` neighbours rendered in one batched
call; the best is taken if it raises ``IoU'``, else the steps halve, until they are small. Written here rather than
taken from a library because the objective is a rendered, piecewise-constant IoU (no gradient; a batched GL
render per step is the cost) and the 6 coordinates have natural scales that a generic optimiser would not know.
Several hypotheses of one detection are searched side by side (:func:`fit_many_to_mask`: one batched render per
step for all), and the silhouettes come from a decimated copy of the mesh (``MaskFitConfig.render_faces``).

Measured (closing note of issue 18, ``docs/picopose.md``): on held-out photoreal scenes of LM-O's meshes and on
LM-O's photos with perfect detections, it moved the coarse pose's MSSD recall most (the distance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from meshpose.coarse.score import SCORE_CROP, detection_crop_box
from meshpose.geometry.crop import crop_image, object_box
from meshpose.mesh.model import light_model
from meshpose.render.base import Renderer, only_outputs
from meshpose.types import Camera, Detection, ObjectModel, Observation, Pose

__all__ = [
    "MaskFitConfig",
    "MaskFitResult",
    "fit_many_to_mask",
    "fit_to_mask",
    "occluder_mask",
    "occluder_masks",
    "silhouette_area",
]


@dataclass(frozen=True)
class MaskFitConfig:
    """Options of :func:`fit_to_mask`.

    Args:
        size: side of the square crop around the detection (padding as the hypothesis score's), pixels.
        shift_px: first image-plane step, crop pixels.
        log_depth: first distance step, as ``log`` of the factor on the translation (0.04: 4 %).
        rotation_rad: first rotation step about each camera axis, radians.
        min_shift_px: the search stops when the shift step falls below this (all steps halve together).
        max_iterations: at most this many batched renders.
        fit_distance: also search the distance along the viewing ray (off where it was measured, e.g. from an
            observed depth: the mask would only add noise to it).
        render_faces: the silhouettes are drawn from the render mesh decimated to at most this many faces
            (:func:`~meshpose.mesh.model.light_model`; 0: as it is) — at crop resolution the outline is the same
            to a fraction of a pixel, and drawing is most of the fit's cost.
    """

    size: int = SCORE_CROP
    shift_px: float = 3.0
    log_depth: float = 0.04
    rotation_rad: float = 0.05
    min_shift_px: float = 0.4
    max_iterations: int = 30
    fit_distance: bool = True
    render_faces: int = 3000

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"mask fit: size must be >= 16 px, got {self.size}")
        steps = (self.shift_px, self.log_depth, self.rotation_rad, self.min_shift_px)
        if not all(np.isfinite(s) and s > 0 for s in steps) or self.min_shift_px >= self.shift_px:
            raise ValueError("mask fit: steps must be positive and min_shift_px below shift_px")
        if self.render_faces < 0 or 0 < self.render_faces < 4:
            raise ValueError(f"mask fit: render_faces must be 0 (the mesh as it is) or >= 4, got {self.render_faces}")
        if self.max_iterations < 1:
            raise ValueError(f"mask fit: max_iterations must be >= 1, got {self.max_iterations}")


@dataclass(frozen=True, eq=False)
class MaskFitResult:
    """What :func:`fit_to_mask` found.

    Args:
        pose: the fitted single ``cam_from_obj`` pose (the given one when nothing was better).
        iou: its occlusion-aware IoU.
        iou_start: the given pose's.
        renders: batched renders spent.
        coverage: the share of the mask's pixels that the fitted silhouette covers (1 for a pose whose silhouette
            holds the whole mask — also that of an object partly hidden by something no detection outlines).
    """

    pose: Pose
    iou: float
    iou_start: float
    renders: int
    coverage: float = float("nan")


def occluder_mask(detections: Sequence[Detection], i: int) -> np.ndarray | None:
    """The union of the masks of every detection but the ``i``-th (``(H, W)`` bool): where detection ``i``'s object
    may be hidden; ``None`` when no other detection has a mask."""
    acc: np.ndarray | None = None
    for j, d in enumerate(detections):
        if j == i or d.mask is None:
            continue
        if acc is None:
            acc = np.zeros(d.mask.shape, bool)
        if d.mask.shape == acc.shape:
            acc |= d.mask
    return acc


def occluder_masks(detections: Sequence[Detection]) -> list[np.ndarray | None]:
    """:func:`occluder_mask` of every detection."""
    return [occluder_mask(detections, i) for i in range(len(detections))]


def _moved(R: np.ndarray, t: np.ndarray, p: np.ndarray, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """The pose moved by ``p = (du, dv, log k, ω)``: shift by ``(du, dv)`` crop pixels at the object's distance,
    scale the translation by ``k`` (along the ray through the origin), rotate by ``ω`` (camera axes) about the
    object origin."""
    z = float(t[2])
    t2 = np.exp(p[2]) * (t + np.array([p[0] * z / cam.K[0, 0], p[1] * z / cam.K[1, 1], 0.0]))
    return Rotation.from_rotvec(p[3:]).as_matrix() @ R, t2


def fit_to_mask(
    obs: Observation,
    model: ObjectModel,
    detection: Detection,
    pose: Pose,
    *,
    renderer: Renderer | None = None,
    occluders: np.ndarray | None = None,
    config: MaskFitConfig | None = None,
) -> MaskFitResult:
    """Search the pose whose silhouette best agrees with the detection's mask (see the module docstring).

    Args:
        obs: the observation (its camera and image size).
        model: the object.
        detection: the detection; it must have a ``mask`` ``(H, W)`` bool of the image's size.
        pose: single ``cam_from_obj`` start pose (in front of the camera).
        renderer: renders the silhouettes (default: this thread's GL renderer).
        occluders: ``(H, W)`` bool pixels where the object may be hidden (other detections' masks), or ``None``.
        config: options.

    Returns:
        The fitted pose and its IoU.

    Raises:
        ValueError: no mask of the image's size, a mismatched ``occluders``, or a pose behind the camera.
    """
    return fit_many_to_mask(obs, model, detection, [pose], renderer=renderer, occluders=occluders, config=config)[0]


def fit_many_to_mask(
    obs: Observation,
    model: ObjectModel,
    detection: Detection,
    poses: Sequence[Pose],
    *,
    renderer: Renderer | None = None,
    occluders: np.ndarray | None = None,
    config: MaskFitConfig | None = None,
) -> list[MaskFitResult]:
    """:func:`fit_to_mask` from several start poses of the same detection (e.g. its pose hypotheses), the searches
    run side by side: each step renders the candidates of every search that is still going in one batched call.
    Each search's result is the one it would reach alone (up to the rasteriser: a silhouette drawn into another
    tile of the batch may differ by a pixel — 1 of 72 fits on LM-O ended elsewhere by that).

    Args:
        obs: the observation.
        model: the object.
        detection: the detection, with a mask of the image's size.
        poses: the start poses, each a single ``cam_from_obj`` pose in front of the camera.
        renderer: see :func:`fit_to_mask`.
        occluders: see :func:`fit_to_mask`.
        config: options.

    Returns:
        One :class:`MaskFitResult` per start pose, in order.

    Raises:
        ValueError: as :func:`fit_to_mask` (a start pose behind the camera names its index).
    """
    cfg = config if config is not None else MaskFitConfig()
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    h, w = obs.camera.height, obs.camera.width
    if detection.mask is None or detection.mask.shape != (h, w):
        raise ValueError(f"mask fit: detection of object {detection.obj_id} needs a mask of the image's size {h}×{w}")
    if occluders is not None and occluders.shape != (h, w):
        raise ValueError(f"mask fit: occluders must be {h}×{w}, got {occluders.shape}")
    starts = []
    for k, pose in enumerate(poses):
        R0, t0 = (np.asarray(a, np.float64) for a in pose.numpy())
        R0, t0 = R0.reshape(3, 3), t0.reshape(3)
        if not (np.all(np.isfinite(R0)) and np.all(np.isfinite(t0)) and t0[2] > 1e-3):
            raise ValueError(
                f"mask fit: start pose {k} of object {detection.obj_id} is not finite or behind the camera"
            )
        starts.append((R0, t0))
    if not starts:
        return []
    box = detection_crop_box(detection)
    s = cfg.size
    mask = np.asarray(crop_image(detection.mask, obs.camera, box, s, s, interpolation="nearest")[0], bool)
    inside, cam = crop_image(np.ones((h, w), np.uint8), obs.camera, box, s, s, interpolation="nearest")
    silent = ~np.asarray(inside, bool)
    if occluders is not None:
        silent |= np.asarray(crop_image(occluders, obs.camera, box, s, s, interpolation="nearest")[0], bool)
    silent &= ~mask
    drawn = [light_model(model, cfg.render_faces)]
    outputs = only_outputs(renderer, ("mask",))

    area = max(int(mask.sum()), 1)

    def iou(moves: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """IoU' and coverage of start pose ``k`` moved by ``p``, for every ``(k, p)``, in one batched render."""
        Rs, ts = zip(*(_moved(*starts[k], p, cam) for k, p in moves), strict=True)
        sil = renderer.render(drawn, Pose(np.stack(Rs)[:, None], np.stack(ts)[:, None]), [cam] * len(moves), **outputs)
        m = sil.mask
        inter = (m & mask).sum((1, 2))
        union = ((m & ~silent) | mask).sum((1, 2))
        return np.asarray(inter / np.maximum(union, 1), np.float64), np.asarray(inter / area, np.float64)

    n = len(starts)
    axes = [a for a in range(6) if a != 2 or cfg.fit_distance]
    first = np.array([cfg.shift_px, cfg.shift_px, cfg.log_depth, cfg.rotation_rad, cfg.rotation_rad, cfg.rotation_rad])
    p = [np.zeros(6) for _ in range(n)]
    step = [first.copy() for _ in range(n)]
    start_iou, start_cover = iou([(k, p[k]) for k in range(n)])
    best = [float(v) for v in start_iou]
    cover = [float(v) for v in start_cover]  # the coverage of each search's best pose
    renders = [1] * n
    while True:
        going = [k for k in range(n) if renders[k] < cfg.max_iterations and step[k][0] >= cfg.min_shift_px]
        if not going:
            break
        cands = {k: [p[k] + sgn * step[k][a] * np.eye(6)[a] for a in axes for sgn in (1.0, -1.0)] for k in going}
        vals, covs = (v.reshape(len(going), -1) for v in iou([(k, c) for k in going for c in cands[k]]))
        for row, row_cover, k in zip(vals, covs, going, strict=True):
            renders[k] += 1
            j = int(np.argmax(row))
            if row[j] > best[k] + 1e-4:
                best[k], cover[k], p[k] = float(row[j]), float(row_cover[j]), cands[k][j]
            else:
                step[k] = step[k] / 2
    out = []
    for k in range(n):
        R, t = _moved(*starts[k], p[k], cam)
        out.append(MaskFitResult(Pose(R, t), best[k], float(start_iou[k]), renders[k], cover[k]))
    return out


def silhouette_area(
    camera: Camera,
    model: ObjectModel,
    pose: Pose,
    *,
    renderer: Renderer | None = None,
    size: int = 64,
    render_faces: int = 1000,
) -> float:
    """The area in image pixels of the object's whole silhouette at ``pose`` (alone, nothing in front of it, not
    clipped by the image): what a detection's mask of it would hold if it were fully visible.

    Drawn in a ``size × size`` crop of its projected box from a decimated mesh, so it is accurate to a few percent
    (a pixel of the crop's outline), which is what a visible share needs.

    Args:
        camera: the image's camera.
        model: the object.
        pose: single ``cam_from_obj`` pose, in front of the camera.
        renderer: renders the silhouette (default: this thread's GL renderer).
        size: side of the crop, pixels.
        render_faces: the mesh is decimated to at most this many faces (0: as it is).

    Raises:
        ValueError: a pose with points at or behind the camera, or NaNs.
    """
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    box = object_box(camera, pose.reshape(), model.points)
    w, h = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    pad = 0.05 * max(w, h)  # (points are a sample of the surface: the outline may reach a little beyond them)
    box = box + np.array([-pad, -pad, pad, pad])
    cam = camera.crop(box, size, size)
    sil = renderer.render(
        [light_model(model, render_faces)], pose.reshape(1, 1), [cam], **only_outputs(renderer, ("mask",))
    )
    return float(sil.mask.sum()) * float(box[2] - box[0]) * float(box[3] - box[1]) / (size * size)
