"""Path-traced renderer: Mitsuba 3, for training and test images that do not come from our own rasteriser.

:class:`PhotorealRenderer` implements the :class:`~meshpose.render.base.Renderer` protocol. Each scene is drawn in
two Mitsuba passes over the same geometry:

1. **colour** — the ``path`` integrator (soft shadows from a spherical area light, an environment, inter-
   reflections; rough dielectric or metallic ``principled`` materials), ``spp`` samples per pixel with a
   Gaussian reconstruction filter, and the ``albedo`` AOV of the same scene (``albedo_spp`` samples). With
   ``denoise`` the radiance is divided by the albedo (so textures stay sharp), the quotient — smooth light —
   is blurred within each object's region only (normalised Gaussian convolution, ``denoise_sigma`` pixels)
   and multiplied back: a few samples per pixel then look clean. The result is converted to sRGB;
2. **geometry** — the ``aov`` integrator at one sample through each pixel *centre* (stratified sampler without
   jitter, box filter): the ``position`` AOV gives the camera-frame hit point (so ``depth`` is its ``z``), the
   ``sh_normal`` AOV the normal, and the ``albedo`` AOV of a throw-away diffuse material whose reflectance encodes
   the object index gives ``instance`` — exactly, since nothing is averaged at one centred sample.
   (``geometry="gl"`` takes these from :class:`~meshpose.render.gl.GLRenderer` instead: the same values, faster.)

Sampling at the pixel centre is the convention of :class:`~meshpose.render.gl.GLRenderer` too, so ``depth``,
``mask`` and ``xyz`` of the two renderers agree up to ray-versus-raster round-off on silhouettes.

Camera: the Mitsuba ``perspective`` sensor looks along +z with +x to the left and +y up; OpenCV looks along +z with
+x right and +y down, so the sensor's ``to_world`` is ``diag(-1, -1, 1)`` and the world frame *is* the OpenCV
camera frame (vertices are moved there with each ``cam_from_obj``). The principal point enters as
``principal_point_offset = (W/2 - 1/2 - c) / W`` (and likewise for ``y``): a positive offset moves the image of
the optical axis left/up, and Mitsuba's continuous pixel coordinate of a pixel centre is the OpenCV one plus 1/2.
Mitsuba has no non-square pixels or skew: cameras must have ``fx == fy`` and no skew.

Variants: ``scalar_rgb`` needs nothing beyond the ``mitsuba`` wheel. ``llvm_ad_rgb`` (vectorised, JIT-compiled,
much faster on several cores) needs a working ``libLLVM`` (Debian: ``apt-get install libllvm19``); an old LLVM
can crash the process inside the JIT, so ``variant="auto"`` first renders a tiny scene with ``llvm_ad_rgb`` in a
*subprocess* and uses it only if that succeeds (the answer is cached per process; the environment variable
``MESHPOSE_MITSUBA_VARIANT`` forces a variant).

``import meshpose.render.photoreal`` does not import Mitsuba; the first :meth:`PhotorealRenderer.render` does.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from meshpose.render.base import Lighting, RenderOutput, SurfaceData, normalize_scene_batch, surface_data
from meshpose.types import Camera, ObjectModel, Pose

__all__ = [
    "Material",
    "PhotorealRenderer",
    "denoise_radiance",
    "mitsuba_available",
    "opencv_sensor_params",
    "select_variant",
]

_VARIANT_LOCK = threading.Lock()
_VARIANT_CACHE: dict[str, str] = {}

_LLVM_PROBE = (
    "import mitsuba as mi\n"
    "mi.set_variant('llvm_ad_rgb')\n"
    "s = mi.load_dict(mi.cornell_box())\n"
    "import numpy as np\n"
    "img = np.array(mi.render(s, spp=2))\n"
    "assert np.isfinite(img).all() and img.mean() > 0\n"
    "print('ok')\n"
)


def mitsuba_available() -> bool:
    """Whether the ``mitsuba`` package can be imported (the ``photoreal`` extra)."""
    try:
        import mitsuba  # noqa: F401
    except ImportError:
        return False
    return True


def select_variant(variant: str = "auto", *, probe_timeout_s: float = 180.0) -> str:
    """The Mitsuba variant to use.

    Args:
        variant: ``"scalar_rgb"``, ``"llvm_ad_rgb"`` (or any variant the wheel has), or ``"auto"``: the
            ``MESHPOSE_MITSUBA_VARIANT`` environment variable if set, else ``llvm_ad_rgb`` when a tiny render with
            it succeeds in a subprocess, else ``scalar_rgb``.
        probe_timeout_s: time limit of the subprocess probe.

    Returns:
        The variant name.

    Raises:
        ImportError: Mitsuba is not installed.
        ValueError: the wheel has no such variant.
    """
    import mitsuba as mi

    if variant == "auto":
        forced = os.environ.get("MESHPOSE_MITSUBA_VARIANT")
        if forced:
            variant = forced
        else:
            with _VARIANT_LOCK:
                if "auto" not in _VARIANT_CACHE:
                    _VARIANT_CACHE["auto"] = "llvm_ad_rgb" if _probe_llvm(probe_timeout_s) else "scalar_rgb"
                variant = _VARIANT_CACHE["auto"]
    if variant not in mi.variants():
        raise ValueError(f"Mitsuba has no variant {variant!r}; available: {', '.join(mi.variants())}")
    return variant


def _probe_llvm(timeout_s: float) -> bool:
    """Render a tiny scene with ``llvm_ad_rgb`` in a subprocess (an unusable LLVM may abort the process)."""
    import mitsuba as mi

    if "llvm_ad_rgb" not in mi.variants():
        return False
    try:
        res = subprocess.run(
            [sys.executable, "-c", _LLVM_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and "ok" in res.stdout


@dataclass(frozen=True)
class Material:
    """Parameters of Mitsuba's ``principled`` BSDF (the base colour comes from the mesh's colours or texture).

    Args:
        roughness: in [0, 1] (0 mirror-like, 1 matte).
        metallic: in [0, 1].
        specular: dielectric specular amount in [0, 1] (0.5 ≈ IOR 1.5).

    A mesh may carry one in ``mesh.metadata["material"]`` (a :class:`Material` or a mapping with these keys).
    """

    roughness: float = 0.5
    metallic: float = 0.0
    specular: float = 0.5

    @classmethod
    def from_metadata(cls, value: Any, default: Material) -> Material:
        if isinstance(value, Material):
            return value
        if isinstance(value, Mapping):
            return cls(
                roughness=float(value.get("roughness", default.roughness)),
                metallic=float(value.get("metallic", default.metallic)),
                specular=float(value.get("specular", default.specular)),
            )
        return default


def opencv_sensor_params(camera: Camera) -> dict[str, float]:
    """Mitsuba ``perspective`` sensor parameters (``fov`` along x, principal point offsets) of an OpenCV camera.

    Raises:
        ValueError: non-square pixels (``fx != fy``) or skew, which Mitsuba's pinhole cannot represent.

    Example:
        >>> p = opencv_sensor_params(Camera.from_fxfycxcy(100.0, 100.0, 31.5, 23.5, width=64, height=48))
        >>> round(p["fov"], 3), p["principal_point_offset_x"], p["principal_point_offset_y"]
        (35.489, 0.0, 0.0)
    """
    fx, fy = camera.fx, camera.fy
    if abs(fx - fy) > 1e-6 * fx or abs(camera.K[0, 1]) > 1e-9:
        raise ValueError(
            f"the photoreal renderer needs square pixels without skew (fx = fy, s = 0); got {camera!r}, "
            f"skew {camera.K[0, 1]}"
        )
    w, h = camera.width, camera.height
    return {
        "fov": math.degrees(2.0 * math.atan(w / (2.0 * fx))),
        "principal_point_offset_x": (w / 2.0 - 0.5 - camera.cx) / w,
        "principal_point_offset_y": (h / 2.0 - 0.5 - camera.cy) / h,
    }


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1.0 / 2.4) - 0.055)


def denoise_radiance(radiance: np.ndarray, albedo: np.ndarray, instance: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth Monte Carlo noise out of a path-traced image without blurring texture or silhouettes.

    The radiance is divided by the albedo (first-hit diffuse reflectance, filtered like the radiance), which
    leaves the incident light — smooth except at shadow edges; that quotient is blurred with a normalised
    Gaussian *within each instance region* (so nothing leaks across silhouettes) and multiplied back.

    Args:
        radiance: ``(H, W, 3)`` linear radiance.
        albedo: ``(H, W, 3)`` albedo AOV.
        instance: ``(H, W)`` int region ids (0 = background, left as is).
        sigma: Gaussian radius in pixels.

    Returns:
        ``(H, W, 3)`` float32 denoised radiance.
    """
    import cv2

    lin = np.asarray(radiance, dtype=np.float32)
    alb = np.asarray(albedo, dtype=np.float32)
    safe = np.maximum(alb, 0.02)  # metals and black paint: demodulate by a floor, consistently
    light = lin / safe
    out = lin.copy()
    for region in np.unique(instance):
        if region == 0:
            continue
        m = (instance == region).astype(np.float32)
        weight = cv2.GaussianBlur(m, (0, 0), sigma)
        smooth = cv2.GaussianBlur(light * m[..., None], (0, 0), sigma)
        sel = m > 0
        out[sel] = (smooth[sel] / np.maximum(weight[sel, None], 1e-6)) * safe[sel]
    return out


@dataclass
class _CachedSurface:
    fingerprint: tuple[Any, ...]
    data: SurfaceData
    texture_linear: np.ndarray | None  # (H, W, 3) float32 linear RGB, row 0 at the top
    colors_linear: np.ndarray  # (V, 3) float32


@dataclass
class PhotorealRenderer:
    """Mitsuba 3 path tracer behind the :class:`~meshpose.render.base.Renderer` protocol.

    Args:
        variant: Mitsuba variant, or ``"auto"`` (see :func:`select_variant`).
        spp: samples per pixel of the colour pass.
        max_depth: longest path (``path`` integrator): 2 = direct light only; 3 and more add inter-reflections.
        denoise: albedo-demodulated, region-aware smoothing of the colour pass (see the module docstring).
        denoise_sigma: its Gaussian radius in pixels.
        albedo_spp: samples per pixel of the albedo AOV pass that guides the denoiser.
        geometry: ``"mitsuba"`` (the AOV pass) or ``"gl"`` (depth, masks, xyz, normals from the GL renderer).
        lighting: default :class:`~meshpose.render.base.Lighting` when :meth:`render` gets none. ``ambient``
            becomes a uniform environment of that radiance (or ``environment`` scaled by it), ``direction`` a
            spherical area light (soft shadows) whose irradiance is ``π · diffuse``, so a white Lambertian surface
            facing it is about as bright as :class:`~meshpose.render.gl.GLRenderer` draws it. ``specular`` and
            ``shininess`` are ignored (materials set the highlights).
        light_radius: angular radius of the area light, radians (larger = softer shadows).
        material: default :class:`Material` of meshes without ``metadata["material"]``.
        threads: worker threads (``None``: Dr.Jit's default, all cores).
        seed: base seed of the samplers; :meth:`render` may override it per call.

    Not thread-safe (the Mitsuba variant is process-global); use one renderer per process.

    Example:
        >>> r = PhotorealRenderer(spp=16)                                           # doctest: +SKIP
        >>> out = r.render([obj], pose, camera)                                     # doctest: +SKIP
        >>> out.rgb.shape, out.depth.shape                                          # doctest: +SKIP
        ((1, 480, 640, 3), (1, 480, 640))
    """

    variant: str = "auto"
    spp: int = 16
    max_depth: int = 4
    denoise: bool = True
    denoise_sigma: float = 1.5
    albedo_spp: int = 2
    geometry: Literal["mitsuba", "gl"] = "mitsuba"
    lighting: Lighting = field(default_factory=Lighting)
    light_radius: float = 0.12
    material: Material = field(default_factory=Material)
    threads: int | None = None
    seed: int = 0
    _variant: str | None = field(default=None, init=False, repr=False)
    _surfaces: dict[int, _CachedSurface] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.spp < 1:
            raise ValueError(f"spp must be ≥ 1, got {self.spp}")
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be ≥ 1, got {self.max_depth}")
        if not (0.0 < self.light_radius < 1.0):
            raise ValueError(f"light_radius must be in (0, 1) radians, got {self.light_radius}")
        if self.geometry not in ("mitsuba", "gl"):
            raise ValueError(f"geometry must be 'mitsuba' or 'gl', got {self.geometry!r}")
        if self.denoise_sigma <= 0:
            raise ValueError(f"denoise_sigma must be positive, got {self.denoise_sigma}")

    # --- Mitsuba setup ----------------------------------------------------------------------------------
    @property
    def active_variant(self) -> str:
        """The Mitsuba variant this renderer uses (resolved on first use)."""
        if self._variant is None:
            self._variant = select_variant(self.variant)
        return self._variant

    def _mi(self) -> Any:
        import mitsuba as mi

        variant = self.active_variant
        if mi.variant() != variant:
            mi.set_variant(variant)
        if self.threads is not None:
            import drjit as dr

            if dr.thread_count() != self.threads:
                dr.set_thread_count(int(self.threads))
        return mi

    # --- meshes -------------------------------------------------------------------------------------------
    def _surface(self, mesh: Any) -> _CachedSurface:
        key = id(mesh)
        fingerprint = (hash(mesh), id(getattr(mesh, "visual", None)))
        entry = self._surfaces.get(key)
        if entry is not None and entry.fingerprint == fingerprint:
            return entry
        data = surface_data(mesh)
        tex = None
        if data.textured:
            assert data.texture is not None
            tex = _srgb_to_linear(data.texture[..., :3] / 255.0).astype(np.float32)
        colors = _srgb_to_linear(data.colors[:, :3] / 255.0).astype(np.float32)
        entry = _CachedSurface(fingerprint, data, tex, colors)
        if len(self._surfaces) > 256:
            self._surfaces.clear()
        self._surfaces[key] = entry
        return entry

    def _mesh(
        self,
        mi: Any,
        name: str,
        surf: _CachedSurface,
        R: np.ndarray,
        t: np.ndarray,
        bsdf: Any,
    ) -> Any:
        """A Mitsuba mesh of ``surf`` moved to the camera frame by ``(R, t)``, with ``bsdf``."""
        data = surf.data
        props = mi.Properties()
        props["bsdf"] = bsdf
        textured = surf.texture_linear is not None
        mesh = mi.Mesh(
            name,
            len(data.positions),
            len(data.faces),
            props=props,
            has_vertex_normals=True,
            has_vertex_texcoords=textured,
        )
        params = mi.traverse(mesh)
        positions = data.positions @ R.T + t
        normals = data.normals.astype(np.float64) @ R.T
        params["vertex_positions"] = np.ascontiguousarray(positions, dtype=np.float32).ravel()
        params["vertex_normals"] = np.ascontiguousarray(normals, dtype=np.float32).ravel()
        params["faces"] = np.ascontiguousarray(data.faces, dtype=np.uint32).ravel()
        if textured:
            assert data.uvs is not None
            # Mitsuba samples bitmaps with v = 0 at the top row; trimesh's v = 0 is the bottom row.
            uv = np.column_stack([data.uvs[:, 0], 1.0 - data.uvs[:, 1]])
            params["vertex_texcoords"] = np.ascontiguousarray(uv, dtype=np.float32).ravel()
        params.update()
        if not textured:
            mesh.add_attribute("vertex_color", 3, np.ascontiguousarray(surf.colors_linear).ravel())
        return mesh

    def _material_bsdf(self, mi: Any, obj: ObjectModel, surf: _CachedSurface) -> Any:
        mat = Material.from_metadata(obj.render_mesh.metadata.get("material"), self.material)
        if surf.texture_linear is not None:
            tint = surf.data.colors[0, :3].astype(np.float64) / 255.0
            image = surf.texture_linear * _srgb_to_linear(tint)[None, None, :].astype(np.float32)
            base: dict[str, Any] = {
                "type": "bitmap",
                "bitmap": mi.Bitmap(np.ascontiguousarray(image, dtype=np.float32)),
                "raw": True,
                "filter_type": "bilinear",
                "wrap_mode": "repeat",
            }
        else:
            base = {"type": "mesh_attribute", "name": "vertex_color"}
        return mi.load_dict(
            {
                "type": "principled",
                "base_color": base,
                "roughness": float(np.clip(mat.roughness, 0.05, 1.0)),
                "metallic": float(np.clip(mat.metallic, 0.0, 1.0)),
                "specular": float(np.clip(mat.specular, 0.0, 1.0)),
            }
        )

    # --- rendering ----------------------------------------------------------------------------------------
    def render(
        self,
        objects: Sequence[ObjectModel],
        poses: Pose,
        camera: Camera | Sequence[Camera],
        *,
        lighting: Lighting | None = None,
        seed: int | None = None,
        environment: np.ndarray | None = None,
        spp: int | None = None,
    ) -> RenderOutput:
        """Render ``B`` scenes of the ``N`` objects (see :class:`~meshpose.render.base.Renderer`).

        Args:
            objects: the ``N`` objects; each draws its ``render_mesh`` with its colours or texture as the base
                colour and ``render_mesh.metadata["material"]`` (or the renderer's default) for the rest.
            poses: ``cam_from_obj``, batch shape ``(N,)`` or ``(B, N)``.
            camera: one camera or ``B`` cameras of one size; square pixels, no skew.
            lighting: shading (default: the renderer's), mapped as described in the class docstring.
            seed: sampler seed (default: the renderer's ``seed``); the same seed gives the same image.
            environment: optional ``(He, We, 3)`` equirectangular environment (uint8 sRGB or float linear) that
                replaces the uniform ambient light (scaled by ``lighting.ambient``); it lights and is reflected
                but is not seen directly (the background stays 0).
            spp: samples per pixel of this call (default: the renderer's).

        Returns:
            :class:`~meshpose.render.base.RenderOutput`; ``rgb`` is sRGB in [0, 1] with 0 on the background;
            ``timings`` has ``setup``, ``color``, ``geometry`` and ``total`` (seconds).
        """
        t_start = time.perf_counter()
        poses, cams = normalize_scene_batch(objects, poses, camera)
        R_all, t_all = poses.numpy()
        if not (np.all(np.isfinite(R_all)) and np.all(np.isfinite(t_all))):
            raise ValueError("render poses contain NaN or inf")
        light = lighting if lighting is not None else self.lighting
        n_scenes = R_all.shape[0]
        width, height = cams[0].width, cams[0].height
        mi = self._mi()
        surfaces = [self._surface(obj.render_mesh) for obj in objects]
        env = self._environment(mi, environment, light)

        rgb = np.zeros((n_scenes, height, width, 3), np.float32)
        depth = np.zeros((n_scenes, height, width), np.float32)
        xyz = np.zeros((n_scenes, height, width, 3), np.float32)
        normal = np.zeros((n_scenes, height, width, 3), np.float32)
        instance = np.zeros((n_scenes, height, width), np.int32)
        t_setup = t_color = t_geom = 0.0
        n_spp = int(spp or self.spp)
        if self.geometry == "gl":
            from meshpose.render.gl import get_default_renderer

            t0 = time.perf_counter()
            geo = get_default_renderer().render(objects, poses, cams, lighting=light)
            depth[:], xyz[:], normal[:], instance[:] = geo.depth, geo.xyz, geo.normal, geo.instance
            t_geom += time.perf_counter() - t0
        for b in range(n_scenes):
            t0 = time.perf_counter()
            shapes = {}
            for n, (obj, surf) in enumerate(zip(objects, surfaces, strict=True)):
                if self._in_front(surf, R_all[b, n], t_all[b, n]):
                    shapes[f"obj_{n:04d}"] = (n, surf, self._material_bsdf(mi, obj, surf))
            scene_dict: dict[str, Any] = {
                "type": "scene",
                "integrator": {"type": "path", "max_depth": int(self.max_depth), "hide_emitters": True},
                "sensor": self._sensor(mi, cams[b], spp=n_spp, centred=False),
                "ambient": env,
            }
            if light.diffuse > 0:
                scene_dict["sun"] = self._area_light(light)
            for key, (n, surf, bsdf) in shapes.items():
                scene_dict[key] = self._mesh(mi, key, surf, R_all[b, n], t_all[b, n], bsdf)
            scene = mi.load_dict(scene_dict)
            t1 = time.perf_counter()
            seed_b = int(self.seed if seed is None else seed) + b
            radiance = np.array(mi.render(scene, seed=seed_b, spp=n_spp), dtype=np.float32)[..., :3]
            albedo = None
            if self.denoise:
                # The albedo of the same scene, sampled and filtered like the radiance (the aov integrator on
                # its own; nesting the path tracer inside it would make it several times slower).
                albedo_integrator = mi.load_dict({"type": "aov", "aovs": "al:albedo"})
                albedo = np.array(
                    mi.render(scene, integrator=albedo_integrator, seed=seed_b + 1, spp=int(self.albedo_spp)),
                    dtype=np.float32,
                )[..., :3]
            t2 = time.perf_counter()

            if self.geometry == "mitsuba":
                geo_dict: dict[str, Any] = {
                    "type": "scene",
                    "integrator": {"type": "aov", "aovs": "pp:position,nn:sh_normal,id:albedo"},
                    "sensor": self._sensor(mi, cams[b], spp=1, centred=True),
                }
                for key, (n, surf, _) in shapes.items():
                    code = {"type": "rgb", "value": [(n + 1) / 1024.0, 0.0, 0.0]}
                    geo_dict[key] = self._mesh(
                        mi, key, surf, R_all[b, n], t_all[b, n], mi.load_dict({"type": "diffuse", "reflectance": code})
                    )
                aov = np.array(mi.render(mi.load_dict(geo_dict), seed=0, spp=1), dtype=np.float64)
                pos, nrm, code_r = aov[..., 0:3], aov[..., 3:6], aov[..., 6]
                inst = np.rint(code_r * 1024.0).astype(np.int32)
                inst[(inst < 0) | (inst > len(objects))] = 0
                hit = inst > 0
                depth[b] = np.where(hit, pos[..., 2], 0.0)
                nlen = np.linalg.norm(nrm, axis=-1, keepdims=True)
                n_unit = np.divide(nrm, nlen, out=np.zeros_like(nrm), where=nlen > 0)
                away = np.einsum("hwc,hwc->hw", n_unit, pos) > 0  # turned away from the camera: flip
                n_unit[away] *= -1.0
                normal[b] = np.where(hit[..., None], n_unit, 0.0)
                for n in np.unique(inst[hit]):
                    sel = inst == n
                    R, t = R_all[b, n - 1], t_all[b, n - 1]
                    xyz[b][sel] = (pos[sel] - t) @ R  # obj_from_cam: Rᵀ (p - t)
                instance[b] = inst
            if albedo is not None:
                radiance = denoise_radiance(radiance, albedo, instance[b], self.denoise_sigma)
            color = _linear_to_srgb(radiance * np.asarray(light.color, np.float32)).astype(np.float32)
            color[instance[b] == 0] = 0.0
            rgb[b] = color
            t_setup += t1 - t0
            t_color += t2 - t1
            t_geom += time.perf_counter() - t2
        mask = instance > 0
        timings = {"setup": t_setup, "color": t_color, "geometry": t_geom, "total": time.perf_counter() - t_start}
        return RenderOutput(rgb, depth, mask, xyz, normal, instance, timings)

    @staticmethod
    def _in_front(surf: _CachedSurface, R: np.ndarray, t: np.ndarray) -> bool:
        z = float(R[2] @ surf.data.center + t[2])
        return z + surf.data.radius > 1e-4

    def _sensor(self, mi: Any, camera: Camera, *, spp: int, centred: bool) -> dict[str, Any]:
        params = opencv_sensor_params(camera)
        film: dict[str, Any] = {
            "type": "hdrfilm",
            "width": camera.width,
            "height": camera.height,
            "rfilter": {"type": "box"} if centred else {"type": "gaussian"},
            "pixel_format": "rgb",
            "sample_border": False,
        }
        sampler = (
            {"type": "stratified", "sample_count": 1, "jitter": False}
            if centred
            else {"type": "independent", "sample_count": spp}
        )
        return {
            "type": "perspective",
            "fov_axis": "x",
            "near_clip": 1e-3,
            "far_clip": 1e3,
            "to_world": mi.ScalarTransform4f(np.diag([-1.0, -1.0, 1.0, 1.0]).tolist()),
            "film": film,
            "sampler": sampler,
            **params,
        }

    def _area_light(self, light: Lighting) -> dict[str, Any]:
        """A sphere light far away in ``light.direction`` whose irradiance at the origin is ``π · diffuse``."""
        distance = 50.0
        radius = distance * math.tan(self.light_radius)
        # A sphere of radiance L subtending half-angle α gives irradiance E = π L sin²α at normal incidence.
        sin2 = (radius / distance) ** 2 / (1.0 + (radius / distance) ** 2)
        radiance = light.diffuse / sin2
        center = light.unit_direction * distance
        return {
            "type": "sphere",
            "center": [float(c) for c in center],
            "radius": float(radius),
            "emitter": {"type": "area", "radiance": {"type": "rgb", "value": [float(radiance)] * 3}},
        }

    def _environment(self, mi: Any, environment: np.ndarray | None, light: Lighting) -> dict[str, Any]:
        if environment is None:
            return {"type": "constant", "radiance": {"type": "rgb", "value": [float(light.ambient)] * 3}}
        env = np.asarray(environment)
        if env.ndim != 3 or env.shape[2] < 3:
            raise ValueError(f"environment must be (H, W, 3), got {env.shape}")
        lin = _srgb_to_linear(env[..., :3] / 255.0) if env.dtype == np.uint8 else env[..., :3].astype(np.float64)
        # Normalise so the mean radiance equals lighting.ambient, as the uniform environment would have.
        lin = lin * (light.ambient / max(float(lin.mean()), 1e-6))
        return {
            "type": "envmap",
            "bitmap": mi.Bitmap(np.ascontiguousarray(lin, dtype=np.float32)),
        }
