"""The one writer of a results file: side file, exclusive lock, exact resume, failures log.

A run's outputs live side by side::

    RESULTS.csv              BOP results, one block of rows per finished image (appended, flushed, fsynced)
    RESULTS.csv.meta.json    what made them: method, config, iterations, depth use, inits checksum, version
    RESULTS.failures.jsonl   one JSON object per failed item: ids, code, message
    RESULTS.csv.lock         held (``flock``) while a run writes; removed at the end

Rules (each refuses with a :class:`RunConfigError` whose message says what to do):

* a file without a side file is not ours: it is never appended to or overwritten, not even with ``restart``;
* a side file that does not match this run (other method, config, iterations, depth use or inits) is refused;
  ``restart`` starts the results over;
* a second writer of the same file fails at once (``flock`` on the lock file; local file systems, and NFS where
  the server supports ``flock``);
* the results file is never the inits file.

Resume keys on ``(scene_id, im_id, obj_id, instance)``: an image counts as finished when its rows in the file are
exactly the rows its inits ask for. A line torn by a crash, and every other row of an unfinished image, are dropped
(with a warning) before the run goes on, so nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from meshpose.io.results import (
    RESULTS_HEADER,
    ResultRow,
    ResultsFormatError,
    format_results_line,
    parse_results_line,
)
from meshpose.run.job import ImageKey, InstanceKey, ItemFailure, instance_keys

__all__ = [
    "FailureLog",
    "ResultsLockedError",
    "RunConfigError",
    "RunMeta",
    "RunWriter",
    "failures_path_for",
    "inits_checksum",
    "lock_path_for",
    "meta_path_for",
]

log = logging.getLogger(__name__)

META_FORMAT = "meshpose-results/1"


class RunConfigError(ValueError):
    """A run that must not start (it would overwrite or mix up results); the message says what to do."""


class ResultsLockedError(RunConfigError):
    """Another process is writing the results file."""


def failures_path_for(results_path: str | Path) -> Path:
    """Where the failure log of a results file goes: ``RESULTS.csv`` → ``RESULTS.failures.jsonl``."""
    p = Path(results_path)
    return p.with_name(p.stem + ".failures.jsonl")


def meta_path_for(results_path: str | Path) -> Path:
    """The side file of a results file: ``RESULTS.csv`` → ``RESULTS.csv.meta.json``."""
    p = Path(results_path)
    return p.with_name(p.name + ".meta.json")


def lock_path_for(results_path: str | Path) -> Path:
    """The lock file of a results file: ``RESULTS.csv`` → ``RESULTS.csv.lock``."""
    p = Path(results_path)
    return p.with_name(p.name + ".lock")


def inits_checksum(rows: Iterable[ResultRow]) -> str:
    """SHA-256 of initial poses as meshpose formats them (so the same poses give the same sum however the file
    was spaced or commented)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(format_results_line(dataclasses.replace(r, time_s=-1.0)).encode())
        h.update(b"\n")
    return h.hexdigest()


def _meshpose_version() -> str:
    from meshpose import __version__

    return __version__


@dataclass(frozen=True)
class RunMeta:
    """What made a results file (its side file).

    Args:
        method: refiner preset.
        config: refiner option overrides.
        iterations: outer iterations (``None``: the method's default).
        use_depth: whether RGB methods were given depth.
        inits_sha256: :func:`inits_checksum` of the initial poses.
        inits: where the initial poses came from (informative).
        dataset: dataset folder (informative: a moved dataset still resumes).
        split: dataset split.
        meshpose_version: the version that started the file (a different one only warns).
    """

    method: str
    config: dict[str, Any]
    iterations: int | None
    use_depth: bool
    inits_sha256: str
    inits: str = ""
    dataset: str = ""
    split: str = "test"
    meshpose_version: str = dataclasses.field(default_factory=_meshpose_version)

    #: Fields that must match for a run to resume a file.
    MUST_MATCH = ("method", "config", "iterations", "use_depth", "inits_sha256")

    def to_json(self) -> dict[str, Any]:
        return {"format": META_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in cls.MUST_MATCH if k not in data]
        if data.get("format") != META_FORMAT or missing:
            raise ValueError(f"not a {META_FORMAT} side file (format {data.get('format')!r}, missing {missing})")
        return cls(**{k: v for k, v in data.items() if k in names})

    def mismatches(self, other: RunMeta) -> list[str]:
        """The :attr:`MUST_MATCH` fields that differ, as ``"field: file has X, this run Y"``."""
        out = []
        for name in self.MUST_MATCH:
            a, b = getattr(self, name), getattr(other, name)
            if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
                if name == "inits_sha256":
                    out.append(f"initial poses: the file was made from other inits ({self.inits or '?'})")
                else:
                    out.append(f"{name}: the file has {json.dumps(a)}, this run {json.dumps(b)}")
        return out


class _FileLock:
    """An exclusive, non-blocking ``flock`` on a lock file that is removed on release (safely: a process that
    locked a file another one has just removed notices and tries again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, what: Path) -> None:
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                holder = ""
                with contextlib.suppress(OSError):
                    holder = self.path.read_text().strip()
                raise ResultsLockedError(
                    f"another meshpose run is writing {what}{f' (pid {holder})' if holder else ''}; wait for it to "
                    f"finish or choose another --out (lock: {self.path})"
                ) from exc
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)  # the previous holder removed it between our open and our lock
        raise ResultsLockedError(f"could not lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


class FailureLog:
    """JSON-lines log of the failed items of a run (one object per line: ids, ``code``, ``message``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0

    def write(self, failure: ItemFailure) -> None:
        """Append one failure."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rec: dict[str, Any] = {"scene_id": failure.scene_id, "im_id": failure.im_id}
        if failure.obj_id is not None:
            rec.update(obj_id=failure.obj_id, instance=failure.instance)
        rec.update(code=failure.code, message=failure.message, row_written=failure.row_written)
        rec["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        self.count += 1

    def recorded_instance_keys(self, *, row_written_only: bool = False) -> set[InstanceKey]:
        """``(scene, image, object, instance)`` of the instance failures in the log (none if there is no log).

        Args:
            row_written_only: only the failures whose row was written anyway (refiner failures).
        """
        out: set[InstanceKey] = set()
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                if rec.get("obj_id") is None or (row_written_only and not rec.get("row_written")):
                    continue
                out.add((int(rec["scene_id"]), int(rec["im_id"]), int(rec["obj_id"]), int(rec["instance"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line torn by a crash
        return out


class RunWriter:
    """Owns a results file for one run: checks and locks it, resumes it exactly, appends finished images.

    Args:
        path: the results CSV.
        meta: what this run is (compared with the side file of an existing file).
        expected: for every image of the run, the instance keys its finished rows have
            (:attr:`~meshpose.run.job.ImageTask.instance_keys`).
        restart: start a file this writer's side file vouches for over (its rows and failures log are dropped).
        inits_path: the inits file, which the results must never be.

    Raises:
        RunConfigError: the file is a folder or the inits, was not written by meshpose, or was made by another
            run (the message names the difference); :class:`ResultsLockedError` when another process writes it.

    Example:
        >>> import tempfile, os
        >>> from meshpose.types import Pose
        >>> path = os.path.join(tempfile.mkdtemp(), "res.csv")
        >>> meta = RunMeta("flow-pnp", {}, None, True, inits_sha256="0" * 64)
        >>> row = ResultRow.from_pose(1, 3, 5, Pose.identity(), 0.9, 0.1)
        >>> with RunWriter(path, meta, {(1, 3): [(1, 3, 5, 0)]}) as w:
        ...     w.write_image([row])
        >>> with RunWriter(path, meta, {(1, 3): [(1, 3, 5, 0)]}) as w:
        ...     sorted(w.done)
        [(1, 3)]
    """

    def __init__(
        self,
        path: str | Path,
        meta: RunMeta,
        expected: Mapping[ImageKey, Sequence[InstanceKey]],
        *,
        restart: bool = False,
        inits_path: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.meta_path = meta_path_for(self.path)
        self.failures = FailureLog(failures_path_for(self.path))
        self.done: set[ImageKey] = set()
        self.dropped_rows = 0
        self._expected = {k: sorted(v) for k, v in expected.items()}
        self._check_target(inits_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _FileLock(lock_path_for(self.path))
        self._lock.acquire(self.path)
        try:
            self._open(restart)
            self._f = self.path.open("a", encoding="utf-8")
        except BaseException:
            self._lock.release()
            raise

    # --- opening -------------------------------------------------------------------------------------------
    def _check_target(self, inits_path: str | Path | None) -> None:
        p = self.path
        if p.is_dir():
            raise RunConfigError(f"--out {p} is a folder; give a results file path such as {p / 'results.csv'}")
        if inits_path is not None:
            same = p.resolve() == Path(inits_path).resolve()
            if not same and p.exists() and Path(inits_path).exists():
                same = os.path.samefile(p, inits_path)
            if same:
                raise RunConfigError(f"--out {p} is the inits file: the results need a file of their own")
        for side in (self.meta_path, self.failures.path):
            if side.is_dir():
                raise RunConfigError(f"{side} is a folder; it is where the results' side file goes")

    def _open(self, restart: bool) -> None:
        has_rows = self.path.is_file() and self.path.stat().st_size > 0
        has_meta = self.meta_path.is_file()
        if has_rows and not has_meta:
            raise RunConfigError(
                f"{self.path} exists and was not written by meshpose (refine or estimate; it has no "
                f"{self.meta_path.name}); "
                "it is left untouched: choose another --out, or delete the file yourself to reuse its name"
            )
        if has_meta and not restart:
            try:
                old = RunMeta.from_json(json.loads(self.meta_path.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as exc:
                raise RunConfigError(
                    f"side file {self.meta_path} is unreadable ({exc}); pass --restart to start {self.path} over"
                ) from exc
            diff = old.mismatches(self.meta)
            if diff:
                raise RunConfigError(
                    f"{self.path} holds results of another run ({'; '.join(diff)}); pass --restart to start it "
                    "over (its rows are deleted) or choose another --out"
                )
            if old.meshpose_version != self.meta.meshpose_version:
                log.warning(
                    "%s was started by meshpose %s, this is %s: resuming it",
                    self.path,
                    old.meshpose_version,
                    self.meta.meshpose_version,
                )
            self.meta = old
            if has_rows:
                self._scan_and_repair()
                return
        elif restart and has_meta and self.failures.path.is_file():
            self.failures.path.unlink()
        # A fresh file: the side file first, so that a crash never leaves rows without one.
        _write_atomic(self.meta_path, json.dumps(self.meta.to_json(), indent=1) + "\n")
        _write_atomic(self.path, RESULTS_HEADER + "\n")

    def _scan_and_repair(self) -> None:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        torn = lines.pop()  # "" when the file ends with a newline, else a line cut short by a crash
        if torn.strip():
            log.warning("%s: dropping a line cut short by a crash: %r", self.path, torn[:80])
            self.dropped_rows += 1
        header: list[str] = []
        by_image: dict[ImageKey, list[tuple[ResultRow, str]]] = {}
        for i, line in enumerate(lines, start=1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            if s.replace(" ", "").startswith("scene_id,"):
                header = header or [s]
                continue
            try:
                row = parse_results_line(s, where=f"{self.path}:{i}")
            except ResultsFormatError as exc:
                log.warning("dropping a malformed row: %s", exc)
                self.dropped_rows += 1
                continue
            by_image.setdefault(row.image_key, []).append((row, s))
        kept = header or [RESULTS_HEADER]
        for key, entries in by_image.items():
            want = self._expected.get(key)
            if want is None:
                kept.extend(s for _, s in entries)  # not an image of this run (a --max-images run wrote it): keep
                continue
            if sorted(instance_keys([r for r, _ in entries])) == want:
                self.done.add(key)
                kept.extend(s for _, s in entries)
                continue
            log.warning("%s: scene %d image %d is unfinished: dropping its %d row(s)", self.path, *key, len(entries))
            self.dropped_rows += len(entries)
        if self.dropped_rows or not header:
            _write_atomic(self.path, "\n".join(kept) + "\n")

    # --- writing -------------------------------------------------------------------------------------------
    def write_image(self, rows: Sequence[ResultRow]) -> None:
        """Append all rows of one image in one write, flushed and fsynced (a crash tears at most this image,
        which the next run drops and redoes)."""
        if not rows:
            return
        keys = {r.image_key for r in rows}
        if len(keys) != 1:
            raise ValueError(f"write_image got rows of several images: {sorted(keys)}")
        self._f.write("".join(format_results_line(r) + "\n" for r in rows))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(rows[0].image_key)

    def log_failure(self, failure: ItemFailure) -> None:
        """Record a failed item in the failures log."""
        self.failures.write(failure)

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        f = getattr(self, "_f", None)
        if f is not None and not f.closed:
            f.close()
        self._lock.release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
