"""A stand-in coarse estimator for the tests of ``meshpose estimate``: it reads the ground truth of a BOP dataset
and returns, per detection, known hypotheses built from it, so that the run machinery (planning, writing,
resume, failures, refinement and selection) is tested apart from any real method.

Register it with ``monkeypatch.setitem(meshpose.coarse.registry.ESTIMATORS, "fake", FAKE)`` and pass the dataset
in its config (``--config '{"dataset": "..."}'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meshpose.coarse.base import estimate_each
from meshpose.io.bop import BopDataset
from meshpose.types import (
    Detection,
    EstimateResult,
    Failure,
    FailureCode,
    ObjectModel,
    Observation,
    PoseEstimate,
)
from support.scenes import perturb

#: The registry entry of :class:`FakeEstimator`.
FAKE = ("support.fake_estimator", "FakeEstimator")


@dataclass(frozen=True)
class FakeConfig:
    """Options of :class:`FakeEstimator`.

    Args:
        dataset: the BOP dataset whose ground truth the hypotheses are made from.
        far_deg: rotation error (degrees) of the first hypothesis, which gets the highest score (``far_score``).
        near_deg: rotation error of every later hypothesis (hypothesis ``k`` turned with seed ``k``), whose score
            is ``near_score``: without refinement the far one is written, with refinement and a render-and-compare
            choice a near one should win.
        trans_frac: translation error of every hypothesis, as a fraction of the diameter.
        fail_obj_ids: detections of these objects fail with ``solver_failed``.
        modality: what it claims to need.
    """

    dataset: str = ""
    far_deg: float = 60.0
    near_deg: float = 5.0
    trans_frac: float = 0.02
    far_score: float = 0.9
    near_score: float = 0.5
    fail_obj_ids: tuple[int, ...] = ()
    modality: Literal["rgb", "rgbd"] = "rgb"


class FakeEstimator:
    """Hypotheses from the ground truth (see :class:`FakeConfig`); counts its calls in :attr:`calls`."""

    name = "fake"
    Config = FakeConfig

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config if config is not None else FakeConfig()
        self.modality = self.config.modality
        self.dataset = BopDataset(self.config.dataset)
        self.calls = 0

    def estimate(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        detections: Sequence[Detection],
        *,
        hypotheses: int = 1,
    ) -> list[EstimateResult]:
        self.calls += 1
        cfg = self.config

        def one(det: Detection, model: ObjectModel) -> tuple[list[PoseEstimate], Failure | None, dict[str, Any]]:
            if det.obj_id in cfg.fail_obj_ids:
                return [], Failure(FailureCode.SOLVER_FAILED, "told to fail"), {}
            gts = [g for g in self.dataset.gt(det.scene_id, det.im_id) if g.obj_id == det.obj_id]
            if not gts:
                return [], Failure(FailureCode.NOT_VISIBLE, "no ground truth"), {}
            gt = gts[0].pose
            out = []
            for k in range(hypotheses):
                deg, score = (cfg.far_deg, cfg.far_score) if k == 0 else (cfg.near_deg, cfg.near_score - 0.01 * k)
                pose = perturb(gt, deg, cfg.trans_frac, model.diameter, seed=k)
                out.append(PoseEstimate(det.obj_id, pose, score, 0.0))
            return out, None, {}

        return estimate_each(obs, objects, detections, one, method=self.name)


#: The registry entry of :class:`SpoilRefiner`.
SPOIL = ("support.fake_estimator", "SpoilRefiner")


@dataclass(frozen=True)
class SpoilConfig:
    """Options of :class:`SpoilRefiner`: ``shift_m``, how far every pose is moved along the camera's ``x``."""

    shift_m: float = 0.03


class SpoilRefiner:
    """A stand-in refiner that makes every pose worse (moves it sideways), for the tests of how ``estimate``
    chooses between refined and unrefined poses. Register with
    ``monkeypatch.setitem(meshpose.refine.registry.PRESETS, "spoil", SPOIL)``."""

    name = "spoil"
    modality: Literal["rgb", "rgbd"] = "rgb"
    Config = SpoilConfig

    def __init__(self, config: SpoilConfig | None = None) -> None:
        self.config = config or SpoilConfig()

    def refine(self, obs: Observation, objects: Sequence[ObjectModel], init: Any, iterations: Any = None) -> Any:
        import numpy as np
        import torch

        from meshpose.types import Pose, RefineInfo, RefineResult

        init = init.reshape(-1)
        moved = Pose(init.R, init.t + torch.tensor([self.config.shift_m, 0.0, 0.0], dtype=init.t.dtype))
        n = len(objects)
        info = RefineInfo({}, np.zeros(n, bool), [None] * n, 0)
        return RefineResult(moved, np.zeros(n), [init, moved], info)
