"""Options of a ``meshpose adapt genflow`` run (:class:`AdaptConfig`) and the pseudo poses it trains from
(:class:`PseudoPose`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from meshpose.nets.genflow import STRIDE, GenFlowNetConfig
from meshpose.train.common import TrainOptions

if TYPE_CHECKING:
    from meshpose.io.detections import DetectionsByImage

__all__ = [
    "AdaptConfig",
    "PseudoFrameOptions",
    "PseudoPose",
    "check_images_range",
    "check_pseudo_detections",
    "images_range_from_json",
    "known_object_scenes",
]


@dataclass(frozen=True)
class PseudoPose:
    """The pose the refiner itself gave one detection (estimate + refine at the starting weights): the training
    target's stand-in. Never a ground-truth pose.

    Args:
        scene_id: the image's scene.
        im_id: the image.
        det_index: the detection's index in that image's list (:func:`~meshpose.io.detections.read_detections`
            order, by decreasing score).
        obj_id: the detected object.
        R: ``(3, 3)`` ``cam_from_obj`` rotation.
        t: ``(3,)`` translation, metres.
        score: render-and-compare score of the pose (:func:`~meshpose.coarse.score.score_hypotheses`, in [0, 1],
            higher is better): the curriculum's ranking.
    """

    scene_id: int
    im_id: int
    det_index: int
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    score: float

    @property
    def image(self) -> tuple[int, int]:
        return (self.scene_id, self.im_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``RUN/pseudo_poses.json``)."""
        return {
            "scene_id": self.scene_id,
            "im_id": self.im_id,
            "det_index": self.det_index,
            "obj_id": self.obj_id,
            "R": np.asarray(self.R, np.float64).reshape(3, 3).tolist(),
            "t": np.asarray(self.t, np.float64).reshape(3).tolist(),
            "score": float(self.score),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PseudoPose:
        return cls(
            int(d["scene_id"]),
            int(d["im_id"]),
            int(d["det_index"]),
            int(d["obj_id"]),
            np.asarray(d["R"], np.float64).reshape(3, 3),
            np.asarray(d["t"], np.float64).reshape(3),
            float(d["score"]),
        )


@dataclass(frozen=True)
class AdaptConfig(TrainOptions):
    """A ``meshpose adapt genflow`` run: :class:`~meshpose.train.common.TrainOptions` (``data`` is the user's BOP
    dataset; the synthetic-scene options are unused) and these.

    Args:
        split: the dataset's split.
        detections: the detections file (BOP default-detections JSON with masks).
        images_range: use only images with ``im_id`` in ``[A, B)`` (``None``: all).
        crop_size: side of the network's crops, pixels (a multiple of 8).
        padding: range of the crop box size over the object's projected extent (uniform per item).
        rot_deg: range of the rotation (degrees, uniform, random axis) that perturbs the pseudo pose into the
            start pose of an item.
        trans_frac: range of its translation (fraction of the diameter, uniform, random direction).
        iterations: recurrent iterations of the network per item.
        gamma: weight decay of earlier iterations in the sequence loss.
        loss_size: side (pixels) at which the poses are soft-rendered and compared with the observed crop (the same
            box as the network's crop, resampled): smaller is faster.
        render_faces: the soft renderer's meshes are decimated to at most this many faces.
        render_sigma: the soft rasteriser's edge softness, pixels² at ``loss_size``.
        colour_weight: ``λ`` of the colour term (LAB without L).
        iou_weight: ``λ`` of the mask IoU term (against the detection's mask).
        geometry_weight: ``λ`` of the geometry term (observed depth only).
        geometry_clip: bound on each observed point's distance in the geometry term, metres.
        observed_points: observed depth points per item for the geometry term.
        model_points: model points per object for the geometry term.
        use_depth: use the observed depth when the dataset has it (network input, PnP depth residual, geometry
            term).
        depth_prior_weight: RGB only: the PnP layer's prior holding the start depth (the ``genflow`` refiner's).
        min_score: pseudo poses scored below this are not used.
        curriculum_start: share of the training items (best pseudo-pose scores first) used at step 0.
        curriculum_widen: share of the run over which that share grows linearly to all items.
        val_share: share of the user's *images* (not detections) kept out of training: their items measure the run.
        val_items: at most this many held-out items are measured.
        net: network sizes (taken from ``init_weights``).
        init_weights: the weights to adapt (``"package"``: those shipped with meshpose; a ``model.pt`` or
            checkpoint).
        pseudo_refine: the refiner (or chain) that turns each detection's ``picopose`` estimate into its pseudo
            pose — the teacher; its ``genflow`` runs with ``init_weights``. Default ``genflow+contour`` and
            ``pseudo_weight`` 1: chosen on held-out photoreal synthetic scenes (ADD(-S) gain +0.115 vs +0.011 for
            the self-supervised loss alone with the ``genflow`` teacher; docs/adapt.md), not on real labels.
        pseudo_weight: weight of the pseudo-label term: ``genflow``'s own supervised loss (flow of the rendered
            points to where the pseudo pose projects them, inside the detection's mask, + ``pose_weight`` · the
            point-matching loss) with the pseudo pose in place of the truth (0: the self-supervised joint loss
            alone).
        pose_weight: weight of the point-matching loss inside the pseudo-label term (``genflow`` training's).
    """

    data: str = ""
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-4
    warmup: int = 20
    ckpt_every: int = 50
    val_every: int = 50
    log_every: int = 10
    val_objects: str = ""
    split: str = "test"
    detections: str = ""
    images_range: tuple[int, int] | None = None
    crop_size: int = 128
    padding: tuple[float, float] = (1.2, 1.6)
    rot_deg: tuple[float, float] = (0.0, 15.0)
    trans_frac: tuple[float, float] = (0.0, 0.1)
    iterations: int = 4
    gamma: float = 0.8
    loss_size: int = 64
    render_faces: int = 1000
    render_sigma: float = 1.0
    colour_weight: float = 2e-4
    iou_weight: float = 0.1
    geometry_weight: float = 1.0
    geometry_clip: float = 0.02
    observed_points: int = 200
    model_points: int = 500
    use_depth: bool = True
    depth_prior_weight: float = 3e-4
    min_score: float = 0.0
    curriculum_start: float = 0.5
    curriculum_widen: float = 0.5
    val_share: float = 0.2
    val_items: int = 64
    net: GenFlowNetConfig = field(default_factory=GenFlowNetConfig)
    init_weights: str | None = "package"
    pseudo_refine: str = "genflow+contour"
    pseudo_weight: float = 1.0
    pose_weight: float = 10.0

    given_frames: ClassVar[str | None] = "adapt"
    tuple_options: ClassVar[tuple[str, ...]] = ("image_size", "padding", "rot_deg", "trans_frac")

    def check(self) -> None:
        if self.crop_size % STRIDE or self.crop_size < 32:
            raise ValueError(f"crop_size must be a multiple of {STRIDE} and ≥ 32, got {self.crop_size}")
        if self.loss_size < 8:
            raise ValueError(f"loss_size must be ≥ 8, got {self.loss_size}")
        for name in ("padding", "rot_deg", "trans_frac"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"{name} must be a range [lo, hi] with 0 ≤ lo ≤ hi, got {(lo, hi)}")
        if self.padding[0] < 1.0:
            raise ValueError(f"padding must be ≥ 1, got {self.padding}")
        for name in ("curriculum_start", "curriculum_widen", "val_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a share in [0, 1], got {getattr(self, name)}")
        if self.curriculum_start <= 0.0:
            raise ValueError("curriculum_start must be > 0 (the first steps need items)")
        if self.batch_size < 1 or self.iterations < 1 or self.steps < 0 or not 0.0 < self.gamma <= 1.0:
            raise ValueError("need batch_size ≥ 1, iterations ≥ 1, steps ≥ 0, 0 < gamma ≤ 1")
        if self.pseudo_weight < 0 or self.pose_weight < 0:
            raise ValueError("pseudo_weight and pose_weight must be ≥ 0")
        check_images_range(self.images_range)

    @classmethod
    def convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        return images_range_from_json(d)


def check_pseudo_detections(pseudo: Iterable[PseudoPose], dets: DetectionsByImage, source: str) -> None:
    """Refuse a pseudo pose whose detection (image, index, object, mask) is not in ``dets`` (read from ``source``).

    Raises:
        ValueError: the first such pseudo pose, named.
    """
    for p in pseudo:
        found = dets.get(p.image, [])
        if p.det_index >= len(found) or found[p.det_index].obj_id != p.obj_id or found[p.det_index].mask is None:
            raise ValueError(
                f"pseudo pose of scene {p.scene_id} image {p.im_id} detection {p.det_index} (object {p.obj_id}) "
                f"has no such detection with a mask in {source}"
            )


def check_images_range(images_range: tuple[int, int] | None) -> None:
    """Refuse an empty ``[A, B)`` range of image ids (``None``: all images)."""
    if images_range is not None and not images_range[0] < images_range[1]:
        raise ValueError(f"images_range [A, B) needs A < B, got {images_range}")


def images_range_from_json(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (a run's saved options) with its ``images_range`` list read back as a tuple of ints."""
    if d.get("images_range") is not None:
        d["images_range"] = tuple(int(v) for v in d["images_range"])
    return d


def known_object_scenes() -> dict[str, Any]:
    """The synthetic scenes of known-object adaptation: 2–6 distractors (background to the known objects)."""
    return {"distractors_per_scene": [2, 6]}


@dataclass(frozen=True)
class PseudoFrameOptions:
    """The options of an adaptation run whose training views are the user's images at their pseudo poses, mixed with
    synthetic scenes of the same meshes (``meshpose adapt abstract`` and ``deeprm``,
    :mod:`meshpose.train.pseudo_views`): a mixin put before the method's training options.

    Args:
        split: the dataset's split.
        detections: the detections file (BOP default-detections JSON with masks).
        images_range: use only images with ``im_id`` in ``[A, B)`` (``None``: all).
        use_depth: the teacher uses the images' depth when they have it.
        pseudo_refine: the refiner (or chain) that turns each detection's ``picopose`` estimate into its pseudo
            pose — the teacher (a member that is the adapted method runs the starting weights, the others their
            defaults).
        pseudo_share: the best-scored share of the pseudo poses (of the training images; of the held-out ones) that
            are items.
        min_score: pseudo poses scored below this are never items.
        real_share: share of the draws (of ``views_per_scene`` views each) taken from the user's images; the others
            are synthetic scenes of the same meshes.
        val_share: share of the user's *images* kept out of training; their items choose ``best.pt``.
    """

    split: str = "test"
    detections: str = ""
    images_range: tuple[int, int] | None = None
    use_depth: bool = True
    pseudo_refine: str = "genflow+contour"
    pseudo_share: float = 0.5
    min_score: float = 0.0
    real_share: float = 0.5
    val_share: float = 0.2

    def check_pseudo(self) -> None:
        """Refuse shares outside ``[0, 1]``, no items (``pseudo_share`` 0) and an empty ``images_range``."""
        for name in ("pseudo_share", "real_share", "val_share"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} is a share in [0, 1], got {getattr(self, name)}")
        if self.pseudo_share <= 0.0:
            raise ValueError("pseudo_share must be > 0 (the run needs items)")
        check_images_range(self.images_range)
