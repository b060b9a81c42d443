"""Surface sampling and surface colours of meshes (exact diameters: :mod:`meshpose.mesh.diameter`)."""

from __future__ import annotations

import numpy as np
import trimesh
from numpy.typing import ArrayLike
from PIL import Image

from meshpose.mesh.diameter import mesh_diameter

__all__ = ["mesh_diameter", "sample_surface_points", "surface_colors"]


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
