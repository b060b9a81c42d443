"""BOP results files: ``scene_id,im_id,obj_id,score,R,t,time``.

``R`` is the row-major rotation (9 numbers separated by spaces), ``t`` the translation in **millimetres** (3 numbers),
``time`` the wall time in seconds spent on the whole image (the same on every row of one image; ``-1`` = unknown).
Inside meshpose translations are metres; the mm↔m conversion happens here. Files written by bop_toolkit, MegaPose or
GenFlow's BOP submissions load unchanged (header optional, blank lines and ``#`` comments ignored).

Long runs write through :class:`ResultsWriter`: every finished image is appended and flushed at once, and a re-run
resumes where the last one stopped. Per-item failures go to a :class:`FailureLog` next to the results.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from meshpose.types import Pose

__all__ = [
    "RESULTS_HEADER",
    "FailureLog",
    "ResultRow",
    "ResultsFormatError",
    "ResultsWriter",
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


class ResultsWriter:
    """Appends the rows of each finished image to a results file at once, so a crash loses nothing.

    With ``resume=True`` an existing file is kept: :attr:`done` holds the images already in it (a run skips them),
    and a line cut short by a crash is removed together with the rest of its image's rows.

    Example:
        >>> import tempfile, os
        >>> from meshpose.types import Pose
        >>> path = os.path.join(tempfile.mkdtemp(), "res.csv")
        >>> with ResultsWriter(path) as w:
        ...     w.write_image([ResultRow.from_pose(1, 3, 5, Pose.identity(), 0.9, 0.1)])
        >>> ResultsWriter(path).done
        {(1, 3)}
    """

    def __init__(self, path: str | Path, *, resume: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple[int, int]] = set()
        if resume and self.path.is_file() and self.path.stat().st_size > 0:
            self._repair_and_scan()
        else:
            with self.path.open("w", encoding="utf-8") as f:
                f.write(RESULTS_HEADER + "\n")
        self._f = self.path.open("a", encoding="utf-8")

    def _repair_and_scan(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        cut_key: tuple[int, int] | None = None
        if not text.endswith("\n"):
            partial = lines.pop()  # the last line was cut short by a crash
            try:
                cut_key = (int(partial.split(",")[0]), int(partial.split(",")[1]))
            except (ValueError, IndexError):
                cut_key = None
        kept: list[str] = []
        for i, line in enumerate(lines, start=1):
            s = line.strip()
            if not s:
                continue
            if s.startswith("#") or s.replace(" ", "").startswith("scene_id,"):
                kept.append(s)
                continue
            try:
                row = parse_results_line(s, where=f"{self.path}:{i}")
            except ResultsFormatError as exc:
                log.warning("dropping malformed row while resuming: %s", exc)
                continue
            if row.image_key == cut_key:
                continue
            kept.append(s)
            self.done.add(row.image_key)
        if not kept or not kept[0].replace(" ", "").startswith("scene_id,"):
            kept.insert(0, RESULTS_HEADER)
        if cut_key is not None or len(kept) != sum(1 for s in lines if s.strip()):
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
            tmp.replace(self.path)

    def write_image(self, rows: Sequence[ResultRow]) -> None:
        """Append all rows of one image in one write and flush them to disk."""
        if rows:
            self._f.write("".join(format_results_line(r) + "\n" for r in rows))
            self._f.flush()
            os.fsync(self._f.fileno())
            self.done.add(rows[0].image_key)

    def mark_done(self, key: tuple[int, int]) -> None:
        """Record an image that produced no rows (so a resumed run does not redo it in this process)."""
        self.done.add(key)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FailureLog:
    """JSON-lines log of per-item failures of a batch run (one object per line), next to its results file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0

    def write(self, *, reason: str, **keys: Any) -> None:
        """Append one failure, e.g. ``write(scene_id=2, im_id=3, obj_id=5, reason="empty mask")``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rec = {**{k: (int(v) if isinstance(v, np.integer) else v) for k, v in keys.items()}, "reason": reason}
        rec["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        self.count += 1
