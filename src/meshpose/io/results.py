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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshpose.errors import FormatError, PoseError
from meshpose.types import Pose
from meshpose.types.pose import MAX_ROTATION_REPAIR, PLAUSIBLE_DEPTH_M

__all__ = [
    "RESULTS_HEADER",
    "ROTATION_ATOL",
    "InitsFile",
    "ResultRow",
    "ResultsFormatError",
    "check_init_row",
    "format_results_line",
    "group_by_image",
    "parse_results_line",
    "read_inits",
    "read_results",
    "write_results",
]

log = logging.getLogger(__name__)

RESULTS_HEADER = "scene_id,im_id,obj_id,score,R,t,time"


class ResultsFormatError(FormatError):
    """A malformed results file or row; the message names the file and line.

    Attributes:
        scene_id: the row's scene id when it could be read, else ``None`` (likewise ``im_id`` and ``obj_id``).
    """

    code = "malformed_row"
    scene_id: int | None = None
    im_id: int | None = None
    obj_id: int | None = None


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


#: Rotations whose ``max |RRᵀ - I|`` (or ``|det R - 1|``) is at most this are taken as given: real annotations
#: (LM-O's among them) are orthonormal to only ~2e-3.
ROTATION_ATOL = 1e-2


def _floats(field: str, n: int, what: str, where: str, path: str | None, line: int | None) -> np.ndarray:
    parts = field.split()
    if len(parts) != n:
        raise ResultsFormatError(
            f"{where}: {what} must have {n} numbers separated by spaces, got {len(parts)} ({field[:60]!r})",
            path=path,
            line=line,
            value=field,
        )
    try:
        vals = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError as exc:
        raise ResultsFormatError(f"{where}: {what} is not numeric ({exc})", path=path, line=line, value=field) from exc
    if not np.all(np.isfinite(vals)):
        raise ResultsFormatError(f"{where}: {what} contains NaN or inf ({field!r})", path=path, line=line, value=field)
    return vals


def _rotation(R: np.ndarray, where: str, path: str | None, line: int | None) -> np.ndarray:
    """``R`` itself, its nearest rotation (a warning says so) when it is off SO(3) by at most
    :data:`~meshpose.types.pose.MAX_ROTATION_REPAIR`, or a :class:`ResultsFormatError` saying why it is none."""
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if err <= ROTATION_ATOL and abs(det - 1.0) <= ROTATION_ATOL:
        return R
    value = " ".join(f"{v:.6g}" for v in R.reshape(9))
    if det < 0:
        raise ResultsFormatError(
            f"{where}: R is a reflection, not a rotation (det R = {det:.4f}; a rotation has det +1: a flipped axis "
            "or a left-handed frame?)",
            path=path,
            line=line,
            value=value,
            cause="reflection",
        )
    off = max(err, abs(det - 1.0))
    if off > MAX_ROTATION_REPAIR:
        raise ResultsFormatError(
            f"{where}: R is not a rotation (|RRᵀ - I| = {err:.2e}, det R = {det:.4f}; rotations off by up to "
            f"{MAX_ROTATION_REPAIR:g} are repaired): is it row-major, and is it R and not a full 4×4 or 3×4 matrix?",
            path=path,
            line=line,
            value=value,
            cause="not a rotation",
        )
    # Slightly off SO(3) (real annotations): Pose.check replaces it by the nearest rotation and logs a warning.
    R_fixed, _ = Pose(R, np.zeros(3)).check(f"{where}: R", atol=ROTATION_ATOL).numpy()
    return np.asarray(R_fixed, dtype=np.float64).reshape(3, 3)


def parse_results_line(
    line: str, *, where: str = "results", path: str | Path | None = None, lineno: int | None = None
) -> ResultRow:
    """Parse one data line of a BOP results file.

    A rotation off SO(3) by more than :data:`ROTATION_ATOL` but at most
    :data:`~meshpose.types.pose.MAX_ROTATION_REPAIR` is replaced by the nearest rotation (with a logged warning).

    Args:
        line: ``scene_id,im_id,obj_id,score,R,t,time`` with ``t`` in millimetres.
        where: how error messages name the line (e.g. ``"res.csv:12"``).
        path: the file (kept in the error's ``path``).
        lineno: the 1-based line number (kept in the error's ``line``).

    Raises:
        ResultsFormatError: wrong field count, non-numeric or non-finite values, ``R`` a reflection or not a
            rotation. The error keeps the ids it could read (``scene_id``, ``im_id``, ``obj_id``; ``None`` if not).
    """
    p = None if path is None else str(path)
    fields = [f.strip() for f in line.strip().split(",")]
    ids: list[int | None] = [None, None, None]
    for k in range(min(3, len(fields))):
        try:
            ids[k] = int(fields[k])
        except ValueError:
            break
    try:
        if len(fields) != 7:
            hint = " (R and t are separated by spaces, not commas)" if len(fields) > 7 else ""
            raise ResultsFormatError(
                f"{where}: expected 7 comma-separated fields ({RESULTS_HEADER}), got {len(fields)}{hint}",
                path=p,
                line=lineno,
                value=line.strip()[:80],
            )
        try:
            scene_id, im_id, obj_id = int(fields[0]), int(fields[1]), int(fields[2])
            score = float(fields[3])
            time_s = float(fields[6]) if fields[6] else -1.0
        except ValueError as exc:
            raise ResultsFormatError(
                f"{where}: bad id, score or time ({exc})", path=p, line=lineno, value=line.strip()[:80]
            ) from exc
        R = _rotation(_floats(fields[4], 9, "R", where, p, lineno).reshape(3, 3), where, p, lineno)
        t = _floats(fields[5], 3, "t", where, p, lineno) * 1e-3
    except ResultsFormatError as exc:
        exc.scene_id, exc.im_id, exc.obj_id = ids
        raise
    return ResultRow(scene_id, im_id, obj_id, score, R, t, time_s)


def format_results_line(row: ResultRow) -> str:
    """Format a row as a BOP results line (no newline), ``t`` in millimetres."""
    R = " ".join(f"{v:.9g}" for v in np.asarray(row.R, dtype=np.float64).reshape(9))
    t = " ".join(f"{v:.6f}" for v in np.asarray(row.t, dtype=np.float64).reshape(3) * 1e3)
    return f"{row.scene_id},{row.im_id},{row.obj_id},{row.score:.6g},{R},{t},{row.time_s:.6f}"


def _data_lines(p: Path) -> Iterator[tuple[int, str]]:
    """``(line number, stripped text)`` of the data lines of a results file: no blank lines, ``#`` comments or
    header; a UTF-8 byte-order mark, CRLF line ends and bytes that are not UTF-8 (they make their row malformed)
    are tolerated."""
    with p.open("r", encoding="utf-8-sig", errors="replace", newline=None) as f:
        for lineno, line in enumerate(f, start=1):
            s = line.strip().lstrip("\ufeff")
            if not s or s.startswith("#") or s.replace(" ", "").startswith("scene_id,"):
                continue
            yield lineno, s


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
    for lineno, s in _data_lines(p):
        try:
            rows.append(parse_results_line(s, where=f"{p}:{lineno}", path=p, lineno=lineno))
        except ResultsFormatError as exc:
            if strict:
                raise
            log.warning("skipping malformed row: %s", exc)
    return rows


@dataclass(frozen=True)
class InitsFile:
    """An inits file read row by row: the rows that parse, and the malformed ones set aside with their line.

    Args:
        path: the file.
        rows: the rows that parse, in file order (rotations slightly off SO(3) repaired).
        lines: the line of each row of ``rows``.
        problems: one :class:`ResultsFormatError` per malformed row (its ``line``, the ids it could read).
    """

    path: Path
    rows: tuple[ResultRow, ...]
    lines: tuple[int, ...]
    problems: tuple[ResultsFormatError, ...] = ()

    def where(self, index: int) -> str:
        """``"file:line"`` of ``rows[index]``."""
        return f"{self.path}:{self.lines[index]}"


def read_inits(path: str | Path) -> InitsFile:
    """Read an inits file (BOP results format) leniently: a malformed row is set aside, not fatal.

    Each malformed row (wrong column count, non-numeric, NaN/inf, ``R`` not 9 numbers, a reflection or far off
    SO(3)) becomes a :class:`ResultsFormatError` naming ``file:line``, kept in :attr:`InitsFile.problems`; a batch
    run logs each as a per-item failure and refines the rest. Whether a pose is plausible as an initial pose
    (in front of the camera, millimetres) is :func:`check_init_row`'s job.

    Raises:
        FileNotFoundError: the file does not exist.
        ResultsFormatError: the file holds no valid row at all (empty, or every row malformed: most likely the
            wrong file); the message names the first malformed line.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"inits file not found: {p}")
    rows: list[ResultRow] = []
    lines: list[int] = []
    problems: list[ResultsFormatError] = []
    for lineno, s in _data_lines(p):
        try:
            rows.append(parse_results_line(s, where=f"{p}:{lineno}", path=p, lineno=lineno))
            lines.append(lineno)
        except ResultsFormatError as exc:
            problems.append(exc)
    if not rows:
        if problems:
            raise ResultsFormatError(
                f"{p} holds no valid initial pose: {len(problems)} malformed row(s), the first: {problems[0]}",
                path=p,
                line=problems[0].line,
            )
        raise ResultsFormatError(f"{p} holds no initial poses (no data rows: {RESULTS_HEADER})", path=p)
    return InitsFile(p, tuple(rows), tuple(lines), tuple(problems))


def check_init_row(row: ResultRow, where: str, *, path: str | Path | None = None, line: int | None = None) -> ResultRow:
    """Check that a row can serve as an initial pose; a rotation slightly off SO(3) is repaired (with a warning).

    Args:
        row: the row (``t`` in metres inside, millimetres in the file the messages speak of).
        where: how messages name the row (``"inits.csv:7"``, or ids).
        path: the file (kept in the error).
        line: the line (kept in the error).

    Returns:
        ``row``, or a copy with the repaired rotation.

    Raises:
        PoseError: NaN/inf, a reflection, a rotation far off SO(3), the object behind the camera, or a depth that
            betrays wrong units (``t`` in metres where BOP files hold millimetres, or the reverse).

    Example:
        >>> from meshpose.types import Pose
        >>> row = ResultRow.from_pose(1, 0, 5, Pose.identity())  # t = 0: the object on the camera
        >>> check_init_row(row, "inits.csv:2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        meshpose.errors.PoseError: inits.csv:2: the initial pose of object 5 puts it behind the camera (t_z = 0 mm, ...
    """
    R = np.asarray(row.R, dtype=np.float64).reshape(3, 3)
    t_mm = np.asarray(row.t, dtype=np.float64).reshape(3) * 1e3
    p = None if path is None else str(path)
    what = f"{where}: the initial pose of object {row.obj_id}"
    if not (np.isfinite(R).all() and np.isfinite(t_mm).all()):
        raise PoseError(f"{what} contains NaN or inf", path=p, line=line)
    try:
        R_ok = _rotation(R, where, p, line)
    except ResultsFormatError as exc:
        raise PoseError(str(exc), path=p, line=line, value=exc.value, cause=exc.cause) from exc
    near_mm, far_mm = PLAUSIBLE_DEPTH_M[0] * 1e3, PLAUSIBLE_DEPTH_M[1] * 1e3
    tz = float(t_mm[2])
    value = " ".join(f"{v:g}" for v in t_mm)
    if tz <= 0:
        raise PoseError(
            f"{what} puts it behind the camera (t_z = {tz:g} mm, t = {value} mm): check the sign of t, and that it "
            "is the object-to-camera pose (cam_R_m2c, cam_t_m2c), not its inverse",
            path=p,
            line=line,
            value=value,
            cause="behind the camera",
        )
    if tz < near_mm:
        raise PoseError(
            f"{what} puts it {tz:g} mm from the camera (below {near_mm:g} mm): is t in metres? BOP files hold "
            f"millimetres (t = {value})",
            path=p,
            line=line,
            value=value,
            cause="t in metres where millimetres are expected",
        )
    if tz > far_mm:
        raise PoseError(
            f"{what} puts it {tz * 1e-3:g} m from the camera (beyond {far_mm * 1e-3:g} m): is t scaled twice, "
            f"or in micrometres? BOP files hold millimetres (t = {value})",
            path=p,
            line=line,
            value=value,
            cause="t in the wrong units",
        )
    if R_ok is R:
        return row
    return ResultRow(row.scene_id, row.im_id, row.obj_id, row.score, R_ok, row.t, row.time_s)


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
