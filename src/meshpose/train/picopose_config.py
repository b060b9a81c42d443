"""Options of a ``meshpose train picopose`` run (the stage-1 patch features): :class:`PicoPoseTrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshpose.nets.patchfeat import PatchFeatConfig
from meshpose.train.common import TrainOptions

__all__ = ["PairOptions", "PicoPoseTrainConfig"]


@dataclass(frozen=True)
class PairOptions(TrainOptions):
    """How the training pairs of ``picopose``'s learned parts are drawn
    (:func:`~meshpose.train.picopose_data.make_pairs`): the options of :class:`~meshpose.train.common.TrainOptions`
    and these.

    Args:
        size: side of the object-centred crops (the estimator's ``size``), pixels.
        padding: crop side over the object's box side (the estimator's ``padding``).
        template_size: side of the template renderings before they are cut (the estimator's ``template_size``).
        view_jitter_deg: the template's viewing direction is drawn uniformly within this angle of the query's (the
            largest gap of the 162-view bank is 10.8°).
        inplane_residual_deg: the query is turned to the template's in-plane orientation up to a uniform residual
            within ± this (the estimator tries 16 rotations, 22.5° apart: a residual of at most 11.25°).
        masked_probability: share of queries whose background outside the object's modal mask is zeroed (the
            estimator's masked detections); the others keep it (box detections).
        val_items: validation pairs (their scenes take ``scene`` too).
    """

    size: int = 128
    padding: float = 1.2
    template_size: int = 192
    view_jitter_deg: float = 11.0
    inplane_residual_deg: float = 12.0
    masked_probability: float = 0.5
    val_items: int = 64

    def check(self) -> None:
        if self.batch_size < 1 or self.steps < 0:
            raise ValueError("need batch_size ≥ 1 and steps ≥ 0")
        if self.size % 16 != 0:
            raise ValueError(f"size must be a multiple of 16, got {self.size}")
        if not 0.0 <= self.masked_probability <= 1.0:
            raise ValueError(f"masked_probability must be in [0, 1], got {self.masked_probability}")


@dataclass(frozen=True)
class PicoPoseTrainConfig(PairOptions):
    """A ``meshpose train picopose`` run: :class:`~meshpose.nets.patchfeat.PatchFeatNet` features trained on pairs
    (template-like rendering, query in a synthetic scene) of generated objects; the options of
    :class:`PairOptions` (``batch_size``: pairs per step) and these.

    Args:
        match_radius: query and template patches correspond when their object points (patch means) are closer than
            this share of the diameter.
        min_cover: a patch takes part when at least this share of its pixels lies on the object.
        batch_negatives: the other pairs' template patches are negatives too (else only the own template's).
        workers: data processes (0: in the training process).
        net: network sizes (taken from the weights when ``init_weights`` is given).
        init_weights: start a new run from these features (a weights spec, e.g. ``"package"`` to fine-tune the
            shipped ones on known objects) instead of a random initialisation; only the network is taken over.
    """

    steps: int = 3000
    batch_size: int = 12
    lr: float = 1e-3
    warmup: int = 100
    match_radius: float = 0.08
    min_cover: float = 0.5
    batch_negatives: bool = True
    workers: int = 0
    val_every: int = 200
    ckpt_every: int = 50
    net: PatchFeatConfig = field(default_factory=PatchFeatConfig)
    init_weights: str | None = None
