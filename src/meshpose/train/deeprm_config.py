"""Options of a ``meshpose train deeprm`` run, :class:`DeepRMTrainConfig`, and of a ``meshpose adapt deeprm`` run,
:class:`DeepRMAdaptConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from meshpose.nets.deeprm import DeepRMNetConfig
from meshpose.train.adapt_config import PseudoFrameOptions, images_range_from_json, known_object_scenes
from meshpose.train.common import TrainOptions
from meshpose.train.genflow_config import PerturbRegime, read_regimes

__all__ = ["FLOW_SCALE_WEIGHTS", "DeepRMAdaptConfig", "DeepRMTrainConfig"]

#: weights of the flow decoder's scales, coarse (stride 32) to fine (stride 4); FlowNet weighs the finer more
FLOW_SCALE_WEIGHTS = (0.05, 0.1, 0.25, 0.6)


@dataclass(frozen=True)
class DeepRMTrainConfig(TrainOptions):
    """A ``meshpose train deeprm`` run: the options of :class:`~meshpose.train.common.TrainOptions` and these.

    Args:
        iterations: unrolled refinement iterations per item: each renders the object at the pose the previous one
            reached; the pose is detached between iterations, the recurrent state is not. DeepRM trains with 6; the
            shipped weights were trained with 2, a third of the cost per item on the CPU, and refine well over 6
            (``docs/deeprm.md``; 6 in training was not compared).
        truncate_state: also detach the recurrent state between iterations (no back-propagation through time).
        flow_weight: ``α``, the weight of the flow decoder's multi-scale end-point error (0: no flow loss).
        flow_scale_weights: weights of its scales, coarse to fine.
        brightness: range of a per-item gain on the rendered crops (the renderer's brightness varies).
        render_gap: share of items whose first rendering gets ``genflow``'s appearance change.
        regimes: perturbation regimes of the initial poses (and crop paddings).
        perturbations: initial poses drawn per visible instance of a synthetic view, each with its own crop and
            first rendering — several cheap items from one costly scene (the scene synthesis, not the network,
            bounds a CPU run's items per second; measured: 13.5 items/s at 1 on one core).
        mix_items: items kept in hand before a batch is drawn from them, so that a batch mixes scenes (one scene
            gives up to ``views × instances × perturbations`` items).
        encoder_init: the ``genflow`` weights (a weights spec) that the correlation front's encoder of a new run
            starts from (``net.fusion = "correlation"``; ``None``: random, as early fusion always is).
        val_items: validation items (their scenes take ``scene`` too).
        val_iterations: refinement iterations in validation.
        val_rot_deg: rotation error of the validation inits, degrees.
        val_trans_frac: translation error of the validation inits, fraction of the diameter.
        val_padding: crop padding in validation (the refiner's default).
        net: network sizes (its ``resolution`` is the crop size).
        init_weights: start a new run from these weights (a weights spec) instead of a random initialisation.
    """

    steps: int = 20000
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 200
    iterations: int = 2
    truncate_state: bool = False
    flow_weight: float = 1.0
    flow_scale_weights: tuple[float, ...] = FLOW_SCALE_WEIGHTS
    brightness: tuple[float, float] = (0.7, 1.3)
    render_gap: float = 0.0
    regimes: tuple[PerturbRegime, ...] = (
        PerturbRegime(0.5, (5.0, 35.0), (0.0, 0.25), (1.3, 1.6)),
        PerturbRegime(0.5, (0.0, 15.0), (0.0, 0.1), (1.3, 1.6)),
    )
    perturbations: int = 6
    mix_items: int = 96
    encoder_init: str | None = "package"
    val_items: int = 64
    val_iterations: int = 6
    val_rot_deg: float = 15.0
    val_trans_frac: float = 0.1
    val_padding: float = 1.45
    val_every: int = 250
    net: DeepRMNetConfig = field(default_factory=DeepRMNetConfig)
    init_weights: str | None = None

    tuple_options: ClassVar[tuple[str, ...]] = ("image_size", "brightness", "flow_scale_weights")

    def check(self) -> None:
        if not self.regimes or abs(sum(r.probability for r in self.regimes) - 1.0) > 1e-6:
            raise ValueError("regime probabilities must sum to 1")
        if self.batch_size < 1 or self.iterations < 1 or self.steps < 0 or self.val_iterations < 1:
            raise ValueError("need batch_size ≥ 1, iterations ≥ 1, val_iterations ≥ 1, steps ≥ 0")
        scales = self.net.flow_scales
        if len(self.flow_scale_weights) not in (scales, 4):
            raise ValueError(
                f"flow_scale_weights needs one weight per flow scale ({scales}; or 4, of which the finest "
                "scales are used behind the correlation front)"
            )
        if self.perturbations < 1:
            raise ValueError(f"perturbations must be ≥ 1, got {self.perturbations}")
        if not 0.0 < self.brightness[0] <= self.brightness[1]:
            raise ValueError(f"brightness must be a range of positive gains, got {self.brightness}")
        if self.flow_weight > 0 and not self.net.flow_head:
            raise ValueError("flow_weight > 0 needs a network with a flow head (net.flow_head)")

    @classmethod
    def convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        if "regimes" in d:
            d["regimes"] = read_regimes(d["regimes"])
        return d


@dataclass(frozen=True)
class DeepRMAdaptConfig(PseudoFrameOptions, DeepRMTrainConfig):
    """A ``meshpose adapt deeprm`` run: the options of :class:`DeepRMTrainConfig` (``data`` is the user's BOP
    dataset, whose meshes also make the synthetic scenes), those of
    :class:`~meshpose.train.adapt_config.PseudoFrameOptions` and ``init_weights``, the ``deeprm`` weights to adapt
    (``"package"``, ``"package:lmo"``, a ``model.pt``). The items' "truth" is the pseudo pose; validation measures
    the point-matching error against the held-out images' pseudo poses (``pm_mean`` chooses ``best.pt``).

    The synthetic scenes have 2–6 distractors (``scene``): for known objects, anything else is background.
    """

    data: str = ""
    steps: int = 500
    lr: float = 1e-4
    warmup: int = 25
    val_every: int = 100
    init_weights: str | None = "package"
    scene: dict[str, Any] = field(default_factory=known_object_scenes)

    given_frames: ClassVar[str | None] = "adapt deeprm"

    def check(self) -> None:
        super().check()
        self.check_pseudo()

    @classmethod
    def convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        return images_range_from_json(super().convert(d))
