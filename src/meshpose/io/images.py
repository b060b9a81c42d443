"""Reading and writing images at the file boundary: colour (uint8), depth (metres inside) and masks (bool).

BOP stores depth as 16-bit PNG in units of ``depth_scale`` millimetres; inside meshpose depth is float32 metres with
``0`` for missing. The conversion happens here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from meshpose.errors import ImageError

__all__ = [
    "ImageError",
    "image_size",
    "read_depth",
    "read_mask",
    "read_rgb",
    "write_depth",
    "write_mask",
    "write_rgb",
]


def _open(path: str | Path) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image file not found: {p}")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image {p}: {exc}") from exc
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return int(im.width), int(im.height)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"cannot read image {p}: {exc}") from exc


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a colour image as ``(H, W, 3)`` uint8 (grey images are replicated, alpha is dropped)."""
    im = _open(path)
    if im.mode in ("I;16", "I;16B", "I", "F"):
        raise ImageError(f"{path} is a {im.mode} image (depth?), not a colour image")
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_depth(path: str | Path, depth_scale_mm: float = 1.0) -> np.ndarray:
    """Read a BOP depth PNG as ``(H, W)`` float32 metres (``0`` = missing).

    Args:
        path: 16-bit (or 32-bit integer) single-channel PNG.
        depth_scale_mm: millimetres per stored unit (BOP ``depth_scale``).
    """
    im = _open(path)
    arr = np.asarray(im)
    if arr.ndim != 2:
        raise ImageError(f"depth image {path} must have one channel, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.floating):
        raise ImageError(f"depth image {path} has unsupported type {arr.dtype}")
    depth = arr.astype(np.float64) * (float(depth_scale_mm) * 1e-3)
    depth[~np.isfinite(depth)] = 0.0
    return depth.astype(np.float32)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image as ``(H, W)`` bool (non-zero = True)."""
    arr = np.asarray(_open(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr > 0


def write_rgb(path: str | Path, rgb: np.ndarray, *, quality: int = 95) -> None:
    """Write ``(H, W, 3)`` uint8 colour as PNG or JPEG (by suffix)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_rgb needs (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(rgb).save(path, quality=quality)
    else:
        Image.fromarray(rgb).save(path)


def write_depth(path: str | Path, depth_m: np.ndarray, depth_scale_mm: float = 1.0) -> None:
    """Write ``(H, W)`` depth in metres as a 16-bit BOP PNG (units of ``depth_scale_mm`` millimetres).

    Raises:
        ValueError: if a depth does not fit in 16 bits at this scale.
    """
    d = np.asarray(depth_m, dtype=np.float64)
    d = np.where(np.isfinite(d), d, 0.0)
    units = np.round(d * 1e3 / float(depth_scale_mm))
    if units.max(initial=0) > 65535 or units.min(initial=0) < 0:
        raise ValueError(f"depth for {path} exceeds the 16-bit range at depth_scale={depth_scale_mm} mm")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(units.astype(np.uint16)).save(path)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as an 8-bit PNG (255 = True)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(path)
