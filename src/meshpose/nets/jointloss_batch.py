"""The network input of ``jointloss`` built from one RGB-D detection, shared by training and inference.

A :class:`JointSample` holds, for a detection (object id, box and modal mask) of an RGB-D image:

* a square crop box around its bbox, enlarged by ``margin`` (``rgb_full_box``, pixels of the full image), cut to
  ``crop × crop`` with :func:`~meshpose.geometry.crop_image` (``rgb`` linear; ``mask`` and ``depth`` nearest), and
  the matching crop camera ``K_crop`` (:func:`~meshpose.geometry.crop_cameras`);
* ``points`` pixels drawn from the mask ∩ valid depth of the full image (with replacement when there are fewer),
  back-projected at their full-image pixel centres with the full camera
  (:func:`~meshpose.geometry.projection.unproject`), and ``choose``, the flat index of the crop pixel that each
  falls in (``K_crop`` projects a point within half a pixel of its ``choose`` pixel's centre).

:func:`collate` stacks samples into the tensors of :class:`~meshpose.nets.jointloss.JointInput` (and more).
The training loader (:mod:`meshpose.train.jointloss_data`) and the ``jointloss`` estimator and refiner at inference
both build their crops here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meshpose.geometry import crop_cameras, crop_image, square_crop_box
from meshpose.geometry.projection import unproject, valid_depth
from meshpose.types import Camera, Detection

__all__ = [
    "JointSample",
    "SampleKey",
    "SkippedDetection",
    "collate",
    "crop_box",
    "make_sample",
    "mask_points",
    "skip_reason",
    "valid_depth",
]

#: ``(scene_id, im_id, index of the detection in that image's list)``
SampleKey = tuple[int, int, int]


class SkippedDetection(ValueError):
    """A detection that cannot make a sample; the message says why."""


@dataclass(frozen=True, eq=False)
class JointSample:
    """One unlabeled RGB-D training sample (a detection's crop and its observed points).

    Args:
        rgb: ``(3, h, w)`` float32 colour crop in ``[0, 1]``.
        choose: ``(N,)`` int64 flat indices ``v · w + u`` in the crop of the sampled pixels.
        points: ``(N, 3)`` float32 camera-frame points of the sampled pixels, metres.
        mask: ``(h, w)`` uint8 crop of the detection mask (1 = object).
        K_crop: ``(3, 3)`` float64 intrinsics of the crop camera.
        obj_id: the detected object.
        key: ``(scene_id, im_id, det_index)``.
        depth: ``(h, w)`` float32 crop of the observed depth, metres (0 = missing).
        rgb_full_box: ``(4,)`` float64 ``(x0, y0, x1, y1)`` crop box in full-image pixels.
    """

    rgb: np.ndarray
    choose: np.ndarray
    points: np.ndarray
    mask: np.ndarray
    K_crop: np.ndarray
    obj_id: int
    key: SampleKey
    depth: np.ndarray
    rgb_full_box: np.ndarray


def crop_box(det: Detection, margin: float = 1.2, min_side_px: float = 8.0) -> np.ndarray:
    """Square box around a detection's bbox.

    Args:
        det: the detection (``bbox`` ``[x, y, w, h]`` over pixel edges).
        margin: the side is ``margin · max(w, h)``.
        min_side_px: smallest side, pixels.

    Returns:
        ``(4,)`` float64 ``(x0, y0, x1, y1)`` in continuous pixel coordinates (pixel centres at integers), centred
        on the bbox centre.

    Example:
        >>> crop_box(Detection(obj_id=1, bbox=np.array([10.0, 20.0, 40.0, 20.0])), margin=1.0).tolist()
        [9.5, 9.5, 49.5, 49.5]
    """
    x, y, w, h = (float(v) for v in np.asarray(det.bbox, dtype=np.float64).reshape(4))
    centre = (x + 0.5 * w - 0.5, y + 0.5 * h - 0.5)  # edge x is the continuous coordinate x - 0.5
    return square_crop_box(centre, max(margin * max(w, h), min_side_px))


def skip_reason(det: Detection, depth: np.ndarray, min_points: int) -> str | None:
    """Why a detection cannot make a sample (``None`` when it can).

    Args:
        det: the detection.
        depth: ``(H, W)`` the image's depth, metres (0 or non-finite = missing).
        min_points: fewest pixels of mask ∩ valid depth.
    """
    if det.mask is None:
        return "no mask (box-only detection)"
    if det.mask.shape != depth.shape:
        return f"mask is {det.mask.shape[1]}×{det.mask.shape[0]} but the depth is {depth.shape[1]}×{depth.shape[0]}"
    n = int(np.count_nonzero(det.mask & valid_depth(depth)))
    if n < min_points:
        return f"{n} pixels of mask with valid depth < {min_points} (mask has {int(np.count_nonzero(det.mask))})"
    return None


def mask_points(
    mask: np.ndarray, depth: np.ndarray, K: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pixels drawn from ``mask`` ∩ valid depth (with replacement when there are fewer), back-projected.

    Args:
        mask: ``(H, W)`` bool.
        depth: ``(H, W)`` metres (0 or non-finite = missing).
        K: ``(3, 3)`` intrinsics of the image.
        n: pixels to draw.
        rng: draws them.

    Returns:
        ``(points (n, 3) float64`` camera frame, metres, ``uv (n, 2) float64`` their pixel coordinates``)``.

    Raises:
        ValueError: no pixel of the mask has valid depth.
    """
    ys, xs = np.nonzero(mask & valid_depth(depth))
    if len(ys) == 0:
        raise ValueError("no pixel of the mask has valid depth")
    pick = rng.choice(len(ys), size=n, replace=len(ys) < n)
    ys, xs = ys[pick], xs[pick]
    uv = np.stack([xs, ys], axis=1).astype(np.float64)
    return unproject(uv, depth[ys, xs].astype(np.float64), np.array(K)).numpy(), uv


def make_sample(
    rgb: np.ndarray,
    depth: np.ndarray,
    camera: Camera,
    det: Detection,
    key: SampleKey,
    rng: np.random.Generator,
    *,
    crop: int = 80,
    points: int = 500,
    margin: float = 1.2,
    min_points: int = 50,
) -> JointSample:
    """Build the sample of one detection (module docstring).

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        depth: ``(H, W)`` float32 depth, metres (0 = missing).
        camera: the image's camera.
        det: the detection (with a ``(H, W)`` mask).
        key: the sample's ``(scene_id, im_id, det_index)``.
        rng: draws the pixels.
        crop: side of the square crop, pixels.
        points: number ``N`` of sampled pixels.
        margin: crop box side / the bbox's longer side.
        min_points: fewest valid pixels.

    Raises:
        SkippedDetection: :func:`skip_reason` gives a reason.
    """
    reason = skip_reason(det, depth, min_points)
    if reason is not None:
        raise SkippedDetection(f"detection {key} (object {det.obj_id}): {reason}")
    assert det.mask is not None
    box = crop_box(det, margin)
    pts64, uv = mask_points(det.mask, depth, camera.K, points, rng)
    pts = pts64.astype(np.float32)
    cams, affines = crop_cameras(camera, box[None], crop, crop)
    cuv = uv @ affines[0][:, :2].T + affines[0][:, 2]
    cu = np.clip(np.rint(cuv[:, 0]), 0, crop - 1).astype(np.int64)
    cv = np.clip(np.rint(cuv[:, 1]), 0, crop - 1).astype(np.int64)
    rgb_crop, _ = crop_image(rgb, camera, box, crop, crop, interpolation="linear")
    mask_crop, _ = crop_image(det.mask.astype(np.uint8), camera, box, crop, crop, interpolation="nearest")
    depth_crop, _ = crop_image(depth.astype(np.float32), camera, box, crop, crop, interpolation="nearest")
    return JointSample(
        rgb=np.ascontiguousarray(rgb_crop.transpose(2, 0, 1), dtype=np.float32) / 255.0,
        choose=cv * crop + cu,
        points=pts,
        mask=mask_crop.astype(np.uint8),
        K_crop=np.array(cams[0].K, dtype=np.float64),
        obj_id=int(det.obj_id),
        key=key,
        depth=np.where(valid_depth(depth_crop), depth_crop, 0.0).astype(np.float32),
        rgb_full_box=box,
    )


def collate(samples: Sequence[JointSample]) -> dict[str, Any]:
    """Stack samples into a batch of tensors (``B`` samples, ``N`` points, ``h × w`` crops).

    Returns:
        ``rgb`` ``(B, 3, h, w)`` float32, ``choose`` ``(B, N)`` int64, ``points`` ``(B, N, 3)`` float32 (metres),
        ``mask`` ``(B, h, w)`` uint8, ``K_crop`` ``(B, 3, 3)`` float32, ``obj_id`` ``(B,)`` int64, ``key``
        ``(B, 3)`` int64, ``depth`` ``(B, h, w)`` float32 (metres), ``box`` ``(B, 4)`` float32.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return {
        "rgb": torch.from_numpy(np.stack([s.rgb for s in samples])),
        "choose": torch.from_numpy(np.stack([s.choose for s in samples]).astype(np.int64)),
        "points": torch.from_numpy(np.stack([s.points for s in samples]).astype(np.float32)),
        "mask": torch.from_numpy(np.stack([s.mask for s in samples]).astype(np.uint8)),
        "K_crop": torch.from_numpy(np.stack([s.K_crop for s in samples]).astype(np.float32)),
        "obj_id": torch.tensor([s.obj_id for s in samples], dtype=torch.int64),
        "key": torch.tensor([list(s.key) for s in samples], dtype=torch.int64),
        "depth": torch.from_numpy(np.stack([s.depth for s in samples]).astype(np.float32)),
        "box": torch.from_numpy(np.stack([s.rgb_full_box for s in samples]).astype(np.float32)),
    }
