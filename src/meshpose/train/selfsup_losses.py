"""Self-supervised render-and-compare losses: colour (LAB without L), mask IoU and geometry (no pose labels).

These are the three terms of the joint-loss paper's stage 2 and of ``meshpose adapt``. Each compares what a
(differentiable) rendering at the current pose shows with what the camera saw; none reads a ground-truth pose:

* **colour**: both images in CIE LAB (kornia's differentiable conversion), the lightness ``L`` dropped so that shading
  and exposure differences between the mesh's colours and the photo do not count; *bidirectional nearest pixel in a
  small neighbourhood*: every rendered foreground pixel takes the smallest ``|Δab|`` over the observed pixels of its
  ``k × k`` neighbourhood, and every observed foreground pixel the smallest over the rendered ones; a pose error of a
  pixel or two costs nothing, while a wrong colour layout costs. Units: LAB ``ab`` units (about ``[-100, 100]``).
* **mask IoU**: ``1 − Σ s·m / Σ (s + m − s·m)`` between the rendered soft silhouette ``s`` and the observed mask ``m``
  (the detection's mask), in ``[0, 1]``.
* **geometry**: the mean distance from each observed depth point to the nearest model point at the current pose
  (metres), one-directional because the observation sees only one side of the object. An optional ``clip`` bounds
  each point's distance so that a few wrong mask pixels do not dominate.

The weights of the paper (``λ`` colour / IoU / geometry = 2e-4 / 0.1 / 1) are the defaults of
:class:`JointLossWeights`: with these units, each term is of the order of 1e-3 near a good pose.

All functions are batched, differentiable, and return one value per item ``(B,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

__all__ = [
    "JointLossTerms",
    "JointLossWeights",
    "ab_channels",
    "colour_loss",
    "geometric_loss",
    "joint_loss",
    "mask_iou_loss",
]

_FAR = 1e4  # |Δab| given to candidates outside a mask: never the nearest when a real one is in the window


def ab_channels(rgb: torch.Tensor) -> torch.Tensor:
    """The ``a``, ``b`` channels of CIE LAB (D65) of an sRGB image.

    Args:
        rgb: ``(B, H, W, 3)`` sRGB in ``[0, 1]``.

    Returns:
        ``(B, 2, H, W)`` in LAB units.
    """
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape (B, H, W, 3), got {tuple(rgb.shape)}")
    lab = kornia.color.rgb_to_lab(rgb.clamp(0.0, 1.0).permute(0, 3, 1, 2))
    return lab[:, 1:]


def _neighbourhood_min(src: torch.Tensor, ref: torch.Tensor, ref_valid: torch.Tensor, k: int) -> torch.Tensor:
    """Per pixel of ``src``, the smallest L1 distance to the ``ref`` pixels of its ``k × k`` window.

    Args:
        src: ``(B, C, H, W)``.
        ref: ``(B, C, H, W)``.
        ref_valid: ``(B, H, W)`` bool, which ``ref`` pixels may be matched.
        k: odd window size.

    Returns:
        ``(B, H, W)``.
    """
    b, c, h, w = ref.shape
    pad = k // 2
    win = F.unfold(ref, k, padding=pad).view(b, c, k * k, h, w)
    ok = F.unfold(ref_valid[:, None].to(ref.dtype), k, padding=pad).view(b, k * k, h, w) > 0.5
    dist = (src[:, :, None] - win).abs().sum(dim=1)  # (B, k², H, W)
    dist = torch.where(ok, dist, torch.full_like(dist, _FAR))
    return dist.amin(dim=1)


def colour_loss(
    rendered: torch.Tensor,
    observed: torch.Tensor,
    rendered_mask: torch.Tensor,
    observed_mask: torch.Tensor,
    *,
    window: int = 3,
) -> torch.Tensor:
    """Bidirectional neighbourhood-nearest colour error in LAB without lightness.

    Pixels count where the rendering shows the object (``rendered_mask > 0.5``, no gradient through this choice)
    *and* the observation shows it (``observed_mask``: occluders and background are not compared). The gradient
    reaches the pose through the rendered colours (and their neighbourhood choice).

    Args:
        rendered: ``(B, H, W, 3)`` rendered sRGB in ``[0, 1]``.
        observed: ``(B, H, W, 3)`` observed sRGB in ``[0, 1]``.
        rendered_mask: ``(B, H, W)`` rendered (soft) silhouette in ``[0, 1]``.
        observed_mask: ``(B, H, W)`` observed object mask (bool or ``{0, 1}``).
        window: odd neighbourhood size ``k`` (3: one pixel either way).

    Returns:
        ``(B,)`` mean ``|Δab|`` (LAB units) of the two directions; 0 for an item without overlap.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    if rendered.shape != observed.shape:
        raise ValueError(f"rendered {tuple(rendered.shape)} and observed {tuple(observed.shape)} differ in shape")
    r_fg = rendered_mask.detach() > 0.5
    o_fg = observed_mask > 0.5 if observed_mask.dtype.is_floating_point else observed_mask.bool()
    both = (r_fg & o_fg).to(rendered.dtype)
    ab_r = ab_channels(rendered)
    ab_o = ab_channels(observed)
    r_to_o = _neighbourhood_min(ab_r, ab_o, o_fg, window)
    o_to_r = _neighbourhood_min(ab_o, ab_r, r_fg, window)
    n = both.sum(dim=(1, 2)).clamp_min(1.0)
    # a pixel whose window holds no valid match (possible only at the rim of the overlap) is left out
    r_ok = both * (r_to_o < _FAR / 2).to(both.dtype)
    o_ok = both * (o_to_r < _FAR / 2).to(both.dtype)
    return 0.5 * ((r_to_o * r_ok).sum(dim=(1, 2)) + (o_to_r * o_ok).sum(dim=(1, 2))) / n


def mask_iou_loss(rendered_mask: torch.Tensor, observed_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 − soft IoU`` of the rendered silhouette and the observed mask.

    Args:
        rendered_mask: ``(B, H, W)`` in ``[0, 1]``.
        observed_mask: ``(B, H, W)`` bool or in ``[0, 1]``.
        eps: guards empty masks (two empty masks give 0).

    Returns:
        ``(B,)`` in ``[0, 1]``.
    """
    if rendered_mask.shape != observed_mask.shape:
        raise ValueError(
            f"rendered mask {tuple(rendered_mask.shape)} and observed mask {tuple(observed_mask.shape)} differ"
        )
    m = observed_mask.to(rendered_mask.dtype)
    inter = (rendered_mask * m).sum(dim=(1, 2))
    union = (rendered_mask + m - rendered_mask * m).sum(dim=(1, 2))
    return 1.0 - (inter + eps) / (union + eps)


def geometric_loss(
    observed_points: torch.Tensor,
    model_points: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """Mean distance from each observed point to the nearest model point at pose ``(R, t)``.

    Args:
        observed_points: ``(B, N, 3)`` camera frame, metres (back-projected observed depth inside the mask).
        model_points: ``(B, M, 3)`` object frame, metres (a surface sample, e.g. ``ObjectModel.points``).
        R: ``(B, 3, 3)`` ``cam_from_obj`` rotations.
        t: ``(B, 3)`` translations, metres.
        valid: ``(B, N)`` which observed points count (default all).
        clip: bound on each point's distance (metres), or None.

    Returns:
        ``(B,)`` metres; 0 for an item without a valid point.
    """
    if observed_points.ndim != 3 or observed_points.shape[-1] != 3:
        raise ValueError(f"observed_points must have shape (B, N, 3), got {tuple(observed_points.shape)}")
    if model_points.ndim != 3 or model_points.shape[-1] != 3:
        raise ValueError(f"model_points must have shape (B, M, 3), got {tuple(model_points.shape)}")
    moved = model_points @ R.transpose(1, 2) + t[:, None, :]
    # the direct difference (not the matrix-product expansion): exact near zero, where the gradient matters
    nearest = torch.cdist(observed_points, moved, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=2)  # (B, N)
    if clip is not None:
        nearest = nearest.clamp_max(clip)
    w = torch.ones_like(nearest) if valid is None else valid.to(nearest.dtype)
    return (nearest * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


@dataclass(frozen=True)
class JointLossWeights:
    """Weights of the three terms (the joint-loss paper's starting values); 0 switches a term off."""

    colour: float = 2e-4
    iou: float = 0.1
    geometry: float = 1.0


@dataclass(frozen=True)
class JointLossTerms:
    """The weighted total and each unweighted term, all ``(B,)``; ``geometry`` is 0 without depth."""

    total: torch.Tensor
    colour: torch.Tensor
    iou: torch.Tensor
    geometry: torch.Tensor


def joint_loss(
    rendered_rgb: torch.Tensor,
    rendered_mask: torch.Tensor,
    observed_rgb: torch.Tensor,
    observed_mask: torch.Tensor,
    weights: JointLossWeights = JointLossWeights(),
    *,
    observed_points: torch.Tensor | None = None,
    model_points: torch.Tensor | None = None,
    R: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    points_valid: torch.Tensor | None = None,
    window: int = 3,
    clip: float | None = None,
) -> JointLossTerms:
    """The self-supervised joint loss of a batch of crops: ``λ_c colour + λ_m IoU + λ_g geometry``.

    Args:
        rendered_rgb: ``(B, H, W, 3)`` differentiable rendering at the current poses, ``[0, 1]``.
        rendered_mask: ``(B, H, W)`` its soft silhouette.
        observed_rgb: ``(B, H, W, 3)`` the observed crops, ``[0, 1]``.
        observed_mask: ``(B, H, W)`` the detections' masks.
        weights: the ``λ``.
        observed_points: ``(B, N, 3)`` observed depth points (camera frame, metres) for the geometry term (RGB-D).
        model_points: ``(B, M, 3)`` object-frame model points, with ``R``/``t`` the current poses.
        R: ``(B, 3, 3)``.
        t: ``(B, 3)``.
        points_valid: ``(B, N)`` valid observed points.
        window: colour neighbourhood size.
        clip: per-point distance bound of the geometry term (metres).

    Returns:
        The terms, each ``(B,)``.
    """
    col = colour_loss(rendered_rgb, observed_rgb, rendered_mask, observed_mask, window=window)
    iou = mask_iou_loss(rendered_mask, observed_mask)
    if observed_points is not None and weights.geometry != 0:
        if model_points is None or R is None or t is None:
            raise ValueError("the geometry term needs model_points, R and t with observed_points")
        geo = geometric_loss(observed_points, model_points, R, t, valid=points_valid, clip=clip)
    else:
        geo = torch.zeros_like(iou)
    total = weights.colour * col + weights.iou * iou + weights.geometry * geo
    return JointLossTerms(total=total, colour=col, iou=iou, geometry=geo)
