"""The options of :class:`~meshpose.track.tracker.Tracker` (:class:`TrackerConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from meshpose.coarse.mask_fit import MaskFitConfig
from meshpose.track.matches import MatchConfig
from meshpose.track.motion import MotionConfig

__all__ = ["TrackerConfig"]


@dataclass(frozen=True)
class TrackerConfig:
    """Options of :class:`Tracker`.

    Args:
        iterations: refiner iterations per frame (``None``: the refiner's default).
        score_threshold: a refined pose with a lower score always counts as a bad frame (an absolute floor).
        relative_threshold: a refined pose whose score is under this fraction of the track's reference score (a
            running mean of its good frames' scores) counts as a bad frame too. A relative test because scores
            differ between objects: ``contour``'s score (the geometric mean of silhouette, contour-line and
            colour agreement, [0, 1]) is 0.65–0.75 on a tracked synthetic object and falls to 0.25–0.33 when it is
            hidden, but on LM-O's real frames it is 0.6–0.85 at the ground truth for most objects and 0.2–0.4 for
            the heavily occluded ones (measured: scene 2, images 3 and 8).
        reference_rate: weight of a new good frame in the reference score (exponential moving average).
        lost_after: bad frames in a row after which a track is lost.
        recover_threshold: score a recovery hypothesis must reach (``None``: the larger of ``score_threshold``
            and ``relative_threshold`` × the reference score).
        search_hypotheses: perturbed copies of the last good pose tried by the wider search (besides the pose
            itself); 0 disables the search.
        search_rot_deg: rotation of each perturbed copy (exact angle, random axis).
        search_trans_frac: translation of each perturbed copy, fraction of the object's diameter.
        search_iterations: refiner iterations per recovery hypothesis (``None``: the refiner's default).
        recover_every: try to recover a lost track every this many frames (recovery costs a refinement per
            hypothesis).
        recover_budget_s: stop trying a lost track's hypotheses in a frame once its recovery has taken this many
            seconds (``None``: try them all); the hypotheses go nearest first, so a budget trades the far ones
            for a bounded frame time. The time depends on the machine's load, so results do too.
        recover_rank: how a recovery from detections chooses among its refined hypotheses whose score passes:
            ``"mask"`` — each is fitted to its detection's mask (:func:`~meshpose.track.recovery.rank_by_mask`) and
            the best fit is taken, fitted; also a re-estimate then replaces a tracked pose only when it fits the
            mask better than the tracked pose's fit; ``"score"`` — the refiner's highest score (and the estimator's
            score against the detection decides a re-estimate). Without masks both are ``"score"``. Chosen on the
            generated moved-object scenes (``bench_track.py --still 3 --objects 5 --frames 15 --relocate 0.1
            --gt-detections``; sets A / B of generated objects, and L: the LM-O *meshes* with 3 unannotated objects
            among them, ``--still-meshes ../shared/data/lmo --distractors 3``), success ``"score"`` → ``"mask"``:
            default mode 0.858 → 0.880 / 0.787 → 0.804 / 0.853 → 0.867, ``--fast`` (run in pairs) 0.849 → 0.853 /
            0.751 → 0.764 / 0.836 → 0.836.
        recover_max_tries: refine at most this many of a lost track's hypotheses in a frame, nearest first
            (``None``: no cap) — the load-independent bound of ``--fast``.
        estimate_hypotheses: hypotheses asked of the estimator per detection when recovering from detections.
        detection_iou: with detections and an estimator, a tracked object whose projected box overlaps no
            detection of its object by this IoU is re-estimated from them in that frame (it drifted, or moved in
            the scene); 0: only lost tracks are.
        detection_fit: with detections that have masks, each tracked pose is fitted to the mask of its detection
            (:func:`~meshpose.coarse.mask_fit.fit_to_mask`) before it is judged and kept.
        detection_mask_iou: with ``detection_fit``, a tracked object whose fitted silhouette overlaps its detection's
            mask by less than this (the fit's occlusion-aware IoU) is re-estimated from the detections in that frame.
        detection_mask_cover: with ``detection_fit``, a tracked object whose fitted silhouette holds less than this
            share of its detection's mask is re-estimated too (0: off). Unlike the IoU', the coverage stays 1 at the
            truth when something no detection outlines hides part of the object (unannotated clutter), where a
            re-estimate from the small visible part tends to put the object too far away. Measured on the generated
            moved-object scenes (``--fast``, sets A / B, ``bench_track.py --relocate 0.1 --gt-detections``): IoU' <
            0.5 (the default) 0.853 / 0.787, coverage < 0.5 instead 0.836 / 0.787; with 3 unannotated objects among
            them (``--distractors 3``) 0.756 / 0.684 against 0.773 / 0.702 — a wash overall, so not the default; an
            option for cluttered scenes (``{"detection_mask_iou": 0, "detection_mask_cover": 0.5}``).
        detection_mask_drop: with ``detection_fit``, a tracked object whose fitted IoU' falls more than this below
            its running mean over the track's kept frames (rate ``reference_rate``) is re-estimated too — a track
            that turned onto a pose whose outline nearly matches (0: off). Generated moved-object scenes (as for
            ``recover_rank``; sets A / B / L), 0 → 0.05: default mode 0.880 → 0.898 / 0.804 → 0.804 / 0.867 →
            0.876; ``--fast`` (pairs) 0.867 → 0.889 / 0.782 → 0.773 / 0.836 → 0.827 — nothing gained there for the
            re-estimations it costs, so ``--fast`` turns it off.
        reestimate_min_visible: a detection whose mask holds less than this share of the object's whole
            silhouette (at the tracked pose, :func:`~meshpose.coarse.mask_fit.silhouette_area`) shows too little of
            it to re-estimate it from: the track goes on from its (fitted) pose, and a lost track searches around
            its prediction instead (0: always re-estimate). Generated moved-object scenes (``--fast``, sets A / B,
            then with 3 unannotated objects among them): 0 gave 0.853 / 0.782 / 0.769 / 0.667, 0.15 (the default)
            0.844 / 0.773 / 0.778 / 0.720, 0.25 0.844 / 0.756 / 0.764 / 0.720 — the cluttered scenes gain; the
            default mode gave the same with 0 and 0.15 (0.858 / 0.787 / 0.849 / 0.724).
        mask_fit: options of that fit (:class:`~meshpose.coarse.mask_fit.MaskFitConfig`).
        margin_frac: an object whose projected centre is farther than this fraction of its projected diameter
            outside the image has left it.
        min_depth_m: an object nearer than this (its centre's camera ``z``) has left the view.
        motion: the motion model's options.
        prediction: where a tracked object's start pose in a new frame comes from: ``"velocity"`` — the
            constant-velocity model (free; right when frames are close in time); ``"matches"`` — local features
            matched between the previous frame and this one and PnP on the objects rendered at their previous poses
            (:mod:`meshpose.track.matches`; 10–100 ms per frame on a CPU core; right when the motion between frames
            is large, as between LM-O's frames), the velocity model for the objects it gives no pose. Each track is
            matched from its last good frame (:class:`~meshpose.track.matches.MatchPredictor`); a lost track's
            predicted pose is where its search looks. Default ``"velocity"``, measured with
            ``benchmarks/bench_track.py`` (``contour``, 3 smooth RBOT-style sequences × 30 frames, 640×480): the
            matches change nothing in the default mode (success 0.989 / 0.908 at frame steps 1 / 4 either way),
            help ``--fast`` a little (0.920 → 0.931, 0.770 → 0.839) and cost 80–115 ms per frame on one loaded
            core; on static scenes with camera jumps of 20–40° per frame (3 objects, 3 × 15 frames) the velocity
            model fails (0.00 / 0.03 fast / default) and the matches do not (0.30 / 0.33; scene-rigid 0.60 / 0.61).
        scene_rigid: with ``"matches"``: the objects stand still in the scene and the camera moves, so one camera
            motion estimated from every object's matches (and from the essential matrix of all matches, background
            included, scaled by the object matches) predicts all of them — also those with too few matches of
            their own; an object whose own matches disagree with it keeps its own prediction. Off by default (an
            assumption about the scene); on for a hand-held camera around still objects (LM-O). Each tracked frame
            then also triangulates its matches into a map that gives the next frame's motion its metric scale
            (:mod:`meshpose.track.scene_map`).
        scale_range_m: with ``scene_rigid``, when nothing fixes the scale of the essential motion (the second frame,
            before any map): the camera travel lengths searched, metres (``scale_ratio`` apart; each is refined —
            :func:`~meshpose.track.scene_map.search_length`).
        scale_ratio: ratio of consecutive searched lengths.
        scale_objects: tracks refined per searched length (0: no search; the velocity prediction instead).
        scene_gain: with ``scene_rigid``, how far a well-refined pose moves the track from its prediction by the
            camera's motion: the track's new pose is this fraction of the way from the prediction to the refined
            pose (1: the refined pose). Below 1 it averages an object's refinements across views — a still object's
            pose in the scene is one pose, each frame's refinement a noisy measurement of it. Default 0.3, chosen
            on generated still scenes (``benchmarks/bench_track.py --still 3 --objects 5 --frames 15``: flat-coloured
            objects on a textured table, camera turning 15–35° per frame, 15°/10 % first-frame inits): success
            ``--fast`` 0.698 / 0.720 / 0.773 / 0.756 at 1 / 0.5 / 0.3 / 0.2, default mode 0.853 / 0.862 / 0.862 at
            1 / 0.5 / 0.3.
        scene_gate: with ``scene_rigid``, ``(diameters, degrees)``: a refined pose farther than this from its
            prediction by the camera's motion is an outlier (the refiner locked on something else) and the
            prediction is kept.
        matches: options of the match prediction.
        seed: seed of the search's perturbations (the same frames give the same hypotheses).
    """

    iterations: int | None = None
    score_threshold: float = 0.15
    relative_threshold: float = 0.6
    reference_rate: float = 0.2
    lost_after: int = 2
    recover_threshold: float | None = None
    search_hypotheses: int = 6
    search_rot_deg: float = 25.0
    search_trans_frac: float = 0.15
    search_iterations: int | None = None
    recover_every: int = 1
    recover_budget_s: float | None = None
    recover_max_tries: int | None = None
    recover_rank: Literal["score", "mask"] = "mask"
    estimate_hypotheses: int = 3
    detection_iou: float = 0.3
    detection_fit: bool = True
    detection_mask_iou: float = 0.5
    detection_mask_cover: float = 0.0
    detection_mask_drop: float = 0.05
    reestimate_min_visible: float = 0.15
    margin_frac: float = 0.25
    min_depth_m: float = 0.02
    motion: MotionConfig = field(default_factory=MotionConfig)
    prediction: Literal["velocity", "matches"] = "velocity"
    scene_rigid: bool = False
    scale_range_m: tuple[float, float] = (0.02, 1.5)
    scale_ratio: float = 1.15
    scale_objects: int = 4
    scene_gain: float = 0.3
    scene_gate: tuple[float, float] = (0.3, 30.0)
    matches: MatchConfig = field(default_factory=MatchConfig)
    mask_fit: MaskFitConfig = field(default_factory=MaskFitConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lost_after < 1:
            raise ValueError(f"TrackerConfig.lost_after must be ≥ 1, got {self.lost_after}")
        if self.recover_every < 1:
            raise ValueError(f"TrackerConfig.recover_every must be ≥ 1, got {self.recover_every}")
        if self.search_hypotheses < 0 or self.estimate_hypotheses < 1:
            raise ValueError("TrackerConfig: search_hypotheses must be ≥ 0 and estimate_hypotheses ≥ 1")
        if not 0 < self.scene_gain <= 1:
            raise ValueError(f"TrackerConfig.scene_gain must be in (0, 1], got {self.scene_gain}")
        lo, hi = self.scale_range_m
        if not (0 < lo < hi and self.scale_ratio > 1 and self.scale_objects >= 0):
            raise ValueError(
                "TrackerConfig: need 0 < scale_range_m[0] < scale_range_m[1], scale_ratio > 1, scale_objects ≥ 0"
            )
        if self.recover_rank not in ("score", "mask"):
            raise ValueError(f"TrackerConfig.recover_rank must be 'score' or 'mask', got {self.recover_rank!r}")
        if self.prediction not in ("velocity", "matches"):
            raise ValueError(f"TrackerConfig.prediction must be 'velocity' or 'matches', got {self.prediction!r}")
        if not (self.scene_gate[0] > 0 and self.scene_gate[1] > 0):
            raise ValueError(f"TrackerConfig.scene_gate must be two positive bounds, got {self.scene_gate}")
        if not 0 <= self.detection_iou <= 1:
            raise ValueError(f"TrackerConfig.detection_iou must be in [0, 1], got {self.detection_iou}")
        if not 0 <= self.detection_mask_iou <= 1:
            raise ValueError(f"TrackerConfig.detection_mask_iou must be in [0, 1], got {self.detection_mask_iou}")
        if not 0 <= self.detection_mask_drop <= 1:
            raise ValueError(f"TrackerConfig.detection_mask_drop must be in [0, 1], got {self.detection_mask_drop}")
        if not 0 <= self.reestimate_min_visible <= 1:
            raise ValueError(
                f"TrackerConfig.reestimate_min_visible must be in [0, 1], got {self.reestimate_min_visible}"
            )
        if not 0 <= self.detection_mask_cover <= 1:
            raise ValueError(f"TrackerConfig.detection_mask_cover must be in [0, 1], got {self.detection_mask_cover}")
        if self.recover_max_tries is not None and self.recover_max_tries < 1:
            raise ValueError(f"TrackerConfig.recover_max_tries must be ≥ 1 (or None), got {self.recover_max_tries}")
        if self.recover_budget_s is not None and self.recover_budget_s < 0:
            raise ValueError(f"TrackerConfig.recover_budget_s must be ≥ 0 (or None), got {self.recover_budget_s}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackerConfig:
        """From JSON-like options (``motion``, ``matches`` and ``mask_fit`` dicts of
        :class:`~meshpose.track.motion.MotionConfig`, :class:`~meshpose.track.matches.MatchConfig` and
        :class:`~meshpose.coarse.mask_fit.MaskFitConfig` fields).

        Raises:
            ValueError: an unknown option.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(data) - known)
        if bad:
            raise ValueError(f"tracker has no option(s) {bad}; options: {', '.join(sorted(known))}")
        opts = dict(data)
        if isinstance(opts.get("motion"), dict):
            opts["motion"] = MotionConfig(**opts["motion"])
        if isinstance(opts.get("matches"), dict):
            opts["matches"] = MatchConfig(**opts["matches"])
        if isinstance(opts.get("mask_fit"), dict):
            opts["mask_fit"] = MaskFitConfig(**opts["mask_fit"])
        for key in ("scale_range_m", "scene_gate"):
            if key in opts:
                a, b = opts[key]
                opts[key] = (float(a), float(b))
        return cls(**opts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)
