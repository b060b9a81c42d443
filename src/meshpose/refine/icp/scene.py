"""Where ``icp`` looks: integer windows of the image around an object, and camera-frame points of their pixels."""

from __future__ import annotations

import numpy as np
import torch

from meshpose.geometry.projection import unproject
from meshpose.refine.views import CropView, window_crop
from meshpose.types import ObjectModel, Observation

__all__ = ["CROP_QUANTUM", "margin_px", "object_window", "unproject_pixels"]

CROP_QUANTUM = 64  # window sides are multiples of this (few distinct framebuffer sizes for the renderer to cache)


def object_window(
    obs: Observation, obj: ObjectModel, R: np.ndarray, t: np.ndarray, margin: int, index: int
) -> CropView | None:
    """The scale-1 window of the image holding the object's projection plus ``margin`` pixels.

    Args:
        obs: the observation.
        obj: the object model (its surface points are projected).
        R: ``(3, 3)`` rotation of its pose.
        t: ``(3,)`` translation of its pose, metres.
        margin: pixels added around the projection.
        index: the instance (whose ``obs.mask`` the window cuts).

    Returns:
        The window (sides rounded up to multiples of :data:`CROP_QUANTUM`, kept inside the image; the whole image
        when the object reaches to the camera plane), or ``None`` if the object is outside the image.
    """
    cam = obs.camera
    W, H = cam.width, cam.height
    p = obj.points @ R.T + t
    z = p[:, 2]
    if np.all(z <= 1e-6):
        return None
    if np.any(z <= 1e-3 * float(np.max(z))):  # reaches to (or behind) the camera plane: take the whole image
        x0, y0, x1, y1 = 0, 0, W - 1, H - 1
    else:
        uv = (p @ cam.K[:2].T) / z[:, None]
        lo = np.floor(uv.min(0)) - margin - 2
        hi = np.ceil(uv.max(0)) + margin + 2
        if hi[0] < 0 or hi[1] < 0 or lo[0] > W - 1 or lo[1] > H - 1:
            return None
        x0, y0 = int(max(lo[0], 0)), int(max(lo[1], 0))
        x1, y1 = int(min(hi[0], W - 1)), int(min(hi[1], H - 1))
    w = min(W, -(-(x1 - x0 + 1) // CROP_QUANTUM) * CROP_QUANTUM)
    h = min(H, -(-(y1 - y0 + 1) // CROP_QUANTUM) * CROP_QUANTUM)
    x0, y0 = min(x0, W - w), min(y0, H - h)
    return window_crop(obs, x0, y0, w, h, index=index)


def margin_px(obs: Observation, obj: ObjectModel, t: np.ndarray, region_margin: float) -> int:
    """``region_margin × diameter`` in pixels at the depth of the object origin (``t``, metres); at least 2."""
    z = max(float(t[2]), 1e-3)
    return max(2, round(region_margin * obj.diameter * obs.camera.fx / z))


def unproject_pixels(us: np.ndarray, vs: np.ndarray, z: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points ``(M, 3)`` float64 of pixels ``(us, vs)`` with depth ``z`` (metres)."""
    uv = torch.from_numpy(np.stack([us, vs], -1).astype(np.float64))
    return unproject(
        uv, torch.from_numpy(z.astype(np.float64)), torch.from_numpy(np.array(K, dtype=np.float64))
    ).numpy()
