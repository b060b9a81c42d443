"""Object-centred crop views shared by the render-and-compare refiners.

A :class:`CropView` is what one refinement step looks at: a square crop of the observation around the current pose
of one object instance (DeepIM/CosyPose style, centred on the projected object origin), the crop camera, and the
rendering of *all* instances of the call at the crop camera, so that a pixel another instance hides is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from meshpose.geometry.crop import crop_box_around_object, crop_image
from meshpose.render.base import Lighting, Renderer, RenderOutput
from meshpose.types import Camera, ObjectModel, Observation, Pose

__all__ = ["CropView", "edge_alignment_score", "gray", "make_crop_view", "observed_gradients"]


@dataclass(frozen=True, eq=False)
class CropView:
    """One instance's crop of an observation and the rendering of the scene into it.

    Args:
        index: which instance of the call the crop is centred on.
        box: ``(x0, y0, x1, y1)`` crop box in the observation's pixel coordinates.
        camera: the crop camera (``size × size``).
        rgb: ``(S, S, 3)`` uint8 observed crop (zero outside the image).
        depth: ``(S, S)`` float32 observed depth crop in metres (nearest-neighbour resampled), or ``None``.
        mask: ``(S, S)`` bool observed mask of this instance, or ``None``.
        valid: ``(S, S)`` bool, pixels that lie inside the observed image.
        render: the rendering (batch of 1) of all instances at their current poses into :attr:`camera`.
    """

    index: int
    box: np.ndarray
    camera: Camera
    rgb: np.ndarray
    depth: np.ndarray | None
    mask: np.ndarray | None
    valid: np.ndarray
    render: RenderOutput

    @property
    def own(self) -> np.ndarray:
        """``(S, S)`` bool: pixels where this instance is the visible surface in the rendering."""
        return np.asarray(self.render.instance[0] == self.index + 1)

    @property
    def size(self) -> int:
        return self.camera.width


def make_crop_view(
    obs: Observation,
    objects: Sequence[ObjectModel],
    poses: Pose,
    index: int,
    *,
    size: int,
    padding: float,
    renderer: Renderer,
    lighting: Lighting | None = None,
    box: np.ndarray | None = None,
) -> CropView:
    """Cut the crop of instance ``index`` at its current pose and render every instance into it.

    Args:
        obs: the observation.
        objects: the ``N`` instances' models.
        poses: ``(N,)`` current poses.
        index: the instance to centre on.
        size: crop side in pixels.
        padding: box size factor over the object's projected extent.
        renderer: renderer for the scene.
        lighting: shading of the rendering.
        box: use this box instead of one around the current pose (e.g. to compare poses in one fixed crop).
    """
    poses = poses.reshape(-1)
    if box is None:
        box = crop_box_around_object(obs.camera, poses[index], objects[index].points, padding=padding)
    rgb, cam = crop_image(obs.rgb, obs.camera, box, size, size)
    valid, _ = crop_image(np.ones(obs.rgb.shape[:2], bool), obs.camera, box, size, size, interpolation="nearest")
    depth = None
    if obs.depth is not None:
        depth, _ = crop_image(obs.depth, obs.camera, box, size, size, interpolation="nearest")
    mask = None
    if obs.mask is not None:
        mask, _ = crop_image(obs.mask[index], obs.camera, box, size, size, interpolation="nearest")
    render = renderer.render(list(objects), poses, cam, lighting=lighting)
    return CropView(index, np.asarray(box), cam, rgb, depth, mask, np.asarray(valid, bool), render)


def gray(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB → ``(H, W)`` uint8 luminance."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def observed_gradients(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Colour image gradients for edge scoring: ``(H, W, 2)`` float32, the per-pixel strongest channel gradient.

    Uses the colour channel with the largest gradient magnitude at each pixel, so that an edge between two
    colours of equal brightness (a yellow duck on a green mat) still counts.
    """
    img = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = gx * gx + gy * gy
    best = np.argmax(mag, axis=2)[..., None]
    return np.concatenate([np.take_along_axis(gx, best, 2), np.take_along_axis(gy, best, 2)], axis=2)


def edge_alignment_score(grad: np.ndarray, silhouette: np.ndarray, *, search_px: int = 1) -> float:
    """How well a silhouette's outline lies on image edges of the right orientation, in [0, 1].

    For every outline pixel of ``silhouette`` the image gradient projected on the outline normal is taken (the
    best within ``±search_px`` along the normal), divided by a robust scale of the crop's gradients (their 90th
    percentile) and clipped to 1; the score is the mean. It needs no appearance model, so it compares poses of
    real objects whose rendering looks unlike the photo.

    Args:
        grad: ``(H, W, 2)`` image gradients (:func:`observed_gradients`).
        silhouette: ``(H, W)`` bool rendered silhouette.
        search_px: tolerance along the normal, pixels.

    Returns:
        The score; 0 for an empty silhouette.
    """
    m = silhouette.astype(np.uint8)
    if m.sum() < 4:
        return 0.0
    outline = (m > 0) & (cv2.erode(m, np.ones((3, 3), np.uint8)) == 0)
    ys, xs = np.nonzero(outline)
    sm = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.5)
    nx = cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3)[ys, xs]
    ny = cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3)[ys, xs]
    norm = np.sqrt(nx * nx + ny * ny) + 1e-9
    nx, ny = nx / norm, ny / norm
    h, w = m.shape
    best = np.zeros(len(xs), np.float32)
    for d in range(-search_px, search_px + 1):
        u = np.clip(np.round(xs + d * nx).astype(int), 0, w - 1)
        v = np.clip(np.round(ys + d * ny).astype(int), 0, h - 1)
        g = np.abs(grad[v, u, 0] * nx + grad[v, u, 1] * ny)
        best = np.maximum(best, g)
    mag = np.sqrt((grad**2).sum(-1))
    scale = float(np.percentile(mag, 90)) + 1e-3
    return float(np.clip(best / scale, 0.0, 1.0).mean())
