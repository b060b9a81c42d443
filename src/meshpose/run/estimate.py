"""A coarse-estimation run over a BOP dataset (``meshpose estimate``): plan the images from 2D detections (a BOP
detections file, or ground truth), run them on an executor, write each finished image at once through the one
:class:`~meshpose.run.writer.RunWriter`, and the hypotheses to an optional JSON-lines side file.

Resume. A detection that fails writes no row, so which rows finish an image is known only once it ran. The run
therefore logs an image's failures first, then its hypotheses, then its rows; a re-run counts, per image, the
detections minus the failures already logged (without a row) and takes an image as finished when its rows are
exactly those (:class:`~meshpose.run.writer.RunWriter`'s exact-resume rule), or when every detection of it failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshpose.io.bop import BopDataset
from meshpose.io.hypotheses import format_hypotheses_line, image_keys_of_lines
from meshpose.run.estimate_job import EstimateOutcome, EstimateSpec, EstimateTask, PackedDetection
from meshpose.run.executors import Executor, SerialExecutor
from meshpose.run.job import IMAGE_FAILED, ImageKey, InstanceKey, ItemFailure
from meshpose.run.runner import RunSummary
from meshpose.run.writer import FailureLog, RunConfigError, RunMeta, RunWriter, failures_path_for, meta_path_for
from meshpose.types import Detection

__all__ = ["EstimateSummary", "detections_checksum", "estimate_dataset", "plan_estimate_tasks"]

log = logging.getLogger(__name__)

#: ``--detections gt``: detections from the dataset's ground truth.
GT = "gt"


@dataclass(frozen=True)
class EstimateSummary(RunSummary):
    """What an ``estimate`` run did: :class:`~meshpose.run.runner.RunSummary` (``instance_failures`` counts the
    detections that failed) and

    Args:
        detections: detections of the images processed in this run.
        rows_written: result rows written in this run (one per detection that gave a pose).
        hypotheses_path: the hypotheses side file, if one was asked for.
    """

    detections: int = 0
    rows_written: int = 0
    hypotheses_path: Path | None = None


def plan_estimate_tasks(
    dataset: BopDataset,
    detections: Mapping[ImageKey, Sequence[Detection]] | str,
    *,
    times: Mapping[ImageKey, float] | None = None,
) -> tuple[list[EstimateTask], list[ItemFailure]]:
    """One :class:`~meshpose.run.estimate_job.EstimateTask` per image with detections.

    Args:
        dataset: the dataset.
        detections: detections by ``(scene_id, im_id)`` (e.g. :func:`~meshpose.io.detections.read_detections`,
            each image's detections in the order they are numbered), or ``"gt"``: the visible masks and boxes of
            the ground truth (:func:`~meshpose.coarse.gt_detections.detections_from_gt`) of the dataset's target
            images.
        times: the detector's seconds per image (default: ``detections.times`` when it has them).

    Returns:
        The tasks (sorted by image) and the images whose ground truth could not be read (``"gt"`` only).
    """
    tasks: list[EstimateTask] = []
    failures: list[ItemFailure] = []
    if isinstance(detections, str):
        if detections != GT:
            raise ValueError(f"detections must be a mapping of detections or '{GT}', got {detections!r}")
        from meshpose.coarse.gt_detections import detections_from_gt

        for key in dataset.image_keys():
            try:
                dets = detections_from_gt(dataset, *key)
            except (ValueError, OSError, RuntimeError) as exc:
                log.warning("scene %d image %d: no ground-truth detections: %s", *key, exc)
                failures.append(ItemFailure(*key, None, None, IMAGE_FAILED, f"ground-truth detections: {exc}"))
                continue
            if dets:
                tasks.append(EstimateTask(key, tuple(PackedDetection.pack(d) for d in dets)))
        return tasks, failures
    if times is None:
        times = getattr(detections, "times", None) or {}
    for key in sorted(detections):
        if detections[key]:
            packed = tuple(PackedDetection.pack(d) for d in detections[key])
            tasks.append(EstimateTask((int(key[0]), int(key[1])), packed, float(times.get(key, -1.0))))
    return tasks, failures


def detections_checksum(tasks: Iterable[EstimateTask]) -> str:
    """SHA-256 of the planned detections (image, object, box, score, mask), so a re-run on other detections is
    refused."""
    h = hashlib.sha256()
    for t in tasks:
        for d in t.detections:
            rle = d.mask_rle["counts"] if d.mask_rle is not None else ""
            box = " ".join(f"{v:.4f}" for v in d.bbox)
            h.update(f"{t.key[0]},{t.key[1]},{d.obj_id},{box},{d.score:.6g},{rle}\n".encode())
    return h.hexdigest()


def _no_row_failures(path: Path) -> set[InstanceKey]:
    """Detection failures (without a row) a failures log holds."""
    flog = FailureLog(path)
    return flog.recorded_instance_keys() - flog.recorded_instance_keys(row_written_only=True)


def _expected_rows(task: EstimateTask, no_row: set[InstanceKey]) -> list[InstanceKey]:
    """The instance keys of the rows that finish ``task``: per object, its detections minus the failed ones."""
    counts: dict[int, int] = {}
    for d, inst in zip(task.detections, task.instances, strict=True):
        if (*task.key, d.obj_id, inst) not in no_row:
            counts[d.obj_id] = counts.get(d.obj_id, 0) + 1
    return [(*task.key, o, k) for o, n in counts.items() for k in range(n)]


def _logged(path: Path) -> set[tuple[int, int, int | None, int | None, str]]:
    """``(scene, image, object, instance, code)`` of the failures in a log (to log each only once on resume)."""
    out: set[tuple[int, int, int | None, int | None, str]] = set()
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            out.add((int(rec["scene_id"]), int(rec["im_id"]), rec.get("obj_id"), rec.get("instance"), rec["code"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line torn by a crash
    return out


class _HypothesesFile:
    """The ``--hypotheses-out`` JSON-lines file: started over with the results, else kept for the finished images
    only (lines of unfinished images and a line torn by a crash are dropped), then appended image by image."""

    def __init__(self, path: Path, *, fresh: bool, keep: set[ImageKey], run_keys: set[ImageKey]) -> None:
        self.path = path
        if path.is_dir():
            raise RunConfigError(f"--hypotheses-out {path} is a folder; give a file path such as {path / 'h.jsonl'}")
        lines: list[str] = []
        if path.is_file():
            lines = [s for s in path.read_text(encoding="utf-8", errors="replace").split("\n") if s.strip()]
        keys = image_keys_of_lines(lines)
        if lines and all(k is None for k in keys):
            raise RunConfigError(f"--hypotheses-out {path} exists and is not a hypotheses file: it is left untouched")
        kept = [] if fresh else [s for s, k in zip(lines, keys, strict=True) if k in keep or (k and k not in run_keys)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(s + "\n" for s in kept), encoding="utf-8")
        tmp.replace(path)
        self.missing = sorted(keep - {k for k in image_keys_of_lines(kept) if k is not None})
        self._f = path.open("a", encoding="utf-8")

    def write(self, outcome: EstimateOutcome) -> None:
        if outcome.hypotheses:
            self._f.write("".join(format_hypotheses_line(r) + "\n" for r in outcome.hypotheses))
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def estimate_dataset(
    spec: EstimateSpec,
    detections: Mapping[ImageKey, Sequence[Detection]] | str,
    out_path: str | Path,
    *,
    executor: Executor | None = None,
    restart: bool = False,
    max_images: int | None = None,
    detections_path: str | Path | None = None,
    hypotheses_path: str | Path | None = None,
    progress: Callable[[int, int, tuple[int, int]], None] | None = None,
) -> EstimateSummary:
    """Estimate the pose of every detection and write BOP results image by image (one row per detection that gave
    a pose; ``time`` the image's wall time plus the detector's).

    Failed detections (a box off the image, an empty mask, an unknown object, no pose found) and failing images go
    to the failures log (``RESULTS.failures.jsonl``) and the rest goes on. The results file resumes exactly: a
    re-run skips finished images and retries the others; other detections, method, options or depth use are
    refused (``restart`` starts over). Ctrl-C stops the executor and closes the files; every image finished before
    it is on disk.

    Args:
        spec: the job (dataset, estimator and its options, hypotheses, refiner).
        detections: detections by image (:func:`~meshpose.io.detections.read_detections`), or ``"gt"``.
        out_path: results CSV.
        executor: where images run (default: a :class:`~meshpose.run.executors.SerialExecutor`, closed at the
            end; one given is left open for the caller).
        restart: start the results (and the hypotheses file) over instead of resuming them.
        max_images: process at most this many not yet finished images.
        detections_path: the detections file (recorded in the side file; the results may not be this file).
        hypotheses_path: also write every detection's hypotheses here (JSON lines, :mod:`meshpose.io.hypotheses`).
        progress: called as ``progress(done, total, image_key)`` after each image of this run.

    Raises:
        RunConfigError: the results or hypotheses file cannot be used.
        ValueError: a negative ``max_images``, or a dataset that cannot be opened.
    """
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    t0 = time.perf_counter()
    out_path = Path(out_path)
    dataset = BopDataset(spec.dataset, spec.split, models_dir=spec.models_dir)
    tasks, rejected = plan_estimate_tasks(dataset, detections)
    source = GT if isinstance(detections, str) else str(detections_path or "")
    meta = RunMeta(
        method=f"estimate:{spec.method}",
        config={
            "estimator": spec.config,
            "hypotheses": spec.hypotheses,
            "refine": spec.refine,
            "refine_config": spec.refine_config,
        },
        iterations=spec.iterations,
        use_depth=spec.use_depth,
        inits_sha256=detections_checksum(tasks),
        inits=source,
        dataset=str(spec.dataset),
        split=spec.split,
    )
    hyp_path = Path(hypotheses_path) if hypotheses_path is not None else None
    if hyp_path is not None:
        sides = {out_path, meta_path_for(out_path), failures_path_for(out_path)}
        if detections_path is not None:
            sides.add(Path(detections_path))
        if any(hyp_path.resolve() == p.resolve() for p in sides):
            raise RunConfigError(f"--hypotheses-out {hyp_path} is one of the run's other files: give it its own")
    fresh = restart or not meta_path_for(out_path).is_file()
    failures_path = failures_path_for(out_path)
    no_row = set() if fresh else _no_row_failures(failures_path)
    expected = {t.key: _expected_rows(t, no_row) for t in tasks}
    own = executor is None
    ex: Executor = SerialExecutor() if executor is None else executor
    done = failed = det_fail = rows_written = n_dets = earlier = 0
    hyp: _HypothesesFile | None = None
    try:
        with RunWriter(out_path, meta, expected, restart=restart, inits_path=detections_path) as writer:
            finished = set(writer.done) | {k for k, v in expected.items() if not v}
            run_keys = {t.key for t in tasks}
            logged = _logged(writer.failures.path)
            earlier = sum(1 for f in logged if (f[0], f[1]) in finished & run_keys and f[2] is not None)
            for f in rejected:
                if (f.scene_id, f.im_id, None, None, f.code) not in logged:
                    writer.log_failure(f)
            if hyp_path is not None:
                hyp = _HypothesesFile(hyp_path, fresh=fresh, keep=finished & run_keys, run_keys=run_keys)
                if hyp.missing:
                    log.warning(
                        "%s has no hypotheses of %d finished image(s) (an earlier run without --hypotheses-out?)",
                        hyp_path,
                        len(hyp.missing),
                    )
            todo = [t for t in tasks if t.key not in finished]
            skipped = len(tasks) - len(todo)
            if max_images is not None:
                todo = todo[:max_images]
            n_of = {t.key: len(t.detections) for t in todo}
            with contextlib.closing(ex.run(spec, todo)) as outcomes:
                for n, outcome in enumerate(outcomes, start=1):
                    for f in outcome.failures:  # first: a re-run counts the logged ones out of the expected rows
                        if f.obj_id is None or (f.scene_id, f.im_id, f.obj_id, f.instance, f.code) not in logged:
                            writer.log_failure(f)
                    if hyp is not None and isinstance(outcome, EstimateOutcome):
                        hyp.write(outcome)
                    writer.write_image(outcome.rows)
                    rows_written += len(outcome.rows)
                    if outcome.image_failed:
                        failed += 1
                    else:
                        done += 1
                        n_dets += n_of.get(outcome.key, 0)
                    det_fail += sum(1 for f in outcome.failures if f.obj_id is not None)
                    if progress is not None:
                        progress(n, len(todo), outcome.key)
    finally:
        if hyp is not None:
            hyp.close()
        if own:
            ex.close()
    return EstimateSummary(
        images_done=done,
        images_skipped=skipped,
        images_failed=failed + len(rejected),
        instance_failures=det_fail,
        earlier_failures=earlier,
        images_total=len(tasks) + len(rejected),
        seconds=time.perf_counter() - t0,
        results_path=out_path,
        failures_path=writer.failures.path,
        detections=n_dets,
        rows_written=rows_written,
        hypotheses_path=hyp_path,
    )
