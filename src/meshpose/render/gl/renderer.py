"""The GL renderer class: a :class:`~meshpose.render.base.Renderer` over moderngl, and one per thread by default.

See :mod:`meshpose.render.gl` for the projection convention and what makes it fast.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any

import moderngl
import numpy as np

from meshpose.render.base import DEFAULT_COLOR, Lighting, RenderOutput, normalize_scene_batch
from meshpose.render.gl.atlas import Atlas, DrawPlan, draw_tiles, get_atlas
from meshpose.render.gl.memory import OutputPool, carve, carve_size
from meshpose.render.gl.meshes import GpuMesh, MeshCache
from meshpose.render.gl.programs import ProgramSet, build_programs, create_context, set_lighting
from meshpose.render.gl.projection import depth_range, footprint, opencv_projection
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["OUTPUTS", "GLRenderer", "get_default_renderer"]

OUTPUTS: tuple[str, ...] = ("rgb", "xyz", "normal", "depth", "instance", "mask")
"""The names of the images of a :class:`~meshpose.render.base.RenderOutput` (``outputs`` of
:meth:`GLRenderer.render`)."""
_GEOMETRY_OUTPUTS = frozenset({"xyz", "depth", "instance", "mask"})  # what the geometry program draws
_VECTORS = frozenset({"rgb", "xyz", "normal"})


def _wanted(outputs: Collection[str] | None) -> set[str]:
    """The set of output names asked for (all for ``None``), checked."""
    if outputs is None:
        return set(OUTPUTS)
    if isinstance(outputs, str):
        raise ValueError(f"outputs must be a collection of names, not the string {outputs!r}")
    wanted = set(outputs)
    unknown = wanted - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown render outputs {sorted(unknown)}; choose among {list(OUTPUTS)}")
    return wanted


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
            (views included), which saves the page faults of fresh memory; see
            :class:`~meshpose.render.gl.memory.OutputPool`. The returned arrays are then views into a pooled
            buffer (each one contiguous).
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
        self._pool = OutputPool()
        self._scratch = np.empty(0, np.float32)
        self.backend = backend
        self.device_index = device_index
        self._pid = os.getpid()
        self._thread: int | None = None
        self._ctx: moderngl.Context | None = None
        self._programs: ProgramSet | None = None
        self._meshes = MeshCache()
        self._atlases: OrderedDict[tuple[int, int, bool], Atlas] = OrderedDict()
        self._max_size = 0
        self._max_texture = 0

    # --- context ----------------------------------------------------------------------------------------
    @property
    def context(self) -> moderngl.Context:
        """The moderngl context (created on first use)."""
        if self._ctx is None:
            ctx = create_context(self.backend, self.device_index)
            self._ctx = ctx
            self._thread = threading.get_ident()
            info: dict[str, Any] = dict(ctx.info)
            self._max_size = int(min(info["GL_MAX_VIEWPORT_DIMS"][1], info["GL_MAX_RENDERBUFFER_SIZE"]))
            self._max_texture = int(info["GL_MAX_TEXTURE_SIZE"])
            self._programs = build_programs(ctx)
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
            self._meshes.release()
            for atlas in self._atlases.values():
                atlas.release()
            if self._programs is not None:
                self._programs.release()
        self._atlases.clear()
        self._pool.clear()
        self._programs = None
        self._ctx.release()
        self._ctx = None

    def __enter__(self) -> GLRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def cache_info(self) -> dict[str, int]:
        """Meshes and atlas framebuffers held on the GPU, and bytes of pooled output memory."""
        return {"meshes": len(self._meshes), "atlases": len(self._atlases), "pooled_bytes": self._pool.nbytes}

    # --- rendering --------------------------------------------------------------------------------------
    def render(
        self,
        objects: Sequence[ObjectModel],
        poses: Pose,
        camera: Camera | Sequence[Camera],
        *,
        lighting: Lighting | None = None,
        outputs: Collection[str] | None = None,
    ) -> RenderOutput:
        """Render ``B`` scenes of the ``N`` ``objects`` (see :class:`~meshpose.render.base.Renderer`).

        Args:
            objects: the ``N`` objects of every scene; each draws its ``render_mesh`` (metres).
            poses: ``cam_from_obj``, batch shape ``(N,)`` or ``(B, N)``.
            camera: one camera, or ``B`` cameras of one size ``W × H`` (e.g. crops).
            lighting: shading (default: the renderer's).
            outputs: the lean mode: the names of the :class:`~meshpose.render.base.RenderOutput` images the caller
                needs (of :data:`OUTPUTS`); only these are read back, and the others are read-only zero arrays of
                the right shape (broadcast, no memory). When they are among ``xyz``, ``depth``, ``instance`` and
                ``mask``, the scenes are drawn by a program without colour, normals or lighting into three targets
                instead of five; the values asked for are those of a full render, bit for bit. ``None``: all.

        Returns:
            :class:`~meshpose.render.base.RenderOutput` with arrays ``(B, H, W, ...)`` and ``timings``
            (seconds: ``prepare`` — checks, mesh upload, matrices; ``draw`` — GL work until finished;
            ``readback``; ``total``).

        Raises:
            ValueError: no objects, a pose batch that does not match the objects or cameras, cameras of
                different sizes, non-finite poses, an image larger than the GL limits, or an unknown output name.
        """
        t_start = time.perf_counter()
        wanted = _wanted(outputs)
        geometry = wanted <= _GEOMETRY_OUTPUTS
        poses, cams = normalize_scene_batch(objects, poses, camera)
        R, t = poses.numpy()
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError("render poses contain NaN or inf")
        width, height = cams[0].width, cams[0].height
        n_scenes = R.shape[0]
        light = lighting if lighting is not None else self.lighting

        ctx = self.context
        programs = self._programs
        assert programs is not None  # built with the context
        with ctx:  # make this renderer's context current (another one may have been used since)
            if width > self._max_size or height > self._max_size:
                raise ValueError(f"image {width}×{height} exceeds the GL limit of {self._max_size} px per side")
            self._meshes.collect_dead()
            meshes = [
                self._meshes.get(
                    ctx,
                    programs,
                    self._max_texture,
                    obj.render_mesh,
                    crease_angle=self.crease_angle,
                    default_color=self.default_color,
                )
                for obj in objects
            ]
            draws = self._plan(meshes, R, t, cams)
            if not geometry:
                set_lighting(programs, light)

            image = (n_scenes, height, width)
            shapes = {
                "rgb": ((*image, 3), np.float32),
                "xyz": ((*image, 3), np.float32),
                "normal": ((*image, 3), np.float32),
                "depth": (image, np.float32),
                "instance": (image, np.int32),
                "mask": (image, np.bool_),
            }
            if "mask" in wanted:
                wanted.add("instance")  # the mask is instance > 0
            names = [name for name in OUTPUTS if name in wanted]
            specs = [shapes[name] for name in names]
            size = carve_size(specs)
            slab = self._pool.take(size) if self.reuse_output_memory else np.empty(size, np.uint8)
            arrays = dict(zip(names, carve(slab, specs), strict=True))
            del slab
            if self._scratch.size < n_scenes * height * width:
                self._scratch = np.empty(n_scenes * height * width, np.float32)
            instance_f = self._scratch[: n_scenes * height * width].reshape(image)
            reads = [  # (destination, target, components); the instance id goes through a float scratch
                (instance_f if name == "instance" else arrays[name], name, 3 if name in _VECTORS else 1)
                for name in names
                if name != "mask"
            ]

            per_pass = max(1, min(n_scenes, self.max_atlas_height // height))
            atlas = get_atlas(ctx, self._atlases, width, height, per_pass, self.max_atlas_height, geometry)
            program = programs.geometry if geometry else None
            t_prepared = time.perf_counter()
            t_draw = t_read = 0.0
            for first in range(0, n_scenes, per_pass):
                last = min(first + per_pass, n_scenes)
                t0 = time.perf_counter()
                draw_tiles(ctx, atlas, meshes, draws, first, last, width, height, program)
                t1 = time.perf_counter()
                view = (0, 0, width, (last - first) * height)
                for array, name, components in reads:
                    atlas.fbo.read_into(
                        array[first:last], view, components=components, attachment=atlas.attachment(name), dtype="f4"
                    )
                t_draw += t1 - t0
                t_read += time.perf_counter() - t1
            t_split = time.perf_counter()
            if "instance" in arrays:
                np.copyto(arrays["instance"], instance_f, casting="unsafe")
            if "mask" in arrays:
                np.greater(arrays["instance"], 0, out=arrays["mask"])
            self._meshes.trim(self.max_cached_meshes)
        t_end = time.perf_counter()
        timings = {
            "prepare": t_prepared - t_start,
            "draw": t_draw,
            "readback": t_read + (t_end - t_split),
            "total": t_end - t_start,
        }
        for name in OUTPUTS:
            if name not in arrays:
                shape, dtype = shapes[name]
                arrays[name] = np.broadcast_to(np.zeros((), dtype), shape)
        return RenderOutput(
            arrays["rgb"],
            arrays["depth"],
            arrays["mask"],
            arrays["xyz"],
            arrays["normal"],
            arrays["instance"],
            timings,
        )

    def _plan(self, meshes: list[GpuMesh], R: np.ndarray, t: np.ndarray, cams: list[Camera]) -> DrawPlan:
        """Clipping planes, matrices and visibility/culling flags of every (scene, object) draw."""
        n_scenes, n_objects = R.shape[:2]
        centers = np.stack([m.center for m in meshes])  # (N, 3)
        radii = np.array([m.radius for m in meshes])  # (N,)
        center_z = np.einsum("bnj,nj->bn", R[:, :, 2, :], centers) + t[:, :, 2]  # (B, N) camera z of centres
        if self.near is not None and self.far is not None:
            near, far = np.full(n_scenes, self.near), np.full(n_scenes, self.far)
        else:
            near, far = depth_range(center_z - radii, center_z + radii)
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
        screen_box = footprint(R @ centers[None, :, :, None] + t[..., None], radii, visible, cams)
        # GL reads matrices column-major: write the transposes.
        return DrawPlan(
            clip_from_obj=np.ascontiguousarray(np.swapaxes(clip_from_obj, -1, -2), dtype=np.float32),
            rotation=np.ascontiguousarray(np.swapaxes(R, -1, -2), dtype=np.float32),
            translation=np.ascontiguousarray(t, dtype=np.float32),
            visible=visible,
            cull=cull,
            footprint=screen_box,
        )


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
