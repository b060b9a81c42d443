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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import trimesh

from meshpose.geometry.symmetry import symmetry_transforms_from_lists
from meshpose.mesh import mesh_diameter
from meshpose.mesh.model import make_object_model, validate_symmetries
from meshpose.mesh.procedural import outer_surface_points
from meshpose.synth.novel_builder import Builder
from meshpose.synth.textures import TEXTURE_KINDS
from meshpose.types import ObjectModel

__all__ = [
    "APPEARANCES",
    "FAMILIES",
    "SYMMETRIC_FAMILIES",
    "TEXTURE_KINDS",
    "NovelConfig",
    "NovelObject",
    "novel_mesh",
    "novel_object",
]

FAMILIES = ("composite", "blob", "deformed", "revolution", "cyclic", "dihedral", "box")
SYMMETRIC_FAMILIES = ("revolution", "cyclic", "dihedral", "box")
APPEARANCES = ("texture", "vertex", "plain", "textureless")


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
        """Whether the object lists any symmetry."""
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
    builder = Builder(rng, cfg, appearance, texture_kind)
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


def _choice(rng: np.random.Generator, options: Sequence[str], weights: Mapping[str, float]) -> str:
    w = np.array([float(weights.get(o, 0.0)) for o in options])
    if w.sum() <= 0:
        w = np.ones(len(options))
    return str(options[int(rng.choice(len(options), p=w / w.sum()))])


def _material(rng: np.random.Generator, appearance: str) -> dict[str, float]:
    metallic = float(rng.uniform(0.5, 1.0)) if rng.random() < (0.25 if appearance == "textureless" else 0.08) else 0.0
    return {
        "roughness": float(rng.uniform(0.15, 0.9)),
        "metallic": metallic,
        "specular": float(rng.uniform(0.2, 0.7)),
    }
