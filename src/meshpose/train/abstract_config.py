"""Options of a ``meshpose train abstract`` run (the descriptor network), :class:`AbstractTrainConfig`, and of a
``meshpose adapt abstract`` run, :class:`AbstractAdaptConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from meshpose.nets.descriptor import DescriptorNet, DescriptorNetConfig
from meshpose.train.adapt_config import PseudoFrameOptions, images_range_from_json, known_object_scenes
from meshpose.train.common import TrainOptions

__all__ = ["AbstractAdaptConfig", "AbstractTrainConfig"]


def _no_distractors() -> dict[str, Any]:
    return {"distractors_per_scene": [0, 0]}


@dataclass(frozen=True)
class AbstractTrainConfig(TrainOptions):
    """A ``meshpose train abstract`` run: :class:`~meshpose.nets.descriptor.DescriptorNet` descriptors trained on
    pairs (frame A: an instance in a cluttered synthetic scene; frame B: the object rendered alone on black) of
    generated objects; the options of :class:`~meshpose.train.common.TrainOptions` (``batch_size``: pairs per step)
    and these.

    Args:
        size: side of the crops, pixels (a multiple of 8; the refiner feeds 64 and 128).
        small_size: side of the smaller crops some steps train at (both frames downsampled by ``size / small_size``).
        small_probability: share of steps at ``small_size``.
        padding: crop side over the object's extent (``crop_box_around_object``), a uniform range.
        center_jitter: the crop centre moves by up to this share of the crop side (uniform, per axis).
        scale_jitter: the crop side is scaled by ``1 ± scale_jitter`` (uniform).
        same_orientation_probability: share of B frames with A's orientation (the others: a uniformly random one).
        distance_range: B's object distance as a multiple of A's (uniform).
        lateral: B's object is off the optical axis by up to this share of its distance (uniform, per axis).
        gap_probability: share of A frames whose objects get a random appearance change
            (:func:`~meshpose.train.genflow_data.appearance_gap`: gains, gamma, saturation, a colour field, blur).
        positives: corresponding pixel pairs sampled per pair.
        negatives: B object pixels per pair, the negatives of every A sample (those far enough from its point).
        depth_tolerance: a point of A is seen in B when B's depth there is within this share of the diameter.
        negative_radius: a B pixel is a negative of an A sample when their object points are farther apart than
            this share of the diameter.
        hardest_only: hinge only each A sample's nearest negative (in descriptor space) instead of the mean over
            the negatives inside the margin (it stalls at ``M/2``: :mod:`meshpose.train.abstract`).
        margin: the hinge margin ``M`` of the negatives and of the object pixels' distance from zero.
        background_weight: weight ``λ`` of the background term (background → 0, object pixels ≥ ``M`` from 0).
        fg_weight: weight of the foreground head's binary cross-entropy (A's and B's object masks).
        match_radius: validation counts an A sample matched when its nearest B object pixel in descriptor space
            lies within this share of the diameter of its point (``match@0.1d``).
        workers: data processes (0: in the training process).
        val_items: validation pairs (at ``size``).
        net: network sizes (taken from the weights when ``init_weights`` is given).
        init_weights: start a new run from these descriptor weights (a weights spec, e.g. ``"package"`` to
            fine-tune the shipped ones on known objects) instead of a random initialisation; only the network is
            taken over.

    The training scenes have no distractors by default (``scene``): a distractor is an unannotated generated object,
    which the background term would teach to be background while the network must describe every object.
    """

    steps: int = 6000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 200
    size: int = 128
    small_size: int = 64
    small_probability: float = 0.25
    padding: tuple[float, float] = (1.3, 1.6)
    center_jitter: float = 0.08
    scale_jitter: float = 0.1
    same_orientation_probability: float = 0.5
    distance_range: tuple[float, float] = (0.7, 1.4)
    lateral: float = 0.25
    gap_probability: float = 0.5
    positives: int = 256
    negatives: int = 1024
    depth_tolerance: float = 0.01
    negative_radius: float = 0.1
    hardest_only: bool = False
    margin: float = 1.0
    background_weight: float = 0.1
    fg_weight: float = 0.2
    match_radius: float = 0.1
    workers: int = 0
    val_items: int = 48
    val_every: int = 250
    ckpt_every: int = 50
    scene: dict[str, Any] = field(default_factory=_no_distractors)
    net: DescriptorNetConfig = field(default_factory=DescriptorNetConfig)
    init_weights: str | None = None

    tuple_options: ClassVar[tuple[str, ...]] = ("image_size", "padding", "distance_range")

    def check(self) -> None:
        if self.batch_size < 1 or self.steps < 0:
            raise ValueError("need batch_size ≥ 1 and steps ≥ 0")
        m = DescriptorNet.multiple
        if self.size % m or self.small_size % m or self.size % self.small_size:
            raise ValueError(
                f"size and small_size must be multiples of {m} and size a multiple of small_size, "
                f"got {self.size} and {self.small_size}"
            )
        for name in ("small_probability", "same_orientation_probability", "gap_probability"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 1.0 <= self.padding[0] <= self.padding[1]:
            raise ValueError(f"padding must be a range within [1, ∞), got {self.padding}")
        if not 0.0 < self.distance_range[0] <= self.distance_range[1]:
            raise ValueError(f"distance_range must be a positive range, got {self.distance_range}")
        if self.positives < 1 or self.negatives < 1:
            raise ValueError("need positives ≥ 1 and negatives ≥ 1")


@dataclass(frozen=True)
class AbstractAdaptConfig(PseudoFrameOptions, AbstractTrainConfig):
    """A ``meshpose adapt abstract`` run: the options of :class:`AbstractTrainConfig` (``data`` is the user's BOP
    dataset, whose meshes also make the synthetic scenes; ``batch_size`` pairs per step), those of
    :class:`~meshpose.train.adapt_config.PseudoFrameOptions` and ``init_weights``, the descriptor weights to adapt
    (``"package"``, ``"package:lmo"``, a ``model.pt``).

    The synthetic scenes have 2–6 distractors (``scene``): for known objects, anything else is background.
    """

    data: str = ""
    steps: int = 1000
    lr: float = 5e-4
    warmup: int = 50
    val_every: int = 250
    val_items: int = 64
    init_weights: str | None = "package"
    scene: dict[str, Any] = field(default_factory=known_object_scenes)

    given_frames: ClassVar[str | None] = "adapt abstract"

    def check(self) -> None:
        super().check()
        self.check_pseudo()

    @classmethod
    def convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        return images_range_from_json(d)
