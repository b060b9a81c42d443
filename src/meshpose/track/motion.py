"""The motion model of a track: constant velocity on se(3), with frame gaps respected.

Between two poses ``a`` (at time ``t_a``) and ``b`` (at ``t_b``) of one object, the velocity is the twist
``ξ = log(b · a⁻¹) / (t_b - t_a)`` (se(3) tangent ``[v, ω]``, left-multiplied, in the camera frame, per frame or per
second, whatever unit the times are in); the prediction ``gap`` later is ``exp(gap · ξ) · b``. The left twist of a
screw motion keeps its axis, so an object spinning about its own centre while it drifts is predicted exactly —
not only a camera-centred rotation. Times are BOP ``im_id`` values (a gap of 3 when two images were skipped) or
timestamps in seconds.

Damping multiplies the velocity by ``damping`` at every update: ``1`` is pure constant velocity, ``0`` predicts no
motion (the previous pose). Real hand-held motion changes direction, and a prediction that overshoots costs the
refiner more than one that falls short, so trackers damp it a little.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meshpose.types import Pose

__all__ = ["ConstantVelocity", "MotionConfig"]


@dataclass(frozen=True)
class MotionConfig:
    """Options of :class:`ConstantVelocity`.

    Args:
        damping: factor in ``[0, 1]`` applied to each new velocity estimate (1: undamped constant velocity).
        max_gap: a gap longer than this (in time units) predicts no motion: after a long break the last velocity
            says nothing about the motion.
        max_rotation_deg: the predicted rotation is clamped to this angle (a prediction of a wild spin from two
            noisy poses does more harm than good).
    """

    damping: float = 0.9
    max_gap: float = 30.0
    max_rotation_deg: float = 45.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.damping <= 1.0:
            raise ValueError(f"MotionConfig.damping must be in [0, 1], got {self.damping}")
        if not self.max_gap > 0:
            raise ValueError(f"MotionConfig.max_gap must be > 0, got {self.max_gap}")


class ConstantVelocity:
    """Constant-velocity prediction of one object's ``cam_from_obj`` pose.

    Args:
        config: options (default :class:`MotionConfig`).

    Example:
        >>> import torch
        >>> step = Pose.exp(torch.tensor([0.01, 0.0, 0.0, 0.0, 0.0, 0.05], dtype=torch.float64))
        >>> start = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64))
        >>> m = ConstantVelocity(MotionConfig(damping=1.0))
        >>> m.update(start, 0)
        >>> m.update(step @ start, 1)
        >>> want = step @ step @ step @ start          # two frames after the last pose
        >>> bool(torch.allclose(m.predict(3).matrix(), want.matrix()))
        True
    """

    def __init__(self, config: MotionConfig | None = None) -> None:
        self.config = config or MotionConfig()
        self.pose: Pose | None = None
        self.time: float | None = None
        self.velocity = torch.zeros(6, dtype=torch.float64)

    def reset(self, pose: Pose | None = None, time: float | None = None) -> None:
        """Forget the velocity; with ``pose``, start again from it at ``time``."""
        self.velocity = torch.zeros(6, dtype=torch.float64)
        self.pose = None if pose is None else pose.reshape().to(torch.float64)
        self.time = None if pose is None else time

    def update(self, pose: Pose, time: float | None) -> None:
        """Take the pose measured at ``time`` (a single pose; ``time`` ``None``: one unit after the last one).

        The velocity is the twist from the previous pose to this one divided by their gap, times ``damping``; a
        gap that is not positive or longer than ``max_gap`` sets it to zero.
        """
        pose = pose.reshape().to(torch.float64)
        if time is None:
            time = 0.0 if self.time is None else self.time + 1.0
        if self.pose is not None and self.time is not None:
            gap = float(time) - float(self.time)
            if 0.0 < gap <= self.config.max_gap:
                xi = (pose @ self.pose.inverse()).log()
                self.velocity = self.config.damping * xi / gap
            else:
                self.velocity = torch.zeros(6, dtype=torch.float64)
        self.pose = pose
        self.time = float(time)

    def predict(self, time: float | None = None) -> Pose:
        """The pose at ``time`` (``None``: one unit after the last update): ``exp(gap · ξ) · pose``.

        Raises:
            RuntimeError: no pose yet.
        """
        if self.pose is None or self.time is None:
            raise RuntimeError("ConstantVelocity.predict: no pose yet (call update or reset with a pose first)")
        gap = 1.0 if time is None else float(time) - self.time
        if not 0.0 < gap <= self.config.max_gap:
            return self.pose
        xi = gap * self.velocity
        angle = float(xi[3:].norm())
        limit = torch.pi * self.config.max_rotation_deg / 180.0
        if angle > limit:
            xi = xi * (limit / angle)
        return Pose.exp(xi) @ self.pose

    @property
    def speed(self) -> tuple[float, float]:
        """``(rotation in degrees, translation in metres)`` per time unit of the current velocity (translation:
        the twist's ``v``, the motion of the camera-frame origin's point)."""
        return float(self.velocity[3:].norm()) * 180.0 / torch.pi, float(self.velocity[:3].norm())
