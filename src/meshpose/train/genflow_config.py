"""Options of a ``meshpose train genflow`` run: :class:`GenFlowTrainConfig` and its perturbation regimes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshpose.nets.genflow import STRIDE, GenFlowNetConfig
from meshpose.synth import SceneConfig
from meshpose.train.common import TrainOptions

__all__ = ["GenFlowTrainConfig", "PerturbRegime", "read_regimes", "training_scene_config"]


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
class GenFlowTrainConfig(TrainOptions):
    """A ``meshpose train genflow`` run: the options of :class:`~meshpose.train.common.TrainOptions` and these.

    Args:
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
        workers: data processes (0: draw items in the training process).
        val_images: validation images (their scenes keep the default scene options, whatever ``scene`` says, so
            that validation figures of runs stay comparable).
        net: network sizes (taken from the weights when ``init_weights`` is given).
        init_weights: start a new run from these weights (a ``model.pt`` or a checkpoint) instead of a random
            initialisation, e.g. to fine-tune the shipped ones (``"package"``: the weights shipped with meshpose).
            Only the network is taken over: the optimiser, schedule and step count start afresh.
    """

    steps: int = 30000
    batch_size: int = 8
    lr: float = 4e-4
    warmup: int = 300
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
    workers: int = 1
    val_images: int = 24
    net: GenFlowNetConfig = field(default_factory=GenFlowNetConfig)
    init_weights: str | None = None

    def check(self) -> None:
        training_scene_config(self)  # bad scene values fail here, not later in a data worker
        if self.crop_size % STRIDE or self.crop_size < 32:
            raise ValueError(f"crop_size must be a multiple of {STRIDE} and ≥ 32, got {self.crop_size}")
        if not self.regimes or abs(sum(r.probability for r in self.regimes) - 1.0) > 1e-6:
            raise ValueError("regime probabilities must sum to 1")
        if not 0.0 <= self.render_gap <= 1.0 or not 0.0 <= self.depth_probability <= 1.0:
            raise ValueError("render_gap and depth_probability are shares in [0, 1]")
        if self.batch_size < 1 or self.iterations < 1 or self.steps < 0:
            raise ValueError("need batch_size ≥ 1, iterations ≥ 1, steps ≥ 0")

    @classmethod
    def convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        d["regimes"] = read_regimes(d.get("regimes", [])) or cls.regimes  # none saved: the defaults
        return d


def read_regimes(values: Iterable[Any]) -> tuple[PerturbRegime, ...]:
    """Perturbation regimes from their JSON (``dataclasses.asdict``) form; regimes pass as they are."""
    return tuple(
        r
        if isinstance(r, PerturbRegime)
        else PerturbRegime(r["probability"], tuple(r["rot_deg"]), tuple(r["trans_frac"]), tuple(r["padding"]))
        for r in values
    )


def training_scene_config(cfg: TrainOptions) -> SceneConfig:
    """The :class:`SceneConfig` of the training scenes: the defaults, ``cfg.image_size`` and ``cfg.scene``."""
    return cfg.scene_config()
