"""Batch runs over datasets (``meshpose refine``, later ``estimate`` and ``track``).

* :mod:`meshpose.run.job`: the picklable per-image job (:class:`JobSpec`, :class:`ImageTask`) and the worker state
  that loads the dataset, meshes and refiner once;
* :mod:`meshpose.run.executors`: :class:`SerialExecutor` and :class:`RayExecutor` (``--executor ray``);
* :mod:`meshpose.run.writer`: the one results writer (side file, lock, exact resume, failures log);
* :mod:`meshpose.run.runner`: :func:`refine_dataset`, which ties them together;
* :mod:`meshpose.run.progress`: progress as log lines when output is not a terminal.
"""

from meshpose.run.executors import EXECUTORS, Executor, RayExecutor, SerialExecutor, make_executor
from meshpose.run.job import ImageOutcome, ImageTask, ItemFailure, JobSpec, WorkerState, plan_tasks, process_image
from meshpose.run.progress import RateLogger
from meshpose.run.runner import EXIT_ITEMS_FAILED, RunSummary, refine_dataset
from meshpose.run.writer import (
    FailureLog,
    ResultsLockedError,
    RunConfigError,
    RunMeta,
    RunWriter,
    failures_path_for,
    meta_path_for,
)

__all__ = [
    "EXECUTORS",
    "EXIT_ITEMS_FAILED",
    "Executor",
    "FailureLog",
    "ImageOutcome",
    "ImageTask",
    "ItemFailure",
    "JobSpec",
    "RateLogger",
    "RayExecutor",
    "ResultsLockedError",
    "RunConfigError",
    "RunMeta",
    "RunSummary",
    "RunWriter",
    "SerialExecutor",
    "WorkerState",
    "failures_path_for",
    "make_executor",
    "meta_path_for",
    "plan_tasks",
    "process_image",
    "refine_dataset",
]
