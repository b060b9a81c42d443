"""Options of a ``meshpose train deeprm`` run: :class:`DeepRMTrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from meshpose.nets.deeprm import DeepRMNetConfig
from meshpose.synth import SceneConfig
from meshpose.train.genflow_config import PerturbRegime

__all__ = ["FLOW_SCALE_WEIGHTS", "DeepRMTrainConfig"]

#: weights of the flow decoder's scales, coarse (stride 32) to fine (stride 4); FlowNet weighs the finer more
FLOW_SCALE_WEIGHTS = (0.05, 0.1, 0.25, 0.6)


@dataclass(frozen=True)
class DeepRMTrainConfig:
    """A ``meshpose train deeprm`` run.

    Args:
        data: training objects: ``novel:N`` (generated, ids 1…N; never the test objects ≥ 5000) or a mesh folder /
            BOP dataset (known-object training: the scenes hold only these objects, plus distractors).
        seed: seed of the generated objects and of the data stream.
        steps: optimiser steps of the whole run (the learning-rate schedule spans them).
        batch_size: items per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps.
        grad_clip: gradient norm clip.
        iterations: unrolled refinement iterations per item (DeepRM trains with 6): each renders the object at the
            pose the previous one reached; the pose is detached between iterations, the recurrent state is not.
        truncate_state: also detach the recurrent state between iterations (no back-propagation through time).
        flow_weight: ``α``, the weight of the flow decoder's multi-scale end-point error (0: no flow loss).
        flow_scale_weights: weights of its scales, coarse to fine.
        brightness: range of a per-item gain on the rendered crops (the renderer's brightness varies).
        render_gap: share of items whose first rendering gets ``genflow``'s appearance change.
        regimes: perturbation regimes of the initial poses (and crop paddings).
        min_visib: instances less visible than this are not used.
        max_items_per_image: at most this many instances of one image.
        views_per_scene: images drawn per synthetic scene.
        object_pool: objects kept in memory at a time (a new random pool every ``pool_scenes`` scenes).
        pool_scenes: scenes per object pool.
        image_size: ``(width, height)`` of the synthetic images.
        threads: torch CPU threads of the training process.
        val_objects: objects of the validation scenes (``novel``: disjoint from ``data`` and the test objects;
            known-object training: the same objects, in held-out scenes).
        val_items: validation items.
        val_iterations: refinement iterations in validation.
        val_rot_deg: rotation error of the validation inits, degrees.
        val_trans_frac: translation error of the validation inits, fraction of the diameter.
        val_padding: crop padding in validation (the refiner's default).
        val_every: validate every this many steps (0: never).
        ckpt_every: checkpoint every this many steps.
        log_every: log every this many steps.
        net: network sizes (its ``resolution`` is the crop size).
        scene: overrides of :class:`~meshpose.synth.SceneConfig` fields for the training scenes.
        init_weights: start a new run from these weights (a weights spec) instead of a random initialisation.
    """

    data: str = "novel:4000"
    seed: int = 0
    steps: int = 20000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 200
    grad_clip: float = 1.0
    iterations: int = 6
    truncate_state: bool = False
    flow_weight: float = 1.0
    flow_scale_weights: tuple[float, ...] = FLOW_SCALE_WEIGHTS
    brightness: tuple[float, float] = (0.7, 1.3)
    render_gap: float = 0.0
    regimes: tuple[PerturbRegime, ...] = (
        PerturbRegime(0.5, (5.0, 35.0), (0.0, 0.25), (1.3, 1.6)),
        PerturbRegime(0.5, (0.0, 15.0), (0.0, 0.1), (1.3, 1.6)),
    )
    min_visib: float = 0.3
    max_items_per_image: int = 4
    views_per_scene: int = 3
    object_pool: int = 40
    pool_scenes: int = 30
    image_size: tuple[int, int] = (640, 480)
    threads: int = 1
    val_objects: str = "novel:4500-4540"
    val_items: int = 64
    val_iterations: int = 6
    val_rot_deg: float = 15.0
    val_trans_frac: float = 0.1
    val_padding: float = 1.45
    val_every: int = 250
    ckpt_every: int = 100
    log_every: int = 10
    net: DeepRMNetConfig = field(default_factory=DeepRMNetConfig)
    scene: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None

    def __post_init__(self) -> None:
        allowed = {f.name for f in dataclasses.fields(SceneConfig)} - {"width", "height"}
        unknown = sorted(set(self.scene) - allowed)
        if unknown:
            raise ValueError(f"unknown scene option(s) {unknown}: use SceneConfig fields except width/height")
        if not self.regimes or abs(sum(r.probability for r in self.regimes) - 1.0) > 1e-6:
            raise ValueError("regime probabilities must sum to 1")
        if self.batch_size < 1 or self.iterations < 1 or self.steps < 0 or self.val_iterations < 1:
            raise ValueError("need batch_size ≥ 1, iterations ≥ 1, val_iterations ≥ 1, steps ≥ 0")
        if len(self.flow_scale_weights) != 4:
            raise ValueError("flow_scale_weights needs one weight per flow scale (4)")
        if not 0.0 < self.brightness[0] <= self.brightness[1]:
            raise ValueError(f"brightness must be a range of positive gains, got {self.brightness}")
        if self.flow_weight > 0 and not self.net.flow_head:
            raise ValueError("flow_weight > 0 needs a network with a flow head (net.flow_head)")
        m = self.data.strip()
        if m.startswith("novel:"):
            hi = int(m.split(":", 1)[1].split("@")[0].split("-")[-1])
            if hi > 5000:
                raise ValueError("novel objects 5000 and above are held out for testing: train on novel:N, N ≤ 5000")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeepRMTrainConfig:
        d = dict(d)
        if "regimes" in d:
            d["regimes"] = tuple(
                r
                if isinstance(r, PerturbRegime)
                else PerturbRegime(r["probability"], tuple(r["rot_deg"]), tuple(r["trans_frac"]), tuple(r["padding"]))
                for r in d["regimes"]
            )
        for key in ("image_size", "brightness", "flow_scale_weights"):
            if key in d:
                d[key] = tuple(d[key])
        if "net" in d and not isinstance(d["net"], DeepRMNetConfig):
            d["net"] = DeepRMNetConfig.from_dict(d["net"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
