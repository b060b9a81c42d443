"""BOP-style greedy matching of pose estimates to ground-truth instances of one object in one image.

The rule is that of bop_toolkit ``pose_matching.match_poses``:

* Estimates are visited in order of decreasing score; equal scores keep their input order (a stable sort,
  as Python's ``sorted(..., reverse=True)``). With ``max_estimates`` only the first ``max_estimates`` of
  that order take part (BOP19 keeps the top ``inst_count`` estimates per object and image).
* Each estimate takes the not-yet-matched, valid ground-truth instance with the smallest error *strictly*
  below the threshold; on equal errors the lowest instance index wins. An estimate with no such instance
  matches nothing and blocks nothing.
* Every estimate and every instance is matched at most once.

Matching depends on the threshold: at a larger threshold a high-scoring estimate may take an instance that
a lower-scoring one would take at a smaller threshold. BOP therefore matches separately at each threshold;
:func:`match_per_threshold` does that for all thresholds in one pass.

All functions take ``scores`` ``(E,)`` and ``errors`` ``(E, G)`` (error of estimate ``e`` w.r.t. instance
``g``; ``inf`` or NaN never match) and handle ``E = 0`` and ``G = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["best_errors_per_gt", "match_estimates", "match_per_threshold"]


def _inputs(
    scores: ArrayLike, errors: ArrayLike, gt_valid: ArrayLike | None, max_estimates: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate; return errors ``(E, G)``, the visiting order of the estimates and the valid-instance mask."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim == 1 and e.size == 0:
        e = e.reshape(len(s), 0)
    if e.ndim != 2 or e.shape[0] != len(s):
        raise ValueError(f"errors must have shape (E, G) with E = len(scores) = {len(s)}, got {e.shape}")
    if np.any(np.isnan(s)):
        raise ValueError("scores contain NaN")
    g = e.shape[1]
    if gt_valid is None:
        valid = np.ones(g, dtype=bool)
    else:
        valid = np.asarray(gt_valid, dtype=bool).reshape(-1)
        if len(valid) != g:
            raise ValueError(f"gt_valid must have shape ({g},), got {np.shape(gt_valid)}")
    order = np.argsort(-s, kind="stable")
    if max_estimates is not None:
        if int(max_estimates) != max_estimates or max_estimates < 1:
            raise ValueError(f"max_estimates must be a positive integer or None, got {max_estimates}")
        order = order[: int(max_estimates)]
    return e, order, valid


def match_per_threshold(
    scores: ArrayLike,
    errors: ArrayLike,
    thresholds: Sequence[float] | ArrayLike,
    *,
    gt_valid: ArrayLike | None = None,
    max_estimates: int | None = None,
) -> np.ndarray:
    """Greedy BOP matching at each of several thresholds.

    Args:
        scores: ``(E,)`` confidence of each estimate (higher first; NaN is rejected).
        errors: ``(E, G)`` error of each estimate w.r.t. each ground-truth instance of the same object, in the
            thresholds' unit (e.g. ``mssd / diameter``).
        thresholds: ``(T,)`` correctness thresholds; a pair matches only if its error is strictly below.
        gt_valid: ``(G,)`` bool, instances that may be matched (BOP: the targets, e.g. visible enough);
            others are never matched. Default: all.
        max_estimates: keep only this many top-scoring estimates (BOP19: the target's ``inst_count``).
            Default: all.

    Returns:
        ``(T, G)`` int64: index into ``scores`` of the estimate matched to each instance at each threshold,
        ``-1`` where none.

    Example:
        >>> # the high-scoring estimate 0 is close to nothing; at 0.5 it takes instance 0 from estimate 1
        >>> match_per_threshold([0.9, 0.8], [[0.3, np.inf], [0.1, np.inf]], [0.2, 0.5]).tolist()
        [[1, -1], [0, -1]]
    """
    e, order, valid = _inputs(scores, errors, gt_valid, max_estimates)
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    n_th, n_gt = len(th), e.shape[1]
    match = np.full((n_th, n_gt), -1, dtype=np.int64)
    if n_gt == 0 or n_th == 0:
        return match
    free = np.broadcast_to(valid, (n_th, n_gt)).copy()
    rows = np.arange(n_th)
    for est in order:
        cand = np.where(free & (e[est][None, :] < th[:, None]), e[est][None, :], np.inf)
        best = np.argmin(cand, axis=1)  # first index among equal errors, as BOP's strict '<' scan
        hit = np.isfinite(cand[rows, best])
        r, g = rows[hit], best[hit]
        match[r, g] = est
        free[r, g] = False
    return match


def match_estimates(
    scores: ArrayLike,
    errors: ArrayLike,
    threshold: float,
    *,
    gt_valid: ArrayLike | None = None,
    max_estimates: int | None = None,
) -> np.ndarray:
    """Greedy BOP matching at one threshold.

    Args:
        scores: ``(E,)`` confidence of each estimate (higher first).
        errors: ``(E, G)`` error of each estimate w.r.t. each ground-truth instance.
        threshold: correctness threshold; a pair matches only if its error is strictly below.
        gt_valid: ``(G,)`` bool, instances that may be matched. Default: all.
        max_estimates: keep only this many top-scoring estimates. Default: all.

    Returns:
        ``(G,)`` int64 index into ``scores`` of the matched estimate, ``-1`` where none.

    Example:
        >>> scores = [0.5, 0.9]
        >>> errors = [[0.01, 0.02], [0.03, 0.04]]  # estimate 1 scores higher and goes first
        >>> match_estimates(scores, errors, 0.05).tolist()
        [1, 0]
    """
    return match_per_threshold(scores, errors, [threshold], gt_valid=gt_valid, max_estimates=max_estimates)[0]


def best_errors_per_gt(
    scores: ArrayLike,
    errors: ArrayLike,
    threshold: float,
    *,
    gt_valid: ArrayLike | None = None,
    max_estimates: int | None = None,
) -> np.ndarray:
    """Error of the estimate matched to each ground-truth instance by :func:`match_estimates`.

    Args:
        scores: ``(E,)`` confidence of each estimate.
        errors: ``(E, G)`` error of each estimate w.r.t. each ground-truth instance.
        threshold: correctness threshold (strict).
        gt_valid: ``(G,)`` bool, instances that may be matched. Default: all.
        max_estimates: keep only this many top-scoring estimates. Default: all.

    Returns:
        ``(G,)`` float64 matched errors, ``inf`` where an instance is unmatched; ready for
        :func:`meshpose.eval.metrics.recall` at thresholds up to ``threshold`` (exact when each instance has
        a single candidate estimate; otherwise match per threshold).

    Example:
        >>> best_errors_per_gt([0.9, 0.8], [[0.01, 0.02], [0.5, 0.03]], 0.1).tolist()
        [0.01, 0.03]
    """
    e, _, _ = _inputs(scores, errors, gt_valid, max_estimates)
    match = match_estimates(scores, e, threshold, gt_valid=gt_valid, max_estimates=max_estimates)
    out = np.full(e.shape[1], np.inf, dtype=np.float64)
    hit = match >= 0
    out[hit] = e[match[hit], np.nonzero(hit)[0]]
    return out
