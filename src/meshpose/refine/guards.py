"""The guard every refiner puts on a pose update: finite, in front of the camera, and not implausibly large.

A refiner proposes a new pose per instance in each outer iteration (a network's answer, a PnP or ICP solution, a
Gauss-Newton step); :func:`guard_update` measures the step and says whether to take it, with a
:class:`~meshpose.types.Failure` when not. The limits are each preset's own (its config); the checks and their
order are the same everywhere:

1. a pose with a non-finite entry is rejected (``NUMERICAL``);
2. a pose that puts the pivot point (the object origin, or a point of the method's choosing) at or behind the
   camera plane is rejected (``BEHIND_CAMERA``);
3. a step that turns the object by more than ``max_rot_deg`` or moves the pivot by more than
   ``max_trans_frac × diameter`` is rejected (``IMPLAUSIBLE_UPDATE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from meshpose.geometry.crop import object_box
from meshpose.geometry.lie import rotation_angle
from meshpose.types import Camera, Failure, FailureCode, Pose

__all__ = ["StepCheck", "check_step", "guard_update", "in_image_failure", "initial_pose_failure", "usable_update"]


@dataclass(frozen=True)
class StepCheck:
    """The size of a pose update and the verdict on it.

    Args:
        rot_deg: rotation of the update (angle of ``R_oldᵀ R_new``), degrees (NaN for a non-finite pose).
        trans_m: displacement of the pivot point, metres (NaN for a non-finite pose).
        failure: ``None`` if the update may be taken, else why not.
    """

    rot_deg: float
    trans_m: float
    failure: Failure | None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _f64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x.to(torch.float64) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))


def guard_update(
    R_old: torch.Tensor | np.ndarray,
    t_old: torch.Tensor | np.ndarray,
    R_new: torch.Tensor | np.ndarray,
    t_new: torch.Tensor | np.ndarray,
    *,
    diameter: float,
    max_rot_deg: float = math.inf,
    max_trans_frac: float = math.inf,
    pivot: np.ndarray | None = None,
) -> StepCheck:
    """Check one instance's update ``(R_old, t_old) → (R_new, t_new)`` (``cam_from_obj``, metres).

    Args:
        R_old: ``(3, 3)`` current rotation.
        t_old: ``(3,)`` current translation, metres.
        R_new: ``(3, 3)`` proposed rotation.
        t_new: ``(3,)`` proposed translation, metres.
        diameter: the object's diameter, metres.
        max_rot_deg: largest rotation of one update, degrees (``inf``: no limit).
        max_trans_frac: largest displacement of the pivot in one update, fraction of the diameter.
        pivot: ``(3,)`` object-frame point whose displacement is measured and which must stay in front of the
            camera (default: the object origin, i.e. the displacement is ``|t_new - t_old|``).

    Returns:
        The step's size and the verdict (checks in the order of the module docstring).

    Example:
        >>> import numpy as np
        >>> check = guard_update(np.eye(3), [0, 0, 0.5], np.eye(3), [0.1, 0, 0.5], diameter=0.1, max_trans_frac=0.5)
        >>> check.failure.code.name, round(check.trans_m, 3)
        ('IMPLAUSIBLE_UPDATE', 0.1)
    """
    Ro, to, Rn, tn = _f64(R_old), _f64(t_old), _f64(R_new), _f64(t_new)
    if not bool(torch.isfinite(Rn).all() and torch.isfinite(tn).all()):
        return StepCheck(
            math.nan, math.nan, Failure(FailureCode.NUMERICAL, "update rejected: the new pose is not finite")
        )
    if pivot is None:
        z_new = float(tn[2])
        step = tn - to
    else:
        p = _f64(pivot)
        new = Rn @ p + tn
        z_new = float(new[2])
        step = new - (Ro @ p + to)
    rot_deg = math.degrees(float(rotation_angle(Ro, Rn)))
    trans_m = float(step.norm())
    if z_new <= 0:
        failure = Failure(FailureCode.BEHIND_CAMERA, "update rejected: it puts the object behind the camera")
        return StepCheck(rot_deg, trans_m, failure)
    if rot_deg > max_rot_deg or trans_m > max_trans_frac * diameter:
        msg = f"implausible update rejected ({rot_deg:.1f}°, {trans_m * 1e3:.1f} mm)"
        return StepCheck(rot_deg, trans_m, Failure(FailureCode.IMPLAUSIBLE_UPDATE, msg))
    return StepCheck(rot_deg, trans_m, None)


def usable_update(R_new: np.ndarray, t_new: np.ndarray, pivot: np.ndarray | None = None) -> bool:
    """The verdict of :func:`guard_update` without step limits, in plain numpy for per-iteration loops: the new
    pose ``(3, 3)``, ``(3,)`` (metres) is finite and puts ``pivot`` (object frame, default the origin) in front of
    the camera."""
    if not (np.isfinite(R_new).all() and np.isfinite(t_new).all()):
        return False
    z = float(t_new[2]) if pivot is None else float(R_new[2] @ pivot + t_new[2])
    return z > 0


def in_image_failure(silhouette: np.ndarray, valid: np.ndarray, min_in_image: float) -> Failure | None:
    """``OUTSIDE_IMAGE`` when less than ``min_in_image`` of a rendered silhouette lies inside the observed image.

    Args:
        silhouette: ``(S, S)`` bool, the object rendered at the current pose into the crop.
        valid: ``(S, S)`` bool, crop pixels that lie inside the observed image.
        min_in_image: smallest fraction of the silhouette that must be inside, in [0, 1].

    Returns:
        ``None`` if enough of the object is inside the image, else the failure.

    Example:
        >>> sil = np.ones((4, 4), bool); valid = np.zeros((4, 4), bool); valid[:, :1] = True
        >>> in_image_failure(sil, valid, 0.5).code.name, in_image_failure(sil, valid, 0.2)
        ('OUTSIDE_IMAGE', None)
    """
    seen = float((silhouette & valid).sum()) / max(float(silhouette.sum()), 1.0)
    if seen >= min_in_image:
        return None
    msg = f"the object is not in the image at this pose ({100 * seen:.0f}% of it inside)"
    return Failure(FailureCode.OUTSIDE_IMAGE, msg)


def initial_pose_failure(camera: Camera, pose: Pose, points: np.ndarray) -> Failure | None:
    """Why an object cannot be refined from its initial pose, or ``None``: it crosses the camera plane
    (``BEHIND_CAMERA``) or its points project entirely outside the image (``OUTSIDE_IMAGE``).

    Args:
        camera: the observation's camera.
        pose: a single ``cam_from_obj`` pose.
        points: ``(P, 3)`` the object's surface points, metres.
    """
    try:
        x0, y0, x1, y1 = object_box(camera, pose, points)
    except ValueError:
        return Failure(FailureCode.BEHIND_CAMERA, "object crosses the camera plane at the initial pose")
    if x1 < -0.5 or y1 < -0.5 or x0 > camera.width - 0.5 or y0 > camera.height - 0.5:
        return Failure(FailureCode.OUTSIDE_IMAGE, "object projects outside the image at the initial pose")
    return None


def check_step(
    silhouette: np.ndarray,
    valid: np.ndarray,
    min_in_image: float,
    R_old: torch.Tensor | np.ndarray,
    t_old: torch.Tensor | np.ndarray,
    R_new: torch.Tensor | np.ndarray,
    t_new: torch.Tensor | np.ndarray,
    *,
    diameter: float,
    max_rot_deg: float,
    max_trans_frac: float,
) -> Failure | None:
    """The per-instance check of a network refiner's iteration: the object is in the image at its current pose
    (:func:`in_image_failure` on its rendered silhouette), and the proposed update passes :func:`guard_update`.

    Returns:
        ``None`` when the update may be taken, else why not.
    """
    outside = in_image_failure(silhouette, valid, min_in_image)
    if outside is not None:
        return outside
    check = guard_update(
        R_old, t_old, R_new, t_new, diameter=diameter, max_rot_deg=max_rot_deg, max_trans_frac=max_trans_frac
    )
    return check.failure
