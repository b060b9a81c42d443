"""The user's unlabeled images as training views, at the *pseudo poses* the pipeline gave their detections
(``meshpose adapt abstract`` / ``deeprm``): :class:`PseudoViews`, and :func:`mixed_items`, which mixes them with
synthetic scenes of the same meshes.

A view (:func:`~meshpose.train.cached_scenes.view_from_masks`) holds one image, its detections with a pseudo pose as
the instances and their masks as the instance map. Only the best-scored ``pseudo_share`` of the pseudo poses (at
least ``min_score``) are *items* — the others get a visible fraction of 0, which no item maker takes, and stay
foreground — and everything outside every detection is background. A share ``val_share`` of the *images* is held
out (:func:`~meshpose.train.adapt.split_images`). No ground-truth pose is read: the dataset is opened for its images,
cameras and meshes, the detections file for its masks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from meshpose.io.bop import BopDataset
from meshpose.io.detections import DetectionsByImage, read_detections
from meshpose.synth import SyntheticSample
from meshpose.train.adapt import split_images
from meshpose.train.adapt_config import PseudoPose, check_pseudo_detections
from meshpose.train.cached_scenes import view_from_masks
from meshpose.train.common import resolve_objects, scene_items
from meshpose.types import ObjectModel, Pose

__all__ = ["PseudoViews", "mixed_items"]

log = logging.getLogger(__name__)

ImageKey = tuple[int, int]
I = TypeVar("I")  # noqa: E741


class PseudoViews:
    """The user's images as training views with their pseudo poses (module docstring).

    Args:
        cfg: the run's options: a :class:`~meshpose.train.common.TrainOptions` (``data``: the user's BOP dataset,
            ``seed``) with :class:`~meshpose.train.adapt_config.PseudoFrameOptions`.
        pseudo: the pseudo poses of the detections.

    Raises:
        ValueError: no pseudo pose left to train on, or one naming a detection the file does not hold.
    """

    def __init__(self, cfg: Any, pseudo: Sequence[PseudoPose]) -> None:
        self.cfg = cfg
        self.bop = BopDataset(cfg.data, split=cfg.split)
        self.dets: DetectionsByImage = read_detections(cfg.detections)
        check_pseudo_detections(pseudo, self.dets, cfg.detections)
        held_out = split_images([p.image for p in pseudo], cfg.val_share, cfg.seed)
        self.by_image: dict[ImageKey, list[PseudoPose]] = {}
        for p in sorted(pseudo, key=lambda p: (p.scene_id, p.im_id, p.det_index)):
            self.by_image.setdefault(p.image, []).append(p)
        #: the items: the best-scored ``pseudo_share`` of each part's pseudo poses (at least ``min_score``)
        self.items: set[tuple[int, int, int]] = set()
        counts = {}
        for part, keep in (("train", False), ("val", True)):
            cands = [p for p in pseudo if (p.image in held_out) == keep and p.score >= cfg.min_score]
            cands.sort(key=lambda p: -p.score)
            chosen = cands[: int(np.ceil(cfg.pseudo_share * len(cands)))]
            self.items |= {(p.scene_id, p.im_id, p.det_index) for p in chosen}
            counts[part] = (len(chosen), len(cands))
        self.train_images = sorted(k for k in self.by_image if k not in held_out and self._has_items(k))
        self.val_images = sorted(k for k in self.by_image if k in held_out and self._has_items(k))
        if not self.train_images:
            raise ValueError(
                f"no pseudo pose to train on ({len(pseudo)} given, {counts['train'][1]} on training images scored "
                f"≥ min_score {cfg.min_score})"
            )
        self.objects: dict[int, ObjectModel] = self.bop.objects(sorted({p.obj_id for p in pseudo}))
        log.info(
            "adapt: %d of %d pseudo poses are items on %d training image(s); %d of %d on %d held-out image(s)",
            *counts["train"],
            len(self.train_images),
            *counts["val"],
            len(self.val_images),
        )
        if not self.val_images and cfg.val_every:
            log.warning("no held-out image with items (val_share %.2f): best.pt is not written", cfg.val_share)

    def _has_items(self, key: ImageKey) -> bool:
        return any((p.scene_id, p.im_id, p.det_index) in self.items for p in self.by_image[key])

    def view(self, key: ImageKey) -> SyntheticSample:
        """The image ``key`` as a view: its detections with a pseudo pose as instances (their masks the instance
        map); those that are not items get a visible fraction of 0, so that no item maker takes them."""
        poses = self.by_image[key]
        obs = self.bop.observation(*key, with_depth=False)
        masks = [np.asarray(self.dets[key][p.det_index].mask, bool) for p in poses]
        return view_from_masks(
            obs.rgb,
            None,
            obs.camera,
            [p.obj_id for p in poses],
            [self.objects[p.obj_id] for p in poses],
            Pose.stack([Pose(p.R, p.t) for p in poses]),
            masks,
            [1.0 if (p.scene_id, p.im_id, p.det_index) in self.items else 0.0 for p in poses],
            {"renderer": "real", "pseudo_poses": True, "scene_id": key[0], "im_id": key[1]},
        )

    def held_out_items(self, make: Callable[[SyntheticSample], Sequence[I]], count: int) -> list[I]:
        """At most ``count`` items ``make`` cuts from the held-out images' views, image after image (fixed when
        ``make`` draws from a freshly seeded generator)."""
        out: list[I] = []
        for key in self.val_images:
            if len(out) >= count:
                break
            out.extend(make(self.view(key)))
        log.info("validation: %d held-out item(s) of %d image(s)", min(len(out), count), len(self.val_images))
        return out[:count]

    def endless(self, rng: np.random.Generator) -> Iterator[SyntheticSample]:
        """The training images' views in random order, each once per pass."""
        keys = self.train_images
        while True:
            for k in rng.permutation(len(keys)):
                yield self.view(keys[int(k)])


def mixed_items(
    cfg: Any, views: PseudoViews, rng: np.random.Generator, make: Callable[[SyntheticSample], Sequence[I]]
) -> Iterator[list[I]]:
    """Endless draws of items: with probability ``cfg.real_share`` ``cfg.views_per_scene`` views of the user's
    images (:meth:`PseudoViews.endless`), else a synthetic scene of ``cfg.data``'s meshes
    (:func:`~meshpose.train.common.scene_items`; ``cfg`` is the method's :class:`TrainOptions` with
    :class:`PseudoFrameOptions`)."""
    real = views.endless(rng)
    synth = None
    if cfg.real_share < 1.0:
        synth = scene_items(cfg, resolve_objects(cfg.data, cfg.seed), cfg.scene_config(), rng, make)
    while True:
        if synth is None or rng.random() < cfg.real_share:
            items: list[I] = []
            for _ in range(cfg.views_per_scene):
                items.extend(make(next(real)))
            yield items
        else:
            yield next(synth)
