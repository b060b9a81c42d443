"""BOP results files: parsing, round trips, resumable writing, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from meshpose.io.results import (
    FailureLog,
    ResultRow,
    ResultsFormatError,
    ResultsWriter,
    group_by_image,
    read_results,
    write_results,
)
from meshpose.types import Pose


def _random_rows(n: int, seed: int = 0) -> list[ResultRow]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        xi = torch.randn(6, generator=g, dtype=torch.float64)
        xi[:3] = xi[:3] * 0.1 + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        pose = Pose.exp(xi)
        rows.append(ResultRow.from_pose(1, i // 3, 1 + i % 4, pose, score=0.5 + i / 100, time_s=0.25 * i))
    return rows


def test_round_trip(tmp_path: Path) -> None:
    rows = _random_rows(10)
    path = tmp_path / "res.csv"
    write_results(path, rows)
    back = read_results(path)
    assert len(back) == len(rows)
    for a, b in zip(rows, back, strict=True):
        assert (a.scene_id, a.im_id, a.obj_id) == (b.scene_id, b.im_id, b.obj_id)
        assert b.score == pytest.approx(a.score, rel=1e-5)
        np.testing.assert_allclose(b.R, a.R, atol=1e-8)
        np.testing.assert_allclose(b.t, a.t, atol=1e-8)  # metres, through millimetres with 6 decimals
        assert b.time_s == pytest.approx(a.time_s)
    assert path.read_text().splitlines()[0] == "scene_id,im_id,obj_id,score,R,t,time"


def test_reads_foreign_files_in_millimetres(tmp_path: Path) -> None:
    # As written by bop_toolkit / MegaPose / GenFlow submissions: no header, extra spaces, scientific notation.
    text = (
        "2,3,5,0.9,1 0 0 0 1 0 0 0 1,10.5 -20 1.0e3,0.31\n"
        "\n"
        "# a comment\n"
        "2, 3, 6, 0.4, 0 -1 0 1 0 0 0 0 1, 0 0 500, 0.31\n"
    )
    p = tmp_path / "foreign.csv"
    p.write_text(text)
    rows = read_results(p)
    assert [r.obj_id for r in rows] == [5, 6]
    np.testing.assert_allclose(rows[0].t, [0.0105, -0.020, 1.0])
    np.testing.assert_allclose(rows[1].R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert set(group_by_image(rows)) == {(2, 3)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1,2,3,0.5,1 0 0 0 1 0 0 0 1,0 0 1", "7 comma-separated"),
        ("1,2,3,0.5,1 0 0 0 1 0 0 0,0 0 1,0.1", "R must have 9"),
        ("1,2,3,0.5,1 0 0 0 1 0 0 0 1,0 0 nan,0.1", "NaN"),
        ("1,2,x,0.5,1 0 0 0 1 0 0 0 1,0 0 1,0.1", "bad id"),
        ("1,2,3,0.5,2 0 0 0 1 0 0 0 1,0 0 1,0.1", "not a rotation"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,1,1,1,1 0 0 0 1 0 0 0 1,0 0 1,0\n" + line + "\n")
    with pytest.raises(ResultsFormatError, match=message) as exc:
        read_results(p)
    assert f"{p}:3" in str(exc.value)
    # Non-strict reading keeps the good rows.
    assert len(read_results(p, strict=False)) == 1


def test_writer_resumes_and_repairs_a_cut_line(tmp_path: Path) -> None:
    rows = _random_rows(9)
    by_image = group_by_image(rows)
    path = tmp_path / "run.csv"
    with ResultsWriter(path) as w:
        for key in list(by_image)[:2]:
            w.write_image(by_image[key])
    # Simulate a crash in the middle of the third image: a partial line.
    third = list(by_image)[2]
    with path.open("a") as f:
        f.write("3,6,1,0.5,1 0 0")
    w2 = ResultsWriter(path)
    assert w2.done == set(list(by_image)[:2])
    w2.write_image(by_image[third])
    w2.close()
    back = read_results(path)
    assert len(back) == len(rows)
    assert set(group_by_image(back)) == set(by_image)


def test_writer_without_resume_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    with ResultsWriter(path) as w:
        w.write_image(_random_rows(2))
    with ResultsWriter(path, resume=False) as w:
        assert w.done == set()
    assert read_results(path) == []


def test_failure_log(tmp_path: Path) -> None:
    log = FailureLog(tmp_path / "fail.jsonl")
    log.write(scene_id=np.int64(2), im_id=3, obj_id=5, reason="empty mask")
    log.write(scene_id=2, im_id=4, reason="corrupt PNG")
    lines = (tmp_path / "fail.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"reason": "empty mask"' in lines[0] and log.count == 2
