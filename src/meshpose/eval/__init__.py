"""Evaluation: pose-error metrics, recall/AUC scores and BOP-style matching as pure batched functions.

``meshpose.eval.metrics`` holds the error functions (ADD, ADD-S, MSSD, MSPD, VSD, rotation/translation
error) and the scores (recall, average recall, ADD-S AUC) with the BOP19 thresholds as constants;
``meshpose.eval.matching`` matches estimates to ground-truth instances the way bop_toolkit does.
"""

from meshpose.eval.matching import best_errors_per_gt, match_estimates, match_per_threshold
from meshpose.eval.metrics import (
    ADDS_AUC_MAX_THRESHOLD,
    BOP_MSPD_REFERENCE_WIDTH,
    BOP_MSPD_THRESHOLDS,
    BOP_MSSD_THRESHOLDS,
    BOP_VSD_DELTA,
    BOP_VSD_TAUS,
    BOP_VSD_THRESHOLDS,
    add,
    add_or_adds,
    add_s_recall,
    adds,
    adds_auc,
    average_recall,
    bop_average_recall,
    depth_to_distance,
    mspd,
    mspd_thresholds,
    mssd,
    mssd_thresholds,
    re,
    recall,
    sphere_projections_overlap,
    te,
    vsd,
)

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
    "best_errors_per_gt",
    "bop_average_recall",
    "depth_to_distance",
    "match_estimates",
    "match_per_threshold",
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
