"""The camera motion of a still scene seen by a moving camera (``TrackerConfig.scene_rigid``), and the sparse map of
the scene's own texture that gives that motion its metric scale.

Objects without texture on a textured table (LM-O) give a tracker almost no matches on the objects — 0–7 SIFT
matches per object between two of LM-O's frames — but hundreds on the table around them. The essential matrix of
*all* matches gives the camera's rotation and its direction of travel (LM-O: median rotation error 1.7° for a
median 30° turn), never its length. The length comes from points of known depth:

* the objects' own matches, whose depth the render at their previous poses gives (too few on LM-O);
* **the map** (this module): after a frame is tracked, the camera motion between it and the keyframe it was
  predicted from is known in metres — it is the motion the refined objects agree on
  (:func:`camera_motion_consensus`) — so every match between the two frames, background included, is
  triangulated (:func:`triangulate`). The next frame's matches to those points are 2D–3D matches with metric
  depth, and PnP-RANSAC over them gives the next camera motion with its scale, as a visual odometry anchored on the
  tracked objects. Points are kept in the keyframe's camera frame; a point seen again without enough parallax to be
  triangulated anew is carried over from the older keyframe (:func:`carry_points`).

Where there is no map yet (the second frame of a sequence) the motion has a direction and no length; the tracker
then tries a few lengths and keeps the one whose refined poses score best (:func:`scaled_motions`).

Why here and not a SLAM library: what is needed is two-view triangulation and PnP on keyframes the tracker keeps
anyway (OpenCV and poselib do the geometry); a full SLAM system would bring its own map, keyframe policy and loop
closure, and no scale either without the objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import roma
import torch

from meshpose.geometry.lie import rotation_angle
from meshpose.geometry.pnp import PnPResult, pnp_ransac
from meshpose.refine.base import Refiner
from meshpose.types import Camera, ObjectModel, Observation, Pose

if TYPE_CHECKING:  # (a type only: matches imports this module)
    from meshpose.track.matches import MatchConfig

__all__ = [
    "EssentialMotion",
    "best_motion",
    "camera_motion_consensus",
    "carry_points",
    "centre_residual",
    "essential_motion",
    "length_grid",
    "motion_from_centres",
    "reprojection_inliers",
    "scaled_motions",
    "search_length",
    "triangulate",
]

#: The motion of a still scene up to scale: ``(R, t_unit, inliers)``, ``cam_cur_from_cam_prev`` with ``|t| = 1``.
EssentialMotion = tuple[np.ndarray, np.ndarray, int]


def reprojection_inliers(
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


def essential_motion(
    p_prev: np.ndarray, p_cur: np.ndarray, camera: Camera, threshold_px: float, min_inliers: int
) -> list[EssentialMotion]:
    """The camera motions up to scale that ``(A, 2)`` matched pixels of a still scene allow, likeliest first.

    First the essential matrix's (MAGSAC++, the cheirality check of ``recoverPose``). When a plane carries nearly
    all matches (a table seen from above: LM-O), the essential matrix is ambiguous — two motions explain a plane
    equally well, and on generated table scenes the essential matrix picked the wrong one (15–35° off) for about
    a third of the frame pairs — so the homography's decompositions that keep the matched points in front of both
    cameras are added (the right rotation was always among them). Empty with fewer than ``min_inliers`` inliers.
    """
    if len(p_prev) < max(min_inliers, 5):
        return []
    K = np.asarray(camera.K, dtype=np.float64)
    a, b = np.ascontiguousarray(p_prev, np.float64), np.ascontiguousarray(p_cur, np.float64)
    out: list[EssentialMotion] = []
    try:
        E, mask = cv2.findEssentialMat(a, b, K, method=cv2.USAC_MAGSAC, prob=0.999, threshold=threshold_px)
        if E is not None and E.shape[0] >= 3:
            n_in, R, t, _ = cv2.recoverPose(E[:3], a, b, K, mask=mask)
            if n_in >= min_inliers:
                t = np.asarray(t, np.float64).reshape(3)
                out.append((np.asarray(R, np.float64), t / max(float(np.linalg.norm(t)), 1e-12), int(n_in)))
        H, hmask = cv2.findHomography(a, b, cv2.USAC_MAGSAC, 2.0 * threshold_px)
    except cv2.error:
        return out
    if H is None or hmask is None:
        return out
    inl = hmask.ravel().astype(bool)
    n_h = int(inl.sum())
    if n_h < min_inliers or n_h < 0.8 * len(a):  # not a plane's matches
        return out
    _, Rs, ts, ns = cv2.decomposeHomographyMat(H, K)
    keep = cv2.filterHomographyDecompByVisibleRefpoints(
        Rs, ns, a[inl].reshape(-1, 1, 2).astype(np.float32), b[inl].reshape(-1, 1, 2).astype(np.float32)
    )
    for i in [] if keep is None else np.asarray(keep).ravel():
        R, t = np.asarray(Rs[int(i)], np.float64), np.asarray(ts[int(i)], np.float64).reshape(3)
        if np.linalg.norm(t) < 1e-9:
            continue
        new = all(float(rotation_angle(torch.from_numpy(R), torch.from_numpy(o[0]))) > math.radians(2.0) for o in out)
        if new:
            out.append((R, t / float(np.linalg.norm(t)), n_h))
    return out


def metric_scale(
    essential: EssentialMotion, points: np.ndarray, uv: np.ndarray, camera: Camera, cfg: MatchConfig
) -> Pose | None:
    """The essential motion's length from ``(M, 3)`` previous-camera points of known depth (metres) seen at
    ``(M, 2)`` pixels: a 1-D RANSAC over each match's own scale, then least squares over the agreeing ones.
    ``None`` when fewer than ``min_scale_matches`` agree (an orbit-shaped scale prior — the camera keeps its distance
    to the objects' centre — was tried on LM-O: 0.5–2.5 d off)."""
    R, t, _ = essential
    if len(points) < cfg.min_scale_matches:
        return None
    K = np.asarray(camera.K, dtype=np.float64)
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
        inl = reprojection_inliers(Pose(R, sc * t), points, uv, camera, cfg.reprojection_px)
        if best is None or inl.sum() > best.sum():
            best = inl
    if best is None or best.sum() < cfg.min_scale_matches:
        return None
    sel = best & ok
    scale = float((coef[sel] * rhs[sel]).sum() / max((coef[sel] ** 2).sum(), 1e-12))
    return Pose(R, scale * t)


def scene_motion(
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

    Candidates: ``(motion, inliers it needs)`` (the pooled PnP over every object and map match, the epipolar
    motion), and each object's own pose turned into a camera motion (``own · prev⁻¹``). The pooled consensus alone
    follows the object with the most matches, which may be the one that moved; a candidate is scored by the objects
    it explains (at least ``own_inlier_frac`` of an object's matches), then by its inliers (map points, whose
    ``obj_of`` is -1, count there only).
    """
    pooled = candidates[0][0] if candidates else None
    cands = list(candidates)
    for j, r in enumerate(own):
        if r is not None and r.pose is not None:
            cands.append((r.pose @ poses[j].inverse(), cfg.min_inliers))
    best: tuple[tuple[int, int], Pose, np.ndarray] | None = None
    for c, need in cands:
        inl = reprojection_inliers(c, points, uv, camera, cfg.reprojection_px)
        if inl.sum() < need:
            continue
        objects = 0
        for j in np.unique(obj_of[obj_of >= 0]):
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
            polished = reprojection_inliers(again.pose, points, uv, camera, cfg.reprojection_px)
            if polished.sum() >= inl.sum():
                motion, inl = again.pose, polished
    return motion, inl


def camera_motion_consensus(
    before: dict[int, Pose], after: dict[int, Pose], *, rot_deg: float = 4.0, trans_m: float = 0.02
) -> tuple[Pose | None, int]:
    """The camera motion ``cam_after_from_cam_before`` that the objects of a still scene agree on.

    Each object seen in both frames gives one (``after_j · before_j⁻¹``); the one most others agree with (rotation
    within ``rot_deg``, translation within ``trans_m`` metres) wins and the agreeing ones are averaged (chordal
    mean of the rotations). One object alone is its own consensus only when it is the only object of both frames.

    Args:
        before: track id → ``cam_from_obj`` in the earlier frame.
        after: track id → ``cam_from_obj`` in the later frame.
        rot_deg: rotation agreement, degrees.
        trans_m: translation agreement, metres.

    Returns:
        ``(motion, supporters)``: ``motion`` is ``None`` when no two objects agree (or none is common).

    Example:
        >>> a = Pose(torch.eye(3), torch.tensor([0.0, 0.0, 1.0]))
        >>> move = Pose(torch.eye(3), torch.tensor([0.1, 0.0, 0.0]))
        >>> m, n = camera_motion_consensus({0: a, 1: a}, {0: move @ a, 1: move @ a})
        >>> n, round(float(m.t[0]), 3)
        (2, 0.1)
    """
    common = [k for k in before if k in after]
    if not common:
        return None, 0
    moves = [after[k].reshape().to(torch.float64) @ before[k].reshape().to(torch.float64).inverse() for k in common]
    R = torch.stack([m.R for m in moves])
    t = torch.stack([m.t.reshape(3) for m in moves])
    ang = torch.rad2deg(rotation_angle(R[:, None], R[None, :]))
    dist = torch.linalg.norm(t[:, None] - t[None, :], dim=-1)
    agree = (ang <= rot_deg) & (dist <= trans_m)
    support = agree.sum(1)
    best = int(torch.argmax(support))
    n = int(support[best])
    if n < 2 and len(common) > 1:
        return None, n
    sel = agree[best]
    Rm = roma.special_procrustes(R[sel].sum(0))  # the chordal mean: the nearest rotation to the sum
    return Pose(Rm, t[sel].mean(0)), n


def triangulate(
    p_prev: np.ndarray,
    p_cur: np.ndarray,
    motion: Pose,
    camera: Camera,
    *,
    max_error_px: float = 2.0,
    min_parallax_deg: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate matches of a still scene between two frames whose camera motion is known in metres.

    Args:
        p_prev: ``(M, 2)`` pixels in the earlier frame.
        p_cur: ``(M, 2)`` pixels in the later frame.
        motion: ``cam_cur_from_cam_prev``.
        camera: the camera of both frames.
        max_error_px: a point must reproject within this many pixels in both frames.
        min_parallax_deg: the two viewing rays must differ by at least this angle (a point seen along nearly
            the same ray has no reliable depth).

    Returns:
        ``(points, ok)``: ``(M, 3)`` points in the *later* camera frame (metres) and ``(M,)`` bool — in front of
        both cameras, within the reprojection error, with the parallax.
    """
    m = len(p_prev)
    if m == 0:
        return np.zeros((0, 3)), np.zeros(0, bool)
    K = np.asarray(camera.K, dtype=np.float64)
    R, t = motion.numpy()
    P0 = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
    P1 = K @ np.hstack([R, t.reshape(3, 1)])
    X = cv2.triangulatePoints(P0, P1, np.ascontiguousarray(p_prev.T, np.float64), np.ascontiguousarray(p_cur.T))
    with np.errstate(divide="ignore", invalid="ignore"):
        Xp = (X[:3] / X[3]).T  # previous camera frame
    Xc = Xp @ R.T + t
    ok = np.all(np.isfinite(Xp), axis=1) & (Xp[:, 2] > 1e-3) & (Xc[:, 2] > 1e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        e0 = np.linalg.norm((Xp @ K.T)[:, :2] / Xp[:, 2:] - p_prev, axis=1)
        e1 = np.linalg.norm((Xc @ K.T)[:, :2] / Xc[:, 2:] - p_cur, axis=1)
        c0 = -R.T @ t  # the later camera's centre in the earlier frame
        r0, r1 = Xp, Xp - c0
        cos = (r0 * r1).sum(1) / (np.linalg.norm(r0, axis=1) * np.linalg.norm(r1, axis=1))
    ok &= (e0 <= max_error_px) & (e1 <= max_error_px) & (cos <= np.cos(np.radians(min_parallax_deg)))
    return np.where(ok[:, None], Xc, np.nan), ok


def carry_points(
    n_cur: int,
    i_prev: np.ndarray,
    i_cur: np.ndarray,
    prev_points: np.ndarray | None,
    motion: Pose,
    triangulated: np.ndarray,
    ok: np.ndarray,
) -> np.ndarray:
    """The later frame's map: ``(n_cur, 3)`` points in its camera frame per keypoint (NaN: none).

    A keypoint matched (``i_prev[k] → i_cur[k]``) takes its freshly triangulated point where ``ok``, else the earlier
    keyframe's point (``prev_points``, earlier camera frame) moved by ``motion`` — so a point stays in the map
    across frames that see it with too little parallax.
    """
    out = np.full((n_cur, 3), np.nan)
    if prev_points is not None and len(i_prev):
        R, t = motion.numpy()
        old = prev_points[i_prev]
        have = np.all(np.isfinite(old), axis=1)
        out[i_cur[have]] = old[have] @ R.T + t
    out[i_cur[ok]] = triangulated[ok]
    return out


def scaled_motions(essential: EssentialMotion, lengths: Sequence[float]) -> list[Pose]:
    """The essential motion with each of the given lengths (metres) — the hypotheses a tracker refines when no point
    of known depth fixes the scale."""
    R, t, _ = essential
    return [Pose(R, float(s) * t) for s in lengths]


def search_length(
    refiner: Refiner,
    obs: Observation,
    models: dict[int, ObjectModel],
    essentials: Sequence[EssentialMotion],
    poses: dict[int, Pose],
    lengths: Sequence[float],
    *,
    objects: int = 4,
    iterations: int | None = None,
) -> dict[int, Pose]:
    """The camera's travel when nothing of known depth fixes it: try each of ``lengths`` (metres).

    Each length moves the ``objects`` nearest-looking tracks (largest diameter / depth in the keyframe) by the
    essential motion; they are refined together and scored (a failed one scores 0); the best length is then
    polished by where its refined objects' centres went (:func:`motion_from_centres`). On LM-O the refined score
    peaks at the true length when one tried length is within ~10 % of it, and a refiner started 30 % off lands
    0.35 d off or worse — hence a grid of ratio ~1.15 rather than a few lengths.

    Args:
        refiner: the tracker's refiner.
        obs: the current frame.
        models: track id → object.
        essentials: the camera motions up to scale from the keyframe to this frame (:func:`essential_motion`);
            each is searched.
        poses: track id → ``cam_from_obj`` in the keyframe (the tracks to predict).
        lengths: travel lengths to try, metres.
        objects: tracks refined per length.
        iterations: refiner iterations (``None``: its default).

    Returns:
        Track id → predicted ``cam_from_obj`` in this frame (empty when every refinement failed).
    """
    ids = sorted(poses, key=lambda k: -models[k].diameter / max(float(poses[k].t.reshape(3)[2]), 1e-3))[:objects]
    best: tuple[float, int, list[Pose]] | None = None
    motions = [(e, m) for e in essentials for m in scaled_motions(e, lengths)]
    for i, (_, motion) in enumerate(motions):
        init = Pose.stack([motion @ poses[k] for k in ids])
        try:
            res = refiner.refine(obs, [models[k] for k in ids], init, iterations=iterations)
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            continue
        scores = [float(sc) if res.info.failure[j] is None else 0.0 for j, sc in enumerate(np.asarray(res.score))]
        if best is None or float(np.mean(scores)) > best[0]:
            best = (float(np.mean(scores)), i, [res.pose[j] for j in range(len(ids))])
    if best is None:
        return {}
    essential, motion = motions[best[1]]
    polished, _ = motion_from_centres(essential, {k: poses[k] for k in ids}, dict(zip(ids, best[2], strict=True)))
    if polished is not None:
        ratio = float(polished.t.norm() / motion.t.norm().clamp_min(1e-9))
        if 1 / 1.5 < ratio < 1.5:
            motion = polished
    return {k: motion @ p for k, p in poses.items()}


def length_grid(low: float, high: float, ratio: float) -> list[float]:
    """Lengths from ``low`` to ``high`` (metres), each ``ratio`` × the one before.

    Example:
        >>> [round(x, 3) for x in length_grid(0.1, 0.2, 1.25)]
        [0.1, 0.125, 0.156, 0.195]
    """
    if not (0 < low < high and ratio > 1):
        raise ValueError(f"length_grid: need 0 < low < high and ratio > 1, got {low}, {high}, {ratio}")
    n = int(np.floor(np.log(high / low) / np.log(ratio))) + 1
    return [float(low * ratio**i) for i in range(n)]


def motion_from_centres(
    essential: EssentialMotion, before: dict[int, Pose], after: dict[int, Pose], *, tol_m: float = 0.02
) -> tuple[Pose | None, int]:
    """The essential motion's length from where the objects' *centres* are in both frames.

    With the rotation ``R`` of the essential matrix (accurate: hundreds of matches), each object seen in both frames
    gives the camera's travel ``t_j = t_after − R t_before``; its length along the essential direction is
    ``s_j = t_j · t̂``. Object centres are far better known than object rotations (a refined pose 10° off in rotation
    is often within a centimetre in position), so this fixes the scale where the objects' motions
    (:func:`camera_motion_consensus`) disagree with each other. The median of the ``s_j``, then the mean of those
    within ``tol_m`` (or 10 %) of it; ``None`` unless two objects agree (one when it is the only one).
    """
    R, tu, _ = essential
    common = [k for k in before if k in after]
    if not common:
        return None, 0
    s = []
    for k in common:
        tb = before[k].t.reshape(3).double().numpy()
        ta = after[k].t.reshape(3).double().numpy()
        s.append(float((ta - R @ tb) @ tu))
    arr = np.asarray(s)
    med = float(np.median(arr))
    agree = np.abs(arr - med) <= max(tol_m, 0.1 * abs(med))
    n = int(agree.sum())
    if med <= 0 or (n < 2 and len(common) > 1):
        return None, n
    return Pose(R, float(arr[agree].mean()) * tu), n


def centre_residual(motion: Pose, before: dict[int, Pose], after: dict[int, Pose]) -> float:
    """Median distance (metres) between where ``motion`` (``cam_after_from_cam_before``) puts the objects' centres
    and where they are in ``after`` (``inf`` without a common object)."""
    R, t = motion.numpy()
    d = [
        float(
            np.linalg.norm(after[k].t.reshape(3).double().numpy() - (R @ before[k].t.reshape(3).double().numpy() + t))
        )
        for k in before
        if k in after
    ]
    return float(np.median(d)) if d else float("inf")


def best_motion(
    predicted: Pose | None,
    essentials: Sequence[EssentialMotion],
    before: dict[int, Pose],
    after: dict[int, Pose],
    *,
    tol_m: float = 0.02,
    tol_frac: float = 0.1,
) -> Pose | None:
    """The camera motion between a keyframe and a tracked frame to triangulate the map with: of the metric motion
    the frame was predicted with (``predicted``), each essential motion scaled by the objects' centres
    (:func:`motion_from_centres`) and the objects' consensus (:func:`camera_motion_consensus`), the one whose
    :func:`centre_residual` is least — a wrong essential direction (it happens: a 5-point RANSAC on a planar table)
    or a predicted motion the refined objects disagree with shows there — and ``None`` when even that one misses
    by more than ``tol_m`` or ``tol_frac`` of its length (a map built on it would mislead the next frames)."""
    cands: list[Pose | None] = [None if predicted is None else predicted.reshape().to(torch.float64)]
    cands += [motion_from_centres(e, before, after)[0] for e in essentials]
    cands.append(camera_motion_consensus(before, after)[0])
    scored = [(centre_residual(m, before, after), m) for m in cands if m is not None]
    if not scored:
        return None
    res, motion = min(scored, key=lambda x: x[0])
    return motion if res <= max(tol_m, tol_frac * float(motion.t.norm())) else None
