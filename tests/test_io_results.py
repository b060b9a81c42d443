"""BOP results files: parsing, round trips, clear errors (the resumable writer: tests/test_run_writer.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from meshpose.io.results import (
    ResultRow,
    ResultsFormatError,
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
