"""The refiner seam: the protocol every pose-refinement method implements, and what the methods share.

Every method — learned or optimisation-based — takes an :class:`Observation`, the objects, and one initial
``cam_from_obj`` pose per object instance, and returns a :class:`RefineResult`, whose ``info.failure`` holds a
:class:`~meshpose.types.Failure` (code + message) per failed instance. The named presets and chains live in
:mod:`meshpose.refine.registry`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import roma
import torch

from meshpose.render.base import Renderer
from meshpose.types import Failure, FailureCode, ObjectModel, Observation, Pose, RefineInfo, RefineResult

__all__ = [
    "Failure",
    "FailureCode",
    "LazyRenderer",
    "Modality",
    "Refiner",
    "RefinerError",
    "StageTimer",
    "check_refine_inputs",
    "make_result",
    "stage_schedule",
]

Modality = Literal["rgb", "rgbd"]


class RefinerError(ValueError):
    """Inputs a refiner cannot work with (e.g. an RGB-D method given no depth); the message says which."""


@runtime_checkable
class Refiner(Protocol):
    """A pose-refinement method.

    Attributes:
        name: the preset name.
        modality: what it needs: ``"rgb"`` or ``"rgbd"`` (an ``rgbd`` refiner refuses an observation without
            depth).
    """

    name: str
    modality: Modality

    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        """Refine the poses of the ``N`` object instances seen in ``obs``.

        Args:
            obs: the image (and depth, for ``rgbd`` methods).
            objects: the ``N`` instances' object models (the same model may appear several times).
            init: ``(N,)`` initial ``cam_from_obj`` poses.
            iterations: outer iterations (``None``: the method's default).
            callback: called as ``callback(iteration, poses)`` after each outer iteration.

        Returns:
            The refined poses with scores, per-iteration history and diagnostics.
        """
        ...


def check_refine_inputs(
    obs: Observation, objects: Sequence[ObjectModel], init: Pose, modality: Modality, method: str
) -> Pose:
    """Validate the common inputs of ``Refiner.refine``; return ``init`` as an ``(N,)`` float64 batch.

    Raises:
        RefinerError: no objects, a pose count that does not match, NaNs, a non-rotation, a pose behind the
            camera, or an ``rgbd`` method without depth.
    """
    if len(objects) == 0:
        raise RefinerError(f"{method}: no objects to refine")
    poses = init.reshape(-1) if len(init.batch_shape) <= 1 else init
    if len(poses.batch_shape) != 1 or len(poses) != len(objects):
        raise RefinerError(f"{method}: got {len(objects)} objects but init poses of shape {tuple(init.batch_shape)}")
    try:
        # Real annotations and other tools' results hold rotations orthonormal to ~1e-3 only: accept up to 1e-2
        # and project them onto SO(3); reject anything worse as not a rotation.
        poses.check("initial pose", in_front=True, atol=1e-2)
    except ValueError as exc:
        raise RefinerError(f"{method}: {exc}") from exc
    R = poses.R.to(torch.float64)
    off = (R @ R.transpose(-1, -2) - torch.eye(3, dtype=torch.float64)).abs().amax(dim=(-1, -2)) > 1e-9
    if bool(off.any()):
        R = torch.where(off[:, None, None], roma.special_procrustes(R), R)
    poses = Pose(R, poses.t.to(torch.float64))
    if modality == "rgbd" and obs.depth is None:
        raise RefinerError(f"{method} needs depth, but the observation has none")
    if obs.mask is not None and len(obs.mask) != len(objects):
        raise RefinerError(f"{method}: observation has {len(obs.mask)} masks for {len(objects)} objects")
    return poses


class LazyRenderer:
    """Mixin of refiners: ``self.renderer`` is the renderer given at construction (``self._renderer``) or, from
    the first use on, the process's shared GL renderer (so that building a refiner opens no GL context)."""

    _renderer: Renderer | None = None

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            from meshpose.render.gl import get_default_renderer

            self._renderer = get_default_renderer()
        return self._renderer


_Stage_T = TypeVar("_Stage_T")


def stage_schedule(
    stages: Sequence[_Stage_T], iterations: int | None, per_stage: Callable[[_Stage_T], int]
) -> list[_Stage_T]:
    """The stage of every outer iteration of a coarse-to-fine cascade.

    Args:
        stages: the cascade, coarse to fine.
        iterations: ``None`` runs ``per_stage(s)`` iterations of each stage; ``n < len(stages)`` runs one iteration
            of each of the last ``n`` (finest) stages; otherwise one of each and the rest on the finest.
        per_stage: the default iteration count of a stage.

    Example:
        >>> stage_schedule(["coarse", "fine"], 4, len)
        ['coarse', 'fine', 'fine', 'fine']
        >>> stage_schedule(["coarse", "fine"], None, lambda s: 2)
        ['coarse', 'coarse', 'fine', 'fine']
    """
    stages = list(stages)
    if iterations is None:
        return [s for s in stages for _ in range(per_stage(s))]
    if iterations <= 0:
        return []
    if iterations < len(stages):
        return stages[-iterations:]
    counts = [1] * len(stages)
    counts[-1] += iterations - len(stages)
    return [s for s, c in zip(stages, counts, strict=True) for _ in range(c)]


def level_schedule(base: Sequence[int], iterations: int | None, name: str) -> list[tuple[int, int]]:
    """``(level, iterations)`` pairs of a coarse-to-fine optimiser, levels without iterations left out.

    Args:
        base: the configured iterations per level.
        iterations: ``None`` keeps them; a total ``n`` is shared out in their proportions, the rounding remainder
            going to the finest level.
        name: the refiner's name (for messages).

    Raises:
        RefinerError: ``iterations < 0``.

    Example:
        >>> level_schedule([8, 8], None, "x"), level_schedule([8, 8], 5, "x"), level_schedule([8, 8], 1, "x")
        ([(0, 8), (1, 8)], [(0, 2), (1, 3)], [(1, 1)])
    """
    counts = [int(k) for k in base]
    if iterations is not None:
        total = int(iterations)
        if total < 0:
            raise RefinerError(f"{name}: iterations must be ≥ 0, got {iterations}")
        s = max(1, sum(counts))
        counts = [math.floor(b * total / s) for b in counts]
        counts[-1] += total - sum(counts)
    return [(lv, c) for lv, c in enumerate(counts) if c > 0]


@dataclass
class StageTimer:
    """Accumulates wall time per named stage: ``with timer("render"): ...``."""

    totals: dict[str, float]

    def __init__(self) -> None:
        self.totals = {}
        self._t0 = time.perf_counter()

    def __call__(self, stage: str) -> _Stage:
        return _Stage(self, stage)

    def result(self) -> dict[str, float]:
        out = dict(self.totals)
        out["total"] = time.perf_counter() - self._t0
        return out


class _Stage:
    def __init__(self, timer: StageTimer, stage: str) -> None:
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.totals[self.stage] = self.timer.totals.get(self.stage, 0.0) + time.perf_counter() - self.t


def make_result(
    history: list[Pose],
    score: np.ndarray,
    *,
    timer: StageTimer,
    converged: np.ndarray,
    failure: list[Failure | None],
    extra: dict[str, Any] | None = None,
    pose: Pose | None = None,
) -> RefineResult:
    """Assemble a :class:`RefineResult`; its pose is ``pose`` (e.g. the best visited) or ``history[-1]``."""
    return RefineResult(
        pose=history[-1] if pose is None else pose,
        score=np.asarray(score, dtype=np.float64),
        history=history,
        info=RefineInfo(
            timings=timer.result(),
            converged=np.asarray(converged, dtype=bool),
            failure=list(failure),
            iterations=len(history) - 1,
            extra=extra or {},
        ),
    )
