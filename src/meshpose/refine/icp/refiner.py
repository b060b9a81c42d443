"""The ``icp`` refiner: the outer loop (re-render, select points, align, guard the step) and the score.

See :mod:`meshpose.refine.icp` for the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import torch

from meshpose.refine.base import LazyRenderer, RefinerError, StageTimer, check_refine_inputs, make_result
from meshpose.refine.guards import guard_update
from meshpose.refine.icp.align import (
    color_icp,
    geometric_icp,
    normalized_intensity,
    plane_fit,
    rotation_angle_deg,
    scale_motion,
)
from meshpose.refine.icp.config import ICPConfig
from meshpose.refine.icp.scene import margin_px, object_window, unproject_pixels
from meshpose.types import Camera, Failure, FailureCode, ObjectModel, Observation, Pose, RefineResult

__all__ = ["ICPRefiner"]


class ICPRefiner(LazyRenderer):
    """Render-and-compare point-to-plane ICP on depth (preset ``icp``, modality ``rgbd``).

    Args:
        config: options (default :class:`ICPConfig`).
        renderer: a :class:`~meshpose.render.base.Renderer` (default: the thread's shared GL renderer).

    Example:
        >>> from meshpose.refine.registry import make_refiner
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
        failure: list[Failure | None] = [None] * n
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
                if isinstance(outcome, Failure):
                    failure[i] = outcome.with_prefix(f"iteration {k + 1}")
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
    ) -> tuple[np.ndarray, np.ndarray, bool] | Failure:
        """One outer iteration for object ``i``: the new ``(R, t, converged)``, or why it failed."""
        cfg = self.config
        obj = objects[i]
        diameter = obj.diameter
        max_corr = rel * diameter
        assert obs.depth is not None
        with timer("render"):
            margin = margin_px(obs, obj, t[i], cfg.region_margin)
            crop = object_window(obs, obj, R[i], t[i], margin, i)
            if crop is None:
                return Failure(FailureCode.OUTSIDE_IMAGE, "the object is outside the image at its current pose")
            out = self._render(objects, R, t, crop.camera)
        with timer("points"):
            inst = out.instance[0]
            own = inst == i + 1
            n_own = int(own.sum())
            if n_own < cfg.min_points:
                msg = f"the object is not visible at its current pose ({n_own} rendered pixels in the image)"
                return Failure(FailureCode.NOT_VISIBLE, msg)
            depth_r = out.depth[0]
            d_obs = crop.depth
            assert d_obs is not None
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
            if crop.mask is not None:
                region &= crop.mask
            # Occluders: observed depth well in front of the (nearest) rendered surface.
            region &= ~(d_obs < near - cfg.occluder_margin * max_corr)
            vs, us = np.nonzero(region)
            if len(us) < cfg.min_points:
                msg = f"too few observed depth points in the region ({len(us)} < {cfg.min_points})"
                return Failure(FailureCode.NO_DEPTH, msg)
            if len(us) > cfg.max_source_points:
                keep = rng.choice(len(us), cfg.max_source_points, replace=False)
                vs, us = vs[keep], us[keep]
            K = crop.camera.K
            src = unproject_pixels(us, vs, d_obs[vs, us], K)
            tv, tu = np.nonzero(own)
            if len(tu) > cfg.max_target_points:
                keep = rng.choice(len(tu), cfg.max_target_points, replace=False)
                tv, tu = tv[keep], tu[keep]
            tgt = unproject_pixels(tu, tv, depth_r[tv, tu], K)
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
            T, fitness, rmse = geometric_icp(src, tgt, normals, max_corr, cfg)
        extra["fitness"][i].append(fitness)
        extra["inlier_rmse"][i].append(rmse)
        extra["n_source"][i].append(len(src))
        extra["n_target"][i].append(len(tgt))
        # T maps observed → rendered (centred frame). The pose update is its inverse, in the camera frame.
        if not np.all(np.isfinite(T)):
            return Failure(FailureCode.NUMERICAL, "ICP diverged (non-finite transform); kept the last good pose")
        n_corr = round(fitness * len(src))
        if n_corr < cfg.min_points:
            msg = f"ICP diverged (only {n_corr} correspondences); kept the last good pose"
            return Failure(FailureCode.TOO_FEW_MATCHES, msg)
        if cfg.damping > 0:
            # Levenberg-Marquardt-like damping of the step along weakly constrained directions: the
            # Gauss-Newton step's component along eigenvector k scaled by e_k / (e_k + damping · e_max).
            T = scale_motion(T, vec, ratios / (ratios + cfg.damping), 0.5 * diameter)
        if degenerate and cfg.color_weight > 0 and rel <= cfg.color_max_correspondence:
            src_gray = normalized_intensity(crop.rgb[vs, us].astype(np.float64).mean(1) / 255.0)
            tgt_gray = normalized_intensity(out.rgb[0][tv, tu].astype(np.float64).mean(1))
            if src_gray is not None and tgt_gray is not None:
                # Textured: the geometric step along the free directions was arbitrary (noise decides it: a
                # surface of revolution turned about its axis fits as well) and has been damped away; the
                # texture decides them, starting from the geometric fit of the constrained directions.
                with timer("color_icp"):
                    colored = color_icp(src, tgt, normals, src_gray, tgt_gray, T, max_corr, cfg)
                    accepted = False
                    if colored is not None:
                        # Keep it only if it fits the surface about as well: texture must not pull it apart.
                        fit_g, rmse_g = plane_fit(src, tgt, normals, T, max_corr)
                        fit_c, rmse_c = plane_fit(src, tgt, normals, colored, max_corr)
                        change = colored @ np.linalg.inv(T)
                        ok_step = rotation_angle_deg(change[:3, :3]) <= cfg.color_max_step_deg
                        ok_fit = fit_c >= cfg.color_min_fitness_ratio * fit_g
                        if ok_step and ok_fit and rmse_c <= cfg.color_max_rmse_ratio * rmse_g:
                            T, fitness, accepted = colored, fit_c, True
                extra["color_accepted"][i].append(accepted)
        dR = T[:3, :3].T  # the inverse, about the centroid
        dt = -dR @ T[:3, 3]
        # x ↦ dR (x − c) + c + dt applied after the current pose.
        R_new = dR @ R[i]
        t_new = dR @ (t[i] - center) + center + dt
        # The step is measured at the visible centroid (the pivot, in the object frame): it moves by dt.
        check = guard_update(
            R[i],
            t[i],
            R_new,
            t_new,
            diameter=diameter,
            max_rot_deg=cfg.max_step_rot_deg,
            max_trans_frac=cfg.max_step_trans,
            pivot=R[i].T @ (center - t[i]),
        )
        if check.failure is not None:
            return Failure(check.failure.code, f"ICP diverged ({check.failure.message}); kept the last good pose")
        small = check.rot_deg < cfg.converge_rot_deg and check.trans_m < cfg.converge_trans * diameter
        return R_new, t_new, small

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
            crop = object_window(obs, obj, R[i], t[i], 0, i)
            if crop is None or crop.depth is None:
                continue
            out = self._render(objects, R, t, crop.camera)
            own = out.instance[0] == i + 1
            d_obs = crop.depth
            valid = own & (d_obs > 0)
            if crop.mask is not None:
                valid &= crop.mask
            vs, us = np.nonzero(valid)
            if len(us) < cfg.min_points:
                continue
            tau = cfg.score_tolerance * obj.diameter
            z_r = out.depth[0][vs, us]
            z_o = d_obs[vs, us]
            K = crop.camera.K
            p_r = unproject_pixels(us, vs, z_r, K)
            p_o = unproject_pixels(us, vs, z_o, K)
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
