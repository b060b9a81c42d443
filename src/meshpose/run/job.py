"""The per-image job of a batch run: what to run (:class:`JobSpec`), one image's work (:class:`ImageTask`), what
came out (:class:`ImageOutcome`), and the worker state that turns one into the other (:class:`WorkerState`).

Everything here is picklable and free of process-wide state, so one executor runs it in the calling process and
another ships it to Ray actors on other machines; both give the same rows for the same task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshpose.io.bop import BopDataset
from meshpose.io.results import ResultRow
from meshpose.refine.base import Refiner, RefinerError
from meshpose.refine.registry import make_refiner
from meshpose.types import ObjectModel, Pose

__all__ = [
    "ImageKey",
    "ImageOutcome",
    "ImageTask",
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
MESH_UNREADABLE = "mesh_unreadable"
IMAGE_FAILED = "image_failed"
REFINER_FAILURE = "refiner_failure"
WORKER_DIED = "worker_died"


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


@dataclass(frozen=True)
class ItemFailure:
    """One failed item of a run, as the failures log records it.

    Args:
        scene_id: BOP scene id.
        im_id: BOP image id.
        obj_id: the object, ``None`` when the whole image failed.
        instance: the instance of ``obj_id`` in the image's initial poses (0 = its first row), ``None`` for an
            image.
        code: a short machine-readable code (``"bad_init"``, ``"image_failed"``, or the refiner's own).
        message: what went wrong, for people.
        row_written: whether the results hold a row for the item anyway (a refiner failure keeps its best pose).
    """

    scene_id: int
    im_id: int
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


def plan_tasks(dataset: BopDataset, inits: Iterable[ResultRow]) -> tuple[list[ImageTask], list[ItemFailure]]:
    """Group initial poses by image and set aside the rows no method can work with.

    A row whose object has no mesh in the dataset, or whose pose is not a rotation (beyond the 1e-2 that real
    annotations need) or puts the object behind the camera, becomes an :class:`ItemFailure`; the other rows of its
    image are refined as usual. The check is deterministic, so a resumed run plans the same tasks.

    Returns:
        The images to refine (first-seen order, images without any valid row left out) and the rejected rows.
    """
    by_image: dict[ImageKey, list[ResultRow]] = {}
    for r in inits:
        by_image.setdefault(r.image_key, []).append(r)
    known: dict[int, str | None] = {}
    tasks: list[ImageTask] = []
    failures: list[ItemFailure] = []
    for key, rows in by_image.items():
        seen: dict[int, int] = {}
        keep: list[ResultRow] = []
        instances: list[int] = []
        for r in rows:
            inst = seen.get(r.obj_id, 0)
            seen[r.obj_id] = inst + 1
            if r.obj_id not in known:
                try:
                    dataset.model_path(r.obj_id)
                    known[r.obj_id] = None
                except ValueError as exc:
                    known[r.obj_id] = str(exc)
            problem = known[r.obj_id]
            code = UNKNOWN_OBJECT
            if problem is None:
                code = BAD_INIT
                try:
                    r.pose.check(f"initial pose of object {r.obj_id}", in_front=True, atol=1e-2)
                except ValueError as exc:
                    problem = str(exc)
            if problem is not None:
                failures.append(ItemFailure(key[0], key[1], r.obj_id, inst, code, problem))
                continue
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
    except (ValueError, OSError, RuntimeError) as exc:
        what = "refiner" if isinstance(exc, RefinerError) else type(exc).__name__
        log.warning("scene %d image %d failed: %s", scene_id, im_id, exc)
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


def object_ids_of(tasks: Sequence[ImageTask]) -> list[int]:
    """The objects the tasks need (to preload them)."""
    return sorted({r.obj_id for t in tasks for r in t.rows})
