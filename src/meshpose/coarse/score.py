"""A render-and-compare score of pose hypotheses for one detection (which hypothesis ``estimate`` keeps).

Each hypothesis is rendered alone into one fixed crop around the detection (so all hypotheses of a detection are
judged in the same pixels) and scored by two cues that need no appearance model, since a rendering of a real
object rarely looks like its photo:

* **region agreement**: the IoU of the rendered silhouette with the detection's modal mask, or — for a box-only
  detection — the IoU of the silhouette's bounding box with the detection box;
* **edges**: :func:`~meshpose.refine.select.edge_alignment_score`, how well the silhouette's outline lies on
  image edges of the right orientation.

* **shading layout**: the normalised cross-correlation of the rendered and the observed grey levels over the
  pixels both cover, blurred to a coarse scale (what tells an object's front from its back when both have the same
  outline), mapped to [0, 1].

``score = REGION_WEIGHT · region + EDGE_WEIGHT · edges + LAYOUT_WEIGHT · layout``, in [0, 1]. Under occlusion the
full silhouette is larger than the modal mask for *every* hypothesis alike, so the ranking holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from meshpose.geometry.crop import crop_image, square_crop_box
from meshpose.refine.select import edge_alignment_score, observed_gradients
from meshpose.render.base import Renderer, render_alone
from meshpose.types import Detection, ObjectModel, Observation, Pose

__all__ = ["EDGE_WEIGHT", "LAYOUT_WEIGHT", "REGION_WEIGHT", "SCORE_CROP", "box_iou", "score_hypotheses"]

#: Side (pixels) of the scoring crop and its padding over the detection box.
SCORE_CROP = 128
SCORE_PADDING = 1.5
#: Weights of the cues (they sum to 1).
REGION_WEIGHT = 0.7
EDGE_WEIGHT = 0.3
LAYOUT_WEIGHT = 0.0
#: Gaussian blur (pixels of the scoring crop) before the layout correlation.
LAYOUT_SIGMA = 3.0


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def detection_crop_box(det: Detection, padding: float = SCORE_PADDING) -> np.ndarray:
    """A square ``(x0, y0, x1, y1)`` box (continuous pixel coordinates, centres at integers) around a detection,
    ``padding`` × its longer side."""
    x0, y0, x1, y1 = det.box_xyxy() - 0.5  # pixel-edge box → centre-at-integer coordinates
    return square_crop_box((0.5 * (x0 + x1), 0.5 * (y0 + y1)), padding * max(x1 - x0, y1 - y0, 1.0))


def score_hypotheses(
    obs: Observation,
    model: ObjectModel,
    detection: Detection,
    poses: Sequence[Pose],
    *,
    renderer: Renderer | None = None,
    cues: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Render-and-compare scores of pose hypotheses of one detection, higher is better.

    Args:
        obs: the observation.
        model: the detected object.
        detection: the detection (its box, and its modal mask when given).
        poses: ``K`` single ``cam_from_obj`` poses.
        renderer: the renderer (default: this thread's GL renderer).
        cues: if given, filled with each cue's ``(K,)`` values (``region``, ``edges``, ``layout``).

    Returns:
        ``(K,)`` float64 scores in [0, 1]; 0 for a pose with nothing in the crop (e.g. behind the camera).
    """
    if len(poses) == 0:
        return np.zeros(0)
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    box = detection_crop_box(detection)
    size = SCORE_CROP
    rgb, cam = crop_image(obs.rgb, obs.camera, box, size, size)
    grad = observed_gradients(np.asarray(rgb))
    det_mask = None
    if detection.mask is not None:
        det_mask = np.asarray(crop_image(detection.mask, obs.camera, box, size, size, interpolation="nearest")[0], bool)
    scale = size / (box[2] - box[0])
    det_box = (detection.box_xyxy() - 0.5 - np.array([box[0], box[1], box[0], box[1]])) * scale

    R = np.stack([np.asarray(p.numpy()[0]).reshape(3, 3) for p in poses])
    t = np.stack([np.asarray(p.numpy()[1]).reshape(3) for p in poses])
    ok = t[:, 2] > 1e-3
    scores = np.zeros(len(poses))
    cue = {k: np.zeros(len(poses)) for k in ("region", "edges", "layout")}
    if cues is not None:
        cues.update(cue)
    if not ok.any():
        return scores
    grey = cv2.GaussianBlur(cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), LAYOUT_SIGMA)
    idx = np.nonzero(ok)[0]
    out = render_alone(renderer, [model] * len(idx), Pose(R[idx], t[idx]), [cam] * len(idx), None)
    for j, k in enumerate(idx):
        sil = out.mask[j]
        if sil.sum() < 4:
            continue
        if det_mask is not None:
            inter = np.logical_and(sil, det_mask).sum()
            region = float(inter / max(np.logical_or(sil, det_mask).sum(), 1))
        else:
            ys, xs = np.nonzero(sil)
            region = box_iou(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float), det_box)
        both = sil if det_mask is None else np.logical_and(sil, det_mask)
        layout = 0.5
        if both.sum() >= 16:
            ren = cv2.GaussianBlur((out.rgb[j].mean(-1) * 255.0).astype(np.float32), (0, 0), LAYOUT_SIGMA)[both]
            obs_g = grey[both]
            a, b = ren - ren.mean(), obs_g - obs_g.mean()
            den = float(np.sqrt((a * a).sum() * (b * b).sum()))
            layout = 0.5 * (1.0 + float((a * b).sum()) / den) if den > 1e-6 else 0.5
        cue["region"][k], cue["edges"][k], cue["layout"][k] = region, edge_alignment_score(grad, sil), layout
        scores[k] = REGION_WEIGHT * region + EDGE_WEIGHT * cue["edges"][k] + LAYOUT_WEIGHT * layout
    if cues is not None:
        cues.update(cue)
    return scores
