"""Training pairs of the ``abstract`` descriptor network, and their pixel correspondences.

A pair (:func:`make_pairs`) comes from one visible instance of a synthetic image
(:class:`~meshpose.synth.SceneSampler`, cluttered scenes of generated objects, domain-randomised backgrounds,
lights, sensor noise and blur):

* frame **A**: the image cut to a square crop camera around the instance
  (:func:`~meshpose.geometry.crop_box_around_object` with a random padding, the centre and side jittered), its
  objects' colours changed at random with probability ``gap_probability``
  (:func:`~meshpose.train.genflow_data.appearance_gap`, as a scanned mesh's colours differ from a photo);
* frame **B**: what the ``abstract`` refiner's fusion renders: the object alone on black, drawn by
  :func:`~meshpose.render.base.render_alone` with the default :class:`~meshpose.render.base.Lighting`, with A's
  orientation (probability ``same_orientation_probability``) or a uniformly random one, at a random distance and
  off-axis position, cut the same way around it.

Correspondences: the object points of A's visible pixels of the instance (the object rendered alone at its true
pose into A's crop camera, kept where the instance is visible in the scene's instance map) projected into B; a
pixel pair is kept where B sees that point (B's depth within ``depth_tolerance`` · diameter of the point's). Up to
``positives`` of them are sampled, and ``negatives`` of B's object pixels (the hard negatives are chosen among
them in the loss).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from scipy.spatial.transform import Rotation

from meshpose.geometry import crop_box_around_object, crop_image, square_crop_box
from meshpose.render.base import Lighting, render_alone
from meshpose.synth import SyntheticSample
from meshpose.train.abstract_config import AbstractTrainConfig
from meshpose.train.common import SceneStream, draw_held_out
from meshpose.train.genflow_data import appearance_gap
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["AbstractPairStream", "collate_pairs", "correspondences", "make_pairs", "validation_pairs"]

#: a pair with fewer corresponding pixels is not used
MIN_POSITIVES = 16


def _crop_camera(
    camera: Camera, pose: Pose, obj: ObjectModel, rng: np.random.Generator, cfg: AbstractTrainConfig
) -> tuple[Camera, np.ndarray]:
    """A jittered square crop camera of side ``cfg.size`` around ``obj`` at ``pose`` and its box in ``camera``."""
    box = crop_box_around_object(camera, pose, obj.points, padding=float(rng.uniform(*cfg.padding)))
    side = float(box[2] - box[0]) * float(rng.uniform(1.0 - cfg.scale_jitter, 1.0 + cfg.scale_jitter))
    centre = 0.5 * (box[:2] + box[2:]) + rng.uniform(-cfg.center_jitter, cfg.center_jitter, 2) * side
    sq = square_crop_box(centre, side)
    return camera.crop(sq, cfg.size, cfg.size), sq


def _pose_b(pose_a: Pose, rng: np.random.Generator, cfg: AbstractTrainConfig) -> tuple[Pose, bool]:
    """B's pose: A's rotation or a uniformly random one, at a random distance and off-axis position."""
    Ra, ta = pose_a.numpy()
    same = bool(rng.random() < cfg.same_orientation_probability)
    R = np.asarray(Ra, np.float64) if same else Rotation.random(random_state=rng).as_matrix()
    z = float(np.linalg.norm(ta)) * float(rng.uniform(*cfg.distance_range))
    xy = rng.uniform(-cfg.lateral, cfg.lateral, 2) * z
    return Pose(R, np.array([xy[0], xy[1], z])), same


def correspondences(
    xyz_a: np.ndarray,
    valid_a: np.ndarray,
    pose_b: Pose,
    camera_b: Camera,
    depth_b: np.ndarray,
    mask_b: np.ndarray,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of A whose object point B sees, and where.

    Args:
        xyz_a: ``(H, W, 3)`` object points of A's pixels, metres.
        valid_a: ``(H, W)`` bool, where ``xyz_a`` holds (the instance is visible).
        pose_b: B's ``cam_from_obj``.
        camera_b: B's camera (``H × W`` as well).
        depth_b: ``(H, W)`` B's depth, metres (0: background).
        mask_b: ``(H, W)`` bool, B's object pixels.
        tolerance: a point is seen in B when B's depth at its (rounded) projection is within this, metres.

    Returns:
        ``(M,)`` int64 flat pixel indices in A, ``(M,)`` int64 flat pixel indices in B, ``(M, 3)`` float32 the
        object points.

    Example:
        >>> cam = Camera.from_fxfycxcy(10.0, 10.0, 1.5, 1.5, width=4, height=4)
        >>> pose = Pose(np.eye(3), np.array([0.0, 0.0, 1.0]))
        >>> xyz = np.zeros((4, 4, 3), np.float32); valid = np.zeros((4, 4), bool); valid[1, 2] = True
        >>> xyz[1, 2] = [0.05, -0.05, 0.0]     # projects to u = 2, v = 1
        >>> depth = np.ones((4, 4), np.float32)
        >>> a, b, p = correspondences(xyz, valid, pose, cam, depth, depth > 0, 0.01)
        >>> a.tolist(), b.tolist()
        ([6], [6])
    """
    h, w = valid_a.shape
    ys, xs = np.nonzero(valid_a)
    pts = np.asarray(xyz_a[ys, xs], np.float64)
    R, t = pose_b.numpy()
    p = pts @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)
    z = p[:, 2]
    safe = np.where(z > 1e-9, z, 1.0)
    K = camera_b.K
    u = np.rint(K[0, 0] * p[:, 0] / safe + K[0, 1] * p[:, 1] / safe + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * p[:, 1] / safe + K[1, 2]).astype(np.int64)
    ok = (z > 1e-9) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    uc, vc = np.clip(u, 0, w - 1), np.clip(v, 0, h - 1)
    ok &= mask_b[vc, uc] & (np.abs(depth_b[vc, uc] - z) < tolerance)
    return (ys * w + xs)[ok], (vc * w + uc)[ok], pts[ok].astype(np.float32)


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, *x.shape[1:]), x.dtype)
    out[: len(x)] = x[:n]
    return out


def make_pairs(
    sample: SyntheticSample, rng: np.random.Generator, cfg: AbstractTrainConfig, renderer: Any = None
) -> list[dict[str, Any]]:
    """Training pairs (dicts of numpy arrays) from the visible instances of one synthetic image (module docstring).

    Returns:
        Per pair (``S = cfg.size``, ``P = cfg.positives``, ``N = cfg.negatives``): ``a_rgb``, ``b_rgb``
        ``(S, S, 3)`` uint8; ``a_fg`` ``(S, S)`` bool (every annotated object visible in A), ``b_fg`` ``(S, S)``
        bool (B's object); ``b_xyz`` ``(S, S, 3)`` float32 B's object points (0 off the object); ``pos_a``,
        ``pos_b`` ``(P,)`` int64 flat pixel indices of corresponding pixels, ``pos_xyz`` ``(P, 3)`` float32 their
        object points, ``pos_ok`` ``(P,)`` bool (the padding is false); ``neg_b`` ``(N,)`` int64 B object pixels,
        ``neg_xyz`` ``(N, 3)``, ``neg_ok`` ``(N,)``; ``diameter`` (metres), ``obj_id``, ``same`` (B has A's
        orientation).
    """
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    cand = [i for i in range(len(sample.objects)) if sample.visib_fract[i] >= cfg.min_visib]
    rng.shuffle(cand)
    cand = cand[: cfg.max_items_per_image]
    keep, poses_b, cams_a, cams_b, boxes_a, same = [], [], [], [], [], []
    for i in cand:
        obj = sample.objects[i]
        try:
            cam_a, box_a = _crop_camera(sample.camera, sample.poses[i], obj, rng, cfg)
            pose_b, same_i = _pose_b(sample.poses[i], rng, cfg)
            cam_b, _ = _crop_camera(sample.camera, pose_b, obj, rng, cfg)
        except ValueError:  # an object at or behind the camera
            continue
        keep.append(i)
        poses_b.append(pose_b)
        cams_a.append(cam_a)
        cams_b.append(cam_b)
        boxes_a.append(box_a)
        same.append(same_i)
    if not keep:
        return []
    n, s = len(keep), cfg.size
    objs = [sample.objects[i] for i in keep]
    poses = Pose.stack([sample.poses[i] for i in keep] + poses_b)
    rend = render_alone(renderer, objs + objs, poses, cams_a + cams_b, Lighting())
    out = []
    for k, i in enumerate(keep):
        obj = objs[k]
        a_rgb, _ = crop_image(sample.rgb, sample.camera, boxes_a[k], s, s)
        a_fg, _ = crop_image(sample.instance > 0, sample.camera, boxes_a[k], s, s)
        a_inst, _ = crop_image(sample.instance == i + 1, sample.camera, boxes_a[k], s, s)
        valid_a = a_inst & np.asarray(rend.mask[k], bool)
        b_fg = np.asarray(rend.instance[n + k] == n + k + 1)
        b_depth = np.where(b_fg, rend.depth[n + k], 0.0).astype(np.float32)
        b_xyz = np.where(b_fg[..., None], rend.xyz[n + k], 0.0).astype(np.float32)
        pa, pb, pxyz = correspondences(
            rend.xyz[k], valid_a, poses_b[k], cams_b[k], b_depth, b_fg, cfg.depth_tolerance * obj.diameter
        )
        if len(pa) < MIN_POSITIVES:
            continue
        take = rng.choice(len(pa), size=min(cfg.positives, len(pa)), replace=False)
        obj_px = np.flatnonzero(b_fg)
        neg = rng.choice(obj_px, size=min(cfg.negatives, len(obj_px)), replace=False)
        if rng.random() < cfg.gap_probability:
            gap = appearance_gap(a_rgb.astype(np.float32) / 255.0, a_fg, rng)
            a_rgb = np.rint(gap * 255.0).astype(np.uint8)
        b_rgb = np.rint(np.clip(rend.rgb[n + k], 0.0, 1.0) * 255.0).astype(np.uint8)
        out.append(
            {
                "a_rgb": a_rgb,
                "a_fg": a_fg,
                "b_rgb": b_rgb,
                "b_fg": b_fg,
                "b_xyz": b_xyz,
                "pos_a": _pad(pa[take], cfg.positives),
                "pos_b": _pad(pb[take], cfg.positives),
                "pos_xyz": _pad(pxyz[take], cfg.positives),
                "pos_ok": np.arange(cfg.positives) < len(take),
                "neg_b": _pad(neg.astype(np.int64), cfg.negatives),
                "neg_xyz": _pad(b_xyz.reshape(-1, 3)[neg], cfg.negatives),
                "neg_ok": np.arange(cfg.negatives) < len(neg),
                "diameter": np.float32(obj.diameter),
                "obj_id": int(sample.obj_ids[i]),
                "same": same[k],
            }
        )
    return out


def _shrink_index(idx: torch.Tensor, size: int, factor: int) -> torch.Tensor:
    """Flat pixel indices of a ``size × size`` image → those of its ``factor``-times smaller version."""
    v, u = idx // size, idx % size
    return (v // factor) * (size // factor) + u // factor


def collate_pairs(items: list[dict[str, Any]], size: int | None = None) -> dict[str, torch.Tensor]:
    """Stack pairs into tensors, optionally at a smaller side ``size`` (colours area-averaged, masks where at least
    half the pixels are set, pixel indices mapped to the pixel that covers them).

    Returns:
        ``a_rgb``, ``b_rgb`` ``(B, 3, S, S)`` float in [0, 1]; ``a_fg``, ``b_fg`` ``(B, S, S)`` bool; ``b_xyz``
        ``(B, S, S, 3)``; ``pos_a``, ``pos_b`` ``(B, P)`` int64; ``pos_xyz`` ``(B, P, 3)``; ``pos_ok`` ``(B, P)``;
        ``neg_b`` ``(B, N)``; ``neg_xyz`` ``(B, N, 3)``; ``neg_ok`` ``(B, N)``; ``diameter`` ``(B,)``.
    """

    def st(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(it[key]) for it in items]))

    full = int(items[0]["a_rgb"].shape[0])
    out = {
        "a_rgb": st("a_rgb").permute(0, 3, 1, 2).float() / 255.0,
        "b_rgb": st("b_rgb").permute(0, 3, 1, 2).float() / 255.0,
        "a_fg": st("a_fg"),
        "b_fg": st("b_fg"),
        "b_xyz": st("b_xyz"),
        "pos_a": st("pos_a"),
        "pos_b": st("pos_b"),
        "pos_xyz": st("pos_xyz"),
        "pos_ok": st("pos_ok"),
        "neg_b": st("neg_b"),
        "neg_xyz": st("neg_xyz"),
        "neg_ok": st("neg_ok"),
        "diameter": st("diameter").float(),
    }
    if size is None or size == full:
        return out
    if full % size:
        raise ValueError(f"cannot shrink {full}-pixel pairs to {size} pixels (not a divisor)")
    f = full // size
    for key in ("a_rgb", "b_rgb"):
        out[key] = F.avg_pool2d(out[key], f)
    for key in ("a_fg", "b_fg"):
        out[key] = F.avg_pool2d(out[key].float()[:, None], f)[:, 0] >= 0.5
    out["b_xyz"] = out["b_xyz"][:, f // 2 :: f, f // 2 :: f]
    for key in ("pos_a", "pos_b", "neg_b"):
        out[key] = _shrink_index(out[key], full, f)
    return out


class AbstractPairStream(SceneStream):
    """An endless stream of training pairs from synthetic scenes of ``cfg.data`` (see
    :class:`~meshpose.train.common.SceneStream`)."""

    SALT = 0xAB57
    cfg: AbstractTrainConfig

    def make(self, sample: SyntheticSample, rng: np.random.Generator) -> list[dict[str, Any]]:
        return make_pairs(sample, rng, self.cfg)


def validation_pairs(cfg: AbstractTrainConfig) -> list[dict[str, Any]]:
    """``cfg.val_items`` held-out pairs of ``cfg.val_objects`` (the same for every call with one config; seed
    ``cfg.seed + 1``)."""
    return draw_held_out(cfg, cfg.val_items, cfg.scene_config(), lambda smp, rng: make_pairs(smp, rng, cfg), "pairs")
