"""The sensor model of synthetic images: colour jitter, defocus and motion blur, signal-dependent noise and
gamma on the colour image; axial noise growing with distance, dropouts at depth edges and grazing angles, blob
holes and a range limit on the depth image."""

from __future__ import annotations

import math

import cv2
import numpy as np

from meshpose.synth.config import SceneConfig, sample_range
from meshpose.types import Camera

__all__ = ["apply_color_sensor", "apply_depth_sensor"]


def apply_color_sensor(img: np.ndarray, rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """Camera effects on a float RGB image in [0, 1]: colour jitter (hue, saturation, contrast, brightness),
    defocus and motion blur, signal-dependent noise, quantisation to uint8, gamma.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    out: np.ndarray = np.array(img, dtype=np.float32, copy=True)  # never modify the caller's image
    # Hue rotation about the grey axis and saturation scale act on the chroma; contrast about the mean grey
    # and brightness follow: one affine colour transform.
    hue, sat = sample_range(rng, cfg.hue), sample_range(rng, cfg.saturation)
    bright, contrast = sample_range(rng, cfg.brightness), sample_range(rng, cfg.contrast)
    luma = np.array([0.299, 0.587, 0.114])
    grey = np.outer(np.ones(3), luma)  # px -> (y, y, y)
    a = 2 * math.pi * hue
    axis = np.ones(3) / math.sqrt(3.0)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    Rh = np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * (K @ K)
    M = grey + sat * Rh @ (np.eye(3) - grey)
    mean = float(cv2.mean(out)[:3] @ luma)
    A = np.zeros((3, 4))
    A[:, :3] = bright * contrast * M
    A[:, 3] = bright * (1.0 - contrast) * mean
    if not np.allclose(A, np.hstack([np.eye(3), np.zeros((3, 1))])):
        out = cv2.transform(out, A.astype(np.float32))
    np.clip(out, 0.0, 1.0, out=out)
    if rng.random() < cfg.blur_probability:
        out = cv2.GaussianBlur(out, (0, 0), sample_range(rng, cfg.blur_sigma_px))
    if rng.random() < cfg.motion_blur_probability:
        length = max(2, round(sample_range(rng, cfg.motion_blur_px)))
        k = np.zeros((length, length), np.float32)
        angle = rng.uniform(0, math.pi)
        c = (length - 1) / 2
        for step in np.linspace(-c, c, 2 * length):
            k[round(c + step * math.sin(angle)), round(c + step * math.cos(angle))] = 1.0
        out = cv2.filter2D(out, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)
    sigma = sample_range(rng, cfg.noise_std)
    if sigma > 0:
        # Read noise plus shot noise (standard deviation growing with the square root of the signal).
        scale: np.ndarray = cv2.sqrt(out)
        scale *= 0.5 * sigma
        scale += 0.5 * sigma
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * scale
    out *= 255.0
    out += 0.5
    np.clip(out, 0.0, 255.0, out=out)
    u8: np.ndarray = out.astype(np.uint8)
    gamma = sample_range(rng, cfg.gamma)
    if gamma != 1.0:
        lut = np.clip(np.rint(((np.arange(256) / 255.0) ** gamma) * 255.0), 0, 255).astype(np.uint8)
        u8 = cv2.LUT(u8, lut)
    return np.ascontiguousarray(u8)


def _view_cosine(normal: np.ndarray, camera: Camera) -> np.ndarray:
    """``(H, W)`` |cos| of the angle between each pixel's viewing ray and the surface normal there."""
    h, w = normal.shape[:2]
    y = ((np.arange(h, dtype=np.float32) - camera.cy) / camera.fy)[:, None]
    x = (np.arange(w, dtype=np.float32)[None, :] - camera.cx - camera.K[0, 1] * y) / camera.fx
    n = np.asarray(normal, dtype=np.float32)
    dot = n[..., 0] * x + n[..., 1] * y + n[..., 2]
    return np.abs(dot) / np.sqrt(x * x + y * y + 1.0)


def apply_depth_sensor(
    depth: np.ndarray, normal: np.ndarray, camera: Camera, rng: np.random.Generator, cfg: SceneConfig
) -> np.ndarray:
    """A depth-camera image from exact depth: axial noise, edge and grazing-angle dropouts, blob holes, range.

    Args:
        depth: ``(H, W)`` exact depth (metres, 0 = nothing).
        normal: ``(H, W, 3)`` camera-frame normals.
        camera: the camera.
        rng: random generator.
        cfg: the sensor settings.

    Returns:
        ``(H, W)`` float32 depth in metres, 0 where missing.
    """
    src = np.ascontiguousarray(depth, dtype=np.float32)
    h, w = src.shape
    lo, hi = cfg.depth_range_m
    valid = (src > 0) & (src >= lo) & (src <= hi)
    d = src.copy()
    if cfg.depth_noise > 0:
        sigma: np.ndarray = (src - 0.4) ** 2
        sigma *= 0.0019 * cfg.depth_noise
        sigma += 0.0012 * cfg.depth_noise
        small = rng.standard_normal((max(2, h // 16), max(2, w // 16)), dtype=np.float32)
        noise: np.ndarray = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        noise *= 0.6
        noise += 0.8 * rng.standard_normal((h, w), dtype=np.float32)
        d += sigma * noise
    if cfg.depth_edge_dropout > 0:
        kernel = np.ones((3, 3), np.uint8)
        jump = np.maximum(cv2.dilate(src, kernel) - src, src - cv2.erode(src, kernel))
        edge = (jump > 0.02 + 0.02 * src).astype(np.uint8)
        edge = cv2.dilate(edge, kernel).astype(bool)
        valid &= ~(edge & (rng.random((h, w), dtype=np.float32) < cfg.depth_edge_dropout))
    if cfg.depth_grazing_deg < 90.0:
        valid &= _view_cosine(normal, camera) >= math.cos(math.radians(cfg.depth_grazing_deg))
    frac = sample_range(rng, cfg.depth_holes)
    if frac > 0:
        small = rng.random((max(2, h // 24), max(2, w // 24)), dtype=np.float32)
        holes: np.ndarray = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        holes += 0.15 * rng.random((h, w), dtype=np.float32)
        valid &= holes < np.quantile(holes[::5, ::5], 1.0 - frac)
    d[~valid] = 0.0
    return d
