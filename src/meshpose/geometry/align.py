"""Rigid alignment of 3D point sets: weighted Kabsch/Umeyama (via roma) and a RANSAC wrapper around it."""

from __future__ import annotations

import numpy as np
import roma
import torch
from numpy.typing import ArrayLike

from meshpose.types import Pose

__all__ = ["kabsch", "ransac_rigid"]


def _points(x: ArrayLike | torch.Tensor, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim < 2 or t.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., N, 3), got {tuple(t.shape)}")
    return t


def kabsch(
    src: ArrayLike | torch.Tensor,
    dst: ArrayLike | torch.Tensor,
    weights: ArrayLike | torch.Tensor | None = None,
) -> Pose:
    """Least-squares rigid transform with ``dst ≈ R src + t`` (Kabsch/Umeyama without scale, via roma).

    Minimises ``Σᵢ wᵢ |R srcᵢ + t - dstᵢ|²`` over rotations ``R`` (``det R = +1``) and translations ``t``.
    Differentiable (roma's SVD-based ``rigid_points_registration``) where the solution is unique.

    Args:
        src: ``(..., N, 3)`` points (e.g. object frame), metres.
        dst: ``(..., N, 3)`` corresponding points (e.g. camera frame), metres; same shape as ``src``.
        weights: optional ``(..., N)`` non-negative weights (not all zero).

    Returns:
        ``Pose`` with batch shape ``(...)`` mapping ``src`` to ``dst`` (``dst_from_src``), dtype of ``src``.

    Raises:
        ValueError: mismatched shapes, fewer than 3 points, NaNs, or negative weights.

    Example:
        >>> import torch
        >>> src = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
        >>> gt = Pose.exp(torch.tensor([0.1, 0.2, 0.3, 0.0, 0.0, 0.5], dtype=torch.float64))
        >>> est = kabsch(src, gt.apply(src))
        >>> bool(torch.allclose(est.matrix(), gt.matrix()))
        True
    """
    s = _points(src, "src")
    d = _points(dst, "dst").to(dtype=s.dtype, device=s.device)
    if s.shape != d.shape:
        raise ValueError(f"src and dst must have the same shape, got {tuple(s.shape)} and {tuple(d.shape)}")
    if s.shape[-2] < 3:
        raise ValueError(f"kabsch needs at least 3 point pairs, got {s.shape[-2]}")
    if not bool(torch.isfinite(s).all()) or not bool(torch.isfinite(d).all()):
        raise ValueError("src or dst contains NaN or inf")
    w = None
    if weights is not None:
        w = weights if isinstance(weights, torch.Tensor) else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        w = w.to(dtype=s.dtype, device=s.device)
        if w.shape != s.shape[:-1]:
            raise ValueError(f"weights must have shape {tuple(s.shape[:-1])}, got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or bool((w.sum(-1) <= 0).any()):
            raise ValueError("weights must be finite, non-negative and not all zero")
    R, t = roma.rigid_points_registration(s, d, weights=w)
    return Pose(R, t)


def ransac_rigid(
    src: ArrayLike | torch.Tensor,
    dst: ArrayLike | torch.Tensor,
    *,
    threshold_m: float,
    iterations: int = 200,
    seed: int = 0,
    min_inliers: int = 3,
    weights: ArrayLike | torch.Tensor | None = None,
) -> tuple[Pose | None, np.ndarray]:
    """Robust rigid transform ``dst ≈ R src + t`` from putative 3D-3D matches (RANSAC over Kabsch).

    Draws ``iterations`` random 3-point samples (numpy ``default_rng(seed)``: deterministic), fits each with
    :func:`kabsch` (batched), keeps the sample with the most matches within ``threshold_m`` (ties: lowest
    truncated squared error), then refits on its inliers — weighted by ``weights`` if given — recomputing the
    inliers and refitting until they stop changing (at most 5 rounds).

    Args:
        src: ``(N, 3)`` points, metres.
        dst: ``(N, 3)`` matching points, metres.
        threshold_m: inlier distance ``|R src + t - dst|`` in metres (``> 0``).
        iterations: number of minimal samples.
        seed: seed of the sampler.
        min_inliers: fewer final inliers than this (or than 3) returns ``(None, inliers)``.
        weights: optional ``(N,)`` non-negative confidences used in the refits.

    Returns:
        ``(pose, inliers)``: the float64 ``dst_from_src`` pose (or ``None`` on failure) and the ``(N,)`` bool
        inlier mask under it.

    Raises:
        ValueError: bad shapes, NaNs or options.

    Example:
        >>> import numpy as np, torch
        >>> rng = np.random.default_rng(1)
        >>> src = rng.uniform(-0.1, 0.1, (50, 3))
        >>> gt = Pose.exp(torch.tensor([0.1, 0.0, 0.5, 0.3, 0.0, 0.2], dtype=torch.float64))
        >>> dst = gt.apply(src).numpy()
        >>> dst[:10] += 0.05  # outliers
        >>> pose, inl = ransac_rigid(src, dst, threshold_m=0.005)
        >>> int(inl.sum()), bool(torch.allclose(pose.matrix(), gt.matrix()))
        (40, True)
    """
    s = _points(src, "src").detach().cpu().to(torch.float64)
    d = _points(dst, "dst").detach().cpu().to(torch.float64)
    if s.ndim != 2 or s.shape != d.shape:
        raise ValueError(f"src and dst must both have shape (N, 3), got {tuple(s.shape)} and {tuple(d.shape)}")
    if not bool(torch.isfinite(s).all()) or not bool(torch.isfinite(d).all()):
        raise ValueError("src or dst contains NaN or inf")
    thr = float(threshold_m)
    if not (np.isfinite(thr) and thr > 0):
        raise ValueError(f"threshold_m must be positive, got {threshold_m}")
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    n = s.shape[0]
    w_all = torch.ones(n, dtype=torch.float64)
    if weights is not None:
        w_in = weights if isinstance(weights, torch.Tensor) else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        w_all = w_in.detach().cpu().to(torch.float64).reshape(-1)
        if w_all.shape != (n,) or not bool(torch.isfinite(w_all).all()) or bool((w_all < 0).any()):
            raise ValueError(f"weights must be {n} finite non-negative numbers")
    if n < 3:
        return None, np.zeros(n, dtype=bool)

    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(np.stack([rng.choice(n, 3, replace=False) for _ in range(int(iterations))]))
    R, t = roma.rigid_points_registration(s[idx], d[idx])  # (I, 3, 3), (I, 3)
    res = torch.linalg.vector_norm(s @ R.transpose(-1, -2) + t[:, None, :] - d, dim=-1)  # (I, N)
    inl = res < thr
    count = inl.sum(-1)
    cost = torch.where(inl, res**2, torch.full_like(res, thr**2)).sum(-1)
    best = int(torch.argmin(cost - count * (10.0 * n * thr**2)))  # most inliers first, then lowest cost
    mask = inl[best]
    pose: Pose | None = None
    for _ in range(5):
        w = w_all * mask
        if int(mask.sum()) < 3 or float(w.sum()) <= 0:
            break
        Rf, tf = roma.rigid_points_registration(s, d, weights=w)
        pose = Pose(Rf, tf)
        new_mask = torch.linalg.vector_norm(pose.apply(s) - d, dim=-1) < thr
        if bool(torch.equal(new_mask, mask)):
            break
        mask = new_mask
    mask_np = mask.numpy().astype(bool)
    if pose is None or int(mask_np.sum()) < max(min_inliers, 3):
        return None, mask_np
    return pose, mask_np
