"""Backgrounds and the textured ground plane of synthetic scenes."""

from __future__ import annotations

import math

import cv2
import numpy as np
import trimesh

from meshpose.mesh.procedural import texture_visuals
from meshpose.synth.textures import photo_like_texture, random_image_crop, texture_tile
from meshpose.types import ObjectModel

__all__ = ["ground_plane", "random_background"]


def random_background(width: int, height: int, rng: np.random.Generator, image_dir: str | None = None) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 background: an image-folder crop (when given, 70 %) or a procedural one
    (photograph-like dead leaves, colour noise, stripes, checkers, text patches), drawn at most 320 px wide
    and resized."""
    if image_dir is not None and rng.random() < 0.7:
        return random_image_crop(image_dir, width, height, rng)
    scale = min(1.0, 320.0 / max(width, height))
    w, h = max(16, round(width * scale)), max(16, round(height * scale))
    kinds = ["photo", "noise", "stripes", "checker", "text"]
    kind = kinds[int(rng.choice(len(kinds), p=[0.45, 0.15, 0.12, 0.13, 0.15]))]
    if kind == "photo":
        img = photo_like_texture(w, rng, height_px=h)
    else:
        side = max(w, h)
        img = texture_tile(kind, side, rng)[:h, :w]
        img = (img.astype(np.float32) * rng.uniform(0.5, 1.0) + rng.uniform(0, 60)).clip(0, 255).astype(np.uint8)
    if (w, h) != (width, height):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


def ground_plane(
    center: np.ndarray, half_size: float, rng: np.random.Generator, image_dir: str | None = None
) -> ObjectModel:
    """A textured square on ``z = 0`` around ``center`` (facing +z), tiled with a random texture."""
    kind = rng.choice(["photo", "noise", "stripes", "checker", "text", "photo"])
    px = 256
    if image_dir is not None and rng.random() < 0.6:
        tex = random_image_crop(image_dir, px, px, rng)
    elif kind == "photo":
        tex = photo_like_texture(px, rng)
    else:
        tex = texture_tile(str(kind), px, rng)
    tex = (tex.astype(np.float32) * rng.uniform(0.45, 1.0) + rng.uniform(0, 50)).clip(0, 255).astype(np.uint8)
    # Mirror the tile into a 2×2 block: it then repeats without seams.
    tex = np.concatenate([tex, tex[:, ::-1]], axis=1)
    tex = np.ascontiguousarray(np.concatenate([tex, tex[::-1]], axis=0))
    n = 4
    s = np.linspace(-half_size, half_size, n + 1)
    gx, gy = np.meshgrid(s, s, indexing="ij")
    v = np.column_stack([gx.ravel() + center[0], gy.ravel() + center[1], np.zeros(gx.size)])
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    tile_m = rng.uniform(0.3, 1.2)
    uv = v[:, :2] / tile_m
    mesh = trimesh.Trimesh(v, f, visual=texture_visuals(uv, tex), process=False)
    mesh.metadata["name"] = "ground"
    mesh.metadata["material"] = {
        "roughness": float(rng.uniform(0.4, 1.0)),
        "metallic": 0.0,
        "specular": float(rng.uniform(0.1, 0.5)),
    }
    return ObjectModel(
        obj_id=0,
        mesh=mesh,
        render_mesh=mesh,
        diameter=2 * math.sqrt(2) * half_size,
        symmetries=np.eye(4)[None],
        points=v[:4].copy(),
        name="ground",
    )
