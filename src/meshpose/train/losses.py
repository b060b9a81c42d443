"""Losses that the learned methods share: point matching, gamma-weighted sequence losses, end-point error.

Pure functions over batched tensors; each returns one value per item (reduce it as the trainer needs) unless said.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from meshpose.types import Pose

__all__ = [
    "disentangled_point_matching_loss",
    "end_point_error",
    "multiscale_epe",
    "point_matching_loss",
    "sample_nearest",
    "sequence_loss",
    "sequence_weights",
]


def point_matching_loss(
    est: Pose, gt: Pose, points: torch.Tensor, symmetries: torch.Tensor, diameter: torch.Tensor
) -> torch.Tensor:
    """Symmetry-aware point matching: ``min_S mean_p |R p + t - (R_gt S p + t_gt)| / d`` per item ``(B,)``.

    Computed in the dtype of ``est`` (float64 poses give a float64 loss).

    Args:
        est: ``(B,)`` estimated poses.
        gt: ``(B,)`` true poses.
        points: ``(B, P, 3)`` model points, metres.
        symmetries: ``(B, S, 4, 4)`` symmetry transforms (identity first; padding with identities is harmless).
        diameter: ``(B,)`` metres.

    Returns:
        ``(B,)`` mean point distance in diameters, the minimum over the symmetries.

    Example:
        >>> gt = Pose(torch.eye(3)[None], torch.tensor([[0.0, 0.0, 0.5]]))
        >>> off = Pose(gt.R, gt.t + torch.tensor([[0.01, 0.0, 0.0]]))
        >>> loss = point_matching_loss(off, gt, torch.zeros(1, 4, 3), torch.eye(4)[None, None], torch.tensor([0.1]))
        >>> round(float(loss), 6)
        0.1
    """
    dt = est.R.dtype
    pts = points.to(dt)
    p_est = pts @ est.R.transpose(-1, -2) + est.t[:, None]  # (B, P, 3)
    sym = symmetries.to(dt)
    p_sym = pts[:, None] @ sym[..., :3, :3].transpose(-1, -2) + sym[:, :, None, :3, 3]  # (B, S, P, 3)
    Rg, tg = gt.R.to(dt), gt.t.to(dt)
    p_gt = p_sym @ Rg[:, None].transpose(-1, -2) + tg[:, None, None]
    dist = (p_est[:, None] - p_gt).norm(dim=-1).mean(-1)  # (B, S)
    return dist.min(1).values / diameter.to(dt)


def sequence_weights(n: int, gamma: float) -> list[float]:
    """Weights ``gamma ** (n - 1 - k)`` of the ``n`` iterations of a recurrent estimate (RAFT): the last one
    weighs 1, earlier ones less.

    Example:
        >>> sequence_weights(3, 0.5)
        [0.25, 0.5, 1.0]
    """
    return [gamma ** (n - 1 - k) for k in range(n)]


def sequence_loss(losses: Sequence[torch.Tensor], gamma: float) -> torch.Tensor:
    """The gamma-weighted sum ``Σ_k gamma^(n-1-k) · losses[k]`` over the iterations of a recurrent estimate.

    Args:
        losses: one loss (any shape, all alike) per iteration, first to last.
        gamma: the decay (``0 < gamma ≤ 1``).
    """
    if not losses:
        raise ValueError("a sequence loss needs at least one iteration")
    total = torch.zeros_like(losses[0])
    for w, loss in zip(sequence_weights(len(losses), gamma), losses, strict=True):
        total = total + w * loss
    return total


def end_point_error(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean end-point error (Euclidean length of the flow error) over the valid entries, one scalar.

    Args:
        pred: ``(..., 2)`` predicted flow (pixels or cells).
        gt: ``(..., 2)`` true flow.
        valid: ``(...)`` bool or 0/1 weights (``None``: all).
    """
    err = (pred - gt).norm(dim=-1)
    if valid is None:
        return err.mean()
    v = valid.to(err.dtype)
    return (err * v).sum() / v.sum().clamp_min(1)


def sample_nearest(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel values of a one-channel image at pixel positions (0 outside the image).

    Args:
        img: ``(B, 1, H, W)`` image.
        uv: ``(B, N, 2)`` pixel positions ``(u, v)``, pixel centres at integers.

    Returns:
        ``(B, N)`` float32 values.
    """
    h, w = img.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=uv.dtype, device=uv.device)
    grid = ((uv + 0.5) * scale - 1.0)[:, :, None, :].to(torch.float32)
    out = torch.nn.functional.grid_sample(img.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out[..., 0].transpose(1, 2)[..., 0]


def _pix_ray(uv: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` rays ``K⁻¹ [u, v, 1]`` (unit depth) of pixels ``uv`` ``(B, 2)``."""
    return torch.linalg.solve(K, torch.cat([uv, torch.ones_like(uv[:, :1])], 1)[..., None])[..., 0]


def disentangled_point_matching_loss(
    R: torch.Tensor,
    uv: torch.Tensor,
    z: torch.Tensor,
    gt: Pose,
    K: torch.Tensor,
    points: torch.Tensor,
    symmetries: torch.Tensor,
    diameter: torch.Tensor,
    nearest: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeepIM/DeepRM's disentangled point-matching loss per item ``(B,)``, in diameters.

    A pose estimate is given by its parts: rotation ``R``, the pixel ``uv`` of the object origin and its depth ``z``
    (the translation is ``z · K⁻¹ [uv, 1]``). Three L1 point-matching terms (mean over the model points of
    ``|x - x_gt|₁``) each let one part be the estimate and take the rest from the ground truth, so that each part's
    gradient is not mixed with the others' errors:

    * image-plane shift: estimated ``uv`` with the true ``z`` and rotation;
    * depth: estimated ``z`` with the true ``uv`` and rotation;
    * rotation: estimated ``R`` with the true translation.

    The two translation terms move every point by the same vector, so they are the L1 norm of that vector (the
    same value as the mean over points, without the points). The rotation term is the minimum over the symmetry
    transforms ``S`` of ``mean_p |R p - R_gt S p|₁``; for items with ``nearest`` true (a continuous symmetry, whose
    finite set is only a sample of it) it is ADD-S-like instead: each point's distance to the nearest true point.

    Args:
        R: ``(B, 3, 3)`` estimated rotations.
        uv: ``(B, 2)`` estimated pixel of the object origin (in the camera of ``K``).
        z: ``(B,)`` estimated depth of the object origin, metres.
        gt: ``(B,)`` true poses.
        K: ``(B, 3, 3)`` intrinsics.
        points: ``(B, P, 3)`` model points, metres.
        symmetries: ``(B, S, 4, 4)`` symmetry transforms (identity first; identity padding is harmless).
        diameter: ``(B,)`` metres.
        nearest: ``(B,)`` bool, items whose rotation term is the nearest-point distance (``None``: none).

    Returns:
        ``(B,)`` the sum of the three terms divided by the diameter (dtype of ``R``).

    Example:
        >>> K = torch.tensor([[[100.0, 0, 48], [0, 100.0, 48], [0, 0, 1]]])
        >>> gt = Pose(torch.eye(3)[None], torch.tensor([[0.0, 0.0, 0.5]]))
        >>> pts, sym, d = torch.randn(1, 50, 3) * 0.05, torch.eye(4)[None, None], torch.tensor([0.1])
        >>> loss = disentangled_point_matching_loss(gt.R, torch.tensor([[48.0, 48.0]]), torch.tensor([0.5]),
        ...                                         gt, K, pts, sym, d)
        >>> float(loss)
        0.0
    """
    dt = R.dtype
    Kd, Rg, tg = K.to(dt), gt.R.to(dt), gt.t.to(dt)
    pts = points.to(dt)
    p_gt = (Kd @ tg[..., None])[..., 0]
    uv_gt = p_gt[:, :2] / p_gt[:, 2:3]
    z_gt = tg[:, 2]
    t_xy = _pix_ray(uv.to(dt), Kd) * z_gt[:, None]
    t_z = _pix_ray(uv_gt, Kd) * z.to(dt)[:, None]
    term_xy = (t_xy - tg).abs().sum(-1)
    term_z = (t_z - tg).abs().sum(-1)
    x_est = pts @ R.transpose(-1, -2)  # (B, P, 3), the common translation left out
    sym = symmetries.to(dt)
    p_sym = pts[:, None] @ sym[..., :3, :3].transpose(-1, -2) + sym[:, :, None, :3, 3]  # (B, S, P, 3)
    x_gt = p_sym @ Rg[:, None].transpose(-1, -2)  # (B, S, P, 3)
    term_r = (x_est[:, None] - x_gt).abs().sum(-1).mean(-1).min(1).values
    if nearest is not None and bool(nearest.any()):
        near = torch.cdist(x_est, pts @ Rg.transpose(-1, -2), p=1.0).min(-1).values.mean(-1)
        term_r = torch.where(nearest.to(term_r.device), near, term_r)
    return (term_xy + term_z + term_r) / diameter.to(dt)


def multiscale_epe(
    preds: Sequence[torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """FlowNet's multi-scale end-point error: each prediction against the target average-pooled to its size.

    The target is pooled over its valid pixels only (a cell's target is the mean flow of its valid pixels; a cell
    without any is not counted).

    Args:
        preds: ``(B, 2, h_k, w_k)`` predicted flows (any sizes, e.g. coarse to fine).
        target: ``(B, 2, H, W)`` true flow, in the units of the predictions.
        valid: ``(B, 1, H, W)`` bool or 0/1 weights of the target.
        weights: one weight per prediction (default: all 1).

    Returns:
        The weighted sum of the per-scale mean end-point errors (a scalar).

    Example:
        >>> t = torch.ones(1, 2, 8, 8)
        >>> float(multiscale_epe([torch.ones(1, 2, 2, 2), torch.ones(1, 2, 4, 4)], t, torch.ones(1, 1, 8, 8)))
        0.0
    """
    if not preds:
        raise ValueError("multiscale_epe needs at least one prediction")
    w = list(weights) if weights is not None else [1.0] * len(preds)
    if len(w) != len(preds):
        raise ValueError(f"got {len(w)} weights for {len(preds)} predictions")
    v = valid.to(target.dtype)
    total = torch.zeros((), dtype=target.dtype, device=target.device)
    for wk, pred in zip(w, preds, strict=True):
        size = (int(pred.shape[-2]), int(pred.shape[-1]))
        num = torch.nn.functional.adaptive_avg_pool2d(target * v, size)
        den = torch.nn.functional.adaptive_avg_pool2d(v, size)
        tgt = num / den.clamp_min(1e-6)
        total = total + wk * end_point_error(pred.permute(0, 2, 3, 1), tgt.permute(0, 2, 3, 1), den[:, 0] > 0)
    return total
