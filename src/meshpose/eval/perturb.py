"""Initial poses made from ground truth by a controlled perturbation (``meshpose perturb``).

Each ground-truth instance gets a rotation of exactly ``rot_deg`` about a uniformly random axis through the
object's origin, and a translation of exactly ``trans_frac × diameter`` in a uniformly random direction. The same
seed gives the same file. This is how refiners are compared at a known initial error (as in DeepIM, MegaPose and
GenFlow's refinement experiments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from meshpose.geometry.lie import perturb_pose
from meshpose.io.bop import BopDataset
from meshpose.io.results import ResultRow

__all__ = ["perturb_dataset"]


def perturb_dataset(
    dataset: BopDataset,
    *,
    rot_deg: float,
    trans_frac: float,
    seed: int = 0,
    image_keys: Sequence[tuple[int, int]] | None = None,
    obj_ids: Sequence[int] | None = None,
) -> list[ResultRow]:
    """Perturbed copies of every ground-truth pose of the chosen images, as BOP results rows.

    Args:
        dataset: the dataset (ground truth and diameters).
        rot_deg: rotation error in degrees, ``0 ≤ rot_deg ≤ 180``.
        trans_frac: translation error as a fraction of the object's diameter, ``≥ 0``.
        seed: random seed; draws are made instance by instance in image, then annotation order.
        image_keys: images to use (default: the dataset's target images).
        obj_ids: keep only these objects (default: all).

    Returns:
        One row per ground-truth instance (score 1, time 0), poses in metres.
    """
    if not (0.0 <= rot_deg <= 180.0):
        raise ValueError(f"rot_deg must be within [0, 180], got {rot_deg}")
    if not (trans_frac >= 0.0 and math.isfinite(trans_frac)):
        raise ValueError(f"trans_frac must be a non-negative number, got {trans_frac}")
    gen = torch.Generator().manual_seed(int(seed))
    keep = None if obj_ids is None else set(obj_ids)
    rows: list[ResultRow] = []
    for scene_id, im_id in image_keys if image_keys is not None else dataset.image_keys():
        for gt in dataset.gt(scene_id, im_id):
            if keep is not None and gt.obj_id not in keep:
                continue
            trans = trans_frac * dataset.diameter(gt.obj_id)
            pose = perturb_pose(gt.pose, math.radians(rot_deg), trans, gen)
            rows.append(ResultRow.from_pose(scene_id, im_id, gt.obj_id, pose, score=1.0, time_s=0.0))
    return rows
