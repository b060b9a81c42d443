"""``jointloss``'s (weak-)supervised losses: DenseFusion's confidence-weighted per-point loss and the refiner's loss.

Both compare poses with a *target* pose by the symmetry-aware mean model-point distance (ADD, the minimum over the
object's symmetry transforms; metres). With true poses this is DenseFusion's supervised training; in the
joint-loss paper's stage 1 the targets are rough poses (the Iterative Annotation Resolver's weak labels), and the
same functions apply unchanged.

* :func:`dense_fusion_loss`: per item, ``mean_i (Lᵢ cᵢ − w log cᵢ)`` over the ``N`` per-point votes (DenseFusion,
  ``w = 0.015`` with ``Lᵢ`` in metres): a point with a large error is allowed a low confidence at the price of the
  ``−w log c`` term.
* :func:`refiner_loss`: the mean over the refiner's iterates of the same distance (no confidence).

Why not :func:`meshpose.train.losses.point_matching_loss` directly: over ``B · N`` votes and ``S`` symmetries it
would hold ``B · N · S · P`` points for autograd (gigabytes for ``S`` ≈ 36 discretised continuous symmetries). Here
the best symmetry of each vote is picked without gradient (in chunks), and only the distance under it is
differentiated: the same value and the same (sub)gradient as the minimum, with ``B · N · P`` points in the graph.
:func:`pose_distance` equals ``point_matching_loss · diameter`` (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "PoseLossTerms",
    "coordinate_loss",
    "dense_fusion_loss",
    "pose_distance",
    "refiner_loss",
    "symmetric_target",
]

#: at most this many point coordinates per chunk of the no-gradient symmetry search
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class PoseLossTerms:
    """A loss per item and the distances to log.

    Args:
        loss: ``(B,)`` the loss to minimise (reduce it as the trainer needs).
        distance: ``(B,)`` symmetry-aware mean model-point distance of the pose that counts (the most confident
            vote, or the refiner's last iterate), metres, detached.
        distance_d: ``(B,)`` the same in object diameters (ADD(-S)'s unit), detached.
    """

    loss: torch.Tensor
    distance: torch.Tensor
    distance_d: torch.Tensor


def pose_distance(
    R: torch.Tensor,
    t: torch.Tensor,
    target_R: torch.Tensor,
    target_t: torch.Tensor,
    points: torch.Tensor,
    symmetries: torch.Tensor,
) -> torch.Tensor:
    """Symmetry-aware mean model-point distance of ``N`` poses per item to the item's target, metres.

    ``Lᵢ = min_S mean_p |Rᵢ p + tᵢ − (R* (S_R p + S_t) + t*)|`` (computed in the dtype of ``R``).

    Args:
        R: ``(B, N, 3, 3)`` rotations (``cam_from_obj``).
        t: ``(B, N, 3)`` translations, metres.
        target_R: ``(B, 3, 3)`` target rotations.
        target_t: ``(B, 3)`` target translations, metres.
        points: ``(B, P, 3)`` model points, metres.
        symmetries: ``(B, S, 4, 4)`` symmetry transforms (identity first; identity padding is harmless).

    Returns:
        ``(B, N)`` distances, metres; differentiable in ``R`` and ``t`` (through the best symmetry of each vote).

    Example:
        >>> R, t = torch.eye(3).expand(1, 2, 3, 3), torch.tensor([[[0.0, 0, 0.5], [0.01, 0, 0.5]]])
        >>> d = pose_distance(R, t, torch.eye(3)[None], torch.tensor([[0.0, 0, 0.5]]), torch.randn(1, 9, 3),
        ...                   torch.eye(4)[None, None])
        >>> [round(float(x), 6) for x in d[0]]
        [0.0, 0.01]
    """
    dt = R.dtype
    pts = points.to(dt)
    sym = symmetries.to(dt)
    Rg, tg = target_R.to(dt), target_t.to(dt)
    p_sym = pts[:, None] @ sym[..., :3, :3].transpose(-1, -2) + sym[:, :, None, :3, 3]  # (B, S, P, 3)
    tgt = p_sym @ Rg[:, None].transpose(-1, -2) + tg[:, None, None]  # (B, S, P, 3)
    est = pts[:, None] @ R.transpose(-1, -2) + t[:, :, None]  # (B, N, P, 3)
    b, n, p = est.shape[:3]
    s = tgt.shape[1]
    if s == 1:
        return (est - tgt).norm(dim=-1).mean(-1)
    with torch.no_grad():  # pick each vote's best symmetry in chunks (no graph over the S copies)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, b * n * p * 3))
        best = torch.empty(b, n, dtype=torch.long, device=R.device)
        best_val = torch.full((b, n), float("inf"), dtype=dt, device=R.device)
        e = est.detach()
        for k in range(0, s, chunk):
            d = (e[:, :, None] - tgt[:, None, k : k + chunk]).norm(dim=-1).mean(-1)  # (B, N, c)
            val, arg = d.min(-1)
            better = val < best_val
            best_val = torch.where(better, val, best_val)
            best = torch.where(better, arg + k, best)
    chosen = tgt[torch.arange(b, device=R.device)[:, None], best]  # (B, N, P, 3)
    return (est - chosen).norm(dim=-1).mean(-1)


def dense_fusion_loss(
    R: torch.Tensor,
    t: torch.Tensor,
    c: torch.Tensor,
    target_R: torch.Tensor,
    target_t: torch.Tensor,
    points: torch.Tensor,
    symmetries: torch.Tensor,
    diameter: torch.Tensor,
    w: float = 0.015,
) -> PoseLossTerms:
    """DenseFusion's confidence-weighted loss of the per-point votes: ``mean_i (Lᵢ cᵢ − w log cᵢ)`` per item.

    Args:
        R: ``(B, N, 3, 3)`` per-point rotations.
        t: ``(B, N, 3)`` per-point translations, metres.
        c: ``(B, N)`` confidences in ``(0, 1)``.
        target_R: ``(B, 3, 3)`` target (true or weak) rotations.
        target_t: ``(B, 3)`` target translations, metres.
        points: ``(B, P, 3)`` model points, metres.
        symmetries: ``(B, S, 4, 4)`` symmetry transforms (identity first).
        diameter: ``(B,)`` object diameters, metres (for ``distance_d`` only).
        w: weight of the confidence regulariser (DenseFusion's 0.015, for distances in metres).

    Returns:
        :class:`PoseLossTerms`: the loss ``(B,)`` and the distance of the most confident vote.

    Example:
        >>> R, t = torch.eye(3).expand(1, 2, 3, 3), torch.tensor([[[0.0, 0, 0.5], [0.01, 0, 0.5]]])
        >>> out = dense_fusion_loss(R, t, torch.tensor([[0.9, 0.1]]), torch.eye(3)[None], torch.tensor([[0.0, 0, 0.5]]),
        ...                         torch.randn(1, 9, 3), torch.eye(4)[None, None], torch.tensor([0.1]))
        >>> round(float(out.distance), 6), round(float(out.distance_d), 6)
        (0.0, 0.0)
    """
    dist = pose_distance(R, t, target_R, target_t, points, symmetries)  # (B, N)
    cc = c.to(dist.dtype)
    loss = (dist * cc - w * torch.log(cc.clamp_min(1e-12))).mean(1)
    best = dist.detach().gather(1, c.detach().argmax(1, keepdim=True))[:, 0]
    return PoseLossTerms(loss, best, best / diameter.to(best.dtype))


def refiner_loss(
    iterates: Sequence[tuple[torch.Tensor, torch.Tensor]],
    target_R: torch.Tensor,
    target_t: torch.Tensor,
    points: torch.Tensor,
    symmetries: torch.Tensor,
    diameter: torch.Tensor,
) -> PoseLossTerms:
    """The refiner's loss: the mean over its iterates of the symmetry-aware model-point distance (metres).

    Args:
        iterates: ``K`` poses ``(R (B, 3, 3), t (B, 3))`` (:meth:`JointLossRefiner.refine`).
        target_R: ``(B, 3, 3)``; target_t: ``(B, 3)`` the target (true or weak) pose.
        points: ``(B, P, 3)`` model points, metres.
        symmetries: ``(B, S, 4, 4)`` symmetry transforms.
        diameter: ``(B,)`` metres (for ``distance_d`` only).

    Returns:
        :class:`PoseLossTerms`: the loss ``(B,)``, and the last iterate's distance.
    """
    if not iterates:
        raise ValueError("refiner_loss needs at least one iterate")
    dists = [pose_distance(R[:, None], t[:, None], target_R, target_t, points, symmetries)[:, 0] for R, t in iterates]
    loss = torch.stack(dists).mean(0)
    last = dists[-1].detach()
    return PoseLossTerms(loss, last, last / diameter.to(last.dtype))


def symmetric_target(
    R: torch.Tensor,
    t: torch.Tensor,
    target_R: torch.Tensor,
    target_t: torch.Tensor,
    points: torch.Tensor,
    symmetries: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target pose among its symmetric equivalents ``T* S`` that is nearest to ``(R, t)`` (no gradient).

    A symmetric object's observed points have one object-frame coordinate per symmetry; the dense refiner is
    taught the one its current pose is closest to (the same choice :func:`pose_distance` makes).

    Args:
        R: ``(B, 3, 3)``; t: ``(B, 3)`` the current poses.
        target_R: ``(B, 3, 3)``; target_t: ``(B, 3)`` the target poses.
        points: ``(B, P, 3)`` model points, metres.
        symmetries: ``(B, S, 4, 4)`` symmetry transforms.

    Returns:
        ``(R (B, 3, 3), t (B, 3))`` the chosen equivalent target, ``T* S``.
    """
    with torch.no_grad():
        dt = target_R.dtype
        sym = symmetries.to(dt)
        SR, St = sym[..., :3, :3], sym[..., :3, 3]  # (B, S, 3, 3), (B, S, 3)
        Rs = target_R[:, None] @ SR  # (B, S, 3, 3)
        ts = (target_R[:, None] @ St[..., None])[..., 0] + target_t[:, None]  # (B, S, 3)
        pts = points.to(dt)
        cur = pts @ R.to(dt).transpose(-1, -2) + t.to(dt)[:, None]  # (B, P, 3)
        cand = pts[:, None] @ Rs.transpose(-1, -2) + ts[:, :, None]  # (B, S, P, 3)
        best = (cand - cur[:, None]).norm(dim=-1).mean(-1).argmin(1)  # (B,)
        b = torch.arange(len(best), device=best.device)
        return Rs[b, best], ts[b, best]


def coordinate_loss(
    observed: torch.Tensor,
    coords: torch.Tensor,
    c: torch.Tensor,
    target_R: torch.Tensor,
    target_t: torch.Tensor,
    w: float = 0.015,
) -> torch.Tensor:
    """The dense refiner's per-point loss: each observed point's predicted object coordinate against the target
    pose's, ``eᵢ = |yᵢ − R*ᵀ (xᵢ − t*)|`` (metres), confidence-weighted as DenseFusion's votes:
    ``mean_i (eᵢ cᵢ − w log cᵢ)`` per item.

    Args:
        observed: ``(B, N, 3)`` the observed points, camera frame, metres.
        coords: ``(B, N, 3)`` predicted object coordinates ``y``, metres.
        c: ``(B, N)`` confidences in ``(0, 1)``.
        target_R: ``(B, 3, 3)``; target_t: ``(B, 3)`` the target pose (e.g. :func:`symmetric_target`).
        w: weight of the confidence regulariser.

    Returns:
        ``(B,)`` the loss.

    Example:
        >>> x = torch.randn(1, 5, 3)
        >>> float(coordinate_loss(x, x, torch.ones(1, 5), torch.eye(3)[None], torch.zeros(1, 3))[0])
        0.0
    """
    target = (observed - target_t[:, None]) @ target_R  # R*ᵀ (x − t*), row vectors
    e = (coords - target.to(coords.dtype)).norm(dim=-1)
    return (e * c - w * torch.log(c.clamp_min(1e-12))).mean(1)
