"""BOP results files: ``scene_id,im_id,obj_id,score,R,t,time``.

``R`` is the row-major rotation (9 numbers separated by spaces), ``t`` the translation in **millimetres** (3 numbers),
``time`` the wall time in seconds spent on the whole image (the same on every row of one image; ``-1`` = unknown).
Inside meshpose translations are metres; the mm↔m conversion happens here. Files written by bop_toolkit, MegaPose or
GenFlow's BOP submissions load unchanged (header optional, blank lines and ``#`` comments ignored).

Long runs write through :class:`meshpose.run.writer.RunWriter` (side file, lock, exact resume), built on
:func:`format_results_line` and :func:`parse_results_line`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshpose.types import Pose

__all__ = [
    "RESULTS_HEADER",
    "ResultRow",
    "ResultsFormatError",
    "format_results_line",
    "group_by_image",
    "parse_results_line",
    "read_results",
    "write_results",
]

log = logging.getLogger(__name__)

RESULTS_HEADER = "scene_id,im_id,obj_id,score,R,t,time"


class ResultsFormatError(ValueError):
    """A malformed results file or row; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class ResultRow:
    """One pose estimate of a results file (metres inside).

    Args:
        scene_id: BOP scene id.
        im_id: BOP image id.
        obj_id: object id.
        score: confidence (higher is better).
        R: ``(3, 3)`` float64 rotation ``cam_R_m2c``.
        t: ``(3,)`` float64 translation in metres.
        time_s: seconds spent on the image, ``-1`` if unknown.
    """

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray
    t: np.ndarray
    time_s: float = -1.0

    @property
    def image_key(self) -> tuple[int, int]:
        return (self.scene_id, self.im_id)

    @property
    def pose(self) -> Pose:
        """The estimate as a single ``cam_from_obj`` :class:`Pose` (float64)."""
        return Pose(self.R, self.t)

    @classmethod
    def from_pose(
        cls, scene_id: int, im_id: int, obj_id: int, pose: Pose, score: float = 1.0, time_s: float = -1.0
    ) -> ResultRow:
        R, t = pose.numpy()
        return cls(int(scene_id), int(im_id), int(obj_id), float(score), R.reshape(3, 3), t.reshape(3), float(time_s))


def _floats(field: str, n: int, what: str, where: str) -> np.ndarray:
    parts = field.split()
    if len(parts) != n:
        raise ResultsFormatError(f"{where}: {what} must have {n} numbers separated by spaces, got {len(parts)}")
    try:
        vals = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError as exc:
        raise ResultsFormatError(f"{where}: {what} is not numeric ({exc})") from exc
    if not np.all(np.isfinite(vals)):
        raise ResultsFormatError(f"{where}: {what} contains NaN or inf")
    return vals


def parse_results_line(line: str, *, where: str = "results") -> ResultRow:
    """Parse one data line of a BOP results file.

    Args:
        line: ``scene_id,im_id,obj_id,score,R,t,time`` with ``t`` in millimetres.
        where: how error messages name the line (e.g. ``"res.csv:12"``).

    Raises:
        ResultsFormatError: wrong field count, non-numeric or non-finite values, or ``R`` not a rotation.
    """
    fields = [f.strip() for f in line.strip().split(",")]
    if len(fields) != 7:
        raise ResultsFormatError(f"{where}: expected 7 comma-separated fields ({RESULTS_HEADER}), got {len(fields)}")
    try:
        scene_id, im_id, obj_id = int(fields[0]), int(fields[1]), int(fields[2])
        score = float(fields[3])
        time_s = float(fields[6]) if fields[6] else -1.0
    except ValueError as exc:
        raise ResultsFormatError(f"{where}: bad id, score or time ({exc})") from exc
    R = _floats(fields[4], 9, "R", where).reshape(3, 3)
    t = _floats(fields[5], 3, "t", where) * 1e-3
    err = np.abs(R @ R.T - np.eye(3)).max()
    # Real annotations (LM-O's among them) carry rotations orthonormal to only ~2e-3; accept those as given.
    if err > 1e-2 or abs(np.linalg.det(R) - 1.0) > 1e-2:
        raise ResultsFormatError(f"{where}: R is not a rotation matrix (|RRᵀ - I| = {err:.2e})")
    return ResultRow(scene_id, im_id, obj_id, score, R, t, time_s)


def format_results_line(row: ResultRow) -> str:
    """Format a row as a BOP results line (no newline), ``t`` in millimetres."""
    R = " ".join(f"{v:.9g}" for v in np.asarray(row.R, dtype=np.float64).reshape(9))
    t = " ".join(f"{v:.6f}" for v in np.asarray(row.t, dtype=np.float64).reshape(3) * 1e3)
    return f"{row.scene_id},{row.im_id},{row.obj_id},{row.score:.6g},{R},{t},{row.time_s:.6f}"


def read_results(path: str | Path, *, strict: bool = True) -> list[ResultRow]:
    """Read a BOP results CSV (header optional).

    Args:
        path: the file.
        strict: raise on the first malformed row; with ``False`` a malformed row is logged (file:line and reason)
            and skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ResultsFormatError: a malformed row (when ``strict``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {p}")
    rows: list[ResultRow] = []
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            s = line.strip()
            if not s or s.startswith("#") or s.replace(" ", "").startswith("scene_id,"):
                continue
            try:
                rows.append(parse_results_line(s, where=f"{p}:{lineno}"))
            except ResultsFormatError as exc:
                if strict:
                    raise
                log.warning("skipping malformed row: %s", exc)
    return rows


def write_results(path: str | Path, rows: Iterable[ResultRow]) -> None:
    """Write rows as a complete BOP results file (overwrites)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(RESULTS_HEADER + "\n")
        for row in rows:
            f.write(format_results_line(row) + "\n")
    tmp.replace(p)


def group_by_image(rows: Iterable[ResultRow]) -> dict[tuple[int, int], list[ResultRow]]:
    """Rows grouped by ``(scene_id, im_id)``, in first-seen order."""
    out: dict[tuple[int, int], list[ResultRow]] = {}
    for r in rows:
        out.setdefault(r.image_key, []).append(r)
    return out
