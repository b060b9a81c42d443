"""``meshpose eval`` scoring on a generated dataset, against cases whose answer is known."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meshpose.eval.perturb import perturb_dataset
from meshpose.eval.report import EvalConfig, evaluate
from meshpose.geometry.lie import rotation_angle
from meshpose.io.bop import BopDataset
from meshpose.io.results import ResultRow
from meshpose.types import Pose


def _gt_rows(ds: BopDataset, shift_frac: float = 0.0) -> list[ResultRow]:
    rows = []
    for s, i in ds.image_keys():
        for g in ds.gt(s, i):
            t = g.pose.t + torch.tensor([shift_frac * ds.diameter(g.obj_id), 0.0, 0.0], dtype=torch.float64)
            rows.append(ResultRow.from_pose(s, i, g.obj_id, Pose(g.pose.R, t), 1.0, 0.5))
    return rows


def test_perfect_results_score_one(tiny_bop: Path) -> None:
    ds = BopDataset(tiny_bop)
    rep = evaluate(ds, _gt_rows(ds))
    o = rep["overall"]
    assert o["num_targets"] == 6 and o["num_estimates"] == 6
    for key in ("add_s_recall", "add_recall", "adds_recall", "ar_mssd", "ar_mspd", "ar_vsd", "ar"):
        assert o[key] == pytest.approx(1.0), key
    assert o["adds_auc"] > 0.99
    assert o["mean_time_per_image_s"] == pytest.approx(0.5)
    assert set(rep["per_object"]) == {"1", "2"}


def test_known_shift_decides_add_recall(tiny_bop: Path) -> None:
    ds = BopDataset(tiny_bop)
    near = evaluate(ds, _gt_rows(ds, 0.05), EvalConfig(metrics=("mssd",)))["overall"]
    far = evaluate(ds, _gt_rows(ds, 0.2), EvalConfig(metrics=("mssd",)))["overall"]
    assert near["add_s_recall"] == 1.0 and far["add_s_recall"] == 0.0
    # MSSD of a pure shift is the shift: 0.05 d passes the thresholds above 0.05, 0.2 d those above 0.2.
    assert near["recall_mssd"] == pytest.approx([0.0] + [1.0] * 9)
    assert far["recall_mssd"] == pytest.approx([0.0] * 4 + [1.0] * 6)
    assert far["median_te_mm"] == pytest.approx(200 * ds.diameter(1), rel=0.2)


def test_missing_estimates_count_as_misses(tiny_bop: Path) -> None:
    ds = BopDataset(tiny_bop)
    rows = [r for r in _gt_rows(ds) if r.im_id != 0]
    o = evaluate(ds, rows, EvalConfig(metrics=("mssd", "mspd")))["overall"]
    assert o["add_s_recall"] == pytest.approx(4 / 6)
    only = evaluate(ds, rows, EvalConfig(metrics=("mssd",), only_result_images=True))["overall"]
    assert only["num_targets"] == 4 and only["add_s_recall"] == 1.0


def test_min_visib_excludes_hidden_instances(tiny_bop: Path) -> None:
    ds = BopDataset(tiny_bop)
    visib = [g.visib_fract for k in ds.image_keys() for g in ds.gt(*k)]
    o = evaluate(ds, _gt_rows(ds), EvalConfig(metrics=("mssd",), min_visib=0.999))["overall"]
    assert o["num_targets"] == sum(v >= 0.999 for v in visib)  # type: ignore[operator]
    with pytest.raises(ValueError, match="unknown metric"):
        EvalConfig(metrics=("add", "bogus"))


def test_perturb_is_exact_and_deterministic(tiny_bop: Path) -> None:
    ds = BopDataset(tiny_bop)
    a = perturb_dataset(ds, rot_deg=15, trans_frac=0.1, seed=3)
    b = perturb_dataset(ds, rot_deg=15, trans_frac=0.1, seed=3)
    c = perturb_dataset(ds, rot_deg=15, trans_frac=0.1, seed=4)
    assert len(a) == 6
    assert all((ra.R == rb.R).all() and (ra.t == rb.t).all() for ra, rb in zip(a, b, strict=True))
    assert any((ra.t != rc.t).any() for ra, rc in zip(a, c, strict=True))
    gts = {(s, i, g.obj_id): g.pose for s, i in ds.image_keys() for g in ds.gt(s, i)}
    for r in a:
        gt = gts[(r.scene_id, r.im_id, r.obj_id)]
        assert float(rotation_angle(gt.R, r.pose.R)) == pytest.approx(torch.pi / 12, abs=1e-9)
        assert float((gt.t - r.pose.t).norm()) == pytest.approx(0.1 * ds.diameter(r.obj_id), rel=1e-9)
    with pytest.raises(ValueError, match="rot_deg"):
        perturb_dataset(ds, rot_deg=200, trans_frac=0.1)


def test_compute_visibility_counts_the_part_beyond_the_border_and_occlusion() -> None:
    import numpy as np

    from meshpose.eval.report import compute_visibility
    from meshpose.mesh.procedural import example_object
    from meshpose.render.gl import get_default_renderer
    from meshpose.types import Camera

    obj = example_object(0)
    cam = Camera.from_fxfycxcy(300.0, 300.0, 159.5, 119.5, width=320, height=240)
    z = 1.0

    def at(x: float, y: float, depth: float) -> Pose:
        return Pose(torch.eye(3, dtype=torch.float64)[None], torch.tensor([[x, y, depth]], dtype=torch.float64))

    renderer = get_default_renderer()
    # Alone in the middle: fully visible; centred on the left border: about half of it is in the image.
    assert compute_visibility(cam, [obj], at(0.0, 0.0, z), renderer)[0] == pytest.approx(1.0)
    half = compute_visibility(cam, [obj], at(-159.5 / 300.0 * z, 0.0, z), renderer)[0]
    assert 0.3 < half < 0.7
    # A copy right in front of it hides it (the front one stays fully visible); behind the camera: 0.
    both = Pose.stack([at(0.0, 0.0, z), at(0.0, 0.0, 0.6 * z)]).reshape(-1)
    vis = compute_visibility(cam, [obj, obj], both, renderer)
    assert vis[0] < 0.2 and vis[1] == pytest.approx(1.0)
    far_off = compute_visibility(cam, [obj], at(5.0, 0.0, z), renderer)
    assert np.array_equal(far_off, [0.0])
