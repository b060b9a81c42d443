"""Image-space building blocks of the ``contour`` refiner: pixel motions, colour models and energy terms.

Everything here works on one square crop at a time (numpy ``float32`` images, pixel centres at integers, OpenCV
camera). The refiner loop lives in :mod:`meshpose.refine.contour`.

Screen-space gradients (OpenDR style). A rasterised render gives, at every covered pixel ``x``, the object-frame
point ``X(x)`` seen there. A left-multiplied increment ``δ = [v, ω]`` of the pose moves the camera-frame point
``P = R X + t`` to ``exp(δ) P`` and the pixel to ``x + Δu(x; δ)`` with ``Δu ≈ J_u(x) δ``
(:func:`motion_jacobian`, the linearisation of :func:`project_under_increment`). A rendered quantity ``A`` then
changes to first order by ``-∇A(x) · Δu(x)`` — the image content moves with the surface — where ``∇A`` comes from
finite differences of the render (the colour term). The silhouette's contour moves with the surface point of the
owned pixel next to it, along the contour normal (from finite differences of the slightly blurred silhouette):
the background pixel just outside has no surface point of its own and borrows its foreground neighbour's motion
(the one-pixel dilation of abstract render-and-compare). Where the contour should go comes from the foreground
posterior along that normal (:func:`contour_lines`, SRT3D-style correspondence lines).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from meshpose.types import se3_exp

__all__ = [
    "ColorModel",
    "ContourLines",
    "contour_lines",
    "motion_jacobian",
    "neighbourhood_min_distance",
    "project_under_increment",
    "region_energy",
    "rgb_to_lab",
    "smoothed_step",
]


# ----------------------------------------------------------------------------------------------------------
# Pixel motion under a pose increment
# ----------------------------------------------------------------------------------------------------------
def project_under_increment(
    delta: torch.Tensor, points_cam: torch.Tensor, K: torch.Tensor, center: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixels of camera-frame points after a left-multiplied pose increment: ``π(K, exp(δ) (P - c) + c)``.

    The increment acts on the camera side (``cam_from_obj ← exp(δ)·cam_from_obj``) in a frame with the camera's
    axes and its origin moved to ``c`` (the object's centre, say), so that ``ω`` turns the object about its own
    centre instead of about the camera centre: the translation and rotation columns of the Jacobian are then far
    less correlated (better conditioned least squares). ``c = 0`` is the plain left increment.

    This is the differentiable definition that :func:`motion_jacobian` linearises (the tests check one against
    the other with autograd).

    Args:
        delta: ``(6,)`` twist ``[v, ω]`` (metres, radians).
        points_cam: ``(M, 3)`` camera-frame points, metres.
        K: ``(3, 3)`` intrinsics.
        center: ``(3,)`` camera-frame centre of the increment (default: the camera centre).

    Returns:
        ``(M, 2)`` pixel coordinates ``(u, v)``.
    """
    c = torch.zeros(3, dtype=points_cam.dtype) if center is None else center.to(points_cam.dtype)
    R, t = se3_exp(delta)
    p = (points_cam - c) @ R.transpose(-1, -2) + t + c
    uvw = p @ K.to(p.dtype).transpose(-1, -2)
    return uvw[:, :2] / uvw[:, 2:3]


def motion_jacobian(points_cam: np.ndarray, K: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Jacobian of the pixel position w.r.t. a left pose increment ``δ = [v, ω]`` at ``δ = 0``.

    With the increment centred at ``c`` (see :func:`project_under_increment`), ``d P / d δ = [I, -[P - c]×]``
    and ``d u / d P`` is the pinhole derivative, so ``J_u = (d u / d P) [I, -[P - c]×]``.

    Args:
        points_cam: ``(M, 3)`` camera-frame points, metres (``z > 0``).
        K: ``(3, 3)`` intrinsics (skew allowed).
        center: ``(3,)`` camera-frame centre of the increment (default: the camera centre).

    Returns:
        ``(M, 2, 6)`` float64: row 0 is ``d u / d δ``, row 1 ``d v / d δ``.

    Example:
        >>> K = np.array([[100.0, 0, 32], [0, 100, 32], [0, 0, 1]])
        >>> J = motion_jacobian(np.array([[0.0, 0.0, 1.0]]), K)
        >>> (J[0, 0, :3] + 0.0).tolist()  # moving the point along x by 1 m at 1 m moves it fx pixels
        [100.0, 0.0, 0.0]
    """
    p = np.asarray(points_cam, dtype=np.float64)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    iz = 1.0 / z
    fx, s, fy = K[0, 0], K[0, 1], K[1, 1]
    # d(u, v) / dP, (M, 2, 3)
    dudp = np.zeros((len(p), 2, 3))
    dudp[:, 0, 0] = fx * iz
    dudp[:, 0, 1] = s * iz
    dudp[:, 0, 2] = -(fx * x + s * y) * iz * iz
    dudp[:, 1, 1] = fy * iz
    dudp[:, 1, 2] = -fy * y * iz * iz
    # dP / dω = -[P - c]× (columns: d/dωx, d/dωy, d/dωz)
    q = p if center is None else p - np.asarray(center, dtype=np.float64)
    qx, qy, qz = q[:, 0], q[:, 1], q[:, 2]
    dpdw = np.zeros((len(p), 3, 3))
    dpdw[:, 0, 1], dpdw[:, 0, 2] = qz, -qy
    dpdw[:, 1, 0], dpdw[:, 1, 2] = -qz, qx
    dpdw[:, 2, 0], dpdw[:, 2, 1] = qy, -qx
    J = np.empty((len(p), 2, 6))
    J[:, :, :3] = dudp
    J[:, :, 3:] = dudp @ dpdw
    return J


def smoothed_step(x: np.ndarray, slope: float, alpha: float) -> np.ndarray:
    """Foreground probability ``h_f(x) = ½ - (α/2) tanh(x / (2 s))`` at signed distance ``x`` (inside < 0).

    ``α < 1`` keeps ``h_f`` inside ``((1 - α)/2, (1 + α)/2)``: a global uncertainty that stops one wrongly
    classified pixel from vetoing a contour location (SRT3D's smoothed step functions).
    """
    return 0.5 - 0.5 * alpha * np.tanh(np.asarray(x) / (2.0 * slope))


@dataclass(frozen=True)
class ContourLines:
    """Where the foreground posterior says the contour is, along the normals of the rendered contour.

    Args:
        rows: ``(L,)`` row of the contour pixel (an owned pixel with a movable contour edge) each line starts at.
        cols: ``(L,)`` its column.
        normals: ``(L, 2)`` outward unit normals ``(du, dv)``.
        offset: ``(L,)`` expected offset (pixels, along the normal) from the rendered to the observed contour.
        variance: ``(L,)`` variance of that offset, pixels².
    """

    rows: np.ndarray
    cols: np.ndarray
    normals: np.ndarray
    offset: np.ndarray
    variance: np.ndarray


def contour_lines(
    own: np.ndarray,
    movable: np.ndarray,
    posterior: np.ndarray,
    *,
    half_length: int,
    max_lines: int,
    slope: float = 1.0,
    alpha: float = 0.8,
    min_variance: float = 0.25,
) -> ContourLines:
    """Correspondence lines: a 1-D search for the contour along the rendered contour's normals.

    For each (sub-sampled) contour pixel, the posterior is sampled along the outward normal at
    ``s = -n .. n`` pixels; every candidate contour position ``d`` (an edge half a pixel beyond the contour pixel,
    shifted by ``d``) gets the likelihood ``Π_s [h_f(s - e_d) P(s) + (1 - h_f(s - e_d)) (1 - P(s))]`` with the
    smoothed step :func:`smoothed_step`; the normalised likelihood gives the line's expected offset and its
    variance (as in SRT3D). The normal comes from finite differences of the slightly blurred silhouette.

    Args:
        own: ``(H, W)`` bool silhouette of the object.
        movable: ``(H, W)`` bool, the owned pixels whose contour moves with the object (next to background or an
            object behind it, not only next to an occluder in front).
        posterior: ``(H, W)`` float32 foreground posterior; 0.5 where nothing is known (outside the image,
            under an occluder).
        half_length: ``n``, pixels searched on each side.
        max_lines: at most this many lines (evenly sub-sampled).
        slope: smoothing of the step, pixels.
        alpha: global certainty of the step (< 1).
        min_variance: floor of the returned variances, pixels².

    Returns:
        The :class:`ContourLines` (possibly empty).
    """
    ownf = own.astype(np.float32)
    soft = cv2.GaussianBlur(ownf, (0, 0), 1.0)
    gy, gx = np.gradient(soft)
    rows, cols = np.nonzero(movable)
    if len(rows) > max_lines:
        pick = np.linspace(0, len(rows) - 1, max_lines).round().astype(np.int64)
        rows, cols = rows[pick], cols[pick]
    nx, ny = -gx[rows, cols], -gy[rows, cols]
    norm = np.hypot(nx, ny)
    ok = norm > 1e-6
    rows, cols = rows[ok], cols[ok]
    normals = np.stack([nx[ok], ny[ok]], 1) / norm[ok, None]
    n_lines = len(rows)
    if n_lines == 0:
        empty = np.zeros(0)
        return ContourLines(rows, cols, np.zeros((0, 2)), empty, empty)
    s = np.arange(-half_length, half_length + 1, dtype=np.float32)
    map_x = (cols[:, None] + normals[:, 0:1] * s[None]).astype(np.float32)
    map_y = (rows[:, None] + normals[:, 1:2] * s[None]).astype(np.float32)
    samples = cv2.remap(
        posterior.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.5
    ).astype(np.float64)  # (L, S)
    d = np.arange(-half_length, half_length + 1, dtype=np.float64)
    edge = 0.5 + d  # candidate edge positions along the line
    hf = smoothed_step(s[None, :].astype(np.float64) - edge[:, None], slope, alpha)  # (D, S)
    p = np.clip(samples, 1e-4, 1 - 1e-4)
    # log likelihood of each candidate: Σ_s log(h_f P + (1 - h_f)(1 - P)), (L, D)
    ll = np.log(hf[None] * p[:, None, :] + (1.0 - hf[None]) * (1.0 - p[:, None, :])).sum(-1)
    ll -= ll.max(1, keepdims=True)
    prob = np.exp(ll)
    prob /= prob.sum(1, keepdims=True)
    mean = prob @ d
    var = prob @ (d * d) - mean * mean
    return ContourLines(rows, cols, normals, mean, np.maximum(var, 0.0) + min_variance)


def region_energy(
    own: np.ndarray, known: np.ndarray, posterior: np.ndarray, band_px: float, slope: float
) -> tuple[float, float]:
    """Region energy of a silhouette against a foreground posterior (PWP3D/RBOT form), and its agreement.

    ``E = -mean_band log(H(Φ) P + (1 - H(Φ)) (1 - P))`` over the pixels within ``band_px`` of the contour, with
    ``Φ`` the signed distance to the contour (negative inside) and ``H`` a smoothed step.

    Args:
        own: ``(H, W)`` bool silhouette.
        known: ``(H, W)`` bool, pixels that take part (inside the image, not under an occluder).
        posterior: ``(H, W)`` foreground posterior.
        band_px: half-width of the band around the contour, pixels.
        slope: smoothing of the step, pixels.

    Returns:
        ``(E, agreement)``: the energy (lower is better) and the band's mean ``H P + (1 - H)(1 - P)`` in [0, 1].
    """
    inside = cv2.distanceTransform(own.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~own).astype(np.uint8), cv2.DIST_L2, 3)
    phi = np.where(own, 0.5 - inside, outside - 0.5)
    band = (np.abs(phi) <= band_px) & known
    if not np.any(band):
        return float("inf"), 0.0
    hf = smoothed_step(phi[band], slope, 1.0)
    p = np.clip(posterior[band].astype(np.float64), 1e-3, 1 - 1e-3)
    agree = hf * p + (1.0 - hf) * (1.0 - p)
    return float(-np.log(agree).mean()), float(agree.mean())


# ----------------------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------------------
def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (L in [0, 100]) of an ``(H, W, 3)`` RGB image, uint8 or float in [0, 1]; float32."""
    img = np.asarray(rgb)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else np.clip(img, 0, 1).astype(np.float32)
    return cv2.cvtColor(img, cv2.COLOR_RGB2Lab)


@dataclass(frozen=True)
class ColorModel:
    """Local foreground/background colour histograms and the per-pixel foreground posterior.

    As in region-based trackers (PWP3D, RBOT, SRT3D), the posterior of a colour ``y`` is
    ``p(f | y) = p(y | f) / (p(y | f) + p(y | b))`` with equal priors. Global histograms cannot tell a colourful
    object from a colourful background, so — in the spirit of RBOT's localised (temporally consistent local
    colour) histograms — the crop is cut into ``tiles × tiles`` cells and every pixel uses the histograms of the
    pixels in the 3 × 3 cells around its own, shrunk towards the global histograms where the cells hold few
    samples.

    Args:
        fg: ``(tiles², bins³)`` normalised local foreground histograms (mixed with the global one).
        bg: ``(tiles², bins³)`` normalised local background histograms.
        bins: bins per RGB channel (a power of two ≤ 64).
        tiles: cells per side.
        size: ``(H, W)`` of the crop the model was fitted on.
    """

    fg: np.ndarray
    bg: np.ndarray
    bins: int
    tiles: int
    size: tuple[int, int]

    @staticmethod
    def _index(rgb: np.ndarray, bins: int) -> np.ndarray:
        shift = 8 - int(np.log2(bins))
        q = (np.asarray(rgb, dtype=np.uint8) >> shift).astype(np.int64)
        return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]

    @staticmethod
    def _cells(size: tuple[int, int], tiles: int) -> np.ndarray:
        h, w = size
        rows = np.minimum(np.arange(h) * tiles // h, tiles - 1)
        cols = np.minimum(np.arange(w) * tiles // w, tiles - 1)
        return rows[:, None] * tiles + cols[None, :]

    @classmethod
    def fit(
        cls,
        rgb: np.ndarray,
        fg_mask: np.ndarray,
        bg_mask: np.ndarray,
        bins: int = 16,
        tiles: int = 4,
        prior_count: float = 30.0,
    ) -> ColorModel:
        """Histograms of the ``fg_mask`` and ``bg_mask`` pixels of ``rgb`` (uint8), local and global.

        Args:
            rgb: ``(H, W, 3)`` uint8 image.
            fg_mask: ``(H, W)`` bool foreground samples.
            bg_mask: ``(H, W)`` bool background samples.
            bins: bins per channel.
            tiles: cells per side (1: global histograms only).
            prior_count: weight, in samples, of the global histogram in every local one.

        Raises:
            ValueError: ``bins`` not a power of two in [2, 64], or ``tiles < 1``.
        """
        if bins < 2 or bins > 64 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two in [2, 64], got {bins}")
        if tiles < 1:
            raise ValueError(f"tiles must be ≥ 1, got {tiles}")
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        idx = cls._index(rgb, bins)
        cell = cls._cells(size, tiles)
        nb = bins**3
        nc = tiles * tiles

        def smooth(hst: np.ndarray) -> np.ndarray:  # (..., nb): spread each count over neighbouring bins
            cube = hst.reshape(*hst.shape[:-1], bins, bins, bins)
            for axis in (-3, -2, -1):
                cube = 0.5 * cube + 0.25 * (np.roll(cube, 1, axis) + np.roll(cube, -1, axis))
            return cube.reshape(hst.shape)

        def model(m: np.ndarray) -> np.ndarray:
            m = np.asarray(m, bool)
            counts = np.bincount(cell[m] * nb + idx[m], minlength=nc * nb).astype(np.float32).reshape(tiles, tiles, nb)
            total = counts.sum((0, 1))
            glob = smooth(total[None])[0]
            glob = glob / glob.sum() if glob.sum() > 0 else np.full(nb, 1.0 / nb, np.float32)
            # Pool each cell with its 3 × 3 neighbourhood.
            pad = np.pad(counts, ((1, 1), (1, 1), (0, 0)))
            pooled = np.zeros_like(counts)
            for dy in range(3):
                for dx in range(3):
                    pooled += pad[dy : dy + tiles, dx : dx + tiles]
            pooled = smooth(pooled.reshape(nc, nb))
            n = pooled.sum(1, keepdims=True)
            return ((pooled + prior_count * glob[None]) / (n + prior_count)).astype(np.float32)

        return cls(model(fg_mask), model(bg_mask), bins, tiles, size)

    def posterior(self, rgb: np.ndarray, eps: float = 0.05) -> np.ndarray:
        """``(H, W)`` float32 foreground posterior of each pixel of ``rgb`` (uint8, the fitted crop's size).

        Args:
            rgb: ``(H, W, 3)`` uint8 image of the size the model was fitted on.
            eps: pseudo-count relative to a uniform histogram (keeps posteriors away from exactly 0 and 1).
        """
        idx = self._index(rgb, self.bins)
        cell = self._cells((rgb.shape[0], rgb.shape[1]), self.tiles)
        floor = eps / self.fg.shape[1]
        pf = self.fg[cell, idx] + floor
        pb = self.bg[cell, idx] + floor
        return (pf / (pf + pb)).astype(np.float32)


def neighbourhood_min_distance(rendered: np.ndarray, observed: np.ndarray, radius: int) -> np.ndarray:
    """Per-pixel colour distance to the best match within a ``(2r + 1)²`` window of the observation.

    Args:
        rendered: ``(H, W, C)`` float32 image (e.g. L*a*b*).
        observed: ``(H, W, C)`` float32 image of the same size.
        radius: window radius in pixels (0: plain per-pixel distance).

    Returns:
        ``(H, W)`` float32 ``min_{|w|∞ ≤ r} ‖rendered(x) - observed(x + w)‖``; the observation is
        edge-padded.
    """
    h, w = rendered.shape[:2]
    if radius <= 0:
        return np.linalg.norm(rendered - observed, axis=-1).astype(np.float32)
    pad = np.pad(observed, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    best = np.full((h, w), np.inf, np.float32)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            d = rendered - pad[dy : dy + h, dx : dx + w]
            np.minimum(best, np.einsum("ijk,ijk->ij", d, d), out=best)
    return np.sqrt(best)
