"""Pre-rendered synthetic scenes as training views: a BOP-format split that ``meshpose synth`` wrote ahead (e.g.
``--renderer photoreal``: Mitsuba path tracing, ~1 image/s on two cores — too slow to draw during a run, cheap
to read back), turned into :class:`~meshpose.synth.SyntheticSample` views that the item makers of the trainers
take as they take the GL scenes drawn on the fly.

Only synthetic data belong here: the ground truth read is that of scenes the project rendered from the meshes
(the rule for real frames: their poses are for measuring only). The split's objects are read from its own
``models/`` folder, so that training renders exactly the meshes the scenes were rendered from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.geometry.crop import mask_bbox
from meshpose.io.bop import BopDataset, BopFormatError
from meshpose.render.base import Lighting
from meshpose.synth import SyntheticSample
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["cached_sample", "cached_views", "open_cached", "view_from_masks"]


def open_cached(spec: str) -> BopDataset:
    """The dataset of a ``ROOT[:SPLIT]`` spec (default split ``train_pbr``).

    Raises:
        BopFormatError: no such dataset or split (the message names what is there).
    """
    root, _, split = spec.partition(":")
    return BopDataset(Path(root), split or "train_pbr")


def cached_sample(ds: BopDataset, scene_id: int, im_id: int, objects: dict[int, ObjectModel]) -> SyntheticSample:
    """One pre-rendered image as a training view.

    Args:
        ds: the split.
        scene_id: scene of the image.
        im_id: image id.
        objects: the split's objects by id (:meth:`BopDataset.objects`).

    Returns:
        The view: colour, depth (metres; 0 = missing) when the split has it, the instances' poses, visible masks and
        visible fractions, the instance map. The full silhouettes are not stored by every split: ``masks`` are the
        visible masks then, and ``bbox_obj`` / ``px_count_all`` come from them.

    Raises:
        BopFormatError: the image has no visible masks (``mask_visib/``), which the items need.
    """
    obs = ds.observation(scene_id, im_id)
    gts = ds.gt(scene_id, im_id)
    vis = []
    for g in gts:
        m = ds.mask_visib(scene_id, im_id, g.gt_id)
        if m is None:
            raise BopFormatError(f"{ds.scene_path(scene_id)}: image {im_id} has no mask_visib/ for gt {g.gt_id}")
        vis.append(m)
    return view_from_masks(
        obs.rgb,
        obs.depth,
        obs.camera,
        [g.obj_id for g in gts],
        [objects[g.obj_id] for g in gts],
        Pose.stack([g.pose for g in gts]) if gts else Pose.identity((0,)),
        vis,
        [g.visib_fract if g.visib_fract is not None else 1.0 for g in gts],
        {"renderer": "cached", "source": f"{ds.root}:{ds.split}", "scene_id": scene_id, "im_id": im_id},
    )


def view_from_masks(
    rgb: np.ndarray,
    depth: np.ndarray | None,
    camera: Camera,
    obj_ids: Sequence[int],
    objects: Sequence[ObjectModel],
    poses: Pose,
    masks_visib: Sequence[np.ndarray],
    visib_fract: Sequence[float],
    info: dict[str, Any],
) -> SyntheticSample:
    """A training view from an image, its instances' poses and their visible masks (the fields the item makers
    read; the full silhouettes are the visible masks, ``bbox_obj`` and ``px_count_all`` come from them).

    Args:
        rgb: ``(H, W, 3)`` uint8.
        depth: ``(H, W)`` metres (0 = missing) or ``None``.
        camera: the image's camera.
        obj_ids: the ``N`` instances' object ids.
        objects: their models.
        poses: ``(N,)`` ``cam_from_obj``.
        masks_visib: ``N`` ``(H, W)`` bool visible masks (a later mask wins where two overlap in the instance map).
        visib_fract: ``(N,)`` visible fractions (the item makers skip instances under their ``min_visib``).
        info: the view's ``info``.
    """
    h, w = rgb.shape[:2]
    vis = [np.asarray(m, bool) for m in masks_visib]
    stacked = np.stack(vis) if vis else np.zeros((0, h, w), bool)
    instance = np.zeros((h, w), np.int32)
    for i, m in enumerate(vis):
        instance[m] = i + 1
    px = stacked.reshape(len(vis), -1).sum(1)
    boxes = [mask_bbox(m) for m in vis]
    bbox = np.array([b if b is not None else np.zeros(4) for b in boxes], np.float64).reshape(len(vis), 4)
    return SyntheticSample(
        rgb=rgb,
        depth=depth,
        depth_clean=depth if depth is not None else np.zeros((h, w), np.float32),
        camera=camera,
        obj_ids=np.array(list(obj_ids), np.int64),
        objects=tuple(objects),
        poses=poses,
        masks=stacked,
        masks_visib=stacked,
        px_count_all=px,
        bbox_obj=bbox,
        visib_fract=np.array(list(visib_fract), np.float64),
        instance=instance,
        cam_from_world=Pose.identity(()),
        lighting=Lighting(),
        info=info,
    )


def cached_views(spec: str, rng: np.random.Generator) -> Iterator[SyntheticSample]:
    """Endless views of the pre-rendered split ``spec`` (``ROOT[:SPLIT]``) in random order (each image once per
    pass; a new order every pass).

    Raises:
        BopFormatError: no such dataset or split — at once, not at the first view.
        ValueError: the split holds no images.
    """
    ds = open_cached(spec)
    keys = ds.image_keys(targets_only=False)
    if not keys:
        raise ValueError(f"{spec}: the split holds no images")
    return _views(ds, keys, rng)


def _views(ds: BopDataset, keys: list[tuple[int, int]], rng: np.random.Generator) -> Iterator[SyntheticSample]:
    objects = ds.objects()
    while True:
        for k in rng.permutation(len(keys)):
            scene_id, im_id = keys[int(k)]
            yield cached_sample(ds, scene_id, im_id, objects)
