"""Options of the ``contour`` refiner."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshpose.render.base import Lighting

__all__ = ["ContourConfig"]


@dataclass(frozen=True)
class ContourConfig:
    """Options of the ``contour`` refiner (defaults tuned for ≤ 300 ms per object on 2 CPU cores).

    Args:
        crop_sizes: crop side in pixels of each level, coarse to fine.
        iterations: iterations (renders) per level; ``refine(iterations=n)`` rescales them to ``n`` in total.
        line_length_px: half-length (crop pixels) of the correspondence lines searched for the contour, per
            level.
        color_blur_px: σ (crop pixels) of the blur of the rendered and observed colour, per level.
        padding: crop box size relative to the box that just fits the object (``≥ 1``).
        render_faces: the crops are rendered from copies of the render meshes decimated to at most this many
            faces (made once per object model and kept while the refiner and the model live; 0 keeps the
            render meshes). At 64–128 px, a few thousand faces draw the same silhouette several times faster.
        max_lines: at most this many correspondence lines per object and iteration.
        line_robust: width (in robust standard deviations) of the Cauchy weights that discount the lines no
            rigid motion explains together with the others (occluded contour, background patches in the object's
            colours); 0 disables them.
        step_slope: smoothing (pixels) of the step function of the contour model.
        step_alpha: certainty (< 1) of the step function: how much one pixel's posterior can say.
        region_weight: weight of the region term: the mean over the correspondence lines (and the mean region
            energy) count as this many independent observations.
        color_weight: weight of the colour term, likewise (0 disables it).
        prior_trans: standard deviation of the initial pose's error, translation of the object centre per axis,
            fraction of the diameter (the prior that keeps directions the image hardly constrains — depth,
            mostly — near the initial pose).
        prior_rot_deg: standard deviation of the initial pose's rotation error per axis, degrees.
        prior_weight: weight of that prior (0 disables it).
        color_scale: L*a*b* difference that counts as one unit of colour residual.
        lightness_weight: weight of the L* channel relative to a*, b* in the colour residual. Lightness carries
            the shading, which our renders get only roughly right (light direction, specular highlights), so it
            counts less than the chroma.
        huber: Huber threshold of the colour residual (in ``color_scale`` units).
        hist_bins: colour histogram bins per RGB channel (a power of two).
        hist_tiles: the crop is cut into ``hist_tiles²`` cells with their own (3 × 3-cell pooled) histograms.
        hist_prior_count: weight, in samples, of the global histograms in each local one.
        fg_erode_px: the foreground colour model uses the silhouette eroded by this many crop pixels.
        bg_band: ``(inner, outer)`` radii of the background band around the silhouette, fractions of the crop side.
        mask_weight: with ``obs.mask``, the posterior is ``(1 - w)·P + w·mask`` (and the colour models come from
            the mask).
        lighting: shading of the renders (the colour term fits a gain/offset on top of it).
        damping: Levenberg–Marquardt damping ``λ``: a step that moves the visible pixels by ``m`` pixels (RMS) is
            penalised by ``λ m²`` (in the units of the energies' normal equations).
        max_step_deg: largest rotation of one step, degrees.
        max_step_trans: largest translation of the object centre in one step, fraction of the diameter.
        worse_tolerance: a step whose energy exceeds the best one's by more than this (relative) is taken back.
        converged_deg: a step smaller than this (degrees) ...
        converged_trans: ... and than this (fraction of the diameter) counts as converged.
        max_color_pixels: the colour term uses at most this many (evenly sub-sampled) pixels.
        min_visible_px: fewer visible pixels than this in the crop makes the object a failure.
        score_window: neighbourhood radius (crop pixels) of the neighbourhood-min colour distance of the score.
        score_line_tol: a correspondence line whose contour offset is under this (crop pixels) counts as an
            inlier (score).
        score_color_tol: L*a*b* distance under which a pixel's colour counts as explained (score).
    """

    crop_sizes: tuple[int, ...] = (64, 128)
    iterations: tuple[int, ...] = (8, 8)
    line_length_px: tuple[int, ...] = (10, 10)
    color_blur_px: tuple[float, ...] = (2.0, 1.0)
    padding: float = 1.6
    render_faces: int = 3000
    max_lines: int = 200
    line_robust: float = 1.5
    step_slope: float = 2.0
    step_alpha: float = 0.3
    region_weight: float = 30.0
    color_weight: float = 30.0
    prior_trans: float = 0.07
    prior_rot_deg: float = 10.0
    prior_weight: float = 1.0
    color_scale: float = 10.0
    lightness_weight: float = 0.3
    huber: float = 1.0
    hist_bins: int = 16
    hist_tiles: int = 4
    hist_prior_count: float = 30.0
    fg_erode_px: int = 1
    bg_band: tuple[float, float] = (0.03, 0.2)
    mask_weight: float = 0.7
    lighting: Lighting = field(default_factory=Lighting)
    damping: float = 0.05
    max_step_deg: float = 10.0
    max_step_trans: float = 0.12
    worse_tolerance: float = 0.05
    converged_deg: float = 0.05
    converged_trans: float = 0.0005
    max_color_pixels: int = 3000
    min_visible_px: int = 20
    score_window: int = 1
    score_line_tol: float = 2.0
    score_color_tol: float = 15.0

    def __post_init__(self) -> None:
        n = len(self.crop_sizes)
        if n == 0:
            raise ValueError("ContourConfig.crop_sizes needs at least one level")
        for name in ("iterations", "line_length_px", "color_blur_px"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ContourConfig.{name} needs one value per level ({n}), got {getattr(self, name)}")
        if any(int(s) < 16 for s in self.crop_sizes):
            raise ValueError(f"ContourConfig.crop_sizes must be ≥ 16 px, got {self.crop_sizes}")
        if any(int(k) < 0 for k in self.iterations):
            raise ValueError(f"ContourConfig.iterations must be ≥ 0, got {self.iterations}")
        if any(int(k) < 1 for k in self.line_length_px):
            raise ValueError(f"ContourConfig.line_length_px must be ≥ 1, got {self.line_length_px}")
        if not self.padding >= 1.0:
            raise ValueError(f"ContourConfig.padding must be ≥ 1, got {self.padding}")
        if not (0.0 <= self.bg_band[0] < self.bg_band[1]):
            raise ValueError(f"ContourConfig.bg_band must be (inner, outer) with 0 ≤ inner < outer, got {self.bg_band}")
        if not (0.0 < self.step_alpha < 1.0):
            raise ValueError(f"ContourConfig.step_alpha must be in (0, 1), got {self.step_alpha}")
