"""Options of a ``meshpose train jointloss`` run: :class:`JointLossTrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from meshpose.nets.jointloss import JointLossNetConfig
from meshpose.train.common import TrainOptions

__all__ = ["JointLossTrainConfig"]


@dataclass(frozen=True)
class JointLossTrainConfig(TrainOptions):
    """A ``meshpose train jointloss`` run: the RGB-D estimator and refiner trained **without pose labels** from
    unlabeled RGB-D frames and their detections (:mod:`meshpose.train.jointloss`); the options of
    :class:`~meshpose.train.common.TrainOptions` (those of the synthetic scenes do not apply: the frames are given)
    and these.

    Args:
        data: the BOP dataset of the unlabeled RGB-D frames (its ``split``); its models are the objects. Its
            ``scene_gt.json`` is never opened.
        split: the split folder of ``data``.
        detections: BOP default-detections JSON of ``data`` (boxes and masks; obj_id per detection).
        weak_labels: the cache file of the weak pose targets (empty: ``RUN/weak_labels.npz``).
        weak_steps: stage 1 (the weak loss) lasts this many steps; stage 2 (the self-supervised joint loss through
            the differentiable renderer) the rest.
        min_weak_score: weak targets scored below this (:class:`~meshpose.train.weak_labels.WeakLabel` ``score``)
            are not used.
        weak_weight: weight of the weak loss in stage 2 (stage 1: 1).
        crop: side of the colour crop, pixels.
        points: sampled foreground pixels per crop (``N``).
        model_points: model points of the losses.
        conf_w: DenseFusion's confidence regulariser ``w`` (distances in metres).
        votes: stage 2: per crop, this many votes get the (geometric) confidence-weighted loss.
        vote_weight: weight of that loss (0: stage 2 trains only the rendered best vote and the refiner).
        colour_weight, iou_weight, geometry_weight: the joint loss's ``λ`` (LAB units, IoU, metres).
        geometry_clip: bound on each observed point's distance in the geometry term, metres.
        refine_iterations: ``K`` of the refiner (trained and validated).
        occlusion_aware: stage 2's mask IoU leaves out rendered pixels that the observed depth shows hidden behind
            something (:func:`~meshpose.train.jointloss.visible_weight`).
        occlusion_margin: metres in front of the rendered surface that count as an occluder.
        refiner_perturb_share: share of the items whose refiner starts from a perturbed pose instead of the
            estimator's vote (:func:`~meshpose.train.jointloss.refiner_starts`).
        refiner_perturb_deg: largest rotation of those starts, degrees (uniform).
        refiner_perturb_frac: largest translation of those starts, share of the diameter (uniform).
        render_faces: the differentiable renderer's meshes are decimated to at most this many faces.
        render_sigma: the soft rasteriser's edge softness, pixels².
        augment: colour jitter and depth noise on the training crops.
        val_data: held-out BOP dataset (its labels are read, for validation figures only); empty: no validation.
        val_split: its split.
        val_detections: its detections.
        val_items: validation crops (the first ones, in a fixed order).
        net: network sizes (``num_objects`` and ``obj_ids`` are set from ``data``'s objects; taken from the weights
            when ``init_weights`` is given).
        init_weights: start a new run from these ``jointloss`` weights (a weights spec: a file, ``package:lmo``)
            instead of a random initialisation; they must know exactly ``data``'s objects.
    """

    data: str = ""
    split: str = "train_pbr"
    detections: str = ""
    weak_labels: str = ""
    steps: int = 6000
    weak_steps: int = 3000
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 100
    min_weak_score: float = 0.6
    weak_weight: float = 0.0
    crop: int = 80
    points: int = 500
    model_points: int = 500
    conf_w: float = 0.015
    votes: int = 32
    vote_weight: float = 1.0
    colour_weight: float = 2e-4
    iou_weight: float = 0.1
    geometry_weight: float = 1.0
    geometry_clip: float = 0.02
    refine_iterations: int = 2
    occlusion_aware: bool = False
    occlusion_margin: float = 0.01
    refiner_perturb_share: float = 0.5
    refiner_perturb_deg: float = 15.0
    refiner_perturb_frac: float = 0.1
    render_faces: int = 1000
    render_sigma: float = 1.0
    augment: bool = True
    workers: int = 0
    val_data: str = ""
    val_split: str = "test"
    val_detections: str = ""
    val_objects: str = ""
    val_items: int = 200
    val_every: int = 500
    ckpt_every: int = 50
    net: JointLossNetConfig = field(default_factory=JointLossNetConfig)
    init_weights: str | None = None

    given_frames: ClassVar[str | None] = "jointloss"
    tuple_options: ClassVar[tuple[str, ...]] = ("image_size",)

    def check(self) -> None:
        if self.batch_size < 1 or self.steps < 0 or self.weak_steps < 0:
            raise ValueError("need batch_size ≥ 1, steps ≥ 0 and weak_steps ≥ 0")
        if self.crop < 16 or self.points < 8 or self.model_points < 8 or self.votes < 1:
            raise ValueError("need crop ≥ 16, points ≥ 8, model_points ≥ 8 and votes ≥ 1")
        if self.refine_iterations < 0:
            raise ValueError(f"refine_iterations must be ≥ 0, got {self.refine_iterations}")
        if min(self.colour_weight, self.iou_weight, self.geometry_weight, self.weak_weight) < 0:
            raise ValueError("loss weights must be ≥ 0")
        if self.val_data and not self.val_detections:
            raise ValueError("val_data needs val_detections")

    def check_data(self) -> None:
        """Refuse a run without its frames (checked when training starts, so that defaults can be built first).

        Raises:
            ValueError: no ``data`` or no ``detections``.
        """
        if not self.data or not self.detections:
            raise ValueError(
                "jointloss trains on unlabeled RGB-D frames: give --data (a BOP dataset) and --detections (their "
                "boxes and masks)"
            )
