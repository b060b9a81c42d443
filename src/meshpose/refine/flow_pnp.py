"""``flow-pnp``: classical dense optical flow between rendering and image, turned into a pose by PnP-RANSAC.

One outer iteration, for each object instance:

1. crop the observation around the current pose (square, centred on the projected object origin) and render every
   instance into the crop camera (colour + object coordinates + instance map);
2. estimate dense flow from the rendering to the observed crop with OpenCV's DIS, both ways; keep the pixels of
   this instance whose forward-backward flows agree;
3. each kept pixel ``p`` with rendered object point ``X(p)`` gives a 2D-3D match ``(p + flow(p), X(p))``; PnP-RANSAC
   (poselib) over them gives the new pose; with depth, the same matches lifted to 3D-3D (observed depth at
   ``p + flow(p)``) give a robust rigid fit that fixes the distance the image alone measures poorly;
4. the update is accepted only if it is plausible (enough inliers; :func:`~meshpose.refine.guards.guard_update`:
   finite, in front of the camera, a bounded step).

Stages run coarse to fine (a wide low-resolution crop, then a tight high-resolution one). Every pose the loop
visits is scored by how well its silhouette outline lies on image edges (:mod:`meshpose.refine.select`, measured in
one fixed crop per instance) and the best-scoring pose is returned, so a refinement that wanders off does not end
worse than it started. The flow is a classical one: it follows texture and silhouette edges and is at its best on
textured objects; across a large appearance gap between the rendering and a real photo it degrades (see the
benchmark notes), which is what the learned ``genflow`` preset is for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import torch

from meshpose.geometry.align import ransac_rigid
from meshpose.geometry.pnp import pnp_ransac
from meshpose.geometry.projection import unproject
from meshpose.refine.base import LazyRenderer, StageTimer, check_refine_inputs, make_result, stage_schedule
from meshpose.refine.guards import guard_update
from meshpose.refine.select import EdgeJudge, pick_by_edges
from meshpose.refine.views import CropView, gray, make_crop_view
from meshpose.render.base import Lighting, Renderer
from meshpose.types import Failure, FailureCode, ObjectModel, Observation, Pose, RefineResult

__all__ = ["FlowPnPConfig", "FlowPnPRefiner", "FlowStage"]

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class FlowStage:
    """One resolution level of the cascade.

    Args:
        size: crop side in pixels.
        padding: crop box size over the object's projected extent (larger = more context for large errors).
        iterations: outer iterations at this level.
    """

    size: int = 256
    padding: float = 1.3
    iterations: int = 2


@dataclass(frozen=True)
class FlowPnPConfig:
    """Options of the ``flow-pnp`` refiner.

    Args:
        stages: the coarse-to-fine cascade.
        flow_preset: OpenCV DIS preset (``ultrafast``, ``fast``, ``medium``).
        match_stride: sample every ``match_stride``-th pixel of the instance's rendered region, in each direction.
        fb_threshold: forward-backward flow disagreement allowed, in pixels of a 256-pixel crop (scaled).
        ransac_threshold: PnP-RANSAC inlier threshold, in pixels of a 256-pixel crop (scaled).
        min_inliers: fewer PnP inliers than this rejects the update.
        max_step_deg: an update that turns the object by more than this is rejected as implausible.
        max_step_frac: an update that moves it by more than this fraction of the diameter is rejected.
        use_depth: with depth, replace the PnP pose by a robust 3D-3D rigid fit of the lifted matches.
        depth_threshold_frac: 3D inlier distance of that fit, fraction of the diameter.
        composite: render over the observed crop (background pixels then agree exactly), rather than over black.
        lighting: shading of the rendering that is compared with the image.
        select_by_edges: return the visited pose whose outline best fits the image edges when it beats the last
            pose's fit by more than ``select_margin`` (else the last one).
        select_margin: edge-score margin (the score is in [0, 1]) a better-fitting earlier pose needs.
        converge_deg: an update smaller than this (and ``converge_frac``) ends the instance's refinement.
        converge_frac: translation part of the convergence test, fraction of the diameter.
    """

    stages: tuple[FlowStage, ...] = (FlowStage(128, 1.6, 2), FlowStage(256, 1.3, 2))
    flow_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    match_stride: int = 2
    fb_threshold: float = 2.0
    ransac_threshold: float = 2.5
    min_inliers: int = 20
    max_step_deg: float = 30.0
    max_step_frac: float = 0.5
    use_depth: bool = True
    depth_threshold_frac: float = 0.02
    composite: bool = True
    lighting: Lighting = field(default_factory=lambda: Lighting(ambient=0.6, diffuse=0.5))
    select_by_edges: bool = True
    select_margin: float = 0.05
    converge_deg: float = 0.05
    converge_frac: float = 0.0005

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("flow-pnp needs at least one stage")
        if self.flow_preset not in _DIS_PRESETS:
            raise ValueError(f"flow_preset must be one of {sorted(_DIS_PRESETS)}, got {self.flow_preset!r}")
        if any(s.size < 32 or s.padding < 1.0 or s.iterations < 0 for s in self.stages):
            raise ValueError("each stage needs size ≥ 32, padding ≥ 1 and iterations ≥ 0")


@dataclass
class _Matches:
    points2d: np.ndarray  # (M, 2) crop pixels in the observed crop
    points3d: np.ndarray  # (M, 3) object-frame points
    pixels: np.ndarray  # (M, 2) int rendered pixel (x, y)


class FlowPnPRefiner(LazyRenderer):
    """The ``flow-pnp`` preset (RGB, uses depth when present). See the module docstring."""

    name = "flow-pnp"
    modality: Literal["rgb", "rgbd"] = "rgb"
    Config = FlowPnPConfig

    def __init__(self, config: FlowPnPConfig | None = None, renderer: Renderer | None = None) -> None:
        self.config = config or FlowPnPConfig()
        self._renderer = renderer
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[self.config.flow_preset])  # type: ignore[attr-defined]

    def _schedule(self, iterations: int | None) -> list[FlowStage]:
        return stage_schedule(self.config.stages, iterations, lambda s: s.iterations)

    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        """Refine ``(N,)`` poses; see :class:`meshpose.refine.base.Refiner`."""
        cfg = self.config
        poses0 = check_refine_inputs(obs, objects, init, self.modality, self.name)
        timer = StageTimer()
        n = len(objects)
        current = [poses0[i] for i in range(n)]
        history = [poses0]
        failure: list[Failure | None] = [None] * n
        dropped = np.zeros(n, bool)  # no crop around the pose: the instance is left as it is
        converged = np.zeros(n, bool)
        inlier_ratio = np.zeros(n)
        use_depth = cfg.use_depth and obs.depth is not None

        # One fixed crop per instance (around its initial pose) in which every visited pose is scored.
        judges: list[EdgeJudge | None] = [None] * n
        visited: list[list[Pose]] = [[current[i]] for i in range(n)]
        edge_scores: list[list[float]] = [[] for _ in range(n)]
        if cfg.select_by_edges:
            with timer("score"):
                for i in range(n):
                    try:
                        judge = EdgeJudge.around(obs, poses0[i], objects[i].points)
                    except ValueError as exc:
                        failure[i] = Failure(FailureCode.BEHIND_CAMERA, f"cannot crop around the initial pose: {exc}")
                        dropped[i] = True
                        continue
                    judges[i] = judge
                    edge_scores[i].append(self._edge_score(obs, objects, poses0, i, judge))

        for it, stage in enumerate(self._schedule(iterations), start=1):
            for i in range(n):
                if converged[i] or dropped[i]:
                    continue
                poses = Pose.stack(current)
                try:
                    with timer("render"):
                        view = make_crop_view(
                            obs,
                            objects,
                            poses,
                            i,
                            size=stage.size,
                            padding=stage.padding,
                            renderer=self.renderer,
                            lighting=cfg.lighting,
                        )
                except ValueError as exc:
                    failure[i] = Failure(FailureCode.BEHIND_CAMERA, f"cannot crop around the pose: {exc}")
                    dropped[i] = True
                    continue
                with timer("flow"):
                    matches = self._matches(view, stage.size)
                if len(matches.points2d) < cfg.min_inliers:
                    msg = f"too few consistent flow matches ({len(matches.points2d)})"
                    failure[i] = Failure(FailureCode.TOO_FEW_MATCHES, msg)
                    continue
                scale = stage.size / 256.0
                with timer("pnp"):
                    res = pnp_ransac(
                        matches.points2d,
                        matches.points3d,
                        view.camera,
                        max_reprojection_error_px=cfg.ransac_threshold * scale,
                        min_inliers=cfg.min_inliers,
                    )
                if not res.success or res.pose is None:
                    failure[i] = Failure(FailureCode.SOLVER_FAILED, f"PnP failed: {res.reason}")
                    continue
                candidate = res.pose
                if use_depth:
                    with timer("rigid"):
                        candidate = self._depth_fit(view, matches, res.inliers, candidate, objects[i].diameter)
                check = guard_update(
                    current[i].R,
                    current[i].t,
                    candidate.R,
                    candidate.t,
                    diameter=objects[i].diameter,
                    max_rot_deg=cfg.max_step_deg,
                    max_trans_frac=cfg.max_step_frac,
                )
                failure[i] = check.failure
                if not check.ok:
                    continue
                current[i] = candidate
                inlier_ratio[i] = res.num_inliers / len(matches.points2d)
                if check.rot_deg < cfg.converge_deg and check.trans_m < cfg.converge_frac * objects[i].diameter:
                    converged[i] = True
                judged = judges[i]
                if judged is not None:
                    with timer("score"):
                        edge_scores[i].append(self._edge_score(obs, objects, Pose.stack(current), i, judged))
                    visited[i].append(candidate)
            step_poses = Pose.stack(current)
            history.append(step_poses)
            if callback is not None:
                callback(it, step_poses)
            if converged.all():
                break

        if cfg.select_by_edges:
            picks = [
                pick_by_edges(edge_scores[i], cfg.select_margin) if judges[i] is not None else -1 for i in range(n)
            ]
            final = Pose.stack([visited[i][picks[i]] if judges[i] is not None else current[i] for i in range(n)])
            best_score = np.array([edge_scores[i][picks[i]] if judges[i] is not None else -1.0 for i in range(n)])
            score = np.clip(best_score, 0.0, 1.0) * np.where(inlier_ratio > 0, 0.5 + 0.5 * inlier_ratio, 0.5)
        else:
            final = history[-1]
            score = inlier_ratio
            best_score = np.full(n, -1.0)
        return make_result(
            history,
            score,
            timer=timer,
            converged=converged,
            failure=failure,
            extra={"inlier_ratio": inlier_ratio, "edge_score": best_score},
            pose=final,
        )

    def _edge_score(
        self, obs: Observation, objects: Sequence[ObjectModel], poses: Pose, i: int, judge: EdgeJudge
    ) -> float:
        """Edge score of instance ``i`` at ``poses[i]`` in its judge's crop, the scene (the other instances at
        ``poses``) rendered with it so that what they hide does not count."""
        v = make_crop_view(
            obs,
            objects,
            poses,
            i,
            size=judge.crop.size,
            padding=1.0,
            renderer=self.renderer,
            lighting=self.config.lighting,
            box=judge.crop.box,
        )
        return judge.score(v.own)

    def _matches(self, view: CropView, size: int) -> _Matches:
        """Forward-backward-consistent flow matches from the instance's rendered pixels to the observed crop."""
        cfg = self.config
        own = view.own
        assert view.render is not None  # a view of make_crop_view
        rend = (view.render.rgb[0] * 255.0).astype(np.uint8)
        if cfg.composite:
            rend = np.where(view.render.mask[0][..., None], rend, view.rgb)
        g_r, g_o = gray(rend), gray(view.rgb)
        fwd = self._dis.calc(g_r, g_o, None)
        bwd = self._dis.calc(g_o, g_r, None)
        # Keep interior pixels (their object coordinates are not blends across the silhouette).
        core = cv2.erode(own.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        ys, xs = np.nonzero(core)
        keep = (ys % cfg.match_stride == 0) & (xs % cfg.match_stride == 0)
        ys, xs = ys[keep], xs[keep]
        f = fwd[ys, xs]
        q = np.stack([xs + f[:, 0], ys + f[:, 1]], 1)
        qi = np.round(q).astype(int)
        inside = (qi[:, 0] >= 0) & (qi[:, 0] < size) & (qi[:, 1] >= 0) & (qi[:, 1] < size)
        qi = np.clip(qi, 0, size - 1)
        fb = np.linalg.norm(f + bwd[qi[:, 1], qi[:, 0]], axis=1)
        ok = inside & (fb < cfg.fb_threshold * size / 256.0) & view.valid[qi[:, 1], qi[:, 0]]
        if view.mask is not None:
            ok &= view.mask[qi[:, 1], qi[:, 0]]
        pts3 = view.render.xyz[0][ys[ok], xs[ok]].astype(np.float64)
        return _Matches(q[ok].astype(np.float64), pts3, np.stack([xs[ok], ys[ok]], 1))

    def _depth_fit(self, view: CropView, m: _Matches, inliers: np.ndarray, pose: Pose, diameter: float) -> Pose:
        """Robust rigid fit of the PnP inliers lifted to 3D with the observed depth; ``pose`` if it cannot."""
        assert view.depth is not None
        qi = np.clip(np.round(m.points2d[inliers]).astype(int), 0, view.size - 1)
        z = view.depth[qi[:, 1], qi[:, 0]].astype(np.float64)
        ok = z > 0
        if ok.sum() < max(10, self.config.min_inliers // 2):
            return pose
        K = torch.tensor(view.camera.K)
        obs_pts = unproject(torch.tensor(m.points2d[inliers][ok]), torch.tensor(z[ok]), K).numpy()
        fit, _ = ransac_rigid(
            m.points3d[inliers][ok],
            obs_pts,
            threshold_m=self.config.depth_threshold_frac * diameter,
            min_inliers=max(10, self.config.min_inliers // 2),
        )
        return fit if fit is not None else pose
