"""GPU buffers of meshes: upload of a mesh's surface data and a bounded cache keyed by mesh object.

A cached entry is reused while the same mesh object is alive and unchanged (a cheap content fingerprint);
entries of meshes that were garbage-collected are freed at the next render, and the least recently used ones
beyond the cache size after each render (never mid-call: a call may draw more meshes than the cache holds).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import moderngl
import numpy as np

from meshpose.render.base import SurfaceData, surface_data
from meshpose.render.gl.programs import Program, ProgramSet

__all__ = ["GpuMesh", "MeshCache", "mesh_fingerprint", "upload_mesh"]


@dataclass
class GpuMesh:
    """GPU buffers of one mesh, with what is needed to tell whether the mesh changed since.

    ``vao`` binds the buffers to the mesh's shaded ``program``, ``geometry_vao`` (positions only) to the geometry
    program.
    """

    ref: weakref.ref[Any]
    fingerprint: tuple[Any, ...]
    program: Program
    vbo: moderngl.Buffer
    ibo: moderngl.Buffer
    vao: moderngl.VertexArray
    geometry_vao: moderngl.VertexArray
    texture: moderngl.Texture | None
    tint: bytes
    center: np.ndarray
    radius: float
    orientation: int

    def release(self) -> None:
        self.vao.release()
        self.geometry_vao.release()
        self.vbo.release()
        self.ibo.release()
        if self.texture is not None:
            self.texture.release()


def mesh_fingerprint(mesh: Any) -> tuple[Any, ...]:
    """Cheap identity of a mesh's content (trimesh caches these hashes until the arrays change)."""
    visual = getattr(mesh, "visual", None)
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None)
    if image is None:
        image = getattr(material, "image", None)
    try:
        visual_hash = hash(visual)
    except TypeError:
        visual_hash = id(visual)
    return (hash(mesh), visual_hash, id(visual), id(material), id(image))


def upload_mesh(ctx: moderngl.Context, programs: ProgramSet, max_texture: int, mesh: Any, data: SurfaceData) -> GpuMesh:
    """Vertex, index and texture buffers of one mesh's surface data, in ``ctx``.

    Textures larger than ``max_texture`` pixels per side are shrunk first. The entry's ``fingerprint`` is left
    empty for the caller to fill.
    """
    textured = data.textured
    prog = programs.shaded[textured]
    if textured:
        layout = np.dtype([("p", "f4", 3), ("n", "f4", 3), ("uv", "f4", 2)])
        fmt, attrs = "3f 3f 2f", ("in_position", "in_normal", "in_uv")
    else:
        layout = np.dtype([("p", "f4", 3), ("n", "f4", 3), ("c", "u1", 4)])
        fmt, attrs = "3f 3f 4f1", ("in_position", "in_normal", "in_color")
    vertices = np.empty(len(data.positions), dtype=layout)
    vertices["p"] = data.positions
    vertices["n"] = data.normals
    texture = None
    if data.uvs is not None and data.texture is not None:
        vertices["uv"] = data.uvs
        image = data.texture
        limit = max_texture
        if max(image.shape[:2]) > limit:
            from PIL import Image

            scale = limit / max(image.shape[:2])
            size = (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        texture = ctx.texture((image.shape[1], image.shape[0]), 4, np.ascontiguousarray(image).tobytes())
        texture.build_mipmaps()
        texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        texture.repeat_x = texture.repeat_y = True
        tint = data.colors[0].astype(np.float32) / 255.0
    else:
        vertices["c"] = data.colors
        tint = np.ones(4, np.float32)
    vbo = ctx.buffer(vertices.tobytes())
    ibo = ctx.buffer(np.ascontiguousarray(data.faces, dtype=np.int32).tobytes())
    vao = ctx.vertex_array(prog.program, [(vbo, fmt, *attrs)], index_buffer=ibo, index_element_size=4)
    skip = f"3f {layout.itemsize - 12}x"  # the positions only; the other attributes are skipped
    geometry_vao = ctx.vertex_array(
        programs.geometry.program, [(vbo, skip, "in_position")], index_buffer=ibo, index_element_size=4
    )
    return GpuMesh(
        ref=weakref.ref(mesh),
        fingerprint=(),
        program=prog,
        vbo=vbo,
        ibo=ibo,
        vao=vao,
        geometry_vao=geometry_vao,
        texture=texture,
        tint=tint.tobytes(),
        center=data.center,
        radius=data.radius,
        orientation=data.orientation,
    )


class MeshCache:
    """GPU buffers of recently drawn meshes, keyed by the mesh object (least recently used first)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, GpuMesh] = OrderedDict()
        self._dead: list[int] = []

    def __len__(self) -> int:
        return len(self._entries)

    def collect_dead(self) -> None:
        """Free the buffers of meshes that were garbage-collected since the last call."""
        while self._dead:
            key = self._dead.pop()
            entry = self._entries.get(key)
            if entry is not None and entry.ref() is None:
                entry.release()
                del self._entries[key]

    def get(
        self,
        ctx: moderngl.Context,
        programs: ProgramSet,
        max_texture: int,
        mesh: Any,
        *,
        crease_angle: float,
        default_color: Sequence[int],
    ) -> GpuMesh:
        """GPU buffers for ``mesh``, from the cache when the same (unchanged) mesh object was drawn before."""
        key = id(mesh)
        fingerprint = mesh_fingerprint(mesh)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.ref() is mesh and entry.fingerprint == fingerprint:
                self._entries.move_to_end(key)
                return entry
            entry.release()
            del self._entries[key]
        data = surface_data(mesh, crease_angle=crease_angle, default_color=default_color)
        entry = upload_mesh(ctx, programs, max_texture, mesh, data)
        entry.fingerprint = fingerprint
        dead = self._dead
        entry.ref = weakref.ref(mesh, lambda _ref, key=key, dead=dead: dead.append(key))  # type: ignore[misc]
        self._entries[key] = entry
        return entry

    def trim(self, max_meshes: int) -> None:
        """Drop the least recently used meshes beyond ``max_meshes`` (after a draw: never mid-call)."""
        while len(self._entries) > max_meshes:
            _, old = self._entries.popitem(last=False)
            old.release()

    def release(self) -> None:
        """Free every cached buffer (the GL context must be current)."""
        for entry in self._entries.values():
            entry.release()
        self._entries.clear()
