"""Results: pose hypotheses (:class:`PoseEstimate`), refinement results (:class:`RefineResult`) and the per-instance
failures a refiner reports (:class:`Failure`, :class:`FailureCode`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshpose.types.pose import Pose

__all__ = ["Failure", "FailureCode", "PoseEstimate", "RefineInfo", "RefineResult"]


class FailureCode(enum.Enum):
    """Why the refinement of one object instance failed (what programs match on; never the message text).

    Attributes:
        BEHIND_CAMERA: the object reaches to or behind the camera plane at the pose (no image box), or an
            update would put it there.
        OUTSIDE_IMAGE: the object projects (almost) entirely outside the image.
        NOT_VISIBLE: the object is in the image but too little of it is seen (hidden by other objects, or too
            few rendered pixels).
        NO_DEPTH: too few observed depth points where the object should be (an ``rgbd`` method).
        TOO_FEW_MATCHES: too few correspondences (flow matches, ICP correspondences) to solve for a pose.
        SOLVER_FAILED: the pose solver found no pose (e.g. PnP-RANSAC without a consensus).
        NUMERICAL: a numerical breakdown (non-finite values, a degenerate system).
        IMPLAUSIBLE_UPDATE: an update larger than the method's step limits was rejected.
        BAD_DETECTION: a coarse estimator's detection is unusable (a box off the image or of no area, an empty
            mask).
        UNKNOWN_OBJECT: a detection names an object whose model was not given.
    """

    BEHIND_CAMERA = "behind_camera"
    OUTSIDE_IMAGE = "outside_image"
    NOT_VISIBLE = "not_visible"
    NO_DEPTH = "no_depth"
    TOO_FEW_MATCHES = "too_few_matches"
    SOLVER_FAILED = "solver_failed"
    NUMERICAL = "numerical"
    IMPLAUSIBLE_UPDATE = "implausible_update"
    BAD_DETECTION = "bad_detection"
    UNKNOWN_OBJECT = "unknown_object"


@dataclass(frozen=True)
class Failure:
    """The failure of one object instance's refinement.

    Args:
        code: what went wrong, for programs (control flow, statistics).
        message: a short human-readable reason with the details (numbers, the stage), for logs.

    Example:
        >>> f = Failure(FailureCode.OUTSIDE_IMAGE, "the object is outside the image")
        >>> f.as_dict()
        {'code': 'outside_image', 'message': 'the object is outside the image'}
    """

    code: FailureCode
    message: str

    def as_dict(self) -> dict[str, str]:
        """``{"code": …, "message": …}`` (the code's value), e.g. for a JSON-lines failure log."""
        return {"code": self.code.value, "message": self.message}

    def with_prefix(self, prefix: str) -> Failure:
        """The same failure, its message prefixed (``"genflow: …"``, ``"iteration 2: …"``)."""
        return Failure(self.code, f"{prefix}: {self.message}")

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, eq=False)
class PoseEstimate:
    """One pose hypothesis for one object instance (what ``estimate`` produces and results files hold).

    Args:
        obj_id: object id.
        pose: a single (unbatched) ``cam_from_obj`` :class:`Pose`.
        score: confidence, higher is better (method-specific scale).
        time_s: wall time spent on the image this estimate belongs to, seconds.
        info: method-specific extras.
    """

    obj_id: int
    pose: Pose
    score: float
    time_s: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RefineInfo:
    """Diagnostics of a refinement call (one entry per object instance where it says so).

    Args:
        timings: wall time per stage in seconds, e.g. ``{"render": 0.02, "flow": 0.01, "total": 0.05}``.
        converged: ``(N,)`` bool, whether each instance met the method's convergence test.
        failure: ``N`` entries: ``None`` where the instance refined normally, else a :class:`Failure` (a
            :class:`FailureCode` for programs and a short message for people). The returned pose of a failed
            instance is its input pose, or the best pose found before the failure.
        iterations: outer iterations that ran.
        extra: method-specific values (per-iteration scores, inlier counts, …).
    """

    timings: dict[str, float]
    converged: np.ndarray
    failure: list[Failure | None]
    iterations: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RefineResult:
    """The outcome of ``Refiner.refine``.

    Args:
        pose: ``(N,)`` refined ``cam_from_obj`` poses, one per object instance, in the order of the input. A
            method that keeps the best pose it visited returns that one, which may differ from ``history[-1]``.
        score: ``(N,)`` float64 quality score per instance, higher is better (method-specific scale; 0 for a
            failure).
        history: the ``(N,)`` poses after each outer iteration, ``history[0]`` being the initial poses.
        info: timings, convergence and failures.
    """

    pose: Pose
    score: np.ndarray
    history: list[Pose]
    info: RefineInfo
