"""Unlabeled RGB-D training samples of ``jointloss``: crops of detections, never ground-truth poses.

A sample is one detection (:func:`meshpose.io.detections.read_detections`: object id, box and modal mask) of one
RGB-D image of a BOP dataset (:class:`~meshpose.io.bop.BopDataset`: colour, depth in metres, cameras). The loader
reads ``scene_camera.json``, the images and the depth maps only: it never opens ``scene_gt.json`` nor
``scene_gt_info.json`` (the images come from :meth:`~meshpose.io.bop.BopDataset.image_keys` with
``targets_only=False``, which lists ``scene_camera.json``), so the same code trains on a user's unlabeled frames.

A :class:`JointSample` holds, for a detection:

* a square crop box around its bbox, enlarged by ``margin`` (``rgb_full_box``, pixels of the full image), cut to
  ``crop × crop`` with :func:`~meshpose.geometry.crop_image` (``rgb`` linear; ``mask`` and ``depth`` nearest), and
  the matching crop camera ``K_crop`` (:func:`~meshpose.geometry.crop_cameras`);
* ``points`` pixels drawn from the mask ∩ valid depth of the full image (with replacement when there are fewer),
  back-projected at their full-image pixel centres with the full camera
  (:func:`~meshpose.geometry.projection.unproject`), and ``choose``, the flat index of the crop pixel that each
  falls in (``K_crop`` projects a point within half a pixel of its ``choose`` pixel's centre).

A detection with fewer than ``min_points`` valid pixels (or without a mask, or with a mask of another size) is
skipped when the dataset is built, with the reason logged and kept in :attr:`JointLossDataset.skipped`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from meshpose.geometry import crop_cameras, crop_image, square_crop_box
from meshpose.geometry.projection import unproject
from meshpose.io.bop import BopDataset
from meshpose.io.detections import DetectionsByImage
from meshpose.io.images import read_depth
from meshpose.types import Camera, Detection

__all__ = [
    "JointAugment",
    "JointLossDataset",
    "JointSample",
    "SampleKey",
    "SkippedDetection",
    "collate",
    "crop_box",
    "keys_in_range",
    "make_sample",
    "skip_reason",
]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class JointAugment:
    """Random appearance and depth changes of a training sample (0 disables a term).

    Args:
        brightness: colour scaled by a factor in ``[1 - b, 1 + b]``.
        contrast: contrast about the crop's mean scaled by a factor in ``[1 - c, 1 + c]``.
        saturation: blend with grey by a factor in ``[1 - s, 1 + s]``.
        channel_gain: each channel scaled by a factor in ``[1 - g, 1 + g]`` (a white-balance / hue change).
        rgb_noise: standard deviation of Gaussian pixel noise (colour in ``[0, 1]``).
        depth_noise_m: standard deviation of Gaussian noise along the viewing ray of each point and on each
            valid pixel of the depth crop, metres.
        depth_offset_m: standard deviation of one offset added to the whole sample's depth, metres.
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    channel_gain: float = 0.05
    rgb_noise: float = 0.01
    depth_noise_m: float = 0.001
    depth_offset_m: float = 0.002


def keys_in_range(keys: Iterable[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """The ``(scene_id, im_id)`` keys with ``start <= im_id < stop`` (e.g. the adapt benchmark's 0–299 / 300–599).

    Example:
        >>> keys_in_range([(2, 0), (2, 299), (2, 300), (3, 599)], 300, 600)
        [(2, 300), (3, 599)]
    """
    return [(int(s), int(i)) for s, i in keys if start <= int(i) < stop]


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
    n = int(np.count_nonzero(det.mask & _valid_depth(depth)))
    if n < min_points:
        return f"{n} pixels of mask with valid depth < {min_points} (mask has {int(np.count_nonzero(det.mask))})"
    return None


def _valid_depth(depth: np.ndarray) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0)


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
    ys, xs = np.nonzero(det.mask & _valid_depth(depth))
    pick = rng.choice(len(ys), size=points, replace=len(ys) < points)
    ys, xs = ys[pick], xs[pick]
    uv = np.stack([xs, ys], axis=1).astype(np.float64)
    pts = unproject(uv, depth[ys, xs].astype(np.float64), np.array(camera.K)).numpy().astype(np.float32)
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
        depth=np.where(_valid_depth(depth_crop), depth_crop, 0.0).astype(np.float32),
        rgb_full_box=box,
    )


def augment_sample(sample: JointSample, aug: JointAugment, rng: np.random.Generator) -> JointSample:
    """``sample`` with random colour jitter and depth noise (:class:`JointAugment`); ``choose``, the mask and the
    cameras are unchanged."""
    rgb = sample.rgb.astype(np.float32)
    rgb = rgb * np.float32(rng.uniform(1 - aug.brightness, 1 + aug.brightness))
    mean = rgb.mean()
    rgb = (rgb - mean) * np.float32(rng.uniform(1 - aug.contrast, 1 + aug.contrast)) + mean
    grey = rgb.mean(axis=0, keepdims=True)
    rgb = grey + (rgb - grey) * np.float32(rng.uniform(1 - aug.saturation, 1 + aug.saturation))
    rgb = rgb * rng.uniform(1 - aug.channel_gain, 1 + aug.channel_gain, (3, 1, 1)).astype(np.float32)
    if aug.rgb_noise > 0:
        rgb = rgb + rng.normal(0.0, aug.rgb_noise, rgb.shape).astype(np.float32)
    offset = float(rng.normal(0.0, aug.depth_offset_m)) if aug.depth_offset_m > 0 else 0.0
    pts = sample.points.astype(np.float64)
    z = pts[:, 2]
    dz = offset + (rng.normal(0.0, aug.depth_noise_m, len(z)) if aug.depth_noise_m > 0 else 0.0)
    pts = pts * ((z + dz) / z)[:, None]  # moved along the viewing ray: the pixel stays the same
    depth = sample.depth
    valid = depth > 0
    noise = rng.normal(0.0, aug.depth_noise_m, depth.shape) if aug.depth_noise_m > 0 else 0.0
    depth = np.where(valid, np.maximum(depth + offset + noise, 1e-4), 0.0).astype(np.float32)
    return JointSample(
        rgb=np.clip(rgb, 0.0, 1.0).astype(np.float32),
        choose=sample.choose,
        points=pts.astype(np.float32),
        mask=sample.mask,
        K_crop=sample.K_crop,
        obj_id=sample.obj_id,
        key=sample.key,
        depth=depth,
        rgb_full_box=sample.rgb_full_box,
    )


class JointLossDataset(torch.utils.data.Dataset[JointSample]):
    """Map-style dataset of the detections of unlabeled RGB-D images (module docstring).

    Building it reads every listed image's depth map once (to skip the detections without enough valid pixels);
    ``__getitem__`` reads the colour image and the depth of the item's image (the last image is kept, so items in
    index order read each image once).

    Args:
        dataset: the BOP dataset (images, depth and cameras only; never its poses).
        detections: detections by ``(scene_id, im_id)`` (each image's list order gives the ``det_index``).
        obj_ids: objects to keep (``None``: every detected object).
        keys: images to use, ``(scene_id, im_id)`` (``None``: every image of the split, from
            ``scene_camera.json``); images without detections give nothing.
        crop: crop side, pixels.
        points: sampled pixels per sample.
        seed: seed of the pixel sampling and the augmentation (an item is the same for one ``(seed, epoch)``).
        margin: crop box side / the bbox's longer side.
        min_points: detections with fewer valid pixels are skipped.
        augment: random colour jitter and depth noise (``None``: none).

    Raises:
        ValueError: the images have no depth, or no detection is left.
    """

    def __init__(
        self,
        dataset: BopDataset,
        detections: DetectionsByImage | dict[tuple[int, int], list[Detection]],
        obj_ids: Sequence[int] | None = None,
        *,
        keys: Sequence[tuple[int, int]] | None = None,
        crop: int = 80,
        points: int = 500,
        seed: int = 0,
        margin: float = 1.2,
        min_points: int = 50,
        augment: JointAugment | None = None,
    ) -> None:
        if crop < 1 or points < 1:
            raise ValueError(f"crop and points must be positive, got crop={crop}, points={points}")
        self.dataset = dataset
        self.crop, self.points, self.seed, self.margin = int(crop), int(points), int(seed), float(margin)
        self.min_points = int(min_points)
        self.augment = augment
        self.epoch = 0
        wanted = None if obj_ids is None else {int(o) for o in obj_ids}
        image_keys = dataset.image_keys(targets_only=False) if keys is None else [(int(s), int(i)) for s, i in keys]
        self.items: list[tuple[SampleKey, Detection]] = []
        self.skipped: list[tuple[SampleKey, str]] = []
        for scene_id, im_id in sorted(set(image_keys)):
            dets = detections.get((scene_id, im_id), [])
            chosen = [(j, d) for j, d in enumerate(dets) if wanted is None or int(d.obj_id) in wanted]
            if not chosen:
                continue
            depth = self._depth(scene_id, im_id)
            for j, det in chosen:
                key = (scene_id, im_id, j)
                reason = skip_reason(det, depth, self.min_points)
                if reason is None:
                    self.items.append((key, det))
                else:
                    log.info("skipping detection %s of object %d: %s", key, det.obj_id, reason)
                    self.skipped.append((key, reason))
        if self.skipped:
            log.warning("%d of %d detections skipped", len(self.skipped), len(self.skipped) + len(self.items))
        if not self.items:
            raise ValueError(f"no usable detection in {dataset!r} ({len(self.skipped)} skipped)")
        self._cached: tuple[tuple[int, int], np.ndarray, np.ndarray, Camera] | None = None

    def _depth(self, scene_id: int, im_id: int) -> np.ndarray:
        path = self.dataset.depth_path(scene_id, im_id)
        if path is None:
            raise ValueError(f"{self.dataset!r} has no depth for scene {scene_id} image {im_id}: jointloss needs RGB-D")
        return read_depth(path, self.dataset.depth_scale_mm(scene_id, im_id))

    def _image(self, scene_id: int, im_id: int) -> tuple[np.ndarray, np.ndarray, Camera]:
        if self._cached is None or self._cached[0] != (scene_id, im_id):
            obs = self.dataset.observation(scene_id, im_id, with_depth=True)
            if obs.depth is None:
                raise ValueError(f"{self.dataset!r} has no depth for scene {scene_id} image {im_id}")
            self._cached = ((scene_id, im_id), obs.rgb, obs.depth, obs.camera)
        return self._cached[1], self._cached[2], self._cached[3]

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws (pixels, augmentation) of every item."""
        self.epoch = int(epoch)

    @property
    def keys(self) -> list[SampleKey]:
        """``(scene_id, im_id, det_index)`` of every item, in index order."""
        return [k for k, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> JointSample:
        key, det = self.items[index]
        rgb, depth, camera = self._image(key[0], key[1])
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        sample = make_sample(
            rgb,
            depth,
            camera,
            det,
            key,
            rng,
            crop=self.crop,
            points=self.points,
            margin=self.margin,
            min_points=self.min_points,
        )
        return augment_sample(sample, self.augment, rng) if self.augment is not None else sample


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
