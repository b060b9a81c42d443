"""A tracking run over a BOP dataset (``meshpose track``): each scene's frames in ``im_id`` order are a sequence.

Objects start from the initial poses of the first frame they appear in (an inits file whose rows of later frames
are ignored: the output of ``meshpose perturb`` works as it is), or — with detections and no initial pose of
theirs — from ``estimate`` (the estimator, then the refiner, best by score) on the first frame with a detection
of them. From there a :class:`~meshpose.track.Tracker` follows them frame by frame. Every frame gets one BOP row per
started object (``time``: the frame's wall time, loading included), written at once through the one
:class:`~meshpose.run.writer.RunWriter` (side file, lock, exact resume, failures log). A frame that goes badly for
an object (low score, refiner failure, out of the image, lost) still writes its row (the tracker's best guess)
and logs the reason; a frame that cannot be read (a missing image) is logged for every object and the tracks go
on from their predictions.

Resume: a re-run skips the finished frames and restores each scene's tracker from its last two written frames
(pose and velocity) before it goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshpose.coarse.base import Estimator
from meshpose.io.bop import BopDataset
from meshpose.io.results import InitsFile, ResultRow, read_results
from meshpose.refine.base import Refiner
from meshpose.refine.registry import make_refiner
from meshpose.run.estimate_job import EstimateSpec, EstimateTask, PackedDetection, process_estimate
from meshpose.run.executors import Executor
from meshpose.run.job import MALFORMED_ROW, ImageKey, InstanceKey, ItemFailure, instance_keys, plan_tasks
from meshpose.run.runner import RunSummary
from meshpose.run.writer import RunMeta, RunWriter, inits_checksum
from meshpose.track import Tracker, TrackerConfig, TrackResult
from meshpose.types import Detection, ObjectModel

__all__ = ["SceneTracks", "TrackSpec", "TrackStart", "TrackSummary", "plan_tracks", "track_dataset"]

log = logging.getLogger(__name__)

#: Failure code of an object whose start pose could not be estimated from its detections.
NO_START = "no_start_pose"


@dataclass(frozen=True)
class TrackSpec:
    """What a tracking run does.

    Args:
        dataset: BOP dataset folder.
        split: dataset split.
        method: refiner preset or chain (``--method``).
        config: refiner options (``--config``; with ``fast``, the fast options already merged in).
        fast: whether ``--fast`` was given (recorded in the side file).
        tracker: :class:`~meshpose.track.TrackerConfig` options.
        estimator: coarse estimator preset for starts and recovery from detections.
        estimator_config: its options.
        use_depth: give depth to RGB methods when the dataset has it.
        threads: torch CPU threads (``None``: torch's setting).
        models_dir: the folder of the meshes inside ``dataset``.
    """

    dataset: str
    split: str = "test"
    method: str = "contour"
    config: dict[str, Any] = field(default_factory=dict)
    fast: bool = False
    tracker: dict[str, Any] = field(default_factory=dict)
    estimator: str = "picopose"
    estimator_config: dict[str, Any] = field(default_factory=dict)
    use_depth: bool = True
    threads: int | None = None
    models_dir: str = "models"

    def tracker_config(self) -> TrackerConfig:
        """The :class:`~meshpose.track.TrackerConfig` of :attr:`tracker`."""
        return TrackerConfig.from_dict(self.tracker)


@dataclass(frozen=True)
class TrackStart:
    """Where one track starts: its object, the instance number among the scene's tracks of that object, the frame
    and the pose (``ResultRow`` of the inits or of the estimate)."""

    obj_id: int
    instance: int
    im_id: int
    row: ResultRow


@dataclass(frozen=True)
class SceneTracks:
    """One scene's sequence: its frames (``im_id`` order, from the first start on) and its tracks' starts (sorted by
    object and instance: the order of each frame's rows)."""

    scene_id: int
    frames: tuple[int, ...]
    starts: tuple[TrackStart, ...]

    def active(self, im_id: int) -> list[TrackStart]:
        """The tracks started at or before ``im_id``, in row order."""
        return [s for s in self.starts if s.im_id <= im_id]

    def expected(self) -> dict[ImageKey, list[InstanceKey]]:
        """The instance keys of each frame's finished rows."""
        out: dict[ImageKey, list[InstanceKey]] = {}
        for f in self.frames:
            act = self.active(f)
            if act:
                out[(self.scene_id, f)] = instance_keys(_frame_rows(self.scene_id, f, act))
        return out


@dataclass(frozen=True)
class TrackSummary(RunSummary):
    """What a tracking run did: :class:`~meshpose.run.runner.RunSummary` (images are frames; ``instance_failures``
    counts the rows of bad frames: low score, failure, lost, unreadable frame) and

    Args:
        tracks: tracks of the run (all scenes).
        lost_rows: rows of this run whose track was lost.
        recovered: recoveries in this run.
        rows_written: rows written in this run.
    """

    tracks: int = 0
    lost_rows: int = 0
    recovered: int = 0
    rows_written: int = 0


def _frame_rows(scene_id: int, im_id: int, starts: Sequence[TrackStart]) -> list[ResultRow]:
    return [ResultRow(scene_id, im_id, s.obj_id, 0.0, s.row.R, s.row.t) for s in starts]


def plan_tracks(
    dataset: BopDataset, starts: Sequence[ResultRow] | InitsFile
) -> tuple[list[SceneTracks], list[ItemFailure]]:
    """Each scene's sequence from start poses: per scene and object instance, the first frame with a row of it.

    Rows are checked as ``refine`` checks initial poses (:func:`~meshpose.run.job.plan_tasks`: malformed rows,
    unknown objects, broken meshes, implausible poses are set aside as failures). The ``k``-th row of an object
    in a frame is that object's instance ``k``; a row of an instance that started earlier is ignored.

    Returns:
        The scenes (sorted by id) and the rejected rows.
    """
    failures: list[ItemFailure] = []
    if isinstance(starts, InitsFile):
        failures += [ItemFailure(e.scene_id, e.im_id, e.obj_id, None, MALFORMED_ROW, str(e)) for e in starts.problems]
        rows = list(starts.rows)
    else:
        rows = list(starts)
    first: dict[tuple[int, int, int], ResultRow] = {}
    for r, key in sorted(zip(rows, instance_keys(rows), strict=True), key=lambda p: (p[1][0], p[1][1])):
        k = (key[0], key[2], key[3])
        if k not in first:
            first[k] = r
    chosen = list(first.items())
    # plan_tasks numbers a row by its index among the same image's rows of its object in the list it gets: map
    # that back to the instance in the scene.
    original = {
        (*pk[:3], pk[3]): k[2] for (k, _), pk in zip(chosen, instance_keys([r for _, r in chosen]), strict=True)
    }
    tasks, rejected = plan_tasks(dataset, [r for _, r in chosen])
    failures += rejected
    by_scene: dict[int, list[TrackStart]] = {}
    for task in tasks:
        for r, i in zip(task.rows, task.instances, strict=True):
            inst = original[(task.key[0], task.key[1], r.obj_id, i)]
            by_scene.setdefault(task.key[0], []).append(TrackStart(r.obj_id, inst, r.im_id, r))
    scenes = []
    for scene_id in sorted(by_scene):
        ss = sorted(by_scene[scene_id], key=lambda s: (s.obj_id, s.instance))
        first_frame = min(s.im_id for s in ss)
        frames = tuple(i for i in dataset.image_ids(scene_id) if i >= first_frame)
        scenes.append(SceneTracks(scene_id, frames, tuple(ss)))
    return scenes, failures


def _file_sha256(path: str | Path | None) -> str:
    if path is None:
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Run:
    """The state of one tracking run: the dataset, the tracker, the writer and the counts."""

    def __init__(
        self,
        spec: TrackSpec,
        dataset: BopDataset,
        writer: RunWriter | Any,
        refiner: Refiner,
        estimator: Estimator | None,
        detections: Mapping[ImageKey, Sequence[Detection]] | None,
    ) -> None:
        self.spec, self.dataset, self.writer = spec, dataset, writer
        self.detections = detections or {}
        self.tracker = Tracker(refiner, estimator=estimator, config=spec.tracker_config())
        self.with_depth = refiner.modality == "rgbd" or spec.use_depth
        self.done = self.failed = self.inst_fail = self.lost = self.recovered = self.rows = 0

    def model(self, obj_id: int) -> ObjectModel:
        return self.dataset.object(obj_id)

    def restore(self, scene: SceneTracks, written: dict[ImageKey, list[ResultRow]], frames: list[int]) -> None:
        """Restart the tracker from the last two written frames of ``scene`` before the next frame to do."""
        self.tracker.reset()
        if not frames:
            return
        last = frames[-1]
        prev = frames[-2] if len(frames) > 1 else None
        rows_last = written.get((scene.scene_id, last), [])
        act = scene.active(last)
        prev_rows = written.get((scene.scene_id, prev), []) if prev is not None else []
        prev_by = dict(zip(_keys_of(scene.active(prev)) if prev is not None else [], prev_rows, strict=False))
        for s, row in zip(act, rows_last, strict=False):
            p = prev_by.get((s.obj_id, s.instance))
            previous = (p.pose, float(prev)) if p is not None and prev is not None else None
            self.tracker.add(self.model(s.obj_id), row.pose, frame=float(last), previous=previous)
        log.info("scene %d: resumed after image %d (%d track(s))", scene.scene_id, last, len(act))

    def frame(self, scene: SceneTracks, im_id: int) -> None:
        """Track into one frame, write its rows and log its failures."""
        t0 = time.perf_counter()
        sid = scene.scene_id
        order = _keys_of(scene.active(im_id))
        have = self._track_keys
        for s in scene.active(im_id):  # tracks that start here: from their start pose, refined in this frame
            if (s.obj_id, s.instance) not in have:
                have[(s.obj_id, s.instance)] = self.tracker.add(self.model(s.obj_id), s.row.pose, frame=float(im_id))
        try:
            obs = self.dataset.observation(sid, im_id, with_depth=self.with_depth)
        except (ValueError, OSError) as exc:
            log.warning("scene %d image %d cannot be read: %s", sid, im_id, exc)
            results = self.tracker.skip(float(im_id), f"image cannot be read: {type(exc).__name__}: {exc}")
            self.failed += 1
        else:
            results = self.tracker.step(obs, self.detections.get((sid, im_id)), frame=float(im_id))
            self.done += 1
        by_id = {r.track_id: r for r in results}
        elapsed = time.perf_counter() - t0
        rows: list[ResultRow] = []
        for key in order:
            r = by_id[have[key]]
            rows.append(ResultRow.from_pose(sid, im_id, key[0], r.pose, r.score, elapsed))
            self._count(r)
            if r.code is not None:
                msg = f"track {r.status}: {r.message}"
                self.writer.log_failure(ItemFailure(sid, im_id, key[0], key[1], r.code, msg, row_written=True))
                self.inst_fail += 1
        self.writer.write_image(rows)
        self.rows += len(rows)

    def _count(self, r: TrackResult) -> None:
        self.lost += r.status == "lost"
        self.recovered += r.status == "recovered"

    def scene(
        self,
        scene: SceneTracks,
        written: dict[ImageKey, list[ResultRow]],
        budget: list[int],
        progress: Callable[[ImageKey], None],
    ) -> None:
        """Track one scene: skip its finished frames, restore the tracker, go on to its end (or the budget)."""
        self.tracker.reset()
        self._track_keys: dict[tuple[int, int], int] = {}
        done_frames: list[int] = []
        synced = True
        for im_id in scene.frames:
            key = (scene.scene_id, im_id)
            if key in self.writer.done:
                done_frames.append(im_id)
                synced = False
                continue
            if budget[0] <= 0:
                return
            if not synced:
                self.restore(scene, written, done_frames)
                self._track_keys = {k: i for i, k in enumerate(_keys_of(scene.active(done_frames[-1])))}
                synced = True
            self.frame(scene, im_id)
            budget[0] -= 1
            progress(key)


def _logged_failures(path: Path) -> set[tuple[Any, ...]]:
    """``(scene, image, object, code, message)`` of a failures log (so a resumed run logs a rejected start once)."""
    out: set[tuple[Any, ...]] = set()
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            out.add((rec.get("scene_id"), rec.get("im_id"), rec.get("obj_id"), rec["code"], rec["message"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line torn by a crash
    return out


def _keys_of(starts: Sequence[TrackStart]) -> list[tuple[int, int]]:
    return [(s.obj_id, s.instance) for s in starts]


def _starts_from_detections(
    spec: TrackSpec,
    dataset: BopDataset,
    detections: Mapping[ImageKey, Sequence[Detection]],
    have: set[tuple[int, int]],
    refiner: Refiner,
    estimator: Estimator | None,
) -> tuple[list[ResultRow], list[ItemFailure]]:
    """Start poses of the objects that have detections but no initial pose in a scene: ``estimate`` (the
    estimator, the refiner on each hypothesis, the best by score) on the first frame with a detection of the object
    that gives a pose; the best-scoring detection of that frame starts it."""
    est_spec = EstimateSpec(
        dataset=spec.dataset,
        split=spec.split,
        method=spec.estimator,
        config=spec.estimator_config,
        hypotheses=TrackerConfig.from_dict(spec.tracker).estimate_hypotheses,
        refine=spec.method,
        refine_config=spec.config,
        use_depth=spec.use_depth,
        models_dir=spec.models_dir,
    )
    state = est_spec.make_state(refiner)
    if estimator is not None:
        state.estimator = estimator
    rows: list[ResultRow] = []
    failures: list[ItemFailure] = []
    wanted: dict[tuple[int, int], list[ImageKey]] = {}
    for key in sorted(detections):
        for d in detections[key]:
            if (key[0], d.obj_id) not in have:
                wanted.setdefault((key[0], d.obj_id), []).append(key)
    for (scene_id, obj_id), keys in sorted(wanted.items()):
        reason = "no detection gave a pose"
        for key in sorted(set(keys)):
            dets = sorted((d for d in detections[key] if d.obj_id == obj_id), key=lambda d: -d.score)[:1]
            out = process_estimate(state, EstimateTask(key, tuple(PackedDetection.pack(d) for d in dets)))
            if out.rows:
                rows.append(out.rows[0])
                break
            reason = "; ".join(f.message for f in out.failures) or reason
        else:
            failures.append(ItemFailure(scene_id, None, obj_id, 0, NO_START, f"no start pose: {reason}"))
    return rows, failures


def track_dataset(
    spec: TrackSpec,
    inits: Sequence[ResultRow] | InitsFile | None,
    out_path: str | Path,
    *,
    detections: Mapping[ImageKey, Sequence[Detection]] | None = None,
    detections_path: str | Path | None = None,
    restart: bool = False,
    max_images: int | None = None,
    inits_path: str | Path | None = None,
    progress: Callable[[int, int, tuple[int, int]], None] | None = None,
    refiner: Refiner | None = None,
    estimator: Estimator | None = None,
    executor: Executor | None = None,
) -> TrackSummary:
    """Track objects through every scene of a dataset and write BOP results frame by frame.

    Args:
        spec: the job (dataset, refiner and its options, tracker options, estimator).
        inits: start poses (rows of the first frames; later rows of a started instance are ignored), or ``None``
            with ``detections``.
        out_path: results CSV.
        detections: 2D detections by image: start poses for the objects without initial poses, and recovery of
            lost tracks (with the estimator).
        detections_path: their file (its checksum goes into the side file).
        restart: start the results over instead of resuming them.
        max_images: process at most this many frames not yet finished.
        inits_path: the inits file (recorded; the results may not be this file).
        progress: called as ``progress(done, total, image_key)`` after each frame.
        refiner: a ready refiner instead of building ``spec.method``.
        estimator: a ready estimator instead of building ``spec.estimator`` (used only with detections).
        executor: where the scenes run (``None`` or serial: here, frame by frame; Ray: one scene per actor task,
            its frames written when the scene is done — :mod:`meshpose.run.track_job`). A sequence cannot be split,
            so the parallelism is over scenes.

    Raises:
        RunConfigError: the results file cannot be used (see :class:`~meshpose.run.writer.RunWriter`).
        ValueError: nothing to track, a negative ``max_images``, or a dataset that cannot be opened.
    """
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    parallel = executor is not None and executor.name != "serial"
    if parallel and max_images is not None:
        raise ValueError("--max-images works with the serial executor only (a scene is tracked as a whole)")
    if inits is None and detections is None:
        raise ValueError("tracking needs initial poses or detections to start from")
    t0 = time.perf_counter()
    if spec.threads is not None:
        import torch

        torch.set_num_threads(spec.threads)
    dataset = BopDataset(spec.dataset, spec.split, models_dir=spec.models_dir)
    refiner = refiner if refiner is not None else make_refiner(spec.method, **spec.config)
    init_rows = list(inits.rows if isinstance(inits, InitsFile) else inits or [])
    rejected: list[ItemFailure] = []
    if detections is not None:
        if estimator is None:
            from meshpose.coarse.registry import make_estimator

            estimator = make_estimator(spec.estimator, **spec.estimator_config)
        have = {(r.scene_id, r.obj_id) for r in init_rows}
        extra, rejected = _starts_from_detections(spec, dataset, detections, have, refiner, estimator)
        starts: Sequence[ResultRow] | InitsFile = (
            dataclasses.replace(inits, rows=(*inits.rows, *extra), lines=(*inits.lines, *([0] * len(extra))))
            if isinstance(inits, InitsFile)
            else [*init_rows, *extra]
        )
    else:
        starts = inits if inits is not None else []
    scenes, bad = plan_tracks(dataset, starts)
    rejected += bad
    if not scenes:
        raise ValueError("nothing to track: no valid start pose (see the failures log)")
    meta = RunMeta(
        method=f"track:{spec.method}",
        config={
            "refiner": spec.config,
            "fast": spec.fast,
            "tracker": spec.tracker_config().to_dict(),
            "estimator": spec.estimator if detections is not None else None,
            "estimator_config": spec.estimator_config,
            "detections_sha256": _file_sha256(detections_path),
        },
        iterations=None,
        use_depth=spec.use_depth,
        inits_sha256=inits_checksum(init_rows),
        inits=str(inits_path) if inits_path is not None else "",
        dataset=str(spec.dataset),
        split=spec.split,
    )
    expected: dict[ImageKey, list[InstanceKey]] = {}
    for s in scenes:
        expected.update(s.expected())
    with RunWriter(out_path, meta, expected, restart=restart, inits_path=inits_path) as writer:
        logged = _logged_failures(writer.failures.path)
        for f in rejected:
            if (f.scene_id, f.im_id, f.obj_id, f.code, f.message) not in logged:
                writer.log_failure(f)
        finished = [k for k in expected if k in writer.done]
        earlier = len(
            {k for k in writer.failures.recorded_instance_keys(row_written_only=True) if k[:2] in set(finished)}
        )
        written: dict[ImageKey, list[ResultRow]] = {}
        if finished and Path(out_path).is_file():
            for r in read_results(out_path, strict=False):
                written.setdefault(r.image_key, []).append(r)
        todo_total = len(expected) - len(finished)
        if max_images is not None:
            todo_total = min(todo_total, max_images)
        run = _Run(spec, dataset, writer, refiner, estimator, detections)
        budget = [todo_total]
        count = [0]

        def step_done(key: ImageKey) -> None:
            count[0] += 1
            if progress is not None:
                progress(count[0], todo_total, key)

        if parallel:
            assert executor is not None
            from meshpose.run.track_job import run_scenes

            run_scenes(executor, spec, scenes, writer, written, detections, run, step_done)
        else:
            for scene in scenes:
                run.scene(scene, written, budget, step_done)
                if budget[0] <= 0:
                    break
    return TrackSummary(
        images_done=run.done,
        images_skipped=len(finished),
        images_failed=run.failed,
        instance_failures=run.inst_fail + len(rejected),
        earlier_failures=earlier,
        images_total=len(expected),
        seconds=time.perf_counter() - t0,
        results_path=Path(out_path),
        failures_path=writer.failures.path,
        tracks=sum(len(s.starts) for s in scenes),
        lost_rows=run.lost,
        recovered=run.recovered,
        rows_written=run.rows,
    )
