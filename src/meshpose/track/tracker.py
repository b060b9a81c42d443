"""Tracking: keep the poses of objects across the frames of a video with any :class:`~meshpose.refine.base.Refiner`.

Per frame (:meth:`Tracker.step`): every track's pose is predicted by its constant-velocity motion model
(:mod:`meshpose.track.motion`) or, with ``prediction="matches"``, from feature matches between the previous frame and
this one (:mod:`meshpose.track.matches`; the velocity model where they give no prediction); the tracks in view are
refined jointly from their predictions in one ``refine`` call (multi-object refiners see them all, so they know who
hides whom); each track's refiner score decides whether the frame went well. A track whose frames go badly — a
score under :attr:`TrackerConfig.score_threshold`, a refiner failure, or an object that left the image — for
:attr:`TrackerConfig.lost_after` frames in a row is *lost*. A lost track is not refined from its prediction any more;
each frame it tries to come back:

* with detections of its object in the frame and an estimator: coarse poses from each detection, each refined
  alone; of those whose score passes, the one whose silhouette fits its detection's mask best
  (:func:`~meshpose.track.recovery.rank_by_mask`, :attr:`TrackerConfig.recover_rank`), fitted to it — or, without
  masks, the best by the refiner's score;
* otherwise: a wider search around the last good pose (that pose and :attr:`TrackerConfig.search_hypotheses`
  perturbed copies of it, each refined alone, the best by score).

The best is taken only when its score reaches :attr:`TrackerConfig.recover_threshold` (default: the score
threshold); the track is then *recovered* and tracks on from there with its velocity reset.

With detections (and an estimator) every frame checks the tracks against them: a tracked pose is fitted to its
detection's mask (:attr:`TrackerConfig.detection_fit`), and a track that drifted off its detection, whose object was
moved, or whose fitted silhouette disagrees with the mask is re-estimated at once; the re-estimate replaces the
tracked pose only where it fits the mask better (without masks: where the estimator's score prefers it;
:meth:`Tracker._check_detections`).

What the tracker owns is state across frames only. No GPU or GL state: the refiners own their renderers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from meshpose.coarse.base import Estimator
from meshpose.coarse.mask_fit import fit_to_mask, occluder_masks
from meshpose.coarse.score import score_hypotheses
from meshpose.geometry.lie import interpolate_pose, rotation_angle
from meshpose.refine.base import Refiner
from meshpose.track.config import TrackerConfig
from meshpose.track.matches import MatchPredictor, PredictionSource
from meshpose.track.motion import ConstantVelocity
from meshpose.track.recovery import detection_overlaps, rank_by_mask, search_hypotheses, too_hidden
from meshpose.track.result import (
    BAD_FRAME,
    LOST,
    LOW_SCORE,
    OUTSIDE_IMAGE,
    REFINE,
    TrackResult,
    TrackStatus,
    check_frame,
)
from meshpose.track.scene_map import length_grid, search_length
from meshpose.types import Detection, ObjectModel, Observation, Pose

__all__ = ["TrackResult", "TrackStatus", "Tracker", "TrackerConfig", "check_frame"]  # (the outcomes re-exported)

log = logging.getLogger(__name__)


@dataclass
class _Track:
    track_id: int
    model: ObjectModel
    motion: ConstantVelocity
    last_good: Pose
    last_good_time: float
    bad: int = 0
    lost: bool = False
    lost_frames: int = 0
    reference: float | None = None
    fit_reference: float | None = None  # running mean of the fitted IoU' of the poses it ended its frames on

    def threshold(self, cfg: TrackerConfig) -> float:
        """The score under which a frame of this track is bad."""
        rel = 0.0 if self.reference is None else cfg.relative_threshold * self.reference
        return max(cfg.score_threshold, rel)

    def note_fit(self, iou: float | None, rate: float) -> None:
        """Fold this frame's fitted IoU' of the track's pose into its running mean (``None``: no fit)."""
        if iou is not None:
            self.fit_reference = iou if self.fit_reference is None else (1 - rate) * self.fit_reference + rate * iou

    def hold(self, pose: Pose) -> None:
        """This frame's pose of the track becomes ``pose`` (a correction of the refined one: the scene fusion, the
        mask fit); its time and velocity stay."""
        self.last_good = self.motion.pose = pose.reshape().to(torch.float64)


class Tracker:
    """Tracks objects through a sequence of frames, one observation at a time (a live camera or a dataset).

    Args:
        refiner: any :class:`~meshpose.refine.base.Refiner` (preset or chain); it refines each frame's tracks from
            their predictions, and the recovery hypotheses.
        estimator: an optional coarse :class:`~meshpose.coarse.base.Estimator` for recovery from detections.
        config: options (default :class:`TrackerConfig`).

    Example:
        >>> from meshpose.refine.registry import make_refiner
        >>> tracker = Tracker(make_refiner("contour"), config=TrackerConfig(lost_after=3))
        >>> tracker.tracks
        []
    """

    def __init__(
        self, refiner: Refiner, *, estimator: Estimator | None = None, config: TrackerConfig | None = None
    ) -> None:
        self.refiner = refiner
        self.estimator = estimator
        self.config = config or TrackerConfig()
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._time: float | None = None
        cfg = self.config
        self._matcher = (
            MatchPredictor(cfg.matches, scene_rigid=cfg.scene_rigid, seed=cfg.seed)
            if cfg.prediction == "matches"
            else None
        )

    # --- state ----------------------------------------------------------------------------------------------
    @property
    def tracks(self) -> list[tuple[int, int]]:
        """``(track_id, obj_id)`` of the current tracks, in the order :meth:`step` reports them."""
        return [(t.track_id, t.model.obj_id) for t in self._tracks]

    @property
    def time(self) -> float | None:
        """The time (frame id or timestamp) of the last frame, ``None`` before the first."""
        return self._time

    def reset(self) -> None:
        """Forget every track and the previous frame (a new scene)."""
        self._tracks = []
        self._next_id = 0
        self._time = None
        if self._matcher is not None:
            self._matcher.reset()

    def start(
        self, objects: Sequence[ObjectModel], poses: Pose, *, frame: float | None = None, obs: Observation | None = None
    ) -> list[int]:
        """:meth:`reset`, then :meth:`add` each object at its pose (``(N,)`` ``cam_from_obj``) at ``frame``.

        Args:
            objects: the objects.
            poses: their poses at ``frame``.
            frame: when the poses hold (``None``: 0).
            obs: the image in which they hold: with ``prediction="matches"`` its features are kept, so that the
                next frame is predicted from matches with it (without it, the next frame falls back to the velocity
                prediction, i.e. the start poses).

        Returns:
            The track ids (``0 … N-1``).
        """
        self.reset()
        poses = poses.reshape(-1)
        if len(poses) != len(objects):
            raise ValueError(f"start: {len(objects)} objects but {len(poses)} poses")
        ids = [self.add(obj, poses[i], frame=frame) for i, obj in enumerate(objects)]
        if obs is not None and self._matcher is not None and check_frame(obs) is None:
            t = 0.0 if frame is None else float(frame)
            self._matcher.observe(obs.rgb, t)
            self._matcher.commit({tr.track_id: tr.last_good for tr in self._tracks}, {t})
        return ids

    def add(
        self,
        obj: ObjectModel,
        pose: Pose,
        *,
        frame: float | None = None,
        previous: tuple[Pose, float] | None = None,
        lost: bool = False,
        reference_score: float | None = None,
    ) -> int:
        """Start tracking ``obj`` from ``pose`` (its pose at ``frame``; ``None``: the tracker's current time).

        Args:
            obj: the object model.
            pose: its ``cam_from_obj`` pose at ``frame``.
            frame: when the pose holds (frame id or timestamp).
            previous: an earlier ``(pose, frame)`` of the same object, to start with its velocity (a resumed run).
            lost: start the track as lost (a resumed run whose last frame had lost it).
            reference_score: the track's reference score (``None``: set by its first good frame).

        Returns:
            The new track's id.
        """
        t = self._time if frame is None else float(frame)
        t = 0.0 if t is None else t
        motion = ConstantVelocity(self.config.motion)
        if previous is not None:
            motion.update(previous[0], previous[1])
        motion.update(pose, t)
        track = _Track(self._next_id, obj, motion, pose.reshape().to(torch.float64), t, lost=lost)
        track.reference = reference_score
        track.bad = self.config.lost_after if lost else 0
        self._tracks.append(track)
        self._next_id += 1
        return track.track_id

    # --- frames ---------------------------------------------------------------------------------------------
    def skip(self, frame: float | None = None, reason: str = "the frame could not be read") -> list[TrackResult]:
        """A frame that cannot be used: each track reports its prediction (score 0) with code ``"bad_frame"``;
        the motion goes on (the next frame is predicted across the gap)."""
        t = self._advance(frame)
        out = []
        for tr in self._tracks:
            pose = tr.last_good if tr.lost else tr.motion.predict(t)
            status: TrackStatus = "lost" if tr.lost else "failed"
            out.append(TrackResult(tr.track_id, tr.model.obj_id, pose, 0.0, status, BAD_FRAME, reason))
        return out

    def step(
        self, obs: Observation, detections: Sequence[Detection] | None = None, frame: float | None = None
    ) -> list[TrackResult]:
        """Track every object into the frame ``obs``.

        Args:
            obs: the frame.
            detections: 2D detections in this frame (any objects); used only to recover lost tracks (with an
                estimator).
            frame: the frame's id or timestamp (``None``: one after the last); gaps scale the motion prediction.

        Returns:
            One :class:`TrackResult` per track, in :attr:`tracks` order.
        """
        problem = check_frame(obs)
        if problem is not None:
            return self.skip(frame, f"bad frame: {problem}")
        t = self._advance(frame)
        from_matches, match_s = self._match_predictions(obs, t)
        results: dict[int, TrackResult] = {}
        active: list[tuple[_Track, Pose]] = []
        for tr in self._tracks:
            if tr.lost:
                continue
            pred = from_matches[tr.track_id][0] if tr.track_id in from_matches else tr.motion.predict(t)
            why = self._outside(obs, tr.model, pred)
            if why is not None:
                results[tr.track_id] = self._bad(tr, t, pred, 0.0, OUTSIDE_IMAGE, why, failed=True)
            else:
                active.append((tr, pred))
        if self._matcher is not None and self.config.scene_rigid and self.config.scale_objects > 0:
            active = self._unscaled_predictions(obs, active, from_matches)
        if active:
            results.update(self._refine_active(obs, t, active))
        if self.config.scene_rigid:
            self._fuse(results, from_matches)
        if detections and self.estimator is not None and self.config.detection_iou > 0:
            self._check_detections(obs, t, results, detections)
        for tr in self._tracks:
            if tr.track_id in results:
                continue
            t0 = time.perf_counter()
            guess = from_matches[tr.track_id][0] if tr.track_id in from_matches else None
            res = self._recover(obs, tr, t, detections, guess)
            tr.note_fit(res.info.get("mask_iou") if res.status == "recovered" else None, self.config.reference_rate)
            results[tr.track_id] = dataclasses.replace(res, time_s=time.perf_counter() - t0)
        if self._matcher is not None:  # this frame anchors its good tracks; the match stage's cost is shared
            # Scene-rigid: a frame the matches predicted nothing in (not the first frame) anchors nothing — its poses
            # are guesses. Otherwise a still object that was not found well stays where the camera's motion put it,
            # when that motion is trusted: at least half the tracks it moved were then found well (and in the first
            # frame, where its start pose is).
            good = {k: r.pose for k, r in results.items() if r.ok}
            moved = sum(src == "scene" for _, src in from_matches.values())
            first = not self._matcher.keyframes
            carried: dict[int, Pose] = {}
            if self.config.scene_rigid and not from_matches and not first:
                good = {}
            elif sum(r.ok for r in results.values()) >= max(1.0, 0.5 * moved):
                carried = {
                    k: from_matches[k][0] if k in from_matches else r.info.get("predicted", r.pose)
                    for k, r in results.items()
                    if not r.ok and (first or from_matches.get(k, (None, ""))[1] == "scene")
                }
            keep = {t, *(tr.last_good_time for tr in self._tracks)}
            self._matcher.commit(good, keep, carried)
            share = match_s / max(1, len(self._tracks))
            for k, r in results.items():
                source = from_matches[k][1] if k in from_matches else "velocity"
                info = {**r.info, "prediction": source, "match_s": share}
                results[k] = dataclasses.replace(r, time_s=r.time_s + share, info=info)
        return [results[tr.track_id] for tr in self._tracks]

    # --- internals ------------------------------------------------------------------------------------------
    def _advance(self, frame: float | None) -> float:
        t = (0.0 if self._time is None else self._time + 1.0) if frame is None else float(frame)
        self._time = t
        return t

    def _match_predictions(self, obs: Observation, t: float) -> tuple[dict[int, tuple[Pose, PredictionSource]], float]:
        """``prediction="matches"``: this frame's features and, per track, its pose predicted from the matches with
        its last good frame (``{track_id: (pose, source)}``), with the seconds it took."""
        if self._matcher is None:
            return {}, 0.0
        t0 = time.perf_counter()
        out: dict[int, tuple[Pose, PredictionSource]] = {}
        try:
            self._matcher.observe(obs.rgb, t)
            models = {tr.track_id: tr.model for tr in self._tracks}
            out = self._matcher.predict(obs.camera, models, {tr.track_id: tr.last_good_time for tr in self._tracks})
        except (ValueError, RuntimeError, cv2.error) as exc:
            log.warning("the match prediction failed at %g: %s", t, exc)
        return out, time.perf_counter() - t0

    def _unscaled_predictions(
        self, obs: Observation, active: list[tuple[_Track, Pose]], from_matches: dict[int, Any]
    ) -> list[tuple[_Track, Pose]]:
        """Scene-rigid tracks the matches gave no pose: the essential motion's length searched by refining
        (:func:`~meshpose.track.scene_map.search_length`), their prediction from it."""
        assert self._matcher is not None
        cfg = self.config
        missing = [tr.track_id for tr, _ in active if tr.track_id not in from_matches]
        found = self._matcher.unscaled(missing) if missing else None
        if found is None:
            return active
        models = {tr.track_id: tr.model for tr in self._tracks}
        lengths = length_grid(*cfg.scale_range_m, cfg.scale_ratio)
        pred = search_length(
            self.refiner, obs, models, found[0], found[1], lengths, objects=cfg.scale_objects, iterations=cfg.iterations
        )
        for k, p in pred.items():
            from_matches[k] = (p, "scene")
        return [(tr, pred.get(tr.track_id, p)) for tr, p in active]

    def _fuse(self, results: dict[int, TrackResult], from_matches: dict[int, Any]) -> None:
        """Scene-rigid: a well-refined track predicted by the camera's motion moves ``scene_gain`` of the way from
        the prediction to its refined pose — none of it when the refined pose is farther from the prediction than
        ``scene_gate`` (an outlier: the refiner locked on something else; the camera's motion is kept)."""
        cfg = self.config
        for tr in self._tracks:
            r = results.get(tr.track_id)
            if r is None or not r.ok or from_matches.get(tr.track_id, (None, ""))[1] != "scene":
                continue
            pred = from_matches[tr.track_id][0].reshape().to(torch.float64)
            refined = r.pose.reshape().to(torch.float64)
            shift = float((refined.t - pred.t).norm()) / tr.model.diameter
            turn = math.degrees(float(rotation_angle(pred.R, refined.R)))
            gated = shift > cfg.scene_gate[0] or turn > cfg.scene_gate[1]
            pose = pred if gated else interpolate_pose(pred, refined, cfg.scene_gain)
            tr.hold(pose)
            results[tr.track_id] = dataclasses.replace(r, pose=pose, info={**r.info, "refined": r.pose, "gated": gated})

    def _check_detections(
        self, obs: Observation, t: float, results: dict[int, TrackResult], detections: Sequence[Detection]
    ) -> None:
        """Check each tracked object against the detections of its object in this frame.

        With ``detection_fit`` and a detection mask, the tracked pose is first fitted to the mask of the detection its
        projected box overlaps most (the estimator's mask fit: :func:`~meshpose.coarse.mask_fit.fit_to_mask`, the
        other detections' masks as possible occluders) — the detector outlines the visible object to the pixel, the
        tracked pose came from the previous frame. A track that went badly in this frame, whose projected box
        overlaps no detection of its object by ``detection_iou`` (it drifted off, or the object was moved), or whose
        fitted silhouette overlaps the mask by less than ``detection_mask_iou`` (or holds less than
        ``detection_mask_cover`` of it, or falls ``detection_mask_drop`` below the track's running fitted IoU') is
        re-estimated from the detections at once rather than after ``lost_after`` frames; a re-estimate replaces a
        tracked pose only where it fits the mask better (``recover_rank="mask"``) or else where the estimator's own
        score (:func:`~meshpose.coarse.score.score_hypotheses`, against the detection) prefers it.
        A detection that shows less than ``reestimate_min_visible`` of the object is never re-estimated from.
        """
        cfg = self.config
        occluders = occluder_masks(detections) if cfg.detection_fit else [None] * len(detections)
        for tr in self._tracks:
            r = results.get(tr.track_id)
            mine = [(d, occ) for d, occ in zip(detections, occluders, strict=True) if d.obj_id == tr.model.obj_id]
            if r is None or not mine or r.status == "lost":
                continue
            ious = detection_overlaps(obs.camera, tr.model, r.pose, [d for d, _ in mine])
            k = int(np.argmax(ious))
            iou, (det, occ) = ious[k], mine[k]
            t0 = time.perf_counter()
            tracked, mask_iou, cover = r.pose, None, 1.0
            if cfg.detection_fit and r.ok and iou > 0 and det.mask is not None:
                try:
                    fit = fit_to_mask(obs, tr.model, det, r.pose.reshape(), occluders=occ, config=cfg.mask_fit)
                    tracked, mask_iou, cover = fit.pose, fit.iou, fit.coverage
                except ValueError as exc:  # (a pose the fit cannot start from: the tracked one stays)
                    log.debug("track %d: the mask fit failed: %s", tr.track_id, exc)
            info = {**r.info, "box_iou": iou} | (
                {} if mask_iou is None else {"mask_iou": mask_iou, "mask_cover": cover}
            )
            doubt = mask_iou is not None and (
                mask_iou < cfg.detection_mask_iou
                or cover < cfg.detection_mask_cover
                or (cfg.detection_mask_drop > 0 and mask_iou < (tr.fit_reference or 0.0) - cfg.detection_mask_drop)
            )
            keep = r.ok and iou >= cfg.detection_iou and not doubt
            # (asked only of a track about to be re-estimated: too little of it shows to re-estimate it from)
            hidden = not keep and too_hidden(obs.camera, tr.model, det, tracked, cfg.reestimate_min_visible)
            if keep or hidden:
                if hidden:
                    info["hidden"] = True
                if r.ok and mask_iou is not None:
                    tr.hold(tracked)
                    tr.note_fit(mask_iou, cfg.reference_rate)
                    info["fitted"] = True
                spent = time.perf_counter() - t0  # (tracked is r.pose unless the frame went well and was fitted)
                results[tr.track_id] = dataclasses.replace(r, pose=tracked, time_s=r.time_s + spent, info=info)
                continue
            tr.lost, tr.lost_frames = True, 0
            res = self._recover(obs, tr, t, detections)  # (not from the drifted pose: it scored well there)
            final_iou = res.info.get("mask_iou") if res.status == "recovered" else None
            if res.status == "recovered" and r.ok and self.estimator is not None:
                if mask_iou is not None and "mask_iou" in res.info:  # both fitted to the mask: the better fit
                    scores = np.array([mask_iou, float(res.info["mask_iou"])])
                else:
                    scores = score_hypotheses(obs, tr.model, det, [tracked.reshape(), res.pose.reshape()])
                info["redetect_scores"] = (float(scores[0]), float(scores[1]))
                if scores[0] > scores[1]:  # the tracked pose explains the detection better: keep tracking it
                    tr.lost, tr.bad = False, 0
                    tr.motion.reset(tracked, t)
                    tr.last_good, tr.last_good_time = tracked.reshape().to(torch.float64), t
                    res, final_iou = dataclasses.replace(r, pose=tracked), mask_iou
            elif res.status != "recovered" and r.ok and iou >= cfg.detection_iou:
                # only the fitted silhouette was doubtful (e.g. a hidden object) and nothing else explains the
                # detection: the track goes on from its fitted pose
                tr.lost, tr.lost_frames = False, 0
                tr.hold(tracked)
                res, final_iou = dataclasses.replace(r, pose=tracked), mask_iou
            elif res.status != "recovered":
                res = dataclasses.replace(res, pose=tracked)
            tr.note_fit(final_iou, cfg.reference_rate)
            info = {**info, **res.info, "redetected": True}
            results[tr.track_id] = dataclasses.replace(res, time_s=r.time_s + time.perf_counter() - t0, info=info)

    def _outside(self, obs: Observation, obj: ObjectModel, pose: Pose) -> str | None:
        """Why the object at ``pose`` is out of view (``None`` when it is in view)."""
        tc = pose.t.reshape(3).double().numpy()
        if not np.all(np.isfinite(tc)) or tc[2] < max(self.config.min_depth_m, 0.5 * obj.diameter):
            return f"the object's centre is at depth {tc[2]:.3f} m: in front of or behind the camera plane"
        K = np.asarray(obs.camera.K, dtype=np.float64)
        u, v = K[0, 0] * tc[0] / tc[2] + K[0, 2], K[1, 1] * tc[1] / tc[2] + K[1, 2]
        margin = self.config.margin_frac * K[0, 0] * obj.diameter / tc[2]
        w, h = obs.camera.width, obs.camera.height
        if u < -margin or v < -margin or u > w - 1 + margin or v > h - 1 + margin:
            return f"the object's centre projects to ({u:.0f}, {v:.0f}), outside the {w}×{h} image"
        return None

    def _bad(
        self, tr: _Track, t: float, pose: Pose, score: float, code: str, message: str, *, failed: bool
    ) -> TrackResult:
        """Count a bad frame of a tracked object; the track is lost after ``lost_after`` of them in a row.

        ``failed``: the pose is no measurement (the next frame starts from the motion prediction); otherwise the
        refined pose (e.g. of a partly hidden object) is the next frame's start, with the velocity kept.
        """
        tr.bad += 1
        if not failed:
            tr.motion.pose, tr.motion.time = pose.reshape().to(torch.float64), t
        if tr.bad >= self.config.lost_after:
            tr.lost, tr.lost_frames = True, 0
            log.info("track %d (object %d) lost at %g: %s", tr.track_id, tr.model.obj_id, t, message)
            return TrackResult(tr.track_id, tr.model.obj_id, pose, score, "lost", code, message)
        return TrackResult(tr.track_id, tr.model.obj_id, pose, score, "failed", code, message)

    def _good(self, tr: _Track, t: float, pose: Pose, score: float) -> None:
        rate = self.config.reference_rate
        tr.reference = score if tr.reference is None else (1 - rate) * tr.reference + rate * score
        tr.bad = 0
        tr.motion.update(pose, t)
        tr.last_good, tr.last_good_time = pose.reshape().to(torch.float64), t

    def _refine_active(self, obs: Observation, t: float, active: list[tuple[_Track, Pose]]) -> dict[int, TrackResult]:
        """Refine the tracks in view jointly from their predictions."""
        cfg = self.config
        models = [tr.model for tr, _ in active]
        init = Pose.stack([p.reshape().to(torch.float64) for _, p in active])
        t0 = time.perf_counter()
        out: dict[int, TrackResult] = {}
        try:
            res = self.refiner.refine(obs, models, init, iterations=cfg.iterations)
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
            share = (time.perf_counter() - t0) / len(active)
            for tr, pred in active:
                r = self._bad(tr, t, pred, 0.0, REFINE, f"{type(exc).__name__}: {exc}", failed=True)
                out[tr.track_id] = dataclasses.replace(r, time_s=share)
            return out
        share = (time.perf_counter() - t0) / len(active)
        for i, (tr, pred) in enumerate(active):
            pose, score = res.pose[i], float(np.asarray(res.score)[i])
            failure = res.info.failure[i]
            info = {"predicted": pred}
            if failure is not None:
                code = getattr(getattr(failure, "code", None), "value", None) or REFINE
                r = self._bad(tr, t, pred, score, str(code), str(failure), failed=True)
            elif not score >= tr.threshold(cfg):
                msg = f"score {score:.3f} under the threshold {tr.threshold(cfg):.3f}"
                r = self._bad(tr, t, pose, score, LOW_SCORE, msg, failed=False)
            else:
                self._good(tr, t, pose, score)
                r = TrackResult(tr.track_id, tr.model.obj_id, pose, score, "tracking")
            out[tr.track_id] = dataclasses.replace(r, time_s=share, info=info)
        return out

    def _recover(
        self,
        obs: Observation,
        tr: _Track,
        t: float,
        detections: Sequence[Detection] | None,
        guess: Pose | None = None,
    ) -> TrackResult:
        """Try to find a lost track again (from detections of its object, else by a search around ``guess`` — its
        match prediction — or its last good pose); report it lost with the last good pose when that fails."""
        cfg = self.config
        tr.lost_frames += 1
        obj_id = tr.model.obj_id
        if (tr.lost_frames - 1) % cfg.recover_every:
            return TrackResult(tr.track_id, obj_id, tr.last_good, 0.0, "lost", LOST, "lost (no recovery this frame)")
        base = tr.last_good if guess is None else guess
        dets = [d for d in (detections or ()) if d.obj_id == obj_id] if self.estimator is not None else []
        dets = [d for d in dets if not too_hidden(obs.camera, tr.model, d, base, cfg.reestimate_min_visible)]
        source = "detections" if dets else "search"
        if source == "detections":
            hyps = ([] if guess is None else [guess]) + self._detection_hypotheses(obs, tr, dets)
        else:
            hyps = self._search_hypotheses(tr, t, base)
        iters = cfg.search_iterations
        found: list[tuple[float, Pose]] = []
        t0 = time.perf_counter()
        tried = 0
        for h in hyps:
            if cfg.recover_max_tries is not None and tried >= cfg.recover_max_tries:
                break
            if tried and cfg.recover_budget_s is not None and time.perf_counter() - t0 > cfg.recover_budget_s:
                break  # (the first hypothesis, the nearest, is always tried)
            if self._outside(obs, tr.model, h) is not None:
                continue
            tried += 1
            try:
                res = self.refiner.refine(obs, [tr.model], Pose.stack([h]), iterations=iters)
            except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
                log.debug("track %d: a recovery hypothesis failed: %s", tr.track_id, exc)
                continue
            if res.info.failure[0] is None:
                found.append((float(np.asarray(res.score)[0]), res.pose[0]))
        info: dict[str, Any] = {"recovery": source, "hypotheses": len(hyps), "tried": tried}
        need = tr.threshold(cfg) if cfg.recover_threshold is None else cfg.recover_threshold
        best = max(found, key=lambda f: f[0]) if found else None
        passed = [f for f in found if f[0] >= need]
        if source == "detections" and cfg.recover_rank == "mask" and passed:
            # (the refiner's score qualifies a hypothesis; the fit of its silhouette to the mask chooses)
            top = rank_by_mask(obs, tr.model, [p for _, p in passed], detections or (), cfg.mask_fit)[0]
            if top.iou >= 0:
                best = (passed[top.index][0], top.pose)
                info["mask_iou"] = top.iou
        if best is not None and best[0] >= need:
            tr.lost, tr.bad = False, 0
            tr.motion.reset(best[1], t)
            tr.last_good, tr.last_good_time = best[1].reshape().to(torch.float64), t
            log.info("track %d (object %d) recovered at %g (%s, score %.3f)", tr.track_id, obj_id, t, source, best[0])
            return TrackResult(tr.track_id, obj_id, best[1], best[0], "recovered", info=info)
        # (the reference score is kept: the object looks as it did before it was lost)
        score = 0.0 if best is None else best[0]
        msg = f"lost since {tr.lost_frames} frame(s); best {source} hypothesis scored {score:.3f} (need {need:.3f})"
        where = guess if guess is not None and cfg.scene_rigid else tr.last_good  # a still object moves with the camera
        return TrackResult(tr.track_id, obj_id, where, score, "lost", LOST, msg, info=info)

    def _search_hypotheses(self, tr: _Track, t: float, base: Pose) -> list[Pose]:
        """``base`` and ``search_hypotheses`` copies of it turned and shifted by the search radii."""
        cfg = self.config
        seed = cfg.seed * 1_000_003 + tr.track_id * 7919 + int(t) % 1_000_003
        trans = cfg.search_trans_frac * tr.model.diameter
        return search_hypotheses(base, cfg.search_hypotheses, cfg.search_rot_deg, trans, seed)

    def _detection_hypotheses(self, obs: Observation, tr: _Track, dets: list[Detection]) -> list[Pose]:
        """The estimator's hypotheses from the detections of the track's object (best first per detection)."""
        assert self.estimator is not None
        try:
            found = self.estimator.estimate(obs, [tr.model], dets, hypotheses=self.config.estimate_hypotheses)
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
            log.warning("track %d: the estimator failed: %s", tr.track_id, exc)
            return []
        return [h.pose.reshape() for r in found if r.ok for h in r.hypotheses]
