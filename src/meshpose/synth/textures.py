"""Textures of generated objects and synthetic scenes: procedural patterns, label-like text patches,
photograph-like "dead-leaves" images and crops of an image folder. Deterministic for a given generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from meshpose.mesh.procedural import fractal_noise, hsv_to_rgb, texture_pattern

__all__ = [
    "TEXTURE_KINDS",
    "band_tile",
    "image_folder_files",
    "photo_like_texture",
    "random_color",
    "random_image_crop",
    "solid_tile",
    "text_texture",
    "texture_tile",
]

TEXTURE_KINDS = ("noise", "stripes", "checker", "text", "photo")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def texture_tile(kind: str, size_px: int, rng: np.random.Generator, photo_dir: str | None = None) -> np.ndarray:
    """One ``(size_px, size_px, 3)`` uint8 texture of ``kind`` (one of :data:`TEXTURE_KINDS`)."""
    seed = int(rng.integers(0, 2**31 - 1))
    if kind in ("noise", "stripes", "checker"):
        return texture_pattern(kind, size_px, seed=seed)  # type: ignore[arg-type]
    if kind == "text":
        return text_texture(size_px, np.random.default_rng(seed))
    if kind == "photo":
        return photo_like_texture(size_px, np.random.default_rng(seed), photo_dir=photo_dir)
    raise ValueError(f"unknown texture kind {kind!r}; use one of {', '.join(TEXTURE_KINDS)}")


def random_color(rng: np.random.Generator, value: tuple[float, float] = (0.2, 1.0)) -> tuple[int, int, int]:
    """A random saturated RGB colour (0–255) with its HSV value drawn from ``value``."""
    hsv = np.array([rng.random(), rng.uniform(0.2, 1.0), rng.uniform(*value)])
    return tuple(int(c) for c in np.rint(hsv_to_rgb(hsv) * 255))  # type: ignore[return-value]


_GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/%&#"


def text_texture(size_px: int, rng: np.random.Generator) -> np.ndarray:
    """A label-like patch: lines of random glyph strings in several sizes and colours, bar codes and boxes.

    Returns:
        ``(size_px, size_px, 3)`` uint8 RGB.
    """
    light = rng.random() < 0.6
    bg = random_color(rng, (0.75, 1.0) if light else (0.05, 0.35))
    img = Image.new("RGB", (size_px, size_px), bg)
    draw = ImageDraw.Draw(img)
    ink_range = (0.0, 0.35) if light else (0.8, 1.0)
    y = float(rng.uniform(0, 0.08)) * size_px
    while y < size_px:
        kind = rng.random()
        if kind < 0.7:  # a line of text
            height = int(size_px * rng.uniform(0.06, 0.2))
            font = _font(max(6, height))
            words = " ".join(
                "".join(rng.choice(list(_GLYPHS), int(rng.integers(2, 9)))) for _ in range(int(rng.integers(1, 5)))
            )
            draw.text((float(rng.uniform(0, 0.15)) * size_px, y), words, fill=random_color(rng, ink_range), font=font)
            y += height * rng.uniform(1.1, 1.6)
        elif kind < 0.85:  # a bar code
            height = int(size_px * rng.uniform(0.08, 0.2))
            x = int(rng.uniform(0, 0.3) * size_px)
            end = x + int(size_px * rng.uniform(0.3, 0.7))
            ink = random_color(rng, ink_range)
            top = int(y)
            while x < end:
                w = int(rng.integers(1, 4)) * max(1, size_px // 128)
                if rng.random() < 0.55:
                    draw.rectangle([x, top, x + w - 1, top + height], fill=ink)
                x += w
            y += height * 1.3
        else:  # a filled box or a frame
            height = int(size_px * rng.uniform(0.08, 0.25))
            x0 = float(rng.uniform(0, 0.6)) * size_px
            x1 = x0 + size_px * rng.uniform(0.15, 0.4)
            if rng.random() < 0.5:
                draw.rectangle([x0, y, x1, y + height], fill=random_color(rng))
            else:
                draw.rectangle(
                    [x0, y, x1, y + height], outline=random_color(rng, ink_range), width=max(1, size_px // 64)
                )
            y += height * 1.25
    arr = np.asarray(img, dtype=np.float64) / 255.0
    grain = fractal_noise(rng, size_px, octaves=(8, 32))[..., None]
    arr = np.clip(arr * (0.9 + 0.1 * grain), 0.0, 1.0)
    return np.asarray(np.rint(arr * 255), dtype=np.uint8)


_FONT_CACHE: dict[int, Any] = {}


def _font(size: int) -> Any:
    if size not in _FONT_CACHE:
        try:
            _FONT_CACHE[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
            _FONT_CACHE[size] = ImageFont.load_default()
    return _FONT_CACHE[size]


def _image_files(folder: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"image folder {root} holds no images ({', '.join(_IMAGE_EXTS)})")
    return files


_IMAGE_LIST_CACHE: dict[str, list[Path]] = {}


def image_folder_files(folder: str) -> list[Path]:
    """Sorted image files under ``folder`` (cached per process)."""
    key = str(Path(folder).resolve())
    if key not in _IMAGE_LIST_CACHE:
        _IMAGE_LIST_CACHE[key] = _image_files(folder)
    return _IMAGE_LIST_CACHE[key]


def random_image_crop(folder: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a random image of ``folder``, resized to ``width × height`` (uint8 RGB)."""
    files = image_folder_files(folder)
    path = files[int(rng.integers(0, len(files)))]
    with Image.open(path) as source:
        im = source.convert("RGB")
    w, h = im.size
    scale = rng.uniform(0.3, 1.0)
    cw = max(8, int(min(w, h * width / height) * scale))
    ch = max(8, int(cw * height / width))
    cw, ch = min(cw, w), min(ch, h)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8).copy()


def photo_like_texture(
    size_px: int, rng: np.random.Generator, *, photo_dir: str | None = None, height_px: int | None = None
) -> np.ndarray:
    """A photograph-like image: a crop of an image of ``photo_dir`` when given, else a "dead-leaves" image.

    The dead-leaves model (occluding discs, ellipses and rectangles with power-law sizes, shaded by smooth
    illumination, slightly blurred, with grain) has the scale-invariant statistics of natural photographs.

    Returns:
        ``(height_px or size_px, size_px, 3)`` uint8 RGB.
    """
    width, height = size_px, height_px or size_px
    if photo_dir is not None:
        return random_image_crop(photo_dir, width, height, rng)
    palette = np.array([random_color(rng) for _ in range(int(rng.integers(3, 8)))])
    img = Image.new("RGB", (width, height), tuple(int(c) for c in palette[0]))
    draw = ImageDraw.Draw(img)
    side = max(width, height)
    count = int(rng.integers(60, 160))
    # Power-law radii (exponent -3 in density): many small leaves, a few large; drawn large first.
    radii = side * 0.015 / np.sqrt(1.0 - rng.random(count) * (1.0 - (0.015 / 0.5) ** 2))
    for r in np.sort(radii)[::-1]:
        x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        base = palette[int(rng.integers(0, len(palette)))].astype(np.float64)
        color = tuple(int(c) for c in np.clip(base * rng.uniform(0.6, 1.3) + rng.normal(0, 12, 3), 0, 255))
        shape = rng.random()
        if shape < 0.55:
            draw.ellipse([x - r, y - r * rng.uniform(0.5, 1.0), x + r, y + r * rng.uniform(0.5, 1.0)], fill=color)
        elif shape < 0.85:
            draw.rectangle([x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r * rng.uniform(0.3, 1.0)], fill=color)
        else:
            pts = [(x + r * math.cos(a), y + r * math.sin(a)) for a in np.sort(rng.uniform(0, 2 * math.pi, 3))]
            draw.polygon(pts, fill=color)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2)) * side / 256))
    arr = np.asarray(img, dtype=np.float64) / 255.0
    yy, xx = np.mgrid[0:height, 0:width] / side
    a = rng.uniform(0, 2 * math.pi)
    light = 0.75 + 0.25 * np.cos(a) * (xx - 0.5) * 2 + 0.25 * np.sin(a) * (yy - 0.5) * 2
    arr = arr * light[..., None] + rng.normal(0, 0.015, arr.shape)
    return np.asarray(np.rint(np.clip(arr, 0, 1) * 255), dtype=np.uint8)


def solid_tile(size: int, color: Sequence[int], rng: np.random.Generator, grain: float = 0.04) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 tile of one colour with a faint grain (relative amplitude ``grain``)."""
    noise = fractal_noise(rng, size, octaves=(4, 16))[..., None]
    arr = np.asarray(color, dtype=np.float64)[None, None, :3] / 255.0 * (1.0 - grain + 2 * grain * noise)
    return np.asarray(np.rint(np.clip(arr, 0, 1) * 255), dtype=np.uint8)


def band_tile(size: int, rng: np.random.Generator) -> np.ndarray:
    """A tile whose colour varies only from top to bottom: mapped by height, bands of colour around a body of
    revolution (the mapping, not the tile, makes them mirror-symmetric where needed)."""
    rows = int(rng.integers(3, 9))
    edges = np.sort(rng.random(rows - 1))
    colors = np.array([random_color(rng) for _ in range(rows)], dtype=np.float64)
    t = (np.arange(size) + 0.5) / size
    band = colors[np.searchsorted(edges, t)] / 255.0
    img = np.repeat(band[:, None, :], size, axis=1)
    return np.asarray(np.rint(np.clip(img, 0, 1) * 255), dtype=np.uint8)
