"""Small deterministic, richly textured objects made in code: for the demo and for every module's tests.

Nothing is downloaded or read from disk. Every function is deterministic for a given ``seed`` (numpy PCG64
generators only). Textures have strong *luminance* contrast at several scales (dense optical flow such as
OpenCV's DIS works on grey levels) and differ between sides, so the pose of an object is well defined from
its appearance.

Meshes are "watertight-ish": each part is a closed surface once vertices at the same position are merged
(:func:`~meshpose.mesh.simplify.merge_positions`); the vertex arrays themselves are split where UVs or normals
differ (texture seams and sharp edges), as textured meshes are. Composite objects are unions of overlapping
closed parts (the hidden inner faces are never seen by a renderer).

The building blocks (:func:`fractal_noise`, :func:`hsv_to_rgb`, :func:`decorate_texture`, :func:`texture_atlas`,
:func:`texture_visuals`, :func:`box_part`, :func:`box_projection`, :func:`polyline`, :func:`color_field`,
:data:`BOX_SIDES`) are shared with the generator of novel objects, :mod:`meshpose.synth.novel`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from meshpose.mesh.model import make_object_model
from meshpose.mesh.sample import sample_surface_faces
from meshpose.mesh.simplify import corner_normals, merge_positions, split_corners
from meshpose.types import ObjectModel

__all__ = [
    "BOX_SIDES",
    "ShapeKind",
    "TextureKind",
    "box_part",
    "box_projection",
    "color_field",
    "decorate_texture",
    "example_mesh",
    "example_object",
    "fractal_noise",
    "hsv_to_rgb",
    "outer_surface_points",
    "polyline",
    "texture_atlas",
    "texture_pattern",
    "texture_visuals",
    "textured_box",
    "vertex_colored_mesh",
]

TextureKind = Literal["checker", "noise", "stripes"]
ShapeKind = Literal["icosphere", "cylinder", "capsule", "cone", "torus", "box"]

_SHARP_ANGLE_DEG = 45.0


# ----------------------------------------------------------------------------------------------------------
# Texture images
# ----------------------------------------------------------------------------------------------------------
def texture_pattern(kind: TextureKind, size_px: int = 256, seed: int = 0) -> np.ndarray:
    """A square, colourful, high-contrast texture pattern.

    Args:
        kind: ``"checker"`` (random-colour checkerboard with alternating bright/dark cells), ``"noise"``
            (multi-octave colour value noise) or ``"stripes"`` (stripes of varying width and colour crossed
            by a second, coarser set); all three carry fine multi-octave noise so that no region is flat.
        size_px: side of the image in pixels (≥ 16).
        seed: random seed.

    Returns:
        ``(size_px, size_px, 3)`` uint8 RGB image.
    """
    if size_px < 16:
        raise ValueError(f"texture size must be at least 16 px, got {size_px}")
    rng = np.random.default_rng(seed)
    n = size_px
    if kind == "checker":
        cells = int(rng.integers(5, 9))
        hues = rng.random((cells, cells))
        sat = rng.uniform(0.45, 1.0, (cells, cells))
        ij = np.add.outer(np.arange(cells), np.arange(cells))
        val = np.where(ij % 2 == 0, rng.uniform(0.8, 1.0, (cells, cells)), rng.uniform(0.15, 0.4, (cells, cells)))
        grid = hsv_to_rgb(np.stack([hues, sat, val], axis=-1))
        idx = np.minimum((np.arange(n) * cells) // n, cells - 1)
        base = grid[idx[:, None], idx[None, :]]
        detail = 0.25
    elif kind == "noise":
        base = np.stack([fractal_noise(rng, n, octaves=(3, 6, 12, 24)) for _ in range(3)], axis=-1)
        base = _stretch(base)
        detail = 0.2
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:n, 0:n] / n
        s = xx * np.cos(angle) + yy * np.sin(angle)
        t = -xx * np.sin(angle) + yy * np.cos(angle)
        edges = np.cumsum(rng.uniform(0.02, 0.09, 64))
        band = np.searchsorted(edges, s * 1.5 + 0.3)
        value = np.where(np.arange(65) % 2 == 0, rng.uniform(0.75, 1.0, 65), rng.uniform(0.1, 0.4, 65))
        colors = hsv_to_rgb(np.stack([rng.random(65), rng.uniform(0.5, 1, 65), value], -1))
        base = colors[band]
        cross = (np.floor(t * rng.integers(3, 7)) % 2)[..., None]
        coarse = fractal_noise(rng, n, octaves=(2, 4))[..., None]
        base = base * (0.45 + 0.55 * cross) * (0.4 + 0.6 * coarse)
        detail = 0.2
    else:
        raise ValueError(f"unknown texture kind {kind!r}; use 'checker', 'noise' or 'stripes'")
    fine = fractal_noise(rng, n, octaves=(16, 32, 64))[..., None]
    img = np.clip(base * (1.0 - detail) + detail * fine, 0.0, 1.0)
    return np.asarray(np.rint(img * 255), dtype=np.uint8)


def fractal_noise(rng: np.random.Generator, n: int, octaves: Sequence[int]) -> np.ndarray:
    """``(n, n)`` value noise in [0, 1]: bicubic-upsampled random grids, finer octaves weaker."""
    out = np.zeros((n, n))
    total = 0.0
    for i, cells in enumerate(octaves):
        grid = rng.integers(0, 256, (cells + 1, cells + 1), dtype=np.uint8)
        up = Image.fromarray(grid, mode="L").resize((n, n), Image.Resampling.BICUBIC)
        weight = 0.7**i
        out += weight * np.asarray(up, dtype=np.float64) / 255.0
        total += weight
    return _stretch(out / total)


def _stretch(x: np.ndarray) -> np.ndarray:
    """Contrast-stretch to [0, 1] between the 2nd and 98th percentiles (per channel for 3-D arrays)."""
    axes = (0, 1)
    lo = np.percentile(x, 2, axis=axes, keepdims=True)
    hi = np.percentile(x, 98, axis=axes, keepdims=True)
    return np.asarray(np.clip((x - lo) / np.maximum(hi - lo, 1e-9), 0.0, 1.0))


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``(..., 3)`` HSV in [0, 1] (hue as a fraction of a turn) to ``(..., 3)`` RGB in [0, 1]."""
    h, s, v = hsv[..., 0] * 6.0, hsv[..., 1], hsv[..., 2]
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [np.stack(c, axis=-1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0
    )
    return np.asarray(np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0])


def decorate_texture(img: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Draw ``count`` random high-contrast landmarks (discs, rectangles, bars) onto an RGB uint8 image."""
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    n = img.shape[0]
    for _ in range(count):
        kind = int(rng.integers(0, 3))
        x, y = rng.uniform(0, n, 2)
        r = rng.uniform(0.03, 0.12) * n
        bright = bool(rng.integers(0, 2))
        hsv = np.array([rng.random(), rng.uniform(0.6, 1.0), 0.95 if bright else 0.2])
        fill = tuple(int(c) for c in np.rint(hsv_to_rgb(hsv) * 255))
        outline = (0, 0, 0) if bright else (255, 255, 255)
        width = max(1, n // 100)
        if kind == 0:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=width)
        elif kind == 1:
            w, h = r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)
            draw.rectangle([x - w, y - h, x + w, y + h], fill=fill, outline=outline, width=width)
        else:
            dx, dy = r * np.cos(rng.uniform(0, np.pi)), r * np.sin(rng.uniform(0, np.pi))
            draw.line([x - dx, y - dy, x + dx, y + dy], fill=fill, width=max(2, int(r / 4)))
    return np.asarray(pil)


def texture_atlas(tiles: Sequence[np.ndarray], cols: int) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """Pack equal square tiles into an atlas; returns the image and each tile's UV rectangle
    ``(u0, v0, u1, v1)`` (v up), shrunk by one texel so bilinear filtering never reads a neighbour."""
    size = tiles[0].shape[0]
    rows = math.ceil(len(tiles) / cols)
    img = np.zeros((rows * size, cols * size, 3), dtype=np.uint8)
    width, height = cols * size, rows * size
    rects = []
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        img[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
        u0, u1 = (c * size + 1.0) / width, ((c + 1) * size - 1.0) / width
        v1, v0 = 1.0 - (r * size + 1.0) / height, 1.0 - ((r + 1) * size - 1.0) / height
        rects.append((u0, v0, u1, v1))
    return img, rects


# ----------------------------------------------------------------------------------------------------------
# Textured box
# ----------------------------------------------------------------------------------------------------------
#: (normal axis, sign, u axis, v axis) of the six sides of a box; u × v points along the outward normal.
BOX_SIDES = ((0, 1, 1, 2), (0, -1, 2, 1), (1, 1, 2, 0), (1, -1, 0, 2), (2, 1, 0, 1), (2, -1, 1, 0))


def textured_box(
    size_m: Sequence[float] = (0.1, 0.07, 0.05),
    seed: int = 0,
    texture: TextureKind = "checker",
    *,
    texture_px: int = 256,
    segments: int = 1,
) -> trimesh.Trimesh:
    """A box centred at the origin with a real UV texture, a different pattern on every side.

    Args:
        size_m: extents ``(x, y, z)`` in metres.
        seed: random seed of the texture.
        texture: pattern kind, see :func:`texture_pattern`.
        texture_px: side of each side's square texture tile (the atlas is ``3·texture_px × 2·texture_px``).
        segments: each side is a ``segments × segments`` grid of quads (``12·segments²`` faces in all).

    Returns:
        Mesh with ``TextureVisuals`` (PIL RGB image, white diffuse), outward-facing triangles; every side has
        its own vertices (split at the box edges), so normals are flat.

    Example:
        >>> box = textured_box((0.1, 0.07, 0.05), seed=3)
        >>> box.visual.kind, [round(float(e), 3) for e in box.extents]
        ('texture', [0.1, 0.07, 0.05])
    """
    extents = np.asarray(size_m, dtype=np.float64).reshape(3)
    if not np.all(extents > 0):
        raise ValueError(f"box size must be positive, got {extents.tolist()}")
    if segments < 1:
        raise ValueError(f"segments must be ≥ 1, got {segments}")
    tiles = []
    for side in range(6):
        tile = texture_pattern(texture, texture_px, seed=_sub_seed(seed, side))
        tiles.append(decorate_texture(tile, np.random.default_rng(_sub_seed(seed, 100 + side)), 3 + side))
    image, rects = texture_atlas(tiles, cols=3)

    vertices: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    uvs: list[np.ndarray] = []
    s = np.linspace(0.0, 1.0, segments + 1)
    grid_u, grid_v = np.meshgrid(s, s, indexing="ij")
    su, sv = grid_u.ravel(), grid_v.ravel()
    quad = np.arange((segments + 1) ** 2).reshape(segments + 1, segments + 1)
    a, b = quad[:-1, :-1].ravel(), quad[1:, :-1].ravel()
    c, d = quad[1:, 1:].ravel(), quad[:-1, 1:].ravel()
    side_faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    for k, (axis, sign, ua, va) in enumerate(BOX_SIDES):
        p = np.zeros((len(su), 3))
        p[:, axis] = sign * extents[axis] / 2
        p[:, ua] = (su - 0.5) * extents[ua]
        p[:, va] = (sv - 0.5) * extents[va]
        u0, v0, u1, v1 = rects[k]
        faces.append(side_faces + int(sum(len(x) for x in vertices)))
        vertices.append(p)
        uvs.append(np.stack([u0 + su * (u1 - u0), v0 + sv * (v1 - v0)], axis=1))
    visual = texture_visuals(np.concatenate(uvs), image)
    mesh = trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), visual=visual, process=False)
    mesh.metadata["name"] = f"textured_box_{texture}_{seed}"
    return mesh


def texture_visuals(uv: np.ndarray, image: np.ndarray) -> trimesh.visual.TextureVisuals:
    """UVs + an RGB image with a white diffuse colour (trimesh's default grey would be exported to glTF as a
    ``baseColorFactor`` of 0.4 that darkens the texture)."""
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(image), diffuse=(255, 255, 255, 255))
    return trimesh.visual.TextureVisuals(uv=uv, material=material)


def _sub_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------------
# Vertex-coloured primitives
# ----------------------------------------------------------------------------------------------------------
def vertex_colored_mesh(
    kind: ShapeKind = "icosphere",
    seed: int = 0,
    *,
    size_m: float = 0.1,
    target_faces: int = 6000,
) -> trimesh.Trimesh:
    """A finely tessellated primitive with high-frequency procedural vertex colours.

    The colour is a smooth random function of position (sums of 3-D sinusoids with wavelengths of 1/10 to
    1/3 of ``size_m``, plus a finer luminance term), so it is asymmetric even on a symmetric shape, has strong
    grey-level contrast, and varies on a scale a few vertices wide (vertex colours cannot carry finer detail).

    Args:
        kind: ``"icosphere"`` (diameter ``size_m``), ``"cylinder"`` (height ``size_m``, radius
            ``0.35·size_m``, axis z), ``"capsule"`` (total length ``size_m``, radius ``0.25·size_m``),
            ``"cone"`` (height ``size_m``, base radius ``0.4·size_m``), ``"torus"`` (outer diameter
            ``size_m``, tube radius ``0.15·size_m``) or ``"box"`` (cube of side ``size_m``).
        seed: random seed of the colours.
        size_m: overall size in metres, as above.
        target_faces: approximate face count (the tessellation density follows from it).

    Returns:
        Mesh centred at its bounding-box centre with ``ColorVisuals`` (RGBA uint8 vertex colours) and explicit
        vertex normals (vertices are split along sharp edges, e.g. a cylinder's rims).
    """
    if size_m <= 0:
        raise ValueError(f"size_m must be positive, got {size_m}")
    if target_faces < 100:
        raise ValueError(f"target_faces must be at least 100, got {target_faces}")
    mesh = _primitive(kind, size_m, target_faces)
    vertices, faces, _ = merge_positions(mesh.vertices, mesh.faces)
    vertices = vertices - (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    normals = corner_normals(vertices, faces, _SHARP_ANGLE_DEG)
    v, f, _, n = split_corners(vertices, faces, None, normals)
    colors = color_field(v, seed, size_m)
    out = trimesh.Trimesh(v, f, vertex_normals=n, vertex_colors=colors, process=False)
    out.metadata["name"] = f"{kind}_{seed}"
    return out


def _primitive(kind: str, size: float, target_faces: int) -> trimesh.Trimesh:
    """Closed, outward-facing tessellation of a primitive with about ``target_faces`` faces."""

    def spacing(area: float) -> float:  # edge length giving about target_faces near-equilateral triangles
        return math.sqrt(4.0 * area / (math.sqrt(3.0) * target_faces))

    if kind == "icosphere":
        subdivisions = max(1, round(math.log(target_faces / 20.0, 4)))
        return trimesh.creation.icosphere(subdivisions=subdivisions, radius=size / 2)
    if kind == "torus":
        major, minor = 0.35 * size, 0.15 * size
        h = spacing(4 * math.pi**2 * major * minor)
        return trimesh.creation.torus(
            major,
            minor,
            major_sections=max(8, round(2 * math.pi * major / h)),
            minor_sections=max(6, round(2 * math.pi * minor / h)),
        )
    if kind == "box":
        n = max(1, round(math.sqrt(target_faces / 12)))
        box = textured_box((size, size, size), texture="noise", texture_px=16, segments=n)
        return trimesh.Trimesh(box.vertices, box.faces, process=False)
    if kind == "cylinder":
        r, height = 0.35 * size, size
        area = 2 * math.pi * r * (r + height)
        profile = polyline([(0.0, -height / 2), (r, -height / 2), (r, height / 2), (0.0, height / 2)], 0)
    elif kind == "cone":
        r, height = 0.4 * size, size
        area = math.pi * r * (r + math.hypot(r, height))
        profile = polyline([(0.0, -height / 2), (r, -height / 2), (0.0, height / 2)], 0)
    elif kind == "capsule":
        r = 0.25 * size
        half = size / 2 - r
        area = 4 * math.pi * r**2 + 2 * math.pi * r * 2 * half
        angles = np.linspace(-np.pi / 2, 0.0, 17)
        bottom = [(r * math.cos(t), -half + r * math.sin(t)) for t in angles]
        top = [(r * math.cos(t), half + r * math.sin(t)) for t in -angles[::-1]]
        profile = polyline(bottom + top, 0)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; use one of {ShapeKind.__args__}")  # type: ignore[attr-defined]
    h = spacing(area)
    r_max = float(np.max(profile[:, 0]))
    profile = polyline([tuple(p) for p in profile], h)
    return trimesh.creation.revolve(profile, sections=max(12, round(2 * math.pi * r_max / h)))


def polyline(points: Sequence[tuple[float, float]], step: float) -> np.ndarray:
    """Resample a polyline so that no segment is longer than ``step``, keeping its corners (0: as is)."""
    pts = np.asarray(points, dtype=np.float64)
    if step <= 0:
        return pts
    out = [pts[:1]]
    for p, q in itertools.pairwise(pts):
        k = max(1, math.ceil(float(np.linalg.norm(q - p)) / step))
        t = np.linspace(0.0, 1.0, k + 1)[1:, None]
        out.append(p + t * (q - p))
    return np.concatenate(out)


def color_field(points: np.ndarray, seed: int, size: float) -> np.ndarray:
    """``(N, 4)`` RGBA uint8 colours: a smooth random function of position with strong luminance contrast."""
    rng = np.random.default_rng(seed)
    p = np.asarray(points, dtype=np.float64)

    def waves(count: int, lo: float, hi: float) -> np.ndarray:
        direction = rng.normal(size=(count, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = size * np.exp(rng.uniform(np.log(lo), np.log(hi), count))
        phase = rng.uniform(0, 2 * np.pi, count)
        return np.asarray(np.sin(p @ (direction * (2 * np.pi / wavelength)[:, None]).T + phase).mean(axis=1))

    chroma = np.stack([waves(8, 1 / 8, 1 / 3) for _ in range(3)], axis=1)
    luma = waves(12, 1 / 10, 1 / 5)[:, None]
    rgb = 0.5 + 0.5 * np.tanh(3.0 * chroma + 4.0 * luma)
    rgba = np.concatenate([rgb, np.ones((len(p), 1))], axis=1)
    return np.asarray(np.rint(rgba * 255), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------
# The example object
# ----------------------------------------------------------------------------------------------------------
def example_mesh(seed: int = 0) -> trimesh.Trimesh:
    """The demo object's mesh: an asymmetric, richly textured composite about 0.16 m × 0.09 m × 0.07 m.

    A slab (0.11 × 0.075 × 0.045 m) with an off-centre block on top, a cylindrical knob sticking out of one
    end and a ball on a corner, textured through one 1024 × 1024 atlas by box projection (every part's six
    projection charts carry their own pattern and landmarks). The object frame is centred at the bounding-box
    centre. Shape is fixed; ``seed`` changes only the texture.

    Args:
        seed: texture seed.

    Returns:
        Mesh with ``TextureVisuals`` (~5k faces), explicit vertex normals, metres.
    """
    parts: list[trimesh.Trimesh] = [
        box_part((0.11, 0.075, 0.045), (0.0, 0.0, 0.0)),
        box_part((0.04, 0.03, 0.03), (0.025, 0.018, 0.0225 + 0.015 - 0.002)),
        _cylinder_part(0.013, 0.04, (0.055 + 0.02 - 0.005, -0.02, -0.005)),
        trimesh.creation.icosphere(subdivisions=3, radius=0.016).apply_translation((-0.05, -0.03, 0.02)),
    ]
    kinds: tuple[TextureKind, ...] = ("checker", "noise", "stripes")
    tiles, rng = [], np.random.default_rng(_sub_seed(seed, 7))
    for k in range(6 * len(parts)):
        tile = texture_pattern(kinds[k % 3], 204, seed=_sub_seed(seed, 1000 + k))
        tiles.append(decorate_texture(tile, rng, 4))
    image, rects = texture_atlas(tiles, cols=5)

    all_v, all_f, all_uv, all_n = [], [], [], []
    offset = 0
    for i, part in enumerate(parts):
        v, f, _ = merge_positions(part.vertices, part.faces)
        corner_uv = box_projection(v, f, rects[6 * i : 6 * i + 6])
        sv, sf, suv, sn = split_corners(v, f, corner_uv, corner_normals(v, f, _SHARP_ANGLE_DEG))
        assert suv is not None
        all_v.append(sv)
        all_f.append(sf + offset)
        all_uv.append(suv)
        all_n.append(sn)
        offset += len(sv)
    vertices = np.concatenate(all_v)
    vertices -= (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    visual = texture_visuals(np.concatenate(all_uv), image)
    mesh = trimesh.Trimesh(
        vertices, np.concatenate(all_f), vertex_normals=np.concatenate(all_n), visual=visual, process=False
    )
    mesh.metadata["name"] = f"example_{seed}"
    return mesh


def example_object(seed: int = 0, *, obj_id: int = 1, num_points: int = 2048) -> ObjectModel:
    """The demo object (:func:`example_mesh`) as an :class:`ObjectModel` (no symmetries, name ``"example"``).

    Args:
        seed: texture seed.
        obj_id: object id to give it.
        num_points: size of the surface point sample.

    Example:
        >>> obj = example_object()
        >>> 0.1 < obj.diameter < 0.2, obj.is_symmetric
        (True, False)

    The mesh is a union of overlapping closed parts, so a plain area sample would put ~13 % of the points on
    faces hidden inside other parts; ``points`` is instead sampled on the outer surface only (area-uniform
    there, deterministic).
    """
    mesh = example_mesh(seed)
    model = make_object_model(mesh, obj_id, name="example", num_points=1)
    points = outer_surface_points(mesh, num_points, seed=0)
    points.flags.writeable = False
    return dataclasses.replace(model, points=points)


def outer_surface_points(mesh: trimesh.Trimesh, n: int = 2048, seed: int = 0) -> np.ndarray:
    """Area-uniform surface points of a union of closed parts, leaving out the faces hidden inside other parts.

    Args:
        mesh: mesh whose connected parts (after merging vertices by position) are closed.
        n: number of points.
        seed: random seed.

    Returns:
        ``(n, 3)`` float64 points on the mesh surface and outside every part they do not lie on.
    """
    v, f, _ = merge_positions(mesh.vertices, mesh.faces)
    label = trimesh.graph.connected_component_labels(trimesh.graph.face_adjacency(faces=f), node_count=len(f))
    parts = [trimesh.Trimesh(v, f[label == k], process=False) for k in range(int(label.max()) + 1)]
    m = 2 * n
    while True:
        pts, face = sample_surface_faces(mesh, m, seed=seed)
        hidden = np.zeros(len(pts), dtype=bool)
        for k, part in enumerate(parts if len(parts) > 1 else []):
            other = label[face] != k  # a point is never inside the part it lies on
            hidden[other] |= part.contains(pts[other])
        kept = pts[~hidden]
        if len(kept) >= n:
            return np.asarray(kept[:n], dtype=np.float64)
        m *= 2


def box_part(extents: Sequence[float], center: Sequence[float], cell: float = 0.01) -> trimesh.Trimesh:
    """A closed box tessellated into squares of about ``cell`` metres."""
    e = np.asarray(extents, dtype=np.float64)
    box = textured_box(tuple(e), texture="noise", texture_px=16, segments=max(1, round(float(e.max()) / cell)))
    return trimesh.Trimesh(box.vertices + np.asarray(center), box.faces, process=False)


def _cylinder_part(radius: float, length: float, center: Sequence[float], step: float = 0.003) -> trimesh.Trimesh:
    """A closed cylinder along x."""
    profile = polyline([(0.0, -length / 2), (radius, -length / 2), (radius, length / 2), (0.0, length / 2)], step)
    cyl = trimesh.creation.revolve(profile, sections=max(16, round(2 * math.pi * radius / step)))
    to_x = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0])
    to_x[:3, 3] = center
    return cyl.apply_transform(to_x)


def box_projection(
    vertices: np.ndarray, faces: np.ndarray, rects: Sequence[tuple[float, float, float, float]]
) -> np.ndarray:
    """``(F, 3, 2)`` per-corner UVs: each face is projected along the axis its normal points most along, onto
    that chart's atlas rectangle (``rects[2·axis + (normal < 0)]``), scaled by the part's bounding box."""
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    axis = np.argmax(np.abs(normal), axis=1)
    chart = 2 * axis + (normal[np.arange(len(faces)), axis] < 0)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    local = (tri - lo) / np.maximum(hi - lo, 1e-12)  # (F, 3, 3) in [0, 1]
    u_axis = np.array([1, 2, 0])[axis]
    v_axis = np.array([2, 0, 1])[axis]
    su = np.take_along_axis(local, u_axis[:, None, None], 2)[..., 0]
    sv = np.take_along_axis(local, v_axis[:, None, None], 2)[..., 0]
    r = np.asarray(rects, dtype=np.float64)[chart]  # (F, 4)
    u = r[:, None, 0] + su * (r[:, None, 2] - r[:, None, 0])
    v = r[:, None, 1] + sv * (r[:, None, 3] - r[:, None, 1])
    return np.stack([u, v], axis=-1)
