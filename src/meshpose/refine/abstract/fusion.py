"""Fusing an object's descriptors onto its mesh: views rendered all around it, their descriptors averaged in the
object frame (:func:`~meshpose.refine.abstract.field.fuse_samples`), cached on disk per mesh content and network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from meshpose.mesh import render_bounding_sphere
from meshpose.refine.abstract.config import AbstractConfig
from meshpose.refine.abstract.features import DescriptorExtractor
from meshpose.refine.abstract.field import DescriptorField, fuse_samples
from meshpose.render.base import Renderer, render_alone
from meshpose.render.content import cache_dir, cached, hash_render_mesh, read_cache_npz, write_cache_npz
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["FORMAT_VERSION", "field_cache_key", "fuse_object", "load_field", "view_rotations"]

log = logging.getLogger(__name__)

#: Version of the cache file layout and of how views are rendered; bump it when either changes.
FORMAT_VERSION = 2
_GOLDEN = math.pi * (3.0 - math.sqrt(5.0))


def view_rotations(n: int) -> np.ndarray:
    """``(n, 3, 3)`` rotations ``cam_from_obj`` of cameras spread evenly around an object (a Fibonacci sphere of
    directions), looking at its centre, with in-plane angles spread by the golden angle (deterministic)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    phi = _GOLDEN * i
    v = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)  # from the centre towards the camera
    zc = -v
    up = np.where(np.abs(v[:, 2:3]) > 0.9, [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]])
    xc = np.cross(up, zc)
    xc /= np.linalg.norm(xc, axis=1, keepdims=True)
    yc = np.cross(zc, xc)
    base = np.stack([xc, yc, zc], 1)  # rows: camera axes in the object frame
    ang = _GOLDEN * 1.7 * np.arange(n)
    c, s = np.cos(ang), np.sin(ang)
    roll = np.zeros((n, 3, 3))
    roll[:, 0, 0], roll[:, 0, 1], roll[:, 1, 0], roll[:, 1, 1], roll[:, 2, 2] = c, -s, s, c, 1.0
    return roll @ base


def _views(model: ObjectModel, cfg: AbstractConfig) -> tuple[Pose, Camera]:
    center, radius = render_bounding_sphere(model.render_mesh)
    size = int(cfg.fusion_size)
    f = 1.5 * size
    cam = Camera.from_fxfycxcy(f, f, (size - 1) / 2.0, (size - 1) / 2.0, width=size, height=size)
    dist = radius * math.sqrt(1.0 + (f / (0.5 * cfg.fusion_fill * size)) ** 2)
    R = view_rotations(int(cfg.fusion_views))
    t = np.array([0.0, 0.0, dist])[None] - np.einsum("nij,j->ni", R, center)
    return Pose(torch.as_tensor(R), torch.as_tensor(t)), cam


def fuse_object(
    model: ObjectModel, extractor: DescriptorExtractor, renderer: Renderer, cfg: AbstractConfig
) -> DescriptorField:
    """Render ``cfg.fusion_views`` views of ``model`` alone (default lighting, black background), compute their
    descriptors and fuse them onto the render mesh (pixels one step inside the silhouettes only: the contour's
    descriptors mix in the background)."""
    poses, cam = _views(model, cfg)
    n = len(poses)
    out = render_alone(renderer, [model] * n, poses, [cam] * n, cfg.lighting)
    rgb = np.rint(np.clip(out.rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    mask = np.array(out.mask, dtype=bool)
    xyz = np.array(out.xyz, dtype=np.float32)
    desc, _ = extractor(rgb)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    pts, vals = [], []
    for b in range(n):
        inner = cv2.erode(mask[b].astype(np.uint8), kernel) > 0
        if not inner.any():
            inner = mask[b]
        pts.append(xyz[b][inner])
        vals.append(desc[b][inner])
    points = np.concatenate(pts)
    if len(points) == 0:
        raise ValueError(f"object {model.obj_id}: no view of it shows any pixel (an empty or degenerate mesh?)")
    return fuse_samples(points, np.concatenate(vals), np.asarray(model.render_mesh.vertices), int(cfg.fusion_voxels))


def field_cache_key(model: ObjectModel, extractor: DescriptorExtractor, renderer: Renderer, cfg: AbstractConfig) -> str:
    """Hex digest naming a fused field: render-mesh content, the network's digest, the fusion settings, the
    renderer's mesh settings and :data:`FORMAT_VERSION`."""
    h = hashlib.blake2b(digest_size=20)
    hash_render_mesh(h, model.render_mesh)
    light = cfg.lighting
    settings = [
        FORMAT_VERSION,
        extractor.digest,
        cfg.fusion_views,
        cfg.fusion_size,
        cfg.fusion_voxels,
        cfg.fusion_fill,
        repr(light),
        getattr(renderer, "crease_angle", None),
        list(getattr(renderer, "default_color", ()) or ()),
    ]
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


_ARRAYS = ("voxel_points", "voxel_desc", "vertex_desc", "origin", "grid")


def _save(field: DescriptorField, key: str, path: Path) -> None:
    meta = {"version": FORMAT_VERSION, "key": key, "edge": field.edge}
    write_cache_npz(path, meta, {a: getattr(field, a) for a in _ARRAYS}, compressed=False)


def _load(path: Path, key: str) -> DescriptorField:
    meta, arrays = read_cache_npz(path, FORMAT_VERSION, key, _ARRAYS)
    d = arrays["voxel_desc"].shape[1]
    if arrays["grid"].ndim != 4 or arrays["grid"].shape[0] != d or arrays["vertex_desc"].shape[1] != d:
        raise ValueError(f"cache file {path} holds arrays of unexpected shapes")
    return DescriptorField(edge=float(meta["edge"]), **arrays)


def load_field(
    model: ObjectModel, extractor: DescriptorExtractor, renderer: Renderer, cfg: AbstractConfig
) -> DescriptorField:
    """The fused descriptors of ``model``, from the disk cache when there, else fused and written there.

    An unreadable or mismatching cache file is rebuilt (a logged warning); a cache folder that cannot be written
    only costs the cache (a warning).
    """
    key = field_cache_key(model, extractor, renderer, cfg)
    folder = Path(cfg.cache_dir) if cfg.cache_dir is not None else cache_dir("abstract")
    path = folder / f"obj{model.obj_id}-{key}.npz"
    return cached(
        path,
        lambda p: _load(p, key),
        lambda: fuse_object(model, extractor, renderer, cfg),
        lambda fld, p: _save(fld, key, p),
        "descriptor",
        log,
    )
