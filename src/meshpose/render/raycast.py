"""Reference renderer: one embree ray through every pixel centre. For tests; clarity over speed.

For pixel ``(u, v)`` (integer = pixel centre, OpenCV convention) the camera ray is ``d = K⁻¹ [u, v, 1]``, so
a hit at ray parameter ``s`` has camera z-depth exactly ``s``. Each object is intersected in its own frame
(the ray mapped by ``obj_from_cam``) with embree (through trimesh's ``ray_pyembree``, backed by embreex),
which only chooses the triangle; the hit point, depth and barycentric coordinates are then recomputed in
float64 from that triangle, so ``xyz`` and ``depth`` are exact up to float64 rounding. The nearest hit over
all objects wins.

The other outputs follow the same definitions as :class:`~meshpose.render.gl.GLRenderer` (both read
:func:`~meshpose.render.base.surface_data`): normals are the barycentric blend of the corner normals, turned
towards the camera by the triangle's winding; colours are the barycentric blend of vertex/face colours, or the
texture sampled bilinearly (repeat wrap, no mipmaps) at the interpolated uv; shading is the
:class:`~meshpose.render.base.Lighting` formula. RGB values are rounded to 8 bits as the GL renderer's are.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from meshpose.render.base import (
    DEFAULT_COLOR,
    Lighting,
    RenderOutput,
    SurfaceData,
    normalize_scene_batch,
    surface_data,
)
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["RaycastRenderer", "pixel_rays", "shade"]


def pixel_rays(camera: Camera) -> np.ndarray:
    """Camera-frame directions through every pixel centre, scaled to unit z.

    Args:
        camera: the camera.

    Returns:
        ``(H, W, 3)`` float64 ``K⁻¹ [u, v, 1]`` for ``u = 0..W-1`` (column) and ``v = 0..H-1`` (row).
    """
    u, v = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    return pix @ np.linalg.inv(camera.K).T


def shade(albedo: np.ndarray, normal: np.ndarray, view: np.ndarray, lighting: Lighting) -> np.ndarray:
    """The :class:`~meshpose.render.base.Lighting` formula.

    Args:
        albedo: ``(..., 3)`` colour in [0, 1].
        normal: ``(..., 3)`` unit normals (camera frame, towards the camera).
        view: ``(..., 3)`` unit directions from the surface point to the camera centre.
        lighting: the lighting.

    Returns:
        ``(..., 3)`` shaded colour in [0, 1].
    """
    light = lighting.unit_direction
    ndl = normal @ light
    out = albedo * (lighting.ambient + lighting.diffuse * np.maximum(ndl, 0.0))[..., None]
    if lighting.specular > 0:
        reflect = 2.0 * ndl[..., None] * normal - light
        rv = np.maximum(np.einsum("...i,...i->...", reflect, view), 1e-20)
        out = out + np.where(ndl > 0, lighting.specular * rv**lighting.shininess, 0.0)[..., None]
    return np.clip(out * np.asarray(lighting.color), 0.0, 1.0)


def _sample_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample ``(Ht, Wt, 4)`` uint8 ``texture`` at trimesh ``uv`` ``(M, 2)`` (v = 0: bottom), wrapped."""
    ht, wt = texture.shape[:2]
    x = uv[:, 0] * wt - 0.5
    y = (1.0 - uv[:, 1]) * ht - 0.5  # row 0 of the image is its top
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    tex = texture.astype(np.float64) / 255.0

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return tex[np.mod(yy, ht), np.mod(xx, wt)]

    top = at(y0i, x0i) * (1 - fx) + at(y0i, x0i + 1) * fx
    bottom = at(y0i + 1, x0i) * (1 - fx) + at(y0i + 1, x0i + 1) * fx
    return top * (1 - fy) + bottom * fy


class RaycastRenderer:
    """Embree ray-casting :class:`~meshpose.render.base.Renderer` (reference for tests).

    Args:
        lighting: default shading (default: ``Lighting()``).
        crease_angle: degrees, as for :class:`~meshpose.render.gl.GLRenderer`.
        default_color: RGBA uint8 albedo of meshes without colours or texture.

    Example:
        >>> import trimesh
        >>> from meshpose.types import Camera, ObjectModel, Pose
        >>> mesh = trimesh.creation.box((0.1, 0.1, 0.1))
        >>> obj = ObjectModel(1, mesh, mesh, 0.17, np.eye(4)[None], mesh.vertices)
        >>> cam = Camera.from_fxfycxcy(300.0, 300.0, 31.5, 23.5, width=64, height=48)
        >>> out = RaycastRenderer().render([obj], Pose(np.eye(3)[None], [[0.0, 0.0, 0.5]]), cam)
        >>> round(float(out.depth[0, 24, 32]), 6), out.instance[0, 24, 32].item()
        (0.45, 1)
    """

    def __init__(
        self,
        *,
        lighting: Lighting | None = None,
        crease_angle: float = 30.0,
        default_color: Sequence[int] = DEFAULT_COLOR,
    ) -> None:
        self.lighting = lighting if lighting is not None else Lighting()
        self.crease_angle = float(crease_angle)
        self.default_color = tuple(int(c) for c in default_color)
        self._cache: OrderedDict[int, tuple[weakref.ref[Any], SurfaceData, Any]] = OrderedDict()

    def _prepared(self, mesh: Any) -> tuple[SurfaceData, Any]:
        """Surface data and an embree intersector for ``mesh`` (a small cache keyed by the mesh object)."""
        entry = self._cache.get(id(mesh))
        if entry is not None and entry[0]() is mesh:
            return entry[1], entry[2]
        import trimesh
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        data = surface_data(mesh, crease_angle=self.crease_angle, default_color=self.default_color)
        geometry = trimesh.Trimesh(data.positions, data.faces, process=False)
        intersector = RayMeshIntersector(geometry)
        self._cache[id(mesh)] = (weakref.ref(mesh), data, intersector)
        while len(self._cache) > 16:
            self._cache.popitem(last=False)
        return data, intersector

    def render(
        self,
        objects: Sequence[ObjectModel],
        poses: Pose,
        camera: Camera | Sequence[Camera],
        *,
        lighting: Lighting | None = None,
    ) -> RenderOutput:
        """Render ``B`` scenes of the ``N`` ``objects`` (see :class:`~meshpose.render.base.Renderer`)."""
        t_start = time.perf_counter()
        poses, cams = normalize_scene_batch(objects, poses, camera)
        R, t = poses.numpy()
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError("render poses contain NaN or inf")
        light = lighting if lighting is not None else self.lighting
        prepared = [self._prepared(obj.render_mesh) for obj in objects]
        n_scenes = R.shape[0]
        h, w = cams[0].height, cams[0].width
        rgb = np.zeros((n_scenes, h, w, 3), np.float32)
        depth = np.zeros((n_scenes, h, w), np.float32)
        xyz = np.zeros((n_scenes, h, w, 3), np.float32)
        normal = np.zeros((n_scenes, h, w, 3), np.float32)
        instance = np.zeros((n_scenes, h, w), np.int32)
        for b, cam in enumerate(cams):
            rays = pixel_rays(cam).reshape(-1, 3)  # camera frame, z = 1
            best = np.full(len(rays), np.inf)
            for n, (data, intersector) in enumerate(prepared):
                hit = self._cast(data, intersector, R[b, n], t[b, n], rays)
                if hit is None:
                    continue
                ray, s, face, bary = hit
                closer = s < best[ray]
                ray, s, face, bary = ray[closer], s[closer], face[closer], bary[closer]
                best[ray] = s
                corners = data.faces[face]  # (M, 3)
                p_obj = np.einsum("mk,mkj->mj", bary, data.positions[corners])
                n_cam = np.einsum("mk,mkj->mj", bary, data.normals[corners].astype(np.float64)) @ R[b, n].T
                n_cam /= np.linalg.norm(n_cam, axis=1, keepdims=True)
                tri = data.positions[data.faces[face]] @ R[b, n].T
                winding = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
                seen_from_back = np.einsum("mj,mj->m", winding, rays[ray]) > 0
                n_cam[seen_from_back] *= -1.0
                albedo = np.einsum("mk,mkj->mj", bary, data.colors[corners, :3].astype(np.float64) / 255.0)
                if data.textured:
                    assert data.uvs is not None and data.texture is not None
                    uv = np.einsum("mk,mkj->mj", bary, data.uvs[corners].astype(np.float64))
                    albedo = albedo * _sample_bilinear(data.texture, uv)[:, :3]
                view = -rays[ray] / np.linalg.norm(rays[ray], axis=1, keepdims=True)
                color = np.round(shade(albedo, n_cam, view, light) * 255.0) / 255.0
                rows, cols = np.divmod(ray, w)
                depth[b, rows, cols] = s
                xyz[b, rows, cols] = p_obj
                normal[b, rows, cols] = n_cam
                rgb[b, rows, cols] = color
                instance[b, rows, cols] = n + 1
        return RenderOutput(rgb, depth, instance > 0, xyz, normal, instance, {"total": time.perf_counter() - t_start})

    @staticmethod
    def _cast(
        data: SurfaceData, intersector: Any, R: np.ndarray, t: np.ndarray, rays: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Hits of camera rays (origin 0, directions ``rays``) on one object at ``cam_from_obj = (R, t)``.

        Returns:
            ``(ray index (M,), ray parameter = camera z (M,), face (M,), barycentrics (M, 3))`` of the rays
            that hit in front of the camera, or ``None`` if none does.
        """
        origin = -R.T @ t  # camera centre in the object frame
        directions = rays @ R  # R.T @ d for every ray
        face = np.asarray(intersector.intersects_first(np.broadcast_to(origin, directions.shape), directions))
        ray = np.flatnonzero(face >= 0)
        if len(ray) == 0:
            return None
        face = face[ray]
        tri = data.positions[data.faces[face]]  # (M, 3, 3) float64
        d = directions[ray]
        # Möller–Trumbore in float64 on the triangle embree chose.
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        pvec = np.cross(d, e2)
        det = np.einsum("mj,mj->m", e1, pvec)
        ok = np.abs(det) > 1e-300
        inv = np.divide(1.0, det, out=np.zeros_like(det), where=ok)
        tvec = origin - tri[:, 0]
        b1 = np.einsum("mj,mj->m", tvec, pvec) * inv
        qvec = np.cross(tvec, e1)
        b2 = np.einsum("mj,mj->m", d, qvec) * inv
        s = np.einsum("mj,mj->m", e2, qvec) * inv
        ok &= s > 0
        bary = np.stack([1.0 - b1 - b2, b1, b2], axis=1)
        return ray[ok], s[ok], face[ok], bary[ok]
