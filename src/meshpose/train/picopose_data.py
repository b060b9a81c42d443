"""Training pairs of ``picopose``'s patch features, and their dense correspondences.

A pair (:func:`make_pairs`) is what ``picopose``'s stage 1 compares, from one visible instance of a synthetic
image (:class:`~meshpose.synth.SceneSampler`, cluttered scenes of generated objects):

* the **template**: the object rendered alone on black from a viewing direction drawn within
  ``view_jitter_deg`` of the query's, with the template bank's in-plane rule and framing
  (:func:`meshpose.coarse.templates.template_rotations`, :class:`~meshpose.coarse.templates.TemplateConfig`) and
  its light, cut around its silhouette (:func:`~meshpose.coarse.picopose.views.cut_templates`);
* the **query**: the instance cut around its modal mask's box (:func:`~meshpose.coarse.picopose.views.cut_query`),
  its background zeroed outside the mask with probability ``masked_probability`` (a masked detection) or kept (a
  box), and turned about the crop centre to the template's in-plane orientation up to a residual within
  ``± inplane_residual_deg`` (the estimator turns the query to the nearest of 16 rotations). The query's object
  coordinates come from the object rendered alone at its true pose into the query crop, kept where the instance
  is visible.

Correspondences (:func:`patch_xyz`, :func:`positive_pairs`): each patch (stride 8) at least ``min_cover`` on the
object gets the mean object point of its pixels; a query patch and a template patch correspond when those points
are closer than ``match_radius`` · diameter.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import roma
import torch
import torch.nn.functional as F
import torch.utils.data

from meshpose.coarse.picopose.views import cut_query, cut_templates, rotate_about_centre
from meshpose.coarse.templates import POLE_ANGLE_DEG, TemplateConfig
from meshpose.geometry.crop import mask_bbox
from meshpose.mesh import render_bounding_sphere
from meshpose.render.base import render_alone
from meshpose.synth import SyntheticSample
from meshpose.train.common import SceneStream, draw_held_out
from meshpose.train.picopose_config import PairOptions, PicoPoseTrainConfig
from meshpose.types import Camera, Detection, Pose

__all__ = [
    "PairStream",
    "collate_pairs",
    "inplane_angle",
    "make_pairs",
    "patch_xyz",
    "positive_pairs",
    "similarity_between",
    "template_pose",
    "validation_pairs",
]


def template_pose(view_dir: np.ndarray, center: np.ndarray, distance: float) -> Pose:
    """The ``cam_from_obj`` pose of a template camera at ``center + distance · view_dir`` looking at ``center``,
    with the template bank's in-plane rule (image up = the object's ``+z``, or ``+y`` near the poles).

    Args:
        view_dir: ``(3,)`` unit direction from the object centre to the camera, object frame.
        center: ``(3,)`` the centre, object frame, metres.
        distance: metres.
    """
    v = np.asarray(view_dir, np.float64) / np.linalg.norm(view_dir)
    z = -v
    up = np.array([0.0, 1.0, 0.0]) if abs(v[2]) > math.cos(math.radians(POLE_ANGLE_DEG)) else np.array([0, 0, 1.0])
    up = up - (up @ z) * z
    y = -up / np.linalg.norm(up)
    R = np.stack([np.cross(y, z), y, z])
    t = np.array([0.0, 0.0, distance]) - R @ center
    return Pose(R, t)


def _jitter(v: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector drawn uniformly from the spherical cap of half-angle ``max_deg`` around ``v``."""
    cos_max = math.cos(math.radians(max_deg))
    c = rng.uniform(cos_max, 1.0)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    a = np.cross(v, [1.0, 0.0, 0.0] if abs(v[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(v, a)
    s = math.sqrt(max(0.0, 1.0 - c * c))
    out = c * v + s * (math.cos(phi) * a + math.sin(phi) * b)
    return np.asarray(out / np.linalg.norm(out))


def _project(points: np.ndarray, pose: Pose, camera: Camera) -> np.ndarray:
    R, t = pose.numpy()
    p = points @ R.T + t
    uv = p @ camera.K.T
    return np.asarray(uv[:, :2] / uv[:, 2:3])


def inplane_angle(points: np.ndarray, pose_a: Pose, cam_a: Camera, pose_b: Pose, cam_b: Camera) -> float:
    """The in-plane rotation (degrees, counter-clockwise as seen, as :func:`rotate_about_centre` turns) that best
    aligns the projections of ``points`` in view ``a`` with those in view ``b`` (2D Procrustes, centred).

    Args:
        points: ``(P, 3)`` object points, metres.
        pose_a, cam_a: view ``a`` (``cam_from_obj``, its camera).
        pose_b, cam_b: view ``b``.
    """
    a = _project(points, pose_a, cam_a)
    b = _project(points, pose_b, cam_b)
    a = a - a.mean(0)
    b = b - b.mean(0)
    # image y points down: counter-clockwise as seen is clockwise in (u, v)
    cross = float(np.sum(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]))
    dot = float(np.sum(a * b))
    return -math.degrees(math.atan2(cross, dot))


def similarity_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The least-squares 2D similarity (rotation, isotropic scale, shift) ``b ≈ A @ [a, 1]``, ``(2, 3)`` (Umeyama's
    closed form, by roma).

    Args:
        a, b: ``(P, 2)`` corresponding points (``P ≥ 2``), e.g. one set of object points projected into two views.
    """
    R, t, scale = roma.rigid_points_registration(
        torch.from_numpy(a).double(), torch.from_numpy(b).double(), compute_scaling=True
    )
    A = np.concatenate([float(scale) * R.numpy(), t.numpy()[:, None]], 1)
    if not (np.isfinite(A).all() and float(scale) > 0):
        raise ValueError("no similarity between the point sets (degenerate points)")
    return A


def make_pairs(
    sample: SyntheticSample, rng: np.random.Generator, cfg: PairOptions, renderer: Any = None
) -> list[dict[str, Any]]:
    """Training pairs (dicts of numpy arrays) from the visible instances of one synthetic image (module docstring).

    Returns:
        Per pair: ``q_rgb`` ``(S, S, 3)`` uint8, ``q_region`` ``(S, S)`` bool (the mask, or the box for an unmasked
        query), ``q_valid`` ``(S, S)`` bool (the visible object), ``q_xyz`` ``(S, S, 3)`` float32 metres;
        ``t_rgb``, ``t_mask``, ``t_xyz`` likewise for the template; ``sim`` ``(2, 3)`` float32, the least-squares
        similarity from template pixels to (turned) query pixels of the object's points (what ``picopose``'s stage
        2 estimates); ``diameter``, ``obj_id``, ``angle_deg`` (the turn of the query), ``view_deg`` (the angle
        between the two viewing directions), ``masked``.
    """
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    cand = [i for i in range(len(sample.objects)) if sample.visib_fract[i] >= cfg.min_visib]
    rng.shuffle(cand)
    cand = cand[: cfg.max_items_per_image]
    obs = sample.observation(with_depth=False)
    tcfg = TemplateConfig(size=cfg.template_size)
    tcam = tcfg.camera()
    s = cfg.size
    keep, queries, boxes_q, t_poses, views = [], [], [], [], []
    for i in cand:
        box = mask_bbox(sample.masks_visib[i])
        if box is None:
            continue
        obj = sample.objects[i]
        det = Detection(int(sample.obj_ids[i]), box, sample.masks_visib[i])
        q_masked = cut_query(obs, det, s, cfg.padding)
        center, radius = render_bounding_sphere(obj.render_mesh)
        R, t = sample.poses[i].numpy()
        p = R @ center + t
        v_q = -R.T @ (p / np.linalg.norm(p))  # from the object centre towards the camera, object frame
        v_t = _jitter(v_q, cfg.view_jitter_deg, rng)
        keep.append(i)
        queries.append((q_masked, det))
        t_poses.append(template_pose(v_t, center, tcfg.distance(radius)))
        views.append(math.degrees(math.acos(float(np.clip(v_q @ v_t, -1.0, 1.0)))))
        boxes_q.append(q_masked.camera)
    if not keep:
        return []
    objs = [sample.objects[i] for i in keep]
    tr = render_alone(renderer, objs, Pose.stack(t_poses), [tcam] * len(keep), tcfg.lighting)
    qr = render_alone(renderer, objs, Pose.stack([sample.poses[i] for i in keep]), boxes_q, None)
    out = []
    for k, i in enumerate(keep):
        obj = objs[k]
        t_rgb = np.rint(np.clip(tr.rgb[k], 0.0, 1.0) * 255.0).astype(np.uint8)
        t_mask = np.array(tr.mask[k], bool)
        t_xyz = np.where(t_mask[..., None], tr.xyz[k], 0.0).astype(np.float32)
        tv = cut_templates(obj.obj_id, t_rgb[None], t_mask[None], t_xyz[None], tcam, t_poses[k], s, cfg.padding)
        q_masked, det = queries[k]
        masked = bool(rng.random() < cfg.masked_probability)
        if masked:
            q_rgb, q_region = q_masked.rgb, q_masked.mask
        else:
            q_box = cut_query(obs, Detection(det.obj_id, det.bbox, None), s, cfg.padding)
            q_rgb, q_region = q_box.rgb, q_box.mask
        q_valid = np.asarray(q_masked.mask, bool) & np.asarray(qr.mask[k], bool)
        q_xyz = np.where(q_valid[..., None], qr.xyz[k], 0.0).astype(np.float32)
        pts = obj.points[rng.choice(len(obj.points), size=min(256, len(obj.points)), replace=False)]
        align = inplane_angle(pts, sample.poses[i], q_masked.camera, t_poses[k], tv.cameras[0])
        angle = align + float(rng.uniform(-cfg.inplane_residual_deg, cfg.inplane_residual_deg))
        turn = cv2.getRotationMatrix2D(((s - 1) / 2.0, (s - 1) / 2.0), angle, 1.0)
        p_q = _project(pts, sample.poses[i], q_masked.camera) @ turn[:, :2].T + turn[:, 2]
        sim = similarity_between(_project(pts, t_poses[k], tv.cameras[0]), p_q)
        out.append(
            {
                "q_rgb": rotate_about_centre(np.ascontiguousarray(q_rgb), angle),
                "q_region": rotate_about_centre(np.asarray(q_region, bool), angle, nearest=True),
                "q_valid": rotate_about_centre(q_valid, angle, nearest=True),
                "q_xyz": rotate_about_centre(q_xyz, angle, nearest=True),
                "t_rgb": tv.rgb[0],
                "t_mask": tv.mask[0],
                "t_xyz": tv.xyz[0],
                "sim": sim.astype(np.float32),
                "diameter": np.float32(obj.diameter),
                "obj_id": int(sample.obj_ids[i]),
                "angle_deg": float(angle),
                "view_deg": float(views[k]),
                "masked": masked,
            }
        )
    return out


def patch_xyz(
    xyz: torch.Tensor, valid: torch.Tensor, stride: int, min_cover: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean object point of each patch's valid pixels.

    Args:
        xyz: ``(B, S, S, 3)`` object coordinates, metres.
        valid: ``(B, S, S)`` bool, where ``xyz`` holds.
        stride: patch side, pixels.
        min_cover: a patch counts when at least this share of its pixels is valid.

    Returns:
        ``(B, P, 3)`` patch points (``P = (S/stride)²``, row-major) and ``(B, P)`` bool, the patches that count.
    """
    v = valid.float()[:, None]
    cover = F.avg_pool2d(v, stride)
    mean = F.avg_pool2d(xyz.permute(0, 3, 1, 2).float() * v, stride) / cover.clamp(min=1e-6)
    return mean.flatten(2).transpose(1, 2), (cover >= min_cover).flatten(1)


def positive_pairs(
    q_pts: torch.Tensor,
    q_ok: torch.Tensor,
    t_pts: torch.Tensor,
    t_ok: torch.Tensor,
    diameter: torch.Tensor,
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which query patch corresponds to which template patch of the same pair.

    Args:
        q_pts, q_ok: ``(B, P, 3)`` / ``(B, P)`` the query's patch points (:func:`patch_xyz`).
        t_pts, t_ok: ``(B, Q, 3)`` / ``(B, Q)`` the template's.
        diameter: ``(B,)`` object diameters, metres.
        radius: correspondence radius, a share of the diameter.

    Returns:
        ``(B, P, Q)`` bool, the corresponding pairs (both patches count, points closer than ``radius · d``), and
        ``(B, P)`` long, each query patch's nearest counting template patch by object point (``-1`` when it has no
        corresponding one).
    """
    d = torch.cdist(q_pts.double(), t_pts.double())  # (B, P, Q)
    d = torch.where(t_ok[:, None, :], d, torch.full_like(d, math.inf))
    pos = (d < radius * diameter.double()[:, None, None]) & q_ok[:, :, None]
    nearest = d.argmin(-1)
    nearest = torch.where(pos.any(-1), nearest, torch.full_like(nearest, -1))
    return pos, nearest


def collate_pairs(items: list[dict[str, Any]], cfg: PicoPoseTrainConfig, stride: int = 8) -> dict[str, torch.Tensor]:
    """Stack pairs into tensors, with their patch correspondences.

    Returns:
        ``q_rgb``, ``t_rgb`` ``(B, 3, S, S)`` in [0, 1]; ``q_region`` ``(B, P)`` bool (patches of the query's
        region: mask or box, ``min_cover`` 0.5 as the estimator takes them); ``q_ok``, ``t_ok`` ``(B, P)`` bool
        (patches on the object); ``pos`` ``(B, P, P)`` bool; ``nearest`` ``(B, P)`` long; ``diameter`` ``(B,)``.
    """

    def st(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(it[key]) for it in items]))

    diameter = st("diameter").float()
    q_pts, q_ok = patch_xyz(st("q_xyz"), st("q_valid"), stride, cfg.min_cover)
    t_pts, t_ok = patch_xyz(st("t_xyz"), st("t_mask"), stride, cfg.min_cover)
    pos, nearest = positive_pairs(q_pts, q_ok, t_pts, t_ok, diameter, cfg.match_radius)
    region = F.avg_pool2d(st("q_region").float()[:, None], stride).flatten(1) >= 0.5
    return {
        "q_rgb": st("q_rgb").permute(0, 3, 1, 2).float() / 255.0,
        "t_rgb": st("t_rgb").permute(0, 3, 1, 2).float() / 255.0,
        "q_region": region | q_ok,
        "q_ok": q_ok,
        "t_ok": t_ok,
        "pos": pos,
        "nearest": nearest,
        "diameter": diameter,
    }


class PairStream(SceneStream):
    """An endless stream of training pairs from synthetic scenes of ``cfg.data`` (see
    :class:`~meshpose.train.common.SceneStream`)."""

    SALT = 0x91C0
    cfg: PairOptions

    def make(self, sample: SyntheticSample, rng: np.random.Generator) -> list[dict[str, Any]]:
        return make_pairs(sample, rng, self.cfg)


def validation_pairs(cfg: PairOptions) -> list[dict[str, Any]]:
    """``cfg.val_items`` held-out pairs of ``cfg.val_objects`` (the same for every call with one config; seed
    ``cfg.seed + 1``)."""
    return draw_held_out(cfg, cfg.val_items, cfg.scene_config(), lambda smp, rng: make_pairs(smp, rng, cfg), "pairs")
