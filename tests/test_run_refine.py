"""Batch refinement runs (``meshpose refine``): exit codes, per-item failures, bad usage, Ctrl-C, Ray = serial,
runs killed at random points that resume to the uninterrupted result."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.eval.perturb import perturb_dataset
from meshpose.io.bop import BopDataset
from meshpose.io.results import read_results, write_results
from meshpose.refine.registry import make_refiner
from meshpose.run import JobSpec, RayExecutor, SerialExecutor, refine_dataset
from meshpose.run.job import instance_keys
from meshpose.run.writer import failures_path_for, lock_path_for

runner = CliRunner()
METHOD = ["--method", "flow-pnp", "--iterations", "2"]  # fast, and deterministic


def _spec(root: Path, **kw: Any) -> JobSpec:
    return JobSpec(str(root), method="flow-pnp", iterations=2, **kw)


def _poses(path: Path) -> dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray, float]]:
    rows = read_results(path)
    keys = instance_keys(rows)
    assert len(set(keys)) == len(keys), "duplicated rows"
    return {k: (r.R, r.t, r.score) for k, r in zip(keys, rows, strict=True)}


def assert_same_poses(a: Path, b: Path, atol: float = 1e-6) -> None:
    pa, pb = _poses(a), _poses(b)
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_allclose(pa[k][0], pb[k][0], atol=atol, err_msg=str(k))
        np.testing.assert_allclose(pa[k][1], pb[k][1], atol=atol, err_msg=str(k))
        assert pa[k][2] == pytest.approx(pb[k][2], rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def inits(tiny_bop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inits") / "inits.csv"
    write_results(path, perturb_dataset(BopDataset(tiny_bop), rot_deg=10, trans_frac=0.05, seed=1))
    return path


@pytest.fixture(scope="module")
def reference(tiny_bop: Path, inits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted serial run."""
    out = tmp_path_factory.mktemp("ref") / "ref.csv"
    s = refine_dataset(_spec(tiny_bop), read_results(inits), out, inits_path=inits)
    assert s.images_done == 3
    return out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threads", "0"], "--threads"),
        (["--max-images", "-1"], "--max-images"),
        (["--iterations", "-3"], "--iterations"),
        (["--workers", "0", "--executor", "ray"], "--workers"),
        (["--executor", "dask"], "unknown executor 'dask'"),
        (["--workers", "2"], "need --executor ray"),
        (["--address", "auto"], "need --executor ray"),
    ],
)
def test_bad_usage_exits_2(tiny_bop: Path, inits: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "r.csv"
    res = runner.invoke(app, ["refine", str(tiny_bop), "--inits", str(inits), "--out", str(out), *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_exit_3_and_per_item_failures(tiny_bop: Path, inits: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    (root / "test" / "000001" / "rgb" / "000001.png").write_bytes(b"garbage")
    lines = inits.read_text().splitlines()
    # an unknown object in image 0 and an initial pose behind the camera in image 2: only those rows fail
    bad = [lines[0], *lines[1:], "1,0,99,1,1 0 0 0 1 0 0 0 1,0 0 500,0", "1,2,1,1,1 0 0 0 1 0 0 0 1,0 0 -500,0"]
    bad_inits = tmp_path / "inits.csv"
    bad_inits.write_text("\n".join(bad) + "\n")
    out = tmp_path / "res.csv"
    args = ["refine", str(root), "--inits", str(bad_inits), *METHOD, "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 3, res.output
    assert "refined 2 image(s)" in res.output and "1 failed" in res.output and "failure reasons" in res.output
    assert sorted({(r.im_id, r.obj_id) for r in read_results(out)}) == [(0, 1), (0, 2), (2, 1), (2, 2)]
    recs = [json.loads(s) for s in failures_path_for(out).read_text().splitlines()]
    codes = {(r["im_id"], r.get("obj_id"), r["code"]) for r in recs}
    assert {(0, 99, "unknown_object"), (2, 1, "bad_init"), (1, None, "image_failed")} <= codes
    behind = next(r for r in recs if r["code"] == "bad_init")
    assert behind["instance"] == 1 and "behind the camera" in behind["message"]
    # A re-run retries the failed image and still says that items failed; the rejected rows are logged once.
    res = runner.invoke(app, args)
    assert res.exit_code == 3, res.output
    assert "2 already done" in res.output
    recs2 = failures_path_for(out).read_text().splitlines()
    assert sum('"bad_init"' in s for s in recs2) == 1 and sum('"image_failed"' in s for s in recs2) == 2


def test_refuses_to_mix_runs_and_restart_starts_over(tiny_bop: Path, inits: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    base = ["refine", str(tiny_bop), "--inits", str(inits), "--out", str(out), "--max-images", "1"]
    assert runner.invoke(app, [*base, *METHOD]).exit_code == 0
    other = runner.invoke(app, [*base, "--method", "flow-pnp", "--iterations", "1"])
    assert other.exit_code == 2 and "iterations: the file has 2, this run 1" in other.output
    assert "--restart" in other.output
    new_inits = tmp_path / "inits2.csv"
    write_results(new_inits, perturb_dataset(BopDataset(tiny_bop), rot_deg=10, trans_frac=0.05, seed=2))
    res = runner.invoke(app, ["refine", str(tiny_bop), "--inits", str(new_inits), "--out", str(out), *METHOD])
    assert res.exit_code == 2 and "other inits" in res.output
    res = runner.invoke(app, [*base, "--method", "flow-pnp", "--iterations", "1", "--restart"])
    assert res.exit_code == 0 and "refined 1 image(s)" in res.output


def test_out_equal_to_inits_and_foreign_files_are_refused(tiny_bop: Path, inits: Path, tmp_path: Path) -> None:
    own = tmp_path / "inits.csv"
    shutil.copy(inits, own)
    before = own.read_text()
    res = runner.invoke(app, ["refine", str(tiny_bop), "--inits", str(own), "--out", str(own), *METHOD])
    assert res.exit_code == 2 and "is the inits file" in res.output
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    for extra in ([], ["--restart"]):
        res = runner.invoke(app, ["refine", str(tiny_bop), "--inits", str(own), "--out", str(notes), *extra])
        assert res.exit_code == 2 and "not written by meshpose" in res.output
    assert own.read_text() == before and notes.read_text() == "keep me\n"


class _InterruptAfter:
    """A refiner that is Ctrl-C'd during its ``after + 1``-th image."""

    def __init__(self, after: int) -> None:
        self.inner = make_refiner("flow-pnp")
        self.name, self.modality = self.inner.name, self.inner.modality
        self.after = after
        self.calls = 0

    def refine(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.inner.refine(*args, **kw)


def test_ctrl_c_loses_nothing(tiny_bop: Path, inits: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    rows = read_results(inits)
    with pytest.raises(KeyboardInterrupt):
        refine_dataset(_spec(tiny_bop), rows, out, executor=SerialExecutor(_InterruptAfter(1)), inits_path=inits)
    assert len({r.im_id for r in read_results(out)}) == 1
    assert not lock_path_for(out).exists()
    s = refine_dataset(_spec(tiny_bop), rows, out, inits_path=inits)
    assert (s.images_done, s.images_skipped) == (2, 1)
    assert_same_poses(out, reference)


def test_ray_writes_the_same_poses_as_serial(tiny_bop: Path, inits: Path, reference: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "ray.csv"
    with RayExecutor(2) as ex:
        s = refine_dataset(_spec(tiny_bop), read_results(inits), out, executor=ex, inits_path=inits)
    assert (s.images_done, s.images_failed) == (3, 0)
    assert_same_poses(out, reference)
    import ray

    assert not ray.is_initialized()  # it shut down the Ray it started


# --- killed runs (subprocesses) --------------------------------------------------------------------------------


def _start(root: Path, inits: Path, out: Path, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "meshpose.cli", "refine", str(root), "--inits", str(inits), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*cmd, *METHOD, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )


def _rows_written(out: Path) -> int:
    if not out.is_file():
        return 0
    return max(0, len(out.read_text().splitlines()) - 1)


def _wait_for_rows(proc: subprocess.Popen[bytes], out: Path, n: int, timeout: float = 240.0) -> None:
    t0 = time.perf_counter()
    while _rows_written(out) < n and proc.poll() is None and time.perf_counter() - t0 < timeout:
        time.sleep(0.02)


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Kill the run and every process it started (Ray's included: they share its new session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (Ray's agents outlive a killed driver)


@pytest.fixture(scope="module")
def dataset8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import make_tiny_bop

    root = make_tiny_bop(tmp_path_factory.mktemp("ds8"), n_images=8, seed=3)
    inits = root.parent / "inits8.csv"
    write_results(inits, perturb_dataset(BopDataset(root), rot_deg=10, trans_frac=0.05, seed=1))
    return root, inits


@pytest.mark.slow
def test_ray_run_interrupted_then_killed_resumes_exactly(dataset8: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    root, inits = dataset8
    ref = tmp_path / "ref.csv"
    refine_dataset(_spec(root), read_results(inits), ref, inits_path=inits)
    out = tmp_path / "res.csv"
    ray_args = ["--executor", "ray", "--workers", "2"]
    # Ctrl-C after the first image: exit 130, the writer closed, the finished images kept.
    proc = _start(root, inits, out, ray_args)
    _wait_for_rows(proc, out, 1)
    first = _rows_written(out)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    _kill_group(proc)
    assert _rows_written(out) >= first >= 1 and not lock_path_for(out).exists()
    # SIGKILL of everything in the middle of the resumed run.
    proc = _start(root, inits, out, ray_args)
    _wait_for_rows(proc, out, _rows_written(out) + 2)
    _kill_group(proc)
    assert _rows_written(out) < 16  # killed in the middle
    s = refine_dataset(_spec(root), read_results(inits), out, inits_path=inits)
    assert s.images_skipped >= 2 and s.images_done + s.images_skipped == 8
    assert_same_poses(out, ref)


@pytest.mark.slow
def test_runs_killed_at_random_points_end_equal(dataset8: tuple[Path, Path], tmp_path: Path) -> None:
    root, inits = dataset8
    ref = tmp_path / "ref.csv"
    refine_dataset(_spec(root), read_results(inits), ref, inits_path=inits)
    out = tmp_path / "res.csv"
    rng = random.Random(0)
    left = []
    for _ in range(4):
        proc = _start(root, inits, out)
        start = _rows_written(out)
        _wait_for_rows(proc, out, start + 1)  # let it get going, then kill it at a random point
        time.sleep(rng.uniform(0.0, 1.5))
        _kill_group(proc)
        left.append(_rows_written(out))
    assert any(0 < n < 16 for n in left), left  # at least one kill hit a run in the middle
    s = refine_dataset(_spec(root), read_results(inits), out, inits_path=inits)
    assert s.images_done + s.images_skipped == 8
    assert_same_poses(out, ref)
