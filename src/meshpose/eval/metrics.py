"""Pose-error metrics and recall scores as pure, batched numpy functions (one import for all of them).

Every function takes and returns float64 numpy arrays; nothing here renders, reads files or keeps state.

Conventions (see ``DESIGN.md``):

* Units are metres; image-space errors are pixels; angles are degrees.
* A pose is ``cam_from_obj`` given as ``(R, t)`` with ``R`` of shape ``(..., 3, 3)`` and ``t`` of shape
  ``(..., 3)``: ``x_cam = R @ x_obj + t``. The batch dimensions of the estimated and the ground-truth poses
  broadcast against each other, and every per-pose metric returns one value per pose, shape ``(...,)``.
* ``points`` are ``(P, 3)`` model points in the object frame (metres).
* ``symmetries`` are ``(S, 4, 4)`` transforms ``obj_from_obj`` (metres) under which the object looks the
  same, identity first (``ObjectModel.symmetries``). ``None`` means the identity alone.
* Pixel ``(u, v)`` with integer coordinates is the centre of a pixel (as in :mod:`meshpose.types` and in
  bop_toolkit).

The definitions follow the BOP benchmark (Hodaň et al., ECCV 2018 and the BOP Challenge 2019 rules) as
implemented in ``bop_toolkit_lib/pose_error.py``; the ADD-S AUC follows PoseCNN (Xiang et al., RSS 2018,
YCB-Video toolbox). Where this module departs from the reference code (float64 instead of float32, the
formula used for the rotation angle), the docstring says so.

Threshold conventions (BOP19, ``eval_calc_scores.py``): a pose is correct when its error is *strictly*
below the threshold. MSSD errors are compared as ``mssd / diameter < th`` for ``th`` in
:data:`BOP_MSSD_THRESHOLDS`, MSPD errors as ``mspd * 640 / image_width < th`` for ``th`` in
:data:`BOP_MSPD_THRESHOLDS`, and VSD errors (already unitless) against :data:`BOP_VSD_THRESHOLDS` for each
``tau`` in :data:`BOP_VSD_TAUS`. :func:`mssd_thresholds` and :func:`mspd_thresholds` give the same
thresholds in metres and pixels.
The functions live in three modules by concern: :mod:`meshpose.eval.pose_errors` (ADD, ADD-S, MSSD, MSPD,
rotation and translation error), :mod:`meshpose.eval.vsd` (VSD and the distance images it needs) and
:mod:`meshpose.eval.scores` (the BOP19 constants, thresholds, recall, average recall, ADD(-S) recall and AUC);
this module gathers them under one name.
"""

from meshpose.eval.pose_errors import add, add_or_adds, adds, mspd, mssd, re, te
from meshpose.eval.scores import (
    ADDS_AUC_MAX_THRESHOLD,
    BOP_MSPD_REFERENCE_WIDTH,
    BOP_MSPD_THRESHOLDS,
    BOP_MSSD_THRESHOLDS,
    BOP_VSD_DELTA,
    BOP_VSD_TAUS,
    BOP_VSD_THRESHOLDS,
    add_s_recall,
    adds_auc,
    average_recall,
    bop_average_recall,
    mspd_thresholds,
    mssd_thresholds,
    recall,
)
from meshpose.eval.vsd import depth_to_distance, sphere_projections_overlap, vsd

__all__ = [
    "ADDS_AUC_MAX_THRESHOLD",
    "BOP_MSPD_REFERENCE_WIDTH",
    "BOP_MSPD_THRESHOLDS",
    "BOP_MSSD_THRESHOLDS",
    "BOP_VSD_DELTA",
    "BOP_VSD_TAUS",
    "BOP_VSD_THRESHOLDS",
    "add",
    "add_or_adds",
    "add_s_recall",
    "adds",
    "adds_auc",
    "average_recall",
    "bop_average_recall",
    "depth_to_distance",
    "mspd",
    "mspd_thresholds",
    "mssd",
    "mssd_thresholds",
    "re",
    "recall",
    "sphere_projections_overlap",
    "te",
    "vsd",
]
