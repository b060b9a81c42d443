"""Unlabeled RGB-D training samples of ``jointloss``: crops of detections, never ground-truth poses.

A sample is one detection (:func:`meshpose.io.detections.read_detections`: object id, box and modal mask) of one
RGB-D image of a BOP dataset (:class:`~meshpose.io.bop.BopDataset`: colour, depth in metres, cameras). The loader
reads ``scene_camera.json``, the images and the depth maps only: it never opens ``scene_gt.json`` nor
``scene_gt_info.json`` (the images come from :meth:`~meshpose.io.bop.BopDataset.image_keys` with
``targets_only=False``, which lists ``scene_camera.json``), so the same code trains on a user's unlabeled frames.

The sample of a detection (:class:`~meshpose.nets.jointloss_batch.JointSample`: crop, crop camera, sampled mask
pixels and their back-projected depth) is built by :mod:`meshpose.nets.jointloss_batch`, shared with inference.

A detection with fewer than ``min_points`` valid pixels (or without a mask, or with a mask of another size) is
skipped when the dataset is built, with the reason logged and kept in :attr:`JointLossDataset.skipped`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from meshpose.io.bop import BopDataset
from meshpose.io.detections import DetectionsByImage
from meshpose.nets.jointloss_batch import (
    JointSample,
    SampleKey,
    SkippedDetection,
    collate,
    crop_box,
    make_sample,
    skip_reason,
)
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
        depth = self.dataset.depth(scene_id, im_id)
        if depth is None:
            raise ValueError(f"{self.dataset!r} has no depth for scene {scene_id} image {im_id}: jointloss needs RGB-D")
        return depth

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
