"""The ``jointloss`` coarse estimator (RGB-D): DenseFusion-style votes from a detection's crop, then its refiner.

Per detection (a **mask** is needed: the sampled pixels are the mask's pixels with valid depth), the sample of
:mod:`meshpose.nets.jointloss_batch` (colour crop, sampled pixels, their back-projected depth) goes through the
estimator of a :class:`~meshpose.nets.jointloss.JointLossNet`; every sampled pixel votes for a pose with a
confidence, the most confident vote wins (the next ``hypotheses − 1`` most confident distinct votes follow), and the
network's refiner applies ``refine_iterations`` residual corrections to each hypothesis (the joint-loss paper's
estimator + refiner; 0 gives the raw estimator).

The weights were trained **without pose labels** (:mod:`meshpose.train.jointloss`) on the objects they name
(``obj_ids``, one head each): a detection of another object fails with ``UNKNOWN_OBJECT``. ``package:lmo`` knows
the eight LM-O objects by their BOP ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from meshpose.coarse.base import distinct_poses, estimate_each
from meshpose.nets.jointloss import JointLossNet, load_jointloss_net, run_jointloss
from meshpose.nets.jointloss_batch import SkippedDetection, collate, make_sample
from meshpose.types import Detection, Failure, FailureCode, ObjectModel, Observation, Pose, PoseEstimate

__all__ = ["JointLossEstimator", "JointLossEstimatorConfig"]


@dataclass(frozen=True)
class JointLossEstimatorConfig:
    """Options of the ``jointloss`` estimator.

    Args:
        weights: the network (``package:lmo``, a run's ``model.pt``, …).
        refine_iterations: the network's refiner steps after the estimator (0: the estimator alone; default 4,
            chosen on held-out synthetic crops — the paper's ``K`` is 2).
        margin: crop side over the detection box's longer side.
        min_points: fewest mask pixels with valid depth.
        min_vote_separation: distinct hypotheses differ by this share of the diameter (translation) or 15°.
        seed: seed of the pixel sampling (the same image gives the same poses).
        threads: torch CPU threads while estimating (``None``: unchanged).
    """

    weights: str = "package:lmo"
    refine_iterations: int = 4
    margin: float = 1.2
    min_points: int = 50
    min_vote_separation: float = 0.1
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.refine_iterations < 0 or self.margin < 1.0 or self.min_points < 1:
            raise ValueError("jointloss needs refine_iterations ≥ 0, margin ≥ 1 and min_points ≥ 1")


class JointLossEstimator:
    """The ``jointloss`` estimator preset (RGB-D). See the module docstring.

    Args:
        config: options.
        model: a network to use instead of loading ``config.weights`` (tests).
    """

    name = "jointloss"
    modality: Literal["rgb", "rgbd"] = "rgbd"
    Config = JointLossEstimatorConfig

    def __init__(self, config: JointLossEstimatorConfig | None = None, model: JointLossNet | None = None) -> None:
        self.config = config or JointLossEstimatorConfig()
        self.model = model if model is not None else load_jointloss_net(self.config.weights)
        self.model.eval()

    def estimate(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        detections: Sequence[Detection],
        *,
        hypotheses: int = 1,
    ) -> list[Any]:
        """Pose hypotheses per detection (:class:`~meshpose.coarse.base.Estimator`).

        Raises:
            ValueError: the observation has no depth.
        """
        if obs.depth is None:
            raise ValueError("jointloss is an RGB-D estimator: the observation has no depth")
        old = torch.get_num_threads()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        try:
            return estimate_each(
                obs, objects, detections, lambda d, m: self._one(obs, d, m, hypotheses), method=self.name
            )
        finally:
            torch.set_num_threads(old)

    def _one(
        self, obs: Observation, det: Detection, model: ObjectModel, hypotheses: int
    ) -> tuple[list[PoseEstimate], Failure | None, dict[str, Any]]:
        cfg = self.config
        head = self.model.head_of(det.obj_id)
        if head is None:
            known = ", ".join(str(o) for o in self.model.config.obj_ids)
            return [], Failure(FailureCode.UNKNOWN_OBJECT, f"the weights know objects {known}, not {det.obj_id}"), {}
        if det.mask is None:
            return (
                [],
                Failure(FailureCode.BAD_DETECTION, "jointloss needs a mask (its votes are the mask's pixels)"),
                {},
            )
        assert obs.depth is not None
        rng = np.random.default_rng([cfg.seed, det.obj_id])
        net_cfg = self.model.config
        try:
            sample = make_sample(
                obs.rgb, obs.depth, obs.camera, det, (det.scene_id, det.im_id, 0), rng,
                crop=net_cfg.image_size, points=net_cfg.num_points, margin=cfg.margin, min_points=cfg.min_points,
            )  # fmt: skip
        except SkippedDetection as exc:
            return [], Failure(FailureCode.BAD_DETECTION, str(exc)), {}
        data = collate([sample])
        out, _ = run_jointloss(self.model, data, torch.tensor([head]), 0)
        order = torch.argsort(out.c[0], descending=True)
        sep = cfg.min_vote_separation * model.diameter
        keep = distinct_poses(out.R[0, order].double().numpy(), out.t[0, order].double().numpy(), hypotheses, sep, 15.0)
        chosen = [int(order[k]) for k in keep]
        R = out.R[0, chosen]
        t = out.t[0, chosen]
        if cfg.refine_iterations > 0:
            k = len(chosen)
            rep = {key: (v.expand(k, *v.shape[1:]) if isinstance(v, torch.Tensor) else v) for key, v in data.items()}
            _, its = run_jointloss(self.model, rep, torch.full((k,), head), cfg.refine_iterations, init=(R, t))
            R, t = its[-1]
        conf = out.c[0, chosen]
        hyps = [
            PoseEstimate(det.obj_id, Pose(R[j].double(), t[j].double()), float(conf[j]), 0.0, {"vote": chosen[j]})
            for j in range(len(chosen))
        ]
        return hyps, None, {"points": len(sample.points)}
