"""``meshpose.run.estimate``: an estimate run over a tiny generated BOP dataset with a stand-in estimator (rows,
per-detection failures, resume after a stop or a crash, the hypotheses side file, refusing other detections)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import meshpose.coarse.registry as registry
from meshpose.io.bop import BopDataset
from meshpose.io.hypotheses import read_hypotheses
from meshpose.io.results import read_results
from meshpose.run.estimate import estimate_dataset, plan_estimate_tasks
from meshpose.run.estimate_job import EstimateSpec
from meshpose.run.writer import RunConfigError
from meshpose.types import Detection
from support.fake_estimator import FAKE


@pytest.fixture(autouse=True)
def _fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ESTIMATORS, "fake", FAKE)


def _spec(ds: Path, **config: object) -> EstimateSpec:
    return EstimateSpec(dataset=str(ds), method="fake", config={"dataset": str(ds), **config})


def _failures(out: Path) -> list[dict]:
    p = out.with_name(out.stem + ".failures.jsonl")
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


def _rot_err_deg(R: np.ndarray, R_gt: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R.T @ R_gt) - 1) / 2, -1, 1))))


def test_gt_detections_give_one_row_per_detection_and_failures_apart(tiny_bop: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    hyp = tmp_path / "hyp.jsonl"
    summary = estimate_dataset(_spec(tiny_bop, fail_obj_ids=[2]), "gt", out, hypotheses_path=hyp)
    assert (summary.images_done, summary.detections, summary.rows_written) == (3, 6, 3)
    assert summary.instance_failures == 3 and summary.exit_code == 3
    rows = read_results(out)
    assert sorted((r.im_id, r.obj_id) for r in rows) == [(0, 1), (1, 1), (2, 1)]
    ds = BopDataset(tiny_bop)
    for r in rows:
        gt = next(g for g in ds.gt(r.scene_id, r.im_id) if g.obj_id == r.obj_id)
        R_gt = gt.pose.numpy()[0]
        assert _rot_err_deg(r.R, R_gt) == pytest.approx(60.0, abs=1e-3)  # the estimator's best: its first
        assert r.score == pytest.approx(0.9) and r.time_s > 0
    fails = _failures(out)
    assert [(f["im_id"], f["obj_id"], f["instance"], f["code"]) for f in fails] == [
        (i, 2, 0, "solver_failed") for i in range(3)
    ]
    assert all(not f["row_written"] and "told to fail" in f["message"] for f in fails)
    recs = read_hypotheses(hyp)
    assert len(recs) == 6
    ok = [r for r in recs if r.failure is None]
    assert {r.obj_id for r in ok} == {1} and all(r.chosen == 0 and len(r.hypotheses) == 1 for r in ok)
    assert all(r.failure == {"code": "solver_failed", "message": "fake: told to fail"} for r in recs if r.obj_id == 2)
    # metres inside, millimetres in the file: the hypothesis equals the row
    first = next(r for r in ok if r.im_id == 0)
    row0 = next(r for r in rows if r.im_id == 0)
    np.testing.assert_allclose(first.hypotheses[0].t, row0.t, atol=1e-6)
    t_mm = json.loads(hyp.read_text().splitlines()[0])["hypotheses"][0]["t"]
    assert 300 < t_mm[2] < 1000  # the scenes' objects are 0.55–0.65 m away

    # a re-run has nothing to do, logs nothing twice and keeps the hypotheses
    again = estimate_dataset(_spec(tiny_bop, fail_obj_ids=[2]), "gt", out, hypotheses_path=hyp)
    assert (again.images_done, again.images_skipped, again.earlier_failures) == (0, 3, 3)
    assert again.exit_code == 3 and len(_failures(out)) == 3 and len(read_hypotheses(hyp)) == 6
    assert len(read_results(out)) == 3


def test_an_image_whose_detections_all_failed_is_finished(tiny_bop: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    first = estimate_dataset(_spec(tiny_bop, fail_obj_ids=[1, 2]), "gt", out)
    assert (first.images_done, first.rows_written, first.instance_failures) == (3, 0, 6)
    again = estimate_dataset(_spec(tiny_bop, fail_obj_ids=[1, 2]), "gt", out)
    assert (again.images_done, again.images_skipped) == (0, 3)
    assert len(_failures(out)) == 6


def test_resume_after_a_stop_and_a_crash(tiny_bop: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    hyp = tmp_path / "hyp.jsonl"
    spec = _spec(tiny_bop, fail_obj_ids=[2])
    part = estimate_dataset(spec, "gt", out, max_images=1, hypotheses_path=hyp)
    assert part.images_done == 1 and len(read_results(out)) == 1
    # a crash while image 1 was written: its failure and hypotheses are on disk, its row half written
    lines = [json.loads(x) for x in hyp.read_text().splitlines()]
    with hyp.open("a") as f:
        f.write(json.dumps({**lines[0], "im_id": 1}) + "\n" + '{"scene_id": 1, "im_')
    fail_log = out.with_name("res.failures.jsonl")
    with fail_log.open("a") as f:
        f.write(fail_log.read_text().splitlines()[0].replace('"im_id": 0', '"im_id": 1') + "\n")
    with out.open("a") as f:
        f.write("1,1,1,0.9,1 0 0 0 1")
    rest = estimate_dataset(spec, "gt", out, hypotheses_path=hyp)
    assert (rest.images_done, rest.images_skipped) == (2, 1)
    rows = read_results(out)
    assert sorted((r.im_id, r.obj_id) for r in rows) == [(0, 1), (1, 1), (2, 1)]
    assert len(_failures(out)) == 3
    recs = read_hypotheses(hyp)
    assert sorted((r.im_id, r.obj_id) for r in recs) == sorted((i, o) for i in range(3) for o in (1, 2))


def test_detections_by_image_times_and_other_detections_refused(tiny_bop: Path, tmp_path: Path) -> None:
    ds = BopDataset(tiny_bop)
    tasks, _ = plan_estimate_tasks(ds, "gt")
    dets = {t.key: [d.unpack(*t.key) for d in t.detections] for t in tasks}
    bad = Detection(1, np.array([5000.0, 10.0, 20.0, 20.0]), None, 0.4, 1, 0)  # off the image
    dets[(1, 0)] = [*dets[(1, 0)], bad, Detection(42, np.array([10.0, 10, 30, 30]), None, 0.3, 1, 0)]
    times = {(1, 0): 2.5, (1, 1): 0.5}
    out = tmp_path / "res.csv"
    from meshpose.io.detections import DetectionsByImage

    byimg = DetectionsByImage(dets)
    byimg.times.update(times)
    summary = estimate_dataset(_spec(tiny_bop), byimg, out)
    assert summary.rows_written == 6 and summary.instance_failures == 2
    rows = read_results(out)
    t_of = {r.im_id: r.time_s for r in rows}
    assert t_of[0] > 2.5 and 0.5 < t_of[1] < 2.5 and t_of[2] < 0.5
    assert len({r.time_s for r in rows if r.im_id == 0}) == 1  # one time per image
    codes = {(f["obj_id"], f["instance"]): f["code"] for f in _failures(out)}
    assert codes == {(1, 1): "bad_detection", (42, 0): "unknown_object"}
    dets[(1, 2)] = dets[(1, 2)][:1]
    with pytest.raises(RunConfigError, match="other inits"):
        estimate_dataset(_spec(tiny_bop), dets, out)
    with pytest.raises(RunConfigError, match='"hypotheses": 1, .* this run .*"hypotheses": 2'):
        estimate_dataset(EstimateSpec(dataset=str(tiny_bop), method="fake", config={"dataset": str(tiny_bop)},
                                      hypotheses=2), byimg, out)  # fmt: skip


@pytest.mark.slow
def test_ray_writes_the_same_poses_as_serial(tiny_bop: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from meshpose.run import RayExecutor

    spec = EstimateSpec(str(tiny_bop), config={"templates": 42, "cache_dir": str(tmp_path / "cache")}, hypotheses=2)
    estimate_dataset(spec, "gt", tmp_path / "serial.csv", hypotheses_path=tmp_path / "serial.jsonl")
    ex = RayExecutor(1)
    try:
        estimate_dataset(spec, "gt", tmp_path / "ray.csv", executor=ex, hypotheses_path=tmp_path / "ray.jsonl")
    finally:
        ex.close()
    a, b = read_results(tmp_path / "serial.csv"), read_results(tmp_path / "ray.csv")
    assert [(r.im_id, r.obj_id) for r in a] == [(r.im_id, r.obj_id) for r in b]
    for x, y in zip(a, b, strict=True):  # float32 features: the worker's 1 torch thread changes the last digits
        np.testing.assert_allclose(x.t, y.t, atol=1e-4)
        np.testing.assert_allclose(x.R, y.R, atol=1e-3)
    assert len(read_hypotheses(tmp_path / "ray.jsonl")) == len(read_hypotheses(tmp_path / "serial.jsonl"))


def test_the_refiner_sees_the_detection_mask(tiny_bop: Path) -> None:
    """With ``--refine``, each hypothesis is refined with the detection's modal mask as ``obs.mask`` (the refiners
    use it to tell the object from occluders); a box-only detection gives no mask."""
    from meshpose.refine.base import StageTimer, make_result
    from meshpose.run.estimate_job import process_estimate

    seen: list[np.ndarray | None] = []

    class Recorder:
        name = "recorder"
        modality = "rgb"

        def refine(self, obs, objects, init, *, iterations=None, callback=None):  # type: ignore[no-untyped-def]
            seen.append(None if obs.mask is None else obs.mask.copy())
            n = len(init)
            return make_result([init], np.ones(n), timer=StageTimer(), converged=np.ones(n, bool), failure=[None] * n)

    ds = BopDataset(tiny_bop)
    tasks, _ = plan_estimate_tasks(ds, "gt")
    state = _spec(tiny_bop).make_state(refiner=Recorder())
    process_estimate(state, tasks[0])
    assert len(seen) == len(tasks[0].detections) >= 1
    for m in seen:
        assert m is not None and m.ndim == 3 and m.shape[0] == 1 and m.any()
