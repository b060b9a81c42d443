"""The ``register`` coarse estimator (RGB-D, training-free): multi-start robust registration of the model to the
detection's depth.

Per detection (a **mask** is needed), up to ``max_points`` pixels of the mask with valid depth are back-projected
(camera frame, metres) and the object model is registered to them by :func:`~meshpose.geometry.registration.
register_hypotheses` (uniform start rotations, coarse then fine robust point-to-plane ICP onto the camera-facing
model points, each pose scored by ``fitness − violation``, where the free-space violations are tested against the
full image's depth). The score of a :class:`~meshpose.types.PoseEstimate` is that registration score (about
``[-1, 1]``, higher is better; ``fitness`` is the share of the observed points on the model surface).

With ``hypotheses > 1`` it returns the distinct poses among the search's ``registration.top_k`` refined starts,
best score first: two are the same when some symmetry of the object maps one onto the other within
``min_separation_deg`` degrees and ``min_separation`` diameters. So there are at most ``top_k``, and fewer when
starts converge to the same pose.

The pixel sampling is seeded by ``(seed, scene_id, im_id, detection index)``, as in the weak labels of
:mod:`meshpose.train.weak_labels`: on the same images and detections it gives the same poses (``docs/jointloss.md``
measures them). Per-detection failures: no depth image or too few mask pixels with valid depth (``NO_DEPTH``), no
mask or an empty one (``BAD_DETECTION``), an object without a model (``UNKNOWN_OBJECT``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from meshpose.coarse.base import distinct_poses, estimate_each
from meshpose.geometry.projection import valid_depth
from meshpose.geometry.registration import WeakPoseConfig, detection_points, register_hypotheses
from meshpose.types import (
    Detection,
    EstimateResult,
    Failure,
    FailureCode,
    ObjectModel,
    Observation,
    PoseEstimate,
)

__all__ = ["RegisterEstimator", "RegisterEstimatorConfig"]


@dataclass(frozen=True)
class RegisterEstimatorConfig:
    """Options of the ``register`` estimator.

    Args:
        registration: the pose search's settings (distances in diameters; a mapping of its fields is accepted,
            e.g. from ``--config '{"registration": {"directions": 30}}'``).
        min_points: fewest mask pixels with valid depth.
        max_points: most observed points drawn from them (the search then uses ``registration.observed_points``).
        min_separation: distinct hypotheses are this share of the diameter apart (translation) …
        min_separation_deg: … or this many degrees (rotation), under every symmetry of the object.
        seed: seed of the point sampling and the start rotations.
        threads: Open3D threads while estimating (``None``: unchanged; 1 makes repeated runs bit-identical, Open3D's
            parallel ICP sums otherwise differ in the last bits).
    """

    registration: WeakPoseConfig = field(default_factory=WeakPoseConfig)
    min_points: int = 50
    max_points: int = 1000
    min_separation: float = 0.1
    min_separation_deg: float = 15.0
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        reg = self.registration
        if isinstance(reg, Mapping):
            known = {f.name for f in fields(WeakPoseConfig)}
            bad = sorted(set(reg) - known)
            if bad:
                raise ValueError(f"register: registration has no option(s) {bad}; options: {', '.join(sorted(known))}")
            opts = dict(reg)
            if "fine_corr" in opts:
                opts["fine_corr"] = tuple(float(c) for c in opts["fine_corr"])
            object.__setattr__(self, "registration", WeakPoseConfig(**opts))
        elif not isinstance(reg, WeakPoseConfig):
            raise ValueError(f"register: registration must be a WeakPoseConfig or a mapping, got {type(reg).__name__}")
        if self.min_points < 3 or self.max_points < self.min_points:
            raise ValueError("register needs min_points ≥ 3 and max_points ≥ min_points")
        if self.min_separation < 0 or self.min_separation_deg < 0:
            raise ValueError("register needs min_separation ≥ 0 and min_separation_deg ≥ 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("register needs threads ≥ 1 (or None)")


class RegisterEstimator:
    """The ``register`` estimator preset (RGB-D, no weights). See the module docstring.

    Args:
        config: options.
    """

    name = "register"
    modality: Literal["rgb", "rgbd"] = "rgbd"
    Config = RegisterEstimatorConfig

    def __init__(self, config: RegisterEstimatorConfig | None = None) -> None:
        self.config = config or RegisterEstimatorConfig()

    def estimate(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        detections: Sequence[Detection],
        *,
        hypotheses: int = 1,
    ) -> list[EstimateResult]:
        """Pose hypotheses per detection (:class:`~meshpose.coarse.base.Estimator`); without a depth image every
        detection fails with ``NO_DEPTH``."""
        depth = None if obs.depth is None else np.asarray(obs.depth)  # Observation checks its size
        index = {id(d): j for j, d in enumerate(detections)}
        threads = self.config.threads
        o3d_utility: Any = None
        old = 0
        if threads is not None:
            import open3d as o3d  # imported on first use: it takes ~2 s

            o3d_utility = o3d.utility
            old = o3d_utility.get_max_threads()
            o3d_utility.set_max_threads(threads)
        try:
            return estimate_each(
                obs,
                objects,
                detections,
                lambda d, m: self._one(obs, depth, d, m, index[id(d)], hypotheses),
                method=self.name,
            )
        finally:
            if o3d_utility is not None:
                o3d_utility.set_max_threads(old)

    def _one(
        self, obs: Observation, depth: np.ndarray | None, det: Detection, model: ObjectModel, j: int, hypotheses: int
    ) -> tuple[list[PoseEstimate], Failure | None, dict[str, Any]]:
        cfg = self.config
        if depth is None:
            return [], Failure(FailureCode.NO_DEPTH, "the observation has no depth image (an RGB-D method)"), {}
        if det.mask is None:
            return [], Failure(FailureCode.BAD_DETECTION, "register needs a mask (its points are the mask's)"), {}
        valid = int(np.count_nonzero(det.mask & valid_depth(depth)))
        if valid < cfg.min_points:
            return (
                [],
                Failure(
                    FailureCode.NO_DEPTH,
                    f"{valid} pixels of the mask have valid depth < {cfg.min_points} "
                    f"(mask has {int(np.count_nonzero(det.mask))})",
                ),
                {},
            )
        # the seed of the weak labels of the same detection (meshpose.train.weak_labels); ids of -1 (unknown) wrap
        rng = np.random.default_rng([cfg.seed, det.scene_id % 2**32, det.im_id % 2**32, j])
        pts = detection_points(det.mask, depth, obs.camera.K, cfg.max_points, rng)
        found = register_hypotheses(pts, model, obs.camera, det.mask, depth=depth, config=cfg.registration, rng=rng)
        Rs = np.stack([lab.pose.numpy()[0] for lab in found])
        ts = np.stack([lab.pose.numpy()[1] for lab in found])
        max_t = cfg.min_separation * float(model.diameter)
        keep = distinct_poses(Rs, ts, hypotheses, max_t, cfg.min_separation_deg, model.symmetries)
        chosen = [found[k] for k in keep]
        hyps = [
            PoseEstimate(
                det.obj_id,
                lab.pose,
                float(lab.score),
                0.0,
                {"fitness": lab.fitness, "rmse": lab.rmse, "violation": lab.violation},
            )
            for lab in chosen
        ]
        if not all(math.isfinite(h.score) for h in hyps):
            return [], Failure(FailureCode.NUMERICAL, "the registration score is not finite"), {}
        return hyps, None, {"points": len(pts), "search_s": found[0].time_s, "candidates": len(found)}
