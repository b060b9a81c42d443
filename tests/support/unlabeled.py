"""Unlabeled RGB-D fixtures: a tiny synthetic BOP dataset, its detections (from the modal masks) and then its pose
files deleted, so that a test proves a loader or trainer never needs a label. The true poses are kept aside, in
memory, for the test's own measurement only."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from meshpose.coarse.gt_detections import detections_from_gt
from meshpose.geometry.lie import perturb_pose
from meshpose.io.bop import BopDataset
from meshpose.io.detections import write_detections
from meshpose.synth import SceneConfig, SynthConfig, synthesize
from meshpose.train.adapt_config import PseudoPose
from meshpose.types import Detection, EstimateResult, ObjectModel, Observation, Pose, PoseEstimate

#: per image, in detection order: (the detection's mask, the true pose of its instance)
Truth = dict[tuple[int, int], list[tuple[np.ndarray, Pose]]]


@dataclass(frozen=True)
class Unlabeled:
    """A dataset without pose files: its ``root`` and ``split``, the detections file ``dets`` and the kept truth."""

    root: Path
    split: str
    dets: Path
    truth: Truth


def make_unlabeled(
    folder: Path,
    *,
    objects: str = "novel:3",
    images: int = 4,
    split: str = "test",
    seed: int = 3,
    size: tuple[int, int] = (200, 150),
    objects_per_scene: tuple[int, int] = (2, 3),
    distractors: tuple[int, int] = (0, 1),
    edit: Callable[[dict[tuple[int, int], list[Detection]]], None] | None = None,
) -> Unlabeled:
    """Synthesize one scene of ``images`` RGB-D views into ``folder/ds``, write ``folder/dets.json`` (``edit`` may
    change the detections first, e.g. add a bad one), keep the truth, and delete ``scene_gt.json`` and
    ``scene_gt_info.json``."""
    root = folder / "ds"
    synthesize(
        SynthConfig(
            out=str(root),
            objects=objects,
            scenes=1,
            images_per_scene=images,
            split=split,
            seed=seed,
            scene=SceneConfig(
                width=size[0], height=size[1], objects_per_scene=objects_per_scene, distractors_per_scene=distractors
            ),
        )
    )
    ds = BopDataset(root, split)
    dets: dict[tuple[int, int], list[Detection]] = {}
    truth: Truth = {}
    for key in ds.image_keys(targets_only=False):
        dets[key] = detections_from_gt(ds, *key, source="mask_visib")
        gts = ds.gt(*key)
        masks = [ds.mask_visib(*key, g.gt_id) for g in gts]
        truth[key] = []
        for d in dets[key]:
            j = next(j for j, m in enumerate(masks) if m is not None and np.array_equal(m, np.asarray(d.mask)))
            truth[key].append((np.asarray(d.mask), gts[j].pose))
    if edit is not None:
        edit(dets)
    path = folder / "dets.json"
    write_detections(path, dets)
    for scene in sorted((root / split).iterdir()):
        for name in ("scene_gt.json", "scene_gt_info.json"):
            (scene / name).unlink(missing_ok=True)  # from here on, nothing can read a pose
    return Unlabeled(root, split, path, truth)


class NearTruth:
    """A stand-in coarse estimator: the true pose of the detection (found by its mask) turned by 4° and moved by
    3 % of the diameter — a good estimate, not the label."""

    name = "near-truth"
    modality: Literal["rgb", "rgbd"] = "rgb"

    def __init__(self, truth: dict[tuple[int, int], list[tuple[np.ndarray, Pose]]]) -> None:
        self.truth = truth
        self.calls = 0

    def estimate(
        self, obs: Observation, objects: Sequence[ObjectModel], detections: Sequence[Detection], *, hypotheses: int = 1
    ) -> list[EstimateResult]:
        self.calls += 1
        gen = torch.Generator().manual_seed(self.calls)
        diam = {o.obj_id: o.diameter for o in objects}
        out = []
        for d in detections:
            pose = next(p for m, p in self.truth[(d.scene_id, d.im_id)] if np.array_equal(m, np.asarray(d.mask)))
            near = perturb_pose(pose, math.radians(4.0), 0.03 * diam[d.obj_id], gen)
            out.append(EstimateResult(d, [PoseEstimate(d.obj_id, near, 1.0, 0.0)]))
        return out


class Identity:
    """A stand-in refiner that keeps the pose (the pseudo poses of these tests are the estimator's)."""

    name = "identity"
    modality: Literal["rgb", "rgbd"] = "rgb"

    def refine(self, obs: Observation, objects: Sequence[ObjectModel], init: Pose, **_: Any) -> Any:
        from meshpose.refine.base import StageTimer, make_result

        n = len(objects)
        return make_result([init, init], np.ones(n), timer=StageTimer(), converged=np.ones(n, bool), failure=[None] * n)


def forbid_labels(monkeypatch: Any) -> None:
    """Make ``BopDataset.gt`` fail for the rest of a test (``monkeypatch``: pytest's), so that any pose label read
    by the code under test is an error."""
    from meshpose.io.bop import BopDataset

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("adapt read a ground-truth pose")

    monkeypatch.setattr(BopDataset, "gt", refuse)


def pseudo_from_truth(unlabeled: Unlabeled, scores: Callable[[int], float] = lambda n: 1.0) -> list[PseudoPose]:
    """The kept true poses of ``unlabeled`` as pseudo poses (the tests' stand-in for a teacher), in image and
    detection order, with the detections' object ids; the ``n``-th scored ``scores(n)``."""
    from meshpose.io.detections import read_detections

    dets = read_detections(unlabeled.dets)
    out = []
    for (s, i), items in sorted(unlabeled.truth.items()):
        for k, (_, pose) in enumerate(items):
            R, t = pose.numpy()
            out.append(PseudoPose(s, i, k, dets[(s, i)][k].obj_id, R, t, scores(len(out))))
    return out
