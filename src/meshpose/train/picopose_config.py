"""Options of a ``meshpose train picopose`` run (the stage-1 patch features): :class:`PicoPoseTrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from meshpose.nets.patchfeat import PatchFeatConfig
from meshpose.synth import SceneConfig

__all__ = ["PicoPoseTrainConfig"]


@dataclass(frozen=True)
class PicoPoseTrainConfig:
    """A ``meshpose train picopose`` run: :class:`~meshpose.nets.patchfeat.PatchFeatNet` features trained on pairs
    (template-like rendering, query in a synthetic scene) of generated objects.

    Args:
        data: training objects: ``novel:N`` (generated, ids 1…N; never the test objects ≥ 5000) or a mesh folder /
            BOP dataset (known-object training).
        seed: seed of the generated objects and of the data stream.
        steps: optimiser steps of the whole run (the learning-rate schedule spans them).
        batch_size: pairs per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps.
        grad_clip: gradient norm clip.
        size: side of the object-centred crops (the estimator's ``size``), pixels.
        padding: crop side over the object's box side (the estimator's ``padding``).
        template_size: side of the template renderings before they are cut (the estimator's ``template_size``).
        view_jitter_deg: the template's viewing direction is drawn uniformly within this angle of the query's (the
            largest gap of the 162-view bank is 10.8°).
        inplane_residual_deg: the query is turned to the template's in-plane orientation up to a uniform residual
            within ± this (the estimator tries 16 rotations, 22.5° apart: a residual of at most 11.25°).
        masked_probability: share of queries whose background outside the object's modal mask is zeroed (the
            estimator's masked detections); the others keep it (box detections).
        match_radius: query and template patches correspond when their object points (patch means) are closer than
            this share of the diameter.
        min_cover: a patch takes part when at least this share of its pixels lies on the object.
        batch_negatives: the other pairs' template patches are negatives too (else only the own template's).
        min_visib: instances less visible than this are not used.
        max_items_per_image: at most this many instances of one image.
        views_per_scene: images drawn per synthetic scene.
        object_pool: objects kept in memory at a time (a new random pool every ``pool_scenes`` scenes).
        pool_scenes: scenes per object pool.
        image_size: ``(width, height)`` of the synthetic images.
        workers: data processes (0: in the training process).
        threads: torch CPU threads of the training process.
        val_objects: objects of the validation pairs (``novel``: disjoint from ``data`` and the test objects).
        val_items: validation pairs.
        val_every: validate every this many steps (0: never).
        ckpt_every: checkpoint every this many steps.
        log_every: log every this many steps.
        net: network sizes.
        scene: overrides of :class:`~meshpose.synth.SceneConfig` fields for the training scenes.
    """

    data: str = "novel:4000"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 12
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    grad_clip: float = 1.0
    size: int = 128
    padding: float = 1.2
    template_size: int = 192
    view_jitter_deg: float = 11.0
    inplane_residual_deg: float = 12.0
    masked_probability: float = 0.5
    match_radius: float = 0.08
    min_cover: float = 0.5
    batch_negatives: bool = True
    min_visib: float = 0.3
    max_items_per_image: int = 4
    views_per_scene: int = 3
    object_pool: int = 40
    pool_scenes: int = 30
    image_size: tuple[int, int] = (640, 480)
    workers: int = 0
    threads: int = 1
    val_objects: str = "novel:4500-4540"
    val_items: int = 64
    val_every: int = 200
    ckpt_every: int = 50
    log_every: int = 10
    net: PatchFeatConfig = field(default_factory=PatchFeatConfig)
    scene: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = {f.name for f in dataclasses.fields(SceneConfig)} - {"width", "height"}
        unknown = sorted(set(self.scene) - allowed)
        if unknown:
            raise ValueError(f"unknown scene option(s) {unknown}: use SceneConfig fields except width/height")
        if self.batch_size < 1 or self.steps < 0:
            raise ValueError("need batch_size ≥ 1 and steps ≥ 0")
        if self.size % 16 != 0:
            raise ValueError(f"size must be a multiple of 16, got {self.size}")
        if not 0.0 <= self.masked_probability <= 1.0:
            raise ValueError(f"masked_probability must be in [0, 1], got {self.masked_probability}")
        m = self.data.strip()
        if m.startswith("novel:"):
            hi = int(m.split(":", 1)[1].split("@")[0].split("-")[-1])
            if hi > 5000:
                raise ValueError("novel objects 5000 and above are held out for testing: train on novel:N, N ≤ 5000")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PicoPoseTrainConfig:
        d = dict(d)
        if "image_size" in d:
            d["image_size"] = tuple(d["image_size"])
        if "net" in d and not isinstance(d["net"], PatchFeatConfig):
            d["net"] = PatchFeatConfig.from_dict(d["net"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
