"""Options of the ``abstract`` refiner."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshpose.render.base import Lighting

__all__ = ["AbstractConfig"]


@dataclass(frozen=True)
class AbstractConfig:
    """Options of the ``abstract`` refiner (abstract render-and-compare).

    The optimiser's defaults (block-wise AdaGrad, ``lr``, ``huber``) were chosen on held-out generated objects (GL
    scenes of ``novel:6000-6011`` and photoreal scenes of ``novel:6200-6230``), the foreground gate on those and on
    photoreal synthetic scenes of LM-O's meshes with distractors (docs/abstract.md), never on real ground truth.

    Args:
        weights: the descriptor network (``model.pt`` of ``meshpose train abstract``); ``None``: the shipped one.
        crop_sizes: crop side in pixels of each level, coarse to fine (multiples of 8: the network's stride).
        iterations: AdaGrad iterations (renders) per level; ``refine(iterations=n)`` rescales them to ``n``.
        padding: crop box size relative to the box that just fits the object (``≥ 1``).
        render_faces: crops are drawn from render meshes decimated to at most this many faces (0: as they are).
        lr: AdaGrad step size of the first iteration of a level, per coordinate: radians for the rotation,
            object diameters for the translation of the object's centre; one value for every level, or one per
            level (:meth:`level_lr`).
        lr_decay: the step size is multiplied by this after every iteration.
        lr_trans: the translation's step size relative to ``lr``.
        adagrad_blocks: accumulate the squared gradient per block (translation, rotation) instead of per coordinate:
            directions the image hardly constrains (depth) then step in proportion to their gradient instead of
            as far as the others.
        prior_trans: standard deviation of the initial pose's error, translation of the centre per axis, fraction
            of the diameter (the Gaussian prior on the departure from the initial pose shared with ``contour``).
        prior_rot_deg: the same for the rotation, degrees per axis.
        prior_weight: weight of that prior relative to the descriptor loss (0 disables it).
        adagrad_eps: AdaGrad's denominator floor (in the gradient's units).
        blur_px: σ (crop pixels) of the Gaussian blur applied to the rendered and the observed descriptors
            before they are compared, per level (a smoother loss, and screen-space gradients that agree with
            finite differences over a pixel or two of motion).
        gain: bounds of the scalar gain on the rendered descriptors fitted per crop (``None``: no gain); see
            :func:`~meshpose.refine.abstract.lightdr.crop_loss`.
        huber: Huber threshold of the per-pixel descriptor difference (descriptor units; ``inf``: plain L2).
        fusion_views: views rendered around each object for fusing descriptors onto it.
        fusion_size: side in pixels of those views.
        fusion_voxels: about this many surface voxels hold the fused descriptors.
        fusion_fill: share of the fusion view's side the object's bounding sphere spans.
        lighting: shading of the fusion views (what the network was trained to see in renders).
        fg_gate: multiply the observed descriptors by the network's foreground probability, so that what it calls
            background is compared as the background descriptor 0 whatever descriptor it gave it.
        fg_gate_full: with ``fg_gate``, the gate is ``min(p / fg_gate_full, 1)`` of the foreground probability
            ``p``: pixels at or above it keep their descriptors whole (1: the plain product ``p · descriptor``).
        score_tol: a pixel counts as explained (score) when its descriptor difference is under this.
        min_visible_px: fewer visible pixels than this in the crop makes the object a failure.
        max_step_deg: largest rotation of one step, degrees (a safety clamp; AdaGrad steps are ≤ ``lr``).
        max_step_trans: largest translation of the centre in one step, fraction of the diameter.
        cache_dir: folder of the fused descriptor fields (default ``$MESHPOSE_CACHE_DIR/abstract``).
    """

    weights: str | None = None
    crop_sizes: tuple[int, ...] = (64, 128)
    iterations: tuple[int, ...] = (25, 25)
    padding: float = 1.4
    render_faces: int = 3000
    lr: float | tuple[float, ...] = 2e-2
    lr_decay: float = 0.99
    lr_trans: float = 1.0
    adagrad_blocks: bool = True
    prior_trans: float = 0.07
    prior_rot_deg: float = 10.0
    prior_weight: float = 0.0
    adagrad_eps: float = 1e-8
    blur_px: tuple[float, ...] = (1.0, 1.5)
    huber: float = 0.25
    gain: tuple[float, float] | None = (0.5, 2.0)
    fusion_views: int = 50
    fusion_size: int = 128
    fusion_voxels: int = 5000
    fusion_fill: float = 0.8
    lighting: Lighting = field(default_factory=Lighting)
    fg_gate: bool = True
    fg_gate_full: float = 0.5
    score_tol: float = 0.5
    min_visible_px: int = 20
    max_step_deg: float = 10.0
    max_step_trans: float = 0.12
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        n = len(self.crop_sizes)
        if n == 0:
            raise ValueError("AbstractConfig.crop_sizes needs at least one level")
        for name in ("iterations", "blur_px"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"AbstractConfig.{name} needs one value per level ({n}), got {getattr(self, name)}")
        if any(int(s) < 16 or int(s) % 8 for s in self.crop_sizes):
            raise ValueError(f"AbstractConfig.crop_sizes must be multiples of 8 and ≥ 16 px, got {self.crop_sizes}")
        if not 0.0 < self.fg_gate_full <= 1.0:
            raise ValueError(f"AbstractConfig.fg_gate_full must be in (0, 1], got {self.fg_gate_full}")
        if any(int(k) < 0 for k in self.iterations):
            raise ValueError(f"AbstractConfig.iterations must be ≥ 0, got {self.iterations}")
        if not self.padding >= 1.0:
            raise ValueError(f"AbstractConfig.padding must be ≥ 1, got {self.padding}")
        lrs = self._lrs()
        if len(lrs) not in (1, n) or not all(x > 0 for x in lrs) or not 0 < self.lr_decay <= 1:
            raise ValueError(
                f"AbstractConfig: lr must be > 0 (one value, or one per level: {n}) and lr_decay in (0, 1], "
                f"got {self.lr}, {self.lr_decay}"
            )
        if self.fusion_views < 1 or self.fusion_voxels < 8 or self.fusion_size % 8:
            raise ValueError(
                "AbstractConfig: fusion_views ≥ 1, fusion_voxels ≥ 8 and fusion_size a multiple of 8 are required, "
                f"got {self.fusion_views}, {self.fusion_voxels}, {self.fusion_size}"
            )

    def _lrs(self) -> list[float]:
        """``lr`` as a list: one value for every level, or one per level."""
        return [float(self.lr)] if isinstance(self.lr, int | float) else [float(x) for x in self.lr]

    def level_lr(self, level: int) -> float:
        """AdaGrad's first step size at crop level ``level`` (``lr``, or its entry for that level)."""
        lrs = self._lrs()
        return lrs[level] if len(lrs) > 1 else lrs[0]
