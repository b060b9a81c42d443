"""Multi-start robust registration of an object model to its observed depth points: a pose without labels or
training (the weak targets of ``jointloss`` training and the ``register`` coarse estimator).

:func:`weak_pose` registers the object model to the observed points of one detection (camera frame, metres):

1. **Starts**: a uniform set of rotations (a Fibonacci sphere of directions × equally spaced in-plane angles,
   turned by one random rotation from ``rng``); each start's translation puts the centroid of the model points
   that face the camera (along the ray through the observed centroid) on the observed centroid, i.e. the model
   is pushed back along the viewing ray by about its radius.
2. **Coarse ICP** from every start: Open3D's legacy point-to-plane ICP with a robust (Tukey) kernel, the observed
   points registered onto the model points that face the camera, correspondences up to ``coarse_corr``
   diameters.
3. **Scoring**: ``score = fitness − violation_weight · violation``, where ``fitness`` is the share of observed
   points within ``inlier_tol`` diameters of a camera-facing model point and ``violation`` the share of
   camera-facing model points (projected into the image, where the depth is valid) that would be seen **in
   front** of the observed depth by more than ``free_space_tol`` diameters (a free-space violation: the sensor
   saw something behind them).
4. **Fine ICP** of the ``top_k`` best starts with the camera-facing set recomputed at each stage and smaller
   correspondence distances (``fine_corr``); the best score wins (:func:`register_hypotheses` returns all
   ``top_k`` refined poses, best first).

Symmetric objects give any of their equivalent poses. The camera-facing test uses the normals of the surface at
the model points (self-occlusion is ignored; it is only a cheap visible-side prior).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from scipy.spatial import cKDTree

from meshpose.geometry.projection import unproject, valid_depth
from meshpose.types import Camera, ObjectModel, Pose

__all__ = [
    "WeakLabel",
    "WeakPoseConfig",
    "detection_points",
    "free_space_depth",
    "model_cloud",
    "register_hypotheses",
    "score_pose",
    "start_rotations",
    "weak_pose",
]


@dataclass(frozen=True)
class WeakPoseConfig:
    """Settings of :func:`weak_pose` (distances are fractions of the object's diameter).

    Args:
        directions: Fibonacci-sphere view directions of the starts.
        inplane: in-plane angles per direction (``directions · inplane`` starts).
        top_k: starts refined further.
        model_points: model surface points used (a fixed subsample of ``ObjectModel.points``).
        observed_points: observed points used (a random subsample when there are more).
        coarse_observed_points: observed points used by the coarse stage (a subset of those).
        coarse_corr: largest correspondence distance of the coarse ICP.
        fine_corr: largest correspondence distances of the fine ICP stages.
        kernel_scale: Tukey kernel width / the correspondence distance.
        coarse_iterations: ICP iterations of the coarse stage.
        coarse_loose: the coarse stage ranks its results with the tolerances times this.
        fine_iterations: ICP iterations of each fine stage.
        inlier_tol: an observed point within this of the model is an inlier.
        free_space_tol: a model point more than this in front of the observed depth is a violation.
        min_inlier_tol_m: floor of ``inlier_tol`` in metres (sensor noise).
        min_free_space_tol_m: floor of ``free_space_tol`` in metres.
        violation_weight: weight of the violation share in the score.
    """

    directions: int = 60
    inplane: int = 4
    top_k: int = 10
    model_points: int = 800
    observed_points: int = 400
    coarse_observed_points: int = 400
    coarse_corr: float = 0.25
    fine_corr: tuple[float, ...] = (0.08, 0.03)
    kernel_scale: float = 0.5
    coarse_iterations: int = 15
    coarse_loose: float = 2.0
    fine_iterations: int = 30
    inlier_tol: float = 0.02
    free_space_tol: float = 0.03
    min_inlier_tol_m: float = 0.002
    min_free_space_tol_m: float = 0.004
    violation_weight: float = 1.0

    @property
    def starts(self) -> int:
        return self.directions * self.inplane

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fine_corr"] = list(self.fine_corr)
        return d


@dataclass(frozen=True, eq=False)
class WeakLabel:
    """A weak pose target of one detection.

    Args:
        pose: ``cam_from_obj``, metres.
        fitness: share of the observed points within the inlier distance of the camera-facing model surface.
        rmse: RMS distance of those inliers, metres.
        score: ``fitness − violation_weight · violation`` (higher is better).
        violation: share of the camera-facing model points in front of the observed depth.
        time_s: seconds it took.
    """

    pose: Pose
    fitness: float
    rmse: float
    score: float
    violation: float = 0.0
    time_s: float = 0.0


_CLOUDS: dict[tuple[int, int, int, int, float], tuple[np.ndarray, np.ndarray]] = {}


def model_cloud(obj: ObjectModel, n: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """A fixed subsample of the model's surface points and their outward unit normals (cached per object).

    Args:
        obj: the object.
        n: number of points (at most ``len(obj.points)``).

    Returns:
        ``(M, 3)`` float64 points, metres, and ``(M, 3)`` float64 normals, object frame.
    """
    key = (id(obj), int(obj.obj_id), int(n), len(obj.points), float(obj.diameter))
    if key not in _CLOUDS:
        pts = np.asarray(obj.points, np.float64)
        if len(pts) > n:
            pts = pts[np.random.default_rng(0).choice(len(pts), n, replace=False)]
        _, _, face = obj.mesh.nearest.on_surface(pts)
        normals = np.asarray(obj.mesh.face_normals, np.float64)[face]
        centre = pts.mean(axis=0)
        if np.mean(np.einsum("ij,ij->i", normals, pts - centre)) < 0:  # an inside-out mesh: flip
            normals = -normals
        if len(_CLOUDS) > 64:
            _CLOUDS.clear()
        _CLOUDS[key] = (pts, normals)
    return _CLOUDS[key]


def _align_to_z(a: np.ndarray) -> np.ndarray:
    """A rotation taking the unit vector ``a`` to ``+z``."""
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(a, z)
    s, c = float(np.linalg.norm(v)), float(a @ z)
    if s < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx * ((1.0 - c) / s**2)


def start_rotations(directions: int, inplane: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """About uniform rotations: each of ``directions`` Fibonacci-sphere directions of the object turned to face
    away from the camera (``+z``), times ``inplane`` equally spaced angles about the optical axis.

    Args:
        directions: number of directions (``≥ 1``).
        inplane: number of in-plane angles (``≥ 1``).
        rng: when given, the whole set is turned by one uniformly random rotation.

    Returns:
        ``(directions · inplane, 3, 3)`` float64 rotations ``cam_from_obj``.
    """
    if directions < 1 or inplane < 1:
        raise ValueError(f"directions and inplane must be ≥ 1, got {directions}, {inplane}")
    i = np.arange(directions) + 0.5
    zc = 1.0 - 2.0 * i / directions
    r = np.sqrt(np.clip(1.0 - zc**2, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), zc], axis=1)
    out = []
    for a in dirs:
        A = _align_to_z(a)
        for k in range(inplane):
            g = 2.0 * math.pi * k / inplane
            Rz = np.array([[math.cos(g), -math.sin(g), 0.0], [math.sin(g), math.cos(g), 0.0], [0.0, 0.0, 1.0]])
            out.append(Rz @ A)
    Rs = np.stack(out)
    if rng is not None:
        from scipy.spatial.transform import Rotation

        Rs = Rs @ Rotation.random(random_state=rng).as_matrix()
    return Rs


def _pixels(points_cam: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nearest pixel of each camera-frame point in front of the camera that lands inside the image.

    Returns:
        ``(keep (N,) bool, u, v)``: which points those are, and their pixel columns and rows (int64).
    """
    front = points_cam[:, 2] > 1e-6
    uv = points_cam[front] @ camera.K.T
    u = np.rint(uv[:, 0] / uv[:, 2]).astype(np.int64)
    v = np.rint(uv[:, 1] / uv[:, 2]).astype(np.int64)
    inside = (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    keep = np.zeros(len(points_cam), bool)
    keep[np.flatnonzero(front)[inside]] = True
    return keep, u[inside], v[inside]


def _depth_from_points(points_cam: np.ndarray, camera: Camera) -> np.ndarray:
    """A sparse depth image (nearest point per pixel) of points seen by ``camera``."""
    depth = np.full((camera.height, camera.width), np.inf)
    keep, u, v = _pixels(points_cam, camera)
    np.minimum.at(depth, (v, u), points_cam[keep, 2])
    depth[~np.isfinite(depth)] = 0.0
    return depth


def free_space_depth(depth: np.ndarray) -> np.ndarray:
    """The depth that the free-space test compares with: the smallest depth of each pixel's 3 × 3 neighbourhood,
    0 (unknown) where a neighbour has no depth, so that a model point projected one pixel off the object's
    silhouette is not a violation.

    Args:
        depth: ``(H, W)`` depth, metres (0 or non-finite = missing).

    Returns:
        ``(H, W)`` float32, metres.
    """
    d = np.where(valid_depth(depth), depth, 0.0).astype(np.float32)
    return cv2.erode(d, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0.0)


def score_pose(
    R: np.ndarray,
    t: np.ndarray,
    model: tuple[np.ndarray, np.ndarray],
    observed: np.ndarray,
    camera: Camera,
    free_depth: np.ndarray,
    *,
    inlier_tol: float,
    free_space_tol: float,
    spacing: float = 0.0,
    violation_weight: float = 1.0,
) -> tuple[float, float, float, float]:
    """Score of a pose (module docstring).

    An observed point is an inlier when its distance to the tangent plane of the nearest camera-facing model
    point is under ``inlier_tol`` and that point is within ``inlier_tol + spacing`` (the model is a discrete
    sample).

    Args:
        R: ``(3, 3)`` rotation ``cam_from_obj``.
        t: ``(3,)`` translation, metres.
        model: model points and normals (:func:`model_cloud`).
        observed: ``(N, 3)`` observed points, camera frame, metres.
        camera: the full image's camera.
        free_depth: ``(H, W)`` the observed depth of the full image prepared by :func:`free_space_depth`, metres
            (0 = unknown).
        inlier_tol: inlier distance, metres.
        free_space_tol: free-space tolerance, metres.
        spacing: typical distance between neighbouring model points, metres.
        violation_weight: weight of the violation share.

    Returns:
        ``(score, fitness, rmse, violation)``.
    """
    pts, normals = model
    p = pts @ R.T + t
    n = normals @ R.T
    facing = np.einsum("ij,ij->i", n, p) < 0
    if np.count_nonzero(facing) < 3:
        facing[:] = True
    vis, nvis = p[facing], n[facing]
    d, j = cKDTree(vis).query(observed)
    plane = np.abs(np.einsum("ij,ij->i", observed - vis[j], nvis[j]))
    inl = (plane < inlier_tol) & (d < inlier_tol + spacing)
    fitness = float(np.mean(inl))
    rmse = float(np.sqrt(np.mean(plane[inl] ** 2))) if inl.any() else math.inf
    keep, u, v = _pixels(vis, camera)
    obs = free_depth[v, u]
    valid = obs > 0
    zin = vis[keep, 2][valid]
    violation = float(np.mean(zin < obs[valid] - free_space_tol)) if len(zin) else 1.0
    behind = float(np.mean(vis[:, 2] <= 1e-6))  # points behind the camera are never right
    violation = max(violation, behind)
    return fitness - violation_weight * violation, fitness, rmse, violation


def _icp(
    observed: np.ndarray, target: np.ndarray, normals: np.ndarray, max_corr: float, kernel: float, iterations: int
) -> np.ndarray:
    """Robust point-to-plane ICP of ``observed`` onto ``target``: ``T`` with ``T · observed ≈ target``."""
    import open3d as o3d  # imported on first use: it takes ~2 s

    reg = o3d.pipelines.registration
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(observed))
    tgt = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(target))
    tgt.normals = o3d.utility.Vector3dVector(normals)
    estimation = reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=kernel))
    criteria = reg.ICPConvergenceCriteria(relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=iterations)
    result = reg.registration_icp(source, tgt, max_corr, np.eye(4), estimation, criteria)
    return np.asarray(result.transformation, dtype=np.float64)


def _register(
    R: np.ndarray,
    t: np.ndarray,
    model: tuple[np.ndarray, np.ndarray],
    observed: np.ndarray,
    max_corr: float,
    kernel_scale: float,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One ICP stage from ``(R, t)`` onto the camera-facing model points; the new ``(R, t)``."""
    pts, normals = model
    p = pts @ R.T + t
    n = normals @ R.T
    facing = np.einsum("ij,ij->i", n, p) < 0
    if np.count_nonzero(facing) < 10:
        facing[:] = True
    T = _icp(observed, p[facing], n[facing], max_corr, kernel_scale * max_corr, iterations)
    Ti = np.linalg.inv(T)  # model_cam ≈ T · observed, so the object seen in the observation is T⁻¹ · model_cam
    R2 = Ti[:3, :3] @ R
    u, _, vt = np.linalg.svd(R2)
    return u @ vt, Ti[:3, :3] @ t + Ti[:3, 3]


_Refined = tuple[tuple[float, float, float, float], np.ndarray, np.ndarray]


def _search(
    points_cam: np.ndarray,
    obj: ObjectModel,
    camera: Camera,
    mask: np.ndarray | None,
    depth: np.ndarray | None,
    cfg: WeakPoseConfig,
    starts: np.ndarray | None,
    rng: np.random.Generator,
) -> list[_Refined]:
    """The pose search of :func:`weak_pose`: the ``top_k`` refined starts ``((score, fitness, rmse, violation),
    R, t)`` in the order of their coarse rank (arguments as :func:`weak_pose`)."""
    obs = np.asarray(points_cam, np.float64).reshape(-1, 3)
    obs = obs[np.all(np.isfinite(obs), axis=1) & (obs[:, 2] > 0)]
    if len(obs) < 3:
        raise ValueError(f"weak_pose needs at least 3 valid observed points, got {len(obs)}")
    obs = obs[rng.permutation(len(obs))[: cfg.observed_points]]
    if depth is None:
        depth = _depth_from_points(np.asarray(points_cam, np.float64).reshape(-1, 3), camera)
        if mask is not None:
            depth = np.where(mask, depth, 0.0)
    model = model_cloud(obj, cfg.model_points)
    free_depth = free_space_depth(depth)
    spacing = math.sqrt(float(obj.mesh.area) / len(model[0]))
    diam = float(obj.diameter)
    inlier_tol = max(cfg.inlier_tol * diam, cfg.min_inlier_tol_m)
    fs_tol = max(cfg.free_space_tol * diam, cfg.min_free_space_tol_m)
    Rs = start_rotations(cfg.directions, cfg.inplane, rng) if starts is None else np.asarray(starts, np.float64)
    centroid = obs.mean(axis=0)
    ray = centroid / np.linalg.norm(centroid)
    pts, normals = model

    def score(
        R: np.ndarray, t: np.ndarray, points: np.ndarray, loose: float = 1.0
    ) -> tuple[float, float, float, float]:
        return score_pose(
            R,
            t,
            model,
            points,
            camera,
            free_depth,
            inlier_tol=inlier_tol * loose,
            free_space_tol=fs_tol * loose,
            spacing=spacing,
            violation_weight=cfg.violation_weight,
        )

    few = obs[: cfg.coarse_observed_points]  # already in random order
    coarse: list[tuple[float, np.ndarray, np.ndarray]] = []
    for R0 in Rs:
        facing = normals @ (R0.T @ ray) < 0
        vis = pts[facing] if np.count_nonzero(facing) >= 3 else pts
        t_init = centroid - R0 @ vis.mean(axis=0)
        R, t = _register(R0, t_init, model, few, cfg.coarse_corr * diam, cfg.kernel_scale, cfg.coarse_iterations)
        coarse.append((score(R, t, few, cfg.coarse_loose)[0], R, t))
    coarse.sort(key=lambda c: -c[0])
    refined: list[_Refined] = []
    for _, R, t in coarse[: max(1, cfg.top_k)]:
        for corr in cfg.fine_corr:
            R, t = _register(R, t, model, obs, corr * diam, cfg.kernel_scale, cfg.fine_iterations)
        refined.append((score(R, t, obs), R, t))
    return refined


def _label(found: _Refined, time_s: float) -> WeakLabel:
    (sc, fitness, rmse, violation), R, t = found
    return WeakLabel(
        pose=Pose(R.copy(), t.copy()),
        fitness=fitness,
        rmse=rmse,
        score=sc,
        violation=violation,
        time_s=time_s,
    )


def detection_points(
    mask: np.ndarray, depth: np.ndarray, K: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """The observed points of a detection as the search takes them: up to ``count`` distinct pixels of ``mask`` ∩
    valid depth, in the random order ``rng`` draws, back-projected (camera frame, metres; ``(≤ count, 3)`` float64).

    Args:
        mask: ``(H, W)`` bool detection mask.
        depth: ``(H, W)`` the image's depth, metres (0 or non-finite = missing).
        K: ``(3, 3)`` intrinsics.
        count: most points.
        rng: draws them (its state goes on to the search, as the weak labels' and ``register``'s seeding expects).
    """
    ys, xs = np.nonzero(mask & valid_depth(depth))
    pick = rng.permutation(len(ys))[:count]
    uv = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float64)
    z = depth[ys[pick], xs[pick]].astype(np.float64)
    return unproject(uv, z, np.array(K)).numpy()  # K copied: it may be read-only


def weak_pose(
    points_cam: np.ndarray,
    obj: ObjectModel,
    camera: Camera,
    mask: np.ndarray | None = None,
    *,
    depth: np.ndarray | None = None,
    config: WeakPoseConfig | None = None,
    starts: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> WeakLabel:
    """A rough pose of ``obj`` from its observed points by multi-start robust registration (module docstring).

    Args:
        points_cam: ``(N, 3)`` observed points of the object (its mask's depth back-projected), camera frame,
            metres; ``N ≥ 3``.
        obj: the object model.
        camera: the full image's camera.
        mask: ``(H, W)`` bool detection mask; with ``depth`` ``None``, the free-space test only trusts the mask's
            pixels (the depth there is rasterised from ``points_cam``).
        depth: ``(H, W)`` observed depth of the full image, metres (0 = missing); best for the free-space test.
        config: the settings (default :class:`WeakPoseConfig`).
        starts: ``(S, 3, 3)`` start rotations ``cam_from_obj`` (default :func:`start_rotations`).
        rng: subsamples the observed points and turns the default starts (default: seeded 0).

    Returns:
        The best-scoring :class:`WeakLabel`.

    Raises:
        ValueError: fewer than 3 finite observed points.
    """
    return register_hypotheses(points_cam, obj, camera, mask, depth=depth, config=config, starts=starts, rng=rng)[0]


def register_hypotheses(
    points_cam: np.ndarray,
    obj: ObjectModel,
    camera: Camera,
    mask: np.ndarray | None = None,
    *,
    depth: np.ndarray | None = None,
    config: WeakPoseConfig | None = None,
    starts: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> list[WeakLabel]:
    """Every pose the search of :func:`weak_pose` refined (its ``top_k`` best starts), best score first.

    The first is :func:`weak_pose`'s answer (it is this list's head). Several starts may converge
    to the same pose: the list is not de-duplicated. Arguments, units and errors as :func:`weak_pose`; each
    label's ``time_s`` is the time of the whole search.
    """
    t0 = time.perf_counter()
    cfg = config if config is not None else WeakPoseConfig()
    rng = rng if rng is not None else np.random.default_rng(0)
    found = _search(points_cam, obj, camera, mask, depth, cfg, starts, rng)
    found.sort(key=lambda f: -f[0][0])  # stable: among equal scores the first found stays first
    dt = time.perf_counter() - t0
    return [_label(f, dt) for f in found]
