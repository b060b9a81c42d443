"""Preset ``icp``: point-to-plane ICP between the rendered visible surface and the observed depth (RGB-D).

Each outer iteration renders the whole scene (every object of the call at its current pose) into a crop around
one object, takes that object's visible rendered surface (camera-frame points from the rendered depth, with the
renderer's exact normals) and the observed depth points inside the predicted region, and runs Open3D's legacy
(robust, point-to-plane) ICP between the two. Objects are refined one after another, each seeing the
others' current poses. Re-rendering between outer iterations keeps the source surface the one that is visible
at the current pose; the maximum correspondence distance shrinks geometrically from coarse to fine (relative to
the object's diameter).

Region of observed points for object ``i`` (pixels of the observation):

* the rendered visible silhouette of ``i`` at its current pose, dilated by ``region_margin × diameter`` (in
  pixels at the object's depth), since the true silhouette differs from the predicted one by about the pose error;
* intersected with ``obs.mask[i]`` when masks are given;
* minus the pixels where another object of the call is rendered in front (the scene's instance map);
* minus missing depth (``0``);
* minus *occluders*: observed points more than ``occluder_margin × max-correspondence distance`` in front of the
  rendered surface (inside the silhouette) or of the nearest rendered surface (in the dilation ring). Points
  behind the surface are kept: there the object may really be further away, and the correspondence distance and
  the robust kernel reject the background.

Which cloud carries normals: the **rendered** cloud is the ICP *target* (the point-to-plane residual uses target
normals) and the **observed** cloud is the *source*. The rendered normals are exact and free (the renderer
writes them), while normals estimated from a noisy depth map with holes are noisy and wrong at depth
discontinuities, and would cost a neighbour search per point. The direction matters a second time: every
observed point looks for its nearest rendered point, so parts of the rendered surface that the camera does not
see (hidden by an unknown occluder, outside the image, missing depth) simply receive no correspondence and do
not pull the pose. Open3D returns ``T`` with ``T · observed ≈ rendered``; the pose update is therefore
``cam_from_obj ← T⁻¹ · cam_from_obj``. Both clouds are centred on the rendered centroid before ICP so that the
linearised rotation is about the object, not about the camera centre.

Degenerate geometry: point-to-plane leaves a direction free where the seen surface does not constrain it (a
surface of revolution turning about its axis, a box seen on two faces sliding along their edge, or a view where an
occluder hides the constraining part), and Open3D's undamped point-to-plane solver then takes an arbitrary, often
huge, step along it. Three measures:

* The geometric residual gets a weak point-to-point term along the surface (``tangent_weight`` ``ε``): Open3D's
  generalized-ICP estimator with target covariances ``n nᵀ + (I − n nᵀ) / ε`` built from the exact rendered normals
  and zero source covariances, i.e. the whitened residual ``(n·d, √ε·d_tangent)`` — point-to-plane along the
  normal plus a small pull along the surface, which keeps every step finite and meaningful.
  (``tangent_weight=0`` gives Open3D's plain ``TransformationEstimationPointToPlane``.)
* The step is damped along weakly constrained directions, Levenberg-Marquardt style: with ``e_k, u_k`` the
  eigen-pairs of ``Σ JᵀJ``, ``J = [(p × n) / r, n]`` (``r`` = half the diameter; twist ``[r·ω, v]``) over the
  observed part of the rendered surface, the step's component along ``u_k`` is scaled by
  ``e_k / (e_k + damping · e_max)`` — near 1 where the surface constrains the pose, near 0 along a free direction.
* Where the view is degenerate (``e_min / e_max < degenerate_conditioning``), textured, and the schedule has
  reached ``color_max_correspondence``, Open3D's coloured ICP (Park et al. 2017) continues from the damped
  geometric step on observed vs rendered intensity (each normalised to zero mean and unit spread), with a small
  ``color_weight`` so that the texture fixes the free directions while the geometry still decides the others.
  Its result replaces the geometric one only if it moves by at most ``color_max_step_deg`` and fits the surface
  about as well (fitness and point-to-plane RMSE within ``color_min_fitness_ratio`` / ``color_max_rmse_ratio``).
  Well-conditioned views skip it (faster, and free of any shading bias). An untextured surface of revolution
  keeps its rotation about the axis from ``init`` (depth cannot tell it).

Score per object, in ``[0, 1]``, computed at the returned pose from one more render: over the visible rendered
pixels with observed depth, a pixel is *occluded* if the observation lies more than ``τ = score_tolerance ×
diameter`` in front of the rendered surface, and an *inlier* if its point-to-plane residual ``|n · (p_obs −
p_render)|`` is below ``τ``. Then ``score = fitness · (1 − ½ · rmse / τ) · min(1, unoccluded / (½ visible))`` with
``fitness = inliers / unoccluded`` and ``rmse`` the inliers' root-mean-square residual: agreement of the seen
surface, its tightness, and a penalty when less than half of the predicted surface is seen (a pose pushed behind
the true object looks fully "occluded").

Failures never raise: the object outside the image or hidden at its current pose, too few observed points in
the region, or an ICP step that diverges (non-finite, too few correspondences, or a step larger than
``max_step_rot_deg`` / ``max_step_trans``) stop the refinement of that object, keep its last good pose and put a
reason into ``RefineInfo.failure``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import torch

from meshpose.geometry.projection import unproject
from meshpose.refine.base import LazyRenderer, RefinerError, StageTimer, check_refine_inputs, make_result
from meshpose.types import Camera, ObjectModel, Observation, Pose, RefineResult

__all__ = ["ICPConfig", "ICPRefiner"]

_CROP_QUANTUM = 64  # crop sides are multiples of this (few distinct framebuffer sizes for the renderer to cache)


@dataclass(frozen=True)
class ICPConfig:
    """Options of the ``icp`` preset. Distances named ``… × diameter`` are fractions of the object's diameter.

    Args:
        iterations: outer iterations (re-render + ICP) by default.
        inner_iterations: Open3D ICP iterations per outer iteration.
        max_correspondence_coarse: max correspondence distance of the first outer iteration (× diameter).
        max_correspondence_fine: that of the last outer iteration (× diameter); in between it shrinks
            geometrically.
        kernel: robust loss (Open3D) of the geometric residual: ``"tukey"``, ``"huber"`` or ``"none"`` (L2).
        kernel_scale: the kernel's ``k`` as a fraction of the current max correspondence distance.
        region_margin: dilation of the rendered silhouette (× diameter, converted to pixels at the object's depth).
        occluder_margin: observed points more than this × the current max correspondence distance in front of
            the rendered surface are taken as occluders and dropped.
        max_source_points: observed points kept for ICP (uniform random subsample).
        max_target_points: rendered points kept for ICP.
        tangent_weight: weight ``ε`` of the point-to-point term along the surface (0: plain point-to-plane).
        color_weight: weight of the intensity residual of the coloured ICP in degenerate views (0 turns the
            colour term off); intensities are normalised, so this balances ~unit intensity against metres.
        degenerate_conditioning: a view with a smaller eigenvalue ratio of the point-to-plane information
            matrix is treated as degenerate (see the module docstring).
        damping: Levenberg-Marquardt-like damping of the step along weak directions, relative to the largest
            eigenvalue (0 turns it off).
        color_max_correspondence: the coloured ICP runs once the max correspondence distance is at most this
            (× diameter): intensity gradients are local, it needs the geometric alignment first.
        color_max_step_deg: the coloured result is used only if it turns the geometric one by at most this …
        color_min_fitness_ratio: … if its fitness is at least this × the geometric one …
        color_max_rmse_ratio: … and its point-to-plane RMSE at most this × the geometric one.
        min_points: fewer observed points in the region (or ICP correspondences) is a failure.
        max_step_rot_deg: a larger rotation in one outer iteration counts as divergence.
        max_step_trans: a larger displacement of the visible surface's centroid in one outer iteration
            (× diameter) counts as divergence.
        converge_rot_deg: a step below this rotation and ``converge_trans`` counts as converged.
        converge_trans: see ``converge_rot_deg`` (× diameter).
        stop_early: stop once every object has converged in the finer half of the schedule.
        score_tolerance: inlier residual ``τ`` of the score (× diameter); set it above ~3 depth-noise sigmas.
        seed: seed of the point subsampling (results are deterministic for a given seed).
    """

    iterations: int = 6
    inner_iterations: int = 10
    max_correspondence_coarse: float = 0.3
    max_correspondence_fine: float = 0.03
    kernel: Literal["tukey", "huber", "none"] = "tukey"
    kernel_scale: float = 0.5
    region_margin: float = 0.1
    occluder_margin: float = 0.5
    max_source_points: int = 1000
    max_target_points: int = 1500
    tangent_weight: float = 0.01
    color_weight: float = 1e-4
    degenerate_conditioning: float = 0.02
    damping: float = 0.02
    color_max_correspondence: float = 0.12
    color_max_step_deg: float = 20.0
    color_min_fitness_ratio: float = 0.95
    color_max_rmse_ratio: float = 1.25
    min_points: int = 30
    max_step_rot_deg: float = 45.0
    max_step_trans: float = 0.5
    converge_rot_deg: float = 0.1
    converge_trans: float = 0.002
    stop_early: bool = True
    score_tolerance: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.inner_iterations < 1:
            raise ValueError(
                f"iterations must be ≥ 0 and inner_iterations ≥ 1, got {self.iterations}, {self.inner_iterations}"
            )
        if not (0 < self.max_correspondence_fine <= self.max_correspondence_coarse):
            raise ValueError(
                "need 0 < max_correspondence_fine ≤ max_correspondence_coarse, got "
                f"{self.max_correspondence_fine}, {self.max_correspondence_coarse}"
            )
        if self.kernel not in ("tukey", "huber", "none"):
            raise ValueError(f"kernel must be 'tukey', 'huber' or 'none', got {self.kernel!r}")
        positive = ("kernel_scale", "occluder_margin", "max_step_rot_deg", "max_step_trans", "score_tolerance")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        non_negative = (
            "region_margin",
            "converge_rot_deg",
            "converge_trans",
            "tangent_weight",
            "color_weight",
            "degenerate_conditioning",
            "damping",
            "color_max_correspondence",
            "color_max_step_deg",
            "color_min_fitness_ratio",
            "color_max_rmse_ratio",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.color_weight >= 1:
            raise ValueError(f"color_weight must be below 1, got {self.color_weight}")
        if self.min_points < 3 or self.max_source_points < self.min_points or self.max_target_points < self.min_points:
            raise ValueError("need min_points ≥ 3 and max_source_points, max_target_points ≥ min_points")


@dataclass
class _Crop:
    """An integer, scale-1 window of the observation: pixels ``[y0, y0 + h) × [x0, x0 + w)``."""

    x0: int
    y0: int
    w: int
    h: int
    camera: Camera

    def cut(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]


def _o3d() -> Any:
    import open3d as o3d  # imported on first use: it takes ~2 s

    return o3d


def _kernel(reg: Any, cfg: ICPConfig, max_corr: float) -> Any:
    k = cfg.kernel_scale * max_corr
    if cfg.kernel == "tukey":
        return reg.TukeyLoss(k=k)
    if cfg.kernel == "huber":
        return reg.HuberLoss(k=k)
    return reg.L2Loss()


def _plane_fit(
    src: np.ndarray, tgt: np.ndarray, normals: np.ndarray, T: np.ndarray, max_corr: float
) -> tuple[float, float]:
    """Share of ``T · src`` with a ``tgt`` neighbour within ``max_corr``, and their point-to-plane RMSE."""
    o3d = _o3d()
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(tgt))
    corr = np.asarray(o3d.pipelines.registration.evaluate_registration(source, target, max_corr, T).correspondence_set)
    if len(corr) == 0:
        return 0.0, math.inf
    p = src[corr[:, 0]] @ T[:3, :3].T + T[:3, 3]
    res = np.einsum("ij,ij->i", p - tgt[corr[:, 1]], normals[corr[:, 1]])
    return len(corr) / len(src), float(np.sqrt(np.mean(res**2)))


def _normalized_intensity(gray: np.ndarray) -> np.ndarray | None:
    """Intensities mapped to mean 0.5 and spread 0.2 (drops gain and offset); ``None`` for an untextured patch."""
    std = float(gray.std())
    if std < 0.02:
        return None
    return 0.5 + 0.2 * (gray - gray.mean()) / std


def _scale_motion(T: np.ndarray, basis: np.ndarray, factors: np.ndarray, radius: float) -> np.ndarray:
    """``T`` with its components along the orthonormal ``basis`` ``(6, 6)`` (columns, in ``[radius · ω, v]``
    coordinates, ``ω`` the rotation vector) multiplied by ``factors`` ``(6,)``."""
    x = np.concatenate([cv2.Rodrigues(np.ascontiguousarray(T[:3, :3]))[0][:, 0] * radius, T[:3, 3]])
    x = basis @ (factors * (basis.T @ x))
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(x[:3] / radius)[0]
    out[:3, 3] = x[3:]
    return out


def _rotation_angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(R)) - 1.0) / 2.0))))


def _unproject(us: np.ndarray, vs: np.ndarray, z: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points ``(M, 3)`` float64 of pixels ``(us, vs)`` with depth ``z`` (metres)."""
    uv = torch.from_numpy(np.stack([us, vs], -1).astype(np.float64))
    return unproject(
        uv, torch.from_numpy(z.astype(np.float64)), torch.from_numpy(np.array(K, dtype=np.float64))
    ).numpy()


class ICPRefiner(LazyRenderer):
    """Render-and-compare point-to-plane ICP on depth (preset ``icp``, modality ``rgbd``).

    Args:
        config: options (default :class:`ICPConfig`).
        renderer: a :class:`~meshpose.render.base.Renderer` (default: the thread's shared GL renderer).

    Example:
        >>> from meshpose.refine.base import make_refiner
        >>> refiner = make_refiner("icp", iterations=4)
        >>> refiner.name, refiner.modality, refiner.config.iterations
        ('icp', 'rgbd', 4)
    """

    Config: ClassVar[type[ICPConfig]] = ICPConfig
    name: str = "icp"
    modality: Literal["rgb", "rgbd"] = "rgbd"

    def __init__(self, config: ICPConfig | None = None, *, renderer: Any = None) -> None:
        self.config = config if config is not None else ICPConfig()
        self._renderer = renderer

    # ------------------------------------------------------------------------------------------------------
    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        """Refine the ``N`` poses by re-rendered point-to-plane ICP (see the module docstring).

        Args:
            obs: the observation; must have depth (metres, 0 = missing); ``obs.mask`` (N masks) limits the regions.
            objects: the ``N`` object instances.
            init: ``(N,)`` initial ``cam_from_obj`` poses.
            iterations: outer iterations (default ``config.iterations``); ``0`` only scores ``init``.
            callback: ``callback(k, poses)`` after outer iteration ``k = 1, 2, …`` (``poses == history[k]``).

        Returns:
            :class:`RefineResult` with scores in ``[0, 1]``. ``info.extra`` holds, per object and outer iteration,
            Open3D's ``fitness`` and ``inlier_rmse`` (metres), ``n_source`` / ``n_target`` points, the view's
            ``conditioning`` and whether the colour step was used (``color_accepted``, degenerate views only);
            the ``max_correspondence`` schedule (metres, per iteration and object); and the score's parts
            (``score_fitness``, ``score_rmse`` in metres, ``score_visible``), ``(N,)`` arrays.

        Raises:
            RefinerError: no depth, or inputs ``check_refine_inputs`` rejects. A refinement that goes wrong never
                raises: it is reported in ``info.failure``.
        """
        timer = StageTimer()
        poses0 = check_refine_inputs(obs, objects, init, self.modality, self.name)
        cfg = self.config
        n_iter = cfg.iterations if iterations is None else int(iterations)
        if n_iter < 0:
            raise RefinerError(f"{self.name}: iterations must be ≥ 0, got {n_iter}")
        assert obs.depth is not None  # checked above
        n = len(objects)
        R, t = (a.copy() for a in poses0.numpy())
        active = np.ones(n, dtype=bool)
        converged = np.zeros(n, dtype=bool)
        failure: list[str | None] = [None] * n
        rng = np.random.default_rng(cfg.seed)
        extra: dict[str, Any] = {
            "fitness": [[] for _ in range(n)],
            "inlier_rmse": [[] for _ in range(n)],
            "n_source": [[] for _ in range(n)],
            "n_target": [[] for _ in range(n)],
            "color_accepted": [[] for _ in range(n)],
            "conditioning": [[] for _ in range(n)],
            "max_correspondence": [],
        }
        history = [poses0]
        for k in range(n_iter):
            if not active.any():
                break
            frac = k / (n_iter - 1) if n_iter > 1 else 1.0
            rel = cfg.max_correspondence_coarse * (cfg.max_correspondence_fine / cfg.max_correspondence_coarse) ** frac
            extra["max_correspondence"].append([rel * obj.diameter for obj in objects])
            for i in range(n):
                if not active[i]:
                    continue
                outcome = self._step(obs, objects, R, t, i, rel, rng, timer, extra)
                if isinstance(outcome, str):
                    failure[i] = f"iteration {k + 1}: {outcome}"
                    active[i] = False
                    converged[i] = False
                    continue
                R[i], t[i], small = outcome
                converged[i] = small
            history.append(Pose(torch.from_numpy(R.copy()), torch.from_numpy(t.copy())))
            if callback is not None:
                callback(k + 1, history[-1])
            if cfg.stop_early and frac >= 0.5 and np.all(converged[active]) and active.any():
                break
        with timer("score"):
            score, parts = self._score(obs, objects, R, t)
        extra.update(parts)
        return make_result(history, score, timer=timer, converged=converged, failure=failure, extra=extra)

    # ------------------------------------------------------------------------------------------------------
    def _crop(self, obs: Observation, obj: ObjectModel, R: np.ndarray, t: np.ndarray, margin_px: int) -> _Crop | None:
        """A window of the image holding the object's projection plus ``margin_px``; ``None`` if it is outside."""
        cam = obs.camera
        W, H = cam.width, cam.height
        p = obj.points @ R.T + t
        z = p[:, 2]
        if np.all(z <= 1e-6):
            return None
        if np.any(z <= 1e-3 * float(np.max(z))):  # reaches to (or behind) the camera plane: take the whole image
            x0, y0, x1, y1 = 0, 0, W - 1, H - 1
        else:
            uv = (p @ cam.K[:2].T) / z[:, None]
            lo = np.floor(uv.min(0)) - margin_px - 2
            hi = np.ceil(uv.max(0)) + margin_px + 2
            if hi[0] < 0 or hi[1] < 0 or lo[0] > W - 1 or lo[1] > H - 1:
                return None
            x0, y0 = int(max(lo[0], 0)), int(max(lo[1], 0))
            x1, y1 = int(min(hi[0], W - 1)), int(min(hi[1], H - 1))
        w = min(W, -(-(x1 - x0 + 1) // _CROP_QUANTUM) * _CROP_QUANTUM)
        h = min(H, -(-(y1 - y0 + 1) // _CROP_QUANTUM) * _CROP_QUANTUM)
        x0, y0 = min(x0, W - w), min(y0, H - h)
        box = (x0 - 0.5, y0 - 0.5, x0 + w - 0.5, y0 + h - 0.5)
        return _Crop(x0, y0, w, h, cam.crop(box, w, h))

    def _margin_px(self, obs: Observation, obj: ObjectModel, t: np.ndarray) -> int:
        z = max(float(t[2]), 1e-3)
        return max(2, round(self.config.region_margin * obj.diameter * obs.camera.fx / z))

    def _render(self, objects: Sequence[ObjectModel], R: np.ndarray, t: np.ndarray, camera: Camera) -> Any:
        return self.renderer.render(list(objects), Pose(torch.from_numpy(R), torch.from_numpy(t)), camera)

    def _step(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        R: np.ndarray,
        t: np.ndarray,
        i: int,
        rel: float,
        rng: np.random.Generator,
        timer: StageTimer,
        extra: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray, bool] | str:
        """One outer iteration for object ``i``: the new ``(R, t, converged)``, or a failure reason."""
        cfg = self.config
        obj = objects[i]
        diameter = obj.diameter
        max_corr = rel * diameter
        assert obs.depth is not None
        with timer("render"):
            margin = self._margin_px(obs, obj, t[i])
            crop = self._crop(obs, obj, R[i], t[i], margin)
            if crop is None:
                return "the object is outside the image at its current pose"
            out = self._render(objects, R, t, crop.camera)
        with timer("points"):
            inst = out.instance[0]
            own = inst == i + 1
            n_own = int(own.sum())
            if n_own < cfg.min_points:
                return f"the object is not visible at its current pose ({n_own} rendered pixels in the image)"
            depth_r = out.depth[0]
            d_obs = crop.cut(obs.depth)
            # Distance of every pixel to the rendered silhouette and the depth of the nearest silhouette pixel
            # (one distance transform gives both: the dilation and, for the occluder test in the ring, the depth
            # of the surface an observed point there would belong to).
            dist, labels = cv2.distanceTransformWithLabels(
                (~own).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
            )
            depth_of_label = np.zeros(int(labels.max()) + 1, np.float32)
            depth_of_label[labels[own]] = depth_r[own]
            near = depth_of_label[labels]
            region = (dist <= margin) & (d_obs > 0) & ((inst == 0) | own)
            if obs.mask is not None:
                region &= crop.cut(obs.mask[i])
            # Occluders: observed depth well in front of the (nearest) rendered surface.
            region &= ~(d_obs < near - cfg.occluder_margin * max_corr)
            vs, us = np.nonzero(region)
            if len(us) < cfg.min_points:
                return f"too few observed depth points in the region ({len(us)} < {cfg.min_points})"
            if len(us) > cfg.max_source_points:
                keep = rng.choice(len(us), cfg.max_source_points, replace=False)
                vs, us = vs[keep], us[keep]
            K = crop.camera.K
            src = _unproject(us, vs, d_obs[vs, us], K)
            tv, tu = np.nonzero(own)
            if len(tu) > cfg.max_target_points:
                keep = rng.choice(len(tu), cfg.max_target_points, replace=False)
                tv, tu = tv[keep], tu[keep]
            tgt = _unproject(tu, tv, depth_r[tv, tu], K)
            normals = np.ascontiguousarray(out.normal[0][tv, tu], dtype=np.float64)
            center = tgt.mean(0)
            src -= center
            tgt -= center
            # Information matrix Σ JᵀJ of the point-to-plane problem, J = [(p × n) / radius, n], over the rendered
            # pixels that are observed (an unknown occluder may hide the part that constrains a direction). A
            # small eigenvalue ratio means a free direction (a surface of revolution about its axis, a box seen
            # on two faces along their edge).
            seen = (own & region)[tv, tu]
            if int(seen.sum()) < cfg.min_points:
                seen[:] = True
            J = np.concatenate([np.cross(tgt[seen], normals[seen]) / (0.5 * diameter), normals[seen]], 1)
            eig, vec = np.linalg.eigh(J.T @ J)
            ratios = eig / max(float(eig[-1]), 1e-300)
            conditioning = float(ratios[0])
            degenerate = conditioning < cfg.degenerate_conditioning
        extra["conditioning"][i].append(conditioning)
        with timer("icp"):
            T, fitness, rmse = self._geometric_icp(src, tgt, normals, max_corr, cfg)
        extra["fitness"][i].append(fitness)
        extra["inlier_rmse"][i].append(rmse)
        extra["n_source"][i].append(len(src))
        extra["n_target"][i].append(len(tgt))
        # T maps observed → rendered (centred frame). The pose update is its inverse, in the camera frame.
        if not np.all(np.isfinite(T)):
            return "ICP diverged (non-finite transform); kept the last good pose"
        n_corr = round(fitness * len(src))
        if n_corr < cfg.min_points:
            return f"ICP diverged (only {n_corr} correspondences); kept the last good pose"
        if cfg.damping > 0:
            # Levenberg-Marquardt-like damping of the step along weakly constrained directions: the
            # Gauss-Newton step's component along eigenvector k scaled by e_k / (e_k + damping · e_max).
            T = _scale_motion(T, vec, ratios / (ratios + cfg.damping), 0.5 * diameter)
        if degenerate and cfg.color_weight > 0 and rel <= cfg.color_max_correspondence:
            src_gray = _normalized_intensity(crop.cut(obs.rgb)[vs, us].astype(np.float64).mean(1) / 255.0)
            tgt_gray = _normalized_intensity(out.rgb[0][tv, tu].astype(np.float64).mean(1))
            if src_gray is not None and tgt_gray is not None:
                # Textured: the geometric step along the free directions was arbitrary (noise decides it: a
                # surface of revolution turned about its axis fits as well) and has been damped away; the
                # texture decides them, starting from the geometric fit of the constrained directions.
                with timer("color_icp"):
                    colored = self._color_icp(src, tgt, normals, src_gray, tgt_gray, T, max_corr, cfg)
                    accepted = False
                    if colored is not None:
                        # Keep it only if it fits the surface about as well: texture must not pull it apart.
                        fit_g, rmse_g = _plane_fit(src, tgt, normals, T, max_corr)
                        fit_c, rmse_c = _plane_fit(src, tgt, normals, colored, max_corr)
                        change = colored @ np.linalg.inv(T)
                        ok_step = _rotation_angle_deg(change[:3, :3]) <= cfg.color_max_step_deg
                        ok_fit = fit_c >= cfg.color_min_fitness_ratio * fit_g
                        if ok_step and ok_fit and rmse_c <= cfg.color_max_rmse_ratio * rmse_g:
                            T, fitness, accepted = colored, fit_c, True
                extra["color_accepted"][i].append(accepted)
        dR = T[:3, :3].T  # the inverse, about the centroid
        dt = -dR @ T[:3, 3]
        angle = _rotation_angle_deg(dR)
        shift = float(np.linalg.norm(dt))  # displacement of the visible centroid
        if angle > cfg.max_step_rot_deg or shift > cfg.max_step_trans * diameter:
            return f"ICP diverged (step of {angle:.1f}° / {shift / diameter:.2f}·diameter); kept the last good pose"
        # x ↦ dR (x − c) + c + dt applied after the current pose.
        R_new = dR @ R[i]
        t_new = dR @ (t[i] - center) + center + dt
        small = angle < cfg.converge_rot_deg and shift < cfg.converge_trans * diameter
        return R_new, t_new, small

    @staticmethod
    def _geometric_icp(
        src: np.ndarray, tgt: np.ndarray, normals: np.ndarray, max_corr: float, cfg: ICPConfig
    ) -> tuple[np.ndarray, float, float]:
        """Robust point-to-plane ICP, observed ``src`` → rendered ``tgt`` (with normals); ``(T, fitness, rmse)``."""
        o3d = _o3d()
        reg = o3d.pipelines.registration
        source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
        target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(tgt))
        kernel = _kernel(reg, cfg, max_corr)
        criteria = reg.ICPConvergenceCriteria(
            relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=cfg.inner_iterations
        )
        if cfg.tangent_weight > 0:
            # Point-to-plane plus a weak point-to-point term (see the module docstring).
            nn = normals[:, :, None] * normals[:, None, :]
            cov = nn + (np.eye(3) - nn) / cfg.tangent_weight
            target.covariances = o3d.utility.Matrix3dVector(np.ascontiguousarray(cov))
            source.covariances = o3d.utility.Matrix3dVector(np.zeros((len(src), 3, 3)))
            estimation = reg.TransformationEstimationForGeneralizedICP(1e-3, kernel)
            result = reg.registration_generalized_icp(source, target, max_corr, np.eye(4), estimation, criteria)
        else:
            target.normals = o3d.utility.Vector3dVector(normals)
            estimation = reg.TransformationEstimationPointToPlane(kernel)
            result = reg.registration_icp(source, target, max_corr, np.eye(4), estimation, criteria)
        return np.asarray(result.transformation, dtype=np.float64), float(result.fitness), float(result.inlier_rmse)

    @staticmethod
    def _color_icp(
        src: np.ndarray,
        tgt: np.ndarray,
        normals: np.ndarray,
        src_gray: np.ndarray,
        tgt_gray: np.ndarray,
        init: np.ndarray,
        max_corr: float,
        cfg: ICPConfig,
    ) -> np.ndarray | None:
        """Open3D coloured ICP (Park et al. 2017) from ``init`` on normalised intensities; ``None`` if it fails."""
        o3d = _o3d()
        reg = o3d.pipelines.registration
        source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
        source.colors = o3d.utility.Vector3dVector(np.repeat(src_gray[:, None], 3, 1))
        target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(tgt))
        target.normals = o3d.utility.Vector3dVector(normals)
        target.colors = o3d.utility.Vector3dVector(np.repeat(tgt_gray[:, None], 3, 1))
        estimation = reg.TransformationEstimationForColoredICP(1.0 - cfg.color_weight, reg.L2Loss())
        criteria = reg.ICPConvergenceCriteria(
            relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=cfg.inner_iterations
        )
        try:
            result = reg.registration_colored_icp(source, target, max_corr, init, estimation, criteria)
        except RuntimeError:  # Open3D raises when no correspondence is left
            return None
        T = np.asarray(result.transformation, dtype=np.float64)
        return T if np.all(np.isfinite(T)) else None

    # ------------------------------------------------------------------------------------------------------
    def _score(
        self, obs: Observation, objects: Sequence[ObjectModel], R: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Per-object score in ``[0, 1]`` at poses ``(R, t)`` and its parts (see the module docstring)."""
        cfg = self.config
        n = len(objects)
        score = np.zeros(n)
        fit = np.zeros(n)
        rmse_out = np.full(n, np.nan)
        visible = np.zeros(n)
        assert obs.depth is not None
        for i, obj in enumerate(objects):
            crop = self._crop(obs, obj, R[i], t[i], 0)
            if crop is None:
                continue
            out = self._render(objects, R, t, crop.camera)
            own = out.instance[0] == i + 1
            d_obs = crop.cut(obs.depth)
            valid = own & (d_obs > 0)
            if obs.mask is not None:
                valid &= crop.cut(obs.mask[i])
            vs, us = np.nonzero(valid)
            if len(us) < cfg.min_points:
                continue
            tau = cfg.score_tolerance * obj.diameter
            z_r = out.depth[0][vs, us]
            z_o = d_obs[vs, us]
            K = crop.camera.K
            p_r = _unproject(us, vs, z_r, K)
            p_o = _unproject(us, vs, z_o, K)
            nrm = out.normal[0][vs, us].astype(np.float64)
            res = np.abs(np.einsum("ij,ij->i", nrm, p_o - p_r))
            unoccluded = ~(z_o < z_r - tau)
            n_unocc = int(unoccluded.sum())
            inlier = unoccluded & (res < tau)
            n_in = int(inlier.sum())
            visible[i] = n_unocc / len(us)
            if n_unocc == 0 or n_in == 0:
                continue
            fit[i] = n_in / n_unocc
            rmse_out[i] = float(np.sqrt(np.mean(res[inlier] ** 2)))
            score[i] = fit[i] * (1.0 - 0.5 * rmse_out[i] / tau) * min(1.0, 2.0 * visible[i])
        parts = {"score_fitness": fit, "score_rmse": rmse_out, "score_visible": visible}
        return np.clip(score, 0.0, 1.0), parts
