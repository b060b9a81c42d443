"""Synthetic scenes: BOP datasets written to disk, and samples drawn on the fly for training loaders.

A *scene* is one arrangement of objects in a world frame (z up): the annotated objects and some distractors,
either resting in stable poses on a textured ground plane or floating in a volume, never interpenetrating. Each
*image* of a scene is a random view of it: a camera looking at the arrangement from a random direction and
distance with random intrinsics, a random light, and a random background (procedural textures, photograph-like
images or crops of an image folder); then a sensor model — colour jitter, blur, noise — on the colour image,
and axial noise growing with distance, dropouts at depth edges and grazing angles, blob holes and
quantisation on the depth image.

Colour comes from the GL rasteriser (fast) or the Mitsuba path tracer (:mod:`meshpose.render.photoreal`: soft
shadows, inter-reflections, rough and metallic materials). The ground truth — poses, full silhouettes beyond
the image border (``mask/``, ``px_count_all``, ``bbox_obj`` as bop_toolkit computes them), visible masks
(``mask_visib/``, from the renderer's instance map) and clean depth — is exact in both cases.

Everything is a function of ``(seed, scene_id, im_id)``: two runs with one seed write identical files, and a
run interrupted at any point resumes where it stopped (finished scenes are skipped, an unfinished one is redone
identically).

Entry points: :func:`synthesize` (``meshpose synth``), :class:`SceneSampler` (on-the-fly samples for training),
:func:`resolve_objects` (``--objects DIR_OR_PRESET``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch.utils.data
import trimesh

from meshpose.geometry.symmetry import expand_symmetries
from meshpose.io.bop_write import SceneWriter, models_info_entry, write_json_atomic, write_model_ply
from meshpose.mesh.load import Units
from meshpose.mesh.novel import NovelConfig, novel_mesh, photo_like_texture, random_image_crop, texture_tile
from meshpose.render.base import Lighting, full_silhouettes
from meshpose.types import Camera, ObjectModel, Observation, Pose

__all__ = [
    "ObjectSet",
    "SceneConfig",
    "SceneLayout",
    "SceneSampler",
    "SynthConfig",
    "SynthResult",
    "SyntheticSample",
    "SyntheticStream",
    "apply_color_sensor",
    "apply_depth_sensor",
    "clear_caches",
    "default_distractors",
    "ground_plane",
    "random_background",
    "resolve_objects",
    "stable_poses",
    "synthesize",
    "write_targets",
]

_MESH_EXTS = (".ply", ".obj", ".glb", ".gltf", ".off", ".stl")
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------
#: :class:`SceneConfig` ranges whose values cannot be negative (intensities, blur, noise, sensor jitter factors).
_NON_NEGATIVE_RANGES = frozenset(
    {
        "ambient",
        "diffuse",
        "specular",
        "contact_shadow",
        "brightness",
        "contrast",
        "saturation",
        "blur_sigma_px",
        "motion_blur_px",
        "noise_std",
        "depth_holes",
        "depth_range_m",
    }
)


@dataclass(frozen=True)
class SceneConfig:
    """How one scene and its images look. Ranges ``(lo, hi)`` are sampled uniformly per scene or per image.

    Image and camera:
        width, height: image size in pixels.
        fov_deg: horizontal field of view range (sets ``fx``; ``fy = fx``, square pixels).
        principal_jitter: principal point offset from the image centre, as a fraction of the image size.
        fill: fraction of the smaller image half-side that the arrangement's radius covers (sets the distance).
        elevation_deg: camera elevation above the ground plane (plane scenes).
        roll_deg: in-plane camera roll (plane scenes; floating scenes get any roll).
        target_jitter: the camera looks at the arrangement's centre plus this fraction of its radius.

    Content:
        objects_per_scene: annotated instances per scene.
        distractors_per_scene: unannotated objects per scene (they occlude and clutter).
        repeat_objects: allow the same object more than once in a scene.
        placement: ``"plane"`` (stable resting poses on a ground plane), ``"float"`` (random poses in a volume)
            or ``"mixed"``.
        plane_probability: share of plane scenes when ``placement="mixed"``.
        background_dir: optional folder of images (searched recursively) for backgrounds and ground textures;
            otherwise procedural textures and photograph-like images.

    Light and sensor (colour):
        ambient, diffuse, specular: light intensity ranges (see :class:`~meshpose.render.base.Lighting`).
        light_tint: per-channel colour variation of the light.
        contact_shadow: strength range of the soft shadow under objects drawn on the plane (GL only; the path
            tracer makes real shadows).
        brightness, contrast, saturation: multiplicative jitter ranges around 1.
        hue: hue shift range (fraction of a turn).
        gamma: gamma range.
        blur_probability, blur_sigma_px: Gaussian defocus blur.
        motion_blur_probability, motion_blur_px: linear motion blur length.
        noise_std: Gaussian sensor noise range (fraction of full scale) — plus shot noise of the same order.

    Depth:
        depth: produce depth at all.
        depth_noise: scale of the axial noise model σ(z) = 1.2 mm + 1.9 mm·(z - 0.4 m)² (Kinect v1-like); 0
            gives exact depth.
        depth_edge_dropout: probability of losing a pixel at a depth discontinuity.
        depth_grazing_deg: surfaces seen at more than this angle from their normal are lost.
        depth_holes: range of the fraction of the image lost in random blobs.
        depth_range_m: the sensor sees only depths within this range.

    Photoreal:
        spp: samples per pixel of the path tracer (its output is denoised).
        max_bounces: longest path of the path tracer (3: direct light and one inter-reflection).
        mitsuba_variant: ``"auto"``, ``"scalar_rgb"`` or ``"llvm_ad_rgb"``.
        photoreal_geometry: where the path-traced images take depth, visible masks and normals from:
            ``"mitsuba"`` (its own AOV pass at the pixel centres) or ``"gl"`` (the rasteriser, which samples
            the pixel centres too: the same values, ~0.5 s per 640×480 image faster).
    """

    width: int = 640
    height: int = 480
    fov_deg: tuple[float, float] = (45.0, 70.0)
    principal_jitter: float = 0.03
    fill: tuple[float, float] = (0.6, 1.2)
    elevation_deg: tuple[float, float] = (15.0, 85.0)
    roll_deg: tuple[float, float] = (-25.0, 25.0)
    target_jitter: float = 0.25
    objects_per_scene: tuple[int, int] = (3, 8)
    distractors_per_scene: tuple[int, int] = (0, 4)
    repeat_objects: bool = False
    placement: Literal["plane", "float", "mixed"] = "mixed"
    plane_probability: float = 0.65
    background_dir: str | None = None
    ambient: tuple[float, float] = (0.25, 0.65)
    diffuse: tuple[float, float] = (0.3, 0.9)
    specular: tuple[float, float] = (0.0, 0.35)
    light_tint: float = 0.12
    contact_shadow: tuple[float, float] = (0.15, 0.55)
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.75, 1.25)
    hue: tuple[float, float] = (-0.02, 0.02)
    gamma: tuple[float, float] = (0.85, 1.2)
    blur_probability: float = 0.3
    blur_sigma_px: tuple[float, float] = (0.3, 1.2)
    motion_blur_probability: float = 0.1
    motion_blur_px: tuple[float, float] = (3.0, 9.0)
    noise_std: tuple[float, float] = (0.0, 0.025)
    depth: bool = True
    depth_noise: float = 1.0
    depth_edge_dropout: float = 0.5
    depth_grazing_deg: float = 80.0
    depth_holes: tuple[float, float] = (0.0, 0.03)
    depth_range_m: tuple[float, float] = (0.1, 5.0)
    spp: int = 8
    max_bounces: int = 3
    mitsuba_variant: str = "auto"
    photoreal_geometry: Literal["mitsuba", "gl"] = "gl"

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size must be at least 16×16, got {self.width}×{self.height}")
        for f in dataclasses.fields(self):  # every range: two finite numbers, lo ≤ hi
            if not isinstance(f.default, tuple):
                continue
            value = getattr(self, f.name)
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"SceneConfig.{f.name} must be a range (lo, hi), got {value!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"SceneConfig.{f.name} must be (lo, hi) with lo ≤ hi, got {tuple(value)}")
            if f.name in _NON_NEGATIVE_RANGES and lo < 0:
                raise ValueError(f"SceneConfig.{f.name} must not be negative, got {tuple(value)}")
        for name in ("plane_probability", "blur_probability", "motion_blur_probability", "depth_edge_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not (self.gamma[0] > 0 and self.depth_noise >= 0):
            raise ValueError(f"need gamma > 0 and depth_noise ≥ 0, got {self.gamma} and {self.depth_noise}")
        if not (self.fov_deg[0] >= 1.0 and self.fov_deg[1] < 170.0):
            raise ValueError(f"fov_deg must lie in [1, 170), got {self.fov_deg}")
        if self.objects_per_scene[0] < 1:
            raise ValueError(f"objects_per_scene must be at least 1, got {self.objects_per_scene}")
        if self.distractors_per_scene[0] < 0:
            raise ValueError(f"distractors_per_scene must be non-negative, got {self.distractors_per_scene}")
        if self.placement not in ("plane", "float", "mixed"):
            raise ValueError(f"placement must be 'plane', 'float' or 'mixed', got {self.placement!r}")
        if not (self.fill[0] > 0.0 and self.fill[1] <= 4.0):
            raise ValueError(f"fill must lie in (0, 4], got {self.fill}")
        if self.spp < 1:
            raise ValueError(f"spp must be ≥ 1, got {self.spp}")
        if self.background_dir is not None and not Path(self.background_dir).is_dir():
            raise ValueError(f"background_dir {self.background_dir} is not a folder")

    def exact(self) -> SceneConfig:
        """This configuration without sensor effects: no jitter, blur or noise on colour, exact depth."""
        return dataclasses.replace(
            self,
            brightness=(1.0, 1.0),
            contrast=(1.0, 1.0),
            saturation=(1.0, 1.0),
            hue=(0.0, 0.0),
            gamma=(1.0, 1.0),
            blur_probability=0.0,
            motion_blur_probability=0.0,
            noise_std=(0.0, 0.0),
            depth_noise=0.0,
            depth_edge_dropout=0.0,
            depth_grazing_deg=90.0,
            depth_holes=(0.0, 0.0),
        )


@dataclass(frozen=True)
class SynthConfig:
    """A ``meshpose synth`` run.

    Args:
        out: dataset folder to write (created; an existing one is resumed).
        objects: object source, see :func:`resolve_objects` (``"novel:1000"``, a folder of meshes, a BOP
            dataset or its ``models/`` folder, ``"example"``).
        scenes: number of scenes.
        images_per_scene: images (views) per scene.
        split: split folder, e.g. ``"train_pbr"`` or ``"test"``.
        renderer: ``"gl"`` or ``"photoreal"``.
        seed: seed of everything (objects of a ``novel`` preset too, unless the preset pins its own).
        scene: image and scene settings.
        units: units of a mesh folder (``"auto"``, ``"mm"``, ``"m"``).
        distractors: source of distractor objects (default: 64 generated objects from a seed derived from
            ``seed``, distinct from any ``novel`` target objects); ``"none"`` for none.
        first_scene_id: id of the first scene (to add scenes to a dataset).
        rgb_ext: ``".png"`` or ``".jpg"``; default ``.jpg`` for ``train*`` splits, ``.png`` otherwise.
        depth_scale_mm: millimetres per unit of the depth PNGs.
        write_all_models: write every object of the set to ``models/`` (default: when the set has at most
            100 objects; otherwise only the objects that appear, as they appear).
        write_targets: write ``test_targets_bop19.json`` (default: for ``test*`` splits); targets are the
            instances with ``visib_fract ≥ min_target_visib``.
        min_target_visib: visibility threshold of the targets.
        overwrite: regenerate scenes that are already complete (default: skip them, i.e. resume).
        writer_threads: threads that encode and write files while the next image renders.
        novel: settings of generated objects.
    """

    out: str
    objects: str = "novel:200"
    scenes: int = 1
    images_per_scene: int = 10
    split: str = "train_pbr"
    renderer: Literal["gl", "photoreal"] = "gl"
    seed: int = 0
    scene: SceneConfig = field(default_factory=SceneConfig)
    units: Units = "auto"
    distractors: str | None = None
    first_scene_id: int = 0
    rgb_ext: str | None = None
    depth_scale_mm: float = 0.1
    write_all_models: bool | None = None
    write_targets: bool | None = None
    min_target_visib: float = 0.1
    overwrite: bool = False
    writer_threads: int = 1
    novel: NovelConfig = field(default_factory=NovelConfig)

    def __post_init__(self) -> None:
        if self.scenes < 0 or self.images_per_scene < 1:
            raise ValueError(f"need scenes ≥ 0 and images_per_scene ≥ 1, got {self.scenes}, {self.images_per_scene}")
        if self.renderer not in ("gl", "photoreal"):
            raise ValueError(f"renderer must be 'gl' or 'photoreal', got {self.renderer!r}")
        if self.rgb_ext not in (None, ".png", ".jpg"):
            raise ValueError(f"rgb_ext must be '.png' or '.jpg', got {self.rgb_ext!r}")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.split):
            raise ValueError(f"split must be a plain folder name, got {self.split!r}")
        if self.first_scene_id < 0 or self.first_scene_id + self.scenes > 1_000_000:
            raise ValueError("scene ids must lie in [0, 999999]")
        if self.depth_scale_mm <= 0:
            raise ValueError(f"depth_scale_mm must be positive, got {self.depth_scale_mm}")

    @property
    def image_ext(self) -> str:
        if self.rgb_ext is not None:
            return self.rgb_ext
        return ".jpg" if self.split.startswith("train") else ".png"

    @property
    def targets(self) -> bool:
        return self.split.startswith("test") if self.write_targets is None else self.write_targets


# ----------------------------------------------------------------------------------------------------------
# Object sources
# ----------------------------------------------------------------------------------------------------------
SymmetryLists = tuple[np.ndarray, tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]]


class ObjectSet(Sequence[ObjectModel]):
    """The objects of a synthetic dataset, built or loaded lazily and cached (least recently used dropped).

    Args:
        spec: the specification it came from.
        obj_ids: object ids, in order.
        loaders: one function per object returning ``(model, discrete_m, continuous)``: the symmetries as BOP
            lists them (discrete ``(K, 4, 4)`` in metres without the identity; continuous ``(axis, offset_m)``).
        cache_size: objects kept in memory.
    """

    def __init__(
        self,
        spec: str,
        obj_ids: Sequence[int],
        loaders: Sequence[Callable[[], tuple[ObjectModel, np.ndarray, Any]]],
        *,
        cache_size: int = 96,
    ) -> None:
        if len(obj_ids) != len(loaders):
            raise ValueError("one loader per object id")
        if len(set(obj_ids)) != len(obj_ids):
            raise ValueError(f"object ids of {spec!r} are not unique")
        self.spec = spec
        self.obj_ids = [int(i) for i in obj_ids]
        self._loaders = list(loaders)
        self._position = {oid: k for k, oid in enumerate(self.obj_ids)}
        self._cache: OrderedDict[int, tuple[ObjectModel, np.ndarray, Any]] = OrderedDict()
        self._cache_size = int(cache_size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.obj_ids)

    def __getitem__(self, k: int) -> ObjectModel:  # type: ignore[override]
        if isinstance(k, slice):
            raise TypeError("ObjectSet does not support slicing; use by_id or a list comprehension")
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self._entry(k % len(self))[0]

    def __repr__(self) -> str:
        return f"ObjectSet({self.spec!r}, {len(self)} objects)"

    def _entry(self, k: int) -> tuple[ObjectModel, np.ndarray, Any]:
        with self._lock:
            hit = self._cache.get(k)
            if hit is not None:
                self._cache.move_to_end(k)
                return hit
        entry = self._loaders[k]()
        with self._lock:
            self._cache[k] = entry
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return entry

    def by_id(self, obj_id: int) -> ObjectModel:
        """The object with id ``obj_id``."""
        if obj_id not in self._position:
            raise KeyError(f"object id {obj_id} is not in {self.spec!r}")
        return self._entry(self._position[obj_id])[0]

    def symmetry_lists(self, obj_id: int) -> SymmetryLists:
        """``(discrete (K, 4, 4) metres without the identity, continuous ((axis, offset_m), …))`` of an object."""
        _, discrete, continuous = self._entry(self._position[obj_id])
        return discrete, continuous

    def models_info(self, obj_id: int) -> dict[str, Any]:
        """The ``models_info.json`` entry (millimetres) of an object, symmetries included."""
        model = self.by_id(obj_id)
        discrete, continuous = self.symmetry_lists(obj_id)
        return models_info_entry(model, continuous=continuous, discrete=list(discrete))


_RESOLVED: OrderedDict[tuple[Any, ...], ObjectSet] = OrderedDict()


def resolve_objects(spec: str, seed: int = 0, *, units: Units = "auto", novel: NovelConfig | None = None) -> ObjectSet:
    """The object set named by ``spec`` (the CLI's ``--objects``).

    Args:
        spec: one of

            * ``"novel:N"`` — generated objects ``0 … N-1`` (ids ``1 … N``) of :func:`~meshpose.mesh.novel.novel_mesh`
              with ``seed``; ``"novel:A-B"`` — objects ``A … B-1`` (ids ``A+1 … B``), e.g. held-out test objects
              for a model trained on ``novel:A``; a suffix ``@S`` pins the generator seed (``"novel:1000@7"``).
            * ``"example"`` — the demo object (:func:`~meshpose.mesh.example_object`).
            * a folder of meshes (``.ply .obj .glb .gltf .off .stl``, searched non-recursively): ids from
              ``obj_XXXXXX`` file names when every file is named so, else ``1 … N`` in sorted name order;
              symmetries from a ``models_info.json`` in the folder (BOP, millimetres) when there is one.
            * a BOP dataset folder (it has ``models/``): its models and ``models_info.json``.

        seed: generator seed of ``novel`` presets.
        units: units of mesh files (``"auto"``: millimetres if larger than 5 units; BOP folders are always read
            in millimetres).
        novel: generator settings.

    Returns:
        An :class:`ObjectSet` (lazy: generated objects are built when first used).

    Raises:
        ValueError: a malformed spec or an empty folder.
        FileNotFoundError: a folder that does not exist.

    Example:
        >>> objs = resolve_objects("novel:1000", seed=0)
        >>> len(objs), objs.obj_ids[:3]
        (1000, [1, 2, 3])
    """
    spec = spec.strip()
    key: tuple[Any, ...] = (spec, int(seed), units, repr(novel))
    folder_key = None
    if not spec.startswith("novel") and spec != "example":
        p = Path(spec).expanduser()
        folder_key = (str(p.resolve()), p.stat().st_mtime_ns) if p.exists() else None
    key = (*key, folder_key)
    hit = _RESOLVED.get(key)
    if hit is not None:
        _RESOLVED.move_to_end(key)
        return hit
    out = _resolve_objects(spec, seed, units=units, novel=novel)
    _RESOLVED[key] = out
    while len(_RESOLVED) > 4:
        _RESOLVED.popitem(last=False)
    return out


def _resolve_objects(spec: str, seed: int, *, units: Units, novel: NovelConfig | None) -> ObjectSet:
    m = re.fullmatch(r"novel:(\d+)(?:-(\d+))?(?:@(-?\d+))?", spec)
    if m:
        a, b, s = m.group(1), m.group(2), m.group(3)
        start, stop = (0, int(a)) if b is None else (int(a), int(b))
        if stop <= start:
            raise ValueError(f"object spec {spec!r} selects no objects")
        gen_seed = int(s) if s is not None else int(seed)
        cfg = novel or NovelConfig()

        def make(index: int) -> Callable[[], tuple[ObjectModel, np.ndarray, Any]]:
            def load() -> tuple[ObjectModel, np.ndarray, Any]:
                obj = novel_mesh(index, gen_seed, cfg)
                return obj.to_object_model(index + 1), obj.symmetries_discrete, obj.symmetries_continuous

            return load

        indices = range(start, stop)
        return ObjectSet(spec, [i + 1 for i in indices], [make(i) for i in indices])
    if spec == "example":
        from meshpose.mesh import example_object

        return ObjectSet(spec, [1], [lambda: (example_object(0), np.zeros((0, 4, 4)), ())])
    if spec.startswith("novel"):
        raise ValueError(f"malformed object spec {spec!r}: use novel:N, novel:A-B or novel:N@SEED")
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"object folder {folder} does not exist (or use a preset such as novel:100)")
    if not folder.is_dir():
        raise ValueError(f"--objects must be a folder or a preset, got the file {folder}")
    if (folder / "models").is_dir():
        folder, units = folder / "models", "mm"
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _MESH_EXTS)
    if not files:
        raise ValueError(f"object folder {folder} holds no meshes ({', '.join(_MESH_EXTS)})")
    bop_names = [re.fullmatch(r"obj_(\d+)", p.stem) for p in files]
    if all(bop_names):
        ids = [int(n.group(1)) for n in bop_names if n is not None]
    else:
        ids = list(range(1, len(files) + 1))
    info: dict[int, dict[str, Any]] = {}
    info_path = folder / "models_info.json"
    if info_path.is_file():
        info = {int(k): v for k, v in json.loads(info_path.read_text(encoding="utf-8")).items()}
        if info and all(bop_names):
            units = "mm"  # BOP models are millimetres

    def make_file(path: Path, obj_id: int) -> Callable[[], tuple[ObjectModel, np.ndarray, Any]]:
        def load() -> tuple[ObjectModel, np.ndarray, Any]:
            from meshpose.mesh import load_object_model

            entry = info.get(obj_id)
            sym = expand_symmetries(entry) if entry and "diameter" in entry else None
            model = load_object_model(path, obj_id, units=units, symmetries=sym, name=path.stem)
            discrete = np.zeros((0, 4, 4))
            continuous: tuple[Any, ...] = ()
            if entry:
                mats = []
                for M in entry.get("symmetries_discrete", []) or []:
                    A = np.asarray(M, dtype=np.float64).reshape(4, 4).copy()
                    A[:3, 3] *= 1e-3
                    mats.append(A)
                discrete = np.asarray(mats).reshape(-1, 4, 4)
                continuous = tuple(
                    (
                        tuple(float(x) for x in c["axis"]),
                        tuple(float(x) * 1e-3 for x in c.get("offset", (0.0, 0.0, 0.0))),
                    )
                    for c in entry.get("symmetries_continuous", []) or []
                )
            return model, discrete, continuous

        return load

    return ObjectSet(str(folder), ids, [make_file(p, i) for p, i in zip(files, ids, strict=True)])


# ----------------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """One synthetic image with its ground truth (what a training loader consumes).

    Args:
        rgb: ``(H, W, 3)`` uint8 colour image (sensor model applied).
        depth: ``(H, W)`` float32 depth in metres with sensor noise and holes (0 = missing), or ``None``.
        depth_clean: ``(H, W)`` float32 exact depth of every surface (objects, distractors, ground), 0 where
            nothing is.
        camera: the camera.
        obj_ids: ``(N,)`` object ids of the annotated instances.
        objects: the ``N`` annotated objects.
        poses: ``(N,)`` ``cam_from_obj`` poses.
        masks: ``(N, H, W)`` bool full silhouettes (clipped to the image).
        masks_visib: ``(N, H, W)`` bool visible parts.
        px_count_all: ``(N,)`` silhouette pixels including the part beyond the image border.
        bbox_obj: ``(N, 4)`` ``[x, y, w, h]`` of the whole silhouette (may extend beyond the image).
        visib_fract: ``(N,)`` visible pixels / ``px_count_all``.
        instance: ``(H, W)`` int32, ``1 + i`` where annotated instance ``i`` is visible, else 0.
        cam_from_world: the camera pose in the scene's world frame (z up).
        lighting: the light it was rendered with.
        info: ``placement``, ``renderer``, ``scene_seed``, timings (seconds) and other diagnostics.
    """

    rgb: np.ndarray
    depth: np.ndarray | None
    depth_clean: np.ndarray
    camera: Camera
    obj_ids: np.ndarray
    objects: tuple[ObjectModel, ...]
    poses: Pose
    masks: np.ndarray
    masks_visib: np.ndarray
    px_count_all: np.ndarray
    bbox_obj: np.ndarray
    visib_fract: np.ndarray
    instance: np.ndarray
    cam_from_world: Pose
    lighting: Lighting
    info: dict[str, Any] = field(default_factory=dict)

    def observation(self, *, with_depth: bool = True) -> Observation:
        """The sample as an :class:`~meshpose.types.Observation` (what a refiner sees)."""
        return Observation(rgb=self.rgb, camera=self.camera, depth=self.depth if with_depth else None)


@dataclass(frozen=True, eq=False)
class SceneLayout:
    """One arrangement of objects in a world frame (z up, metres).

    Args:
        objects: annotated objects first, then distractors.
        n_targets: how many of ``objects`` are annotated.
        world_from_obj: ``(K, 4, 4)`` object poses.
        placement: ``"plane"`` or ``"float"``.
        center: ``(3,)`` centre of the arrangement.
        radius: radius of a sphere about ``center`` holding every object.
        ground: the ground plane (an object with a texture, its pose is the identity) or ``None``.
        backgrounds: background images of the scene; each view shows a random crop of one.
        seed: the seed the layout was drawn from.
    """

    objects: tuple[ObjectModel, ...]
    n_targets: int
    world_from_obj: np.ndarray
    placement: str
    center: np.ndarray
    radius: float
    ground: ObjectModel | None
    backgrounds: tuple[np.ndarray, ...] = ()
    seed: int = 0


# ----------------------------------------------------------------------------------------------------------
# Stable poses and placement
# ----------------------------------------------------------------------------------------------------------
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
    import weakref

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


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _place_on_plane(objects: Sequence[ObjectModel], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Rest every object in a random stable pose with a random heading; footprints do not overlap."""
    rotations, footprints, lows, offsets = [], [], [], []
    for obj in objects:
        T, p = stable_poses(obj.render_mesh)
        k = int(rng.choice(len(p), p=p))
        R = _rot_z(rng.uniform(0, 2 * math.pi)) @ T[k, :3, :3]
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


def _place_floating(objects: Sequence[ObjectModel], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Random orientations; bounding spheres do not overlap, packed in a ball."""
    radii = np.array([_bounding_sphere(o)[1] for o in objects])
    centres_local = np.array([_bounding_sphere(o)[0] for o in objects])
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
        R = _random_rotation(rng)
        poses[i, :3, :3] = R
        poses[i, :3, 3] = centres[i] - R @ centres_local[i]
    radius = float(np.max(np.linalg.norm(centres, axis=1) + radii))
    return poses, np.zeros(3), radius


def _bounding_sphere(obj: ObjectModel) -> tuple[np.ndarray, float]:
    v = np.asarray(obj.render_mesh.vertices, dtype=np.float64)
    c = 0.5 * (v.min(0) + v.max(0))
    return c, float(np.linalg.norm(v - c, axis=1).max())


# ----------------------------------------------------------------------------------------------------------
# Backgrounds and the ground
# ----------------------------------------------------------------------------------------------------------
def random_background(width: int, height: int, rng: np.random.Generator, image_dir: str | None = None) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 background: an image-folder crop (when given, 70 %) or a procedural one
    (photograph-like dead leaves, colour noise, stripes, checkers, text patches), drawn at most 320 px wide
    and resized."""
    if image_dir is not None and rng.random() < 0.7:
        return random_image_crop(image_dir, width, height, rng)
    scale = min(1.0, 320.0 / max(width, height))
    w, h = max(16, round(width * scale)), max(16, round(height * scale))
    kinds = ["photo", "noise", "stripes", "checker", "text"]
    kind = kinds[int(rng.choice(len(kinds), p=[0.45, 0.15, 0.12, 0.13, 0.15]))]
    if kind == "photo":
        img = photo_like_texture(w, rng, height_px=h)
    else:
        side = max(w, h)
        img = texture_tile(kind, side, rng)[:h, :w]
        img = (img.astype(np.float32) * rng.uniform(0.5, 1.0) + rng.uniform(0, 60)).clip(0, 255).astype(np.uint8)
    if (w, h) != (width, height):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


def ground_plane(
    center: np.ndarray, half_size: float, rng: np.random.Generator, image_dir: str | None = None
) -> ObjectModel:
    """A textured square on ``z = 0`` around ``center`` (facing +z), tiled with a random texture."""
    kind = rng.choice(["photo", "noise", "stripes", "checker", "text", "photo"])
    px = 256
    if image_dir is not None and rng.random() < 0.6:
        tex = random_image_crop(image_dir, px, px, rng)
    elif kind == "photo":
        tex = photo_like_texture(px, rng)
    else:
        tex = texture_tile(str(kind), px, rng)
    tex = (tex.astype(np.float32) * rng.uniform(0.45, 1.0) + rng.uniform(0, 50)).clip(0, 255).astype(np.uint8)
    # Mirror the tile into a 2×2 block: it then repeats without seams.
    tex = np.concatenate([tex, tex[:, ::-1]], axis=1)
    tex = np.ascontiguousarray(np.concatenate([tex, tex[::-1]], axis=0))
    n = 4
    s = np.linspace(-half_size, half_size, n + 1)
    gx, gy = np.meshgrid(s, s, indexing="ij")
    v = np.column_stack([gx.ravel() + center[0], gy.ravel() + center[1], np.zeros(gx.size)])
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    tile_m = rng.uniform(0.3, 1.2)
    uv = v[:, :2] / tile_m
    from meshpose.mesh.procedural import _texture_visuals

    mesh = trimesh.Trimesh(v, f, visual=_texture_visuals(uv, tex), process=False)
    mesh.metadata["name"] = "ground"
    mesh.metadata["material"] = {
        "roughness": float(rng.uniform(0.4, 1.0)),
        "metallic": 0.0,
        "specular": float(rng.uniform(0.1, 0.5)),
    }
    return ObjectModel(
        obj_id=0,
        mesh=mesh,
        render_mesh=mesh,
        diameter=2 * math.sqrt(2) * half_size,
        symmetries=np.eye(4)[None],
        points=v[:4].copy(),
        name="ground",
    )


# ----------------------------------------------------------------------------------------------------------
# Sensor model
# ----------------------------------------------------------------------------------------------------------
def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo) if hi <= lo else float(rng.uniform(lo, hi))


def apply_color_sensor(img: np.ndarray, rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """Camera effects on a float RGB image in [0, 1]: colour jitter (hue, saturation, contrast, brightness),
    defocus and motion blur, signal-dependent noise, quantisation to uint8, gamma.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    out: np.ndarray = np.array(img, dtype=np.float32, copy=True)  # never modify the caller's image
    # Hue rotation about the grey axis and saturation scale act on the chroma; contrast about the mean grey
    # and brightness follow: one affine colour transform.
    hue, sat = _u(rng, cfg.hue), _u(rng, cfg.saturation)
    bright, contrast = _u(rng, cfg.brightness), _u(rng, cfg.contrast)
    luma = np.array([0.299, 0.587, 0.114])
    grey = np.outer(np.ones(3), luma)  # px -> (y, y, y)
    a = 2 * math.pi * hue
    axis = np.ones(3) / math.sqrt(3.0)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    Rh = np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * (K @ K)
    M = grey + sat * Rh @ (np.eye(3) - grey)
    mean = float(cv2.mean(out)[:3] @ luma)
    A = np.zeros((3, 4))
    A[:, :3] = bright * contrast * M
    A[:, 3] = bright * (1.0 - contrast) * mean
    if not np.allclose(A, np.hstack([np.eye(3), np.zeros((3, 1))])):
        out = cv2.transform(out, A.astype(np.float32))
    np.clip(out, 0.0, 1.0, out=out)
    if rng.random() < cfg.blur_probability:
        out = cv2.GaussianBlur(out, (0, 0), _u(rng, cfg.blur_sigma_px))
    if rng.random() < cfg.motion_blur_probability:
        length = max(2, round(_u(rng, cfg.motion_blur_px)))
        k = np.zeros((length, length), np.float32)
        angle = rng.uniform(0, math.pi)
        c = (length - 1) / 2
        for step in np.linspace(-c, c, 2 * length):
            k[round(c + step * math.sin(angle)), round(c + step * math.cos(angle))] = 1.0
        out = cv2.filter2D(out, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)
    sigma = _u(rng, cfg.noise_std)
    if sigma > 0:
        # Read noise plus shot noise (standard deviation growing with the square root of the signal).
        scale: np.ndarray = cv2.sqrt(out)
        scale *= 0.5 * sigma
        scale += 0.5 * sigma
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * scale
    out *= 255.0
    out += 0.5
    np.clip(out, 0.0, 255.0, out=out)
    u8: np.ndarray = out.astype(np.uint8)
    gamma = _u(rng, cfg.gamma)
    if gamma != 1.0:
        lut = np.clip(np.rint(((np.arange(256) / 255.0) ** gamma) * 255.0), 0, 255).astype(np.uint8)
        u8 = cv2.LUT(u8, lut)
    return np.ascontiguousarray(u8)


def _view_cosine(normal: np.ndarray, camera: Camera) -> np.ndarray:
    """``(H, W)`` |cos| of the angle between each pixel's viewing ray and the surface normal there."""
    h, w = normal.shape[:2]
    y = ((np.arange(h, dtype=np.float32) - camera.cy) / camera.fy)[:, None]
    x = (np.arange(w, dtype=np.float32)[None, :] - camera.cx - camera.K[0, 1] * y) / camera.fx
    n = np.asarray(normal, dtype=np.float32)
    dot = n[..., 0] * x + n[..., 1] * y + n[..., 2]
    return np.abs(dot) / np.sqrt(x * x + y * y + 1.0)


def apply_depth_sensor(
    depth: np.ndarray, normal: np.ndarray, camera: Camera, rng: np.random.Generator, cfg: SceneConfig
) -> np.ndarray:
    """A depth-camera image from exact depth: axial noise, edge and grazing-angle dropouts, blob holes, range.

    Args:
        depth: ``(H, W)`` exact depth (metres, 0 = nothing).
        normal: ``(H, W, 3)`` camera-frame normals.
        camera: the camera.
        rng: random generator.
        cfg: the sensor settings.

    Returns:
        ``(H, W)`` float32 depth in metres, 0 where missing.
    """
    src = np.ascontiguousarray(depth, dtype=np.float32)
    h, w = src.shape
    lo, hi = cfg.depth_range_m
    valid = (src > 0) & (src >= lo) & (src <= hi)
    d = src.copy()
    if cfg.depth_noise > 0:
        sigma: np.ndarray = (src - 0.4) ** 2
        sigma *= 0.0019 * cfg.depth_noise
        sigma += 0.0012 * cfg.depth_noise
        small = rng.standard_normal((max(2, h // 16), max(2, w // 16)), dtype=np.float32)
        noise: np.ndarray = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        noise *= 0.6
        noise += 0.8 * rng.standard_normal((h, w), dtype=np.float32)
        d += sigma * noise
    if cfg.depth_edge_dropout > 0:
        kernel = np.ones((3, 3), np.uint8)
        jump = np.maximum(cv2.dilate(src, kernel) - src, src - cv2.erode(src, kernel))
        edge = (jump > 0.02 + 0.02 * src).astype(np.uint8)
        edge = cv2.dilate(edge, kernel).astype(bool)
        valid &= ~(edge & (rng.random((h, w), dtype=np.float32) < cfg.depth_edge_dropout))
    if cfg.depth_grazing_deg < 90.0:
        valid &= _view_cosine(normal, camera) >= math.cos(math.radians(cfg.depth_grazing_deg))
    frac = _u(rng, cfg.depth_holes)
    if frac > 0:
        small = rng.random((max(2, h // 24), max(2, w // 24)), dtype=np.float32)
        holes: np.ndarray = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        holes += 0.15 * rng.random((h, w), dtype=np.float32)
        valid &= holes < np.quantile(holes[::5, ::5], 1.0 - frac)
    d[~valid] = 0.0
    return d


# ----------------------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------------------
def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray, roll: float) -> np.ndarray:
    """``cam_from_world`` (4×4) of an OpenCV camera at ``eye`` looking at ``target`` (image y along -up)."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(-up, z)  # image right = (image down) × forward, image down ≈ -up
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(np.array([1.0, 0.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R_wc = np.stack([x, y, z], axis=1)  # world_from_cam rotation
    c, s = math.cos(roll), math.sin(roll)
    R_roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    R_cw = R_roll @ R_wc.T
    M = np.eye(4)
    M[:3, :3] = R_cw
    M[:3, 3] = -R_cw @ eye
    return M


class SceneSampler:
    """Draws synthetic scenes and images of ``objects`` (for :func:`synthesize` and for training loaders).

    Args:
        objects: annotated objects to draw from (an :class:`ObjectSet` or any sequence of models).
        config: scene settings.
        renderer: ``"gl"`` (default), ``"photoreal"``, or a renderer object for colour. Masks of whole
            silhouettes always come from the GL renderer.
        distractors: unannotated objects to draw distractors from (``None``: none).

    Example:
        >>> sampler = SceneSampler(resolve_objects("novel:50"), SceneConfig(width=320, height=240))  # doctest: +SKIP
        >>> sample = sampler.sample(np.random.default_rng(0))                                        # doctest: +SKIP
        >>> sample.rgb.shape, sample.masks_visib.shape[1:]                                           # doctest: +SKIP
        ((240, 320, 3), (240, 320))
    """

    def __init__(
        self,
        objects: Sequence[ObjectModel],
        config: SceneConfig | None = None,
        *,
        renderer: Any = "gl",
        distractors: Sequence[ObjectModel] | None = None,
    ) -> None:
        if len(objects) == 0:
            raise ValueError("SceneSampler needs at least one object")
        self.objects = objects
        self.config = config or SceneConfig()
        self.distractors = distractors if distractors is not None and len(distractors) > 0 else None
        self._renderer_spec = renderer
        self._color_renderer: Any = None

    # --- renderers ----------------------------------------------------------------------------------------
    @property
    def gl(self) -> Any:
        from meshpose.render.gl import get_default_renderer

        return get_default_renderer()

    @property
    def color_renderer(self) -> Any:
        if self._color_renderer is None:
            spec = self._renderer_spec
            if spec == "gl" or spec is None:
                self._color_renderer = self.gl
            elif spec == "photoreal":
                from meshpose.render.photoreal import PhotorealRenderer

                self._color_renderer = PhotorealRenderer(
                    spp=self.config.spp,
                    max_depth=self.config.max_bounces,
                    variant=self.config.mitsuba_variant,
                    geometry=self.config.photoreal_geometry,
                )
            elif isinstance(spec, str):
                raise ValueError(f"renderer must be 'gl', 'photoreal' or a renderer object, got {spec!r}")
            else:
                self._color_renderer = spec
        return self._color_renderer

    @property
    def photoreal(self) -> bool:
        from meshpose.render.photoreal import PhotorealRenderer

        return isinstance(self.color_renderer, PhotorealRenderer)

    # --- scenes -------------------------------------------------------------------------------------------
    def layout(self, rng: np.random.Generator) -> SceneLayout:
        """Draw one arrangement: which objects, their world poses, the ground."""
        cfg = self.config
        seed = int(rng.integers(0, 2**31 - 1))
        n = int(rng.integers(cfg.objects_per_scene[0], cfg.objects_per_scene[1] + 1))
        if not cfg.repeat_objects:
            n = min(n, len(self.objects))
            picks = rng.choice(len(self.objects), size=n, replace=False)
        else:
            picks = rng.integers(0, len(self.objects), size=n)
        targets = [self.objects[int(i)] for i in np.sort(picks)]
        distractors: list[ObjectModel] = []
        if self.distractors is not None:
            nd = int(rng.integers(cfg.distractors_per_scene[0], cfg.distractors_per_scene[1] + 1))
            nd = min(nd, len(self.distractors))
            if nd:
                picks_d = rng.choice(len(self.distractors), size=nd, replace=False)
                distractors = [self.distractors[int(i)] for i in np.sort(picks_d)]
        all_objects = targets + distractors
        if cfg.placement == "mixed":
            placement = "plane" if rng.random() < cfg.plane_probability else "float"
        else:
            placement = cfg.placement
        if placement == "plane":
            poses, center, radius = _place_on_plane(all_objects, rng)
            ground = ground_plane(center, max(1.5, 8.0 * radius), rng, cfg.background_dir)
        else:
            poses, center, radius = _place_floating(all_objects, rng)
            ground = None
        bw = min(cfg.width, 400)
        bh = max(16, round(bw * cfg.height / cfg.width))
        backgrounds = tuple(random_background(bw, bh, rng, cfg.background_dir) for _ in range(2))
        return SceneLayout(
            objects=tuple(all_objects),
            n_targets=len(targets),
            world_from_obj=poses,
            placement=placement,
            center=center,
            radius=radius,
            ground=ground,
            backgrounds=backgrounds,
            seed=seed,
        )

    def camera_pose(self, layout: SceneLayout, rng: np.random.Generator) -> tuple[Camera, np.ndarray]:
        """Draw intrinsics and a ``cam_from_world`` looking at the arrangement (every object in front)."""
        cfg = self.config
        w, h = cfg.width, cfg.height
        for _ in range(100):
            fov = math.radians(_u(rng, cfg.fov_deg))
            fx = w / 2.0 / math.tan(fov / 2.0)
            cx = (w - 1) / 2.0 + rng.uniform(-1, 1) * cfg.principal_jitter * w
            cy = (h - 1) / 2.0 + rng.uniform(-1, 1) * cfg.principal_jitter * h
            camera = Camera.from_fxfycxcy(fx, fx, cx, cy, width=w, height=h)
            fill = _u(rng, cfg.fill)
            distance = layout.radius * fx / (fill * min(w, h) / 2.0)
            distance = max(distance, layout.radius + 0.08)
            target = layout.center + rng.normal(size=3) * cfg.target_jitter * layout.radius / math.sqrt(3.0)
            if layout.placement == "plane":
                elev = math.radians(_u(rng, cfg.elevation_deg))
                azim = rng.uniform(0, 2 * math.pi)
                direction = np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)])
                up = np.array([0.0, 0.0, 1.0])
                roll = math.radians(_u(rng, cfg.roll_deg))
            else:
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                up = rng.normal(size=3)
                roll = rng.uniform(-math.pi, math.pi)
            eye = target + direction * distance
            cam_from_world = _look_at(eye, target, up, roll)
            # Every object fully in front of the camera (a margin of 5 cm).
            ok = True
            for obj, M in zip(layout.objects, layout.world_from_obj, strict=True):
                c, r = _bounding_sphere(obj)
                zc = (cam_from_world[:3, :3] @ (M[:3, :3] @ c + M[:3, 3]) + cam_from_world[:3, 3])[2]
                if zc - r < 0.05:
                    ok = False
                    break
            if ok:
                return camera, cam_from_world
        raise RuntimeError("could not place a camera with every object in front of it")

    def lighting(self, cam_from_world: np.ndarray, rng: np.random.Generator, placement: str) -> Lighting:
        """A random light (direction drawn in the world: from above for plane scenes)."""
        cfg = self.config
        d = rng.normal(size=3)
        if placement == "plane":
            d[2] = abs(d[2]) + 0.5
        d /= np.linalg.norm(d)
        d_cam = cam_from_world[:3, :3] @ d
        if d_cam[2] > 0.2:  # a light far behind the objects would leave only ambient: bring it round
            d_cam[2] = -d_cam[2]
        tint = np.clip(1.0 + rng.uniform(-cfg.light_tint, cfg.light_tint, 3), 0.5, 1.5)
        tint = tint / tint.mean()
        return Lighting(
            ambient=_u(rng, cfg.ambient),
            diffuse=_u(rng, cfg.diffuse),
            direction=tuple(float(x) for x in d_cam),  # type: ignore[arg-type]
            specular=_u(rng, cfg.specular),
            shininess=float(rng.uniform(5.0, 60.0)),
            color=tuple(float(x) for x in tint),  # type: ignore[arg-type]
        )

    # --- images -------------------------------------------------------------------------------------------
    def view(self, layout: SceneLayout, rng: np.random.Generator) -> SyntheticSample:
        """Render one random view of ``layout``."""
        cfg = self.config
        t0 = time.perf_counter()
        camera, cam_from_world = self.camera_pose(layout, rng)
        light = self.lighting(cam_from_world, rng, layout.placement)
        background = self._background(layout, camera, rng)
        sensor_seed = int(rng.integers(0, 2**31 - 1))
        render_seed = int(rng.integers(0, 2**31 - 1))

        scene_objects = list(layout.objects)
        world_from_obj = list(layout.world_from_obj)
        if layout.ground is not None:
            scene_objects.append(layout.ground)
            world_from_obj.append(np.eye(4))
        cam_from_obj = cam_from_world[None] @ np.asarray(world_from_obj)
        poses_all = Pose(cam_from_obj[:, :3, :3], cam_from_obj[:, :3, 3])

        if self.photoreal:
            env = cv2.resize(background, (128, 64), interpolation=cv2.INTER_AREA)
            out = self.color_renderer.render(
                scene_objects, poses_all, camera, lighting=light, seed=render_seed, environment=env
            )
        else:
            out = self.color_renderer.render(scene_objects, poses_all, camera, lighting=light)
        t_render = time.perf_counter()
        n = layout.n_targets
        instance_all = out.instance[0]
        rgb = out.rgb[0].astype(np.float32)
        hit = instance_all > 0
        if layout.ground is not None and not self.photoreal:
            rgb = self._contact_shadow(rgb, instance_all, len(scene_objects), light, rng)
        bg = background.astype(np.float32) / 255.0
        rgb = np.where(hit[..., None], rgb, bg)

        poses = poses_all[:n]
        masks_visib = np.stack([instance_all == i + 1 for i in range(n)]) if n else np.zeros((0, *hit.shape), bool)
        masks, px_all, bbox_obj = self.silhouettes(list(layout.objects[:n]), poses, camera)
        masks_visib &= masks
        px_visib = masks_visib.reshape(n, -1).sum(1)
        visib = np.where(px_all > 0, px_visib / np.maximum(px_all, 1), 0.0)
        t_masks = time.perf_counter()

        sensor_rng = np.random.default_rng(sensor_seed)
        rgb8 = apply_color_sensor(rgb, sensor_rng, cfg)
        depth_clean = np.ascontiguousarray(out.depth[0], dtype=np.float32)
        depth = apply_depth_sensor(depth_clean, out.normal[0], camera, sensor_rng, cfg) if cfg.depth else None
        instance = np.zeros(hit.shape, np.int32)
        for i in range(n):
            instance[masks_visib[i]] = i + 1
        t_end = time.perf_counter()
        R_cw, t_cw = cam_from_world[:3, :3], cam_from_world[:3, 3]
        return SyntheticSample(
            rgb=rgb8,
            depth=depth,
            depth_clean=depth_clean,
            camera=camera,
            obj_ids=np.array([o.obj_id for o in layout.objects[:n]], dtype=np.int64),
            objects=tuple(layout.objects[:n]),
            poses=poses,
            masks=masks,
            masks_visib=masks_visib,
            px_count_all=px_all,
            bbox_obj=bbox_obj,
            visib_fract=visib,
            instance=instance,
            cam_from_world=Pose(R_cw, t_cw),
            lighting=light,
            info={
                "placement": layout.placement,
                "renderer": "photoreal" if self.photoreal else "gl",
                "scene_seed": layout.seed,
                "n_distractors": len(layout.objects) - n,
                "timings": {
                    "render": t_render - t0,
                    "masks": t_masks - t_render,
                    "sensor": t_end - t_masks,
                    "total": t_end - t0,
                    **{f"renderer_{k}": v for k, v in out.timings.items()},
                },
            },
        )

    def _background(self, layout: SceneLayout, camera: Camera, rng: np.random.Generator) -> np.ndarray:
        """A random crop (flipped at random) of one of the scene's backgrounds, at the image size."""
        if not layout.backgrounds:
            return random_background(camera.width, camera.height, rng, self.config.background_dir)
        src = layout.backgrounds[int(rng.integers(0, len(layout.backgrounds)))]
        h, w = src.shape[:2]
        frac = rng.uniform(0.6, 1.0)
        cw, ch = max(8, round(w * frac)), max(8, round(h * frac))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = src[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1]
        return cv2.resize(np.ascontiguousarray(crop), (camera.width, camera.height), interpolation=cv2.INTER_LINEAR)

    def sample(self, rng: np.random.Generator) -> SyntheticSample:
        """One image of a fresh scene (what a training loader calls; the scene is drawn anew every time)."""
        return self.view(self.layout(rng), rng)

    def samples(self, seed: int = 0, *, views_per_scene: int = 1) -> Iterator[SyntheticSample]:
        """An endless stream of samples: ``views_per_scene`` views of each scene (cheaper than new scenes)."""
        rng = np.random.default_rng(seed)
        while True:
            layout = self.layout(rng)
            for _ in range(views_per_scene):
                yield self.view(layout, rng)

    def silhouettes(
        self, objects: Sequence[ObjectModel], poses: Pose, camera: Camera
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full silhouettes of each object alone (GL), also beyond the image border
        (:func:`~meshpose.render.base.full_silhouettes`)."""
        return full_silhouettes(self.gl, objects, poses, camera)

    @staticmethod
    def _contact_shadow(
        rgb: np.ndarray, instance: np.ndarray, n_scene: int, light: Lighting, rng: np.random.Generator
    ) -> np.ndarray:
        """Darken the ground around and under the objects (a soft shadow cast away from the light)."""
        ground = instance == n_scene  # the ground is the last object
        occ = ((instance > 0) & ~ground).astype(np.float32)
        if not occ.any():
            return rgb
        h, w = occ.shape
        # At half resolution: the shadow is blurry anyway, and the blur is 4× cheaper.
        small = cv2.resize(occ, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        d = light.unit_direction
        shift = np.array([-d[0], -d[1]]) * 0.01 * max(h, w)
        M = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], dtype=np.float32)
        small = cv2.warpAffine(small, M, (small.shape[1], small.shape[0]))
        sigma = 0.006 * max(h, w) * rng.uniform(0.6, 1.6)
        shadow = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma), (w, h), interpolation=cv2.INTER_LINEAR)
        strength = rng.uniform(0.15, 0.55)
        factor = 1.0 - strength * np.clip(shadow * 1.5, 0, 1)
        return np.where(ground[..., None], rgb * factor[..., None], rgb)


class SyntheticStream(torch.utils.data.IterableDataset):
    """An endless stream of :class:`SyntheticSample` for a ``torch.utils.data.DataLoader`` (nothing written).

    Each worker process draws its own stream, seeded by ``(seed, worker id)``, with its own GL context; pass
    ``collate_fn=list`` (or your own) since samples are dataclasses of numpy arrays. Use
    ``multiprocessing_context="spawn"`` when the main process has rendered with GL before: a forked child of a
    process with a live EGL context (llvmpipe threads) can hang.

    Args:
        objects: an object spec for :func:`resolve_objects` or a sequence of object models.
        config: scene settings.
        seed: base seed.
        views_per_scene: views drawn from each scene before a new one is laid out.
        distractors: distractor source (a spec, a sequence of models, or ``None`` for the default set).

    Example:
        >>> from torch.utils.data import DataLoader                                          # doctest: +SKIP
        >>> loader = DataLoader(SyntheticStream("novel:1000"), batch_size=8, num_workers=2,  # doctest: +SKIP
        ...                     collate_fn=list, multiprocessing_context="spawn")
    """

    def __init__(
        self,
        objects: str | Sequence[ObjectModel],
        config: SceneConfig | None = None,
        *,
        seed: int = 0,
        views_per_scene: int = 4,
        distractors: str | Sequence[ObjectModel] | None = None,
    ) -> None:
        super().__init__()
        self.objects = objects
        self.config = config or SceneConfig()
        self.seed = int(seed)
        self.views_per_scene = int(views_per_scene)
        self.distractors = distractors

    def __iter__(self) -> Iterator[SyntheticSample]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else int(info.id)
        objs = resolve_objects(self.objects, self.seed) if isinstance(self.objects, str) else self.objects
        if self.distractors is None:
            distractors: Sequence[ObjectModel] | None = default_distractors(self.seed)
        elif isinstance(self.distractors, str):
            distractors = resolve_objects(self.distractors, self.seed + 1)
        else:
            distractors = self.distractors
        sampler = SceneSampler(objs, self.config, distractors=distractors)
        seed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, worker, 0x57]).generate_state(1)[0])
        yield from sampler.samples(seed, views_per_scene=self.views_per_scene)


# ----------------------------------------------------------------------------------------------------------
# Writing datasets
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` did.

    Args:
        out: the dataset folder.
        split: the split written.
        images_written: images rendered and written by this call.
        images_skipped: images of scenes that were already complete (resumed).
        scenes_written: scenes written by this call.
        objects_written: object models written by this call.
        seconds: wall time.
        images_per_second: rendering + writing throughput of this call.
    """

    out: Path
    split: str
    images_written: int
    images_skipped: int
    scenes_written: int
    objects_written: int
    seconds: float
    images_per_second: float


def _objects_key(config: SynthConfig) -> dict[str, Any]:
    """The settings that decide the objects (and so ``models/``): equal for every split of one dataset."""
    spec = config.objects.strip()
    pinned = "@" in spec or not spec.startswith("novel")
    return _jsonable(
        {
            "objects": spec,
            "seed": None if pinned else int(config.seed),
            "units": config.units,
            "novel": dataclasses.asdict(config.novel) if spec.startswith("novel") else None,
        }
    )


def _split_key(config: SynthConfig) -> dict[str, Any]:
    """The settings that decide a split's images (``scenes`` and ``first_scene_id`` may grow on resume)."""
    data = dataclasses.asdict(config)
    for k in ("out", "overwrite", "writer_threads", "scenes", "first_scene_id", "novel", "objects", "units"):
        data.pop(k, None)
    data["rgb_ext"] = config.image_ext
    return _jsonable(data)


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _check_and_record_config(root: Path, config: SynthConfig) -> None:
    """Refuse to mix objects or image settings in one dataset folder; record the settings of this run."""
    path = root / "synth_config.json"
    record: dict[str, Any] = {"format": _FORMAT_VERSION, "objects": _objects_key(config), "splits": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old.get("objects") not in (None, record["objects"]):
            raise ValueError(f"{root} holds synthetic data of other objects ({old.get('objects')}); use another folder")
        record["splits"] = dict(old.get("splits", {}))
        previous = record["splits"].get(config.split)
        if previous is not None and previous != _split_key(config) and not config.overwrite:
            raise ValueError(
                f"{root}/{config.split} was made with other settings; use another split or folder, or overwrite=True"
            )
    record["splits"][config.split] = _split_key(config)
    write_json_atomic(path, record)


def _scene_complete(path: Path, n_images: int) -> bool:
    try:
        gt = json.loads((path / "scene_gt.json").read_text(encoding="utf-8"))
        cam = json.loads((path / "scene_camera.json").read_text(encoding="utf-8"))
        info = json.loads((path / "scene_gt_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return len(gt) == len(cam) == len(info) == n_images


def clear_caches() -> None:
    """Forget the object sets of :func:`resolve_objects` and the cached stable poses (they are rebuilt)."""
    _RESOLVED.clear()
    with _STABLE_LOCK:
        _STABLE_CACHE.clear()


def default_distractors(seed: int, count: int = 64) -> ObjectSet:
    """Generated distractor objects from a seed derived from ``seed`` (never the targets' stream)."""
    return resolve_objects(f"novel:{count}@{(int(seed) * 7919 + 0x0D15) % (2**31 - 1)}", 0)


def synthesize(config: SynthConfig, progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write (or resume) a synthetic BOP dataset.

    Layout of ``config.out``: ``models/obj_XXXXXX.ply`` (millimetres; textured objects keep their texture as
    ``obj_XXXXXX.png`` with ``texture_u/texture_v``) and ``models/models_info.json`` (diameter, extent and
    symmetries), ``camera.json`` (nominal intrinsics and the image size), ``<split>/<scene_id:06d>/`` with
    ``rgb/``, ``depth/`` (16-bit PNG, ``depth_scale`` mm), ``mask/``, ``mask_visib/``, ``scene_camera.json``
    (``cam_K``, ``depth_scale``, ``cam_R_w2c``, ``cam_t_w2c``), ``scene_gt.json``, ``scene_gt_info.json``
    (``bbox_obj``, ``bbox_visib``, ``px_count_all``, ``px_count_valid``, ``px_count_visib``, ``visib_fract``),
    ``test_targets_bop19.json`` for test splits, and ``synth_config.json`` (the settings; a resumed run must
    use the same ones).

    Scene ``s`` depends only on ``(config.seed, s)`` and the settings, so a re-run skips the complete scenes
    and redoes an interrupted one identically.

    Args:
        config: what to write.
        progress: called as ``progress(images_done, images_total)`` after every image (skipped ones included).

    Returns:
        A :class:`SynthResult`.

    Raises:
        ValueError: the folder holds a dataset made with other settings (pass ``overwrite=True`` to replace
            its scenes anyway).
    """
    t_start = time.perf_counter()
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    _check_and_record_config(root, config)

    objects = resolve_objects(config.objects, config.seed, units=config.units, novel=config.novel)
    if config.distractors is None:
        distractors: Sequence[ObjectModel] | None = default_distractors(config.seed)
    elif config.distractors == "none":
        distractors = None
    else:
        distractors = resolve_objects(config.distractors, config.seed + 1, units=config.units, novel=config.novel)
    sampler = SceneSampler(objects, config.scene, renderer=config.renderer, distractors=distractors)

    scfg = config.scene
    fov_mid = math.radians(0.5 * (scfg.fov_deg[0] + scfg.fov_deg[1]))
    f_nom = scfg.width / 2.0 / math.tan(fov_mid / 2.0)
    cam_nominal = {
        "fx": f_nom,
        "fy": f_nom,
        "cx": (scfg.width - 1) / 2.0,
        "cy": (scfg.height - 1) / 2.0,
        "width": scfg.width,
        "height": scfg.height,
        "depth_scale": float(config.depth_scale_mm),
    }
    write_json_atomic(root / "camera.json", cam_nominal)

    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    info_path = models_dir / "models_info.json"
    models_info: dict[str, Any] = {}
    if info_path.is_file():
        models_info = json.loads(info_path.read_text(encoding="utf-8"))
    objects_written = 0

    def ensure_models(obj_ids: Sequence[int]) -> None:
        nonlocal objects_written
        changed = False
        for oid in sorted(set(int(o) for o in obj_ids)):
            ply = models_dir / f"obj_{oid:06d}.ply"
            if str(oid) in models_info and ply.is_file():
                continue
            write_model_ply(ply, objects.by_id(oid).mesh, keep_texture=True)
            models_info[str(oid)] = objects.models_info(oid)
            objects_written += 1
            changed = True
        if changed or not info_path.is_file():
            ordered = {str(k): models_info[str(k)] for k in sorted(int(x) for x in models_info)}
            write_json_atomic(info_path, ordered)

    write_all = config.write_all_models if config.write_all_models is not None else len(objects) <= 100
    if write_all:
        ensure_models(objects.obj_ids)

    total = config.scenes * config.images_per_scene
    done = written = skipped = scenes_written = 0
    pool = ThreadPoolExecutor(max_workers=max(1, config.writer_threads), thread_name_prefix="synth-writer")
    try:
        for s in range(config.first_scene_id, config.first_scene_id + config.scenes):
            writer = SceneWriter(
                root,
                config.split,
                s,
                depth_scale_mm=config.depth_scale_mm,
                rgb_ext=config.image_ext,
                png_compress_level=1,
            )
            if not config.overwrite and _scene_complete(writer.path, config.images_per_scene):
                done += config.images_per_scene
                skipped += config.images_per_scene
                if progress is not None:
                    progress(done, total)
                continue
            scene_rng = np.random.default_rng(np.random.SeedSequence([int(config.seed) & 0xFFFFFFFF, s, 0x5C]))
            layout = sampler.layout(scene_rng)
            ensure_models([o.obj_id for o in layout.objects[: layout.n_targets]])
            pending: list[Future[None]] = []
            for im_id in range(config.images_per_scene):
                im_rng = np.random.default_rng(np.random.SeedSequence([int(config.seed) & 0xFFFFFFFF, s, im_id, 0x1A]))
                sample = sampler.view(layout, im_rng)
                pending.append(pool.submit(_write_sample, writer, im_id, sample))
                # Keep at most a few images in flight (memory), and surface writer errors early.
                while len(pending) > 2 * max(1, config.writer_threads):
                    pending.pop(0).result()
                done += 1
                written += 1
                if progress is not None:
                    progress(done, total)
            for fut in pending:
                fut.result()
            writer.close()
            scenes_written += 1
    finally:
        pool.shutdown(wait=True)
    if config.targets:
        write_targets(root, config.split, min_visib=config.min_target_visib)
    seconds = time.perf_counter() - t_start
    return SynthResult(
        out=root,
        split=config.split,
        images_written=written,
        images_skipped=skipped,
        scenes_written=scenes_written,
        objects_written=objects_written,
        seconds=seconds,
        images_per_second=written / seconds if seconds > 0 else 0.0,
    )


def _write_sample(writer: SceneWriter, im_id: int, sample: SyntheticSample) -> None:
    R_cw, t_cw = sample.cam_from_world.numpy()
    n = len(sample.obj_ids)
    extra = []
    for i in range(n):
        valid = int((sample.masks[i] & (sample.depth > 0)).sum()) if sample.depth is not None else 0
        entry: dict[str, Any] = {
            "px_count_all": int(sample.px_count_all[i]),
            "bbox_obj": [int(x) for x in sample.bbox_obj[i]],
            "visib_fract": float(sample.visib_fract[i]),
        }
        if sample.depth is not None:
            entry["px_count_valid"] = valid
        extra.append(entry)
    writer.add_image(
        im_id,
        sample.camera,
        sample.rgb,
        [int(o) for o in sample.obj_ids],
        sample.poses,
        depth=sample.depth,
        masks=sample.masks,
        masks_visib=sample.masks_visib,
        camera_extra={
            "cam_R_w2c": [float(x) for x in R_cw.reshape(9)],
            "cam_t_w2c": [float(x) * 1e3 for x in t_cw.reshape(3)],
        },
        gt_info_extra=extra,
    )


def write_targets(root: str | os.PathLike[str], split: str, *, min_visib: float = 0.1) -> Path:
    """Write ``test_targets_bop19.json`` listing, per image and object, the instances with
    ``visib_fract ≥ min_visib`` of every scene of ``split`` (as the BOP test sets do)."""
    root = Path(root)
    targets: list[dict[str, int]] = []
    for scene in sorted(p for p in (root / split).iterdir() if p.is_dir() and p.name.isdigit()):
        try:
            gt = json.loads((scene / "scene_gt.json").read_text(encoding="utf-8"))
            info = json.loads((scene / "scene_gt_info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for im_key in sorted(gt, key=int):
            counts: dict[int, int] = {}
            for g, inf in zip(gt[im_key], info.get(im_key, []), strict=False):
                if float(inf.get("visib_fract", 0.0)) >= min_visib:
                    counts[int(g["obj_id"])] = counts.get(int(g["obj_id"]), 0) + 1
            targets.extend(
                {"im_id": int(im_key), "inst_count": c, "obj_id": o, "scene_id": int(scene.name)}
                for o, c in sorted(counts.items())
            )
    path = root / "test_targets_bop19.json"
    write_json_atomic(path, targets, indent=None)
    return path
