"""LightDR: the descriptor rendering of a crop, its loss against the observed descriptors, and the loss's gradient
with respect to every object's pose (OpenDR-style screen-space gradients, occlusion-aware).

Forward. One GL pass gives, per pixel, the object seen there (``instance``), its depth and its object-frame point
``xyz``; the rendered descriptor image is ``F(x) = field_k(xyz(x))`` on object ``k``'s pixels and ``0`` (the
background descriptor) elsewhere. Both ``F`` and the observed descriptors ``O`` are blurred by a Gaussian ``G``
(σ of a pixel or two) and compared: ``L = Σ_x ρ(‖G*F − G*O‖) / n`` over the ``n`` crop pixels inside the image
(``ρ``: L2, or Huber).

Backward. A left increment ``δ_k = [v, ω]`` of object ``k``'s pose (centred on the object, see
:func:`~meshpose.refine.contour.terms.motion_jacobian`) moves the surface point seen at ``x`` by ``Δu = J_u(x) δ_k``;
the image content moves with it, so ``∂F(x)/∂δ_k = −∇F(x) · J_u(x)`` with ``∇F`` from central differences of the
rendering (across an object's contour they span the jump to the background descriptor or to the object behind:
that is what moves a silhouette). Which object's motion a pixel follows:

* inside an object: that object's, at its own surface point;
* a background pixel next to an object (the one-pixel dilation): that object's, at the neighbouring surface point;
* a pixel on an occlusion boundary between two objects: the **front** object's, decided by the z-buffer — on
  both sides of the boundary. Moving the hidden object does not move that boundary; moving the front one does
  (the seed's fix of OpenDR's occlusion boundaries). ``occlusion_aware=False`` gives each pixel to its own object
  instead, for comparison.

The chain rule through the blur is ``∂L/∂F = G * (ρ'(‖r‖) r / ‖r‖)``, so ``∂L/∂δ_k = −Σ_x (∂L/∂F(x))ᵀ ∇F(x) J_u(x)``
over the pixels that follow object ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from meshpose.refine.abstract.field import DescriptorField
from meshpose.refine.contour.terms import motion_jacobian

__all__ = ["CropLoss", "blur", "crop_loss", "pixel_owners", "render_descriptors"]

_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an ``(H, W, D)`` float32 image (any ``D``); ``sigma ≤ 0`` returns it unchanged."""
    if sigma <= 0:
        return img
    out = cv2.GaussianBlur(np.ascontiguousarray(img, dtype=np.float32), (0, 0), float(sigma))
    return out.reshape(img.shape)


def render_descriptors(
    xyz: np.ndarray, instance: np.ndarray, fields: Sequence[DescriptorField | None], dim: int
) -> np.ndarray:
    """The descriptor image of a rendering.

    Args:
        xyz: ``(H, W, 3)`` object-frame points of the rendering.
        instance: ``(H, W)`` ``1 + object index`` (0: background).
        fields: per object, its fused descriptors (``None``: drawn as background).
        dim: descriptor channels ``D``.

    Returns:
        ``(H, W, D)`` float32, 0 on the background.
    """
    out = np.zeros((*instance.shape, dim), np.float32)
    for k in np.unique(instance):
        if k <= 0 or fields[k - 1] is None:
            continue
        pix = instance == k
        out[pix] = fields[k - 1].sample(xyz[pix])
    return out


def pixel_owners(
    instance: np.ndarray, depth: np.ndarray, occlusion_aware: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which object's motion each pixel follows, and the pixel whose surface point gives that motion.

    Args:
        instance: ``(H, W)`` int, ``1 + object index`` (0: background).
        depth: ``(H, W)`` camera z of the rendering, metres.
        occlusion_aware: give the pixels on both sides of an occlusion boundary to the front object (else each
            object pixel keeps its own object; background pixels next to objects go to the nearest one either way).

    Returns:
        ``(owner, src_row, src_col)``: ``(H, W)`` int32 ``1 + object index`` (0: none) and the ``(H, W)`` int64
        row and column of the source pixel.
    """
    h, w = instance.shape
    lab = instance.astype(np.int64)
    z = np.where(lab > 0, depth.astype(np.float64), np.inf)
    rows, cols = np.indices((h, w))
    owner = lab.copy()
    best = z.copy()
    src_r, src_c = rows.copy(), cols.copy()
    for dy, dx in _SHIFTS:
        # neighbour (y + dy, x + dx), edges replicated (a replicated pixel is the pixel itself: no change)
        ry = np.clip(rows + dy, 0, h - 1)
        cx = np.clip(cols + dx, 0, w - 1)
        nl, nz = lab[ry, cx], z[ry, cx]
        cand = (nl > 0) & (nl != lab) & (nz < best)
        if not occlusion_aware:
            cand &= lab == 0
        owner = np.where(cand, nl, owner)
        best = np.where(cand, nz, best)
        src_r = np.where(cand, ry, src_r)
        src_c = np.where(cand, cx, src_c)
    return owner.astype(np.int32), src_r, src_c


def _central_gradient(img: np.ndarray) -> np.ndarray:
    """``(H, W, D, 2)`` central differences ``(∂/∂u, ∂/∂v)`` of an ``(H, W, D)`` image (one-sided at the edges)."""
    g = np.zeros((*img.shape, 2), np.float32)
    g[:, 1:-1, :, 0] = 0.5 * (img[:, 2:] - img[:, :-2])
    g[:, 0, :, 0] = img[:, 1] - img[:, 0]
    g[:, -1, :, 0] = img[:, -1] - img[:, -2]
    g[1:-1, :, :, 1] = 0.5 * (img[2:] - img[:-2])
    g[0, :, :, 1] = img[1] - img[0]
    g[-1, :, :, 1] = img[-1] - img[-2]
    return g


@dataclass
class CropLoss:
    """The loss of one crop's rendering and its gradients.

    Args:
        loss: ``Σ ρ / n`` over the crop pixels inside the image.
        grads: object index → ``(6,)`` gradient w.r.t. its centred increment ``[v (m), ω (rad)]``.
        rendered: ``(H, W, D)`` blurred rendered descriptors.
        distance: ``(H, W)`` ``‖G*F − G*O‖`` per pixel.
    """

    loss: float
    grads: dict[int, np.ndarray]
    rendered: np.ndarray
    distance: np.ndarray


def _rho(dist: np.ndarray, huber: float) -> np.ndarray:
    if np.isfinite(huber):
        return np.where(dist <= huber, 0.5 * dist**2, huber * (dist - 0.5 * huber))
    return 0.5 * dist**2


def crop_loss(
    xyz: np.ndarray,
    instance: np.ndarray,
    depth: np.ndarray,
    fields: Sequence[DescriptorField | None],
    R: np.ndarray,
    t: np.ndarray,
    centers: np.ndarray,
    K: np.ndarray,
    observed: np.ndarray,
    valid: np.ndarray,
    *,
    sigma: float,
    render_sigma: float | None = None,
    huber: float = float("inf"),
    gain: tuple[float, float] | None = (0.5, 2.0),
    want: set[int] | None = None,
    occlusion_aware: bool = True,
) -> CropLoss:
    """Loss of a crop's descriptor rendering against the observation and its gradient per object (module doc).

    Args:
        xyz: ``(H, W, 3)`` object-frame points of the rendering.
        instance: ``(H, W)`` ``1 + object index`` (0: background).
        depth: ``(H, W)`` camera z of the rendering, metres.
        fields: per object, its fused descriptors.
        R: ``(N, 3, 3)`` the rendered rotations ``cam_from_obj``.
        t: ``(N, 3)`` the rendered translations, metres.
        centers: ``(N, 3)`` object-frame centres of the increments, metres.
        K: ``(3, 3)`` the crop camera's intrinsics.
        observed: ``(H, W, D)`` observed descriptors, already blurred by ``sigma``.
        valid: ``(H, W)`` bool, crop pixels inside the image.
        sigma: σ of the blur of the observation, pixels.
        render_sigma: σ of the blur of the rendering (default ``sigma``). An observed crop upsampled from the
            image by a factor ``s > 1`` is blurrier than a crop rendered at its resolution — the image's pixels
            integrate over ``s`` crop pixels (a box, variance ``s²/12``) and bilinear resampling adds a triangle
            (``s²/6``) — so the rendering takes ``σ² + s²/4`` to match; unmatched, a blurrier observation pulls
            the object towards the camera (a larger silhouette).
        huber: Huber threshold of ``‖r‖`` (``inf``: L2, ``ρ = ½‖r‖²``).
        gain: bounds of a scalar gain ``g`` on the rendered descriptors, fitted by least squares over the
            rendered objects' pixels (``None``: ``g = 1``). Descriptors fused from many views are shorter than one
            view's (averaging shrinks vectors that do not agree exactly); unmatched, the shorter rendered
            descriptors make a larger silhouette look better — the object is pulled towards the camera. At the
            fitted gain ``∂L/∂g = 0``, so the pose gradient is taken at ``g`` fixed.
        want: object indices whose gradients are wanted (default: all that show).
        occlusion_aware: see :func:`pixel_owners`.

    Returns:
        The :class:`CropLoss`.

    Only a window around the rendered objects (wide enough for the blurs) is processed: outside it the rendering
    is the background, so those pixels add the constant ``Σ ρ(‖O‖)`` and nothing to the gradients.
    """
    rs = sigma if render_sigma is None else render_sigma
    dim = observed.shape[-1]
    h, w = instance.shape
    n = max(float(valid.sum()), 1.0)  # the loss is a mean over the crop's pixels inside the image
    vobs = np.linalg.norm(observed, axis=-1) * valid
    rows = np.flatnonzero((instance > 0).any(1))
    if len(rows) == 0:
        return CropLoss(float(_rho(vobs, huber).sum() / n), {}, np.zeros_like(observed), vobs)
    cols = np.flatnonzero((instance > 0).any(0))
    m = math.ceil(3.0 * max(rs, sigma)) + 3
    r0, r1 = max(int(rows[0]) - m, 0), min(int(rows[-1]) + m + 1, h)
    c0, c1 = max(int(cols[0]) - m, 0), min(int(cols[-1]) + m + 1, w)
    win = np.s_[r0:r1, c0:c1]
    outside = _rho(vobs, huber)
    outside_sum = float(outside.sum() - outside[win].sum())
    xyz, instance, depth, observed, valid = xyz[win], instance[win], depth[win], observed[win], valid[win]
    F = render_descriptors(xyz, instance, fields, dim)
    Fb = blur(F, rs)
    validf = valid.astype(np.float32)
    g = 1.0
    if gain is not None:
        on = (np.abs(Fb).sum(-1) > 0) & valid
        ff = float(np.einsum("nd,nd->", Fb[on], Fb[on]))
        if ff > 1e-12:
            g = float(np.clip(np.einsum("nd,nd->", Fb[on], observed[on]) / ff, gain[0], gain[1]))
    Fb = g * Fb
    r = (Fb - observed) * validf[..., None]
    dist = np.linalg.norm(r, axis=-1)
    rho = _rho(dist, huber)
    if np.isfinite(huber):
        psi = np.where(dist <= huber, 1.0, huber / np.maximum(dist, 1e-12)).astype(np.float32)
    else:
        psi = np.ones_like(dist)
    loss = float(rho.sum()) + outside_sum
    adj = g * blur(r * psi[..., None], rs)  # ∂(n L)/∂F
    grad_img = _central_gradient(F)  # (H, W, D, 2)
    a = np.einsum("hwd,hwdk->hwk", adj, grad_img)  # (H, W, 2): ∂(n L)/∂F · ∇F
    owner, src_r, src_c = pixel_owners(instance, depth, occlusion_aware)
    active = (owner > 0) & (np.abs(a).sum(-1) > 0)
    grads: dict[int, np.ndarray] = {}
    for k in np.unique(owner[active]):
        j = int(k) - 1
        if want is not None and j not in want:
            continue
        rr, cc = np.nonzero(active & (owner == k))
        P = xyz[src_r[rr, cc], src_c[rr, cc]].astype(np.float64) @ R[j].T + t[j]
        J = motion_jacobian(P, K, R[j] @ centers[j] + t[j])  # (M, 2, 6)
        grads[j] = -np.einsum("mk,mkj->j", a[rr, cc].astype(np.float64), J)
    rendered = np.zeros((h, w, dim), np.float32)
    rendered[win] = Fb
    distance = vobs.astype(np.float32)
    distance[win] = dist
    return CropLoss(loss / n, {j: gj / n for j, gj in grads.items()}, rendered, distance)
