"""The per-image job of a batch run: what to run (:class:`JobSpec`), one image's work (:class:`ImageTask`), what
came out (:class:`ImageOutcome`), and the worker state that turns one into the other (:class:`WorkerState`).

Everything here is picklable and free of process-wide state, so one executor runs it in the calling process and
another ships it to Ray actors on other machines; both give the same rows for the same task.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshpose.errors import InputError
from meshpose.io.bop import BopDataset
from meshpose.io.results import InitsFile, ResultRow, ResultsFormatError, check_init_row, format_results_line
from meshpose.refine.base import Refiner, RefinerError
from meshpose.refine.registry import make_refiner
from meshpose.types import ObjectModel, Pose

__all__ = [
    "ImageJob",
    "ImageKey",
    "ImageOutcome",
    "ImageTask",
    "ImageWorker",
    "InstanceKey",
    "ItemFailure",
    "JobSpec",
    "WorkerState",
    "failure_code_and_message",
    "instance_keys",
    "object_ids_of",
    "plan_tasks",
    "process_image",
]

log = logging.getLogger(__name__)

#: ``(scene_id, im_id)``.
ImageKey = tuple[int, int]
#: ``(scene_id, im_id, obj_id, instance)``: ``instance`` counts the rows of one object in one image, from 0.
InstanceKey = tuple[int, int, int, int]

#: Failure codes the runner itself gives (a refiner's own codes pass through unchanged).
UNKNOWN_OBJECT = "unknown_object"
BAD_INIT = "bad_init"
MALFORMED_ROW = "malformed_row"
DUPLICATE_INIT = "duplicate_init"
MESH_UNREADABLE = "mesh_unreadable"
IMAGE_FAILED = "image_failed"
REFINER_FAILURE = "refiner_failure"
WORKER_DIED = "worker_died"


class ImageWorker(Protocol):
    """What a worker holds once and runs every image with (:class:`WorkerState` for ``refine``,
    :class:`~meshpose.run.estimate_job.EstimateWorkerState` for ``estimate``)."""

    def preload(self, obj_ids: Iterable[int]) -> None:
        """Load the object models of ``obj_ids`` now."""
        ...

    def process(self, task: Any) -> ImageOutcome:
        """Run one image's task."""
        ...


class ImageJob(Protocol):
    """What an executor runs (:class:`JobSpec`, :class:`~meshpose.run.estimate_job.EstimateSpec`): picklable, with
    the torch threads of each worker and the worker state it needs."""

    @property
    def threads(self) -> int | None: ...

    def make_state(self, refiner: Refiner | None = None) -> ImageWorker:
        """The worker state of this job (each worker builds it once)."""
        ...


@dataclass(frozen=True)
class JobSpec:
    """What a batch run does to every image; small and picklable (it travels to every worker).

    Args:
        dataset: BOP dataset folder (every worker opens it itself: on a cluster, a path all machines see).
        split: dataset split.
        method: refiner preset (``meshpose refine --method``), chains ``a+b`` included.
        config: refiner option overrides (``--config``), as :func:`~meshpose.refine.registry.make_refiner` takes them.
        iterations: outer iterations (``None``: the method's default).
        use_depth: give depth to RGB methods when the dataset has it (an ``rgbd`` method always gets it).
        threads: torch CPU threads of each worker (``None``: leave torch's setting).
        models_dir: the folder of the meshes inside ``dataset``.
    """

    dataset: str
    split: str = "test"
    method: str = "flow-pnp"
    config: dict[str, Any] = field(default_factory=dict)
    iterations: int | None = None
    use_depth: bool = True
    threads: int | None = None
    models_dir: str = "models"

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def make_state(self, refiner: Refiner | None = None) -> WorkerState:
        """The :class:`WorkerState` of this job (``refiner``: a ready one instead of building :attr:`method`)."""
        return WorkerState(self, refiner)


@dataclass(frozen=True)
class ItemFailure:
    """One failed item of a run, as the failures log records it.

    Args:
        scene_id: BOP scene id (``None`` for an inits row too malformed to tell).
        im_id: BOP image id (likewise).
        obj_id: the object, ``None`` when the whole image failed (or a malformed row does not tell).
        instance: the instance of ``obj_id`` in the image's initial poses (0 = its first row), ``None`` for an
            image.
        code: a short machine-readable code (``"bad_init"``, ``"malformed_row"``, ``"image_failed"``, or the
            refiner's own).
        message: what went wrong, for people (a rejected inits row: its ``file:line`` first).
        row_written: whether the results hold a row for the item anyway (a refiner failure keeps its best pose).
    """

    scene_id: int | None
    im_id: int | None
    obj_id: int | None
    instance: int | None
    code: str
    message: str
    row_written: bool = False


@dataclass(frozen=True)
class ImageTask:
    """The rows of one image to refine.

    Args:
        key: ``(scene_id, im_id)``.
        rows: the image's valid initial poses, in inits order.
        instances: ``instance`` of each row (its index among the image's rows of the same object, invalid rows
            counted), so failures name the row the user wrote.
    """

    key: ImageKey
    rows: tuple[ResultRow, ...]
    instances: tuple[int, ...]

    @property
    def instance_keys(self) -> list[InstanceKey]:
        """The keys the results hold when this image is finished: instance ``k`` is the ``k``-th written row of
        an object in the image (the order :func:`process_image` writes them)."""
        return instance_keys(self.rows)

    @property
    def obj_ids(self) -> list[int]:
        """The objects of the task (sorted, each once)."""
        return sorted({r.obj_id for r in self.rows})


@dataclass(frozen=True)
class ImageOutcome:
    """What one image gave.

    Args:
        key: ``(scene_id, im_id)``.
        rows: the result rows to write (empty when the image failed).
        failures: the image's failures (one with ``obj_id=None`` when the whole image failed).
        seconds: wall time of the image.
    """

    key: ImageKey
    rows: tuple[ResultRow, ...]
    failures: tuple[ItemFailure, ...]
    seconds: float

    @property
    def image_failed(self) -> bool:
        return any(f.obj_id is None for f in self.failures)


def instance_keys(rows: Iterable[ResultRow]) -> list[InstanceKey]:
    """The ``(scene_id, im_id, obj_id, instance)`` of each row, ``instance`` counting the earlier rows of the same
    object in the same image.

    Example:
        >>> from meshpose.types import Pose
        >>> rows = [ResultRow.from_pose(1, 2, o, Pose.identity()) for o in (5, 6, 5)]
        >>> instance_keys(rows)
        [(1, 2, 5, 0), (1, 2, 6, 0), (1, 2, 5, 1)]
    """
    seen: dict[tuple[int, int, int], int] = {}
    out = []
    for r in rows:
        k3 = (r.scene_id, r.im_id, r.obj_id)
        k = seen.get(k3, 0)
        seen[k3] = k + 1
        out.append((*k3, k))
    return out


def failure_code_and_message(failure: Any) -> tuple[str, str]:
    """``(code, message)`` of a refiner's per-instance failure: a ``Failure(code, message)`` object, an enum
    code, or a plain reason string (code ``"refiner_failure"``)."""
    code = getattr(failure, "code", None)
    message = getattr(failure, "message", None)
    if code is None:
        return REFINER_FAILURE, str(failure)
    code = getattr(code, "value", code)
    return str(code), str(message if message is not None else failure)


def _object_problem(dataset: BopDataset, obj_id: int, check_meshes: bool) -> tuple[str, str] | None:
    """``(code, message)`` when ``obj_id`` has no usable mesh in ``dataset``, else ``None``."""
    try:
        path = dataset.model_path(obj_id)
    except ValueError as exc:
        return UNKNOWN_OBJECT, f"{exc} (ids there: {', '.join(map(str, dataset.object_ids))})"
    if check_meshes:
        from meshpose.mesh.load import load_mesh

        t0 = time.perf_counter()
        try:
            mesh = load_mesh(path, units=dataset.units)
        except (ValueError, OSError) as exc:
            log.warning("object %d: its mesh cannot be used, every instance of it fails: %s", obj_id, exc)
            return MESH_UNREADABLE, str(exc)
        log.info(
            "checked the mesh of object %d (%s, %d faces) in %.2f s",
            obj_id,
            path.name,
            len(mesh.faces),
            time.perf_counter() - t0,
        )
    return None


def plan_tasks(
    dataset: BopDataset, inits: Iterable[ResultRow] | InitsFile, *, check_meshes: bool = True
) -> tuple[list[ImageTask], list[ItemFailure]]:
    """Group initial poses by image and set aside the rows no method can work with, each as an
    :class:`ItemFailure` naming the row (``file:line`` when ``inits`` is an :class:`InitsFile`):

    * a malformed row of the file (:attr:`InitsFile.problems`): ``"malformed_row"``;
    * an object without a mesh in the dataset (``"unknown_object"``) or whose mesh cannot be read (empty,
      unreadable, NaN vertices: ``"mesh_unreadable"``, every instance of that object);
    * a pose that is not a rotation (beyond the repair :func:`~meshpose.io.results.check_init_row` makes), or
      that puts the object behind the camera or at a depth that betrays wrong units (``"bad_init"``);
    * an exact duplicate of an earlier row of the image (same object, ``R`` and ``t``): refined and written once,
      the copy logged (``"duplicate_init"``); refining both jointly would let them hide each other.

    The other rows of an image are refined as usual. Every rejected row counts in the instance numbers of its
    object (so failures name the row the user wrote). The check is deterministic, so a resumed run plans the same
    tasks.

    Args:
        dataset: the dataset (its meshes).
        inits: initial poses, or an inits file read by :func:`~meshpose.io.results.read_inits`.
        check_meshes: read each needed mesh once now, so that a broken one fails its instances here rather than
            in every image.

    Returns:
        The images to refine (first-seen order, images without any valid row left out) and the rejected rows.
    """
    entries: list[tuple[int | None, ResultRow | ResultsFormatError]]
    if isinstance(inits, InitsFile):
        entries = [(line, r) for line, r in zip(inits.lines, inits.rows, strict=True)]
        entries += [(e.line, e) for e in inits.problems]
        entries.sort(key=lambda e: e[0] or 0)
        source = str(inits.path)
    else:
        entries = [(None, r) for r in inits]
        source = ""
    failures: list[ItemFailure] = []
    by_image: dict[ImageKey, list[tuple[int | None, ResultRow | ResultsFormatError]]] = {}
    for line, e in entries:
        if isinstance(e, ResultsFormatError) and (e.scene_id is None or e.im_id is None):
            failures.append(ItemFailure(e.scene_id, e.im_id, None, None, MALFORMED_ROW, str(e)))
            continue
        key = (e.scene_id, e.im_id) if isinstance(e, ResultsFormatError) else e.image_key
        by_image.setdefault(key, []).append((line, e))  # type: ignore[arg-type]
    objects: dict[int, tuple[str, str] | None] = {}
    tasks: list[ImageTask] = []
    for key, items in by_image.items():
        seen: dict[int | None, int] = {}
        firsts: dict[tuple[int, str], str] = {}
        keep: list[ResultRow] = []
        instances: list[int] = []
        for line, e in items:
            inst: int | None = None
            if e.obj_id is not None:
                inst = seen.get(e.obj_id, 0)
                seen[e.obj_id] = inst + 1
            if isinstance(e, ResultsFormatError):
                failures.append(ItemFailure(key[0], key[1], e.obj_id, inst, MALFORMED_ROW, str(e)))
                continue
            assert inst is not None
            where = f"{source}:{line}" if line is not None else f"scene {key[0]} image {key[1]} object {e.obj_id}"
            if e.obj_id not in objects:
                objects[e.obj_id] = _object_problem(dataset, e.obj_id, check_meshes)
            problem = objects[e.obj_id]
            if problem is not None:
                failures.append(ItemFailure(key[0], key[1], e.obj_id, inst, problem[0], f"{where}: {problem[1]}"))
                continue
            try:
                r = check_init_row(e, where, path=source or None, line=line)
            except InputError as exc:
                failures.append(ItemFailure(key[0], key[1], e.obj_id, inst, BAD_INIT, str(exc)))
                continue
            pose_key = (r.obj_id, format_results_line(dataclasses.replace(r, score=0.0, time_s=-1.0)))
            if pose_key in firsts:
                msg = (
                    f"{where}: the same initial pose of object {r.obj_id} as {firsts[pose_key]} (scene {key[0]} "
                    f"image {key[1]}): refined and written once (refining both copies jointly would make them hide "
                    "each other)"
                )
                log.warning("%s", msg)
                failures.append(ItemFailure(key[0], key[1], r.obj_id, inst, DUPLICATE_INIT, msg))
                continue
            firsts[pose_key] = where
            keep.append(r)
            instances.append(inst)
        if keep:
            tasks.append(ImageTask(key, tuple(keep), tuple(instances)))
    return tasks, failures


class WorkerState:
    """What a worker loads once and keeps: the dataset, its object models, the refiner (and its weights).

    Args:
        spec: the job.
        refiner: a ready refiner to use instead of building ``spec.method`` (in-process runs only; e.g. a
            custom :class:`~meshpose.refine.base.Refiner` that is not a preset).
    """

    def __init__(self, spec: JobSpec, refiner: Refiner | None = None) -> None:
        self.spec = spec
        if spec.threads is not None:
            import torch

            torch.set_num_threads(spec.threads)
        self.dataset = BopDataset(spec.dataset, spec.split, models_dir=spec.models_dir)
        self.refiner = refiner if refiner is not None else make_refiner(spec.method, **spec.config)

    def preload(self, obj_ids: Iterable[int]) -> None:
        """Load the object models of ``obj_ids`` now (logging each), not at their first image. A mesh that cannot
        be read is left for :func:`process_image` to report."""
        ids = sorted(set(obj_ids))
        for n, obj_id in enumerate(ids, start=1):
            t0 = time.perf_counter()
            try:
                model = self.dataset.object(obj_id)
            except (ValueError, OSError) as exc:
                log.warning("object %d: cannot load its mesh: %s", obj_id, exc)
                continue
            log.info(
                "loaded mesh of object %d (%d/%d, %d faces) in %.1f s",
                obj_id,
                n,
                len(ids),
                len(model.mesh.faces),
                time.perf_counter() - t0,
            )

    def process(self, task: ImageTask) -> ImageOutcome:
        """:func:`process_image` with this state."""
        return process_image(self, task)


def process_image(state: WorkerState, task: ImageTask) -> ImageOutcome:
    """Refine all valid instances of one image in one ``refine`` call (multi-object methods refine them jointly).

    The rows come out in the task's order with ``time`` the wall time of the whole image (loading included). An
    instance whose mesh cannot be read is left out (and reported); a refiner's per-instance failure keeps its best
    pose in the results and is reported too. Bad input that stops the whole image (an unreadable image, an
    ``rgbd`` method without depth) gives no rows and one image failure.

    Args:
        state: the worker's loaded dataset and refiner.
        task: the image.

    Returns:
        The image's rows and failures.
    """
    t0 = time.perf_counter()
    scene_id, im_id = task.key
    spec = state.spec
    failures: list[ItemFailure] = []
    try:
        objects: list[ObjectModel] = []
        rows: list[ResultRow] = []
        instances: list[int] = []
        for r, inst in zip(task.rows, task.instances, strict=True):
            try:
                objects.append(state.dataset.object(r.obj_id))
            except (ValueError, OSError) as exc:
                failures.append(ItemFailure(scene_id, im_id, r.obj_id, inst, MESH_UNREADABLE, str(exc)))
                continue
            rows.append(r)
            instances.append(inst)
        if not rows:
            return ImageOutcome(task.key, (), tuple(failures), time.perf_counter() - t0)
        want_depth = state.refiner.modality == "rgbd" or spec.use_depth
        obs = state.dataset.observation(scene_id, im_id, with_depth=want_depth)
        init = Pose.stack([r.pose for r in rows])
        result = state.refiner.refine(obs, objects, init, iterations=spec.iterations)
    except Exception as exc:  # one image's problem never stops the run (Ctrl-C, a BaseException, does)
        what = "refiner" if isinstance(exc, RefinerError) else type(exc).__name__
        if isinstance(exc, ValueError | OSError | RuntimeError):
            log.warning("scene %d image %d failed: %s", scene_id, im_id, exc)
        else:  # not a bad input: a bug, whose traceback the log keeps
            log.error("scene %d image %d failed unexpectedly: %s: %s", scene_id, im_id, what, exc, exc_info=True)
        fail = ItemFailure(scene_id, im_id, None, None, IMAGE_FAILED, f"{what}: {exc}")
        return ImageOutcome(task.key, (), (*failures, fail), time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0
    out_rows = []
    for i, (r, inst) in enumerate(zip(rows, instances, strict=True)):
        reason = result.info.failure[i]
        if reason is not None:
            code, message = failure_code_and_message(reason)
            failures.append(ItemFailure(scene_id, im_id, r.obj_id, inst, code, message, row_written=True))
        out_rows.append(ResultRow.from_pose(scene_id, im_id, r.obj_id, result.pose[i], float(result.score[i]), elapsed))
    return ImageOutcome(task.key, tuple(out_rows), tuple(failures), elapsed)


def object_ids_of(tasks: Sequence[Any]) -> list[int]:
    """The objects the tasks need (to preload them); a task has ``obj_ids`` (:attr:`ImageTask.obj_ids`)."""
    return sorted({o for t in tasks for o in t.obj_ids})
