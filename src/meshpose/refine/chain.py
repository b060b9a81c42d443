"""Refiners run one after the other: ``--method genflow+contour`` refines with ``genflow``, then with ``contour``.

Why chains: the presets fail in different ways. A learned flow refiner has a wide basin (it pulls a 30° error in)
but its fixed point on real photos can sit a few degrees off the true pose, since its features were learned on
synthetic images; an optimisation on silhouettes and edges (``contour``) or on depth (``icp``) has a narrow basin
but a precise fixed point where its model of the image holds. Run in that order, the second starts inside its
basin. A chain is a :class:`~meshpose.refine.base.Refiner` like any preset, so every benchmark and the CLI take it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meshpose.refine.base import Modality, Refiner, StageTimer, check_refine_inputs, make_result
from meshpose.types import Failure, ObjectModel, Observation, Pose, RefineResult

__all__ = ["ChainRefiner"]


class ChainRefiner:
    """Runs its members in order, each from the pose the previous one returned.

    Args:
        members: the refiners, first to last (at least two).

    A chain is built by name: ``make_refiner("genflow+contour")``, with each member's options under its name:
    ``make_refiner("genflow+contour", genflow={"weights": "run/model.pt"}, contour={"iterations": [3, 3]})``.

    The modality is ``rgbd`` if any member needs depth. ``iterations`` is the first member's, in its own units
    (outer iterations of ``genflow``, renders of ``contour``); the later members run their configured schedules
    (set them per member). ``history`` is the initial poses followed by every member's iterations; score,
    convergence and failures are the last member's, except that an earlier member's failure is kept where the last
    member reports none; a failure keeps its code and its message is prefixed with the member's name.
    ``info.timings`` holds each member's timings under ``NAME.STAGE``, ``info.extra["members"]`` each member's
    ``extra``.
    """

    def __init__(self, members: Sequence[Refiner]) -> None:
        if len(members) < 2:
            raise ValueError(f"a chain needs at least two refiners, got {len(members)}")
        self.members = list(members)
        self.name = "+".join(m.name for m in self.members)
        self.modality: Modality = "rgbd" if any(m.modality == "rgbd" for m in self.members) else "rgb"

    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        poses = check_refine_inputs(obs, objects, init, self.modality, self.name)
        timer = StageTimer()
        history = [poses]
        failures: list[Failure | None] = [None] * len(objects)
        extras = {}
        last: RefineResult | None = None
        current = poses
        for k, member in enumerate(self.members):
            relay = None if callback is None else _shifted(callback, len(history) - 1)
            last = member.refine(obs, objects, current, iterations=iterations if k == 0 else None, callback=relay)
            history.extend(last.history[1:])
            current = last.pose  # the member's answer (e.g. its best visited pose), not its last iterate
            for stage, seconds in last.info.timings.items():
                timer.totals[f"{member.name}.{stage}"] = seconds
            extras[member.name] = last.info.extra
            failures = [
                mine.with_prefix(member.name) if mine is not None else prev
                for prev, mine in zip(failures, last.info.failure, strict=True)
            ]
        assert last is not None
        return make_result(
            history,
            last.score,
            timer=timer,
            converged=last.info.converged,
            failure=failures,
            extra={"members": extras},
            pose=last.pose,
        )


def _shifted(callback: Callable[[int, Pose], None], offset: int) -> Callable[[int, Pose], None]:
    """``callback`` with a member's iteration numbers continued after the ``offset`` iterations before it."""
    return lambda i, p: callback(offset + i, p)
