"""The template bank: a mesh rendered from viewpoints all around it (colour, mask, object coordinates, depth) in
one batched render call, cached on disk keyed by the mesh's content.

Viewpoints are the vertices of a subdivided icosahedron (:func:`template_rotations`). Each template puts the
centre ``c`` of the render mesh's bounding sphere (the renderer's: centre of the vertices' bounding box, radius
``r``) on the optical axis, where the sphere's projection spans ``fill`` of the template side. A mesh's origin
need not be its centre, so ``t = [0, 0, d] - R @ c`` differs per template.

In-plane rotation (fixed, deterministic; a coarse estimator recovers in-plane rotation itself): the image's *up*
direction (``-y`` of the camera) is the object's ``+z`` axis projected onto the image plane, or the object's
``+y`` axis for views within :data:`POLE_ANGLE_DEG` of ``±z``.

Cache: one compressed ``.npz`` per bank under :func:`default_cache_dir`, named by a hash of what the renderer
draws (vertices, faces, vertex/face colours or texture, uv and material colours of ``render_mesh``), the
renderer's mesh settings, the config and :data:`FORMAT_VERSION`. On disk ``xyz`` is stored as float16 offsets
from ``c`` in units of ``r`` (error ≤ ``2⁻¹² r`` per coordinate, ≤ ``√3 · 2⁻¹² r`` ≤ 0.43 mm per point while
``r`` ≤ 1 m; larger objects are stored float32), and ``depth`` is not stored but recomputed from ``xyz`` and the
pose, so a loaded bank agrees with a built one to that error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from numpy.typing import ArrayLike

from meshpose.mesh import render_bounding_sphere
from meshpose.render.base import Lighting, Renderer
from meshpose.render.content import cache_dir, cached, hash_render_mesh, read_cache_npz, write_cache_npz
from meshpose.render.gl import get_default_renderer
from meshpose.types import Camera, ObjectModel, Pose

__all__ = [
    "FORMAT_VERSION",
    "POLE_ANGLE_DEG",
    "VIEW_COUNTS",
    "TemplateBank",
    "TemplateConfig",
    "build_templates",
    "default_cache_dir",
    "load_templates",
    "template_cache_key",
    "template_rotations",
]

log = logging.getLogger(__name__)

#: Version of the cache file layout; bump it whenever what a bank holds or how it is rendered changes.
FORMAT_VERSION = 1
#: Accepted view counts → icosphere subdivisions.
VIEW_COUNTS: dict[int, int] = {12: 0, 42: 1, 162: 2, 642: 3}
#: Views closer than this to the object's ±z axis take the object's +y axis as image up (degrees).
POLE_ANGLE_DEG = 10.0
#: Largest bounding radius (metres) whose xyz is stored as float16 (error per point ≤ √3 · 2⁻¹² r ≤ 0.43 mm).
_FLOAT16_MAX_RADIUS = 1.0
#: Bank arrays stored as they are (``xyz`` is stored as offsets, ``depth`` recomputed).
_STORED = ("rotations", "translations", "center", "rgb", "mask")


#: Material attributes that colour a textured mesh (see :func:`meshpose.render.base.surface_data`).
@dataclass(frozen=True)
class TemplateConfig:
    """How a template bank is rendered.

    Args:
        views: viewpoints, the vertices of a subdivided icosahedron: 12, 42, 162 or 642 (largest angular gap
            from any direction to the nearest view ≈ 37°, 21°, 11°, 5.4°).
        size: template side, pixels.
        fill: share of the template side spanned by the projection of the object's bounding sphere.
        focal: focal length in units of the template side. 4.0 (a 14° field of view) puts the centre ≈ 9.5
            bounding radii away — a 20 cm object ≈ 1 m away, the perspective of BOP's datasets.
        lighting: shading of the colour templates (the renderers' default).

    Raises:
        ValueError: a view count not in :data:`VIEW_COUNTS`, ``size < 8``, ``fill`` outside ``(0, 1]`` or a
            non-positive ``focal``.

    Example:
        >>> cfg = TemplateConfig(size=128, fill=0.85, focal=4.0)
        >>> cam = cfg.camera()
        >>> cam.fx, cam.cx, cam.width
        (512.0, 63.5, 128)
        >>> round(cfg.distance(0.1), 4)  # metres, for a bounding radius of 0.1 m
        0.9465
    """

    views: int = 162
    size: int = 128
    fill: float = 0.85
    focal: float = 4.0
    lighting: Lighting = field(default_factory=Lighting)

    def __post_init__(self) -> None:
        if self.views not in VIEW_COUNTS:
            raise ValueError(f"TemplateConfig.views must be one of {sorted(VIEW_COUNTS)}, got {self.views}")
        if int(self.size) != self.size or self.size < 8:
            raise ValueError(f"TemplateConfig.size must be an integer ≥ 8, got {self.size}")
        if not (0.0 < self.fill <= 1.0):
            raise ValueError(f"TemplateConfig.fill must be in (0, 1], got {self.fill}")
        if not (math.isfinite(self.focal) and self.focal > 0):
            raise ValueError(f"TemplateConfig.focal must be positive, got {self.focal}")

    def camera(self) -> Camera:
        """The ``size × size`` camera of every template (square pixels, principal point at the centre)."""
        f = self.focal * self.size
        c = (self.size - 1) / 2.0
        return Camera.from_fxfycxcy(f, f, c, c, width=self.size, height=self.size)

    def distance(self, radius: float) -> float:
        """Distance (metres) from the camera to the centre of a bounding sphere of ``radius`` metres whose
        projection spans ``fill · size`` pixels: ``f r / sqrt(d² - r²) = fill · size / 2``."""
        return float(radius * math.sqrt(1.0 + (self.focal / (0.5 * self.fill)) ** 2))


def template_rotations(views: int = 162) -> np.ndarray:
    """Rotations ``cam_from_obj`` of cameras on the vertices of a subdivided icosahedron, looking at the centre.

    Args:
        views: 12, 42, 162 or 642.

    Returns:
        ``(views, 3, 3)`` float64 rotations; ``-R[i, 2]`` is view ``i``'s unit direction from the object centre
        to the camera (object frame), in trimesh's icosphere vertex order. Up vector: see the module docstring.

    Example:
        >>> R = template_rotations(42)
        >>> R.shape, bool(np.allclose(R @ R.transpose(0, 2, 1), np.eye(3))), bool(np.allclose(np.linalg.det(R), 1))
        ((42, 3, 3), True, True)
    """
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {sorted(VIEW_COUNTS)}, got {views}")
    v = np.asarray(trimesh.creation.icosphere(subdivisions=VIEW_COUNTS[views]).vertices, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    z_cam = -v  # the optical axis points from the camera to the object centre
    near_pole = np.abs(v[:, 2]) > math.cos(math.radians(POLE_ANGLE_DEG))
    up = np.where(near_pole[:, None], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    up -= np.sum(up * z_cam, axis=1, keepdims=True) * z_cam
    y_cam = -up / np.linalg.norm(up, axis=1, keepdims=True)  # image y points down
    x_cam = np.cross(y_cam, z_cam)
    return np.stack([x_cam, y_cam, z_cam], axis=1)  # rows: the camera axes in the object frame


@dataclass(frozen=True, eq=False)
class TemplateBank:
    """Renderings of one object from ``N`` viewpoints, all into one camera (arrays are read-only).

    Args:
        obj_id: the object's id.
        config: how it was rendered.
        camera: the ``S × S`` camera shared by all templates.
        rotations: ``(N, 3, 3)`` float64 ``cam_from_obj`` rotations of the templates.
        translations: ``(N, 3)`` float64 ``cam_from_obj`` translations, metres (``R @ center + t = [0, 0, d]``).
        center: ``(3,)`` float64 centre of the render mesh's bounding sphere, object frame, metres.
        radius: that sphere's radius, metres.
        rgb: ``(N, S, S, 3)`` uint8 shaded colour, 0 on the background.
        mask: ``(N, S, S)`` bool, where the object is seen.
        xyz: ``(N, S, S, 3)`` float32 object-frame coordinates (metres) of the visible surface, 0 off the mask.
        depth: ``(N, S, S)`` float32 camera z-depth, metres, 0 off the mask.
    """

    obj_id: int
    config: TemplateConfig
    camera: Camera
    rotations: np.ndarray
    translations: np.ndarray
    center: np.ndarray
    radius: float
    rgb: np.ndarray
    mask: np.ndarray
    xyz: np.ndarray
    depth: np.ndarray

    def __post_init__(self) -> None:
        n, s = len(self.rotations), self.config.size
        expected = [("rotations", (n, 3, 3), "f8"), ("translations", (n, 3), "f8"), ("center", (3,), "f8")]
        expected += [("rgb", (n, s, s, 3), "u1"), ("mask", (n, s, s), "?")]
        expected += [("xyz", (n, s, s, 3), "f4"), ("depth", (n, s, s), "f4")]
        for name, shape, dtype in expected:
            arr: np.ndarray = np.asarray(getattr(self, name), dtype=dtype)
            if arr.shape != shape:
                raise ValueError(f"TemplateBank.{name} must have shape {shape}, got {arr.shape}")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        if (self.camera.width, self.camera.height) != (s, s):
            raise ValueError(f"TemplateBank.camera must be {s}×{s}, got {self.camera.width}×{self.camera.height}")
        object.__setattr__(self, "radius", float(self.radius))

    def __len__(self) -> int:
        return len(self.rotations)

    @property
    def distance(self) -> float:
        """Camera-to-centre distance of every template, metres."""
        return self.config.distance(self.radius)

    def pose(self, i: int) -> Pose:
        """Template ``i``'s ``cam_from_obj`` pose (unbatched)."""
        return Pose(self.rotations[i].copy(), self.translations[i].copy())  # torch wants writable arrays

    def poses(self) -> Pose:
        """All templates' ``cam_from_obj`` poses, batch shape ``(N,)``."""
        return Pose(self.rotations.copy(), self.translations.copy())

    def view_dirs(self) -> np.ndarray:
        """``(N, 3)`` float64 unit vectors from the object centre towards each template's camera (object frame)."""
        return -self.rotations[:, 2, :]

    def nearest(self, R: ArrayLike) -> int:
        """Index of the template whose viewing direction is closest to that of rotation ``R`` (``cam_from_obj``).

        The viewing direction of ``R`` is its optical axis seen from the object, ``-R[2]``; for an object off
        the optical axis, pass the rotation of the camera turned to centre it. In-plane rotation is ignored.

        Args:
            R: ``(3, 3)`` rotation.
        """
        R = np.asarray(R, dtype=np.float64)
        if R.shape != (3, 3):
            raise ValueError(f"nearest needs a (3, 3) rotation, got shape {R.shape}")
        return int(np.argmax(self.view_dirs() @ -R[2]))


def build_templates(
    model: ObjectModel, config: TemplateConfig | None = None, renderer: Renderer | None = None
) -> TemplateBank:
    """Render ``model.render_mesh`` from every viewpoint of ``config``, in one batched render call.

    Args:
        model: the object.
        config: views, size, framing and light (default: ``TemplateConfig()``).
        renderer: default: the thread's shared GL renderer.

    Returns:
        The :class:`TemplateBank` (162 views of a 20k-face mesh at 128 px: ≈ 1.5 s on 2 CPU cores, llvmpipe).
    """
    config = config if config is not None else TemplateConfig()
    renderer = renderer if renderer is not None else get_default_renderer()
    center, radius = render_bounding_sphere(model.render_mesh)
    R = template_rotations(config.views)
    t = np.array([0.0, 0.0, config.distance(radius)]) - R @ center
    camera = config.camera()
    out = renderer.render([model], Pose(R[:, None], t[:, None]), camera, lighting=config.lighting)
    mask = np.array(out.mask, dtype=bool)  # copies: the renderer may recycle its output memory
    rgb = np.rint(np.clip(out.rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    xyz = np.where(mask[..., None], out.xyz, 0.0).astype(np.float32)
    depth = np.where(mask, out.depth, 0.0).astype(np.float32)
    return TemplateBank(model.obj_id, config, camera, R, t, center, radius, rgb, mask, xyz, depth)


# --- the disk cache -------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$MESHPOSE_CACHE_DIR/templates``, else ``$XDG_CACHE_HOME/meshpose/templates``, else
    ``~/.cache/meshpose/templates``."""
    return cache_dir("templates")


def template_cache_key(model: ObjectModel, config: TemplateConfig, renderer: Renderer | None = None) -> str:
    """Hex digest naming a bank: render-mesh content, the renderer's mesh settings, config, format version.

    Args:
        model: the object (its ``render_mesh`` is hashed, not its ``obj_id``).
        config: the bank's config.
        renderer: its ``crease_angle`` and ``default_color`` (when it has them) change the image and count.
    """
    renderer = renderer if renderer is not None else get_default_renderer()
    h = hashlib.blake2b(digest_size=20)
    mesh = model.render_mesh
    hash_render_mesh(h, mesh)
    settings = [FORMAT_VERSION, asdict(config), getattr(renderer, "crease_angle", None)]
    settings.append(list(getattr(renderer, "default_color", ()) or ()))
    h.update(json.dumps(settings, sort_keys=True, default=list).encode())
    return h.hexdigest()


def _save(bank: TemplateBank, key: str, path: Path) -> None:
    """Write ``bank`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``)."""
    use16 = bank.radius <= _FLOAT16_MAX_RADIUS
    offsets = (bank.xyz - bank.center.astype(np.float32)) / np.float32(max(bank.radius, 1e-12))
    xyz = np.where(bank.mask[..., None], offsets, 0.0).astype(np.float16 if use16 else np.float32)
    meta = {"version": FORMAT_VERSION, "key": key, "obj_id": bank.obj_id, "radius": bank.radius}
    arrays = {name: getattr(bank, name) for name in _STORED}
    write_cache_npz(path, meta, {**arrays, "xyz": xyz}, compressed=True)


def _load(path: Path, key: str, model: ObjectModel, config: TemplateConfig) -> TemplateBank:
    """Read a bank written by :func:`_save`; raises on any mismatch (wrong key, version or shapes)."""
    meta, arrays = read_cache_npz(path, FORMAT_VERSION, key, (*_STORED, "xyz"))
    radius = float(meta["radius"])
    mask = arrays["mask"]
    if mask.dtype != np.bool_ or arrays["xyz"].shape != (*mask.shape, 3) or len(mask) != config.views:
        raise ValueError(f"cache file {path} holds arrays of unexpected shapes")
    xyz = arrays["xyz"].astype(np.float32) * np.float32(radius) + arrays["center"].astype(np.float32)
    xyz = np.where(mask[..., None], xyz, np.float32(0.0))
    R, t = arrays["rotations"], arrays["translations"]
    depth = np.einsum("nhwc,nc->nhw", xyz, R[:, 2, :].astype(np.float32)) + t[:, 2, None, None].astype(np.float32)
    depth = np.where(mask, depth, np.float32(0.0))
    center, rgb = arrays["center"], arrays["rgb"]
    return TemplateBank(model.obj_id, config, config.camera(), R, t, center, radius, rgb, mask, xyz, depth)


def load_templates(
    model: ObjectModel,
    config: TemplateConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    renderer: Renderer | None = None,
) -> TemplateBank:
    """The template bank of ``model``, from the disk cache when there, else built and written there.

    A cache file that cannot be read or does not match is rebuilt (with a logged warning), and a cache folder
    that cannot be written only costs the cache (a warning): the bank is always returned.

    Args:
        model: the object.
        config: default ``TemplateConfig()``.
        cache_dir: folder of the ``.npz`` files (default: :func:`default_cache_dir`).
        renderer: used to build (and for the key, see :func:`template_cache_key`); default: the shared GL one.

    Returns:
        The :class:`TemplateBank` (``xyz`` and ``depth`` of a loaded bank within 0.43 mm of a built one).
    """
    config = config if config is not None else TemplateConfig()
    renderer = renderer if renderer is not None else get_default_renderer()
    key = template_cache_key(model, config, renderer)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"obj{model.obj_id}-{key}.npz"
    return cached(
        path,
        lambda p: _load(p, key, model, config),
        lambda: build_templates(model, config, renderer),
        lambda bank, p: _save(bank, key, p),
        "template",
        log,
    )
