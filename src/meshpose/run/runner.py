"""A batch run over a BOP dataset (``meshpose refine``): plan the images, run them on an executor, write each
finished image at once through the one :class:`~meshpose.run.writer.RunWriter`."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from meshpose.io.bop import BopDataset
from meshpose.io.results import InitsFile, ResultRow
from meshpose.run.executors import Executor, SerialExecutor
from meshpose.run.job import InstanceKey, ItemFailure, JobSpec, plan_tasks
from meshpose.run.writer import RunMeta, RunWriter, inits_checksum

__all__ = ["EXIT_ITEMS_FAILED", "RunSummary", "refine_dataset"]

log = logging.getLogger(__name__)

#: Exit code of ``meshpose refine`` when the run finished but some items failed (0: all done, 2: bad usage).
EXIT_ITEMS_FAILED = 3


@dataclass(frozen=True)
class RunSummary:
    """What a batch run did.

    Args:
        images_done: images refined and written in this run.
        images_skipped: images already finished in the results file (resumed run).
        images_failed: images that could not be processed (logged, not written; a re-run retries them).
        instance_failures: instances that failed in this run: rejected initial poses, unreadable meshes, and
            refinements that reported a failure (their best pose is written).
        earlier_failures: instance failures an earlier run logged for the images it finished (skipped now).
        images_total: images of the run (with at least one valid initial pose).
        seconds: wall time of the run.
        results_path: the results file.
        failures_path: the failure log (JSON lines).
    """

    images_done: int
    images_skipped: int
    images_failed: int
    instance_failures: int
    earlier_failures: int
    images_total: int
    seconds: float
    results_path: Path
    failures_path: Path

    @property
    def failed_items(self) -> int:
        """Every failure the results file carries: this run's and those logged for its skipped images."""
        return self.images_failed + self.instance_failures + self.earlier_failures

    @property
    def exit_code(self) -> int:
        """0 when every item is done and none failed, :data:`EXIT_ITEMS_FAILED` otherwise."""
        return EXIT_ITEMS_FAILED if self.failed_items else 0


def refine_dataset(
    spec: JobSpec,
    inits: Iterable[ResultRow] | InitsFile,
    out_path: str | Path,
    *,
    executor: Executor | None = None,
    restart: bool = False,
    max_images: int | None = None,
    inits_path: str | Path | None = None,
    progress: Callable[[int, int, tuple[int, int]], None] | None = None,
) -> RunSummary:
    """Refine every initial pose of ``inits`` and write BOP results image by image.

    All valid instances of one image are refined in one ``refine`` call. Rejected initial poses (malformed rows,
    unknown objects, broken meshes, not a rotation, behind the camera, duplicates: see
    :func:`~meshpose.run.job.plan_tasks`) and failing images go to the failures log and the rest goes on. The
    results file resumes exactly (see :class:`~meshpose.run.writer.RunWriter`): a re-run skips finished images
    and retries the others. Ctrl-C (``KeyboardInterrupt``) stops the executor and closes the writer; every image
    finished before it is on disk.

    Args:
        spec: the job (dataset, method, config, iterations, depth use).
        inits: initial poses (e.g. from ``meshpose perturb`` or a detector + coarse estimator), or an inits file
            read by :func:`~meshpose.io.results.read_inits` (its malformed rows are logged as failures).
        out_path: results CSV.
        executor: where images run (default: a :class:`~meshpose.run.executors.SerialExecutor`, closed at the
            end; one given is left open for the caller).
        restart: start the results over instead of resuming them.
        max_images: process at most this many not yet finished images.
        inits_path: the inits file (recorded in the side file; the results may not be this file).
        progress: called as ``progress(done, total, image_key)`` after each image of this run.

    Raises:
        RunConfigError: the results file cannot be used (see :class:`~meshpose.run.writer.RunWriter`).
        ValueError: a negative ``max_images``, or a dataset that cannot be opened.
    """
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    t0 = time.perf_counter()
    if not isinstance(inits, InitsFile):
        inits = list(inits)
    dataset = BopDataset(spec.dataset, spec.split, models_dir=spec.models_dir)
    tasks, rejected = plan_tasks(dataset, inits)
    meta = RunMeta(
        method=spec.method,
        config=spec.config,
        iterations=spec.iterations,
        use_depth=spec.use_depth,
        inits_sha256=inits_checksum(inits.rows if isinstance(inits, InitsFile) else inits),
        inits=str(inits_path) if inits_path is not None else "",
        dataset=str(spec.dataset),
        split=spec.split,
    )
    own = executor is None
    ex: Executor = SerialExecutor() if executor is None else executor
    done = failed = inst_fail = 0
    expected = {t.key: t.instance_keys for t in tasks}
    try:
        with RunWriter(out_path, meta, expected, restart=restart, inits_path=inits_path) as writer:
            logged = writer.failures.recorded_instance_keys()
            logged_rows = _logged_row_failures(writer.failures.path)
            finished = [t for t in tasks if t.key in writer.done]
            earlier = len(
                writer.failures.recorded_instance_keys(row_written_only=True)
                & {(*t.key, r.obj_id, i) for t in finished for r, i in zip(t.rows, t.instances, strict=True)}
            )
            for f in rejected:
                inst_fail += 1
                if f.obj_id is None:  # a malformed row: known by its message (file:line first)
                    if (f.code, f.message) not in logged_rows:
                        writer.log_failure(f)
                        log.warning("%s", f.message)
                elif _key(f) not in logged:
                    writer.log_failure(f)
                    log.warning("scene %s image %s object %d: %s", f.scene_id, f.im_id, f.obj_id, f.message)
            todo = [t for t in tasks if t.key not in writer.done]
            skipped = len(tasks) - len(todo)
            if max_images is not None:
                todo = todo[:max_images]
            with contextlib.closing(ex.run(spec, todo)) as outcomes:
                for n, outcome in enumerate(outcomes, start=1):
                    writer.write_image(outcome.rows)
                    for f in outcome.failures:
                        writer.log_failure(f)
                    if outcome.image_failed or not outcome.rows:
                        failed += 1
                    else:
                        done += 1
                    inst_fail += sum(1 for f in outcome.failures if f.obj_id is not None)
                    if progress is not None:
                        progress(n, len(todo), outcome.key)
    finally:
        if own:
            ex.close()
    return RunSummary(
        images_done=done,
        images_skipped=skipped,
        images_failed=failed,
        instance_failures=inst_fail,
        earlier_failures=earlier,
        images_total=len(tasks),
        seconds=time.perf_counter() - t0,
        results_path=Path(out_path),
        failures_path=writer.failures.path,
    )


def _key(f: ItemFailure) -> InstanceKey:
    def known(v: int | None) -> int:
        return -1 if v is None else v

    return (known(f.scene_id), known(f.im_id), known(f.obj_id), known(f.instance))


def _logged_row_failures(path: Path) -> set[tuple[str, str]]:
    """``(code, message)`` of the failures without an object in a failures log (malformed rows, images), so that
    a resumed run does not log a malformed inits row again."""
    out: set[tuple[str, str]] = set()
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            if rec.get("obj_id") is None:
                out.add((str(rec["code"]), str(rec["message"])))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line torn by a crash
    return out
