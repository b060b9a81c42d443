"""A tracker's motion prediction measured from the images: local features matched between the previous frame and
the current one, lifted to 3D on the objects rendered at their previous poses, then PnP-RANSAC.

When frames are far apart in time (a hand-held camera whose frames are 1–27 images apart, as LM-O's test frames)
the pose change between two frames is far larger than any refiner's basin (LM-O: median 30° and one diameter), and
extrapolating past poses cannot predict it. The images can:

1. :func:`detect_features` — SIFT (or ORB) keypoints and descriptors of a frame's grey image, once per frame (the
   tracker keeps the previous frame's :class:`FrameFeatures`);
2. :func:`match_features` — nearest-neighbour matches of the previous frame's keypoints that lie on the tracked
   objects to the current frame's keypoints, with Lowe's ratio test and a mutual (cross) check;
3. :func:`predict_from_matches` — one GL render of every tracked object at its previous pose gives, at each
   matched previous keypoint, the visible object and its object-frame surface point (``xyz``): a 3D–2D match in
   the current frame. Per object, PnP-RANSAC on its own matches predicts its pose. With ``scene_rigid`` (objects
   that stand still while the camera moves) one PnP-RANSAC over every object's matches, expressed in the previous
   camera frame, gives the camera motion ``M`` (``cam_cur_from_cam_prev``) and each object's prediction is
   ``M · cam_prev_from_obj`` — also for objects with too few matches of their own; an object whose own PnP finds
   inliers that ``M`` does not explain has moved in the scene and keeps its own prediction. ``M`` may also come
   from the essential matrix of *all* matches, the background's included (rotation and direction of travel),
   scaled by the few object matches: textureless objects on a textured table (LM-O) give too few matches for PnP.

An object without a prediction (too few matches, no consensus) is left to the caller's fallback (the
constant-velocity model of :mod:`meshpose.track.motion`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import torch

from meshpose.geometry.pnp import PnPResult, pnp_ransac
from meshpose.track.scene_map import (
    EssentialMotion,
    best_motion,
    carry_points,
    essential_motion,
    metric_scale,
    scene_motion,
    triangulate,
)
from meshpose.types import Camera, ObjectModel, Pose

__all__ = [
    "FrameFeatures",
    "MatchConfig",
    "MatchPrediction",
    "MatchPredictor",
    "PredictionSource",
    "detect_features",
    "match_features",
    "predict_from_matches",
]

#: Where an object's prediction came from: its own PnP, the scene's (camera) motion, or nowhere (fall back).
PredictionSource = Literal["own", "scene", "none"]


@dataclass(frozen=True)
class MatchConfig:
    """Options of the match prediction.

    Args:
        detector: ``"sift"`` (float descriptors, L2) or ``"orb"`` (binary descriptors, Hamming; faster, fewer
            good matches across large viewpoint changes).
        max_features: keypoints per frame (the strongest).
        image_scale: features are detected on the grey image resized by this factor (keypoints are reported in
            full-image pixels); below 1 it is faster and misses the smallest objects' details.
        ratio: Lowe's ratio test: a match is kept when its distance is under ``ratio`` × that of the second-best.
        mutual: keep a match only when the current keypoint's nearest previous keypoint is the query itself.
        render_scale: the previous frame's objects are rendered at this fraction of the image size (the render
            costs about in proportion to its pixels).
        edge_px: a previous keypoint within this many (full-image) pixels of another object or the background is
            dropped: at a silhouette the descriptor mixes both sides and the rendered surface point is unreliable.
        min_inliers: matches (and PnP inliers) an object's own prediction needs; the scene motion needs as many.
        reprojection_px: PnP-RANSAC inlier threshold, pixels of the current frame.
        ransac_iterations: PnP-RANSAC iteration cap.
        own_inlier_frac: with ``scene_rigid``, an object keeps its own prediction when the scene motion explains
            fewer than this fraction of its own PnP inliers (it moved in the scene).
        epipolar_px: with ``scene_rigid``, the inlier threshold (pixels) of the essential matrix estimated from all
            matches, the background's included: the camera's rotation and direction of travel even when the
            objects themselves have almost no texture (LM-O); the object matches then only fix the scale.
        min_epipolar: matches (inliers of the essential matrix) that motion needs.
        retry_keyframes: with ``scene_rigid``, when the latest keyframe gives no camera motion (too few matches
            after a large jump), up to this many older keyframes are tried, newest first (they are kept for that).
        min_scale_matches: points of known depth (object or map matches) that must agree on its scale (3 was too
            few: on LM-O three stray object matches gave lengths 30 % off).
    """

    detector: Literal["sift", "orb"] = "sift"
    max_features: int = 2000
    image_scale: float = 1.0
    ratio: float = 0.8
    mutual: bool = True
    render_scale: float = 0.5
    edge_px: float = 3.0
    min_inliers: int = 12
    reprojection_px: float = 3.0
    ransac_iterations: int = 2000
    own_inlier_frac: float = 0.5
    epipolar_px: float = 1.0
    min_epipolar: int = 30
    min_scale_matches: int = 8
    retry_keyframes: int = 3

    def __post_init__(self) -> None:
        if self.detector not in ("sift", "orb"):
            raise ValueError(f"MatchConfig.detector must be 'sift' or 'orb', got {self.detector!r}")
        if not (0 < self.image_scale <= 1 and 0 < self.render_scale <= 1):
            raise ValueError("MatchConfig: image_scale and render_scale must be in (0, 1]")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"MatchConfig.ratio must be in (0, 1], got {self.ratio}")
        if self.min_inliers < 4 or self.max_features < 4:
            raise ValueError("MatchConfig: min_inliers and max_features must be ≥ 4")


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """One frame's local features.

    Args:
        keypoints: ``(K, 2)`` float64 keypoint positions, full-image pixels (OpenCV: pixel centres at integers).
        descriptors: ``(K, D)`` descriptors (``float32`` for SIFT, ``uint8`` for ORB).
        detector: the detector that made them (features of two detectors never match).
        seconds: wall time of the detection.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    detector: str
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


@dataclass(frozen=True, eq=False)
class MatchPrediction:
    """The outcome of :func:`predict_from_matches` for ``N`` objects.

    Args:
        poses: per object its predicted ``cam_from_obj`` in the current frame (float64), ``None`` without one.
        source: per object where the prediction came from (:data:`PredictionSource`).
        matches: ``(N,)`` matches per object (before PnP).
        inliers: ``(N,)`` inliers of the object's own PnP (0 when it did not run or failed).
        scene_motion: ``cam_cur_from_cam_prev`` of the scene-rigid PnP, ``None`` when not asked or not found.
        scene_inliers: its inliers.
        timings: seconds per stage (``render``, ``match``, ``pnp``, ``total``; detection is the features').
        essentials: with ``scene_rigid``, the camera motions up to scale that all matches allow
            (:func:`~meshpose.track.scene_map.essential_motion`; empty with too little support); the tracker tries
            lengths of them when ``scene_motion`` is ``None``.
        pairs: ``(i_prev, i_cur)`` the matched keypoints (all of them with ``scene_rigid``), for the map.
    """

    poses: list[Pose | None]
    source: list[PredictionSource]
    matches: np.ndarray
    inliers: np.ndarray
    scene_motion: Pose | None = None
    scene_inliers: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    essentials: list[EssentialMotion] = field(default_factory=list)
    pairs: tuple[np.ndarray, np.ndarray] | None = None


def _detector(config: MatchConfig) -> Any:
    # (by name: the OpenCV type stubs lack the feature factories)
    make = getattr(cv2, "SIFT_create" if config.detector == "sift" else "ORB_create")
    return make(nfeatures=config.max_features)


def detect_features(rgb: np.ndarray, config: MatchConfig | None = None) -> FrameFeatures:
    """Keypoints and descriptors of an image.

    Args:
        rgb: ``(H, W, 3)`` uint8 colour image (or ``(H, W)`` grey).
        config: options (``detector``, ``max_features``, ``image_scale``).

    Returns:
        :class:`FrameFeatures` (empty arrays when the image has no keypoint).

    Example:
        >>> img = (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)
        >>> f = detect_features(np.dstack([img] * 3))
        >>> f.keypoints.shape[1], f.descriptors.shape[1], f.detector
        (2, 128, 'sift')
    """
    cfg = config or MatchConfig()
    t0 = time.perf_counter()
    img = np.asarray(rgb)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    s = cfg.image_scale
    if s < 1:
        grey = cv2.resize(grey, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    kps, desc = _detector(cfg).detectAndCompute(grey, None)
    dim, dtype = (128, np.float32) if cfg.detector == "sift" else (32, np.uint8)
    if desc is None or not kps:
        pts, desc = np.zeros((0, 2)), np.zeros((0, dim), dtype)
    else:
        # A resized image's pixel centre u' maps back to u = (u' + 0.5) / s - 0.5.
        pts = (np.array([k.pt for k in kps], dtype=np.float64) + 0.5) / s - 0.5
    return FrameFeatures(pts, np.ascontiguousarray(desc), cfg.detector, time.perf_counter() - t0)


def match_features(
    prev: FrameFeatures, cur: FrameFeatures, query: np.ndarray | None = None, config: MatchConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Match keypoints of ``prev`` (those in ``query``) to keypoints of ``cur``.

    A match is the nearest ``cur`` descriptor of a ``prev`` keypoint that passes the ratio test and, with
    ``mutual``, whose own nearest ``prev`` descriptor (among *all* of ``prev``) is that keypoint.

    Args:
        prev: the previous frame's features.
        cur: the current frame's features.
        query: indices into ``prev`` to match (``None``: all).
        config: options (``ratio``, ``mutual``).

    Returns:
        ``(i_prev, i_cur)``: ``(M,)`` int64 indices of the matched keypoints.

    Raises:
        ValueError: features of different detectors.
    """
    cfg = config or MatchConfig()
    if prev.detector != cur.detector:
        raise ValueError(f"cannot match {prev.detector} features with {cur.detector} features")
    q = np.arange(len(prev)) if query is None else np.asarray(query, dtype=np.int64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(q) == 0 or len(cur) < 2:
        return empty
    norm = cv2.NORM_L2 if prev.detector == "sift" else cv2.NORM_HAMMING
    bf = cv2.BFMatcher(norm)
    knn = bf.knnMatch(prev.descriptors[q], cur.descriptors, k=2)
    i_prev, i_cur = [], []
    for pair in knn:
        if len(pair) == 2 and pair[0].distance < cfg.ratio * pair[1].distance:
            i_prev.append(int(q[pair[0].queryIdx]))
            i_cur.append(pair[0].trainIdx)
    if not i_prev:
        return empty
    a, b = np.asarray(i_prev, np.int64), np.asarray(i_cur, np.int64)
    if cfg.mutual:
        back = bf.match(cur.descriptors[b], prev.descriptors)
        nearest = np.array([m.trainIdx for m in sorted(back, key=lambda m: m.queryIdx)], np.int64)
        keep = nearest == a
        a, b = a[keep], b[keep]
    return a, b


def _stable_instances(instance: np.ndarray, radius_px: int) -> np.ndarray:
    """``instance`` where every pixel within ``radius_px`` shows the same object, else 0 (``(h, w)`` int)."""
    inst = instance.astype(np.uint16)
    if radius_px <= 0:
        return inst.astype(np.int64)
    k = np.ones((2 * radius_px + 1, 2 * radius_px + 1), np.uint8)
    lo = cv2.erode(inst, k, borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(inst, k, borderType=cv2.BORDER_REPLICATE)
    return np.where(lo == hi, inst, 0).astype(np.int64)


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples of a float ``(h, w, C)`` image at ``(M, 2)`` pixel positions → ``(M, C)``."""
    if len(uv) == 0:
        return np.zeros((0, image.shape[2]), np.float64)
    mx = np.ascontiguousarray(uv[:, 0].reshape(-1, 1), dtype=np.float32)
    my = np.ascontiguousarray(uv[:, 1].reshape(-1, 1), dtype=np.float32)
    src = np.ascontiguousarray(image, dtype=np.float32)
    out = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(uv), image.shape[2]).astype(np.float64)


def predict_from_matches(
    prev: FrameFeatures,
    cur: FrameFeatures,
    camera: Camera,
    objects: Sequence[ObjectModel],
    poses: Pose,
    *,
    scene_rigid: bool = False,
    config: MatchConfig | None = None,
    seed: int = 0,
    prev_points: np.ndarray | None = None,
) -> MatchPrediction:
    """Predict each object's pose in the current frame from feature matches with the previous frame.

    Args:
        prev: the previous frame's features.
        cur: the current frame's features (same camera).
        camera: the camera of both frames (full image).
        objects: the ``N`` objects seen in the previous frame.
        poses: ``(N,)`` their ``cam_from_obj`` poses in the previous frame (metres).
        scene_rigid: also estimate one camera motion from every object's matches (objects that stand still in the
            scene) and predict with it the objects that have no own prediction or whose own one agrees with it.
        config: options (default :class:`MatchConfig`).
        seed: RANSAC seed.
        prev_points: with ``scene_rigid``, the map of the previous frame: ``(len(prev), 3)`` points in its camera
            frame (metres, NaN: none) per keypoint (:mod:`meshpose.track.scene_map`); matches to them join the
            objects' matches in the camera motion's PnP and fix the essential motion's scale.

    Returns:
        :class:`MatchPrediction` (objects without a prediction: ``None``, source ``"none"``).

    Raises:
        ValueError: ``poses`` does not hold one pose per object.
    """
    cfg = config or MatchConfig()
    t0 = time.perf_counter()
    n = len(objects)
    poses = poses.reshape(-1).to(torch.float64)
    if len(poses) != n:
        raise ValueError(f"predict_from_matches: {n} objects but {len(poses)} poses")
    none: list[PredictionSource] = ["none"] * n
    counts, own_inl = np.zeros(n, np.int64), np.zeros(n, np.int64)
    timings: dict[str, float] = {}
    mapped = scene_rigid and prev_points is not None  # the map alone may give the camera motion
    if (n == 0 and not mapped) or min(len(prev), len(cur)) < cfg.min_inliers or prev.detector != cur.detector:
        return MatchPrediction([None] * n, none, counts, own_inl, timings={"total": time.perf_counter() - t0})

    # 1. Which previous keypoints lie on which object, and where on it.
    from meshpose.render.gl import get_default_renderer

    small = camera.scaled(cfg.render_scale)
    sx, sy = small.width / camera.width, small.height / camera.height
    uv_small = np.stack([(prev.keypoints[:, 0] + 0.5) * sx - 0.5, (prev.keypoints[:, 1] + 0.5) * sy - 0.5], 1)
    xyz_image = np.zeros((small.height, small.width, 3), np.float32)
    owner = np.full(len(prev), -1, np.int64)  # object index per previous keypoint, -1: none
    if n:
        out = get_default_renderer().render(list(objects), poses, small)
        xyz_image = out.xyz[0]
        stable = _stable_instances(out.instance[0], int(np.ceil(cfg.edge_px * cfg.render_scale)))
        ui = np.clip(np.rint(uv_small[:, 0]).astype(np.int64), 0, small.width - 1)
        vi = np.clip(np.rint(uv_small[:, 1]).astype(np.int64), 0, small.height - 1)
        owner = stable[vi, ui] - 1
    on_obj = np.flatnonzero(owner >= 0)
    t1 = time.perf_counter()
    timings["render"] = t1 - t0

    # 2. Matches of those keypoints (scene-rigid: of all keypoints) into the current frame.
    a_prev, a_cur = match_features(prev, cur, None if scene_rigid else on_obj, cfg)
    on = owner[a_prev] >= 0
    i_prev, i_cur = a_prev[on], a_cur[on]
    obj_of = owner[i_prev]
    xyz = _sample(xyz_image, uv_small[i_prev])  # object-frame points, metres
    uv_cur = cur.keypoints[i_cur]
    t2 = time.perf_counter()
    timings["match"] = t2 - t1

    # 3. PnP: each object on its own matches, and the scene's camera motion on all of them.
    pred: list[Pose | None] = [None] * n
    source: list[PredictionSource] = list(none)
    own: list[PnPResult | None] = [None] * n

    def pnp(p2: np.ndarray, p3: np.ndarray) -> PnPResult:
        return pnp_ransac(
            p2,
            p3,
            camera,
            max_reprojection_error_px=cfg.reprojection_px,
            max_iterations=cfg.ransac_iterations,
            min_inliers=cfg.min_inliers,
            seed=seed,
        )

    for j in range(n):
        sel = obj_of == j
        counts[j] = int(sel.sum())
        if counts[j] < cfg.min_inliers:
            continue
        res = pnp(uv_cur[sel], xyz[sel])
        if res.success and res.pose is not None:
            own[j], own_inl[j] = res, res.num_inliers
            pred[j], source[j] = res.pose, "own"
    motion: Pose | None = None
    scene_inl = 0
    essentials: list[EssentialMotion] = []
    if scene_rigid:
        x_prev_cam = np.zeros((0, 3))
        if n:
            R, t = poses.R.numpy()[obj_of], poses.t.numpy()[obj_of]
            x_prev_cam = np.einsum("mij,mj->mi", R, xyz) + t  # the points in the previous camera frame
        if prev_points is not None:  # the map's points (background included) where no object lies
            bg = (owner[a_prev] < 0) & np.all(np.isfinite(prev_points[a_prev]), axis=1)
            x_prev_cam = np.concatenate([x_prev_cam, prev_points[a_prev[bg]]])
            uv_cur = np.concatenate([uv_cur, cur.keypoints[a_cur[bg]]])
            obj_of = np.concatenate([obj_of, np.full(int(bg.sum()), -1)])
        candidates: list[tuple[Pose, int]] = []
        pooled = pnp(uv_cur, x_prev_cam) if len(uv_cur) >= cfg.min_inliers else None
        if pooled is not None and pooled.success and pooled.pose is not None:
            candidates.append((pooled.pose, cfg.min_inliers))
        essentials = essential_motion(
            prev.keypoints[a_prev], cur.keypoints[a_cur], camera, cfg.epipolar_px, cfg.min_epipolar
        )
        for essential in essentials:
            epi = metric_scale(essential, x_prev_cam, uv_cur, camera, cfg)
            if epi is not None:
                candidates.append((epi, cfg.min_scale_matches))
        motion, inl = scene_motion(candidates, own, poses, x_prev_cam, uv_cur, obj_of, camera, cfg)
        if motion is not None:
            scene_inl = int(inl.sum())
            for j in range(n):
                mine = own[j]
                if mine is not None:
                    explained = int((inl[obj_of == j] & mine.inliers).sum())
                    if explained < cfg.own_inlier_frac * mine.num_inliers:
                        continue  # the object moved in the scene: keep its own prediction
                pred[j], source[j] = motion @ poses[j], "scene"
    t3 = time.perf_counter()
    timings["pnp"] = t3 - t2
    timings["total"] = t3 - t0
    return MatchPrediction(pred, source, counts, own_inl, motion, scene_inl, timings, essentials, (a_prev, a_cur))


@dataclass(frozen=True, eq=False)
class _Keyframe:
    features: FrameFeatures
    poses: dict[int, Pose]  # track id → cam_from_obj in this frame, of the tracks that were good in it
    points: np.ndarray | None = None  # scene_rigid: the map, (len(features), 3) camera-frame points, NaN: none
    carried: dict[int, Pose] = field(default_factory=dict)  # scene_rigid: tracks not good here, moved by the camera


class MatchPredictor:
    """The state of the match prediction across frames: each frame's features, detected once, and the frames that
    still anchor a track (*keyframes*).

    A keyframe is a frame with the poses of the tracks that were good in it. Each track is predicted from the
    keyframe of its last good frame — the previous frame while it tracks well; after bad frames (an object hidden,
    a frame whose matches failed) the last frame where its pose was right, so that one bad frame does not anchor
    the next ones on a wrong pose. Every track with a pose in that keyframe is rendered (they hide each other) and,
    with ``scene_rigid``, adds its matches to the camera motion; a new keyframe then also gets the map of
    :mod:`meshpose.track.scene_map`: its matches with the keyframe it was predicted from, triangulated with the
    camera motion its refined objects agree on.

    Args:
        config: options of the matching.
        scene_rigid: see :func:`predict_from_matches`.
        seed: RANSAC seed.
    """

    def __init__(self, config: MatchConfig | None = None, *, scene_rigid: bool = False, seed: int = 0) -> None:
        self.config = config or MatchConfig()
        self.scene_rigid = scene_rigid
        self.seed = seed
        self._keys: dict[float, _Keyframe] = {}
        self._current: tuple[float, FrameFeatures] | None = None
        self._found: dict[float, MatchPrediction] = {}  # the observed frame's predictions, by keyframe
        self._camera: Camera | None = None

    def reset(self) -> None:
        """Forget every frame."""
        self._keys, self._current, self._found = {}, None, {}

    @property
    def keyframes(self) -> list[float]:
        """The times of the kept frames."""
        return sorted(self._keys)

    def observe(self, rgb: np.ndarray, time_: float) -> FrameFeatures:
        """Detect the features of the frame at ``time_`` (kept until :meth:`commit`)."""
        feats = detect_features(rgb, self.config)
        self._current, self._found = (float(time_), feats), {}
        return feats

    def predict(
        self, camera: Camera, models: dict[int, ObjectModel], anchors: dict[int, float]
    ) -> dict[int, tuple[Pose, PredictionSource]]:
        """Predict tracks in the observed frame from their keyframes.

        Args:
            camera: the camera of the frames.
            models: every track's object, by track id.
            anchors: the tracks to predict: track id → time of its last good frame.

        Returns:
            ``{track_id: (cam_from_obj, source)}`` of the tracks that got a prediction.
        """
        if self._current is None:
            return {}
        self._camera = camera
        t_cur = self._current[0]
        groups: dict[float, list[int]] = {}
        for k, a in anchors.items():
            if self.scene_rigid:  # the latest keyframe that holds the track, carried by the camera or not
                held = [b for b, f in self._keys.items() if b < t_cur and (k in f.poses or k in f.carried)]
                a = max(held, default=a)
            key = self._keys.get(a)
            if key is not None and a < t_cur and (k in key.poses or k in key.carried):
                groups.setdefault(a, []).append(k)
        out: dict[int, tuple[Pose, PredictionSource]] = {}
        for a in sorted(groups, reverse=True):
            self._predict_from(a, groups[a], models, camera, out)
        if self.scene_rigid:  # no camera motion from the latest keyframe: older ones, newest first
            older = [b for b in sorted(self._keys, reverse=True) if b < t_cur and b not in self._found]
            for b in older[: self.config.retry_keyframes]:
                key = self._keys[b]
                todo = [k for k in anchors if k not in out and (k in key.poses or k in key.carried)]
                if todo:
                    self._predict_from(b, todo, models, camera, out)
        return out

    def _predict_from(
        self,
        a: float,
        tracks: list[int],
        models: dict[int, ObjectModel],
        camera: Camera,
        out: dict[int, tuple[Pose, PredictionSource]],
    ) -> None:
        """Predict ``tracks`` from the keyframe at ``a`` into ``out`` (the keyframe's good tracks are rendered)."""
        assert self._current is not None
        key = self._keys[a]
        ids = [k for k in key.poses if k in models]
        res = predict_from_matches(
            key.features,
            self._current[1],
            camera,
            [models[k] for k in ids],
            Pose.stack([key.poses[k] for k in ids]) if ids else Pose.identity((0,)),
            scene_rigid=self.scene_rigid,
            config=self.config,
            seed=self.seed,
            prev_points=key.points,
        )
        self._found[a] = res
        for k, pose, src in zip(ids, res.poses, res.source, strict=True):
            if pose is not None and k in tracks:
                out[k] = (pose, src)
        for k in tracks:
            if k in key.carried and res.scene_motion is not None:
                out[k] = (res.scene_motion @ key.carried[k], "scene")

    def unscaled(self, track_ids: Sequence[int]) -> tuple[list[EssentialMotion], dict[int, Pose]] | None:
        """With ``scene_rigid``: the motions up to scale from the latest keyframe of the observed frame's
        predictions that had any, and the poses it holds of ``track_ids`` (good or carried) — for a frame where
        nothing fixed the motion's scale. ``None`` without one."""
        for a in sorted(self._found, reverse=True):
            res, key = self._found[a], self._keys.get(a)
            if key is None or not res.essentials:
                continue
            poses = {k: key.poses.get(k, key.carried.get(k)) for k in track_ids}
            held = {k: p for k, p in poses.items() if p is not None}
            if held:
                return res.essentials, held
        return None

    def commit(self, good: dict[int, Pose], keep: set[float], carried: dict[int, Pose] | None = None) -> None:
        """Make the observed frame a keyframe with the poses of its ``good`` tracks; drop the keyframes not in
        ``keep`` (the times tracks still anchor on). With ``scene_rigid`` the keyframe gets its map (see the class)
        and the ``carried`` poses of tracks that were not good in it but that the camera motion predicted (a still
        object the refiner lost is still where the camera motion puts it)."""
        if self._current is not None:
            t, feats = self._current
            poses = {k: p.reshape().to(torch.float64) for k, p in good.items()}
            mapped, motion, a = self._map(feats, poses) if self.scene_rigid else (None, None, None)
            moved = {k: p.reshape().to(torch.float64) for k, p in (carried or {}).items() if k not in poses}
            if motion is not None and a is not None:  # every other track the keyframe held moves with the camera
                old = self._keys[a]
                for k, p in {**old.carried, **old.poses}.items():
                    if k not in poses and k not in moved:
                        moved[k] = motion @ p
            self._keys[t] = _Keyframe(feats, poses, mapped, moved if self.scene_rigid else {})
            self._current, self._found = None, {}
        if self.scene_rigid:  # the latest few stay for a frame that the latest one does not explain
            keep = keep | set(sorted(self._keys)[-(self.config.retry_keyframes + 1) :])
        self._keys = {a: f for a, f in self._keys.items() if a in keep}

    def _map(self, feats: FrameFeatures, poses: dict[int, Pose]) -> tuple[np.ndarray | None, Pose | None, float | None]:
        """The observed frame's map points from its matches with the latest keyframe it was predicted from, with
        the camera motion between the two that best explains where the good objects' centres went
        (:func:`~meshpose.track.scene_map.best_motion`), that motion and that keyframe's time (``None``s: no
        keyframe, or no motion explains them)."""
        for a in sorted(self._found, reverse=True):
            res, key = self._found[a], self._keys.get(a)
            if key is None or res.pairs is None or self._camera is None:
                continue
            motion = best_motion(res.scene_motion, res.essentials, key.poses, poses)
            if motion is None:
                continue
            i_prev, i_cur = res.pairs
            pts, ok = triangulate(key.features.keypoints[i_prev], feats.keypoints[i_cur], motion, self._camera)
            return carry_points(len(feats), i_prev, i_cur, key.points, motion, pts, ok), motion, a
        return None, None, None
