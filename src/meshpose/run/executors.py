"""Executors: where the per-image jobs run. :class:`SerialExecutor` in the calling process, :class:`RayExecutor` on
Ray actors (one machine or a cluster).

Both yield each :class:`~meshpose.run.job.ImageOutcome` as soon as its image is finished, so the driver writes it
at once; neither writes anything itself. Ray is imported only when a :class:`RayExecutor` runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any, Protocol

from meshpose.refine.base import Refiner
from meshpose.run.job import (
    WORKER_DIED,
    ImageJob,
    ImageOutcome,
    ImageWorker,
    ItemFailure,
    object_ids_of,
)

__all__ = ["EXECUTORS", "Executor", "RayExecutor", "SerialExecutor", "make_executor"]

log = logging.getLogger(__name__)

#: Names of ``--executor``.
EXECUTORS = ("serial", "ray")


class Executor(Protocol):
    """Runs the per-image jobs of a run and yields their outcomes as they finish (in any order).

    A job is any :class:`~meshpose.run.job.ImageJob` (``refine``'s :class:`~meshpose.run.job.JobSpec`,
    ``estimate``'s :class:`~meshpose.run.estimate_job.EstimateSpec`); a task anything with ``key`` and ``obj_ids``
    that the job's worker state processes.
    """

    name: str

    def run(self, spec: ImageJob, tasks: Sequence[Any]) -> Generator[ImageOutcome, None, None]:
        """Process ``tasks``; closing the iterator early stops the work still queued."""
        ...

    def close(self) -> None:
        """Release workers (idempotent)."""
        ...


class _ContextMixin:
    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SerialExecutor(_ContextMixin):
    """Runs every image in the calling process, in order, with one worker state (``spec.make_state``).

    Args:
        refiner: a ready refiner to use instead of building the job's preset (e.g. a custom one).
    """

    name = "serial"

    def __init__(self, refiner: Refiner | None = None) -> None:
        self.refiner = refiner
        self._state: ImageWorker | None = None
        self._spec: ImageJob | None = None

    def run(self, spec: ImageJob, tasks: Sequence[Any]) -> Generator[ImageOutcome, None, None]:
        if not tasks:
            return
        if self._state is None or self._spec != spec:
            self._state = spec.make_state(self.refiner)
            self._spec = spec
            self._state.preload(object_ids_of(tasks))
        for task in tasks:
            yield self._state.process(task)

    def close(self) -> None:
        self._state = None
        self._spec = None


class _RayWorker:
    """The body of a Ray actor: one worker state (``spec.make_state()``), loaded once."""

    def __init__(self, spec: ImageJob, obj_ids: list[int]) -> None:
        self.state = spec.make_state()
        self.state.preload(obj_ids)

    def ready(self) -> bool:
        return True

    def process(self, task: Any) -> ImageOutcome:
        return self.state.process(task)


class RayExecutor(_ContextMixin):
    """Runs the images on ``workers`` Ray actors, each loading the dataset, meshes and refiner once.

    The driver keeps ``queue_depth`` images queued per actor (so none waits between images), takes results as they
    finish (``ray.wait``) and hands each on at once. An actor that dies fails its queued images (they are retried
    by the next run) and is replaced.

    Args:
        workers: number of actors.
        address: a running Ray cluster to join (``ray start --head`` prints it; ``"auto"`` finds a local one);
            ``None`` starts a local Ray with ``workers`` CPUs and shuts it down on :meth:`close`.
        cpus_per_worker: CPUs Ray reserves per actor; also the torch threads of each actor unless the job sets
            ``threads``.
        queue_depth: images queued per actor.
    """

    name = "ray"

    def __init__(
        self, workers: int = 2, *, address: str | None = None, cpus_per_worker: int = 1, queue_depth: int = 2
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if cpus_per_worker < 1 or queue_depth < 1:
            raise ValueError("cpus_per_worker and queue_depth must be >= 1")
        self.workers = workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.queue_depth = queue_depth
        self._started = False

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("--executor ray needs Ray: pip install 'meshpose[ray]'") from exc
        if not ray.is_initialized():
            if self.address:
                log.info("joining the Ray cluster at %s", self.address)
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except (ConnectionError, RuntimeError) as exc:
                    raise RuntimeError(
                        f"cannot join the Ray cluster at {self.address}: {exc} (is `ray start --head` running there? "
                        "A cluster with token authentication also needs its token here, in ~/.ray/auth_token, "
                        "and RAY_AUTH_MODE=token)"
                    ) from exc
            else:
                log.info("starting a local Ray with %d CPU(s)", self.workers * self.cpus_per_worker)
                ray.init(num_cpus=self.workers * self.cpus_per_worker, include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def run(self, spec: ImageJob, tasks: Sequence[Any]) -> Generator[ImageOutcome, None, None]:
        if not tasks:
            return
        ray = self._ray()
        if spec.threads is None:
            spec = dataclasses.replace(spec, threads=self.cpus_per_worker)  # type: ignore[type-var]  # a dataclass
        actor_cls = ray.remote(num_cpus=self.cpus_per_worker)(_RayWorker)
        obj_ids = object_ids_of(tasks)
        n = min(self.workers, len(tasks))
        actors = [actor_cls.remote(spec, obj_ids) for _ in range(n)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            for a in actors:
                ray.kill(a)
            raise RuntimeError(f"Ray workers could not start: {exc}") from exc
        queue = deque(tasks)
        pending: dict[Any, tuple[int, Any, Any]] = {}  # ref -> (slot, actor, task)
        replacements = 0

        def submit(slot: int) -> None:
            if queue:
                task = queue.popleft()
                pending[actors[slot].process.remote(task)] = (slot, actors[slot], task)

        try:
            for _ in range(self.queue_depth):
                for slot in range(n):
                    submit(slot)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                slot, actor, task = pending.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                except ray.exceptions.RayActorError as exc:
                    scene_id, im_id = task.key
                    fail = ItemFailure(scene_id, im_id, None, None, WORKER_DIED, f"Ray worker died: {exc}")
                    outcome = ImageOutcome(task.key, (), (fail,), 0.0)
                    if actors[slot] is actor:
                        replacements += 1
                        if replacements > 3 * n:
                            raise RuntimeError(f"Ray workers keep dying (last: {exc})") from exc
                        log.warning("a Ray worker died; starting another")
                        actors[slot] = actor_cls.remote(spec, obj_ids)
                yield outcome
                submit(slot)
        finally:
            for a in actors:
                ray.kill(a)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_executor(name: str, *, workers: int | None = None, address: str | None = None) -> Executor:
    """The executor named by ``--executor``.

    Raises:
        ValueError: an unknown name, or Ray options given to the serial executor.
    """
    if name == "serial":
        if workers not in (None, 1) or address:
            raise ValueError("--workers and --address need --executor ray")
        return SerialExecutor()
    if name == "ray":
        import os

        return RayExecutor(workers or os.cpu_count() or 1, address=address or None)
    raise ValueError(f"unknown executor '{name}'; choose from {', '.join(EXECUTORS)}")
