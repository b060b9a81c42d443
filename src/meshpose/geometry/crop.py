"""Object-centred crops: boxes, crop cameras and image resampling (OpenCV and batched torch).

Convention (from :class:`meshpose.types.Camera`): a box is ``(x0, y0, x1, y1)`` in continuous pixel
coordinates, pixel centres at integers, so the full image is ``(-0.5, -0.5, W - 0.5, H - 0.5)``.
Cutting ``box`` to a ``width × height`` crop is the affine map ``camera.crop_affine(box, width,
height)`` on pixels, and the crop is seen by ``camera.crop(box, width, height)``; rendering with that
camera gives exactly the pixels that :func:`crop_image` / :func:`crop_images` cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from meshpose.geometry.projection import pixel_grid
from meshpose.types import Camera, Pose

__all__ = [
    "crop_box_around_object",
    "crop_cameras",
    "crop_image",
    "crop_images",
    "mask_bbox",
    "object_box",
    "square_crop_box",
]

Interpolation = Literal["linear", "nearest"]


def mask_bbox(mask: np.ndarray) -> np.ndarray | None:
    """Tight box of a mask over pixel edges.

    Args:
        mask: ``(H, W)`` bool.

    Returns:
        ``(4,)`` float64 ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]`` (BOP/COCO ``[x, y, w, h]``) where ``x0…x1`` and
        ``y0…y1`` are the first and last columns and rows holding a mask pixel; ``None`` for an empty mask.

    Example:
        >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
        >>> mask_bbox(m).tolist()
        [2.0, 1.0, 3.0, 2.0]
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return np.array([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dtype=np.float64)


def _project_np(camera: Camera, pose: Pose, points_obj: ArrayLike | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Project ``(N, 3)`` object points with a single pose; returns ``(uv (N, 2), z (N,))`` float64 numpy."""
    if len(pose.batch_shape) != 0:
        raise ValueError(f"pose must be a single (unbatched) Pose, got batch shape {tuple(pose.batch_shape)}")
    pts = points_obj.detach().cpu().numpy() if isinstance(points_obj, torch.Tensor) else np.asarray(points_obj)
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"points_obj must have shape (N, 3) with N ≥ 1, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points_obj contains NaN or inf")
    R, t = pose.numpy()
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        raise ValueError("pose contains NaN or inf")
    p = pts @ R.T + t
    z = p[:, 2]
    if np.any(z <= 1e-9):
        raise ValueError(
            f"pose puts {int(np.sum(z <= 1e-9))} of {len(z)} object points at or behind the camera (min z = "
            f"{z.min():.4f} m); cannot compute an image box"
        )
    uv = (p @ camera.K[:2].T) / z[:, None]
    return uv, z


def object_box(camera: Camera, pose: Pose, points_obj: ArrayLike | torch.Tensor) -> np.ndarray:
    """Tight image box of the projected object points.

    Args:
        camera: the camera.
        pose: a single ``cam_from_obj`` pose.
        points_obj: ``(N, 3)`` object-frame points (e.g. mesh vertices or ``ObjectModel.points``), metres.

    Returns:
        ``(4,)`` float64 ``(x0, y0, x1, y1)``: min and max of the projected pixel coordinates (not
        clipped to the image).

    Raises:
        ValueError: bad shapes, NaNs, a batched pose, or points at or behind the camera.

    Example:
        >>> import numpy as np, torch
        >>> cam = Camera.from_fxfycxcy(500.0, 500.0, 320.0, 240.0, width=640, height=480)
        >>> pose = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        >>> object_box(cam, pose, np.array([[-0.1, -0.05, 0.0], [0.1, 0.05, 0.0]]))
        array([270., 215., 370., 265.])
    """
    uv, _ = _project_np(camera, pose, points_obj)
    return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()], dtype=np.float64)


def square_crop_box(center_uv: ArrayLike, size_px: float) -> np.ndarray:
    """A square box of side ``size_px`` centred on ``center_uv``.

    Args:
        center_uv: ``(2,)`` centre ``(u, v)`` in pixels.
        size_px: side length in pixels, ``> 0``.

    Returns:
        ``(4,)`` float64 ``(x0, y0, x1, y1)``.

    Example:
        >>> square_crop_box((100.0, 50.0), 20.0)
        array([ 90.,  40., 110.,  60.])
    """
    c = np.asarray(center_uv, dtype=np.float64).reshape(-1)
    if c.shape != (2,) or not np.all(np.isfinite(c)):
        raise ValueError(f"center_uv must be 2 finite numbers, got {np.asarray(center_uv).tolist()}")
    s = float(size_px)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"size_px must be positive, got {size_px}")
    h = 0.5 * s
    return np.array([c[0] - h, c[1] - h, c[0] + h, c[1] + h], dtype=np.float64)


def crop_box_around_object(
    camera: Camera,
    pose: Pose,
    points_obj: ArrayLike | torch.Tensor,
    *,
    padding: float = 1.4,
    min_size_px: float = 16.0,
    aspect: float = 1.0,
) -> np.ndarray:
    """DeepIM/CosyPose-style crop box around an object at a pose.

    The box is centred on the projection of the **object's origin** (not on the centre of its tight box): that
    point moves rigidly with the pose and does not depend on which part of the object is in view, so
    crops of a render and of the observation taken at the same hypothesis stay aligned, and the crop
    camera changes smoothly as the pose is refined. The half-size is the largest distance from that
    centre to the tight box's edges (with the height scaled by ``aspect``), times ``padding``, so the
    whole projected object fits with a margin.

    Args:
        camera: the camera.
        pose: a single ``cam_from_obj`` pose; the origin and all points must be in front of the camera.
        points_obj: ``(N, 3)`` object points (mesh vertices, or a dense surface sample), metres.
        padding: size factor ``≥ 1`` applied to the box that just fits the object (1.4 in CosyPose).
        min_size_px: the box is at least this many pixels wide and high.
        aspect: width / height of the returned box (match the crop resolution, e.g. 4/3 for 320×240).

    Returns:
        ``(4,)`` float64 ``(x0, y0, x1, y1)`` with ``(x1 - x0) / (y1 - y0) == aspect``; may extend beyond the
        image (the crop is zero-padded).

    Raises:
        ValueError: bad arguments, or the object (or its origin) at or behind the camera.

    Example:
        >>> import numpy as np, torch
        >>> cam = Camera.from_fxfycxcy(500.0, 500.0, 320.0, 240.0, width=640, height=480)
        >>> pose = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        >>> crop_box_around_object(cam, pose, np.array([[-0.1, -0.05, 0.0], [0.1, 0.05, 0.0]]), padding=1.0)
        array([270., 190., 370., 290.])
    """
    padding, min_size_px, aspect = float(padding), float(min_size_px), float(aspect)
    if not (math.isfinite(padding) and padding > 0):
        raise ValueError(f"padding must be positive, got {padding}")
    if not (math.isfinite(min_size_px) and min_size_px >= 0):
        raise ValueError(f"min_size_px must be non-negative, got {min_size_px}")
    if not (math.isfinite(aspect) and aspect > 0):
        raise ValueError(f"aspect (width / height) must be positive, got {aspect}")
    x0, y0, x1, y1 = object_box(camera, pose, points_obj)
    origin_uv, _ = _project_np(camera, pose, np.zeros((1, 3)))
    cu, cv = origin_uv[0]
    half_w = max(cu - x0, x1 - cu, aspect * (cv - y0), aspect * (y1 - cv)) * padding
    half_w = max(half_w, 0.5 * min_size_px, 0.5 * min_size_px * aspect)
    half_h = half_w / aspect
    return np.array([cu - half_w, cv - half_h, cu + half_w, cv + half_h], dtype=np.float64)


def _check_size(width: int, height: int) -> tuple[int, int]:
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"crop size must be positive integers, got width={width}, height={height}")
    return int(width), int(height)


def crop_image(
    image: np.ndarray,
    camera: Camera,
    box: ArrayLike,
    width: int,
    height: int,
    *,
    interpolation: Interpolation = "linear",
) -> tuple[np.ndarray, Camera]:
    """Cut ``box`` out of an image, resampled to ``width × height``, and return the matching camera.

    Uses ``cv2.warpAffine`` with ``camera.crop_affine(box, width, height)``; pixels outside the image are 0.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array seen by ``camera`` (``H == camera.height``,
            ``W == camera.width``); uint8, uint16, int16, float32, float64 or bool (bool is cut with nearest).
        camera: the camera of ``image``.
        box: ``(x0, y0, x1, y1)`` in ``image`` pixels; may extend beyond the image.
        width: crop width in pixels.
        height: crop height in pixels.
        interpolation: ``"linear"`` for colour, ``"nearest"`` for masks, depth, ids and xyz maps (no blending
            across object boundaries).

    Returns:
        ``(crop, crop_camera)``: the ``(height, width[, C])`` crop with the input dtype, and
        ``camera.crop(box, width, height)``.

    Raises:
        ValueError: shape mismatch with the camera, unsupported dtype or interpolation, or a bad box.

    Example:
        >>> import numpy as np
        >>> cam = Camera.from_fxfycxcy(100.0, 100.0, 3.5, 3.5, width=8, height=8)
        >>> img = np.arange(64, dtype=np.float32).reshape(8, 8)
        >>> crop, cam2 = crop_image(img, cam, (1.5, 1.5, 5.5, 5.5), 4, 4)
        >>> crop[0].tolist(), cam2.fx
        ([18.0, 19.0, 20.0, 21.0], 100.0)
    """
    width, height = _check_size(width, height)
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.shape[:2] != (camera.height, camera.width):
        raise ValueError(
            f"image must have shape ({camera.height}, {camera.width}[, C]) to match the camera, got {img.shape}"
        )
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    is_bool = img.dtype == np.bool_
    if is_bool:
        img = img.astype(np.uint8)
        interpolation = "nearest"
    if img.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        raise ValueError(f"image dtype {img.dtype} is not supported by cv2.warpAffine; convert it first")
    A = camera.crop_affine(box, width, height)
    flags = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST

    def warp(x: np.ndarray) -> np.ndarray:
        out = cv2.warpAffine(
            np.ascontiguousarray(x),
            A,
            (width, height),
            flags=flags,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        return out.reshape(height, width, *x.shape[2:])

    if img.ndim == 3 and img.shape[2] > 4:  # warpAffine handles at most 4 channels at once
        crop = np.concatenate([warp(img[:, :, i : i + 4]) for i in range(0, img.shape[2], 4)], axis=2)
    else:
        crop = warp(img)
    if is_bool:
        crop = crop.astype(bool)
    return crop, camera.crop(box, width, height)


def crop_cameras(
    cameras: Camera | Sequence[Camera], boxes: ArrayLike, width: int, height: int
) -> tuple[list[Camera], np.ndarray]:
    """Crop cameras and pixel affines for a batch of boxes (the inputs of :func:`crop_images`).

    Args:
        cameras: one camera for all boxes, or one per box.
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)``.
        width: crop width in pixels.
        height: crop height in pixels.

    Returns:
        ``(crop_cameras, affines)``: ``B`` cameras and the ``(B, 2, 3)`` float64 affines
        ``camera.crop_affine``.
    """
    width, height = _check_size(width, height)
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4), got {b.shape}")
    cams = [cameras] * len(b) if isinstance(cameras, Camera) else list(cameras)
    if len(cams) != len(b):
        raise ValueError(f"got {len(cams)} cameras for {len(b)} boxes")
    affines = (
        np.stack([c.crop_affine(bx, width, height) for c, bx in zip(cams, b, strict=True)])
        if len(b)
        else (np.zeros((0, 2, 3)))
    )
    return [c.crop(bx, width, height) for c, bx in zip(cams, b, strict=True)], affines


def crop_images(
    images: torch.Tensor,
    affines: torch.Tensor | ArrayLike,
    width: int,
    height: int,
    *,
    interpolation: Interpolation = "linear",
) -> torch.Tensor:
    """Batched crops with ``torch.nn.functional.grid_sample``; the same pixels as :func:`crop_image`.

    Output pixel ``(u', v')`` (pixel centres) samples the source at ``A⁻¹ [u', v', 1]``, normalised for
    ``grid_sample`` with ``align_corners=False`` (source pixel ``u`` ↦ ``(2u + 1) / W - 1``), which is
    exactly the pixel-centre convention of :class:`~meshpose.types.Camera` and of ``cv2.warpAffine``.
    Outside the image the value is 0. Differentiable w.r.t. ``images`` and (if a tensor) ``affines``.

    Args:
        images: ``(B, C, H, W)`` floating tensor (one image per crop; use ``expand`` to crop one image
            many times).
        affines: ``(B, 2, 3)`` or ``(2, 3)`` source-pixel → crop-pixel affines, e.g. from
            :func:`crop_cameras` or ``camera.crop_affine``.
        width: crop width in pixels.
        height: crop height in pixels.
        interpolation: ``"linear"`` (bilinear) or ``"nearest"``. Note that OpenCV computes bilinear weights in
            fixed point (1/32 pixel), so results differ from :func:`crop_image` by up to that much sub-pixel
            shift unless the sample positions are multiples of 1/32.

    Returns:
        ``(B, C, height, width)`` crops, dtype and device of ``images``.

    Example:
        >>> import torch
        >>> img = torch.arange(64.0).reshape(1, 1, 8, 8)
        >>> A = torch.tensor([[1.0, 0.0, -2.0], [0.0, 1.0, -2.0]])  # the box (1.5, 1.5, 5.5, 5.5) at scale 1
        >>> crop_images(img, A, 4, 4)[0, 0, 0]
        tensor([18., 19., 20., 21.])
    """
    width, height = _check_size(width, height)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a floating (B, C, H, W) tensor, got "
            f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}"
        )
    A = affines if isinstance(affines, torch.Tensor) else torch.as_tensor(np.asarray(affines, dtype=np.float64))
    A = A.to(dtype=images.dtype, device=images.device)
    if A.shape == (2, 3):
        A = A.expand(images.shape[0], 2, 3)
    if A.shape != (images.shape[0], 2, 3):
        raise ValueError(f"affines must have shape ({images.shape[0]}, 2, 3) or (2, 3), got {tuple(A.shape)}")
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    H, W = images.shape[-2:]
    # Invert [M | b]: source = M⁻¹ (crop - b).
    M, b = A[:, :, :2], A[:, :, 2]
    Minv = torch.linalg.inv(M)
    grid = pixel_grid(height, width, dtype=images.dtype, device=images.device).reshape(1, -1, 2)
    src = (grid - b[:, None, :]) @ Minv.transpose(-1, -2)  # (B, h·w, 2) source pixel coordinates
    scale = torch.tensor([2.0 / W, 2.0 / H], dtype=images.dtype, device=images.device)
    norm = (src + 0.5) * scale - 1.0
    mode = "bilinear" if interpolation == "linear" else "nearest"
    return F.grid_sample(
        images, norm.reshape(-1, height, width, 2), mode=mode, padding_mode="zeros", align_corners=False
    )
