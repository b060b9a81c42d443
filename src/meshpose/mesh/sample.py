"""Surface sampling, exact diameters and surface colours of meshes."""

from __future__ import annotations

import numpy as np
import trimesh
from numpy.typing import ArrayLike
from PIL import Image
from scipy.spatial import ConvexHull, QhullError

__all__ = ["mesh_diameter", "sample_surface_points", "surface_colors"]

# Pairwise distances are computed in blocks of this many rows (memory: block × n float64).
_BLOCK = 512


def sample_surface_points(mesh: trimesh.Trimesh, n: int = 2048, seed: int = 0) -> np.ndarray:
    """Sample points uniformly by area on the surface of a mesh, deterministically.

    Each point picks a face with probability proportional to its area, then a uniform point in that triangle
    (``1 - sqrt(r1)`` barycentric construction). The same mesh, ``n`` and ``seed`` always give the same points
    (numpy's PCG64 generator; no global random state is touched).

    Args:
        mesh: triangle mesh (metres).
        n: number of points, ``n ≥ 1``.
        seed: random seed.

    Returns:
        ``(n, 3)`` float64 points on the surface, in the mesh's units (metres).

    Raises:
        ValueError: ``n < 1`` or a mesh without any face of positive area.

    Example:
        >>> box = trimesh.creation.box((0.1, 0.2, 0.3))
        >>> pts = sample_surface_points(box, 100, seed=1)
        >>> pts.shape, bool(np.all(np.abs(pts) <= np.array([0.05, 0.1, 0.15]) + 1e-12))
        ((100, 3), True)
    """
    return sample_surface_faces(mesh, n, seed)[0]


def sample_surface_faces(mesh: trimesh.Trimesh, n: int = 2048, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_surface_points` that also returns the ``(n,)`` index of the face each point lies on."""
    if n < 1:
        raise ValueError(f"need at least one sample point, got n={n}")
    triangles = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    if len(triangles) == 0:
        raise ValueError("cannot sample the surface of a mesh without faces")
    areas = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    total = areas.sum()
    if not (np.isfinite(total) and total > 0):
        raise ValueError(f"cannot sample the surface of a mesh with total area {total}")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(areas / total)
    cdf[-1] = 1.0
    face = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1.0 - s, s * (1.0 - r2), s * r2
    tri = triangles[face]
    return w0[:, None] * tri[:, 0] + w1[:, None] * tri[:, 1] + w2[:, None] * tri[:, 2], face


def mesh_diameter(mesh: trimesh.Trimesh | ArrayLike) -> float:
    """The exact diameter: the largest distance between two vertices of a mesh (or two points of a set).

    The farthest pair always lies on the convex hull, so only hull vertices are compared (all pairs, in
    blocks). Degenerate sets (coplanar, collinear, a single point) that Qhull rejects are handled in their own
    plane or line, which is still exact.

    Args:
        mesh: a ``trimesh.Trimesh`` (the vertices referenced by faces are used; all vertices if it has no
            faces) or an ``(N, 3)`` array of points.

    Returns:
        The diameter in the input's units (metres for meshpose meshes); ``0.0`` for a single point.

    Raises:
        ValueError: no points, or NaN/inf coordinates.

    Example:
        >>> round(mesh_diameter(trimesh.creation.box((0.1, 0.2, 0.2))), 6)
        0.3
    """
    if isinstance(mesh, trimesh.Trimesh):
        faces = np.asarray(mesh.faces)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        points = vertices[np.unique(faces)] if len(faces) else vertices
    else:
        points = np.asarray(mesh, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("cannot compute the diameter of an empty point set")
    if not np.isfinite(points).all():
        raise ValueError("cannot compute the diameter of points with NaN or inf coordinates")
    candidates = _hull_candidates(points)
    return _max_pairwise_distance(candidates)


def _hull_candidates(points: np.ndarray) -> np.ndarray:
    """Points among which the farthest pair lies: the convex-hull vertices, in the set's affine span."""
    points = np.unique(points, axis=0)
    if len(points) <= 4:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:
        pass
    # Degenerate: find the affine span and take the hull there (distances are preserved by the projection).
    centred = points - points.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.sum(sv > sv[0] * 1e-9)) if sv[0] > 0 else 0
    if rank == 0:
        return points[:1]
    if rank == 1:
        t = centred @ vt[0]
        return points[[int(np.argmin(t)), int(np.argmax(t))]]
    if rank == 2:
        try:
            return points[ConvexHull(centred @ vt[:2].T).vertices]
        except QhullError:
            pass
    return points  # pragma: no cover - Qhull failed on a full-rank set: compare all pairs


def _max_pairwise_distance(points: np.ndarray) -> float:
    """Largest pairwise distance (exact: every pair that could beat the answer is measured).

    Small sets are compared all against all. Larger ones (e.g. the hull of a finely tessellated sphere, where
    every vertex is on the hull) are pruned by direction: for a fixed set of unit directions whose angular
    covering radius is at most ``θ``, the farthest pair ``(i, j)``, if longer than a known lower bound ``L``,
    satisfies ``(pᵢ - pⱼ)·d ≥ L cos θ`` for some direction ``d``; so ``i`` lies in the top cap and ``j`` in the
    bottom cap of the projections on ``d``, and only those pairs are measured.
    """
    p = points - (points.min(axis=0) + points.max(axis=0)) / 2
    if len(p) < 2:
        return 0.0
    if len(p) <= _BRUTE_FORCE_MAX:
        return _max_cross_distance(p, p)
    i, lower = 0, 0.0
    for _ in range(4):  # farthest-point sweeps: a lower bound, usually the answer or close to it
        d = np.linalg.norm(p - p[i], axis=1)
        j = int(np.argmax(d))
        if d[j] <= lower:
            break
        i, lower = j, float(d[j])
    directions, theta = _pruning_directions()
    proj = p @ directions.T  # (N, K)
    margin = lower * np.cos(theta) * (1.0 - 1e-9)
    top = proj >= proj.min(axis=0) + margin
    bottom = proj <= proj.max(axis=0) - margin
    best = lower
    for k in np.flatnonzero(top.any(axis=0) & bottom.any(axis=0)):
        best = max(best, _max_cross_distance(p[top[:, k]], p[bottom[:, k]]))
    return best


_BRUTE_FORCE_MAX = 1500
_directions_cache: list[tuple[np.ndarray, float]] = []


def _pruning_directions() -> tuple[np.ndarray, float]:
    """Half of the vertices of a subdivided icosahedron (one of each ±d pair) and a bound on the angle from
    any unit vector to the nearest of ±those: the longest edge angle of the icosphere."""
    if not _directions_cache:
        sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
        v = np.asarray(sphere.vertices, dtype=np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        edges = np.asarray(sphere.edges_unique)
        cos_edge = np.einsum("ij,ij->i", v[edges[:, 0]], v[edges[:, 1]])
        theta = float(np.arccos(np.clip(cos_edge.min(), -1.0, 1.0)))
        g = np.array([0.3141, 0.5926, 0.7412])
        _directions_cache.append((v[v @ g > 0], theta))
    return _directions_cache[0]


def _max_cross_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``max |aᵢ - bⱼ|`` over all pairs, in row blocks (memory: ``_BLOCK × len(b)`` float64)."""
    best = 0.0
    for start in range(0, len(a), _BLOCK):
        block = a[start : start + _BLOCK]
        d2 = np.sum((block[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


def surface_colors(mesh: trimesh.Trimesh, points: ArrayLike) -> np.ndarray:
    """The colour a mesh shows at the surface point closest to each query point.

    Vertex colours are interpolated barycentrically within the closest triangle (as a rasteriser does), face
    colours are taken per face, and textures are sampled bilinearly at the interpolated UV (``v`` up, repeat
    wrapping, as OpenGL and glTF do) and multiplied by a PBR ``baseColorFactor`` (as ``meshpose.render``
    does; a ``SimpleMaterial``'s diffuse colour is ignored). A mesh without any colour information gives
    trimesh's default grey.

    Args:
        mesh: triangle mesh with vertex/face colours or a texture.
        points: ``(N, 3)`` query points (metres); typically points on the surface.

    Returns:
        ``(N, 3)`` float64 RGB in [0, 1].
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros((0, 3))
    closest, _, face = trimesh.proximity.closest_point(mesh, pts)
    face = np.asarray(face, dtype=np.int64)
    return _colors_at(mesh, face, barycentric(mesh, face, closest))


def barycentric(mesh: trimesh.Trimesh, face: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 3)`` barycentric coordinates of ``points`` (projected into the plane of ``mesh.faces[face]``)."""
    tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)[face]]
    bary = trimesh.triangles.points_to_barycentric(tri, points)
    bary = np.where(np.isfinite(bary), bary, 1.0 / 3.0)  # zero-area triangles
    return np.asarray(bary, dtype=np.float64)


def _colors_at(mesh: trimesh.Trimesh, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Colours ``(N, 3)`` in [0, 1] at barycentric positions ``bary`` in faces ``face``."""
    visual = mesh.visual
    faces = np.asarray(mesh.faces)
    if isinstance(visual, trimesh.visual.TextureVisuals):
        image = texture_image(mesh)
        if image is not None and visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            uv = np.einsum("nk,nkc->nc", bary, np.asarray(visual.uv, dtype=np.float64)[faces[face]])
            factor = getattr(visual.material, "baseColorFactor", None)  # glTF: colour = factor × texture
            tint = np.ones(3) if factor is None else np.asarray(factor, dtype=np.float64).ravel()[:3] / 255.0
            return sample_texture(image, uv) * tint
        color = visual.material.main_color if visual.material is not None else [102, 102, 102, 255]
        return np.broadcast_to(np.asarray(color[:3], dtype=np.float64) / 255.0, (len(face), 3)).copy()
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "face":
        return np.asarray(visual.face_colors[face, :3], dtype=np.float64) / 255.0
    vc = np.asarray(visual.vertex_colors[:, :3], dtype=np.float64) / 255.0  # type: ignore[union-attr]
    return np.einsum("nk,nkc->nc", bary, vc[faces[face]])


def texture_image(mesh: trimesh.Trimesh) -> Image.Image | None:
    """The base-colour texture image of a textured mesh (``SimpleMaterial.image`` or a PBR
    ``baseColorTexture``, unmodified), or ``None`` when it has none."""
    visual = mesh.visual
    if not isinstance(visual, trimesh.visual.TextureVisuals) or visual.material is None:
        return None
    material = visual.material
    image = getattr(material, "image", None)
    if image is None:
        image = getattr(material, "baseColorTexture", None)
    return image if isinstance(image, Image.Image) else None


def sample_texture(image: Image.Image | np.ndarray, uv: ArrayLike) -> np.ndarray:
    """Bilinear texture lookup with repeat wrapping; ``uv`` ``(N, 2)`` has ``v`` pointing up (OpenGL/obj/glb
    convention as trimesh stores it). Returns ``(N, 3)`` float64 RGB in [0, 1]."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3] / 255.0
    h, w = img.shape[:2]
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    x = np.mod(uv[:, 0], 1.0) * w - 0.5
    y = (1.0 - np.mod(uv[:, 1], 1.0)) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    x1i, y1i = np.mod(x0i + 1, w), np.mod(y0i + 1, h)
    x0i, y0i = np.mod(x0i, w), np.mod(y0i, h)
    top = img[y0i, x0i] * (1 - fx) + img[y0i, x1i] * fx
    bottom = img[y1i, x0i] * (1 - fx) + img[y1i, x1i] * fx
    return np.asarray(top * (1 - fy) + bottom * fy, dtype=np.float64)
