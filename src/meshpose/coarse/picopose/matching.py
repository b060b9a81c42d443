"""PicoPose stages 1 and 2: which templates match the query (and at which in-plane rotation), and the 2D
similarity transform from each matched template to the query.

Stage 1 compares foreground patch features (unit vectors) of the query, at ``R`` in-plane rotations, with those of
every template: the score of a (template, rotation) pair is the mean, over the query's foreground patches, of their
best cosine similarity among the template's foreground patches, averaged with the same taken from the template's
side (so a template with parts the query lacks scores lower). Stage 2 fits a similarity transform (rotation,
isotropic scale, shift) to the patch correspondences of a matched pair by RANSAC (``cv2.estimateAffinePartial2D``),
falling back to the rotation alone about the centres when too few patches agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Candidate", "fit_similarity", "foreground_patches", "match_templates", "unturned"]


@dataclass(frozen=True)
class Candidate:
    """A stage-1 match: template ``template`` fits the query rotated by ``angle_deg``, with score ``score``."""

    template: int
    rotation: int
    angle_deg: float
    score: float


def foreground_patches(mask: np.ndarray, stride: int, min_cover: float = 0.5) -> torch.Tensor:
    """``(B, S, S)`` bool masks → ``(B, S/stride, S/stride)`` bool: patches at least ``min_cover`` covered."""
    m = torch.from_numpy(np.ascontiguousarray(mask)).float()[:, None]
    return F.avg_pool2d(m, stride)[:, 0] >= min_cover


def match_templates(
    query_feats: torch.Tensor,
    query_fg: torch.Tensor,
    tmpl_feats: torch.Tensor,
    tmpl_fg: torch.Tensor,
    angles_deg: np.ndarray,
    top: int,
) -> list[Candidate]:
    """Stage 1: the ``top`` best (template, rotation) pairs, at most one rotation per template.

    Args:
        query_feats: ``(R, C, h, w)`` unit features of the query at ``R`` in-plane rotations.
        query_fg: ``(R, h, w)`` bool foreground patches of the rotated queries.
        tmpl_feats: ``(N, C, h, w)`` unit template features.
        tmpl_fg: ``(N, h, w)`` bool template foreground patches.
        angles_deg: ``(R,)`` the rotations' angles.
        top: how many pairs to return.

    Returns:
        Candidates, best first.
    """
    n, c = tmpl_feats.shape[:2]
    # Pack each template's foreground patches (the background ones never count) into (N, Pmax, C).
    tfg = tmpl_fg.flatten(1)  # (N, P)
    counts = tfg.sum(1)
    pmax = max(int(counts.max()), 1)
    order = torch.argsort(tfg.to(torch.int8), dim=1, descending=True, stable=True)[:, :pmax]
    t = torch.gather(tmpl_feats.flatten(2).transpose(1, 2), 1, order[..., None].expand(n, pmax, c))
    valid = torch.arange(pmax)[None, :] < counts[:, None]  # (N, Pmax)
    neg = torch.tensor(-2.0)
    scores = torch.full((len(query_feats), n), -1.0)
    for r in range(len(query_feats)):
        q = query_feats[r].flatten(1).T[query_fg[r].flatten()]  # (Q, C)
        if len(q) == 0:
            continue
        sim = torch.einsum("qc,npc->nqp", q, t)  # (N, Q, Pmax)
        sim = torch.where(valid[:, None, :], sim, neg)
        q_to_t = sim.max(dim=2).values.mean(dim=1)  # (N,)
        t_best = sim.max(dim=1).values  # (N, Pmax)
        t_to_q = (t_best * valid).sum(1) / counts.clamp(min=1)
        scores[r] = 0.5 * (q_to_t + t_to_q)
    best_r = scores.argmax(dim=0)  # per template, its best rotation
    per_t = scores.max(dim=0).values
    order = torch.argsort(per_t, descending=True)[:top]
    return [Candidate(int(i), int(best_r[i]), float(angles_deg[int(best_r[i])]), float(per_t[i])) for i in order]


def _centres(idx: np.ndarray, w: int, stride: int) -> np.ndarray:
    """Pixel centres (centre-at-integer convention) of flat patch indices."""
    return np.stack([(idx % w + 0.5) * stride - 0.5, (idx // w + 0.5) * stride - 0.5], 1).astype(np.float64)


def unturned(A_turned: np.ndarray, angle_deg: float, size: int) -> np.ndarray:
    """A ``(2, 3)`` map into the query crop *turned* by ``angle_deg`` about its centre (as stage 1 turns it,
    :func:`~meshpose.coarse.picopose.views.rotate_about_centre`) → the same map into the unturned crop of side
    ``size``."""
    ctr = (size - 1) / 2.0
    back = cv2.invertAffineTransform(cv2.getRotationMatrix2D((ctr, ctr), angle_deg, 1.0))
    return np.concatenate([back[:, :2] @ A_turned[:, :2], (back[:, :2] @ A_turned[:, 2] + back[:, 2])[:, None]], 1)


def fit_similarity(
    query_feat: torch.Tensor,
    query_fg: torch.Tensor,
    tmpl_feat: torch.Tensor,
    tmpl_fg: torch.Tensor,
    angle_deg: float,
    size: int,
    stride: int,
    *,
    min_similarity: float = 0.5,
    ransac_px: float | None = None,
) -> tuple[np.ndarray, int]:
    """Stage 2: the 2D similarity from template pixels to *unrotated* query pixels.

    Args:
        query_feat: ``(C, h, w)`` features of the query rotated by ``angle_deg``.
        query_fg: ``(h, w)`` its foreground patches.
        tmpl_feat: ``(C, h, w)`` the template's features.
        tmpl_fg: ``(h, w)`` its foreground patches.
        angle_deg: the rotation the query was turned by before its features were taken.
        size: the crops' side ``S``.
        stride: feature stride, pixels.
        min_similarity: correspondences (mutual nearest neighbours) need at least this cosine similarity.
        ransac_px: RANSAC threshold in pixels (default ``1.5 · stride``).

    Returns:
        ``(A, n_inliers)``: the ``(2, 3)`` map ``[u_q, v_q] = A @ [u_t, v_t, 1]`` and the number of agreeing
        patches (0 for the fallback: the rotation about the centre).
    """
    w = tmpl_feat.shape[2]
    # The query was turned by R(angle) about the centre: unrotated = R(angle)^-1 (rotated - c) + c.
    to_unrot = unturned(np.eye(2, 3), angle_deg, size)
    fallback = to_unrot.copy()  # template ≈ rotated query at the right template: template px → query px
    q_idx = torch.nonzero(query_fg.flatten()).flatten()
    t_idx = torch.nonzero(tmpl_fg.flatten()).flatten()
    if len(q_idx) < 3 or len(t_idx) < 3:
        return fallback, 0
    q = query_feat.flatten(1).T[q_idx]
    t = tmpl_feat.flatten(1).T[t_idx]
    sim = q @ t.T  # (Q, T)
    qt = sim.argmax(1)
    tq = sim.argmax(0)
    mutual = tq[qt] == torch.arange(len(q_idx))
    good = mutual & (sim.max(1).values >= min_similarity)
    if int(good.sum()) < 3:
        return fallback, 0
    qi = q_idx[good].numpy()
    ti = t_idx[qt[good]].numpy()
    p_rot = _centres(qi, w, stride)
    p_q = p_rot @ to_unrot[:, :2].T + to_unrot[:, 2]
    p_t = _centres(ti, w, stride)
    A, inl = cv2.estimateAffinePartial2D(
        p_t, p_q, method=cv2.RANSAC, ransacReprojThreshold=ransac_px or 1.5 * stride, maxIters=500, refineIters=10
    )
    if A is None or inl is None or int(inl.sum()) < 3:
        return fallback, 0
    scale = float(np.sqrt(abs(np.linalg.det(A[:, :2]))))
    if not (0.5 < scale < 2.0):  # implausible after box normalisation
        return fallback, 0
    return A, int(inl.sum())
