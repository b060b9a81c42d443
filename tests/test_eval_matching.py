"""Tests of meshpose.eval.matching: BOP's greedy matching of estimates to ground-truth instances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpose.eval.matching import best_errors_per_gt, match_estimates, match_per_threshold
from meshpose.eval.metrics import recall

INF = math.inf


def ref_match(scores, errors, n_gt, threshold, gt_valid=None, max_estimates=None) -> list[int]:
    """Plain rewrite of the rule: estimates by decreasing score (stable), each takes the free valid instance
    with the smallest error strictly below the threshold, scanning instances in index order."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    if max_estimates is not None:
        order = order[:max_estimates]
    valid = [True] * n_gt if gt_valid is None else list(gt_valid)
    match = [-1] * n_gt
    for est in order:
        best_gt, best_err = -1, threshold
        for g in range(n_gt):
            if valid[g] and match[g] == -1 and errors[est][g] < best_err:
                best_gt, best_err = g, errors[est][g]
        if best_gt >= 0:
            match[best_gt] = est
    return match


def test_greedy_order_by_score():
    # estimate 1 is closer to instance 0, but estimate 0 scores higher and takes instance 0 first
    scores = [0.9, 0.5]
    errors = [[0.04, 0.08], [0.01, 0.09]]
    assert match_estimates(scores, errors, 0.1).tolist() == [0, 1]
    # each estimate takes its own best free instance
    assert match_estimates([0.5, 0.9], errors, 0.1).tolist() == [1, 0]


def test_each_gt_used_once_and_threshold_strict():
    scores = [0.9, 0.8, 0.7]
    errors = [[0.01, 0.5], [0.02, 0.5], [0.03, 0.05]]
    # estimate 1 finds instance 0 taken and instance 1 too far; estimate 2 takes instance 1
    assert match_estimates(scores, errors, 0.1).tolist() == [0, 2]
    # an error equal to the threshold does not match
    assert match_estimates(scores, errors, 0.05).tolist() == [0, -1]
    assert match_estimates([1.0], [[0.1]], 0.1).tolist() == [-1]
    # inf / NaN errors never match
    assert match_estimates([1.0, 0.5], [[INF, np.nan], [np.nan, 0.2]], 1.0).tolist() == [-1, 1]
    m = match_estimates(scores, errors, 0.1)
    used = m[m >= 0]
    assert len(set(used.tolist())) == len(used)


def test_ties():
    # equal scores keep the input order; equal errors go to the lowest instance index
    assert match_estimates([0.5, 0.5], [[0.01, 0.01], [0.01, 0.01]], 0.1).tolist() == [0, 1]
    assert match_estimates([0.5, 0.5], [[0.02, 0.01], [0.01, 0.02]], 0.1).tolist() == [1, 0]


def test_empty_inputs():
    assert match_estimates([], np.zeros((0, 3)), 0.1).tolist() == [-1, -1, -1]
    assert match_estimates([0.3, 0.2], np.zeros((2, 0)), 0.1).tolist() == []
    assert match_estimates([], [], 0.1).tolist() == []
    assert best_errors_per_gt([], np.zeros((0, 2)), 0.1).tolist() == [INF, INF]
    assert match_per_threshold([0.5], [[0.1]], []).shape == (0, 1)


def test_gt_valid_and_max_estimates():
    scores = [0.9, 0.8]
    errors = [[0.01, 0.02], [0.01, 0.02]]
    assert match_estimates(scores, errors, 0.1, gt_valid=[False, True]).tolist() == [-1, 0]
    assert match_estimates(scores, errors, 0.1, max_estimates=1).tolist() == [0, -1]
    # the top-k cut uses the score order, not the input order
    assert match_estimates([0.1, 0.9], errors, 0.1, max_estimates=1).tolist() == [1, -1]
    with pytest.raises(ValueError, match="max_estimates"):
        match_estimates(scores, errors, 0.1, max_estimates=0)
    with pytest.raises(ValueError, match="gt_valid"):
        match_estimates(scores, errors, 0.1, gt_valid=[True])
    with pytest.raises(ValueError, match="NaN"):
        match_estimates([np.nan, 0.1], errors, 0.1)
    with pytest.raises(ValueError, match="shape"):
        match_estimates([0.1], errors, 0.1)


def test_matching_depends_on_threshold():
    # at 0.2 the high-scoring estimate 0 matches nothing and estimate 1 takes instance 0;
    # at 0.5 estimate 0 takes instance 0 and blocks estimate 1
    scores = [0.9, 0.8]
    errors = [[0.3, INF], [0.1, INF]]
    per_th = match_per_threshold(scores, errors, [0.2, 0.5])
    assert per_th.tolist() == [[1, -1], [0, -1]]
    # recall per threshold from the per-threshold matching: [1/2, 1/2]; thresholding the errors matched at 0.5
    # instead would give 0 at 0.2, which is why BOP matches at every threshold
    assert (per_th >= 0).mean(axis=1).tolist() == [0.5, 0.5]
    assert recall(best_errors_per_gt(scores, errors, 0.5), [0.2]).tolist() == [0.0]


def test_best_errors_per_gt():
    scores = [0.9, 0.8, 0.1]
    errors = [[0.02, 0.5, 0.04], [0.01, 0.03, 0.5], [0.5, 0.5, 0.5]]
    np.testing.assert_array_equal(best_errors_per_gt(scores, errors, 0.1), [0.02, 0.03, INF])


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n_est=st.integers(0, 6),
    n_gt=st.integers(0, 5),
)
def test_against_reference(data, n_est, n_gt):
    values = st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, INF])  # a few values: many ties
    errors = [[data.draw(values) for _ in range(n_gt)] for _ in range(n_est)]
    scores = [data.draw(st.sampled_from([0.1, 0.5, 0.9])) for _ in range(n_est)]
    valid = [data.draw(st.booleans()) for _ in range(n_gt)]
    top = data.draw(st.one_of(st.none(), st.integers(1, 4)))
    thresholds = [0.02, 0.1, 0.25]
    err = np.array(errors, dtype=np.float64).reshape(n_est, n_gt)
    got = match_per_threshold(scores, err, thresholds, gt_valid=valid, max_estimates=top)
    for i, th in enumerate(thresholds):
        want = ref_match(scores, errors, n_gt, th, valid, top)
        assert got[i].tolist() == want
        # each instance matched at most once, only to an estimate whose error is below the threshold
        for g, e in enumerate(want):
            if e >= 0:
                assert errors[e][g] < th and valid[g]
        used = [e for e in want if e >= 0]
        assert len(used) == len(set(used))
