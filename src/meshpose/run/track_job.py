"""Tracking scenes on an executor (``meshpose track --executor ray``): one task per scene.

A scene is a sequence — each frame starts from the previous one's poses — so it cannot be split between workers;
scenes can. Each task carries its scene's plan, the frames an earlier run already wrote (their rows, to restore the
tracker from) and the scene's detections; the worker tracks it with the same code as a serial run
(:class:`meshpose.run.track._Run`), collecting its rows and failures instead of writing them, and the driver writes
them through the run's one :class:`~meshpose.run.writer.RunWriter` when the scene comes back. So a resumed run
resumes exactly as a serial one does, at the granularity of the scenes that finished; a worker that dies fails its
scene's frames in the log (the next run tracks them again).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshpose.io.bop import BopDataset
from meshpose.io.results import ResultRow
from meshpose.refine.base import Refiner
from meshpose.refine.registry import make_refiner
from meshpose.run.executors import Executor
from meshpose.run.job import ImageKey, ImageOutcome, ItemFailure
from meshpose.run.track import SceneTracks, TrackSpec, _Run
from meshpose.types import Detection

__all__ = ["SceneOutcome", "SceneTask", "TrackJob", "run_scenes"]


@dataclass(frozen=True, eq=False)
class SceneTask:
    """One scene to track.

    Args:
        key: ``(scene_id, first frame)`` (what an executor reports a dead worker's failure under).
        obj_ids: the objects the scene's tracks need.
        scene: the scene's plan (frames and starts).
        done: the frames an earlier run finished (skipped; the tracker restarts after them).
        written: the rows of those frames (for the restart).
        detections: the scene's detections by frame.
    """

    key: ImageKey
    obj_ids: tuple[int, ...]
    scene: SceneTracks
    done: frozenset[ImageKey] = frozenset()
    written: dict[ImageKey, list[ResultRow]] = field(default_factory=dict)
    detections: dict[ImageKey, list[Detection]] = field(default_factory=dict)


@dataclass(frozen=True)
class SceneOutcome:
    """What a scene gave: per tracked frame its rows (in frame order), the failures, and the run's counts
    (``done``, ``failed``, ``inst_fail``, ``lost``, ``recovered``, ``rows``)."""

    key: ImageKey
    images: tuple[tuple[ResultRow, ...], ...]
    failures: tuple[ItemFailure, ...]
    counts: tuple[int, int, int, int, int, int]
    seconds: float


class _Collect:
    """A stand-in for the run's writer inside a worker: it keeps what the scene would write."""

    def __init__(self, done: frozenset[ImageKey]) -> None:
        self.done = set(done)
        self.images: list[tuple[ResultRow, ...]] = []
        self.failures: list[ItemFailure] = []

    def write_image(self, rows: Sequence[ResultRow]) -> None:
        self.images.append(tuple(rows))

    def log_failure(self, failure: ItemFailure) -> None:
        self.failures.append(failure)


class _TrackWorker:
    """A worker's state: the dataset, the refiner and (made when a scene has detections) the estimator."""

    def __init__(self, spec: TrackSpec, refiner: Refiner | None) -> None:
        if spec.threads is not None:
            import torch

            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.dataset = BopDataset(spec.dataset, spec.split, models_dir=spec.models_dir)
        self.refiner = refiner if refiner is not None else make_refiner(spec.method, **spec.config)
        self.estimator: Any = None

    def preload(self, obj_ids: Sequence[int]) -> None:
        for o in obj_ids:
            self.dataset.object(o)

    def process(self, task: SceneTask) -> SceneOutcome:
        t0 = time.perf_counter()
        if task.detections and self.estimator is None:
            from meshpose.coarse.registry import make_estimator

            self.estimator = make_estimator(self.spec.estimator, **self.spec.estimator_config)
        sink = _Collect(task.done)
        run = _Run(self.spec, self.dataset, sink, self.refiner, self.estimator, task.detections)
        run.scene(task.scene, task.written, [len(task.scene.frames)], lambda key: None)
        counts = (run.done, run.failed, run.inst_fail, run.lost, run.recovered, run.rows)
        return SceneOutcome(task.key, tuple(sink.images), tuple(sink.failures), counts, time.perf_counter() - t0)


@dataclass(frozen=True)
class TrackJob:
    """The executor job of a tracking run (picklable: it travels to every worker)."""

    spec: TrackSpec
    threads: int | None = None

    def make_state(self, refiner: Refiner | None = None) -> _TrackWorker:
        spec = self.spec if self.threads is None else dataclasses.replace(self.spec, threads=self.threads)
        return _TrackWorker(spec, refiner)


def run_scenes(
    executor: Executor,
    spec: TrackSpec,
    scenes: Sequence[SceneTracks],
    writer: Any,
    written: dict[ImageKey, list[ResultRow]],
    detections: Mapping[ImageKey, Sequence[Detection]] | None,
    run: _Run,
    progress: Callable[[ImageKey], None],
) -> None:
    """Track the unfinished ``scenes`` on ``executor`` and write each one's frames when it comes back (counts go
    into ``run``, the driver's)."""
    dets = detections or {}
    tasks = []
    for sc in scenes:
        keys = [(sc.scene_id, im) for im in sc.frames]
        if all(k in writer.done for k in keys):
            continue
        tasks.append(
            SceneTask(
                key=keys[0],
                obj_ids=tuple(sorted({s.obj_id for s in sc.starts})),
                scene=sc,
                done=frozenset(k for k in keys if k in writer.done),
                written={k: written[k] for k in keys if k in written},
                detections={k: list(dets[k]) for k in keys if k in dets},
            )
        )
    by_key = {t.key: t for t in tasks}
    for outcome in executor.run(TrackJob(spec, spec.threads), tasks):  # type: ignore[arg-type]
        if isinstance(outcome, ImageOutcome):  # the worker died: the scene's frames are failures of this run
            task = by_key[outcome.key]
            for f in outcome.failures:
                for im in task.scene.frames:
                    if (task.scene.scene_id, im) not in task.done:
                        writer.log_failure(ItemFailure(task.scene.scene_id, im, None, None, f.code, f.message))
                        run.failed += 1
            continue
        for f in outcome.failures:
            writer.log_failure(f)
        for rows in outcome.images:
            writer.write_image(list(rows))
            progress(rows[0].image_key if rows else outcome.key)
        done, failed, inst_fail, lost, recovered, n_rows = outcome.counts
        run.done += done
        run.failed += failed
        run.inst_fail += inst_fail
        run.lost += lost
        run.recovered += recovered
        run.rows += n_rows
