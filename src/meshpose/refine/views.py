"""Object-centred crops of an observation: the one per-instance crop type of the render-and-compare refiners.

A :class:`CropView` is what one refinement step of one object instance looks at: a crop of the observation (colour,
depth, the instance's mask, which pixels lie inside the image), its camera, and — for the methods that render the
whole scene into the crop (``flow-pnp``) — that rendering, so that a pixel another instance hides is known. Three
ways to cut one:

* :func:`cut_crop`: a box (usually square, DeepIM/CosyPose style, centred on the projected object origin)
  resampled to a fixed size (``genflow``, ``contour``);
* :func:`make_crop_view`: the same around an instance's current pose, plus the rendering of every instance into it
  (``flow-pnp``);
* :func:`window_crop`: an integer, scale-1 window of the image, cut without resampling (``icp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

from meshpose.geometry.crop import crop_box_around_object, crop_image
from meshpose.render.base import Lighting, Renderer, RenderOutput
from meshpose.types import Camera, ObjectModel, Observation, Pose

__all__ = ["CropView", "cut_crop", "gray", "inside_image", "make_crop_view", "window_crop"]


@dataclass(frozen=True, eq=False)
class CropView:
    """One instance's crop of an observation (and, optionally, the rendering of the scene into it).

    Shapes: ``H × W`` is the crop size (``camera.height × camera.width``); pixel centres are at integer
    coordinates, as in :class:`~meshpose.types.Camera`.

    Args:
        index: which instance of the call the crop belongs to (its mask is ``obs.mask[index]``; its pixels in
            :attr:`render` are ``instance == index + 1``).
        box: ``(4,)`` float64 crop box ``(x0, y0, x1, y1)`` in the observation's (continuous) pixel coordinates.
        camera: the crop camera (``W × H``): a shifted and scaled copy of the observation's.
        rgb: ``(H, W, 3)`` uint8 observed crop (zero outside the image).
        valid: ``(H, W)`` bool, crop pixels that lie inside the observed image.
        depth: ``(H, W)`` float32 observed depth crop in metres (nearest-neighbour resampled; 0 = missing), or
            ``None`` (no depth, or not asked for).
        mask: ``(H, W)`` bool observed mask of this instance, or ``None``.
        render: the rendering (batch of 1) of all instances at their current poses into :attr:`camera`, or
            ``None`` for a crop without one.
    """

    index: int
    box: np.ndarray
    camera: Camera
    rgb: np.ndarray
    valid: np.ndarray
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    render: RenderOutput | None = None

    @property
    def own(self) -> np.ndarray:
        """``(H, W)`` bool: pixels where this instance is the visible surface in :attr:`render`.

        Raises:
            ValueError: the view has no rendering.
        """
        if self.render is None:
            raise ValueError("this crop view has no rendering")
        return np.asarray(self.render.instance[0] == self.index + 1)

    @property
    def size(self) -> int:
        """Side of a square crop (its width), pixels."""
        return self.camera.width

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height


def inside_image(camera: Camera, box: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(height, width)`` bool: crop pixels whose centre maps inside the image of ``camera`` (``[-0.5, W - 0.5]``).

    The exact test of the pixel centres; the nearest-neighbour resampling of the image's support that
    :func:`cut_crop` uses by default differs from it on rare boundary pixels.
    """
    A = camera.crop_affine(box, width, height)
    M, b = A[:, :2], A[:, 2]
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height), indexing="xy"), -1).reshape(-1, 2)
    src = (grid.astype(np.float64) - b) @ np.linalg.inv(M).T
    ok = (
        (src[:, 0] >= -0.5)
        & (src[:, 0] <= camera.width - 0.5)
        & (src[:, 1] >= -0.5)
        & (src[:, 1] <= camera.height - 0.5)
    )
    return ok.reshape(height, width)


def cut_crop(
    obs: Observation,
    box: np.ndarray,
    width: int,
    height: int | None = None,
    *,
    index: int = 0,
    depth: bool = True,
    mask: bool = True,
    valid: Literal["resampled", "centres"] = "resampled",
) -> CropView:
    """Cut ``box`` out of the observation, resampled to ``width × height`` (colour bilinear, the rest nearest).

    Args:
        obs: the observation.
        box: ``(x0, y0, x1, y1)`` in the observation's pixels; may extend beyond the image.
        width: crop width in pixels.
        height: crop height in pixels (default: ``width``).
        index: the instance the crop belongs to (whose ``obs.mask`` is cut).
        depth: cut the observed depth too (when there is some).
        mask: cut the instance's observed mask too (when there are masks).
        valid: how :attr:`CropView.valid` is found: ``"resampled"``, the image's support cut like the depth
            (nearest neighbour), or ``"centres"``, the exact test of the pixel centres (:func:`inside_image`).
    """
    height = width if height is None else height
    box = np.asarray(box, dtype=np.float64)
    rgb, cam = crop_image(obs.rgb, obs.camera, box, width, height)
    if valid == "centres":
        inside = inside_image(obs.camera, box, width, height)
    else:
        ones = np.ones(obs.rgb.shape[:2], bool)
        inside = np.asarray(crop_image(ones, obs.camera, box, width, height, interpolation="nearest")[0], bool)
    d = None
    if depth and obs.depth is not None:
        d = crop_image(obs.depth, obs.camera, box, width, height, interpolation="nearest")[0]
    m = None
    if mask and obs.mask is not None:
        m = crop_image(obs.mask[index], obs.camera, box, width, height, interpolation="nearest")[0]
    return CropView(index=index, box=box, camera=cam, rgb=rgb, valid=inside, depth=d, mask=m)


def window_crop(obs: Observation, x0: int, y0: int, width: int, height: int, *, index: int = 0) -> CropView:
    """The integer, scale-1 window ``[y0, y0 + height) × [x0, x0 + width)`` of the observation (inside the image).

    The arrays are views into the observation's (no resampling, no copy).

    Raises:
        ValueError: a window that does not lie inside the image.
    """
    cam = obs.camera
    if x0 < 0 or y0 < 0 or width < 1 or height < 1 or x0 + width > cam.width or y0 + height > cam.height:
        raise ValueError(
            f"window ({x0}, {y0}, {width}, {height}) does not lie inside the {cam.width}×{cam.height} image"
        )
    box = np.array([x0 - 0.5, y0 - 0.5, x0 + width - 0.5, y0 + height - 0.5])
    win = np.s_[y0 : y0 + height, x0 : x0 + width]
    return CropView(
        index=index,
        box=box,
        camera=cam.crop(tuple(box), width, height),
        rgb=obs.rgb[win],
        valid=np.ones((height, width), bool),
        depth=None if obs.depth is None else obs.depth[win],
        mask=None if obs.mask is None else obs.mask[index][win],
    )


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
    """Cut the square crop of instance ``index`` at its current pose and render every instance into it.

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

    Raises:
        ValueError: no box around the pose (the object reaches to or behind the camera plane).
    """
    poses = poses.reshape(-1)
    if box is None:
        box = crop_box_around_object(obs.camera, poses[index], objects[index].points, padding=padding)
    view = cut_crop(obs, box, size, size, index=index)
    render = renderer.render(list(objects), poses, view.camera, lighting=lighting)
    return replace(view, render=render)


def gray(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB → ``(H, W)`` uint8 luminance."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
