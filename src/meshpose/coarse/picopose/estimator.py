"""The ``picopose`` coarse estimator: templates → (1) patch-feature matching → (2) 2D similarity → (3) local
offsets → PnP-RANSAC, after PicoPose (Liu et al., 2025), for novel objects from RGB or RGB-D.

Per detection: the query is cut square around the detection box; its patch features, at ``rotations`` in-plane
rotations, are compared with those of the object's templates (:mod:`~meshpose.coarse.templates`, rendered once per
mesh and cached on disk); each of the ``candidates`` best (template, rotation) pairs gets a similarity transform
(stage 2), the template is warped by it and matched densely to the query (stage 3), and PnP-RANSAC on the
template's object coordinates gives a pose (with depth, its distance is taken from the observed depth). The poses
are ranked by :func:`~meshpose.coarse.score.score_hypotheses` (silhouette/mask agreement and edges).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from meshpose.coarse.base import estimate_each
from meshpose.coarse.mask_fit import MaskFitConfig, fit_many_to_mask, occluder_masks
from meshpose.coarse.picopose.features import make_features
from meshpose.coarse.picopose.local import genflow_matches, local_matches, pose_from_matches, scale_to_depth
from meshpose.coarse.picopose.matching import (
    Candidate,
    fit_similarity,
    foreground_patches,
    match_templates,
    unturned,
)
from meshpose.coarse.picopose.views import TemplateViews, cut_query, cut_templates, rotate_about_centre
from meshpose.coarse.score import score_hypotheses
from meshpose.coarse.templates import TemplateConfig, load_templates, template_cache_key
from meshpose.nets.batch import load_genflow_model
from meshpose.nets.checkpoint import load_checkpoint
from meshpose.nets.simnet import METHOD as SIMNET_METHOD
from meshpose.nets.simnet import similarity_matrices, simnet_from_checkpoint
from meshpose.types import (
    Detection,
    EstimateResult,
    Failure,
    FailureCode,
    ObjectModel,
    Observation,
    Pose,
    PoseEstimate,
)

__all__ = ["PicoPoseConfig", "PicoPoseEstimator"]

log = logging.getLogger(__name__)

#: Objects whose templates and features an estimator keeps in memory (≈ 20 MB each at the defaults).
MAX_OBJECTS = 32


@dataclass(frozen=True)
class PicoPoseConfig:
    """Options of :class:`PicoPoseEstimator`.

    Args:
        templates: viewpoints of the template bank (12, 42, 162 or 642).
        template_size: side of the rendered templates, pixels (they are cut around the object afterwards).
        size: side of the object-centred crops that are matched (templates and query), pixels.
        padding: those crops' side over the object's (detection's) box side.
        rotations: in-plane rotations of the query that are matched (the features are not rotation-invariant).
        candidates: (template, rotation) pairs taken from stage 1 to stages 2-3 per detection.
        min_similarity: stage-2 correspondences need this cosine similarity (``stage2="ransac"``).
        stage2: how the 2D similarity from template to query is found: ``"learned"`` (default: regressed from the
            feature correlation by :class:`~meshpose.nets.simnet.SimilarityNet`, ``meshpose train
            picopose-similarity``) or ``"ransac"`` (RANSAC on mutual-nearest-neighbour patch matches,
            training-free). Chosen on held-out synthetic sets (docs/picopose.md): AR 0.867 → 0.897 (GL scenes of
            unseen objects), 0.892 → 0.889 (photoreal, unseen objects), 0.839 → 0.846 (photoreal, LM-O's meshes).
            The network reads the kind of stage-1 features it was trained with (``xfeat+trained``); with
            fine-tuned weights of them (``feature_weights``, e.g. ``package:lmo``) it still beat RANSAC (photoreal
            LM-O meshes: 0.866 → 0.888); another ``features`` kind runs but is logged as a mismatch.
        stage2_weights: weights spec of the learned stage 2 (``None``: the shipped ones).
        local: stage 3: ``"dis"`` (DIS flow offsets with forward-backward certainty), ``"genflow"`` (the recurrent
            flow network's offsets and certainty, :func:`~meshpose.coarse.picopose.local.genflow_matches`) or
            ``"none"`` (the warp only).
        local_weights: weights spec of the ``"genflow"`` stage 3's network (``None``: ``genflow``'s shipped ones).
        pnp_threshold_px: PnP-RANSAC inlier threshold in crop pixels.
        use_depth: with an observed depth, take the distance from it.
        cache_dir: template cache folder (default: ``$MESHPOSE_CACHE_DIR`` or the user cache).
        features: stage-1 patch features: ``"xfeat+trained"`` (default: pretrained XFeat and the network shipped
            in ``meshpose/weights/picopose``, trained here on generated objects, side by side), ``"trained"``,
            ``"xfeat"`` or ``"classical"`` (:func:`~meshpose.coarse.picopose.features.make_features`). Chosen on
            held-out generated objects (docs/picopose.md): photoreal set, AR 0.850 (xfeat+trained) / 0.832
            (trained) / 0.801 (xfeat); GL set, coarse ADD(-S) 0.773 / 0.711 / 0.727 (step-500 weights; those
            shipped now, step 1400: AR 0.860, ADD(-S) 0.773).
        feature_weights: weights spec of ``"trained"`` features (``None``: the shipped ones).
        mask_fit: the best this many hypotheses of a detection with a mask get their silhouette fitted to it
            (:func:`~meshpose.coarse.mask_fit.fit_many_to_mask`, the image's other detections counted as possible
            occluders) and are ranked again; 0: off. Box-only detections are not fitted. 3, chosen on the three
            held-out synthetic sets (docs/picopose.md): AR 0.868 fitting the best one, 0.885 the best 3, 0.888 all
            6 (at twice the fitting time of 3).
        mask_fit_config: options of that fit.
    """

    templates: int = 162
    template_size: int = 192
    size: int = 128
    padding: float = 1.2
    rotations: int = 16
    candidates: int = 6
    min_similarity: float = 0.5
    stage2: Literal["ransac", "learned"] = "learned"
    stage2_weights: str | None = None
    local: Literal["dis", "genflow", "none"] = "dis"
    local_weights: str | None = None
    pnp_threshold_px: float = 2.0
    use_depth: bool = True
    cache_dir: str | None = None
    features: str = "xfeat+trained"
    feature_weights: str | None = None
    mask_fit: int = 3
    mask_fit_config: MaskFitConfig = field(default_factory=MaskFitConfig)

    def __post_init__(self) -> None:
        if isinstance(self.mask_fit_config, dict):  # from JSON options
            object.__setattr__(self, "mask_fit_config", MaskFitConfig(**self.mask_fit_config))
        if self.mask_fit < 0:
            raise ValueError(f"picopose: mask_fit must be >= 0, got {self.mask_fit}")
        if self.stage2 not in ("ransac", "learned"):
            raise ValueError(f"picopose: stage2 must be 'ransac' or 'learned', got {self.stage2!r}")


@dataclass(frozen=True, eq=False)
class _ObjectData:
    views: TemplateViews
    feats: torch.Tensor  # (N, C, h, w)
    fg: torch.Tensor  # (N, h, w)


class PicoPoseEstimator:
    """The ``picopose`` preset (see the module docstring). RGB; uses depth when the observation has it."""

    name = "picopose"
    modality: Literal["rgb", "rgbd"] = "rgb"
    Config = PicoPoseConfig

    def __init__(self, config: PicoPoseConfig | None = None) -> None:
        self.config = config if config is not None else PicoPoseConfig()
        if self.config.local not in ("dis", "genflow", "none"):
            raise ValueError(f"picopose: local must be 'dis', 'genflow' or 'none', got {self.config.local!r}")
        self.features = make_features(self.config.features, self.config.feature_weights)
        self.simnet = None
        if self.config.stage2 == "learned":
            ck = load_checkpoint(self.config.stage2_weights, SIMNET_METHOD)
            self.simnet = simnet_from_checkpoint(ck)
            trained = ck.provenance.config.get("features")
            if trained != self.config.features:
                log.warning(
                    "picopose: the learned stage 2 was trained on %r features, used here with %r (it runs, but was "
                    "not measured so; stage2='ransac' needs no training)",
                    trained,
                    self.config.features,
                )
        self.flownet = load_genflow_model(self.config.local_weights) if self.config.local == "genflow" else None
        # Per object: its cut templates and their features, keyed by the object's *content* (the template cache key;
        # never ``id(model)``, which Python reuses once a model is freed), least recently used dropped.
        self._objects: OrderedDict[tuple[int, str], _ObjectData] = OrderedDict()

    def _object(self, model: ObjectModel) -> _ObjectData:
        cfg = self.config
        tcfg = TemplateConfig(views=cfg.templates, size=cfg.template_size)
        key = (model.obj_id, template_cache_key(model, tcfg))
        if key in self._objects:
            self._objects.move_to_end(key)
        else:
            bank = load_templates(model, tcfg, cache_dir=cfg.cache_dir)
            poses = Pose(bank.rotations.copy(), bank.translations.copy())
            views = cut_templates(
                model.obj_id, bank.rgb, bank.mask, bank.xyz, bank.camera, poses, cfg.size, cfg.padding
            )
            feats = self.features(views.rgb)
            fg = foreground_patches(views.mask, self.features.stride)
            self._objects[key] = _ObjectData(views, feats, fg)
            while len(self._objects) > MAX_OBJECTS:
                self._objects.popitem(last=False)
        return self._objects[key]

    def estimate(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        detections: Sequence[Detection],
        *,
        hypotheses: int = 1,
    ) -> list[EstimateResult]:
        """Pose hypotheses per detection, best first (see :class:`~meshpose.coarse.base.Estimator`)."""

        occluders = {id(d): o for d, o in zip(detections, occluder_masks(detections), strict=True)}

        def one(det: Detection, model: ObjectModel) -> tuple[list[PoseEstimate], Failure | None, dict[str, Any]]:
            return self._estimate_one(obs, det, model, hypotheses, occluders.get(id(det)))

        return estimate_each(obs, objects, detections, one, method=self.name)

    def _similarities(
        self, q_feats: torch.Tensor, q_fg: torch.Tensor, data: _ObjectData, cands: Sequence[Candidate]
    ) -> list[tuple[np.ndarray, int]]:
        """Stage 2 for every candidate: ``(A, n)``, the ``(2, 3)`` template → query pixel map and the number of
        agreeing patch matches (RANSAC; ``-1`` for the learned map)."""
        cfg = self.config
        if self.simnet is None:
            return [
                fit_similarity(
                    q_feats[c.rotation],
                    q_fg[c.rotation],
                    data.feats[c.template],
                    data.fg[c.template],
                    c.angle_deg,
                    cfg.size,
                    self.features.stride,
                    min_similarity=cfg.min_similarity,
                )
                for c in cands
            ]
        rot = [c.rotation for c in cands]
        tpl = [c.template for c in cands]
        with torch.no_grad():
            params = self.simnet(q_feats[rot], q_fg[rot], data.feats[tpl], data.fg[tpl])
        turned = similarity_matrices(params, cfg.size).double().numpy()  # template → turned query
        return [(unturned(A, c.angle_deg, cfg.size), -1) for c, A in zip(cands, turned, strict=True)]

    def _estimate_one(
        self, obs: Observation, det: Detection, model: ObjectModel, hypotheses: int, occluders: np.ndarray | None
    ) -> tuple[list[PoseEstimate], Failure | None, dict[str, Any]]:
        cfg = self.config
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        data = self._object(model)
        timings["templates"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        q = cut_query(obs, det, cfg.size, cfg.padding)
        angles = np.arange(cfg.rotations) * (360.0 / cfg.rotations)
        q_rgb = np.stack([rotate_about_centre(q.rgb, a) for a in angles])
        q_mask = np.stack([rotate_about_centre(q.mask, a, nearest=True) for a in angles])
        q_feats = self.features(q_rgb)
        q_fg = foreground_patches(q_mask, self.features.stride)
        cands = match_templates(q_feats, q_fg, data.feats, data.fg, angles, max(cfg.candidates, hypotheses))
        timings["stage1"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        poses: list[Pose] = []
        extras: list[dict[str, Any]] = []
        maps = self._similarities(q_feats, q_fg, data, cands)
        for c, (A, n_sim) in zip(cands, maps, strict=True):
            v = data.views
            args = (q.rgb, q.mask, v.rgb[c.template], v.mask[c.template], v.xyz[c.template], A)
            if self.flownet is not None:
                m = genflow_matches(*args, q.camera, self.flownet, threshold_px=cfg.pnp_threshold_px)
            else:
                m = local_matches(*args, method=cfg.local)
            pose, n_inl = pose_from_matches(m, q.camera, threshold_px=cfg.pnp_threshold_px)
            if pose is None and cfg.local != "none":  # the local offsets failed: the warp alone
                m = local_matches(*args, method="none")
                pose, n_inl = pose_from_matches(m, q.camera, threshold_px=cfg.pnp_threshold_px)
            if pose is None:
                continue
            if cfg.use_depth and q.depth is not None:
                pose = scale_to_depth(pose, m, q.depth)
            R, t = pose.numpy()
            if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t)) and t[2] > 0):
                continue
            poses.append(Pose(R, t))
            extras.append(
                {
                    "template": c.template,
                    "angle_deg": c.angle_deg,
                    "similarity": c.score,
                    "sim_inliers": n_sim,
                    "pnp_inliers": n_inl,
                }
            )
        timings["stage23"] = time.perf_counter() - t0
        if not poses:
            return (
                [],
                Failure(FailureCode.SOLVER_FAILED, f"no pose from {len(cands)} matched templates"),
                {"timings": timings},
            )

        t0 = time.perf_counter()
        cues: dict[str, np.ndarray] = {}
        scores = score_hypotheses(obs, model, det, poses, cues=cues)
        for i, e in enumerate(extras):
            e.update({k: float(v[i]) for k, v in cues.items()})
        timings["score"] = time.perf_counter() - t0
        order = [int(i) for i in np.argsort(-scores, kind="stable")]
        n_fit = min(cfg.mask_fit, len(order)) if det.mask is not None else 0
        if n_fit:
            t0 = time.perf_counter()
            fit_cfg = cfg.mask_fit_config
            if cfg.use_depth and obs.depth is not None:  # the distance came from the observed depth: keep it
                fit_cfg = dataclasses.replace(fit_cfg, fit_distance=False)
            fitted = order[:n_fit]  # fitted side by side, then ranked again among themselves
            fits = fit_many_to_mask(obs, model, det, [poses[i] for i in fitted], occluders=occluders, config=fit_cfg)
            for i, fit in zip(fitted, fits, strict=True):
                poses[i] = fit.pose
                extras[i].update(
                    {"mask_iou_start": fit.iou_start, "mask_iou": fit.iou, "mask_fit_renders": fit.renders}
                )
            rescored = score_hypotheses(obs, model, det, [poses[i] for i in fitted])
            for i, sc in zip(fitted, rescored, strict=True):
                scores[i] = sc
            order = sorted(fitted, key=lambda i: -scores[i]) + order[n_fit:]
            timings["mask_fit"] = time.perf_counter() - t0
        out = [PoseEstimate(model.obj_id, poses[i], float(scores[i]), 0.0, extras[i]) for i in order[:hypotheses]]
        return out, None, {"timings": timings, "candidates": len(cands)}
