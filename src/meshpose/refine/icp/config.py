"""Options of the ``icp`` preset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ICPConfig"]


@dataclass(frozen=True)
class ICPConfig:
    """Options of the ``icp`` preset. Distances named ``… × diameter`` are fractions of the object's diameter.

    Args:
        iterations: outer iterations (re-render + ICP) by default.
        inner_iterations: Open3D ICP iterations per outer iteration.
        max_correspondence_coarse: max correspondence distance of the first outer iteration (× diameter).
        max_correspondence_fine: that of the last outer iteration (× diameter); in between it shrinks
            geometrically.
        kernel: robust loss (Open3D) of the geometric residual: ``"tukey"``, ``"huber"`` or ``"none"`` (L2).
        kernel_scale: the kernel's ``k`` as a fraction of the current max correspondence distance.
        region_margin: dilation of the rendered silhouette (× diameter, converted to pixels at the object's depth).
        occluder_margin: observed points more than this × the current max correspondence distance in front of
            the rendered surface are taken as occluders and dropped.
        max_source_points: observed points kept for ICP (uniform random subsample).
        max_target_points: rendered points kept for ICP.
        tangent_weight: weight ``ε`` of the point-to-point term along the surface (0: plain point-to-plane).
        color_weight: weight of the intensity residual of the coloured ICP in degenerate views (0 turns the
            colour term off); intensities are normalised, so this balances ~unit intensity against metres.
        degenerate_conditioning: a view with a smaller eigenvalue ratio of the point-to-plane information
            matrix is treated as degenerate (see the module docstring).
        damping: Levenberg-Marquardt-like damping of the step along weak directions, relative to the largest
            eigenvalue (0 turns it off).
        color_max_correspondence: the coloured ICP runs once the max correspondence distance is at most this
            (× diameter): intensity gradients are local, it needs the geometric alignment first.
        color_max_step_deg: the coloured result is used only if it turns the geometric one by at most this …
        color_min_fitness_ratio: … if its fitness is at least this × the geometric one …
        color_max_rmse_ratio: … and its point-to-plane RMSE at most this × the geometric one.
        min_points: fewer observed points in the region (or ICP correspondences) is a failure.
        max_step_rot_deg: a larger rotation in one outer iteration counts as divergence.
        max_step_trans: a larger displacement of the visible surface's centroid in one outer iteration
            (× diameter) counts as divergence.
        converge_rot_deg: a step below this rotation and ``converge_trans`` counts as converged.
        converge_trans: see ``converge_rot_deg`` (× diameter).
        stop_early: stop once every object has converged in the finer half of the schedule.
        score_tolerance: inlier residual ``τ`` of the score (× diameter); set it above ~3 depth-noise sigmas.
        seed: seed of the point subsampling (results are deterministic for a given seed).
    """

    iterations: int = 6
    inner_iterations: int = 10
    max_correspondence_coarse: float = 0.3
    max_correspondence_fine: float = 0.03
    kernel: Literal["tukey", "huber", "none"] = "tukey"
    kernel_scale: float = 0.5
    region_margin: float = 0.1
    occluder_margin: float = 0.5
    max_source_points: int = 1000
    max_target_points: int = 1500
    tangent_weight: float = 0.01
    color_weight: float = 1e-4
    degenerate_conditioning: float = 0.02
    damping: float = 0.02
    color_max_correspondence: float = 0.12
    color_max_step_deg: float = 20.0
    color_min_fitness_ratio: float = 0.95
    color_max_rmse_ratio: float = 1.25
    min_points: int = 30
    max_step_rot_deg: float = 45.0
    max_step_trans: float = 0.5
    converge_rot_deg: float = 0.1
    converge_trans: float = 0.002
    stop_early: bool = True
    score_tolerance: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.inner_iterations < 1:
            raise ValueError(
                f"iterations must be ≥ 0 and inner_iterations ≥ 1, got {self.iterations}, {self.inner_iterations}"
            )
        if not (0 < self.max_correspondence_fine <= self.max_correspondence_coarse):
            raise ValueError(
                "need 0 < max_correspondence_fine ≤ max_correspondence_coarse, got "
                f"{self.max_correspondence_fine}, {self.max_correspondence_coarse}"
            )
        if self.kernel not in ("tukey", "huber", "none"):
            raise ValueError(f"kernel must be 'tukey', 'huber' or 'none', got {self.kernel!r}")
        positive = ("kernel_scale", "occluder_margin", "max_step_rot_deg", "max_step_trans", "score_tolerance")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        non_negative = (
            "region_margin",
            "converge_rot_deg",
            "converge_trans",
            "tangent_weight",
            "color_weight",
            "degenerate_conditioning",
            "damping",
            "color_max_correspondence",
            "color_max_step_deg",
            "color_min_fitness_ratio",
            "color_max_rmse_ratio",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.color_weight >= 1:
            raise ValueError(f"color_weight must be below 1, got {self.color_weight}")
        if self.min_points < 3 or self.max_source_points < self.min_points or self.max_target_points < self.min_points:
            raise ValueError("need min_points ≥ 3 and max_source_points, max_target_points ≥ min_points")
