"""Unlabeled RGB-D fixtures: a tiny synthetic BOP dataset, its detections (from the modal masks) and then its pose
files deleted, so that a test proves a loader or trainer never needs a label. The true poses are kept aside, in
memory, for the test's own measurement only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshpose.coarse.gt_detections import detections_from_gt
from meshpose.io.bop import BopDataset
from meshpose.io.detections import write_detections
from meshpose.synth import SceneConfig, SynthConfig, synthesize
from meshpose.types import Detection, Pose

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
