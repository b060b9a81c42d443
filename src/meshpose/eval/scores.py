"""BOP19 thresholds and the scores over per-instance errors: recall, average recall, BOP AR, ADD(-S) recall, AUC.

Threshold conventions (BOP19, ``eval_calc_scores.py``): a pose is correct when its error is *strictly* below
the threshold (see :mod:`meshpose.eval.metrics`). Every function here is pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ADDS_AUC_MAX_THRESHOLD",
    "BOP_MSPD_REFERENCE_WIDTH",
    "BOP_MSPD_THRESHOLDS",
    "BOP_MSSD_THRESHOLDS",
    "BOP_VSD_DELTA",
    "BOP_VSD_TAUS",
    "BOP_VSD_THRESHOLDS",
    "add_s_recall",
    "adds_auc",
    "average_recall",
    "bop_average_recall",
    "mspd_thresholds",
    "mssd_thresholds",
    "recall",
]

# ----------------------------------------------------------------------------------------------------------
# BOP19 constants
# ----------------------------------------------------------------------------------------------------------
#: MSSD correctness thresholds, as fractions of the object diameter (BOP19: 0.05, 0.10, ..., 0.50).
BOP_MSSD_THRESHOLDS: Final[tuple[float, ...]] = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
#: MSPD correctness thresholds in pixels for a 640-pixel-wide image (BOP19: 5, 10, ..., 50); scale them by
#: ``image_width / 640`` (see :func:`mspd_thresholds`).
BOP_MSPD_THRESHOLDS: Final[tuple[float, ...]] = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0)
#: The image width the MSPD thresholds refer to, pixels.
BOP_MSPD_REFERENCE_WIDTH: Final[int] = 640
#: VSD misalignment tolerances, as fractions of the object diameter (BOP19: 0.05, 0.10, ..., 0.50).
BOP_VSD_TAUS: Final[tuple[float, ...]] = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
#: VSD correctness thresholds on the (unitless) VSD error (BOP19: 0.05, 0.10, ..., 0.50).
BOP_VSD_THRESHOLDS: Final[tuple[float, ...]] = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
#: VSD visibility tolerance in metres (BOP19: 15 mm for every dataset except ITODD, which uses 5 mm).
BOP_VSD_DELTA: Final[float] = 0.015
#: Upper end of the PoseCNN ADD-S accuracy curve, metres.
ADDS_AUC_MAX_THRESHOLD: Final[float] = 0.10


# ----------------------------------------------------------------------------------------------------------
# Thresholds, recall and AUC
# ----------------------------------------------------------------------------------------------------------
def mssd_thresholds(diameter: float, fractions: Sequence[float] | ArrayLike = BOP_MSSD_THRESHOLDS) -> np.ndarray:
    """MSSD thresholds in metres for an object: ``fractions * diameter``.

    Args:
        diameter: object diameter, metres.
        fractions: ``(T,)`` thresholds as fractions of the diameter.

    Returns:
        ``(T,)`` float64 thresholds in metres.
    """
    return np.asarray(fractions, dtype=np.float64).reshape(-1) * float(diameter)


def mspd_thresholds(image_width: int, pixels_at_640: Sequence[float] | ArrayLike = BOP_MSPD_THRESHOLDS) -> np.ndarray:
    """MSPD thresholds in pixels for an image width: ``pixels_at_640 * image_width / 640``.

    Args:
        image_width: width of the test image, pixels.
        pixels_at_640: ``(T,)`` thresholds for a 640-pixel-wide image.

    Returns:
        ``(T,)`` float64 thresholds in pixels.
    """
    return np.asarray(pixels_at_640, dtype=np.float64).reshape(-1) * (image_width / BOP_MSPD_REFERENCE_WIDTH)


def recall(errors: ArrayLike, thresholds: Sequence[float] | ArrayLike) -> np.ndarray:
    """Fraction of ground-truth instances whose error is strictly below each threshold.

    ``errors`` holds one error per ground-truth instance: that of its matched estimate, ``inf`` (or NaN)
    where nothing was matched, so missing estimates count as failures. With several estimates and several
    instances of one object in an image, BOP matches separately at each threshold (see
    :func:`meshpose.eval.matching.match_per_threshold`); this function is then exact when each instance
    has one candidate estimate.

    Args:
        errors: ``(G, ...)`` errors per ground-truth instance (trailing dimensions, e.g. the VSD taus, are
            kept).
        thresholds: ``(T,)`` thresholds in the errors' unit.

    Returns:
        ``(T, ...)`` float64 recalls in ``[0, 1]``; zeros when ``G == 0`` (BOP's convention for no targets).

    Example:
        >>> recall([0.01, 0.03, np.inf, 0.05], [0.02, 0.05, 0.06]).tolist()
        [0.25, 0.5, 0.75]
    """
    e = np.asarray(errors, dtype=np.float64)
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if e.ndim == 0:
        raise ValueError("errors must have shape (G, ...)")
    th_b = th.reshape(-1, *([1] * e.ndim))
    if e.shape[0] == 0:
        return np.zeros((len(th), *e.shape[1:]), dtype=np.float64)
    return np.asarray((e[None] < th_b).mean(axis=1), dtype=np.float64)


def average_recall(errors: ArrayLike, thresholds: Sequence[float] | ArrayLike) -> float:
    """Mean of :func:`recall` over the thresholds (and over any trailing dimension, e.g. the VSD taus).

    ``average_recall(mssd / diameter, BOP_MSSD_THRESHOLDS)`` is AR_MSSD;
    ``average_recall(vsd_errors (G, 10), BOP_VSD_THRESHOLDS)`` is AR_VSD (the mean over the 10 × 10 pairs).

    Args:
        errors: ``(G, ...)`` errors per ground-truth instance (``inf`` where missing).
        thresholds: ``(T,)`` thresholds.

    Returns:
        The average recall in ``[0, 1]``.

    Example:
        >>> average_recall([0.01, 0.03, np.inf, 0.05], [0.02, 0.05, 0.06])
        0.5
    """
    return float(np.mean(recall(errors, thresholds)))


def bop_average_recall(ar_vsd: float, ar_mssd: float, ar_mspd: float) -> float:
    """BOP19 score: ``AR = (AR_VSD + AR_MSSD + AR_MSPD) / 3``."""
    return float((ar_vsd + ar_mssd + ar_mspd) / 3.0)


def add_s_recall(errors: ArrayLike, diameters: float | ArrayLike, frac: float = 0.1) -> float:
    """ADD(-S) recall: fraction of instances with error strictly below ``frac`` × diameter.

    Args:
        errors: ``(G,)`` ADD or ADD-S errors in metres (``inf`` for missing estimates).
        diameters: object diameter(s) in metres, scalar or ``(G,)``.
        frac: threshold as a fraction of the diameter (0.1 is the usual "ADD(-S) 0.1d").

    Returns:
        The recall in ``[0, 1]``; ``0.0`` when ``G == 0``.

    Example:
        >>> add_s_recall([0.005, 0.02, np.inf], 0.1)
        0.3333333333333333
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if len(e) == 0:
        return 0.0
    d = np.broadcast_to(np.asarray(diameters, dtype=np.float64), e.shape)
    return float(np.mean(e < frac * d))


def adds_auc(
    errors_m: ArrayLike,
    max_threshold_m: float = ADDS_AUC_MAX_THRESHOLD,
    *,
    method: Literal["posecnn", "exact"] = "posecnn",
) -> float:
    """Area under the accuracy–threshold curve of ADD(-S) errors from 0 to ``max_threshold_m``, in ``[0, 1]``.

    The accuracy at threshold ``x`` is the fraction of instances with error ``<= x``; missing estimates
    (``inf`` or NaN) never count. The area is divided by ``max_threshold_m``.

    ``method="posecnn"`` reproduces the YCB-Video toolbox (``VOCap``) that PoseCNN, DenseFusion and their
    successors report: errors above ``max_threshold_m`` are dropped, the ``k``-th smallest error ``d_k`` of
    ``n`` carries accuracy ``k / n`` over the interval ``(d_{k-1}, d_k]`` (a right-endpoint rule; repeated
    errors take the accuracy of their first occurrence), and the last accuracy extends to
    ``max_threshold_m``. ``method="exact"`` integrates the true step curve, which equals
    ``mean(max(0, 1 - e / max_threshold_m))``; it is lower than the PoseCNN figure by about
    ``max(d) / (n · max_threshold_m)``.

    Args:
        errors_m: ``(G,)`` errors in metres, ``inf`` where an estimate is missing.
        max_threshold_m: upper end of the curve, metres (PoseCNN: 0.10).
        method: ``"posecnn"`` (default, comparable with published numbers) or ``"exact"``.

    Returns:
        The normalised area in ``[0, 1]``; ``0.0`` when ``G == 0``.

    Example:
        >>> # 0.02·1/4 + 0.03·2/4 + 0.05·2/4 = 0.045, divided by 0.1
        >>> round(adds_auc([0.02, 0.05, np.inf, 0.2]), 12)
        0.45
        >>> round(adds_auc([0.02, 0.05, np.inf, 0.2], method="exact"), 12)  # (0.8 + 0.5) / 4
        0.325
    """
    e = np.asarray(errors_m, dtype=np.float64).reshape(-1)
    if not (np.isfinite(max_threshold_m) and max_threshold_m > 0):
        raise ValueError(f"max_threshold_m must be positive, got {max_threshold_m}")
    n = len(e)
    if n == 0:
        return 0.0
    e = np.where(np.isnan(e), np.inf, e)
    if method == "exact":
        return float(np.mean(np.clip(1.0 - e / max_threshold_m, 0.0, 1.0)))
    if method != "posecnn":
        raise ValueError(f"method must be 'posecnn' or 'exact', got {method!r}")
    d = np.sort(e[e <= max_threshold_m])
    if len(d) == 0:
        return 0.0
    acc = np.arange(1, len(d) + 1, dtype=np.float64) / n
    # Curve abscissae [0, d_1..d_m, max]; ordinates [0, acc_1..acc_m, acc_m] (already non-decreasing).
    x = np.concatenate([[0.0], d, [max_threshold_m]])
    y = np.concatenate([[0.0], acc, [acc[-1]]])
    step = np.nonzero(x[1:] != x[:-1])[0] + 1
    area = float(np.sum((x[step] - x[step - 1]) * y[step]))
    return area / max_threshold_m
