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

Entry points: :func:`synthesize` (``meshpose synth``), :class:`SceneSampler` and :class:`SyntheticStream`
(on-the-fly samples for training), :func:`resolve_objects` (``--objects DIR_OR_PRESET``), :func:`novel_mesh`
(generated objects).

Modules, by concern:

* :mod:`~meshpose.synth.config` — :class:`SceneConfig` (how scenes and images look), :class:`SynthConfig`;
* :mod:`~meshpose.synth.sources` — object sources (``novel:N``, ``example``, mesh folders, BOP datasets);
* :mod:`~meshpose.synth.novel` (with :mod:`~meshpose.synth.novel_builder`, :mod:`~meshpose.synth.shapes`
  and :mod:`~meshpose.synth.textures`) — generated objects, their exact symmetries and their textures;
* :mod:`~meshpose.synth.placement` — stable poses on a plane, floating arrangements;
* :mod:`~meshpose.synth.backgrounds` — backgrounds and the textured ground;
* :mod:`~meshpose.synth.sensor` — the colour and depth sensor models;
* :mod:`~meshpose.synth.sampler` / :mod:`~meshpose.synth.stream` — scenes and views, a torch stream;
* :mod:`~meshpose.synth.dataset` — writing BOP datasets (through :mod:`meshpose.io.bop_write`; millimetres
  are written there, never here).

Importing this package renders nothing and creates no GL context; Mitsuba is imported only when a photoreal
renderer is first used.
"""

from meshpose.synth.backgrounds import ground_plane, random_background
from meshpose.synth.config import SceneConfig, SynthConfig
from meshpose.synth.dataset import SynthResult, synthesize, write_targets
from meshpose.synth.novel import (
    APPEARANCES,
    FAMILIES,
    SYMMETRIC_FAMILIES,
    NovelConfig,
    NovelObject,
    novel_mesh,
    novel_object,
)
from meshpose.synth.placement import stable_poses
from meshpose.synth.sampler import SceneLayout, SceneSampler, SyntheticSample
from meshpose.synth.sensor import apply_color_sensor, apply_depth_sensor
from meshpose.synth.sources import ObjectSet, clear_caches, default_distractors, resolve_objects
from meshpose.synth.stream import SyntheticStream
from meshpose.synth.textures import TEXTURE_KINDS, photo_like_texture, text_texture, texture_tile

__all__ = [
    "APPEARANCES",
    "FAMILIES",
    "SYMMETRIC_FAMILIES",
    "TEXTURE_KINDS",
    "NovelConfig",
    "NovelObject",
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
    "novel_mesh",
    "novel_object",
    "photo_like_texture",
    "random_background",
    "resolve_objects",
    "stable_poses",
    "synthesize",
    "text_texture",
    "texture_tile",
    "write_targets",
]
