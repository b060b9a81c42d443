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

Speed (:func:`crop_losses`, the refiner's path): every crop of a render is sampled in one sparse trilinear gather
(:class:`~meshpose.refine.abstract.field.FieldSet`), the observation's terms are computed once per level and window
(:class:`CropTarget`), the owners come from shifted slices of the objects' bounding box, the image gradients are
taken at the owner pixels only (:func:`_image_gradient`), grouped by object and pulled back to the poses one run per
object without forming Jacobians (:func:`_pull_back`); an evaluation that takes no step skips the gradients
(``want=set()``). Plain numpy/scipy/OpenCV (no torch parallel region); the numbers equal the per-object computation
written out plainly (the tests keep one) up to float32 rounding. Timings: ``docs/abstract.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from meshpose.refine.abstract.field import DescriptorField, FieldSet

__all__ = ["CropLoss", "CropTarget", "blur", "crop_loss", "crop_losses", "pixel_owners", "render_descriptors"]

# The 4-neighbourhood, in the order the owners are decided: (target slice, neighbour slice) per (dy, dx) shift
# (0, 1), (0, -1), (1, 0), (-1, 0); a neighbour outside the image is the pixel itself (no change).
_SHIFTS: tuple[tuple[tuple[slice, slice], tuple[slice, slice]], ...] = (
    ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
    ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
    ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an ``(H, W, D)`` float32 image (any ``D``); ``sigma ≤ 0`` returns it unchanged."""
    if sigma <= 0:
        return img
    out = cv2.GaussianBlur(np.ascontiguousarray(img, dtype=np.float32), (0, 0), float(sigma))
    return out.reshape(img.shape)


def render_descriptors(
    xyz: np.ndarray, instance: np.ndarray, fields: Sequence[DescriptorField | None], dim: int
) -> np.ndarray:
    """The descriptor image of a rendering, object by object (:meth:`DescriptorField.sample
    <meshpose.refine.abstract.field.DescriptorField.sample>`; :func:`crop_losses` samples every object at once).

    Args:
        xyz: ``(H, W, 3)`` object-frame points of the rendering, metres (of the object seen at each pixel).
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


def _owners(label: np.ndarray, z: np.ndarray, occlusion_aware: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_owners` on ``label`` (``(H, W)`` int) and ``z`` (camera z, ``inf`` off the objects): the owner
    map and the row-major flat index of each pixel's source pixel."""
    h, w = label.shape
    owner = label.astype(np.int32)
    best = z.copy()
    on = label > 0
    index = np.arange(h * w, dtype=np.int32 if h * w < 2**31 else np.int64).reshape(h, w)
    src = index.copy()
    for tgt, nb in _SHIFTS:
        cand = np.not_equal(label[nb], label[tgt])
        cand &= on[nb]
        cand &= np.less(z[nb], best[tgt])
        if not occlusion_aware:
            cand &= label[tgt] == 0
        np.copyto(owner[tgt], label[nb], where=cand, casting="unsafe")
        np.copyto(best[tgt], z[nb], where=cand)
        np.copyto(src[tgt], index[nb], where=cand)
    return owner, src


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

    A pixel takes, of its 4 neighbours (right, left, below, above: the first of equal depths) that show another
    object than its own, the nearest one (by the z-buffer) if it is nearer than its own surface.
    """
    lab = np.asarray(instance)
    z = np.where(lab > 0, np.asarray(depth, dtype=np.float64), np.inf)
    owner, src = _owners(lab, z, occlusion_aware)
    src = src.astype(np.int64)
    w = lab.shape[1]
    return owner, src // w, src % w


def _rho(dist: np.ndarray, huber: float) -> np.ndarray:
    if np.isfinite(huber):
        return np.where(dist <= huber, 0.5 * dist**2, huber * (dist - 0.5 * huber))
    return 0.5 * dist**2


class CropTarget:
    """The observed side of one crop, fixed while a level lasts (what :func:`crop_losses` needs besides the
    rendering, with the sums over the observation computed once).

    Args:
        observed: ``(H, W, D)`` observed descriptors, already blurred by ``sigma``.
        valid: ``(H, W)`` bool, crop pixels inside the image.
        sigma: σ of the blur of the observation, pixels.
        render_sigma: σ of the blur of the rendering (default ``sigma``); see :func:`crop_loss`.
        huber: Huber threshold of ``‖r‖`` (``inf``: L2).
    """

    def __init__(
        self,
        observed: np.ndarray,
        valid: np.ndarray,
        sigma: float,
        render_sigma: float | None = None,
        huber: float = float("inf"),
    ) -> None:
        self.observed = np.asarray(observed, dtype=np.float32)
        self.valid = np.asarray(valid, dtype=bool)
        self.sigma = float(sigma)
        self.render_sigma = self.sigma if render_sigma is None else float(render_sigma)
        self.huber = float(huber)
        self.dim = int(self.observed.shape[-1])
        self.n = max(float(self.valid.sum()), 1.0)  # the loss is a mean over the crop's pixels inside the image
        self.validf = self.valid.astype(np.float32)
        self.neg_observed = -(self.observed * self.validf[..., None])  # (H, W, D): −O on the valid pixels, else 0
        self.obs_norm = np.linalg.norm(self.observed, axis=-1) * self.valid  # ‖O‖ where valid: ‖r‖ for F = 0
        self.obs_rho = _rho(self.obs_norm, self.huber)
        self.obs_rho_sum = self.obs_rho.sum()
        self._window_key: tuple[int, int, int, int] | None = None
        self._window_terms: tuple[np.ndarray, bool, float] = (self.neg_observed, True, 0.0)

    def window_terms(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, bool, float]:
        """In the window ``r0:r1, c0:c1``: ``−O`` (contiguous, not to be changed), whether every pixel is valid,
        ``Σ ρ(‖O‖)`` outside it. Kept for the last window asked (a crop's rarely changes between evaluations)."""
        key = (r0, r1, c0, c1)
        if key != self._window_key:
            neg = np.ascontiguousarray(self.neg_observed[r0:r1, c0:c1])
            outside = float(self.obs_rho_sum - self.obs_rho[r0:r1, c0:c1].sum())
            self._window_key = key
            self._window_terms = (neg, bool(self.valid[r0:r1, c0:c1].all()), outside)
        return self._window_terms


class CropLoss:
    """The loss of one crop's rendering and its gradients.

    Args:
        loss: ``Σ ρ / n`` over the crop pixels inside the image.
        grads: object index → ``(6,)`` gradient w.r.t. its centred increment ``[v (m), ω (rad)]``.
        target: the crop's observation.
        window: ``(r0, r1, c0, c1)``: the processed window (outside it the rendering is the background).
        blurred: ``(r1 - r0, c1 - c0, D)`` blurred rendered descriptors in the window (before the gain).
        gain: the fitted gain.
        distance_window: ``(r1 - r0, c1 - c0)`` ``‖G*F − G*O‖`` in the window.

    The full-crop images (:attr:`rendered`, :attr:`distance`) are made on demand.
    """

    def __init__(
        self,
        loss: float,
        grads: dict[int, np.ndarray],
        target: CropTarget,
        window: tuple[int, int, int, int] = (0, 0, 0, 0),
        blurred: np.ndarray | None = None,
        gain: float = 1.0,
        distance_window: np.ndarray | None = None,
    ) -> None:
        self.loss = loss
        self.grads = grads
        self._target = target
        self._window = window
        self._blurred = blurred
        self._gain = gain
        self._distance = distance_window

    @property
    def rendered(self) -> np.ndarray:
        """``(H, W, D)`` blurred rendered descriptors (times the gain), 0 outside the window."""
        out = np.zeros_like(self._target.observed)
        if self._blurred is not None:
            r0, r1, c0, c1 = self._window
            out[r0:r1, c0:c1] = self._gain * self._blurred
        return out

    @property
    def distance(self) -> np.ndarray:
        """``(H, W)`` ``‖G*F − G*O‖`` per pixel (float32)."""
        out = self._target.obs_norm.astype(np.float32)
        if self._distance is not None:
            r0, r1, c0, c1 = self._window
            out[r0:r1, c0:c1] = self._distance
        return out


def _pull_back(
    au: np.ndarray,
    av: np.ndarray,
    X: np.ndarray,
    obj: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    centers: np.ndarray,
    K: np.ndarray,
    c_cam: np.ndarray | None = None,
) -> np.ndarray:
    """Image-space gradients pulled back to every object's centred pose increment: per object ``j``,
    ``Σ_m (a_u, a_v)_m · J_u(P_m)`` over its pixels, with ``J_u`` of
    :func:`~meshpose.refine.contour.terms.motion_jacobian` (not formed: with ``w = aᵀ ∂u/∂P``, the sum is
    ``[Σ w, Σ (P − c_j) × w]``).

    Args:
        au: ``(M,)`` ``∂L/∂F · ∂F/∂u`` per pixel.
        av: ``(M,)`` ``∂L/∂F · ∂F/∂v`` per pixel.
        X: ``(M, 3)`` object-frame surface points giving the pixels' motions, metres.
        obj: ``(M,)`` int, the object each pixel follows (any order: the pixels are grouped by object here).
        R: ``(N, 3, 3)`` rotations ``cam_from_obj``.
        t: ``(N, 3)`` translations, metres.
        centers: ``(N, 3)`` object-frame centres of the increments, metres.
        K: ``(3, 3)`` the camera's intrinsics.
        c_cam: ``(N, 3)`` the centres in the camera frame, ``R_j c_j + t_j`` (computed here if not given).

    Returns:
        ``(N, 6)`` float64 (0 for objects without pixels).

    The pixels are taken as one run per object (a crop shows a few objects), so that each point is moved by its
    own object's pose only (``P = R_j X + t_j``, camera frame, ``(3, M)`` rows), and the sums are per run.
    """
    n, m = len(R), len(obj)
    out = np.zeros((n, 6))
    if m == 0:
        return out
    obj = np.asarray(obj)
    if np.any(obj[1:] < obj[:-1]):  # one run of pixels per object (stable: the sums' order within a run is kept)
        order = np.argsort(obj, kind="stable")
        au, av, X, obj = au[order], av[order], X[order], obj[order]
    bounds = np.searchsorted(obj, np.arange(n + 1))  # object j's run: bounds[j] : bounds[j + 1]
    present = np.flatnonzero(bounds[1:] > bounds[:-1])
    Xt = np.array(X.T, dtype=np.float64, order="C")  # (3, M)
    P = np.empty((3, m))
    for j in present:
        run = slice(bounds[j], bounds[j + 1])
        np.matmul(R[j], Xt[:, run], out=P[:, run])
        P[:, run] += t[j][:, None]
    x, y, iz = P[0], P[1], 1.0 / P[2]
    fx, s, fy = float(K[0, 0]), float(K[0, 1]), float(K[1, 1])
    u = au.astype(np.float64) * iz  # a_u / z
    v = av.astype(np.float64) * iz  # a_v / z
    w = np.empty((6, m))  # per pixel: w = aᵀ ∂u/∂P (rows 0-2), P × w (rows 3-5)
    np.multiply(u, fx, out=w[0])
    skew = s != 0.0  # without skew (the crops' cameras) the same numbers, less the zero terms
    w[1] = u * s + v * fy if skew else v * fy
    np.multiply(u * (fx * x + s * y if skew else fx * x) + v * (fy * y), -iz, out=w[2])
    np.subtract(y * w[2], P[2] * w[1], out=w[3])
    np.subtract(P[2] * w[0], x * w[2], out=w[4])
    np.subtract(x * w[1], y * w[0], out=w[5])
    sums = np.add.reduceat(w, bounds[present], axis=1).T  # (objects present, 6)
    c = (np.einsum("nij,nj->ni", R, centers) + t if c_cam is None else c_cam)[present]  # the increments' centres
    (cx, cy, cz), (sx, sy, sz) = c.T, sums[:, :3].T
    out[present, :3] = sums[:, :3]
    # Σ (P − c) × w = Σ P × w − c × Σ w (the cross product written out: np.cross's own operations, less overhead)
    out[present, 3:] = sums[:, 3:] - np.stack([cy * sz - cz * sy, cz * sx - cx * sz, cx * sy - cy * sx], 1)
    return out


def _image_gradient(
    F: np.ndarray, adj: np.ndarray, pix: np.ndarray, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``adj · ∂F/∂u`` and ``adj · ∂F/∂v`` at some pixels: the central differences of :func:`_central_difference`
    (one-sided at the image's edges) taken at those pixels only.

    Args:
        F: ``(H, W, D)`` float32 image.
        adj: ``(H, W, D)`` float32 image (``∂L/∂F``).
        pix: ``(M,)`` row-major flat indices of the pixels.
        scale: ``adj`` is taken times this (float32, at the pixels only).

    Returns:
        ``(a_u, a_v)``: ``(M,)`` float32 each, the numbers of
        ``einsum("hwd,hwd->hw", scale * adj, _central_difference(F, axis)).reshape(-1)[pix]``.
    """
    h, w, d = F.shape
    flat = F.reshape(-1, d)
    a = np.take(adj.reshape(-1, d), pix, axis=0)
    if scale != 1.0:
        np.multiply(a, np.float32(scale), out=a)
    out = []
    row, col = np.divmod(pix, w)
    for pos, size, step in ((col, w, 1), (row, h, w)):
        inner = bool(len(pos)) and pos.min() > 0 and pos.max() < size - 1  # no pixel on the image's edges
        up, down = (1, 1) if inner else (pos < size - 1, pos > 0)  # the neighbours' offsets, clipped to the image
        diff = np.take(flat, pix + step * up, axis=0)  # F[x + 1] − F[x − 1]
        diff -= np.take(flat, pix - step * down, axis=0)
        diff *= np.float32(0.5)
        edge = np.zeros(0, np.intp) if inner else np.flatnonzero((pos == 0) | (pos == size - 1))
        if len(edge):
            diff[edge] *= np.float32(2.0)  # one-sided at the edges (halving and doubling are exact)
        out.append(np.einsum("md,md->m", a, diff))
    return out[0], out[1]


_DIFF_U = np.array([[-0.5, 0.0, 0.5]], np.float32)
_DIFF_V = np.ascontiguousarray(_DIFF_U.T)


def _central_difference(img: np.ndarray, axis: int) -> np.ndarray:
    """Central differences ``(img[x + 1] − img[x − 1]) / 2`` of an ``(H, W, D)`` float32 image along ``axis`` (1: u,
    0: v), one-sided ``img[x + 1] − img[x]`` at the edges (the same numbers as computing them by hand: halving and
    doubling are exact)."""
    kernel = _DIFF_U if axis == 1 else _DIFF_V
    out = np.asarray(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REPLICATE), np.float32).reshape(img.shape)
    if img.shape[axis] > 1:  # replicated edges give half the one-sided difference
        edge = (slice(None), [0, -1]) if axis == 1 else ([0, -1], slice(None))
        out[edge] = out[edge] * np.float32(2.0)
    return out


@dataclass
class _Window:
    """One crop's processed window, the object pixels in it and the objects' bounding box grown by a pixel
    (``box``: outside it no pixel follows an object)."""

    r0: int
    r1: int
    c0: int
    c1: int
    obj: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # window-flat indices
    full: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # crop-flat indices
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # rows a0:a1, columns b0:b1 of the window


def _window(instance: np.ndarray, target: CropTarget) -> _Window | None:
    """The window around the rendered objects, wide enough for the blurs (``None``: no object shows)."""
    on = instance > 0
    rows = np.flatnonzero(on.any(1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(on.any(0))
    h, w = instance.shape
    m = math.ceil(3.0 * max(target.render_sigma, target.sigma)) + 3
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    r0, r1 = max(top - m, 0), min(bottom + m + 1, h)
    c0, c1 = max(left - m, 0), min(right + m + 1, w)
    obj = np.flatnonzero(on[r0:r1, c0:c1])
    ww = c1 - c0
    full = (obj // ww + r0) * w + (obj % ww + c0)
    box = (max(top - 1, r0) - r0, min(bottom + 2, r1) - r0, max(left - 1, c0) - c0, min(right + 2, c1) - c0)
    return _Window(r0, r1, c0, c1, obj, full, box)


def crop_losses(
    xyz: Sequence[np.ndarray],
    instance: Sequence[np.ndarray],
    depth: Sequence[np.ndarray],
    targets: Sequence[CropTarget],
    Ks: Sequence[np.ndarray],
    fields: FieldSet,
    R: np.ndarray,
    t: np.ndarray,
    centers: np.ndarray,
    *,
    gain: tuple[float, float] | None = (0.5, 2.0),
    want: set[int] | None = None,
    occlusion_aware: bool = True,
) -> list[CropLoss]:
    """:func:`crop_loss` of ``B`` crops rendered with the same poses (the descriptors of all crops sampled at once).

    Args:
        xyz: per crop, ``(H, W, 3)`` object-frame points of its rendering.
        instance: per crop, ``(H, W)`` ``1 + object index`` (0: background).
        depth: per crop, ``(H, W)`` camera z of the rendering, metres.
        targets: per crop, its observation.
        Ks: per crop, ``(3, 3)`` its camera's intrinsics.
        fields: the objects' fused descriptors.
        R: ``(N, 3, 3)`` the rendered rotations ``cam_from_obj``.
        t: ``(N, 3)`` the rendered translations, metres.
        centers: ``(N, 3)`` object-frame centres of the increments, metres.
        gain: see :func:`crop_loss`.
        want: object indices whose gradients are wanted (default: all that show; empty: the losses only, faster).
        occlusion_aware: see :func:`pixel_owners`.

    Returns:
        The ``B`` :class:`CropLoss` es.
    """
    windows = [_window(inst, tg) for inst, tg in zip(instance, targets, strict=True)]
    # every window's rendered descriptors F in one sparse gather, window after window (0 off the objects)
    pts, objs, rows, starts = [], [], [], [0]
    for b, win in enumerate(windows):
        if win is not None:
            pts.append(np.take(xyz[b].reshape(-1, 3), win.full, axis=0))
            objs.append(np.take(instance[b].reshape(-1), win.full).astype(np.int64) - 1)
            rows.append(win.obj + starts[-1])
        starts.append(starts[-1] + (0 if win is None else (win.r1 - win.r0) * (win.c1 - win.c0)))
    desc = (
        fields.sample(np.concatenate(pts), np.concatenate(objs), np.concatenate(rows), starts[-1])
        if pts
        else np.zeros((0, fields.dim), np.float32)
    )
    out = []
    c_cam = np.einsum("nij,nj->ni", R, centers) + t  # the increments' centres, camera frame
    for b, win in enumerate(windows):
        tg = targets[b]
        if win is None:
            out.append(CropLoss(float(tg.obs_rho_sum / tg.n), {}, tg))
            continue
        F = desc[starts[b] : starts[b + 1]].reshape(win.r1 - win.r0, win.c1 - win.c0, fields.dim)
        out.append(
            _one_crop(
                xyz[b], instance[b], depth[b], tg, Ks[b], win, F, R, t, centers, gain, want, occlusion_aware, c_cam
            )
        )
    return out


def _one_crop(
    xyz: np.ndarray,
    instance: np.ndarray,
    depth: np.ndarray,
    tg: CropTarget,
    K: np.ndarray,
    win: _Window,
    F: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    centers: np.ndarray,
    gain: tuple[float, float] | None,
    want: set[int] | None,
    occlusion_aware: bool,
    c_cam: np.ndarray,
) -> CropLoss:
    """The loss and gradients of one crop, given its rendered descriptors ``F`` in the window."""
    r0, r1, c0, c1 = win.r0, win.r1, win.c0, win.c1
    ww = c1 - c0
    w = instance.shape[1]
    rs = tg.render_sigma
    neg_ov, all_valid, outside_sum = tg.window_terms(r0, r1, c0, c1)
    Fb = blur(F, rs)
    fv = Fb if all_valid else Fb * tg.validf[r0:r1, c0:c1, None]  # G*F on the valid pixels
    g = 1.0
    if gain is not None:  # least squares over the valid pixels (where G*F = 0 they add nothing)
        ff = float(np.dot(fv.reshape(-1), fv.reshape(-1)))
        if ff > 1e-12:
            fo = -float(np.dot(Fb.reshape(-1), neg_ov.reshape(-1)))
            g = min(max(fo / ff, float(gain[0])), float(gain[1]))  # np.clip's numbers, without its overhead
    r = cv2.scaleAdd(fv, g, neg_ov).reshape(fv.shape)  # r = (g G*F − G*O) on the valid pixels, else 0
    dist = np.sqrt(np.einsum("hwd,hwd->hw", r, r))
    rho = _rho(dist, tg.huber)
    loss = float(rho.sum()) + outside_sum
    if want is not None and not want:  # the loss only
        return CropLoss(loss / tg.n, {}, tg, (r0, r1, c0, c1), Fb, g, dist)
    # ∂(n L)/∂F · ∇F at the pixels that follow an object (central differences, one-sided at the window's edges); the
    # owners are decided in the objects' bounding box grown by a pixel (outside it no pixel has an object neighbour)
    a0, a1, b0, b1 = r0 + win.box[0], r0 + win.box[1], c0 + win.box[2], c0 + win.box[3]
    lab = instance[a0:a1, b0:b1]
    z = np.where(lab > 0, depth[a0:a1, b0:b1], np.float32(np.inf))
    owner, src = _owners(lab, z, occlusion_aware)
    sub = np.flatnonzero(owner)
    own = owner.reshape(-1)[sub] - 1
    if want is not None:
        wanted = np.zeros(len(R), bool)
        wanted[list(want)] = True
        sel = wanted[own]
        sub, own = sub[sel], own[sel]
    grads: dict[int, np.ndarray] = {}
    if len(sub):
        if np.any(own[1:] < own[:-1]):  # one run of pixels per object (stable: raster order within a run)
            order = np.argsort(own.astype(np.int16 if len(R) < 2**15 else np.intp), kind="stable")
            sub, own = sub[order], own[order]
        bw = b1 - b0
        pix = (sub // bw + win.box[0]) * ww + sub % bw + win.box[2]  # window-flat
        if np.isfinite(tg.huber):
            psi = np.where(dist <= tg.huber, 1.0, tg.huber / np.maximum(dist, 1e-12)).astype(np.float32)
            np.multiply(r, psi[..., None], out=r)
        adj = blur(r, rs)  # ∂(n L)/∂F = g G * (ψ r), the gain applied at the pixels only (the same numbers)
        au, av = _image_gradient(F, adj, pix, g)
        keep = (np.abs(au) + np.abs(av)) > 0
        j = own[keep]
        s_row, s_col = np.divmod(np.take(src.reshape(-1), sub[keep]), bw)
        X = np.take(xyz.reshape(-1, 3), (s_row + a0) * w + (s_col + b0), axis=0)
        G = _pull_back(au[keep], av[keep], X, j, R, t, centers, K, c_cam)
        grads = {int(k): -G[k] / tg.n for k in np.flatnonzero(np.bincount(j, minlength=len(R)))}
    return CropLoss(loss / tg.n, grads, tg, (r0, r1, c0, c1), Fb, g, dist)


def crop_loss(
    xyz: np.ndarray,
    instance: np.ndarray,
    depth: np.ndarray,
    fields: Sequence[DescriptorField | None] | FieldSet,
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
        fields: per object, its fused descriptors (or a :class:`~meshpose.refine.abstract.field.FieldSet` of them).
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
    is the background, so those pixels add the constant ``Σ ρ(‖O‖)`` and nothing to the gradients. Several crops
    rendered with the same poses: :func:`crop_losses` (faster).
    """
    target = CropTarget(observed, valid, sigma, render_sigma, huber)
    fset = fields if isinstance(fields, FieldSet) else FieldSet(fields, target.dim)
    return crop_losses(
        [xyz],
        [instance],
        [depth],
        [target],
        [K],
        fset,
        R,
        t,
        centers,
        gain=gain,
        want=want,
        occlusion_aware=occlusion_aware,
    )[0]
