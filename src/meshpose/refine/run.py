"""Running a refiner over a BOP dataset (``meshpose refine``): resumable, failure-tolerant, BOP results out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshpose.io.bop import BopDataset
from meshpose.io.results import FailureLog, ResultRow, ResultsWriter, group_by_image
from meshpose.refine.base import Refiner
from meshpose.types import Pose

__all__ = ["RunSummary", "failures_path_for", "refine_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What a batch run did.

    Args:
        images_done: images refined and written in this run.
        images_skipped: images already in the results file (resumed run).
        images_failed: images that could not be processed (logged, not written; a re-run retries them).
        instance_failures: instances whose refinement reported a failure reason (their best pose is written).
        seconds: wall time of the run.
        results_path: the results file.
        failures_path: the failure log (JSON lines).
    """

    images_done: int
    images_skipped: int
    images_failed: int
    instance_failures: int
    seconds: float
    results_path: Path
    failures_path: Path


def failures_path_for(results_path: str | Path) -> Path:
    """Where the failure log of a results file goes: ``RESULTS.csv`` → ``RESULTS.failures.jsonl``."""
    p = Path(results_path)
    return p.with_name(p.stem + ".failures.jsonl")


def refine_dataset(
    dataset: BopDataset,
    inits: Sequence[ResultRow],
    refiner: Refiner,
    out_path: str | Path,
    *,
    iterations: int | None = None,
    resume: bool = True,
    use_depth: bool = True,
    max_images: int | None = None,
    progress: Callable[[int, int, tuple[int, int]], None] | None = None,
) -> RunSummary:
    """Refine every initial pose of ``inits`` and write BOP results image by image.

    All instances of one image are refined in one ``refine`` call (multi-object methods refine them jointly).
    The ``time`` column holds the wall time of the image (loading included). A failing image is logged to the
    failure log with its reason and skipped; a re-run with ``resume`` skips finished images and retries failed ones.

    Args:
        dataset: the BOP dataset (images, cameras, object models).
        inits: initial poses (e.g. from ``meshpose perturb`` or a detector + coarse estimator).
        refiner: the method.
        out_path: results CSV to write (appended to when resuming).
        iterations: outer iterations (``None``: the method's default).
        resume: keep an existing results file and skip its images.
        use_depth: pass depth to the refiner when the dataset has it (an ``rgbd`` refiner always gets it).
        max_images: process at most this many (not yet finished) images.
        progress: called as ``progress(done, total, image_key)`` after each image.
    """
    t0 = time.perf_counter()
    by_image = group_by_image(inits)
    failures = FailureLog(failures_path_for(out_path))
    done = skipped = failed = inst_fail = 0
    with ResultsWriter(out_path, resume=resume) as writer:
        todo = [k for k in by_image if k not in writer.done]
        skipped = len(by_image) - len(todo)
        if max_images is not None:
            todo = todo[:max_images]
        for n, key in enumerate(todo, start=1):
            scene_id, im_id = key
            rows = by_image[key]
            t_img = time.perf_counter()
            try:
                want_depth = refiner.modality == "rgbd" or use_depth
                obs = dataset.observation(scene_id, im_id, with_depth=want_depth)
                objects = [dataset.object(r.obj_id) for r in rows]
                init = Pose.stack([r.pose for r in rows])
                result = refiner.refine(obs, objects, init, iterations=iterations)
            except (ValueError, OSError, RuntimeError) as exc:
                failed += 1
                failures.write(scene_id=scene_id, im_id=im_id, reason=f"{type(exc).__name__}: {exc}")
                log.warning("scene %d image %d failed: %s", scene_id, im_id, exc)
                if progress is not None:
                    progress(n, len(todo), key)
                continue
            elapsed = time.perf_counter() - t_img
            out_rows = []
            for i, r in enumerate(rows):
                reason = result.info.failure[i]
                if reason is not None:
                    inst_fail += 1
                    failures.write(scene_id=scene_id, im_id=im_id, obj_id=r.obj_id, instance=i, reason=reason)
                out_rows.append(
                    ResultRow.from_pose(scene_id, im_id, r.obj_id, result.pose[i], float(result.score[i]), elapsed)
                )
            writer.write_image(out_rows)
            done += 1
            if progress is not None:
                progress(n, len(todo), key)
    return RunSummary(
        images_done=done,
        images_skipped=skipped,
        images_failed=failed,
        instance_failures=inst_fail,
        seconds=time.perf_counter() - t0,
        results_path=Path(out_path),
        failures_path=failures.path,
    )
