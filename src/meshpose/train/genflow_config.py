"""Options of a ``meshpose train genflow`` run: :class:`GenFlowTrainConfig` and its perturbation regimes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from meshpose.nets.genflow import STRIDE, GenFlowNetConfig
from meshpose.synth import SceneConfig

__all__ = ["GenFlowTrainConfig", "PerturbRegime", "training_scene_config"]


@dataclass(frozen=True)
class PerturbRegime:
    """How initial poses of one regime are drawn from the ground truth.

    Args:
        probability: share of items in this regime.
        rot_deg: rotation error range (degrees, uniform).
        trans_frac: translation error range (fraction of the diameter, uniform; random 3D direction).
        padding: crop padding range.
    """

    probability: float
    rot_deg: tuple[float, float]
    trans_frac: tuple[float, float]
    padding: tuple[float, float]


@dataclass(frozen=True)
class GenFlowTrainConfig:
    """A ``meshpose train genflow`` run.

    Args:
        data: training objects: ``novel:N`` (generated, ids 1…N) or a mesh folder / BOP dataset whose models are
            put into synthetic scenes. Never the test objects.
        seed: seed of the generated objects and of the data stream.
        steps: optimiser steps of the whole run (the learning-rate schedule spans them).
        batch_size: items per step (per process under DDP).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps.
        grad_clip: gradient norm clip.
        crop_size: crop side in pixels.
        iterations: recurrent iterations per item.
        gamma: weight decay of earlier iterations in the sequence losses.
        pose_weight: weight of the point-matching loss against the flow loss.
        depth_probability: share of items that see the observed depth (the others are RGB-only).
        render_gap: share of items whose *rendered* crop gets a random appearance change (colour gains, gamma,
            saturation, a smooth multiplicative colour field, blur; foreground only), so that the network learns
            to match a rendering whose colours differ from the photo's, as a scanned mesh's vertex colours do.
            Runs saved before this option existed had none (0.0).
        regimes: perturbation regimes of the initial poses.
        min_visib: instances less visible than this are not used.
        max_items_per_image: at most this many instances of one image.
        views_per_scene: images drawn per synthetic scene.
        object_pool: objects a worker keeps in memory at a time (a new random pool every ``pool_scenes`` scenes).
        pool_scenes: scenes per object pool.
        image_size: ``(width, height)`` of the synthetic images.
        workers: data processes (0: draw items in the training process).
        threads: torch CPU threads of the training process.
        val_objects: objects of the validation scenes (disjoint from ``data`` and from the test objects).
        val_images: validation images.
        val_every: validate every this many steps (0: never).
        ckpt_every: checkpoint every this many steps.
        log_every: log every this many steps.
        net: network sizes (taken from the weights when ``init_weights`` is given).
        scene: overrides of :class:`~meshpose.synth.SceneConfig` fields for the training scenes (JSON
            values; lists become ranges), e.g. ``{"blur_probability": 0.6, "blur_sigma_px": [0.5, 2.2]}`` for
            blurrier photos; the size comes from ``image_size``. Validation scenes keep the defaults, so that
            validation figures of runs stay comparable.
        init_weights: start a new run from these weights (a ``model.pt`` or a checkpoint) instead of a random
            initialisation, e.g. to fine-tune the shipped ones (``"package"``: the weights shipped with meshpose).
            Only the network is taken over: the optimiser, schedule and step count start afresh.
    """

    data: str = "novel:4000"
    seed: int = 0
    steps: int = 30000
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 1e-4
    warmup: int = 300
    grad_clip: float = 1.0
    crop_size: int = 128
    iterations: int = 4
    gamma: float = 0.8
    pose_weight: float = 10.0
    depth_probability: float = 0.5
    render_gap: float = 0.0
    regimes: tuple[PerturbRegime, ...] = (
        PerturbRegime(0.55, (3.0, 35.0), (0.0, 0.25), (1.45, 1.8)),
        PerturbRegime(0.45, (0.0, 12.0), (0.0, 0.08), (1.15, 1.4)),
    )
    min_visib: float = 0.3
    max_items_per_image: int = 4
    views_per_scene: int = 3
    object_pool: int = 40
    pool_scenes: int = 30
    image_size: tuple[int, int] = (640, 480)
    workers: int = 1
    threads: int = 1
    val_objects: str = "novel:4500-4540"
    val_images: int = 24
    val_every: int = 500
    ckpt_every: int = 100
    log_every: int = 10
    net: GenFlowNetConfig = field(default_factory=GenFlowNetConfig)
    scene: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None

    def __post_init__(self) -> None:
        allowed = {f.name for f in dataclasses.fields(SceneConfig)} - {"width", "height"}
        unknown = sorted(set(self.scene) - allowed)
        if unknown:
            raise ValueError(f"unknown scene option(s) {unknown}: use SceneConfig fields except width/height")
        training_scene_config(self)  # bad scene values fail here, not later in a data worker
        if self.crop_size % STRIDE or self.crop_size < 32:
            raise ValueError(f"crop_size must be a multiple of {STRIDE} and ≥ 32, got {self.crop_size}")
        if not self.regimes or abs(sum(r.probability for r in self.regimes) - 1.0) > 1e-6:
            raise ValueError("regime probabilities must sum to 1")
        if not 0.0 <= self.render_gap <= 1.0 or not 0.0 <= self.depth_probability <= 1.0:
            raise ValueError("render_gap and depth_probability are shares in [0, 1]")
        if self.batch_size < 1 or self.iterations < 1 or self.steps < 0:
            raise ValueError("need batch_size ≥ 1, iterations ≥ 1, steps ≥ 0")
        m = self.data.strip()
        if m.startswith("novel:"):
            rng_part = m.split(":", 1)[1].split("@")[0]
            hi = int(rng_part.split("-")[-1])
            if hi > 5000:
                raise ValueError("novel objects 5000 and above are held out for testing: train on novel:N, N ≤ 5000")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenFlowTrainConfig:
        d = dict(d)
        d["regimes"] = (
            tuple(
                PerturbRegime(r["probability"], tuple(r["rot_deg"]), tuple(r["trans_frac"]), tuple(r["padding"]))
                for r in d.get("regimes", [])
            )
            or cls.regimes
        )
        d["image_size"] = tuple(d.get("image_size", (640, 480)))
        d["net"] = GenFlowNetConfig.from_dict(d.get("net", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def training_scene_config(cfg: GenFlowTrainConfig) -> SceneConfig:
    """The :class:`SceneConfig` of the training scenes: the defaults, ``cfg.image_size`` and ``cfg.scene``."""
    over: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.scene.items()}
    return dataclasses.replace(SceneConfig(width=cfg.image_size[0], height=cfg.image_size[1]), **over)
