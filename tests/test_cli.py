"""Every CLI command on a tiny generated BOP dataset: perturb → refine → eval, resume, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.io.results import read_results
from meshpose.nets.checkpoint import load_checkpoint

runner = CliRunner()


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def test_perturb_refine_eval(tiny_bop: Path, tmp_path: Path) -> None:
    inits = tmp_path / "inits.csv"
    out = _ok(["perturb", str(tiny_bop), "--rot-deg", "10", "--trans-frac", "0.05", "--seed", "1", "--out", str(inits)])
    assert "6 initial poses" in out
    res = tmp_path / "res.csv"
    out = _ok(
        ["refine", str(tiny_bop), "--inits", str(inits), "--method", "flow-pnp", "--iterations", "2", "--out", str(res)]
    )
    assert "refined 3 image(s)" in out
    rows = read_results(res)
    assert len(rows) == 6 and all(r.time_s > 0 for r in rows)
    # A re-run resumes: nothing left to do (the same method, options and inits: see tests/test_run_refine.py).
    out = _ok(
        ["refine", str(tiny_bop), "--inits", str(inits), "--method", "flow-pnp", "--iterations", "2", "--out", str(res)]
    )
    assert "refined 0 image(s)" in out and "3 already done" in out
    report = tmp_path / "report.json"
    _ok(["eval", str(tiny_bop), "--results", str(res), "--out", str(report)])
    rep = json.loads(report.read_text())
    init_rep = tmp_path / "init.json"
    _ok(["eval", str(tiny_bop), "--results", str(inits), "--out", str(init_rep), "--metrics", "mssd,mspd"])
    before = json.loads(init_rep.read_text())["overall"]
    after = rep["overall"]
    assert after["num_targets"] == 6
    assert after["ar_mspd"] > before["ar_mspd"]
    assert after["ar"] is not None  # the dataset has depth: VSD and BOP AR are computed


def test_refine_with_a_chain_of_presets(tiny_bop: Path, tmp_path: Path) -> None:
    inits = tmp_path / "inits.csv"
    _ok(["perturb", str(tiny_bop), "--rot-deg", "10", "--trans-frac", "0.05", "--seed", "1", "--out", str(inits)])
    res = tmp_path / "res.csv"
    chain_opts = json.dumps({"flow-pnp": {"min_inliers": 8}, "contour": {"iterations": [2, 2]}})
    out = _ok(
        ["refine", str(tiny_bop), "--inits", str(inits), "--method", "flow-pnp+contour", "--config", chain_opts,
         "--out", str(res), "--max-images", "1"]
    )  # fmt: skip
    assert "refined 1 image(s)" in out and len(read_results(res)) == 2
    bad = json.dumps({"min_inliers": 8})
    res2 = runner.invoke(
        app, ["refine", str(tiny_bop), "--inits", str(inits), "--method", "flow-pnp+contour", "--config", bad,
              "--out", str(tmp_path / "r2.csv")]
    )  # fmt: skip
    assert res2.exit_code == 2 and "no member(s) ['min_inliers']" in res2.output


def test_refine_skips_a_corrupt_image_and_keeps_the_rest(tiny_bop: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    (root / "test" / "000001" / "rgb" / "000001.png").write_bytes(b"garbage")
    inits = tmp_path / "inits.csv"
    _ok(["perturb", str(root), "--rot-deg", "5", "--trans-frac", "0.02", "--out", str(inits)])
    res = tmp_path / "res.csv"
    got = runner.invoke(app, ["refine", str(root), "--inits", str(inits), "--iterations", "1", "--out", str(res)])
    assert got.exit_code == 3, got.output  # some items failed: the run finished, the exit code says so
    out = got.output
    assert "1 failed" in out
    assert {r.im_id for r in read_results(res)} == {0, 2}
    failures = (tmp_path / "res.failures.jsonl").read_text()
    assert "000001.png" in failures


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["perturb", "/nonexistent/ds", "--out", "x.csv"], "not found"),
        (["eval", "{ds}", "--results", "{tmp}/missing.csv", "--out", "{tmp}/r.json"], "results file not found"),
        (["eval", "{ds}", "--results", "{bad}", "--out", "{tmp}/r.json"], "bad.csv:2"),
        (["refine", "{ds}", "--inits", "{bad}", "--out", "{tmp}/r.csv"], "bad.csv:2"),
        (["refine", "{ds}", "--inits", "{good}", "--method", "nope", "--out", "{tmp}/r.csv"], "unknown refiner"),
        (["eval", "{ds}", "--results", "{good}", "--metrics", "add,xyz", "--out", "{tmp}/r.json"], "unknown metric"),
        (["refine", "{ds}", "--inits", "{good}", "--config", "{{oops", "--out", "{tmp}/r.csv"], "not valid JSON"),
        (["refine", "{ds}", "--inits", "{good}", "--config", '{{"bogus": 1}}', "--out", "{tmp}/r.csv"], "bogus"),
        (
            [
                "refine",
                "{ds}",
                "--inits",
                "{good}",
                "--method",
                "genflow",
                "--config",
                '{{"weights": "{tmp}/no.pt"}}',
                "--out",
                "{tmp}/r.csv",
            ],
            "genflow weights not found",
        ),
        (["train", "jointloss", "--data", "novel:10", "--out", "{tmp}/run"], "--detections"),
        (["train", "icp", "--data", "novel:10", "--out", "{tmp}/run"], "no trainer"),
        (["train", "deeprm", "--out", "{tmp}/run"], "give the training objects"),
        (["train", "genflow", "--data", "novel:5010", "--out", "{tmp}/run"], "held out"),
    ],
)
def test_errors_are_one_clear_line(tiny_bop: Path, tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,0,1,0.5,1 0 0,0 0 500,0.1\n")
    good = tmp_path / "good.csv"
    good.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,0,1,0.5,1 0 0 0 1 0 0 0 1,0 0 500,0.1\n")
    fmt = {"ds": str(tiny_bop), "tmp": str(tmp_path), "bad": str(bad), "good": str(good)}
    res = runner.invoke(app, [a.format(**fmt) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_demo_writes_poses_and_overlay(tmp_path: Path) -> None:
    out = _ok(["demo", "--out", str(tmp_path / "demo")])
    assert "overlay.png" in out
    summary = json.loads((tmp_path / "demo" / "poses.json").read_text())
    before, after = summary["errors"]["init"], summary["errors"]["refined"]
    assert before["rotation_deg"] == pytest.approx(15.0, abs=1e-6)
    assert after["add_over_diameter"] < 0.05 < before["add_over_diameter"]
    from meshpose.io.images import read_rgb

    assert read_rgb(tmp_path / "demo" / "overlay.png").shape == (480, 1284, 3)


def test_synth_then_perturb_and_eval(tmp_path: Path) -> None:
    from support.bop_validator import assert_valid

    ds = tmp_path / "syn"
    out = _ok(
        ["synth", "--objects", "novel:3", "--out", str(ds), "--scenes", "1", "--images-per-scene", "2",
         "--split", "test", "--width", "160", "--height", "120", "--seed", "4"]
    )  # fmt: skip
    assert "wrote 2 image(s)" in out
    assert_valid(ds, "test")
    inits = tmp_path / "inits.csv"
    _ok(["perturb", str(ds), "--rot-deg", "5", "--trans-frac", "0.05", "--out", str(inits)])
    _ok(["eval", str(ds), "--results", str(inits), "--out", str(tmp_path / "r.json"), "--metrics", "mssd,mspd"])
    res = runner.invoke(app, ["synth", "--objects", "novel:3", "--out", str(ds), "--placement", "foo"])
    assert res.exit_code == 2 and "placement must be" in res.output


def test_train_genflow_resume_then_refine_with_its_weights(tiny_bop: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny = {
        "crop_size": 64,
        "iterations": 2,
        "batch_size": 2,
        "image_size": [320, 240],
        "val_images": 1,
        "object_pool": 3,
        "pool_scenes": 1,
        "views_per_scene": 1,
        "log_every": 1,
        "net": {"feature_dim": 16, "context_dim": 16, "hidden_dim": 16, "motion_dim": 16, "encoder_dims": [8, 12, 16]},
    }
    args = ["train", "genflow", "--data", "novel:6", "--out", str(run), "--workers", "0", "--config", json.dumps(tiny)]
    out = _ok([*args, "--steps", "3", "--max-steps", "2", "--val-every", "2"])
    assert "stopped at step 2" in out
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert any(r.get("event") == "val" and 0.0 <= r["add_recall"] <= 1.0 for r in log)
    assert {"last.pt", "best.pt", "model.pt", "config.json"} <= {p.name for p in run.iterdir()}
    # a second call without --resume refuses to overwrite; with it, it goes on to the end of the run's own
    # schedule (a resume without --steps must not stretch the learning-rate schedule to the default length)
    res = runner.invoke(app, [*args, "--steps", "3"])
    assert res.exit_code == 2 and "--resume" in res.output
    assert "stopped at step 3" in _ok([*args, "--resume"])
    assert json.loads((run / "config.json").read_text())["steps"] == 3
    assert "stopped at step 4" in _ok([*args, "--resume", "--steps", "4"])
    inits = tmp_path / "inits.csv"
    _ok(["perturb", str(tiny_bop), "--rot-deg", "5", "--trans-frac", "0.02", "--out", str(inits)])
    res_csv = tmp_path / "res.csv"
    weights = json.dumps({"weights": str(run / "model.pt"), "stages": [[64, 1.4, 1, 2]]})
    got = runner.invoke(
        app,
        [
            "refine",
            str(tiny_bop),
            "--inits",
            str(inits),
            "--method",
            "genflow",
            "--config",
            weights,
            "--out",
            str(res_csv),
        ],
    )
    # 3: a network trained for 4 steps may fail some instances (logged; their best pose is written)
    assert got.exit_code in (0, 3), got.output + repr(got.exception)
    out = got.output
    assert "refined 3 image(s)" in out
    assert len(read_results(res_csv)) == 6
    # a new run can start from trained weights (fine-tuning; the network sizes come from them) and draw its
    # scenes with other sensor settings
    tune = tmp_path / "tune"
    over = {**tiny, "net": {}, "lr": 0.0, "init_weights": str(run / "model.pt"), "scene": {"blur_probability": 1.0}}
    tune_args = ["train", "genflow", "--data", "novel:6", "--out", str(tune), "--workers", "0"]
    assert "stopped at step 1" in _ok([*tune_args, "--config", json.dumps(over), "--steps", "1", "--val-every", "0"])
    start = load_checkpoint(tune / "last.pt").state_dict
    trained = load_checkpoint(run / "model.pt").state_dict
    assert all(torch.equal(start[k], v) for k, v in trained.items())  # lr 0: still the weights it started from
    saved = json.loads((tune / "config.json").read_text())
    assert saved["net"]["feature_dim"] == 16 and saved["scene"] == {"blur_probability": 1.0}
    res = runner.invoke(app, [*tune_args, "--config", json.dumps({**tiny, "scene": {"blurr": 1.0}})])
    assert res.exit_code == 2 and "blurr" in res.output


# --- issue 16: outputs checked up front, --models-dir, --units of BOP folders, overlay --------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (["--out", "{tmp}"], "is a folder"),
        (["--out", "{file}/r.json"], "is a file, not a folder"),
        (["--out", "{tmp}/r.json", "--plots", "{file}"], "--plots: {file} is a file, not a folder"),
        (["--out", "{tmp}/r.json", "--plots", "{file}/plots"], "--plots: {file} is a file, not a folder"),
    ],
)
def test_eval_checks_its_outputs_before_evaluating(
    tiny_bop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: list[str], message: str
) -> None:
    import meshpose.eval.report as report_mod

    def never(*args: object, **kw: object) -> None:
        raise AssertionError("the evaluation ran before the outputs were checked")

    monkeypatch.setattr(report_mod, "evaluate_file", never)
    file = tmp_path / "notes.txt"
    file.write_text("keep me\n")
    fmt = {"tmp": str(tmp_path), "file": str(file)}
    args = ["eval", str(tiny_bop), "--results", str(tmp_path / "res.csv"), *[a.format(**fmt) for a in where]]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message.format(**fmt) in res.output and "Traceback" not in res.output
    assert file.read_text() == "keep me\n"


def test_eval_into_an_unwritable_folder_is_refused_up_front(tiny_bop: Path, tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = runner.invoke(
            app, ["eval", str(tiny_bop), "--results", str(tmp_path / "r.csv"), "--out", str(locked / "sub" / "r.json")]
        )
        assert res.exit_code == 2 and "cannot write into" in res.output
    finally:
        locked.chmod(0o700)


def test_eval_writes_into_a_missing_folder_atomically_and_draws_plots(tiny_bop: Path, tmp_path: Path) -> None:
    inits = tmp_path / "inits.csv"
    _ok(["perturb", str(tiny_bop), "--rot-deg", "5", "--trans-frac", "0.02", "--out", str(inits)])
    out = tmp_path / "new" / "deeper" / "report.json"
    plots = tmp_path / "plots" / "here"
    _ok(["eval", str(tiny_bop), "--results", str(inits), "--out", str(out), "--metrics", "mssd,mspd",
         "--plots", str(plots)])  # fmt: skip
    assert json.loads(out.read_text())["overall"]["num_targets"] == 6
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temporary file left behind
    assert {p.name for p in plots.iterdir()} == {"recall_mssd.png", "recall_mspd.png"}


def test_models_dir_for_perturb_refine_eval_and_overlay(tiny_bop: Path, tmp_path: Path) -> None:
    root = tmp_path / "hope_like"
    shutil.copytree(tiny_bop, root)
    (root / "models").rename(root / "models_eval")
    inits = tmp_path / "inits.csv"
    res = runner.invoke(app, ["perturb", str(root), "--out", str(inits)])
    assert res.exit_code == 2 and "no models/ folder (model folders found: models_eval)" in res.output
    md = ["--models-dir", "models_eval"]
    _ok(["perturb", str(root), *md, "--rot-deg", "5", "--trans-frac", "0.02", "--out", str(inits)])
    out = tmp_path / "res.csv"
    _ok(["refine", str(root), *md, "--inits", str(inits), "--method", "flow-pnp", "--iterations", "1",
         "--max-images", "1", "--out", str(out)])  # fmt: skip
    assert len(read_results(out)) == 2
    _ok(["eval", str(root), *md, "--results", str(out), "--metrics", "mssd", "--only-result-images",
         "--out", str(tmp_path / "r.json")])  # fmt: skip
    res = runner.invoke(app, ["eval", str(root), "--results", str(out), "--out", str(tmp_path / "r2.json")])
    assert res.exit_code == 2 and "models_eval" in res.output
    _ok(["overlay", str(root), *md, "--results", str(out), "--out", str(tmp_path / "ov")])


def _metre_bop_folder(tiny_bop: Path, root: Path) -> Path:
    """A BOP-layout folder (models/ with models_info.json) whose meshes are in metres."""
    import trimesh

    shutil.copytree(tiny_bop / "models", root / "models")
    for p in (root / "models").glob("obj_*.ply"):
        mesh = trimesh.load(p, process=False)
        mesh.apply_scale(1e-3)
        mesh.export(p)
    return root


def test_units_of_a_bop_folder_are_honoured(tiny_bop: Path, tmp_path: Path) -> None:
    from meshpose.mesh.load import MeshError
    from meshpose.synth.sources import resolve_objects

    metres = _metre_bop_folder(tiny_bop, tmp_path / "metres")
    size_mm = resolve_objects(str(tiny_bop), units="mm")[0].diameter
    assert resolve_objects(str(metres), units="m")[0].diameter == pytest.approx(size_mm, rel=1e-6)
    with pytest.raises(MeshError, match="looks like metres"):  # the default for BOP folders is millimetres
        resolve_objects(str(metres))[0]
    with pytest.raises(MeshError, match="looks like millimetres"):  # --units m on a millimetre folder: honoured
        resolve_objects(str(tiny_bop), units="m")[0]
    assert resolve_objects(str(tiny_bop))[0].diameter == pytest.approx(size_mm)
    ds = tmp_path / "syn"
    args = ["synth", "--objects", str(metres), "--out", str(ds), "--scenes", "1", "--images-per-scene", "1",
            "--split", "test", "--width", "96", "--height", "72"]  # fmt: skip
    assert "wrote 1 image(s)" in _ok([*args, "--units", "m"])


def test_overlay_draws_results_and_ground_truth(tiny_bop: Path, tmp_path: Path) -> None:
    from meshpose.io.images import read_rgb

    inits = tmp_path / "inits.csv"
    _ok(["perturb", str(tiny_bop), "--rot-deg", "10", "--trans-frac", "0.05", "--out", str(inits)])
    with inits.open("a") as f:
        f.write("1,0,42,1,1 0 0 0 1 0 0 0 1,0 0 500,0\n")  # an object the dataset has no mesh for: left out
    out = tmp_path / "overlays"
    args = ["overlay", str(tiny_bop), "--results", str(inits), "--max-images", "2"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert "wrote 2 overlay(s)" in res.output and "1 row(s) left out" in res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000001_000000.png", "000001_000001.png"]
    source = read_rgb(next((tiny_bop / "test" / "000001" / "rgb").glob("000000.*")))
    drawn = read_rgb(out / names[0])
    assert drawn.shape == source.shape
    green = (drawn[..., 1] > 200) & (drawn[..., 0] < 80) & (drawn[..., 2] < 80)
    magenta = (drawn[..., 0] > 200) & (drawn[..., 1] < 80) & (drawn[..., 2] > 200)
    assert green.sum() > 50 and magenta.sum() > 50  # results and ground truth outlined
    no_gt = tmp_path / "no_gt"
    assert runner.invoke(app, [*args, "--out", str(no_gt), "--no-gt"]).exit_code == 3
    plain = read_rgb(no_gt / names[0])
    magenta = (plain[..., 0] > 200) & (plain[..., 1] < 80) & (plain[..., 2] > 200)
    assert magenta.sum() < 5
    res = runner.invoke(app, ["overlay", str(tiny_bop), "--results", str(inits), "--out", str(inits)])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output
