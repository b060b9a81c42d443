"""Placement of objects in a scene's world frame (z up, metres): resting in quasi-static stable poses on a
ground plane with footprints that do not overlap, or floating in a volume with bounding spheres that do not."""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import trimesh

from meshpose.synth.shapes import random_rotation, rot_z
from meshpose.types import ObjectModel

__all__ = ["bounding_sphere", "clear_stable_poses", "place_floating", "place_on_plane", "stable_poses"]

_STABLE_CACHE: OrderedDict[int, tuple[Any, np.ndarray, np.ndarray]] = OrderedDict()
_STABLE_LOCK = threading.Lock()


def stable_poses(mesh: trimesh.Trimesh, max_hull_faces: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Quasi-static resting poses of a rigid object on a horizontal plane, and their probabilities.

    The convex hull (simplified to at most ``max_hull_faces`` faces) is tipped onto each of its faces; a face
    is kept when the centre of mass projects inside it, with a probability proportional to the solid angle it
    subtends from the centre of mass (trimesh's quasi-static model). Cached per mesh object.

    Returns:
        ``(T (P, 4, 4) rotations that bring the object onto the plane z = 0 (up to a shift), probabilities (P,))``.
    """
    key = id(mesh)
    with _STABLE_LOCK:
        hit = _STABLE_CACHE.get(key)
        if hit is not None and hit[0]() is mesh:
            _STABLE_CACHE.move_to_end(key)
            return hit[1], hit[2]
    hull = mesh.convex_hull
    com = np.asarray(hull.center_mass, dtype=np.float64)
    if len(hull.faces) > max_hull_faces:
        import fast_simplification

        v, f = fast_simplification.simplify(
            np.asarray(hull.vertices, np.float32), np.asarray(hull.faces, np.int64), target_count=max_hull_faces
        )
        hull = trimesh.Trimesh(v, f, process=True).convex_hull
    try:
        T, p = trimesh.poses.compute_stable_poses(hull, center_mass=com, n_samples=1, threshold=0.0)
    except Exception:  # degenerate hulls: fall back to any orientation
        T, p = np.eye(4)[None], np.ones(1)
    if len(T) == 0:
        T, p = np.eye(4)[None], np.ones(1)
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
    with _STABLE_LOCK:
        _STABLE_CACHE[key] = (weakref.ref(mesh), np.asarray(T, dtype=np.float64), p)
        while len(_STABLE_CACHE) > 512:
            _STABLE_CACHE.popitem(last=False)
    return np.asarray(T, dtype=np.float64), p


def clear_stable_poses() -> None:
    """Forget the cached stable poses of :func:`stable_poses`."""
    with _STABLE_LOCK:
        _STABLE_CACHE.clear()


def place_on_plane(objects: Sequence[ObjectModel], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Rest every object in a random stable pose with a random heading; footprints do not overlap.

    Returns:
        ``(world_from_obj (K, 4, 4), centre (3,) of the arrangement, radius)``, metres.
    """
    rotations, footprints, lows, offsets = [], [], [], []
    for obj in objects:
        T, p = stable_poses(obj.render_mesh)
        k = int(rng.choice(len(p), p=p))
        R = rot_z(rng.uniform(0, 2 * math.pi)) @ T[k, :3, :3]
        v = np.asarray(obj.render_mesh.vertices, dtype=np.float64) @ R.T
        centre_xy = 0.5 * (v[:, :2].min(0) + v[:, :2].max(0))
        footprint = float(np.linalg.norm(v[:, :2] - centre_xy, axis=1).max())
        rotations.append(R)
        footprints.append(footprint)
        lows.append(float(v[:, 2].min()))
        offsets.append(centre_xy)
    r = np.asarray(footprints)
    area = float(np.sum(math.pi * r**2))
    spread = math.sqrt(area / math.pi) * rng.uniform(1.0, 1.6)
    centres = _pack_discs(r, spread, rng)
    poses = np.tile(np.eye(4), (len(objects), 1, 1))
    for i, R in enumerate(rotations):
        poses[i, :3, :3] = R
        poses[i, :2, 3] = centres[i] - offsets[i]
        poses[i, 2, 3] = -lows[i]
    heights = [
        float((np.asarray(o.render_mesh.vertices) @ R.T)[:, 2].max() - low)
        for o, R, low in zip(objects, rotations, lows, strict=True)
    ]
    extent = np.linalg.norm(centres, axis=1) + r
    radius = float(max(np.max(extent), max(heights)))
    return poses, np.array([0.0, 0.0, 0.25 * max(heights)]), radius


def _pack_discs(radii: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Centres ``(K, 2)`` of non-overlapping discs, largest first, within a region that grows if needed."""
    order = np.argsort(-radii, kind="stable")
    centres = np.zeros((len(radii), 2))
    placed: list[int] = []
    for i in order:
        region = max(spread, float(radii[i]))
        for attempt in range(400):
            c = rng.uniform(-1, 1, 2) * region
            if all(np.linalg.norm(c - centres[j]) >= radii[i] + radii[j] for j in placed):
                break
            if attempt % 40 == 39:
                region *= 1.25
        centres[i] = c
        placed.append(int(i))
    return centres


def place_floating(objects: Sequence[ObjectModel], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Random orientations; bounding spheres do not overlap, packed in a ball.

    Returns:
        ``(world_from_obj (K, 4, 4), centre (3,) of the arrangement, radius)``, metres.
    """
    radii = np.array([bounding_sphere(o)[1] for o in objects])
    centres_local = np.array([bounding_sphere(o)[0] for o in objects])
    volume = float(np.sum(4.0 / 3.0 * math.pi * radii**3))
    region = (volume / (4.0 / 3.0 * math.pi)) ** (1.0 / 3.0) * rng.uniform(1.2, 1.7)
    order = np.argsort(-radii, kind="stable")
    centres = np.zeros((len(objects), 3))
    placed: list[int] = []
    for i in order:
        reach = max(region, float(radii[i]))
        for attempt in range(400):
            d = rng.normal(size=3)
            c = d / max(float(np.linalg.norm(d)), 1e-12) * reach * rng.random() ** (1 / 3)
            if all(np.linalg.norm(c - centres[j]) >= radii[i] + radii[j] for j in placed):
                break
            if attempt % 40 == 39:
                reach *= 1.25
        centres[i] = c
        placed.append(int(i))
    poses = np.tile(np.eye(4), (len(objects), 1, 1))
    for i in range(len(objects)):
        R = random_rotation(rng)
        poses[i, :3, :3] = R
        poses[i, :3, 3] = centres[i] - R @ centres_local[i]
    radius = float(np.max(np.linalg.norm(centres, axis=1) + radii))
    return poses, np.zeros(3), radius


def bounding_sphere(obj: ObjectModel) -> tuple[np.ndarray, float]:
    """``(centre (3,), radius)`` of a sphere about the bounding-box centre holding the render mesh (metres)."""
    v = np.asarray(obj.render_mesh.vertices, dtype=np.float64)
    c = 0.5 * (v.min(0) + v.max(0))
    return c, float(np.linalg.norm(v - c, axis=1).max())
