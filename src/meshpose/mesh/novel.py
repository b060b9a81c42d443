"""Novel objects from a seed: thousands of distinct rigid objects for training and testing, nothing downloaded.

Object ``index`` of generator ``seed`` is a pure function of ``(seed, index, config)`` (numpy PCG64 streams
seeded by ``SeedSequence([seed, index])``), so ``novel:10`` is the first ten objects of ``novel:1000`` and two
runs agree bit for bit. Each object draws a *family* (its shape) and an *appearance*:

Families
    ``composite``  2–5 primitives (boxes, ellipsoids, cylinders, cones, frusta, capsules, tori), each attached at
                   a random point of an earlier one, randomly oriented — overlapping closed parts, like
                   :func:`~meshpose.mesh.example_mesh`.
    ``blob``       a sphere with smooth random radial relief and anisotropic scale (stones, fruit), plus
                   0–2 attached primitives.
    ``deformed``   a finely tessellated box or cylinder tapered, twisted and bent about random axes, with relief,
                   plus 0–2 attached primitives.
    ``revolution`` a solid of revolution of a random smooth profile: a continuous symmetry about its axis, and
                   a 180° flip when the profile is mirror-symmetric.
    ``cyclic``     a body of revolution tessellated with ``n·k`` sections plus ``n`` copies of an arbitrary
                   (textured, asymmetric) piece rotated about the axis: the cyclic group ``C_n``, n = 2…8.
    ``dihedral``   the same with a mirror-symmetric body and ``2n`` copies: the dihedral group ``D_n``.
    ``box``        a plain box: 3 half-turns (all sides different), 7 (square cross-section) or the 23 rotations
                   of the cube.

The asymmetric families are asymmetric in shape (random placements and relief); symmetric ones are symmetric
*exactly*: their vertex sets (and the colour or texture coordinate attached to each vertex) map onto themselves
under every listed transform, up to float round-off — the copies of a piece share their texture coordinates,
the body's colour depends only on invariants (height, distance to the axis). A continuous symmetry is exact
up to tessellation (``sections`` ≥ 48 around the axis). Half of the symmetric objects are turned by a random
rotation, so the axes are not always the frame axes.

Appearances
    ``texture/<kind>``  a texture atlas through box projection (6 charts per part): ``noise``, ``stripes``,
                   ``checker`` (:func:`~meshpose.mesh.texture_pattern`), ``text`` (label-like patches of random
                   glyphs, bars and codes) or ``photo`` (crops of images from ``NovelConfig.photo_dir``, else a
                   "dead-leaves" image with natural-image statistics).
    ``vertex``     smooth random vertex colours (needs the dense tessellation every family has).
    ``plain``      one flat colour per part.
    ``textureless`` one dull colour for the whole object (the T-LESS case).

``mesh.metadata["material"]`` holds ``roughness``/``metallic``/``specular`` for the photoreal renderer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from meshpose.geometry.symmetry import symmetry_transforms_from_lists
from meshpose.mesh.model import make_object_model, validate_symmetries
from meshpose.mesh.procedural import (
    _atlas,
    _box_part,
    _box_projection,
    _color_field,
    _decorate,
    _fractal_noise,
    _hsv_to_rgb,
    _polyline,
    _texture_visuals,
    outer_surface_points,
    texture_pattern,
)
from meshpose.mesh.sample import mesh_diameter
from meshpose.mesh.simplify import corner_normals, merge_positions, split_corners
from meshpose.types import ObjectModel

__all__ = [
    "APPEARANCES",
    "FAMILIES",
    "TEXTURE_KINDS",
    "NovelConfig",
    "NovelObject",
    "novel_mesh",
    "novel_object",
    "photo_like_texture",
    "text_texture",
    "texture_tile",
]

FAMILIES = ("composite", "blob", "deformed", "revolution", "cyclic", "dihedral", "box")
SYMMETRIC_FAMILIES = ("revolution", "cyclic", "dihedral", "box")
APPEARANCES = ("texture", "vertex", "plain", "textureless")
TEXTURE_KINDS = ("noise", "stripes", "checker", "text", "photo")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_SHARP_DEG = 40.0


@dataclass(frozen=True)
class NovelConfig:
    """What the generator draws from.

    Args:
        min_diameter_m: smallest object diameter, metres.
        max_diameter_m: largest object diameter, metres.
        symmetric_fraction: probability of a symmetric family.
        family_weights: relative weights of the asymmetric families (``composite``, ``blob``, ``deformed``)
            and, separately, of the symmetric ones (``revolution``, ``cyclic``, ``dihedral``, ``box``).
        appearance_weights: relative weights of ``texture``, ``vertex``, ``plain``, ``textureless``.
        texture_weights: relative weights of the texture kinds.
        texture_px: side of one texture chart in pixels (an atlas holds 6 per part).
        photo_dir: optional folder of images (searched recursively) cut into ``photo`` textures.
        target_edge: tessellation edge length as a fraction of the object size (smaller = more faces).
    """

    min_diameter_m: float = 0.06
    max_diameter_m: float = 0.25
    symmetric_fraction: float = 0.3
    family_weights: Mapping[str, float] = field(
        default_factory=lambda: {
            "composite": 0.45,
            "blob": 0.25,
            "deformed": 0.3,
            "revolution": 0.3,
            "cyclic": 0.3,
            "dihedral": 0.2,
            "box": 0.2,
        }
    )
    appearance_weights: Mapping[str, float] = field(
        default_factory=lambda: {"texture": 0.55, "vertex": 0.15, "plain": 0.15, "textureless": 0.15}
    )
    texture_weights: Mapping[str, float] = field(
        default_factory=lambda: {"noise": 0.2, "stripes": 0.2, "checker": 0.15, "text": 0.25, "photo": 0.2}
    )
    texture_px: int = 128
    photo_dir: str | None = None
    target_edge: float = 0.035

    def __post_init__(self) -> None:
        if not (0 < self.min_diameter_m <= self.max_diameter_m <= 2.0):
            raise ValueError(
                f"need 0 < min_diameter_m ≤ max_diameter_m ≤ 2 m, got {self.min_diameter_m}, {self.max_diameter_m}"
            )
        if not (0.0 <= self.symmetric_fraction <= 1.0):
            raise ValueError(f"symmetric_fraction must be in [0, 1], got {self.symmetric_fraction}")
        for name, allowed in (
            ("family_weights", FAMILIES),
            ("appearance_weights", APPEARANCES),
            ("texture_weights", TEXTURE_KINDS),
        ):
            weights = getattr(self, name)
            unknown = set(weights) - set(allowed)
            if unknown:
                raise ValueError(f"{name} has unknown keys {sorted(unknown)}; allowed: {', '.join(allowed)}")
            if any(float(w) < 0 for w in weights.values()) or sum(float(w) for w in weights.values()) <= 0:
                raise ValueError(f"{name} must be non-negative with a positive sum, got {dict(weights)}")
        if self.texture_px < 16:
            raise ValueError(f"texture_px must be at least 16, got {self.texture_px}")
        if not (0.005 <= self.target_edge <= 0.2):
            raise ValueError(f"target_edge must be in [0.005, 0.2], got {self.target_edge}")


@dataclass(frozen=True, eq=False)
class NovelObject:
    """A generated object: its mesh (metres) and what is known about it.

    Args:
        index: index in the generator's sequence.
        seed: generator seed.
        mesh: the mesh, metres, object frame (symmetry axes through the origin).
        family: shape family (see the module docstring).
        appearance: ``"texture/<kind>"``, ``"vertex"``, ``"plain"`` or ``"textureless"``.
        symmetries_discrete: ``(K, 4, 4)`` discrete symmetries in metres, identity *not* included (BOP
            ``symmetries_discrete``; for a finite group every non-identity element is listed).
        symmetries_continuous: ``(axis, offset_m)`` pairs (BOP ``symmetries_continuous``).
        material: ``roughness``, ``metallic``, ``specular`` for the photoreal renderer.
    """

    index: int
    seed: int
    mesh: trimesh.Trimesh
    family: str
    appearance: str
    symmetries_discrete: np.ndarray
    symmetries_continuous: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]
    material: dict[str, float]

    @property
    def is_symmetric(self) -> bool:
        return len(self.symmetries_discrete) > 0 or len(self.symmetries_continuous) > 0

    def symmetry_transforms(self, diameter: float | None = None, *, max_sym_disc_step: float = 0.01) -> np.ndarray:
        """The expanded ``(S, 4, 4)`` transforms (identity first), as :class:`ObjectModel` stores them."""
        d = mesh_diameter(self.mesh) if diameter is None else diameter
        return symmetry_transforms_from_lists(
            list(self.symmetries_discrete), list(self.symmetries_continuous), d, max_sym_disc_step=max_sym_disc_step
        )

    def to_object_model(self, obj_id: int | None = None, *, num_points: int = 2048) -> ObjectModel:
        """The :class:`ObjectModel` (id ``index + 1`` by default; points on the outer surface only)."""
        oid = self.index + 1 if obj_id is None else obj_id
        model = make_object_model(self.mesh, oid, name=self.mesh.metadata.get("name", ""), num_points=1)
        points = outer_surface_points(self.mesh, num_points, seed=0)
        points.flags.writeable = False
        sym = validate_symmetries(
            self.symmetry_transforms(model.diameter), points=points, diameter=model.diameter, label=f"object {oid}"
        )
        return dataclasses.replace(model, points=points, symmetries=sym)


# ----------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------
def novel_mesh(index: int, seed: int = 0, config: NovelConfig | None = None) -> NovelObject:
    """Generate object ``index`` of the sequence of ``seed``.

    Args:
        index: object index (``≥ 0``).
        seed: generator seed.
        config: generator settings (default :class:`NovelConfig`).

    Returns:
        The :class:`NovelObject` (mesh in metres, centred: the bounding-box centre for asymmetric objects, the
        fixed point of the symmetries for symmetric ones).

    Example:
        >>> obj = novel_mesh(3, seed=0)
        >>> obj.mesh.metadata["name"].startswith("novel_0_3_"), len(obj.mesh.faces) > 100
        (True, True)
    """
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    cfg = config or NovelConfig()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x6E6F76]))
    symmetric = rng.random() < cfg.symmetric_fraction
    families = SYMMETRIC_FAMILIES if symmetric else tuple(f for f in FAMILIES if f not in SYMMETRIC_FAMILIES)
    family = _choice(rng, families, cfg.family_weights)
    if family == "box":
        appearance = _choice(rng, ("vertex", "plain", "textureless"), cfg.appearance_weights)
    else:
        appearance = _choice(rng, APPEARANCES, cfg.appearance_weights)
    texture_kind = _choice(rng, TEXTURE_KINDS, cfg.texture_weights) if appearance == "texture" else ""
    builder = _Builder(rng, cfg, appearance, texture_kind)
    if family == "composite":
        builder.composite(int(rng.integers(2, 6)))
    elif family == "blob":
        builder.blob()
    elif family == "deformed":
        builder.deformed()
    elif family == "revolution":
        builder.revolution()
    elif family == "cyclic":
        builder.cyclic(int(rng.integers(2, 9)), dihedral=False)
    elif family == "dihedral":
        builder.cyclic(int(rng.integers(2, 7)), dihedral=True)
    else:
        builder.box()
    mesh, discrete, continuous = builder.finish(symmetric)
    label = f"texture/{texture_kind}" if appearance == "texture" else appearance
    material = _material(rng, appearance)
    mesh.metadata["name"] = f"novel_{seed}_{index}_{family}"
    mesh.metadata["material"] = material
    mesh.metadata["novel"] = {"seed": int(seed), "index": int(index), "family": family, "appearance": label}
    return NovelObject(
        index=int(index),
        seed=int(seed),
        mesh=mesh,
        family=family,
        appearance=label,
        symmetries_discrete=discrete,
        symmetries_continuous=continuous,
        material=material,
    )


def novel_object(
    index: int,
    seed: int = 0,
    *,
    obj_id: int | None = None,
    config: NovelConfig | None = None,
    num_points: int = 2048,
) -> tuple[ObjectModel, NovelObject]:
    """:func:`novel_mesh` as an :class:`ObjectModel` (id ``index + 1`` unless ``obj_id`` is given), with its
    symmetries expanded as :class:`ObjectModel` stores them, and the :class:`NovelObject` behind it."""
    obj = novel_mesh(index, seed, config)
    return obj.to_object_model(obj_id, num_points=num_points), obj


# ----------------------------------------------------------------------------------------------------------
# Textures
# ----------------------------------------------------------------------------------------------------------
def texture_tile(kind: str, size_px: int, rng: np.random.Generator, photo_dir: str | None = None) -> np.ndarray:
    """One ``(size_px, size_px, 3)`` uint8 texture of ``kind`` (one of :data:`TEXTURE_KINDS`)."""
    seed = int(rng.integers(0, 2**31 - 1))
    if kind in ("noise", "stripes", "checker"):
        return texture_pattern(kind, size_px, seed=seed)  # type: ignore[arg-type]
    if kind == "text":
        return text_texture(size_px, np.random.default_rng(seed))
    if kind == "photo":
        return photo_like_texture(size_px, np.random.default_rng(seed), photo_dir=photo_dir)
    raise ValueError(f"unknown texture kind {kind!r}; use one of {', '.join(TEXTURE_KINDS)}")


def _random_color(rng: np.random.Generator, value: tuple[float, float] = (0.2, 1.0)) -> tuple[int, int, int]:
    hsv = np.array([rng.random(), rng.uniform(0.2, 1.0), rng.uniform(*value)])
    return tuple(int(c) for c in np.rint(_hsv_to_rgb(hsv) * 255))  # type: ignore[return-value]


_GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/%&#"


def text_texture(size_px: int, rng: np.random.Generator) -> np.ndarray:
    """A label-like patch: lines of random glyph strings in several sizes and colours, bar codes and boxes.

    Returns:
        ``(size_px, size_px, 3)`` uint8 RGB.
    """
    light = rng.random() < 0.6
    bg = _random_color(rng, (0.75, 1.0) if light else (0.05, 0.35))
    img = Image.new("RGB", (size_px, size_px), bg)
    draw = ImageDraw.Draw(img)
    ink_range = (0.0, 0.35) if light else (0.8, 1.0)
    y = float(rng.uniform(0, 0.08)) * size_px
    while y < size_px:
        kind = rng.random()
        if kind < 0.7:  # a line of text
            height = int(size_px * rng.uniform(0.06, 0.2))
            font = _font(max(6, height))
            words = " ".join(
                "".join(rng.choice(list(_GLYPHS), int(rng.integers(2, 9)))) for _ in range(int(rng.integers(1, 5)))
            )
            draw.text((float(rng.uniform(0, 0.15)) * size_px, y), words, fill=_random_color(rng, ink_range), font=font)
            y += height * rng.uniform(1.1, 1.6)
        elif kind < 0.85:  # a bar code
            height = int(size_px * rng.uniform(0.08, 0.2))
            x = int(rng.uniform(0, 0.3) * size_px)
            end = x + int(size_px * rng.uniform(0.3, 0.7))
            ink = _random_color(rng, ink_range)
            top = int(y)
            while x < end:
                w = int(rng.integers(1, 4)) * max(1, size_px // 128)
                if rng.random() < 0.55:
                    draw.rectangle([x, top, x + w - 1, top + height], fill=ink)
                x += w
            y += height * 1.3
        else:  # a filled box or a frame
            height = int(size_px * rng.uniform(0.08, 0.25))
            x0 = float(rng.uniform(0, 0.6)) * size_px
            x1 = x0 + size_px * rng.uniform(0.15, 0.4)
            if rng.random() < 0.5:
                draw.rectangle([x0, y, x1, y + height], fill=_random_color(rng))
            else:
                draw.rectangle(
                    [x0, y, x1, y + height], outline=_random_color(rng, ink_range), width=max(1, size_px // 64)
                )
            y += height * 1.25
    arr = np.asarray(img, dtype=np.float64) / 255.0
    grain = _fractal_noise(rng, size_px, octaves=(8, 32))[..., None]
    arr = np.clip(arr * (0.9 + 0.1 * grain), 0.0, 1.0)
    return np.asarray(np.rint(arr * 255), dtype=np.uint8)


_FONT_CACHE: dict[int, Any] = {}


def _font(size: int) -> Any:
    if size not in _FONT_CACHE:
        try:
            _FONT_CACHE[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
            _FONT_CACHE[size] = ImageFont.load_default()
    return _FONT_CACHE[size]


def _image_files(folder: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"image folder {root} holds no images ({', '.join(_IMAGE_EXTS)})")
    return files


_IMAGE_LIST_CACHE: dict[str, list[Path]] = {}


def image_folder_files(folder: str) -> list[Path]:
    """Sorted image files under ``folder`` (cached per process)."""
    key = str(Path(folder).resolve())
    if key not in _IMAGE_LIST_CACHE:
        _IMAGE_LIST_CACHE[key] = _image_files(folder)
    return _IMAGE_LIST_CACHE[key]


def random_image_crop(folder: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a random image of ``folder``, resized to ``width × height`` (uint8 RGB)."""
    files = image_folder_files(folder)
    path = files[int(rng.integers(0, len(files)))]
    with Image.open(path) as source:
        im = source.convert("RGB")
    w, h = im.size
    scale = rng.uniform(0.3, 1.0)
    cw = max(8, int(min(w, h * width / height) * scale))
    ch = max(8, int(cw * height / width))
    cw, ch = min(cw, w), min(ch, h)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8).copy()


def photo_like_texture(
    size_px: int, rng: np.random.Generator, *, photo_dir: str | None = None, height_px: int | None = None
) -> np.ndarray:
    """A photograph-like image: a crop of an image of ``photo_dir`` when given, else a "dead-leaves" image.

    The dead-leaves model (occluding discs, ellipses and rectangles with power-law sizes, shaded by smooth
    illumination, slightly blurred, with grain) has the scale-invariant statistics of natural photographs.

    Returns:
        ``(height_px or size_px, size_px, 3)`` uint8 RGB.
    """
    width, height = size_px, height_px or size_px
    if photo_dir is not None:
        return random_image_crop(photo_dir, width, height, rng)
    palette = np.array([_random_color(rng) for _ in range(int(rng.integers(3, 8)))])
    img = Image.new("RGB", (width, height), tuple(int(c) for c in palette[0]))
    draw = ImageDraw.Draw(img)
    side = max(width, height)
    count = int(rng.integers(60, 160))
    # Power-law radii (exponent -3 in density): many small leaves, a few large; drawn large first.
    radii = side * 0.015 / np.sqrt(1.0 - rng.random(count) * (1.0 - (0.015 / 0.5) ** 2))
    for r in np.sort(radii)[::-1]:
        x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        base = palette[int(rng.integers(0, len(palette)))].astype(np.float64)
        color = tuple(int(c) for c in np.clip(base * rng.uniform(0.6, 1.3) + rng.normal(0, 12, 3), 0, 255))
        shape = rng.random()
        if shape < 0.55:
            draw.ellipse([x - r, y - r * rng.uniform(0.5, 1.0), x + r, y + r * rng.uniform(0.5, 1.0)], fill=color)
        elif shape < 0.85:
            draw.rectangle([x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r * rng.uniform(0.3, 1.0)], fill=color)
        else:
            pts = [(x + r * math.cos(a), y + r * math.sin(a)) for a in np.sort(rng.uniform(0, 2 * math.pi, 3))]
            draw.polygon(pts, fill=color)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2)) * side / 256))
    arr = np.asarray(img, dtype=np.float64) / 255.0
    yy, xx = np.mgrid[0:height, 0:width] / side
    a = rng.uniform(0, 2 * math.pi)
    light = 0.75 + 0.25 * np.cos(a) * (xx - 0.5) * 2 + 0.25 * np.sin(a) * (yy - 0.5) * 2
    arr = arr * light[..., None] + rng.normal(0, 0.015, arr.shape)
    return np.asarray(np.rint(np.clip(arr, 0, 1) * 255), dtype=np.uint8)


def _solid_tile(size: int, color: Sequence[int], rng: np.random.Generator, grain: float = 0.04) -> np.ndarray:
    noise = _fractal_noise(rng, size, octaves=(4, 16))[..., None]
    arr = np.asarray(color, dtype=np.float64)[None, None, :3] / 255.0 * (1.0 - grain + 2 * grain * noise)
    return np.asarray(np.rint(np.clip(arr, 0, 1) * 255), dtype=np.uint8)


def _band_tile(size: int, rng: np.random.Generator) -> np.ndarray:
    """A tile whose colour varies only from top to bottom: mapped by height, bands of colour around a body of
    revolution (the mapping, not the tile, makes them mirror-symmetric where needed)."""
    rows = int(rng.integers(3, 9))
    edges = np.sort(rng.random(rows - 1))
    colors = np.array([_random_color(rng) for _ in range(rows)], dtype=np.float64)
    t = (np.arange(size) + 0.5) / size
    band = colors[np.searchsorted(edges, t)] / 255.0
    img = np.repeat(band[:, None, :], size, axis=1)
    return np.asarray(np.rint(np.clip(img, 0, 1) * 255), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------
def _choice(rng: np.random.Generator, options: Sequence[str], weights: Mapping[str, float]) -> str:
    w = np.array([float(weights.get(o, 0.0)) for o in options])
    if w.sum() <= 0:
        w = np.ones(len(options))
    return str(options[int(rng.choice(len(options), p=w / w.sum()))])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_FLIP_X = np.diag([1.0, -1.0, -1.0])  # half-turn about x, exact


def _revolve(profile: np.ndarray, sections: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed solid of revolution about z of an ``(r, z)`` profile that starts and ends on the axis."""
    mesh = trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=int(sections))
    v, f, _ = merge_positions(mesh.vertices, mesh.faces)
    return v, f


def _smooth_profile(rng: np.random.Generator, height: float, radius: float, step: float, *, mirror: bool) -> np.ndarray:
    """A random smooth ``(r, z)`` profile from the bottom pole to the top pole (``r > 0`` in between), for
    :func:`_revolve`; ``mirror``: symmetric about ``z = 0``. Ends are flat caps or rounded."""
    from scipy.interpolate import PchipInterpolator

    k = int(rng.integers(3, 7))
    z_ctrl = np.linspace(-height / 2, height / 2, k)
    r_ctrl = radius * rng.uniform(0.35, 1.0, k)
    if mirror:
        r_ctrl = 0.5 * (r_ctrl + r_ctrl[::-1])
    n = max(8, math.ceil(height / step))
    z = np.linspace(-height / 2, height / 2, n + 1)
    if mirror:
        z = 0.5 * (z - z[::-1])  # exactly antisymmetric samples
    r = PchipInterpolator(z_ctrl, r_ctrl)(z)
    if mirror:
        r = 0.5 * (r + r[::-1])
    if rng.random() < 0.5:  # rounded ends: r goes to 0 at both poles
        envelope = np.sqrt(np.sin(np.clip((height / 2 - np.abs(z)) / (0.2 * height), 0.0, 1.0) * math.pi / 2))
        r = r * envelope
        r[0] = r[-1] = 0.0
        return np.column_stack([r, z])
    bottom = [(float(x), float(z[0])) for x in np.linspace(0.0, r[0], max(2, math.ceil(r[0] / step) + 1))[:-1]]
    top = [(float(x), float(z[-1])) for x in np.linspace(r[-1], 0.0, max(2, math.ceil(r[-1] / step) + 1))[1:]]
    return np.concatenate([np.asarray(bottom), np.column_stack([r, z]), np.asarray(top)])


def _primitive(kind: str, size: float, rng: np.random.Generator, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed primitive of about ``size`` metres, centred at the origin, local axes."""
    if kind == "box":
        ext = size * rng.uniform(0.35, 1.0, 3)
        box = _box_part(tuple(ext), (0.0, 0.0, 0.0), cell=max(step, float(ext.max()) / 10))
        return merge_positions(box.vertices, box.faces)[:2]
    if kind == "ellipsoid":
        sub = 2 if size / step < 12 else 3
        sphere = trimesh.creation.icosphere(subdivisions=sub, radius=1.0)
        radii = size / 2 * rng.uniform(0.4, 1.0, 3)
        return np.asarray(sphere.vertices) * radii, np.asarray(sphere.faces)
    if kind == "torus":
        major = size * rng.uniform(0.25, 0.4)
        minor = major * rng.uniform(0.2, 0.5)
        t = trimesh.creation.torus(
            major,
            minor,
            major_sections=max(12, round(2 * math.pi * major / step)),
            minor_sections=max(8, round(2 * math.pi * minor / step)),
        )
        return merge_positions(t.vertices, t.faces)[:2]
    height = size * rng.uniform(0.5, 1.0)
    radius = size * rng.uniform(0.15, 0.45)
    if kind == "cylinder":
        prof = [(0.0, -height / 2), (radius, -height / 2), (radius, height / 2), (0.0, height / 2)]
    elif kind == "cone":
        prof = [(0.0, -height / 2), (radius, -height / 2), (0.0, height / 2)]
    elif kind == "frustum":
        prof = [
            (0.0, -height / 2),
            (radius, -height / 2),
            (radius * rng.uniform(0.3, 0.8), height / 2),
            (0.0, height / 2),
        ]
    elif kind == "capsule":
        radius = min(radius, height / 2.2)
        half = height / 2 - radius
        ang = np.linspace(-math.pi / 2, 0.0, 9)
        prof = [(radius * math.cos(a), -half + radius * math.sin(a)) for a in ang]
        prof += [(radius * math.cos(a), half + radius * math.sin(a)) for a in -ang[::-1]]
    else:
        raise ValueError(f"unknown primitive {kind!r}")
    sections = max(12, round(2 * math.pi * radius / step))
    return _revolve(_polyline(prof, step), sections)


_PRIMITIVES = ("box", "ellipsoid", "cylinder", "cone", "frustum", "capsule", "torus")


def _subdivide(v: np.ndarray, f: np.ndarray, max_edge: float) -> tuple[np.ndarray, np.ndarray]:
    v2, f2 = trimesh.remesh.subdivide_to_size(v, f, max_edge=max_edge, max_iter=8)
    return merge_positions(v2, f2)[:2]


def _smooth_field(rng: np.random.Generator, points: np.ndarray, scale: float, count: int = 8) -> np.ndarray:
    """A smooth random scalar field in [-1, 1] (sum of 3-D sinusoids with wavelengths ~ ``scale``)."""
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = 2 * math.pi / (scale * rng.uniform(0.5, 1.5, count))
    phase = rng.uniform(0, 2 * math.pi, count)
    amp = rng.uniform(0.5, 1.0, count)
    s = np.sin(points @ (d * k[:, None]).T + phase) @ amp
    return np.asarray(s / amp.sum(), dtype=np.float64)


def _relief(rng: np.random.Generator, v: np.ndarray, f: np.ndarray, amount: float, scale: float) -> np.ndarray:
    """Displace vertices along their (area-weighted) normals by a smooth random field."""
    mesh = trimesh.Trimesh(v, f, process=False)
    normals = np.asarray(mesh.vertex_normals)
    return v + normals * (amount * _smooth_field(rng, v, scale))[:, None]


# ----------------------------------------------------------------------------------------------------------
# The builder: parts with their appearance, assembled into one mesh
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Part:
    vertices: np.ndarray  # (V, 3) merged positions of a closed surface
    faces: np.ndarray  # (F, 3)
    corner_uv: np.ndarray | None = None  # (F, 3, 2) for textured objects
    colors: np.ndarray | None = None  # (V, 4) uint8 for coloured objects


class _Builder:
    def __init__(self, rng: np.random.Generator, cfg: NovelConfig, appearance: str, texture_kind: str) -> None:
        self.rng = rng
        self.cfg = cfg
        self.appearance = appearance
        self.texture_kind = texture_kind
        self.size = 1.0  # built at unit size, scaled at the end
        self.step = cfg.target_edge * self.size
        self.parts: list[_Part] = []
        self.tiles: list[np.ndarray] = []
        self.pool: list[int] = []
        self.discrete: list[np.ndarray] = []  # 3x3 rotations (all non-identity group elements)
        self.continuous: list[tuple[np.ndarray, np.ndarray]] = []
        self.base_color = _random_color(rng, (0.35, 0.95))
        self.textureless_color = tuple(
            int(c)
            for c in np.rint(_hsv_to_rgb(np.array([rng.random(), rng.uniform(0, 0.25), rng.uniform(0.3, 0.85)])) * 255)
        )
        self.color_seed = int(rng.integers(0, 2**31 - 1))

    # --- appearance of one part ---------------------------------------------------------------------------
    def _tile(self, kind: str | None = None) -> np.ndarray:
        rng = self.rng
        kind = kind or self.texture_kind
        if rng.random() < 0.25:  # some variety between charts
            kind = str(rng.choice(list(TEXTURE_KINDS)))
        tile = texture_tile(kind, self.cfg.texture_px, rng, self.cfg.photo_dir)
        if kind in ("noise", "stripes", "checker") and rng.random() < 0.5:
            tile = _decorate(tile, rng, int(rng.integers(1, 5)))
        return tile

    def _add_tiles(self, tiles: Sequence[np.ndarray]) -> list[int]:
        first = len(self.tiles)
        self.tiles.extend(tiles)
        return list(range(first, len(self.tiles)))

    def _pooled_tile(self) -> int:
        """A chart's tile: a new one while the object has fewer than 6 (or now and then), else a reused one
        (keeps the atlas small and generation fast for many-part objects)."""
        rng = self.rng
        if len(self.pool) < 6 or rng.random() < 0.15:
            tile_id = self._add_tiles([self._tile()])[0]
            self.pool.append(tile_id)
            return tile_id
        return int(self.pool[int(rng.integers(0, len(self.pool)))])

    def dress(self, v: np.ndarray, f: np.ndarray, *, flat: bool = False) -> _Part:
        """A part with this object's kind of appearance, in the part's current frame."""
        rng = self.rng
        if self.appearance == "texture":
            if flat:
                charts = self._add_tiles([_solid_tile(self.cfg.texture_px, _random_color(rng), rng)]) * 6
            else:
                charts = [self._pooled_tile() for _ in range(6)]
            return _Part(v, f, corner_uv=self._charts_uv(v, f, charts))
        return _Part(v, f, colors=self._colors(v, local_seed=int(rng.integers(0, 2**31 - 1))))

    def _charts_uv(self, v: np.ndarray, f: np.ndarray, charts: Sequence[int]) -> np.ndarray:
        # Placeholder rectangles: the real atlas rectangles are filled in by finish() (uv in chart units).
        uv = _box_projection(v, f, [(0.0, 0.0, 1.0, 1.0)] * 6)  # (F, 3, 2) in [0, 1] per chart
        tri = v[f]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        axis = np.argmax(np.abs(normal), axis=1)
        chart = 2 * axis + (normal[np.arange(len(f)), axis] < 0)
        ids = np.asarray(charts)[chart]
        return np.concatenate([uv, np.repeat(ids[:, None, None].astype(np.float64), 3, axis=1)], axis=2)

    def _colors(self, v: np.ndarray, local_seed: int) -> np.ndarray:
        if self.appearance == "vertex":
            return _color_field(v, local_seed, self.size)
        color = (
            self.textureless_color
            if self.appearance == "textureless"
            else _random_color(np.random.default_rng(local_seed), (0.35, 0.95))
        )
        return np.tile(np.array([*color, 255], dtype=np.uint8), (len(v), 1))

    def invariant_part(self, v: np.ndarray, f: np.ndarray, invariant: np.ndarray) -> _Part:
        """A part whose colour depends only on ``invariant`` (one value in [0, 1] per vertex)."""
        rng = self.rng
        if self.appearance == "texture":
            tile_id = self._add_tiles([_band_tile(self.cfg.texture_px, rng)])[0]
            t = np.clip(invariant, 0.0, 1.0)
            uv = np.stack([np.full_like(t, 0.5), t], axis=1)[f]  # (F, 3, 2)
            ids = np.full((len(f), 3, 1), float(tile_id))
            return _Part(v, f, corner_uv=np.concatenate([uv, ids], axis=2))
        if self.appearance == "vertex":
            n = int(rng.integers(3, 8))
            edges = np.sort(rng.random(n - 1))
            palette = np.array([[*_random_color(rng), 255] for _ in range(n)], dtype=np.uint8)
            smooth = rng.random() < 0.5
            if smooth:
                knots = np.linspace(0, 1, n)
                rgb = np.stack([np.interp(invariant, knots, palette[:, c].astype(np.float64)) for c in range(3)], 1)
                colors = np.column_stack([np.rint(rgb), np.full(len(v), 255.0)]).astype(np.uint8)
            else:
                colors = palette[np.searchsorted(edges, invariant)]
            return _Part(v, f, colors=colors)
        return _Part(v, f, colors=self._colors(v, int(rng.integers(0, 2**31 - 1))))

    # --- families -----------------------------------------------------------------------------------------
    def _attach(self, base: list[np.ndarray], count: int, size_range: tuple[float, float]) -> None:
        """Attach ``count`` random primitives at random vertices of the parts in ``base``."""
        rng = self.rng
        for _ in range(count):
            anchor_part = base[int(rng.integers(0, len(base)))]
            anchor = anchor_part[int(rng.integers(0, len(anchor_part)))]
            kind = str(rng.choice(list(_PRIMITIVES)))
            v, f = _primitive(kind, self.size * rng.uniform(*size_range), rng, self.step)
            R = _random_rotation(rng)
            centre = anchor * rng.uniform(0.75, 1.0)
            v = v @ R.T + centre
            base.append(v)
            self.parts.append(self.dress(v, f, flat=rng.random() < 0.15))

    def composite(self, count: int) -> None:
        rng = self.rng
        kind = str(rng.choice(list(_PRIMITIVES)))
        v, f = _primitive(kind, self.size, rng, self.step)
        v = v @ _random_rotation(rng).T
        self.parts.append(self.dress(v, f))
        self._attach([v], count - 1, (0.3, 0.8))

    def blob(self) -> None:
        rng = self.rng
        sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5 * self.size)
        v = np.asarray(sphere.vertices)
        f = np.asarray(sphere.faces)
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        r = 1.0 + 0.25 * _smooth_field(rng, unit, 1.5, 6) + 0.08 * _smooth_field(rng, unit, 0.5, 10)
        v = v * r[:, None] * rng.uniform(0.5, 1.0, 3)
        v = v @ _random_rotation(rng).T
        self.parts.append(self.dress(v, f))
        self._attach([v], int(rng.integers(0, 3)), (0.2, 0.5))

    def deformed(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            ext = self.size * rng.uniform(0.3, 1.0, 3)
            ext[2] = self.size
            box = _box_part(tuple(ext), (0.0, 0.0, 0.0), cell=1.4 * self.step)
            v, f = merge_positions(box.vertices, box.faces)[:2]
        else:
            radius = self.size * rng.uniform(0.15, 0.4)
            h = self.size
            prof = _polyline([(0.0, -h / 2), (radius, -h / 2), (radius, h / 2), (0.0, h / 2)], self.step)
            v, f = _revolve(prof, max(16, round(2 * math.pi * radius / self.step)))
        v, f = _subdivide(v, f, 1.4 * self.step)
        z = v[:, 2] / self.size  # in [-0.5, 0.5]
        taper = 1.0 + rng.uniform(-0.6, 0.6) * (z + 0.5) * rng.choice([-1.0, 1.0])
        twist = rng.uniform(-1.5, 1.5) * z
        c, s = np.cos(twist), np.sin(twist)
        x, y = v[:, 0] * taper, v[:, 1] * taper
        v = np.column_stack([c * x - s * y, s * x + c * y, v[:, 2]])
        bend = rng.uniform(-0.8, 0.8)
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        v[:, :2] += bend * self.size * (z**2)[:, None] * direction
        v = _relief(rng, v, f, 0.02 * self.size, 0.4 * self.size)
        v = v @ _random_rotation(rng).T
        self.parts.append(self.dress(v, f))
        self._attach([v], int(rng.integers(0, 3)), (0.2, 0.45))

    def revolution(self) -> None:
        rng = self.rng
        mirror = rng.random() < 0.4
        height = self.size * rng.uniform(0.5, 1.0)
        radius = self.size * rng.uniform(0.2, 0.5)
        profile = _smooth_profile(rng, height, radius, self.step, mirror=mirror)
        v, f = _revolve(profile, 96)
        invariant = self._height_invariant(v, mirror)
        self.parts.append(self.invariant_part(v, f, invariant))
        self.continuous.append((np.array([0.0, 0.0, 1.0]), np.zeros(3)))
        if mirror:
            self.discrete.append(_FLIP_X.copy())

    def _height_invariant(self, v: np.ndarray, mirror: bool) -> np.ndarray:
        z = v[:, 2]
        if mirror:
            zmax = float(np.abs(z).max()) or 1.0
            return np.abs(z) / zmax
        lo, hi = float(z.min()), float(z.max())
        return (z - lo) / max(hi - lo, 1e-12)

    def cyclic(self, n: int, *, dihedral: bool) -> None:
        rng = self.rng
        group = [_rot_z(2 * math.pi * k / n) for k in range(n)]
        if dihedral:
            group = group + [g @ _FLIP_X for g in group]
        # The body: a solid of revolution with a multiple of n sections (mirror-symmetric for D_n).
        height = self.size * rng.uniform(0.3, 0.9)
        radius = self.size * rng.uniform(0.15, 0.35)
        profile = _smooth_profile(rng, height, radius, self.step, mirror=dihedral)
        sections = n * max(1, math.ceil(48 / n))
        bv, bf = _revolve(profile, sections)
        if rng.random() < 0.35:  # a prism-like body: few sections, sharp edges
            k_min = math.ceil(3 / n)
            bv, bf = _revolve(profile, n * int(rng.integers(k_min, k_min + 2)))
        self.parts.append(self.invariant_part(bv, bf, self._height_invariant(bv, dihedral)))
        # The piece: an arbitrary primitive off the axis, replicated by every group element.
        kind = str(rng.choice(list(_PRIMITIVES)))
        pv, pf = _primitive(kind, self.size * rng.uniform(0.25, 0.5), rng, self.step)
        pv = pv @ _random_rotation(rng).T
        r_body = float(np.max(np.linalg.norm(bv[:, :2], axis=1)))
        angle = rng.uniform(0, 2 * math.pi / n) if not dihedral else rng.uniform(0.1, math.pi / n - 0.1)
        dist = r_body * rng.uniform(0.6, 1.1)
        offset = np.array([dist * math.cos(angle), dist * math.sin(angle), rng.uniform(0.05, 0.35) * height])
        if not dihedral:
            offset[2] *= rng.choice([-1.0, 1.0])
        pv = pv + offset
        piece = self.dress(pv, pf)
        for g in group:
            self.parts.append(
                _Part(piece.vertices @ g.T, piece.faces.copy(), corner_uv=piece.corner_uv, colors=piece.colors)
            )
        self.discrete.extend(g for g in group[1:])

    def box(self) -> None:
        rng = self.rng
        kind = rng.random()
        if kind < 0.2:
            ext = np.full(3, self.size * 0.6)
        elif kind < 0.5:
            a, c = self.size * rng.uniform(0.3, 0.7), self.size * rng.uniform(0.3, 1.0)
            if abs(a - c) < 0.05 * self.size:
                c = a * 1.5
            ext = np.array([a, a, c])
        else:
            ext = np.sort(self.size * rng.uniform(0.2, 1.0, 3))
            ext[1] = max(ext[1], ext[0] * 1.15)
            ext[2] = max(ext[2], ext[1] * 1.15)
            ext = ext[rng.permutation(3)]
        v, f = _fan_box(ext, max(2, min(12, round(float(ext.max()) / self.step))))
        a = np.abs(v)
        eq_xy = abs(ext[0] - ext[1]) < 1e-12
        cube = eq_xy and abs(ext[1] - ext[2]) < 1e-12
        if cube:
            group = _cube_group()
            feats = np.sort(a, axis=1)
        elif eq_xy:
            group = [_rot_z(math.pi / 2 * k) for k in range(4)]
            group = group + [g @ _FLIP_X for g in group]
            feats = np.column_stack([np.sort(a[:, :2], axis=1), a[:, 2]])
        else:
            group = [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
            feats = a
        if self.appearance == "vertex":
            colors = _color_field(feats, self.color_seed, self.size)
            self.parts.append(_Part(v, f, colors=colors))
        else:
            self.parts.append(_Part(v, f, colors=self._colors(v, self.color_seed)))
        self.discrete.extend(_snap(g) for g in group[1:])

    # --- assembly -----------------------------------------------------------------------------------------
    def finish(
        self, symmetric: bool
    ) -> tuple[trimesh.Trimesh, np.ndarray, tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]]:
        rng = self.rng
        vertices: list[np.ndarray] = []
        faces: list[np.ndarray] = []
        uvs: list[np.ndarray] = []
        normals: list[np.ndarray] = []
        colors: list[np.ndarray] = []
        textured = self.appearance == "texture"
        if textured:
            cols = max(1, math.ceil(math.sqrt(len(self.tiles) * 1.5)))
            image, rects = _atlas(self.tiles, cols=cols)
            rect_arr = np.asarray(rects, dtype=np.float64)
        offset = 0
        for part in self.parts:
            n = corner_normals(part.vertices, part.faces, _SHARP_DEG)
            if textured:
                assert part.corner_uv is not None
                local, ids = part.corner_uv[..., :2], part.corner_uv[..., 2].astype(np.int64)
                r = rect_arr[ids]  # (F, 3, 4)
                uv = np.stack(
                    [
                        r[..., 0] + local[..., 0] * (r[..., 2] - r[..., 0]),
                        r[..., 1] + local[..., 1] * (r[..., 3] - r[..., 1]),
                    ],
                    axis=-1,
                )
                sv, sf, suv, sn = split_corners(part.vertices, part.faces, uv, n)
                assert suv is not None
                uvs.append(suv)
            else:
                assert part.colors is not None
                sv, sf, _, sn = split_corners(part.vertices, part.faces, None, n)
                # split_corners keeps the position of each new vertex: find its source vertex's colour.
                src = _source_vertex(part.vertices, part.faces, sf, sv)
                colors.append(part.colors[src])
            vertices.append(sv)
            faces.append(sf + offset)
            normals.append(sn)
            offset += len(sv)
        v = np.concatenate(vertices)
        f = np.concatenate(faces)
        nrm = np.concatenate(normals)
        # Scale to a random diameter; centre (asymmetric objects only: symmetric ones keep their fixed point).
        if not symmetric:
            v = v - (v.min(axis=0) + v.max(axis=0)) / 2
        else:
            # Slide a body of revolution / cyclic object along its axis so its extent along z is centred (a
            # translation along the axis commutes with rotations about it; not with half-turns across it).
            has_flip = any(abs(R[2, 2] + 1.0) < 1e-9 for R in self.discrete)
            if not has_flip and _all_about_z(self.discrete, self.continuous):
                v = v - np.array([0.0, 0.0, (v[:, 2].min() + v[:, 2].max()) / 2])
        diameter = mesh_diameter(v)
        target = rng.uniform(self.cfg.min_diameter_m, self.cfg.max_diameter_m)
        v = v * (target / diameter)
        discrete = [_snap(R) for R in self.discrete]
        continuous = [(a, o) for a, o in self.continuous]
        if symmetric and rng.random() < 0.5:
            R0 = _random_rotation(rng)
            v = v @ R0.T
            nrm = nrm @ R0.T
            discrete = [R0 @ R @ R0.T for R in discrete]
            continuous = [(R0 @ a, R0 @ o) for a, o in continuous]
        if textured:
            visual = _texture_visuals(np.concatenate(uvs), image)
            mesh = trimesh.Trimesh(v, f, vertex_normals=nrm, visual=visual, process=False)
        else:
            mesh = trimesh.Trimesh(v, f, vertex_normals=nrm, vertex_colors=np.concatenate(colors), process=False)
        mats = np.zeros((len(discrete), 4, 4))
        for i, R in enumerate(discrete):
            mats[i, :3, :3] = R
            mats[i, 3, 3] = 1.0
        cont = tuple(
            (tuple(float(x) for x in a / np.linalg.norm(a)), tuple(float(x) for x in o)) for a, o in continuous
        )
        return mesh, mats, cont  # type: ignore[return-value]


def _fan_box(extents: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed box centred at the origin whose sides are ``n × n`` grids of quads, each cut into 4 triangles
    around its centre: unlike a diagonal split, this triangulation maps onto itself under every symmetry of
    the box (so a symmetric box is symmetric face by face, not only as a surface)."""
    from meshpose.mesh.procedural import _SIDES

    ext = np.asarray(extents, dtype=np.float64)
    s = (np.arange(n + 1) / n) - 0.5
    c = (np.arange(n) + 0.5) / n - 0.5
    verts, faces, offset = [], [], 0
    for axis, sign, ua, va in _SIDES:
        gu, gv = np.meshgrid(s, s, indexing="ij")
        cu, cv = np.meshgrid(c, c, indexing="ij")
        uu = np.concatenate([gu.ravel(), cu.ravel()])
        vv = np.concatenate([gv.ravel(), cv.ravel()])
        p = np.zeros((len(uu), 3))
        p[:, axis] = sign * ext[axis] / 2
        p[:, ua] = uu * ext[ua]
        p[:, va] = vv * ext[va]
        grid = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
        centre = (n + 1) ** 2 + np.arange(n * n).reshape(n, n)
        a, b = grid[:-1, :-1].ravel(), grid[1:, :-1].ravel()
        cc, d = grid[1:, 1:].ravel(), grid[:-1, 1:].ravel()
        m = centre.ravel()
        tri = np.concatenate(
            [np.stack([a, b, m], 1), np.stack([b, cc, m], 1), np.stack([cc, d, m], 1), np.stack([d, a, m], 1)]
        )
        verts.append(p)
        faces.append(tri + offset)
        offset += len(p)
    v, f, _ = merge_positions(np.concatenate(verts), np.concatenate(faces))
    return v, f


def _source_vertex(v: np.ndarray, f: np.ndarray, split_f: np.ndarray, split_v: np.ndarray) -> np.ndarray:
    """For each vertex of a :func:`split_corners` result, the index of the input vertex it was split from."""
    src = np.zeros(len(split_v), dtype=np.int64)
    src[split_f.reshape(-1)] = np.asarray(f, dtype=np.int64).reshape(-1)
    return src


def _all_about_z(discrete: Sequence[np.ndarray], continuous: Sequence[tuple[np.ndarray, np.ndarray]]) -> bool:
    z = np.array([0.0, 0.0, 1.0])
    return all(np.allclose(R @ z, z) for R in discrete) and all(np.allclose(np.abs(a), z) for a, _ in continuous)


def _snap(R: np.ndarray) -> np.ndarray:
    """Round entries within 1e-12 of -1, 0 or 1 to them (exact half-turns and quarter-turns)."""
    out = np.array(R, dtype=np.float64)
    for c in (-1.0, 0.0, 1.0):
        out[np.abs(out - c) < 1e-12] = c
    return out


def _cube_group() -> list[np.ndarray]:
    """The 24 rotations of the cube (signed permutation matrices with determinant +1), identity first."""
    import itertools

    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            M = np.zeros((3, 3))
            for row, (col, s) in enumerate(zip(perm, signs, strict=True)):
                M[row, col] = s
            if np.linalg.det(M) > 0:
                mats.append(M)
    mats.sort(key=lambda M: not np.allclose(M, np.eye(3)))
    return mats


def _material(rng: np.random.Generator, appearance: str) -> dict[str, float]:
    metallic = float(rng.uniform(0.5, 1.0)) if rng.random() < (0.25 if appearance == "textureless" else 0.08) else 0.0
    return {
        "roughness": float(rng.uniform(0.15, 0.9)),
        "metallic": metallic,
        "specular": float(rng.uniform(0.2, 0.7)),
    }
