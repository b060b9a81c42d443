"""One ``contour`` refinement call: the per-object optimisation state, the Gauss–Newton steps and the loop.

Per object and level: render the crops of all objects at their trial poses in one batched call, evaluate the image
terms (:mod:`~meshpose.refine.contour.energy`), keep the best pose by the level's energy, take back a step that
makes it clearly worse (with more damping) and take a damped, clamped Gauss–Newton step from the current pose.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from meshpose.refine.base import StageTimer, make_result
from meshpose.refine.contour.config import ContourConfig
from meshpose.refine.contour.energy import Evaluation, PosePrior, evaluate
from meshpose.refine.contour.level import HIDDEN_TRANSLATION, LevelView, SceneBoxes, make_level_view
from meshpose.refine.guards import guard_update, initial_pose_failure
from meshpose.render.base import Renderer
from meshpose.types import Failure, FailureCode, ObjectModel, Observation, Pose, RefineResult, se3_exp

__all__ = ["ContourRun"]


class ContourRun:
    """The state of one ``refine`` call and its loop: per object, the best pose of the current level, the pose the
    next step starts from and the trial pose rendered next, their evaluations and the damping.

    Args:
        cfg: the options.
        renderer: renders the crops.
        obs: the observation.
        objects: the ``N`` object models.
        init: ``(N,)`` initial poses (checked).
        render_model: the model drawn for an object (e.g. with a decimated render mesh).
    """

    def __init__(
        self,
        cfg: ContourConfig,
        renderer: Renderer,
        obs: Observation,
        objects: list[ObjectModel],
        init: Pose,
        render_model: Callable[[ObjectModel], ObjectModel],
    ) -> None:
        self.cfg = cfg
        self.renderer = renderer
        self.obs = obs
        self.objects = objects
        self.n = len(objects)
        self.timer = StageTimer()
        with self.timer("prepare"):
            self.drawn = [render_model(o) for o in objects]
        R0, t0 = init.numpy()
        self.R0, self.t0 = R0.copy(), t0.copy()
        self.R_best, self.t_best = R0.copy(), t0.copy()  # best pose at the current level (per object)
        self.R_cur, self.t_cur = R0.copy(), t0.copy()  # the pose the next step starts from
        self.R_trial, self.t_trial = R0.copy(), t0.copy()  # the pose rendered next
        self.E_best = np.full(self.n, np.inf)
        self.eval_cur: list[Evaluation | None] = [None] * self.n  # linearisation at the current pose
        self.eval_best: list[Evaluation | None] = [None] * self.n
        self.score = np.zeros(self.n)
        self.lam = np.full(self.n, self.cfg.damping)
        self.converged = np.zeros(self.n, bool)
        self.failure: list[Failure | None] = [None] * self.n
        self.scene = SceneBoxes.of(objects)
        self.centers = self.scene.centers
        self.priors = [PosePrior(self.R0[i], self.t0[i], self.centers[i], o.diameter) for i, o in enumerate(objects)]

        self.energy_log: list[list[float]] = []
        self._check_initial()

    # --- setup --------------------------------------------------------------------------------------------
    def _check_initial(self) -> None:
        for i, obj in enumerate(self.objects):
            self.failure[i] = initial_pose_failure(self.obs.camera, _pose(self.R0[i], self.t0[i]), obj.points)

    def _active(self) -> list[int]:
        return [i for i in range(self.n) if self.failure[i] is None]

    def _make_view(self, i: int, level: int) -> LevelView | None:
        """Object ``i``'s crop at ``level`` around its best pose; ``None`` (a failure) if there is none."""
        try:
            return make_level_view(
                self.cfg,
                self.obs,
                self.scene,
                self.objects[i].points,
                i,
                level,
                _pose(self.R_best[i], self.t_best[i]),
                self.R_trial,
                self.t_trial,
            )
        except ValueError:
            msg = "object crosses the camera plane during refinement"
            self.failure[i] = Failure(FailureCode.BEHIND_CAMERA, msg)
            return None

    # --- steps --------------------------------------------------------------------------------------------
    def _step(self, i: int) -> None:
        """A damped Gauss–Newton step from the current pose of object ``i`` → its next trial pose."""
        cfg = self.cfg
        ev = self.eval_cur[i]
        if ev is None:
            self.R_trial[i], self.t_trial[i] = self.R_cur[i].copy(), self.t_cur[i].copy()
            return
        H, g, M = ev.hessian, ev.gradient, ev.metric
        # Damping in the pixel-motion metric: a step that moves the visible pixels by m (RMS) costs λ m², so
        # directions the data hardly constrain (depth, turns that keep the outline) do not wander.
        A = H + self.lam[i] * M + 1e-9 * (np.trace(M) / 6.0 + 1e-12) * np.eye(6)
        try:
            delta = -np.linalg.solve(A, g)
        except np.linalg.LinAlgError:
            delta = np.zeros(6)
        if not np.all(np.isfinite(delta)):
            delta = np.zeros(6)
        diam = self.objects[i].diameter
        rot = float(np.linalg.norm(delta[3:]))
        trans = float(np.linalg.norm(delta[:3]))
        scale = min(
            1.0, math.radians(cfg.max_step_deg) / max(rot, 1e-12), cfg.max_step_trans * diam / max(trans, 1e-12)
        )
        delta *= scale
        self.converged[i] = rot * scale < math.radians(cfg.converged_deg) and trans * scale < cfg.converged_trans * diam
        c_cam = self.R_cur[i] @ self.centers[i] + self.t_cur[i]
        Rd, td = se3_exp(torch.as_tensor(delta, dtype=torch.float64))
        Rd_np, td_np = Rd.numpy(), td.numpy()
        R_new = Rd_np @ self.R_cur[i]
        t_new = Rd_np @ (self.t_cur[i] - c_cam) + td_np + c_cam
        # The step is clamped above; the guard only refuses a non-finite pose or one with the centre behind the
        # camera (then the trial stays where it is).
        check = guard_update(self.R_cur[i], self.t_cur[i], R_new, t_new, diameter=diam, pivot=self.centers[i])
        if not check.ok:
            R_new, t_new = self.R_cur[i].copy(), self.t_cur[i].copy()
        self.R_trial[i], self.t_trial[i] = R_new, t_new

    def _render_scenes(self, scenes: list[tuple[LevelView, np.ndarray, np.ndarray]]) -> Any:
        """Render ``B`` crops in one call: each ``(view, R (N, 3, 3), t (N, 3))``, the view's hidden objects put
        behind the camera (where nothing draws them)."""
        Rs = np.stack([R for _, R, _ in scenes])
        ts = np.stack([t for _, _, t in scenes])
        for b, (view, _, _) in enumerate(scenes):
            if view.hidden:
                Rs[b, view.hidden] = np.eye(3)
                ts[b, view.hidden] = HIDDEN_TRANSLATION
        with self.timer("render"):
            return self.renderer.render(
                self.drawn,
                Pose(torch.as_tensor(Rs), torch.as_tensor(ts)),
                [view.camera for view, _, _ in scenes],
                lighting=self.cfg.lighting,
            )

    def _safe_evaluate(self, view: LevelView, out: Any, b: int, R: np.ndarray, t: np.ndarray) -> Evaluation | None:
        """:func:`~meshpose.refine.contour.energy.evaluate`, with a numerical breakdown on a degenerate render turned
        into a failure of the object (a refinement never raises); ``None`` when the object is not visible or broke
        down."""
        try:
            return evaluate(self.cfg, view, out, b, R, t, self.priors[view.index], False)
        except (cv2.error, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            msg = f"numerical breakdown in the image terms: {exc}"
            self.failure[view.index] = Failure(FailureCode.NUMERICAL, msg)
            return None

    def _score_round(self, views: dict[int, LevelView]) -> None:
        """Score every object at its best pose, the others at theirs."""
        todo = [view for i, view in views.items() if self.failure[i] is None]
        if not todo:
            return
        out = self._render_scenes([(view, self.R_best, self.t_best) for view in todo])
        with self.timer("terms"):
            for b, view in enumerate(todo):
                i = view.index
                try:
                    ev = evaluate(self.cfg, view, out, b, self.R_best[i], self.t_best[i], self.priors[i], True)
                except (cv2.error, ValueError, FloatingPointError, np.linalg.LinAlgError):
                    ev = None
                self.score[i] = 0.0 if ev is None else ev.score

    def _round(
        self,
        views: dict[int, LevelView],
        extra: dict[int, list[tuple[np.ndarray, np.ndarray]]],
        settled: set[int] | frozenset[int] = frozenset(),
    ) -> None:
        """Render the crops of the active, unsettled objects at their trial poses — or at the candidate poses
        ``extra`` lists for them, the first of which fits the colour models at a new level — and update the
        state."""
        cfg = self.cfg
        scenes: list[tuple[LevelView, np.ndarray, np.ndarray]] = []
        owners: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, view in views.items():
            if self.failure[i] is not None or i in settled:
                continue
            for Rc, tc in extra.get(i, [(self.R_trial[i], self.t_trial[i])]):
                R, t = self.R_trial.copy(), self.t_trial.copy()
                R[i], t[i] = Rc, tc
                scenes.append((view, R, t))
                owners.append((i, Rc.copy(), tc.copy()))
        if not scenes:
            return
        out = self._render_scenes(scenes)
        with self.timer("terms"):
            evals = [
                self._safe_evaluate(view, out, b, R[view.index], t[view.index]) for b, (view, R, t) in enumerate(scenes)
            ]
        for i in views:
            if self.failure[i] is not None or i in settled:
                continue
            mine = [(ev, Rc, tc) for ev, (j, Rc, tc) in zip(evals, owners, strict=True) if j == i and ev is not None]
            if not mine:
                if not np.isfinite(self.E_best[i]):
                    msg = "object not visible in its crop (outside the image or hidden by other objects)"
                    self.failure[i] = Failure(FailureCode.NOT_VISIBLE, msg)
                else:  # the trial left the view: step again from the best pose, with more damping
                    self._restart_from_best(i)
                continue
            # Several candidates (level start): the best of them is where the level goes on from.
            ev, Rc, tc = min(mine, key=lambda m: m[0].energy)
            if ev.energy < self.E_best[i]:
                self.E_best[i] = ev.energy
                self.R_best[i], self.t_best[i] = Rc, tc
                self.eval_best[i] = ev
            if ev.energy <= self.E_best[i] + cfg.worse_tolerance * abs(self.E_best[i]):
                # Go on from here (Gauss–Newton from the newly rendered pose).
                self.R_cur[i], self.t_cur[i] = Rc, tc
                self.eval_cur[i] = ev
                self.lam[i] = max(self.lam[i] / 2.0, cfg.damping)
            else:  # clearly worse
                self._restart_from_best(i)

    def _restart_from_best(self, i: int) -> None:
        self.R_cur[i], self.t_cur[i] = self.R_best[i].copy(), self.t_best[i].copy()
        self.eval_cur[i] = self.eval_best[i]
        self.lam[i] = min(self.lam[i] * 4.0, 1e4)

    def execute(self, plan: list[tuple[int, int]], callback: Callable[[int, Pose], None] | None) -> RefineResult:
        cfg = self.cfg
        history = [_pose(self.R0, self.t0)]
        it = 0
        levels = plan if plan else [(len(cfg.crop_sizes) - 1, 0)]
        for li, (level, count) in enumerate(levels):
            last = li == len(levels) - 1
            with self.timer("crop"):
                views = {i: v for i in self._active() if (v := self._make_view(i, level)) is not None}
            # The energy changes with the level: rank the candidates afresh. The best pose of the previous level
            # (it comes first: the colour models are fitted at it) and, at the last level, the initial pose
            # compete with the pending trial.
            self.E_best[:] = np.inf
            extra: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
            for i in views:
                cands = [(self.R_best[i].copy(), self.t_best[i].copy())]
                if not (
                    np.array_equal(self.R_best[i], self.R_trial[i]) and np.array_equal(self.t_best[i], self.t_trial[i])
                ):
                    cands.append((self.R_trial[i].copy(), self.t_trial[i].copy()))
                if last and li > 0:
                    cands.append((self.R0[i].copy(), self.t0[i].copy()))
                extra[i] = cands
            settled: set[int] = set()  # converged at this level: no more renders of their crops
            for k in range(count):
                self._round(views, extra if k == 0 else {}, settled)
                with self.timer("solve"):
                    for i in views:
                        if self.failure[i] is None and i not in settled:
                            self._step(i)
                            if k > 0 and self.converged[i]:
                                settled.add(i)
                self.energy_log.append(self.E_best.tolist())
                it += 1
                current = _pose(self.R_trial, self.t_trial)
                history.append(current)
                if callback is not None:
                    callback(it, current)
                if k > 0 and all(self.converged[i] for i in views if self.failure[i] is None):
                    break
            if last:  # evaluate the last step (without iterations: the initial pose), then score the best poses
                self._round(views, extra if count == 0 else {})
                self._score_round(views)
        for i in range(self.n):
            if self.failure[i] is not None:
                self.score[i] = 0.0
                self.converged[i] = False
                if not np.isfinite(self.E_best[i]):
                    self.R_best[i], self.t_best[i] = self.R0[i], self.t0[i]
        return make_result(
            history,
            self.score,
            timer=self.timer,
            converged=self.converged,
            failure=self.failure,
            extra={"energy": np.array(self.energy_log), "levels": [lv for lv, _ in plan]},
            pose=_pose(self.R_best, self.t_best),
        )


def _pose(R: np.ndarray, t: np.ndarray) -> Pose:
    return Pose(torch.as_tensor(np.array(R, dtype=np.float64)), torch.as_tensor(np.array(t, dtype=np.float64)))
