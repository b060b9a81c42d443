"""Rasterising renderer: moderngl on EGL (Mesa llvmpipe on a CPU, the real GPU where there is one).

One draw pass with five render targets writes, per pixel, the shaded colour, the object-frame coordinates of
the visible surface (``xyz``), the camera-frame normal, the camera z-depth and the instance id; the mask is
``instance > 0``. A batch of ``B`` scenes (hypotheses), each with its own camera, is drawn into one tall atlas
framebuffer — scene ``b`` in rows ``[b H, (b + 1) H)`` through its own viewport — and read back once, so the
read-back memory already has the layout ``(B, H, W, C)``.

Projection: the GL projection is built from ``K`` (see :func:`opencv_projection`) so that a camera-frame point
lands exactly where OpenCV projects it, with pixel ``(u, v)`` the centre of column ``u`` and row ``v`` and row 0
at the top of the returned images (no flip). ``xyz`` and depth are interpolated perspective-correctly, so the
depth of a covered pixel is that of the surface point seen through the pixel centre (float32; near an occluding
contour or on a surface seen edge-on, GL's 1/256-pixel vertex snapping may shift what a pixel centre sees).

Speed (this is the hot path of every refiner): GPU buffers are cached per mesh object; closed, consistently
wound meshes seen from outside are drawn with back-face culling (exact, see ``cull_closed``); the atlas is only
cleared where the previous pass drew; and returned arrays live in recycled memory (see ``reuse_output_memory``).

The EGL context is created on the first :meth:`GLRenderer.render` call, never at import. A renderer belongs to the
thread (and process) that first renders with it; :func:`get_default_renderer` hands out one per thread and
process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import moderngl
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

__all__ = ["GLRenderer", "get_default_renderer", "opencv_projection"]


def opencv_projection(camera: Camera, near: float, far: float) -> np.ndarray:
    """The GL projection matrix of an OpenCV camera (clip coordinates from camera-frame points).

    The OpenCV pixel ``u = (fx x + s y + cx z) / z`` maps to ``x_ndc = (2 u + 1) / W - 1``, so the image edge
    ``u = -0.5`` is ``x_ndc = -1`` and pixel centres fall on GL fragment centres; likewise
    ``y_ndc = (2 v + 1) / H - 1`` — image row ``v`` is framebuffer row ``v``, and a read-back image needs no
    flip. (This mirrors the image, so the on-screen winding of every triangle flips: front faces are the
    clockwise ones.) ``z_ndc`` maps ``z = near`` to -1 and ``z = far`` to +1; ``w_clip = z``.

    Args:
        camera: the camera (``K`` in pixels, size).
        near: near clipping distance (camera z), metres, ``> 0``.
        far: far clipping distance, metres, ``> near``.

    Returns:
        ``(4, 4)`` float64 matrix ``P`` with ``clip = P @ [x, y, z, 1]`` for camera-frame ``(x, y, z)``.

    Example:
        >>> cam = Camera.from_fxfycxcy(100.0, 100.0, 15.5, 11.5, width=32, height=24)
        >>> clip = opencv_projection(cam, 0.1, 10.0) @ np.array([0.0, 0.0, 1.0, 1.0])
        >>> (clip[:2] / clip[3]).round(6).tolist()  # the principal point is the image centre here
        [0.0, 0.0]
    """
    if not (0 < near < far):
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    K = camera.K
    w, h = camera.width, camera.height
    P = np.zeros((4, 4))
    P[0, 0] = 2.0 * K[0, 0] / w
    P[0, 1] = 2.0 * K[0, 1] / w
    P[0, 2] = (2.0 * K[0, 2] + 1.0) / w - 1.0
    P[1, 1] = 2.0 * K[1, 1] / h
    P[1, 2] = (2.0 * K[1, 2] + 1.0) / h - 1.0
    P[2, 2] = (far + near) / (far - near)
    P[2, 3] = -2.0 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


# ----------------------------------------------------------------------------------------------------------
# Shaders. The TEXTURED variant samples a texture; the other interpolates per-vertex colours.
# ----------------------------------------------------------------------------------------------------------
_VERTEX_SHADER = """
#version 330
uniform mat4 u_clip_from_obj;
in vec3 in_position;
in vec3 in_normal;
#ifdef TEXTURED
in vec2 in_uv;
out vec2 v_uv;
#else
in vec4 in_color;
out vec3 v_color;
#endif
out vec3 v_xyz;
out vec3 v_normal;
void main() {
    v_xyz = in_position;
    v_normal = in_normal;
#ifdef TEXTURED
    v_uv = in_uv;
#else
    v_color = in_color.rgb;
#endif
    gl_Position = u_clip_from_obj * vec4(in_position, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform mat3 u_rotation;      // cam_from_obj rotation
uniform vec3 u_translation;   // cam_from_obj translation, metres
uniform float u_instance;     // 1 + object index
uniform vec3 u_light_dir;     // unit, towards the light, camera frame
uniform vec3 u_light_color;
uniform float u_ambient;
uniform float u_diffuse;
uniform float u_specular;
uniform float u_shininess;
#ifdef TEXTURED
uniform sampler2D u_texture;
uniform vec4 u_tint;
in vec2 v_uv;
#else
in vec3 v_color;
#endif
in vec3 v_xyz;
in vec3 v_normal;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec4 out_xyz;
layout(location = 2) out vec4 out_normal;
layout(location = 3) out float out_depth;
layout(location = 4) out float out_instance;
void main() {
    vec3 p = u_rotation * v_xyz + u_translation;
    vec3 n = normalize(u_rotation * v_normal);
    if (!gl_FrontFacing) {
        n = -n;  // two-sided: show the normal of the side that faces the camera
    }
#ifdef TEXTURED
    vec3 albedo = texture(u_texture, vec2(v_uv.x, 1.0 - v_uv.y)).rgb * u_tint.rgb;
#else
    vec3 albedo = v_color;
#endif
    float ndl = dot(n, u_light_dir);
    vec3 shaded = albedo * (u_ambient + u_diffuse * max(ndl, 0.0));
    if (u_specular > 0.0 && ndl > 0.0) {
        vec3 r = 2.0 * ndl * n - u_light_dir;
        shaded += vec3(u_specular * pow(max(dot(r, normalize(-p)), 1e-20), u_shininess));
    }
    out_color = vec4(clamp(u_light_color * shaded, 0.0, 1.0), 1.0);
    out_xyz = vec4(v_xyz, 1.0);
    out_normal = vec4(n, 0.0);
    out_depth = p.z;
    out_instance = u_instance;
}
"""

_PER_DRAW_UNIFORMS = ("u_clip_from_obj", "u_rotation", "u_translation", "u_instance")
_LIGHT_UNIFORMS = ("u_light_dir", "u_light_color", "u_ambient", "u_diffuse", "u_specular", "u_shininess")


@dataclass
class _Program:
    program: moderngl.Program
    uniforms: dict[str, Any]

    def set(self, name: str, data: bytes) -> None:
        uniform = self.uniforms.get(name)
        if uniform is not None:  # the GLSL compiler may drop uniforms a variant does not use
            uniform.write(data)


@dataclass
class _GpuMesh:
    """GPU buffers of one mesh, with what is needed to tell whether the mesh changed since."""

    ref: weakref.ref[Any]
    fingerprint: tuple[Any, ...]
    program: _Program
    vbo: moderngl.Buffer
    ibo: moderngl.Buffer
    vao: moderngl.VertexArray
    texture: moderngl.Texture | None
    tint: bytes
    center: np.ndarray
    radius: float
    orientation: int

    def release(self) -> None:
        self.vao.release()
        self.vbo.release()
        self.ibo.release()
        if self.texture is not None:
            self.texture.release()


@dataclass
class _DrawPlan:
    """Per (scene, object) draw data: ``(B, N, ...)`` float32 column-major matrices and flags."""

    clip_from_obj: np.ndarray  # (B, N, 4, 4)
    rotation: np.ndarray  # (B, N, 3, 3)
    translation: np.ndarray  # (B, N, 3)
    visible: np.ndarray  # (B, N) bool
    cull: np.ndarray  # (B, N) int: +1 cull back faces, -1 cull front faces, 0 draw both
    footprint: np.ndarray  # (B, 4) int pixel box (x0, y0, x1, y1), end-exclusive, that holds every fragment


@dataclass
class _Atlas:
    """A framebuffer holding ``capacity`` tiles of ``width × height`` stacked vertically.

    Outside ``dirty`` (rectangles ``(x, y, w, h)`` drawn into by the last pass; ``None``: unknown) it holds
    the background, so the next pass only clears those rectangles: clearing a whole 640×480 frame with its five
    targets costs more than drawing a typical object into it.
    """

    fbo: moderngl.Framebuffer
    attachments: list[moderngl.Renderbuffer]
    capacity: int
    dirty: list[tuple[int, int, int, int]] | None = None

    def release(self) -> None:
        self.fbo.release()
        for a in self.attachments:
            a.release()


class _OutputPool:
    """Recycles the memory of returned images once the caller no longer holds any of them.

    Writing a fresh 640×480 set of outputs (~14 MB) costs more in first-touch page faults than the whole
    read-back. So outputs are views into pooled byte *slabs*; every live view (or view of a view, or tensor
    made with ``torch.from_numpy``) holds a reference to its slab, and a slab is reused only when its reference
    count is back to what the pool alone holds (measured on a fresh slab, not assumed). Anything still in use
    is never overwritten; at worst the pool allocates new memory.
    """

    def __init__(self, max_slabs: int = 4, max_slab_bytes: int = 64 << 20) -> None:
        self.max_slabs = max_slabs
        self.max_slab_bytes = max_slab_bytes
        self._slabs: list[np.ndarray] = []
        probe = [np.empty(1, np.uint8)]
        self._idle_refs = self._refcounts(probe)[0]

    @staticmethod
    def _refcounts(slabs: list[np.ndarray]) -> list[int]:
        return [sys.getrefcount(slab) for slab in slabs]

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 slab of at least ``nbytes`` bytes that nothing outside the pool references."""
        if nbytes > self.max_slab_bytes:  # big batches: plain memory, not kept afterwards
            return np.empty(nbytes, np.uint8)
        counts = self._refcounts(self._slabs)
        free = [i for i, c in enumerate(counts) if c == self._idle_refs and self._slabs[i].nbytes >= nbytes]
        if free:
            best = min(free, key=lambda i: self._slabs[i].nbytes)
            return self._slabs[best]
        slab = np.empty(nbytes, np.uint8)
        if len(self._slabs) >= self.max_slabs:
            idle = [i for i, c in enumerate(counts) if c == self._idle_refs]
            self._slabs.pop(idle[0] if idle else 0)  # a slab still in use lives on with its user
        self._slabs.append(slab)
        return slab

    def clear(self) -> None:
        self._slabs.clear()

    @property
    def nbytes(self) -> int:
        return sum(slab.nbytes for slab in self._slabs)


def _carve(slab: np.ndarray, specs: Sequence[tuple[tuple[int, ...], Any]]) -> list[np.ndarray]:
    """Consecutive arrays of the given shapes and dtypes, 64-byte aligned, viewing ``slab``."""
    out, offset = [], 0
    for shape, dtype in specs:
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        out.append(slab[offset : offset + n].view(dt).reshape(shape))
        offset += (n + 63) // 64 * 64
    return out


def _carve_size(specs: Sequence[tuple[tuple[int, ...], Any]]) -> int:
    return sum((int(np.prod(shape)) * np.dtype(dt).itemsize + 63) // 64 * 64 for shape, dt in specs)


def _mesh_fingerprint(mesh: Any) -> tuple[Any, ...]:
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


class GLRenderer:
    """Rasterising :class:`~meshpose.render.base.Renderer` (moderngl, EGL).

    Args:
        lighting: default shading when :meth:`render` gets none (default: ``Lighting()``).
        near: near clipping distance in metres; ``None`` chooses it per scene from the objects' bounding
            spheres (tight near/far keep the depth test precise).
        far: far clipping distance in metres; ``None`` chooses it per scene.
        crease_angle: degrees; normals are smoothed across edges with a smaller dihedral angle and stay sharp
            across larger ones (0: flat faces). See :func:`~meshpose.render.base.corner_normals`.
        default_color: RGBA uint8 albedo of meshes without colours or texture.
        max_cached_meshes: GPU buffers of at most this many meshes are kept (least recently used dropped).
        max_atlas_height: tallest atlas framebuffer in pixels; larger batches are drawn in several passes.
        reuse_output_memory: recycle the memory of earlier outputs once the caller holds none of their arrays
            (views included), which saves the page faults of fresh memory; see ``_OutputPool``. The returned
            arrays are then views into a pooled buffer (each one contiguous).
        cull_closed: skip the faces turned away from the camera for meshes that are closed and consistently
            wound (:func:`~meshpose.render.base.closed_orientation`), when the camera is outside the mesh's
            bounding sphere and no clipping plane cuts it. Every ray then meets a face turned towards the camera
            first, so the image is unchanged and about half the triangles are skipped. Other meshes (open,
            inconsistent winding) are always drawn two-sided.
        backend: moderngl/glcontext backend (``"egl"`` for headless; ``None`` for the platform default).
        device_index: EGL device to use (``None``: the default one).

    The renderer is not thread-safe: use it from the thread that first renders with it (or one renderer per
    thread via :func:`get_default_renderer`). Call :meth:`release` (or use it as a context manager) to free
    the GL context early.

    Example:
        >>> import trimesh
        >>> from meshpose.types import Camera, ObjectModel, Pose
        >>> mesh = trimesh.creation.box((0.1, 0.1, 0.1))
        >>> obj = ObjectModel(1, mesh, mesh, 0.17, np.eye(4)[None], mesh.vertices)
        >>> cam = Camera.from_fxfycxcy(300.0, 300.0, 31.5, 23.5, width=64, height=48)
        >>> out = GLRenderer().render([obj], Pose(np.eye(3)[None], [[0.0, 0.0, 0.5]]), cam)
        >>> out.depth.shape, round(float(out.depth[0, 24, 32]), 4)
        ((1, 48, 64), 0.45)
    """

    def __init__(
        self,
        *,
        lighting: Lighting | None = None,
        near: float | None = None,
        far: float | None = None,
        crease_angle: float = 30.0,
        default_color: Sequence[int] = DEFAULT_COLOR,
        max_cached_meshes: int = 64,
        max_atlas_height: int = 4096,
        reuse_output_memory: bool = True,
        cull_closed: bool = True,
        backend: str | None = "egl",
        device_index: int | None = None,
    ) -> None:
        if (near is None) != (far is None):
            raise ValueError("give both near and far, or neither")
        if near is not None and far is not None and not (0 < near < far):
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        if max_cached_meshes < 1:
            raise ValueError(f"max_cached_meshes must be ≥ 1, got {max_cached_meshes}")
        self.lighting = lighting if lighting is not None else Lighting()
        self.near = near
        self.far = far
        self.crease_angle = float(crease_angle)
        self.default_color = tuple(int(c) for c in default_color)
        self.max_cached_meshes = int(max_cached_meshes)
        self.max_atlas_height = int(max_atlas_height)
        self.reuse_output_memory = bool(reuse_output_memory)
        self.cull_closed = bool(cull_closed)
        self._pool = _OutputPool()
        self._scratch = np.empty(0, np.float32)
        self.backend = backend
        self.device_index = device_index
        self._pid = os.getpid()
        self._thread: int | None = None
        self._ctx: moderngl.Context | None = None
        self._programs: dict[bool, _Program] = {}
        self._meshes: OrderedDict[int, _GpuMesh] = OrderedDict()
        self._dead: list[int] = []
        self._atlases: OrderedDict[tuple[int, int], _Atlas] = OrderedDict()
        self._max_size = 0
        self._max_texture = 0

    # --- context ----------------------------------------------------------------------------------------
    @property
    def context(self) -> moderngl.Context:
        """The moderngl context (created on first use)."""
        if self._ctx is None:
            settings: dict[str, Any] = {}
            if self.backend is not None:
                settings["backend"] = self.backend
            if self.device_index is not None:
                settings["device_index"] = self.device_index
            try:
                ctx = moderngl.create_standalone_context(require=330, **settings)
            except Exception as exc:  # glcontext raises plain Exceptions
                raise RuntimeError(
                    f"could not create an OpenGL 3.3 context (backend={self.backend!r}): {exc}. Headless "
                    "rendering needs EGL (libEGL, e.g. Mesa's llvmpipe on a CPU)."
                ) from exc
            self._ctx = ctx
            self._thread = threading.get_ident()
            info: dict[str, Any] = dict(ctx.info)
            self._max_size = int(min(info["GL_MAX_VIEWPORT_DIMS"][1], info["GL_MAX_RENDERBUFFER_SIZE"]))
            self._max_texture = int(info["GL_MAX_TEXTURE_SIZE"])
            for textured in (False, True):
                defines = "#define TEXTURED\n" if textured else ""
                prog = ctx.program(
                    vertex_shader=_VERTEX_SHADER.replace("#version 330\n", "#version 330\n" + defines, 1),
                    fragment_shader=_FRAGMENT_SHADER.replace("#version 330\n", "#version 330\n" + defines, 1),
                )
                names = _PER_DRAW_UNIFORMS + _LIGHT_UNIFORMS + ("u_texture", "u_tint")
                uniforms: dict[str, Any] = {n: prog[n] for n in names if n in prog}
                if "u_texture" in uniforms:
                    uniforms["u_texture"].value = 0
                self._programs[textured] = _Program(prog, uniforms)
        else:
            if os.getpid() != self._pid:
                raise RuntimeError(
                    "this GLRenderer's GL context was created in another process (fork); create a new "
                    "renderer in this process, e.g. with get_default_renderer()"
                )
            if threading.get_ident() != self._thread:
                raise RuntimeError(
                    "a GLRenderer must be used from the thread that created its GL context; use one "
                    "renderer per thread (get_default_renderer() does this)"
                )
        return self._ctx

    def release(self) -> None:
        """Free every GPU buffer and the GL context (a later render creates a new context)."""
        if self._ctx is None:
            return
        with self._ctx:
            for entry in self._meshes.values():
                entry.release()
            for atlas in self._atlases.values():
                atlas.release()
            for prog in self._programs.values():
                prog.program.release()
        self._meshes.clear()
        self._atlases.clear()
        self._pool.clear()
        self._programs.clear()
        self._ctx.release()
        self._ctx = None

    def __enter__(self) -> GLRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- mesh cache -------------------------------------------------------------------------------------
    def _collect_dead(self) -> None:
        while self._dead:
            key = self._dead.pop()
            entry = self._meshes.get(key)
            if entry is not None and entry.ref() is None:
                entry.release()
                del self._meshes[key]

    def _gpu_mesh(self, mesh: Any) -> _GpuMesh:
        """GPU buffers for ``mesh``, from the cache when the same (unchanged) mesh object was drawn before."""
        key = id(mesh)
        fingerprint = _mesh_fingerprint(mesh)
        entry = self._meshes.get(key)
        if entry is not None:
            if entry.ref() is mesh and entry.fingerprint == fingerprint:
                self._meshes.move_to_end(key)
                return entry
            entry.release()
            del self._meshes[key]
        data = surface_data(mesh, crease_angle=self.crease_angle, default_color=self.default_color)
        entry = self._upload(mesh, data)
        entry.fingerprint = fingerprint
        dead = self._dead
        entry.ref = weakref.ref(mesh, lambda _ref, key=key, dead=dead: dead.append(key))  # type: ignore[misc]
        self._meshes[key] = entry
        return entry

    def _trim_cache(self) -> None:
        """Drop the least recently used meshes beyond ``max_cached_meshes`` (after a draw: never mid-call)."""
        while len(self._meshes) > self.max_cached_meshes:
            _, old = self._meshes.popitem(last=False)
            old.release()

    def _upload(self, mesh: Any, data: SurfaceData) -> _GpuMesh:
        ctx = self.context
        textured = data.textured
        prog = self._programs[textured]
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
            limit = self._max_texture
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
        return _GpuMesh(
            ref=weakref.ref(mesh),
            fingerprint=(),
            program=prog,
            vbo=vbo,
            ibo=ibo,
            vao=vao,
            texture=texture,
            tint=tint.tobytes(),
            center=data.center,
            radius=data.radius,
            orientation=data.orientation,
        )

    def cache_info(self) -> dict[str, int]:
        """Meshes and atlas framebuffers held on the GPU, and bytes of pooled output memory."""
        return {"meshes": len(self._meshes), "atlases": len(self._atlases), "pooled_bytes": self._pool.nbytes}

    # --- framebuffers -----------------------------------------------------------------------------------
    def _atlas(self, width: int, height: int, tiles: int) -> _Atlas:
        key = (width, height)
        atlas = self._atlases.get(key)
        if atlas is not None and atlas.capacity >= tiles:
            self._atlases.move_to_end(key)
            return atlas
        if atlas is not None:
            atlas.release()
            del self._atlases[key]
        capacity = 1
        while capacity < tiles:
            capacity *= 2
        capacity = max(tiles, min(capacity, self.max_atlas_height // height))
        ctx = self.context
        size = (width, capacity * height)
        attachments = [
            ctx.renderbuffer(size, 4, dtype="f1"),  # colour
            ctx.renderbuffer(size, 4, dtype="f4"),  # xyz (object frame)
            ctx.renderbuffer(size, 4, dtype="f4"),  # normal (camera frame)
            ctx.renderbuffer(size, 1, dtype="f4"),  # camera z
            ctx.renderbuffer(size, 1, dtype="f4"),  # instance id
        ]
        depth = ctx.depth_renderbuffer(size)
        fbo = ctx.framebuffer(attachments, depth)
        atlas = _Atlas(fbo, [*attachments, depth], capacity)
        self._atlases[key] = atlas
        while len(self._atlases) > 4:
            _, old = self._atlases.popitem(last=False)
            old.release()
        return atlas

    # --- rendering --------------------------------------------------------------------------------------
    def render(
        self,
        objects: Sequence[ObjectModel],
        poses: Pose,
        camera: Camera | Sequence[Camera],
        *,
        lighting: Lighting | None = None,
    ) -> RenderOutput:
        """Render ``B`` scenes of the ``N`` ``objects`` (see :class:`~meshpose.render.base.Renderer`).

        Args:
            objects: the ``N`` objects of every scene; each draws its ``render_mesh`` (metres).
            poses: ``cam_from_obj``, batch shape ``(N,)`` or ``(B, N)``.
            camera: one camera, or ``B`` cameras of one size ``W × H`` (e.g. crops).
            lighting: shading (default: the renderer's).

        Returns:
            :class:`~meshpose.render.base.RenderOutput` with arrays ``(B, H, W, ...)`` and ``timings``
            (seconds: ``prepare`` — checks, mesh upload, matrices; ``draw`` — GL work until finished;
            ``readback``; ``total``).

        Raises:
            ValueError: no objects, a pose batch that does not match the objects or cameras, cameras of
                different sizes, non-finite poses, or an image larger than the GL limits.
        """
        t_start = time.perf_counter()
        poses, cams = normalize_scene_batch(objects, poses, camera)
        R, t = poses.numpy()
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError("render poses contain NaN or inf")
        width, height = cams[0].width, cams[0].height
        n_scenes = R.shape[0]
        light = lighting if lighting is not None else self.lighting

        ctx = self.context
        with ctx:  # make this renderer's context current (another one may have been used since)
            if width > self._max_size or height > self._max_size:
                raise ValueError(f"image {width}×{height} exceeds the GL limit of {self._max_size} px per side")
            self._collect_dead()
            meshes = [self._gpu_mesh(obj.render_mesh) for obj in objects]
            draws = self._plan(meshes, R, t, cams)
            self._set_lighting(light)

            image = (n_scenes, height, width)
            specs = [((*image, 3), np.float32)] * 3 + [(image, np.float32), (image, np.int32), (image, np.bool_)]
            size = _carve_size(specs)
            slab = self._pool.take(size) if self.reuse_output_memory else np.empty(size, np.uint8)
            rgb, xyz, normal, depth, instance, mask = _carve(slab, specs)
            del slab
            if self._scratch.size < n_scenes * height * width:
                self._scratch = np.empty(n_scenes * height * width, np.float32)
            instance_f = self._scratch[: n_scenes * height * width].reshape(image)

            per_pass = max(1, min(n_scenes, self.max_atlas_height // height))
            atlas = self._atlas(width, height, per_pass)
            t_prepared = time.perf_counter()
            t_draw = t_read = 0.0
            for first in range(0, n_scenes, per_pass):
                last = min(first + per_pass, n_scenes)
                t0 = time.perf_counter()
                self._draw_tiles(atlas, meshes, draws, first, last, width, height)
                t1 = time.perf_counter()
                view = (0, 0, width, (last - first) * height)
                atlas.fbo.read_into(rgb[first:last], view, components=3, attachment=0, dtype="f4")
                atlas.fbo.read_into(xyz[first:last], view, components=3, attachment=1, dtype="f4")
                atlas.fbo.read_into(normal[first:last], view, components=3, attachment=2, dtype="f4")
                atlas.fbo.read_into(depth[first:last], view, components=1, attachment=3, dtype="f4")
                atlas.fbo.read_into(instance_f[first:last], view, components=1, attachment=4, dtype="f4")
                t_draw += t1 - t0
                t_read += time.perf_counter() - t1
            t_split = time.perf_counter()
            np.copyto(instance, instance_f, casting="unsafe")
            np.greater(instance, 0, out=mask)
            self._trim_cache()
        t_end = time.perf_counter()
        timings = {
            "prepare": t_prepared - t_start,
            "draw": t_draw,
            "readback": t_read + (t_end - t_split),
            "total": t_end - t_start,
        }
        return RenderOutput(rgb, depth, mask, xyz, normal, instance, timings)

    def _plan(self, meshes: list[_GpuMesh], R: np.ndarray, t: np.ndarray, cams: list[Camera]) -> _DrawPlan:
        """Clipping planes, matrices and visibility/culling flags of every (scene, object) draw."""
        n_scenes, n_objects = R.shape[:2]
        centers = np.stack([m.center for m in meshes])  # (N, 3)
        radii = np.array([m.radius for m in meshes])  # (N,)
        center_z = np.einsum("bnj,nj->bn", R[:, :, 2, :], centers) + t[:, :, 2]  # (B, N) camera z of centres
        if self.near is not None and self.far is not None:
            near, far = np.full(n_scenes, self.near), np.full(n_scenes, self.far)
        else:
            near, far = _depth_range(center_z - radii, center_z + radii)
        visible = (center_z + radii > near[:, None]) & (center_z - radii < far[:, None])
        # Culling is exact for a closed mesh seen from outside, with no clipping plane cutting through it.
        orientation = np.array([m.orientation for m in meshes])
        unclipped = (center_z - radii > near[:, None]) & (center_z + radii < far[:, None])
        cull = np.where(unclipped & self.cull_closed, orientation[None, :], 0)

        proj = np.stack([opencv_projection(c, float(lo), float(hi)) for c, lo, hi in zip(cams, near, far, strict=True)])
        cam_from_obj = np.zeros((n_scenes, n_objects, 4, 4))
        cam_from_obj[..., :3, :3] = R
        cam_from_obj[..., :3, 3] = t
        cam_from_obj[..., 3, 3] = 1.0
        clip_from_obj = proj[:, None] @ cam_from_obj
        footprint = _footprint(R @ centers[None, :, :, None] + t[..., None], radii, visible, cams)
        # GL reads matrices column-major: write the transposes.
        return _DrawPlan(
            clip_from_obj=np.ascontiguousarray(np.swapaxes(clip_from_obj, -1, -2), dtype=np.float32),
            rotation=np.ascontiguousarray(np.swapaxes(R, -1, -2), dtype=np.float32),
            translation=np.ascontiguousarray(t, dtype=np.float32),
            visible=visible,
            cull=cull,
            footprint=footprint,
        )

    def _set_lighting(self, light: Lighting) -> None:
        values = {
            "u_light_dir": light.unit_direction.astype(np.float32).tobytes(),
            "u_light_color": np.asarray(light.color, np.float32).tobytes(),
            "u_ambient": np.float32(light.ambient).tobytes(),
            "u_diffuse": np.float32(light.diffuse).tobytes(),
            "u_specular": np.float32(light.specular).tobytes(),
            "u_shininess": np.float32(light.shininess).tobytes(),
        }
        for prog in self._programs.values():
            for name, value in values.items():
                prog.set(name, value)

    def _draw_tiles(
        self,
        atlas: _Atlas,
        meshes: list[_GpuMesh],
        plan: _DrawPlan,
        first: int,
        last: int,
        width: int,
        height: int,
    ) -> None:
        """Draw scenes ``first .. last - 1`` into consecutive tiles of the atlas and wait until done."""
        ctx = self.context
        ctx.enable_only(moderngl.DEPTH_TEST)
        ctx.depth_func = "<"
        ctx.front_face = "cw"  # opencv_projection mirrors y: clockwise on screen = the winding's front side
        atlas.fbo.use()
        _clear(atlas, width, height)
        dirty = []
        for b in range(first, last):
            x0, y0, x1, y1 = (int(v) for v in plan.footprint[b])
            if x1 > x0 and y1 > y0:
                dirty.append((x0, (b - first) * height + y0, x1 - x0, y1 - y0))
            tile = (0, (b - first) * height, width, height)
            ctx.viewport = tile
            ctx.scissor = tile
            for n, mesh in enumerate(meshes):
                if not plan.visible[b, n]:
                    continue
                prog = mesh.program
                prog.set("u_clip_from_obj", plan.clip_from_obj[b, n].tobytes())
                prog.set("u_rotation", plan.rotation[b, n].tobytes())
                prog.set("u_translation", plan.translation[b, n].tobytes())
                prog.set("u_instance", np.float32(n + 1).tobytes())
                if mesh.texture is not None:
                    prog.set("u_tint", mesh.tint)
                    mesh.texture.use(0)
                if plan.cull[b, n]:
                    ctx.enable(moderngl.CULL_FACE)
                    ctx.cull_face = "back" if plan.cull[b, n] > 0 else "front"
                else:
                    ctx.disable(moderngl.CULL_FACE)
                mesh.vao.render(moderngl.TRIANGLES)
        ctx.scissor = None
        atlas.dirty = dirty
        ctx.finish()


def _clear(atlas: _Atlas, width: int, height: int) -> None:
    """Restore the background (colour 0, depth 1) where the last pass drew: per rectangle, or in one go."""
    fbo = atlas.fbo
    if atlas.dirty is None:
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=(0, 0, width, atlas.capacity * height))
        return
    if not atlas.dirty:
        return
    rects = np.array(atlas.dirty)
    x0, y0 = rects[:, 0].min(), rects[:, 1].min()
    x1, y1 = (rects[:, 0] + rects[:, 2]).max(), (rects[:, 1] + rects[:, 3]).max()
    union = (x1 - x0) * (y1 - y0)
    if len(rects) > 8 or (rects[:, 2] * rects[:, 3]).sum() > 0.5 * union:
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=(int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    else:
        for rect in atlas.dirty:
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=rect)


def _footprint(centers: np.ndarray, radii: np.ndarray, visible: np.ndarray, cams: list[Camera]) -> np.ndarray:
    """Pixel boxes that contain every fragment of the visible objects of each scene.

    Each object lies inside its bounding sphere, hence inside the sphere's axis-aligned cube in the camera frame;
    when the cube is in front of the camera its 8 projected corners bound the object's image. A cube reaching
    to ``z ≤ 0`` gives the whole image.

    Args:
        centers: ``(B, N, 3, 1)`` camera-frame bounding-sphere centres, metres.
        radii: ``(N,)`` radii, metres.
        visible: ``(B, N)`` which objects are drawn.
        cams: the ``B`` cameras (one size ``W × H``).

    Returns:
        ``(B, 4)`` int64 ``(x0, y0, x1, y1)``: columns ``x0 ≤ u < x1``, rows ``y0 ≤ v < y1`` (empty if none).
    """
    width, height = cams[0].width, cams[0].height
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    corners = centers[..., 0][:, :, None, :] + radii[None, :, None, None] * signs  # (B, N, 8, 3)
    K = np.stack([c.K for c in cams])  # (B, 3, 3)
    proj = np.einsum("bij,bnkj->bnki", K, corners)
    in_front = corners[..., 2].min(axis=2) > 1e-9  # (B, N)
    z = np.where(in_front[..., None], proj[..., 2], 1.0)
    u, v = proj[..., 0] / z, proj[..., 1] / z
    # Fragments sit at pixel centres inside the projection; one pixel of margin covers vertex snapping.
    box = np.stack(
        [
            np.floor(u.min(axis=2)) - 1,
            np.floor(v.min(axis=2)) - 1,
            np.ceil(u.max(axis=2)) + 2,
            np.ceil(v.max(axis=2)) + 2,
        ],
        axis=-1,
    )
    box = np.where(in_front[..., None], box, [0, 0, width, height])
    box = np.clip(box, 0, [width, height, width, height])
    box = np.where(visible[..., None], box, [width, height, 0, 0])  # empty
    out = np.stack([box[..., 0].min(1), box[..., 1].min(1), box[..., 2].max(1), box[..., 3].max(1)], axis=-1)
    return out.astype(np.int64)


def _depth_range(z_min: np.ndarray, z_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-scene near/far planes that enclose every object's bounding sphere (with a small margin).

    Args:
        z_min: ``(B, N)`` nearest camera z of each object's bounding sphere, metres.
        z_max: ``(B, N)`` farthest camera z.

    Returns:
        ``near (B,)``, ``far (B,)``, with ``near ≥ far / 1000`` (an object reaching behind that is clipped).
    """
    ahead = z_max > 0
    far_z = np.max(np.where(ahead, z_max, 0.0), axis=1)
    far = np.maximum(far_z * (1 + 1e-3), 1e-6)
    near_z = np.min(np.where(ahead, z_min, np.inf), axis=1)
    near = np.maximum(near_z - 1e-3 * far, 1e-3 * far)
    empty = far_z <= 0  # nothing in front of the camera: any valid planes will do
    return np.where(empty, 0.1, near), np.where(empty, 1.0, far)


# ----------------------------------------------------------------------------------------------------------
# One default renderer per process and thread (an EGL context is cheap to share, costly to multiply).
# ----------------------------------------------------------------------------------------------------------
_DEFAULT = threading.local()


def get_default_renderer(factory: Callable[[], GLRenderer] = GLRenderer) -> GLRenderer:
    """The calling thread's shared :class:`GLRenderer`, created (lazily) on first use in this process.

    A forked child gets a fresh renderer instead of its parent's (an EGL context does not survive a fork).

    Args:
        factory: builds the renderer the first time (default: ``GLRenderer()``).
    """
    renderer = getattr(_DEFAULT, "renderer", None)
    if renderer is None or renderer._pid != os.getpid():
        renderer = factory()
        _DEFAULT.renderer = renderer
    return renderer
