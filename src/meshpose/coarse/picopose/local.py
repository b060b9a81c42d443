"""PicoPose stage 3 and the pose: local offsets between the warped template and the query, 2D-3D matches from
the template's object coordinates, PnP-RANSAC, and (with depth) the distance from the observed depth.

The seed paper predicts the local offsets and their certainty with a RAFT-style network. Two ways are here:

* ``"genflow"``: the recurrent shape-constrained flow network of the ``genflow`` refiner
  (:class:`~meshpose.nets.genflow.GenFlowNet`: a GRU over an all-pairs correlation pyramid, per-cell flow and a
  certainty in [0, 1]), run between the warped template — a rendering with its object coordinates, at the pose
  PnP gives from the warp alone — and the query; the cells whose certainty exceeds ``certainty`` give the
  matches. It was trained on generated objects (rendering vs. observed crop), not for this use.
* ``"dis"``: OpenCV's DIS optical flow between the warped template and the query, the certainty from the
  forward-backward agreement of the two flows (training-free).

``local="none"`` keeps the stage-2 warp alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from meshpose.geometry.pnp import pnp_ransac
from meshpose.nets.genflow import GenFlowNet, make_input
from meshpose.types import Camera, Pose

__all__ = ["LocalMatches", "genflow_matches", "local_matches", "pose_from_matches", "scale_to_depth"]

_DIS = {"fast": 1, "medium": 2}


@dataclass(frozen=True, eq=False)
class LocalMatches:
    """2D-3D matches of one hypothesis: ``uv (M, 2)`` query-crop pixels, ``xyz (M, 3)`` object points (metres)."""

    uv: np.ndarray
    xyz: np.ndarray


def local_matches(
    query_rgb: np.ndarray,
    query_mask: np.ndarray,
    tmpl_rgb: np.ndarray,
    tmpl_mask: np.ndarray,
    tmpl_xyz: np.ndarray,
    A: np.ndarray,
    *,
    method: str = "dis",
    fb_threshold_px: float = 1.5,
    step: int = 2,
) -> LocalMatches:
    """Warp the template into the query by ``A`` and match its pixels to the query.

    Args:
        query_rgb: ``(S, S, 3)`` uint8 query crop.
        query_mask: ``(S, S)`` bool query region.
        tmpl_rgb, tmpl_mask, tmpl_xyz: the template view (``S × S``).
        A: ``(2, 3)`` template → query pixel map (stage 2).
        method: ``"dis"`` (flow offsets with forward-backward certainty) or ``"none"`` (the warp alone).
        fb_threshold_px: a flow offset is certain when the backward flow returns within this many pixels.
        step: use every ``step``-th pixel in each direction (matches are highly redundant).

    Returns:
        The matches (possibly empty).
    """
    if method not in ("dis", "none"):
        raise ValueError(f"local method must be 'dis' or 'none', got {method!r}")
    s = query_rgb.shape[0]
    w_rgb, w_mask, w_xyz = _warp(tmpl_rgb, tmpl_mask, tmpl_xyz, A, s)
    warp = _warp_matches(w_mask, w_xyz, step)
    if method == "none" or len(warp.uv) == 0:
        return warp
    g_t = cv2.cvtColor(w_rgb, cv2.COLOR_RGB2GRAY)
    g_q = cv2.cvtColor(query_rgb, cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow_create(_DIS["medium"])  # type: ignore[attr-defined]
    fwd = dis.calc(g_t, g_q, None)
    bwd = dis.calc(g_q, g_t, None)
    uu, vv = warp.uv.astype(int).T
    f = fwd[vv, uu].astype(np.float64)
    tgt = warp.uv + f
    on, ti = _on_query(tgt, query_mask)
    back = bwd[ti[:, 1], ti[:, 0]].astype(np.float64)
    keep = on & (np.linalg.norm(f + back, axis=1) < fb_threshold_px)
    return LocalMatches(tgt[keep], warp.xyz[keep])


def _warp_matches(w_mask: np.ndarray, w_xyz: np.ndarray, step: int) -> LocalMatches:
    """The matches of the warp alone: every ``step``-th pixel of the warped template's mask ↔ its object point."""
    sel = np.zeros(w_mask.shape, bool)
    sel[::step, ::step] = True
    vv, uu = np.nonzero(sel & w_mask)
    return LocalMatches(np.stack([uu, vv], 1).astype(np.float64), w_xyz[vv, uu].astype(np.float64))


def _on_query(tgt: np.ndarray, query_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which ``(M, 2)`` query-crop targets lie inside the crop and on the query's region, and their nearest pixels
    ``(M, 2)`` int (clipped to the crop)."""
    s = query_mask.shape[0]
    ti = np.clip(np.round(tgt).astype(int), 0, s - 1)
    return (tgt >= 0).all(1) & (tgt <= s - 1).all(1) & query_mask[ti[:, 1], ti[:, 0]], ti


def _warp(
    tmpl_rgb: np.ndarray, tmpl_mask: np.ndarray, tmpl_xyz: np.ndarray, A: np.ndarray, s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template's colour, mask and object coordinates warped into the query crop by ``A``."""
    w_rgb = cv2.warpAffine(tmpl_rgb, A, (s, s), flags=cv2.INTER_LINEAR)
    w_mask = cv2.warpAffine(tmpl_mask.astype(np.uint8), A, (s, s), flags=cv2.INTER_NEAREST) > 0
    w_xyz = cv2.warpAffine(tmpl_xyz, A, (s, s), flags=cv2.INTER_NEAREST)
    return w_rgb, w_mask, w_xyz


def _chw(img: np.ndarray) -> torch.Tensor:
    """``(S, S, C)`` array → ``(1, C, S, S)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img, np.float32)).permute(2, 0, 1)[None]


def genflow_matches(
    query_rgb: np.ndarray,
    query_mask: np.ndarray,
    tmpl_rgb: np.ndarray,
    tmpl_mask: np.ndarray,
    tmpl_xyz: np.ndarray,
    A: np.ndarray,
    camera: Camera,
    net: GenFlowNet,
    *,
    iterations: int = 4,
    certainty: float = 0.5,
    threshold_px: float = 2.0,
) -> LocalMatches:
    """Stage 3 by the recurrent flow network (module docstring): matches of the warped template's cells.

    Args:
        query_rgb, query_mask, tmpl_rgb, tmpl_mask, tmpl_xyz, A: as :func:`local_matches`.
        camera: the query crop's camera (the pose the network refines lives in it).
        net: the flow network (eval mode).
        iterations: its recurrent iterations.
        certainty: a cell's flow is a match when the network's certainty exceeds this.
        threshold_px: PnP-RANSAC threshold of the starting pose (from the warp alone).

    Returns:
        The matches: a cell's centre moved by the predicted flow ↔ the template's object point there (empty when
        the warp alone gives no pose to start from).
    """
    s = query_rgb.shape[0]
    w_rgb, w_mask, w_xyz = _warp(tmpl_rgb, tmpl_mask, tmpl_xyz, A, s)
    start, _ = pose_from_matches(_warp_matches(w_mask, w_xyz, 2), camera, threshold_px=threshold_px)
    if start is None:
        return LocalMatches(np.zeros((0, 2)), np.zeros((0, 3)))
    R, t = start.numpy()
    one = torch.ones(1)  # no depth: the depth channels are zero whatever their reference and scale
    with torch.no_grad():
        out = net(
            make_input(_chw(w_rgb) / 255.0, None, None, one, one),
            make_input(_chw(query_rgb) / 255.0, None, None, one, one),
            _chw(w_xyz),
            torch.from_numpy(w_mask)[None, None],
            torch.tensor(camera.K, dtype=torch.float32)[None],
            Pose(torch.from_numpy(R)[None], torch.from_numpy(t)[None]),
            iterations=iterations,
        )
    last = out.steps[-1]
    h, w = out.grid
    src = out.source[0].double().numpy()  # (N, 2)
    tgt = src + last.flow[0].reshape(2, h * w).T.double().numpy()
    keep = (last.weights[0, 0].flatten().numpy() > certainty) & out.valid[0].numpy() & _on_query(tgt, query_mask)[0]
    return LocalMatches(tgt[keep], out.points[0].double().numpy()[keep])


def pose_from_matches(matches: LocalMatches, camera: Camera, *, threshold_px: float = 2.0) -> tuple[Pose | None, int]:
    """PnP-RANSAC (poselib) on the matches in the query crop's camera; ``(pose or None, inliers)``."""
    if len(matches.uv) < 6:
        return None, 0
    res = pnp_ransac(matches.uv, matches.xyz, camera, max_reprojection_error_px=threshold_px, min_inliers=6)
    if not res.success or res.pose is None:
        return None, 0
    return res.pose, int(res.num_inliers)


def scale_to_depth(pose: Pose, matches: LocalMatches, depth: np.ndarray) -> Pose:
    """Move the object along the viewing rays so that its matched points lie at the observed depth.

    The translation is scaled by ``1 + (median(observed z) - median(predicted z)) / t_z`` over the matches with
    depth: that moves the matched surface's median depth onto the observed one, keeps the projection of the object
    origin (and nearly the 2D fit), and fixes the distance that a monocular fit measures worst.
    """
    R, t = pose.numpy()
    uv = np.round(matches.uv).astype(int)
    s = depth.shape[0]
    ok = (uv >= 0).all(1) & (uv < s).all(1)
    z_obs = depth[uv[ok, 1], uv[ok, 0]]
    z_pred = (matches.xyz[ok] @ R.T + t)[:, 2]
    good = (z_obs > 0) & (z_pred > 0)
    if good.sum() < 10:
        return pose
    k = 1.0 + float(np.median(z_obs[good]) - np.median(z_pred[good])) / float(t[2])
    if not 0.5 < k < 2.0:
        return pose
    return Pose(R, t * k)
