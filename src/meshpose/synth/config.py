"""Settings of synthetic scenes (:class:`SceneConfig`) and of a ``meshpose synth`` run (:class:`SynthConfig`),
validated when made."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from meshpose.mesh.load import Units
from meshpose.synth.novel import NovelConfig

__all__ = ["SceneConfig", "SynthConfig", "sample_range"]

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
        objects: object source, see :func:`~meshpose.synth.sources.resolve_objects` (``"novel:1000"``, a folder
            of meshes, a BOP dataset or its ``models/`` folder, ``"example"``).
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
        """The colour image extension: ``rgb_ext``, else ``.jpg`` for ``train*`` splits and ``.png`` otherwise."""
        if self.rgb_ext is not None:
            return self.rgb_ext
        return ".jpg" if self.split.startswith("train") else ".png"

    @property
    def targets(self) -> bool:
        """Whether ``test_targets_bop19.json`` is written: ``write_targets``, else for ``test*`` splits."""
        return self.split.startswith("test") if self.write_targets is None else self.write_targets


def sample_range(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    """A value drawn uniformly from a :class:`SceneConfig` range ``(lo, hi)`` (``lo`` itself, drawing nothing,
    when the range is empty)."""
    lo, hi = lo_hi
    return float(lo) if hi <= lo else float(rng.uniform(lo, hi))
