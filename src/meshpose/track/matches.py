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
        min_scale_matches: object matches that must agree on its scale.
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
    min_scale_matches: int = 3

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
    """

    poses: list[Pose | None]
    source: list[PredictionSource]
    matches: np.ndarray
    inliers: np.ndarray
    scene_motion: Pose | None = None
    scene_inliers: int = 0
    timings: dict[str, float] = field(default_factory=dict)


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


def _reprojection_inliers(
    motion: Pose, points: np.ndarray, uv: np.ndarray, camera: Camera, threshold_px: float
) -> np.ndarray:
    """``(M,)`` bool: the ``(M, 3)`` previous-camera ``points`` moved by ``motion`` project within ``threshold_px``
    of ``uv`` ``(M, 2)`` (and lie in front of the camera)."""
    R, t = motion.numpy()
    p = points @ R.T + t
    z = p[:, 2]
    proj = p @ np.asarray(camera.K, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.linalg.norm(proj[:, :2] / proj[:, 2:] - uv, axis=1)
    return (z > 1e-6) & (err <= threshold_px)


def _epipolar_motion(
    p_prev: np.ndarray, p_cur: np.ndarray, points: np.ndarray, uv: np.ndarray, camera: Camera, cfg: MatchConfig
) -> Pose | None:
    """The camera motion ``cam_cur_from_cam_prev`` of a static scene from the essential matrix of all matches
    (``(A, 2)`` pixels in both frames; rotation and direction of travel), its scale from the object matches
    (``(M, 3)`` previous-camera points, metres, seen at ``(M, 2)`` pixels): a 1-D RANSAC over each match's own
    scale, then least squares over the agreeing ones. ``None`` when either part lacks support (an orbit-shaped
    scale prior — the camera keeps its distance to the objects' centre — was tried on LM-O: 0.5–2.5 d off)."""
    if len(p_prev) < cfg.min_epipolar or len(points) < cfg.min_scale_matches:
        return None
    K = np.asarray(camera.K, dtype=np.float64)
    a, b = np.ascontiguousarray(p_prev, np.float64), np.ascontiguousarray(p_cur, np.float64)
    try:
        E, mask = cv2.findEssentialMat(a, b, K, method=cv2.RANSAC, prob=0.999, threshold=cfg.epipolar_px)
        if E is None or E.shape[0] < 3:
            return None
        n_in, R, t, _ = cv2.recoverPose(E[:3], a, b, K, mask=mask)
    except cv2.error:
        return None
    if n_in < cfg.min_epipolar:
        return None
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64).reshape(3)
    Y = points @ R.T  # rotated, not yet translated
    xn = (uv - K[:2, 2]) / np.diag(K)[:2]  # normalised image coordinates
    # x' (Y_z + s t_z) = Y_x + s t_x  →  s (x' t_z - t_x) = Y_x - x' Y_z  (and the same for y)
    coef = np.stack([xn[:, 0] * t[2] - t[0], xn[:, 1] * t[2] - t[1]], 1)
    rhs = np.stack([Y[:, 0] - xn[:, 0] * Y[:, 2], Y[:, 1] - xn[:, 1] * Y[:, 2]], 1)
    denom = (coef**2).sum(1)
    ok = denom > 1e-12
    if ok.sum() < cfg.min_scale_matches:
        return None
    scales = (coef * rhs).sum(1)[ok] / denom[ok]
    best: np.ndarray | None = None
    for sc in scales:
        inl = _reprojection_inliers(Pose.from_matrix(_rt(R, sc * t)), points, uv, camera, cfg.reprojection_px)
        if best is None or inl.sum() > best.sum():
            best = inl
    if best is None or best.sum() < cfg.min_scale_matches:
        return None
    sel = best & (denom > 1e-12)
    scale = float((coef[sel] * rhs[sel]).sum() / max((coef[sel] ** 2).sum(), 1e-12))
    return Pose.from_matrix(_rt(R, scale * t))


def _rt(R: np.ndarray, t: np.ndarray) -> torch.Tensor:
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = torch.from_numpy(R), torch.from_numpy(t)
    return m


def _scene_motion(
    candidates: list[tuple[Pose, int]],
    own: Sequence[PnPResult | None],
    poses: Pose,
    points: np.ndarray,
    uv: np.ndarray,
    obj_of: np.ndarray,
    camera: Camera,
    cfg: MatchConfig,
) -> tuple[Pose | None, np.ndarray]:
    """The camera motion most *objects* agree on, and its inliers.

    Candidates: ``(motion, inliers it needs)`` (the pooled PnP over every object match, the epipolar motion), and
    each object's own pose turned into a camera motion (``own · prev⁻¹``). The pooled consensus alone follows the
    object with the most matches, which may be the one that moved; a candidate is scored by the objects it explains
    (at least ``own_inlier_frac`` of an object's matches), then by its inliers.
    """
    pooled = candidates[0][0] if candidates else None
    cands = list(candidates)
    for j, r in enumerate(own):
        if r is not None and r.pose is not None:
            cands.append((r.pose @ poses[j].inverse(), cfg.min_inliers))
    best: tuple[tuple[int, int], Pose, np.ndarray] | None = None
    for c, need in cands:
        inl = _reprojection_inliers(c, points, uv, camera, cfg.reprojection_px)
        if inl.sum() < need:
            continue
        objects = 0
        for j in np.unique(obj_of):
            sel = obj_of == j
            objects += int(inl[sel].sum() >= max(4.0, cfg.own_inlier_frac * sel.sum()))
        score = (objects, int(inl.sum()))
        if best is None or score > best[0]:
            best = (score, c, inl)
    if best is None:
        return None, np.zeros(len(points), bool)
    motion, inl = best[1], best[2]
    if motion is not pooled and inl.sum() >= cfg.min_inliers:  # polish it on every match it explains
        again = pnp_ransac(uv[inl], points[inl], camera, max_reprojection_error_px=cfg.reprojection_px, seed=0)
        if again.success and again.pose is not None:
            polished = _reprojection_inliers(again.pose, points, uv, camera, cfg.reprojection_px)
            if polished.sum() >= inl.sum():
                motion, inl = again.pose, polished
    return motion, inl


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
    if n == 0 or len(prev) < cfg.min_inliers or len(cur) < cfg.min_inliers or prev.detector != cur.detector:
        return MatchPrediction([None] * n, none, counts, own_inl, timings={"total": time.perf_counter() - t0})

    # 1. Which previous keypoints lie on which object, and where on it.
    from meshpose.render.gl import get_default_renderer

    small = camera.scaled(cfg.render_scale)
    out = get_default_renderer().render(list(objects), poses, small)
    sx, sy = small.width / camera.width, small.height / camera.height
    uv_small = np.stack([(prev.keypoints[:, 0] + 0.5) * sx - 0.5, (prev.keypoints[:, 1] + 0.5) * sy - 0.5], 1)
    stable = _stable_instances(out.instance[0], int(np.ceil(cfg.edge_px * cfg.render_scale)))
    ui = np.clip(np.rint(uv_small[:, 0]).astype(np.int64), 0, small.width - 1)
    vi = np.clip(np.rint(uv_small[:, 1]).astype(np.int64), 0, small.height - 1)
    owner = stable[vi, ui] - 1  # object index per previous keypoint, -1: none
    on_obj = np.flatnonzero(owner >= 0)
    t1 = time.perf_counter()
    timings["render"] = t1 - t0

    # 2. Matches of those keypoints (scene-rigid: of all keypoints) into the current frame.
    a_prev, a_cur = match_features(prev, cur, None if scene_rigid else on_obj, cfg)
    on = owner[a_prev] >= 0
    i_prev, i_cur = a_prev[on], a_cur[on]
    obj_of = owner[i_prev]
    xyz = _sample(out.xyz[0], uv_small[i_prev])  # object-frame points, metres
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
    if scene_rigid:
        R, t = poses.R.numpy()[obj_of], poses.t.numpy()[obj_of]
        x_prev_cam = np.einsum("mij,mj->mi", R, xyz) + t  # the points in the previous camera frame
        candidates: list[tuple[Pose, int]] = []
        pooled = pnp(uv_cur, x_prev_cam) if len(i_prev) >= cfg.min_inliers else None
        if pooled is not None and pooled.success and pooled.pose is not None:
            candidates.append((pooled.pose, cfg.min_inliers))
        epi = _epipolar_motion(prev.keypoints[a_prev], cur.keypoints[a_cur], x_prev_cam, uv_cur, camera, cfg)
        if epi is not None:
            candidates.append((epi, cfg.min_scale_matches))
        motion, inl = _scene_motion(candidates, own, poses, x_prev_cam, uv_cur, obj_of, camera, cfg)
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
    return MatchPrediction(pred, source, counts, own_inl, motion, scene_inl, timings)


@dataclass(frozen=True, eq=False)
class _Keyframe:
    features: FrameFeatures
    poses: dict[int, Pose]  # track id → cam_from_obj in this frame, of the tracks that were good in it


class MatchPredictor:
    """The state of the match prediction across frames: each frame's features, detected once, and the frames that
    still anchor a track (*keyframes*).

    A keyframe is a frame with the poses of the tracks that were good in it. Each track is predicted from the
    keyframe of its last good frame — the previous frame while it tracks well; after bad frames (an object hidden,
    a frame whose matches failed) the last frame where its pose was right, so that one bad frame does not anchor
    the next ones on a wrong pose. Every track with a pose in that keyframe is rendered (they hide each other) and,
    with ``scene_rigid``, adds its matches to the camera motion.

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

    def reset(self) -> None:
        """Forget every frame."""
        self._keys, self._current = {}, None

    @property
    def keyframes(self) -> list[float]:
        """The times of the kept frames."""
        return sorted(self._keys)

    def observe(self, rgb: np.ndarray, time_: float) -> FrameFeatures:
        """Detect the features of the frame at ``time_`` (kept until :meth:`commit`)."""
        feats = detect_features(rgb, self.config)
        self._current = (float(time_), feats)
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
        t_cur, cur = self._current
        groups: dict[float, list[int]] = {}
        for k, a in anchors.items():
            key = self._keys.get(a)
            if key is not None and a < t_cur and k in key.poses:
                groups.setdefault(a, []).append(k)
        out: dict[int, tuple[Pose, PredictionSource]] = {}
        for a in sorted(groups, reverse=True):
            key = self._keys[a]
            ids = [k for k in key.poses if k in models]
            res = predict_from_matches(
                key.features,
                cur,
                camera,
                [models[k] for k in ids],
                Pose.stack([key.poses[k] for k in ids]),
                scene_rigid=self.scene_rigid,
                config=self.config,
                seed=self.seed,
            )
            for k, pose, src in zip(ids, res.poses, res.source, strict=True):
                if pose is not None and k in groups[a]:
                    out[k] = (pose, src)
        return out

    def commit(self, good: dict[int, Pose], keep: set[float]) -> None:
        """Make the observed frame a keyframe with the poses of its ``good`` tracks; drop the keyframes not in
        ``keep`` (the times tracks still anchor on)."""
        if self._current is not None:
            t, feats = self._current
            self._keys[t] = _Keyframe(feats, {k: p.reshape().to(torch.float64) for k, p in good.items()})
            self._current = None
        self._keys = {a: f for a, f in self._keys.items() if a in keep}
