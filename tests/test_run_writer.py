"""The one results writer: side file, exact resume, repair after a crash, lock, files it must never touch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from meshpose.io.results import ResultRow, group_by_image, read_results
from meshpose.run.job import ItemFailure, instance_keys
from meshpose.run.writer import (
    FailureLog,
    ResultsLockedError,
    RunConfigError,
    RunMeta,
    RunWriter,
    failures_path_for,
    inits_checksum,
    lock_path_for,
    meta_path_for,
)
from meshpose.types import Pose


def _rows(n_images: int = 3, per_image: int = 3, seed: int = 0) -> list[ResultRow]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for im in range(n_images):
        for k in range(per_image):
            xi = torch.randn(6, generator=g, dtype=torch.float64) * 0.1
            xi[2] += 1.0
            # object 1 twice per image: instances 0 and 1
            rows.append(ResultRow.from_pose(1, im, 1 + k % 2, Pose.exp(xi), score=0.5 + k / 10, time_s=0.1))
    return rows


def _meta(rows: list[ResultRow], method: str = "contour") -> RunMeta:
    return RunMeta(method, {}, 3, True, inits_checksum(rows), inits="inits.csv")


def _expected(rows: list[ResultRow]) -> dict[tuple[int, int], list[tuple[int, int, int, int]]]:
    return {k: instance_keys(v) for k, v in group_by_image(rows).items()}


def _write_all(path: Path, rows: list[ResultRow], images: int | None = None) -> None:
    with RunWriter(path, _meta(rows), _expected(rows)) as w:
        for rs in list(group_by_image(rows).values())[:images]:
            w.write_image(rs)


def test_fresh_run_writes_side_file_and_resumes(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "res.csv"
    _write_all(path, rows, images=2)
    meta = json.loads(meta_path_for(path).read_text())
    assert meta["method"] == "contour" and meta["inits_sha256"] == inits_checksum(rows)
    assert meta["meshpose_version"] and meta["iterations"] == 3 and meta["use_depth"] is True
    assert not lock_path_for(path).exists()  # released and removed
    with RunWriter(path, _meta(rows), _expected(rows)) as w:
        assert w.done == {(1, 0), (1, 1)}
        w.write_image(group_by_image(rows)[(1, 2)])
    back = read_results(path)
    assert len(back) == len(rows) and len({tuple(k) for k in instance_keys(back)}) == len(rows)


def test_checksum_ignores_formatting_and_time() -> None:
    rows = _rows()
    moved = [ResultRow(r.scene_id, r.im_id, r.obj_id, r.score, r.R, r.t, time_s=9.0) for r in rows]
    assert inits_checksum(rows) == inits_checksum(moved)
    assert inits_checksum(rows) != inits_checksum(rows[:-1])


def test_torn_line_and_unfinished_image_are_dropped(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "res.csv"
    _write_all(path, rows, images=2)
    text = path.read_text()
    # a crash in the middle of image 1's write: its last row cut short
    lines = text.splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    with RunWriter(path, _meta(rows), _expected(rows)) as w:
        assert w.done == {(1, 0)}
        assert w.dropped_rows == 3  # the torn line and the 2 complete rows of image 1
        for key in [(1, 1), (1, 2)]:
            w.write_image(group_by_image(rows)[key])
    back = read_results(path)
    assert sorted(instance_keys(back)) == sorted(instance_keys(rows))


def test_duplicated_image_rows_are_dropped_and_redone(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "res.csv"
    _write_all(path, rows, images=2)
    first = path.read_text().splitlines()[1:4]  # image 0 again: instances 2 and 3 of object 1 do not exist
    with path.open("a") as f:
        f.write("\n".join(first) + "\n")
    with RunWriter(path, _meta(rows), _expected(rows)) as w:
        assert w.done == {(1, 1)}


def test_mismatching_side_file_is_refused_and_restart_works(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "res.csv"
    _write_all(path, rows)
    FailureLog(failures_path_for(path)).write(ItemFailure(1, 0, 1, 0, "not_visible", "hidden"))
    before = path.read_text()
    with pytest.raises(RunConfigError, match=r"method: the file has \"contour\", this run \"flow-pnp\".*--restart"):
        RunWriter(path, _meta(rows, "flow-pnp"), _expected(rows))
    other = _rows(seed=1)
    with pytest.raises(RunConfigError, match="other inits"):
        RunWriter(path, _meta(other), _expected(other))
    assert path.read_text() == before
    with RunWriter(path, _meta(other), _expected(other), restart=True) as w:
        assert w.done == set()
    assert read_results(path) == []
    assert json.loads(meta_path_for(path).read_text())["inits_sha256"] == inits_checksum(other)
    assert not failures_path_for(path).exists()


def test_version_change_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows()
    path = tmp_path / "res.csv"
    _write_all(path, rows, images=1)
    meta = json.loads(meta_path_for(path).read_text())
    meta["meshpose_version"] = "0.0.1"
    meta_path_for(path).write_text(json.dumps(meta))
    with RunWriter(path, _meta(rows), _expected(rows)) as w:
        assert w.done == {(1, 0)}
    assert "meshpose 0.0.1" in caplog.text


@pytest.mark.parametrize("restart", [False, True])
def test_a_file_it_did_not_write_is_never_touched(tmp_path: Path, restart: bool) -> None:
    rows = _rows()
    path = tmp_path / "notes.txt"
    path.write_text("my notes\nline 2\n")
    with pytest.raises(RunConfigError, match="not written by meshpose"):
        RunWriter(path, _meta(rows), _expected(rows), restart=restart)
    assert path.read_text() == "my notes\nline 2\n"
    assert not meta_path_for(path).exists() and not lock_path_for(path).exists()
    # an empty file holds nothing to lose
    empty = tmp_path / "empty.csv"
    empty.touch()
    RunWriter(empty, _meta(rows), _expected(rows)).close()


def test_out_equal_to_inits_or_a_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows()
    inits = tmp_path / "inits.csv"
    inits.write_text("scene_id,im_id,obj_id,score,R,t,time\n")
    monkeypatch.chdir(tmp_path)
    for out in (inits, Path("inits.csv"), tmp_path / "." / "inits.csv"):
        with pytest.raises(RunConfigError, match="is the inits file"):
            RunWriter(out, _meta(rows), _expected(rows), inits_path=inits)
    link = tmp_path / "link.csv"
    link.symlink_to(inits)
    with pytest.raises(RunConfigError, match="is the inits file"):
        RunWriter(link, _meta(rows), _expected(rows), inits_path=inits)
    with pytest.raises(RunConfigError, match="is a folder"):
        RunWriter(tmp_path, _meta(rows), _expected(rows))


def test_a_second_writer_is_refused_at_once(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "res.csv"
    with RunWriter(path, _meta(rows), _expected(rows)):
        t0 = time.perf_counter()
        with pytest.raises(ResultsLockedError, match="another meshpose run is writing"):
            RunWriter(path, _meta(rows), _expected(rows))
        assert time.perf_counter() - t0 < 1.0
    RunWriter(path, _meta(rows), _expected(rows)).close()  # free again


def test_a_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "res.csv"
    _write_all(path, rows, images=1)
    holder = (
        "import sys, time\n"
        "from meshpose.run.writer import RunWriter, RunMeta\n"
        "import json\n"
        f"meta = RunMeta.from_json(json.load(open({str(meta_path_for(path))!r})))\n"
        f"w = RunWriter({str(path)!r}, meta, {{}})\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsLockedError, match=f"pid {proc.pid}"):
            RunWriter(path, _meta(rows), _expected(rows))
    finally:
        proc.kill()
        proc.wait()
    with RunWriter(path, _meta(rows), _expected(rows)) as w:  # a killed holder leaves a stale lock file: no matter
        assert w.done == {(1, 0)}


def test_failure_log_records_code_and_message(tmp_path: Path) -> None:
    log = FailureLog(tmp_path / "res.failures.jsonl")
    log.write(ItemFailure(2, 3, 5, 1, "outside_image", "the object is outside the image", row_written=True))
    log.write(ItemFailure(2, 4, None, None, "image_failed", "ImageError: corrupt PNG"))
    with log.path.open("a") as f:
        f.write('{"scene_id": 2, "im_')  # torn by a crash
    recs = [json.loads(s) for s in log.path.read_text().splitlines()[:2]]
    assert recs[0]["code"] == "outside_image" and recs[0]["instance"] == 1 and recs[0]["row_written"] is True
    assert "obj_id" not in recs[1] and recs[1]["message"].startswith("ImageError")
    assert log.recorded_instance_keys() == {(2, 3, 5, 1)}
    assert log.recorded_instance_keys(row_written_only=True) == {(2, 3, 5, 1)}
