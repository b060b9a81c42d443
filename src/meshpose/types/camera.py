"""The camera: an OpenCV pinhole with its image size; a crop is a new camera (shifted and scaled ``K``).

Pixel ``(u, v)`` with integer coordinates is the *centre* of a pixel, so an image of ``width`` pixels spans
``[-0.5, width - 0.5]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = ["Camera"]


@dataclass(frozen=True, eq=False)
class Camera:
    """An OpenCV pinhole camera: intrinsics ``K`` (3×3, pixels) and the image size.

    Args:
        K: ``(3, 3)`` intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels (stored as float64).
        width: image width in pixels.
        height: image height in pixels.

    Raises:
        ValueError: if ``K`` is not a finite 3×3 upper-triangular matrix with positive focal lengths, or the size
            is not positive.

    Example:
        >>> cam = Camera.from_fxfycxcy(500.0, 500.0, 319.5, 239.5, width=640, height=480)
        >>> crop = cam.crop((160.0, 120.0, 480.0, 360.0), width=128, height=96)
        >>> round(crop.fx, 3), crop.width, crop.height
        (200.0, 128, 96)
    """

    K: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        K = np.array(self.K, dtype=np.float64, copy=True)
        if K.shape != (3, 3):
            raise ValueError(f"camera K must be 3×3, got shape {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError(f"camera K contains NaN or inf: {K.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"camera K has a non-positive focal length (fx={K[0, 0]}, fy={K[1, 1]})")
        if abs(K[1, 0]) > 1e-9 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9 or abs(K[2, 2] - 1.0) > 1e-9:
            raise ValueError(f"camera K must be upper triangular with K[2,2] = 1, got {K.tolist()}")
        width, height = int(self.width), int(self.height)
        if width != self.width or height != self.height or width <= 0 or height <= 0:
            raise ValueError(f"camera size must be positive integers, got width={self.width}, height={self.height}")
        K.flags.writeable = False
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)

    @classmethod
    def from_fxfycxcy(cls, fx: float, fy: float, cx: float, cy: float, *, width: int, height: int) -> Camera:
        """Build a camera from focal lengths and principal point (pixels)."""
        return cls(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), width, height)

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    def crop_affine(self, box: ArrayLike, width: int, height: int | None = None) -> np.ndarray:
        """The 2×3 affine map from this camera's pixels to the crop's pixels (for ``cv2.warpAffine``).

        Args:
            box: ``(x0, y0, x1, y1)`` in this camera's continuous pixel coordinates (the full image is
                ``(-0.5, -0.5, width - 0.5, height - 0.5)``); ``x1 > x0``, ``y1 > y0``.
            width: crop width in pixels.
            height: crop height in pixels (default: ``width``).

        Returns:
            ``(2, 3)`` float64 matrix ``A`` with ``[u', v'] = A @ [u, v, 1]``. Pass it to ``cv2.warpAffine``
            (which samples at pixel centres, as this convention does) to cut the image that matches
            :meth:`crop`.
        """
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
        height = width if height is None else height
        if not (x1 > x0 and y1 > y0) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"crop box must be finite with x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)}")
        if width <= 0 or height <= 0:
            raise ValueError(f"crop size must be positive, got width={width}, height={height}")
        sx = width / (x1 - x0)
        sy = height / (y1 - y0)
        # The box edge x0 maps to the crop's left pixel edge -0.5 and x1 to width - 0.5: u' = (u - x0) sx - 0.5.
        return np.array([[sx, 0.0, -x0 * sx - 0.5], [0.0, sy, -y0 * sy - 0.5]])

    def crop(self, box: ArrayLike, width: int, height: int | None = None) -> Camera:
        """The camera that sees the region ``box`` of this camera's image, resampled to ``width × height``.

        A crop is an ordinary :class:`Camera` (shifted and scaled ``K``); rendering with it gives the image that
        ``cv2.warpAffine(image, self.crop_affine(box, width, height), (width, height))`` cuts.

        Args:
            box: ``(x0, y0, x1, y1)`` in continuous pixel coordinates of this camera (see :meth:`crop_affine`).
                It may extend beyond the image.
            width: crop width in pixels.
            height: crop height in pixels (default: ``width``).
        """
        height = width if height is None else height
        A = self.crop_affine(box, width, height)
        K = np.eye(3)
        K[:2] = A @ self.K
        return Camera(K, width, height)

    def scaled(self, factor: float) -> Camera:
        """This camera with the image resampled by ``factor`` (e.g. 0.5 halves both sides)."""
        w = max(1, round(self.width * factor))
        h = max(1, round(self.height * factor))
        return self.crop((-0.5, -0.5, self.width - 0.5, self.height - 0.5), w, h)

    def K_tensor(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """``K`` as a ``(3, 3)`` tensor."""
        return torch.tensor(self.K, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return (
            f"Camera(fx={self.fx:.3f}, fy={self.fy:.3f}, cx={self.cx:.3f}, cy={self.cy:.3f}, "
            f"width={self.width}, height={self.height})"
        )
