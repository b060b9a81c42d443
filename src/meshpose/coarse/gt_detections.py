"""Ground-truth detections: the modal masks and boxes a perfect detector would give (``estimate --detections gt``).

For diagnostics only — to measure a coarse estimator apart from its detector. Never used to train.

The visible (modal) mask of each ground-truth instance comes from the dataset's ``mask_visib/`` when it has one,
else from rendering every annotated object of the image together at its ground-truth pose in the image's camera
(the renderer's instance map resolves the mutual occlusion: an instance's mask is the pixels where it is the
nearest surface). The LM-O sample has no ``mask_visib/``, so there the masks are rendered. Occlusion by things
that are not annotated (clutter, a hand) is only in ``mask_visib/``; a rendered mask cannot know it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from meshpose.coarse.base import MIN_MASK_PX
from meshpose.errors import ImageError
from meshpose.geometry.crop import mask_bbox
from meshpose.io.bop import BopDataset, BopFormatError
from meshpose.render.base import Lighting, Renderer
from meshpose.types import Detection, Pose

__all__ = [
    "GtMaskSource",
    "all_gt_detections",
    "detections_from_gt",
    "detections_from_masks",
    "iter_gt_detections",
    "mask_bbox",
]

# ``mask_bbox`` lives in meshpose.geometry.crop (training and refiners use it too); re-exported here

GtMaskSource = Literal["auto", "mask_visib", "render"]
"""Where the visible masks come from: ``"mask_visib"`` (the dataset's files; a missing one is an error),
``"render"`` (always rendered), ``"auto"`` (the file when there is one, else rendered)."""

_FLAT = Lighting(ambient=1.0, diffuse=0.0)  # only the instance map is used; skip the shading maths


def detections_from_gt(
    dataset: BopDataset,
    scene_id: int,
    im_id: int,
    *,
    renderer: Renderer | None = None,
    min_visib_px: int = MIN_MASK_PX,
    source: GtMaskSource = "auto",
) -> list[Detection]:
    """The detections a perfect detector gives for one image: each ground-truth instance's visible mask and box.

    Args:
        dataset: the BOP dataset (``scene_gt.json`` needed; meshes when masks are rendered).
        scene_id: scene id.
        im_id: image id.
        renderer: renderer for the masks that are rendered (default: this thread's shared GL renderer).
        min_visib_px: instances with fewer visible pixels are skipped, as a detector would miss them. The
            default is :data:`meshpose.coarse.base.MIN_MASK_PX` (16 px), below which the estimators treat a
            mask as empty anyway.
        source: where the masks come from (see :data:`GtMaskSource`).

    Returns:
        One :class:`~meshpose.types.Detection` per kept instance, in ``scene_gt.json`` order: ``mask`` ``(H, W)``
        bool over the whole image, ``bbox`` the mask's tight box (:func:`mask_bbox`, pixels), ``score`` 1,
        ``scene_id`` and ``im_id`` set. An image without annotations gives ``[]``.

    Raises:
        BopFormatError: ``source="mask_visib"`` and a mask file is missing, or the dataset lacks a needed part.
        ImageError: a ``mask_visib`` file whose size is not the image's.
        ValueError: a negative ``min_visib_px`` or an unknown ``source``.
    """
    if min_visib_px < 0:
        raise ValueError(f"min_visib_px must be ≥ 0, got {min_visib_px}")
    if source not in ("auto", "mask_visib", "render"):
        raise ValueError(f"source must be 'auto', 'mask_visib' or 'render', got {source!r}")
    gts = dataset.gt(scene_id, im_id)
    if not gts:
        return []
    camera = dataset.camera(scene_id, im_id)
    masks: list[np.ndarray | None] = [None] * len(gts)
    if source != "render":
        for i, g in enumerate(gts):
            m = dataset.mask_visib(scene_id, im_id, g.gt_id)
            if m is None and source == "mask_visib":
                raise BopFormatError(
                    f"scene {scene_id} image {im_id}: no mask_visib file for GT instance {g.gt_id} "
                    f"in {dataset.scene_path(scene_id) / 'mask_visib'}"
                )
            if m is not None and m.shape != (camera.height, camera.width):
                path = dataset.scene_path(scene_id) / "mask_visib" / f"{im_id:06d}_{g.gt_id:06d}.png"
                raise ImageError(
                    f"mask {path} is {m.shape[1]}×{m.shape[0]} but its image is {camera.width}×{camera.height}",
                    path=path,
                    value=(m.shape[1], m.shape[0]),
                    cause="size mismatch",
                )
            masks[i] = m
    if any(m is None for m in masks):
        if renderer is None:
            from meshpose.render.gl import get_default_renderer

            renderer = get_default_renderer()
        objects = [dataset.object(g.obj_id) for g in gts]
        poses = Pose.stack([g.pose for g in gts])
        instance = renderer.render(objects, poses, camera, lighting=_FLAT).instance[0]
        for i in range(len(gts)):
            if masks[i] is None:
                masks[i] = instance == i + 1  # a new array: the renderer may recycle its output memory
    kept = [m for m in masks if m is not None]
    assert len(kept) == len(gts)
    return detections_from_masks(
        [g.obj_id for g in gts], kept, min_visib_px=min_visib_px, scene_id=scene_id, im_id=im_id
    )


def detections_from_masks(
    obj_ids: Sequence[int],
    masks: Sequence[np.ndarray],
    *,
    min_visib_px: int = MIN_MASK_PX,
    scene_id: int = -1,
    im_id: int = -1,
) -> list[Detection]:
    """A perfect detector's detections from known visible masks (a dataset's, or a synthetic frame's).

    Args:
        obj_ids: the object of each mask.
        masks: ``(H, W)`` bool visible masks, one per object id.
        min_visib_px: masks with fewer pixels are skipped, as a detector would miss them.
        scene_id, im_id: recorded on each detection (``-1``: unknown).

    Returns:
        One :class:`~meshpose.types.Detection` per kept mask, in order: the mask, its tight box, score 1.
    """
    out = []
    for obj_id, m in zip(obj_ids, masks, strict=True):
        m = np.asarray(m, bool)
        box = mask_bbox(m)
        if box is None or int(m.sum()) < max(min_visib_px, 1):
            continue
        out.append(Detection(obj_id=int(obj_id), bbox=box, mask=m, score=1.0, scene_id=scene_id, im_id=im_id))
    return out


def iter_gt_detections(
    dataset: BopDataset,
    keys: Sequence[tuple[int, int]] | None = None,
    *,
    renderer: Renderer | None = None,
    min_visib_px: int = MIN_MASK_PX,
    source: GtMaskSource = "auto",
) -> Iterator[tuple[tuple[int, int], list[Detection]]]:
    """:func:`detections_from_gt` image by image (the masks of one image at a time in memory).

    Args:
        dataset: the BOP dataset.
        keys: ``(scene_id, im_id)`` of the images; ``None``: :meth:`BopDataset.image_keys` (the target images
            when the dataset lists targets, else all).
        renderer, min_visib_px, source: as for :func:`detections_from_gt`.

    Yields:
        ``((scene_id, im_id), detections)`` in the order of ``keys``.
    """
    for scene_id, im_id in dataset.image_keys() if keys is None else keys:
        dets = detections_from_gt(dataset, scene_id, im_id, renderer=renderer, min_visib_px=min_visib_px, source=source)
        yield (scene_id, im_id), dets


def all_gt_detections(
    dataset: BopDataset,
    keys: Sequence[tuple[int, int]] | None = None,
    *,
    renderer: Renderer | None = None,
    min_visib_px: int = MIN_MASK_PX,
    source: GtMaskSource = "auto",
) -> dict[tuple[int, int], list[Detection]]:
    """:func:`iter_gt_detections` collected into a dict keyed by ``(scene_id, im_id)``.

    Every mask is a full-image bool array (LM-O: 0.3 MB each, about 0.5 GB for its 200 test images); prefer
    :func:`iter_gt_detections` for large sets, or write them with :func:`meshpose.io.detections.write_detections`.
    """
    return dict(iter_gt_detections(dataset, keys, renderer=renderer, min_visib_px=min_visib_px, source=source))
