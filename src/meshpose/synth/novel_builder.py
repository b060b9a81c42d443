"""The builder of generated objects: parts with their appearance (texture charts or vertex colours),
assembled into one mesh with its exact symmetries (see :mod:`meshpose.synth.novel` for the families).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from meshpose.mesh import mesh_diameter
from meshpose.mesh.procedural import (
    box_part,
    box_projection,
    color_field,
    decorate_texture,
    hsv_to_rgb,
    polyline,
    texture_atlas,
    texture_visuals,
)
from meshpose.mesh.simplify import corner_normals, merge_positions, split_corners
from meshpose.synth.shapes import (
    FLIP_X,
    PRIMITIVES,
    all_about_z,
    cube_group,
    fan_box,
    primitive,
    random_rotation,
    relief,
    revolve,
    rot_z,
    smooth_field,
    smooth_profile,
    snap_rotation,
    subdivide,
)
from meshpose.synth.textures import TEXTURE_KINDS, band_tile, random_color, solid_tile, texture_tile

if TYPE_CHECKING:
    from meshpose.synth.novel import NovelConfig

__all__ = ["Builder", "Part"]

_SHARP_DEG = 40.0


@dataclass
class Part:
    """One closed part of a generated object with its appearance (unit size, the builder's frame)."""

    vertices: np.ndarray  # (V, 3) merged positions of a closed surface
    faces: np.ndarray  # (F, 3)
    corner_uv: np.ndarray | None = None  # (F, 3, 2) for textured objects
    colors: np.ndarray | None = None  # (V, 4) uint8 for coloured objects


class Builder:
    """Builds one generated object from ``rng``: a family method (:meth:`composite`, :meth:`blob`,
    :meth:`deformed`, :meth:`revolution`, :meth:`cyclic`, :meth:`box`) adds parts and symmetries, then
    :meth:`finish` assembles the mesh (scaled to a random diameter of ``cfg``) and the symmetry lists.

    Args:
        rng: the object's generator (its draws decide everything, in order).
        cfg: generator settings.
        appearance: ``"texture"``, ``"vertex"``, ``"plain"`` or ``"textureless"``.
        texture_kind: the main texture kind of a textured object (one of
            :data:`~meshpose.synth.textures.TEXTURE_KINDS`), else ``""``.
    """

    def __init__(self, rng: np.random.Generator, cfg: NovelConfig, appearance: str, texture_kind: str) -> None:
        self.rng = rng
        self.cfg = cfg
        self.appearance = appearance
        self.texture_kind = texture_kind
        self.size = 1.0  # built at unit size, scaled at the end
        self.step = cfg.target_edge * self.size
        self.parts: list[Part] = []
        self.tiles: list[np.ndarray] = []
        self.pool: list[int] = []
        self.discrete: list[np.ndarray] = []  # 3x3 rotations (all non-identity group elements)
        self.continuous: list[tuple[np.ndarray, np.ndarray]] = []
        self.base_color = random_color(rng, (0.35, 0.95))
        self.textureless_color = tuple(
            int(c)
            for c in np.rint(hsv_to_rgb(np.array([rng.random(), rng.uniform(0, 0.25), rng.uniform(0.3, 0.85)])) * 255)
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
            tile = decorate_texture(tile, rng, int(rng.integers(1, 5)))
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

    def dress(self, v: np.ndarray, f: np.ndarray, *, flat: bool = False) -> Part:
        """A part with this object's kind of appearance, in the part's current frame."""
        rng = self.rng
        if self.appearance == "texture":
            if flat:
                charts = self._add_tiles([solid_tile(self.cfg.texture_px, random_color(rng), rng)]) * 6
            else:
                charts = [self._pooled_tile() for _ in range(6)]
            return Part(v, f, corner_uv=self._charts_uv(v, f, charts))
        return Part(v, f, colors=self._colors(v, local_seed=int(rng.integers(0, 2**31 - 1))))

    def _charts_uv(self, v: np.ndarray, f: np.ndarray, charts: Sequence[int]) -> np.ndarray:
        # Placeholder rectangles: the real atlas rectangles are filled in by finish() (uv in chart units).
        uv = box_projection(v, f, [(0.0, 0.0, 1.0, 1.0)] * 6)  # (F, 3, 2) in [0, 1] per chart
        tri = v[f]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        axis = np.argmax(np.abs(normal), axis=1)
        chart = 2 * axis + (normal[np.arange(len(f)), axis] < 0)
        ids = np.asarray(charts)[chart]
        return np.concatenate([uv, np.repeat(ids[:, None, None].astype(np.float64), 3, axis=1)], axis=2)

    def _colors(self, v: np.ndarray, local_seed: int) -> np.ndarray:
        if self.appearance == "vertex":
            return color_field(v, local_seed, self.size)
        color = (
            self.textureless_color
            if self.appearance == "textureless"
            else random_color(np.random.default_rng(local_seed), (0.35, 0.95))
        )
        return np.tile(np.array([*color, 255], dtype=np.uint8), (len(v), 1))

    def invariant_part(self, v: np.ndarray, f: np.ndarray, invariant: np.ndarray) -> Part:
        """A part whose colour depends only on ``invariant`` (one value in [0, 1] per vertex)."""
        rng = self.rng
        if self.appearance == "texture":
            tile_id = self._add_tiles([band_tile(self.cfg.texture_px, rng)])[0]
            t = np.clip(invariant, 0.0, 1.0)
            uv = np.stack([np.full_like(t, 0.5), t], axis=1)[f]  # (F, 3, 2)
            ids = np.full((len(f), 3, 1), float(tile_id))
            return Part(v, f, corner_uv=np.concatenate([uv, ids], axis=2))
        if self.appearance == "vertex":
            n = int(rng.integers(3, 8))
            edges = np.sort(rng.random(n - 1))
            palette = np.array([[*random_color(rng), 255] for _ in range(n)], dtype=np.uint8)
            smooth = rng.random() < 0.5
            if smooth:
                knots = np.linspace(0, 1, n)
                rgb = np.stack([np.interp(invariant, knots, palette[:, c].astype(np.float64)) for c in range(3)], 1)
                colors = np.column_stack([np.rint(rgb), np.full(len(v), 255.0)]).astype(np.uint8)
            else:
                colors = palette[np.searchsorted(edges, invariant)]
            return Part(v, f, colors=colors)
        return Part(v, f, colors=self._colors(v, int(rng.integers(0, 2**31 - 1))))

    # --- families -----------------------------------------------------------------------------------------
    def _attach(self, base: list[np.ndarray], count: int, size_range: tuple[float, float]) -> None:
        """Attach ``count`` random primitives at random vertices of the parts in ``base``."""
        rng = self.rng
        for _ in range(count):
            anchor_part = base[int(rng.integers(0, len(base)))]
            anchor = anchor_part[int(rng.integers(0, len(anchor_part)))]
            kind = str(rng.choice(list(PRIMITIVES)))
            v, f = primitive(kind, self.size * rng.uniform(*size_range), rng, self.step)
            R = random_rotation(rng)
            centre = anchor * rng.uniform(0.75, 1.0)
            v = v @ R.T + centre
            base.append(v)
            self.parts.append(self.dress(v, f, flat=rng.random() < 0.15))

    def composite(self, count: int) -> None:
        """A composite of ``count`` primitives, each attached to an earlier one."""
        rng = self.rng
        kind = str(rng.choice(list(PRIMITIVES)))
        v, f = primitive(kind, self.size, rng, self.step)
        v = v @ random_rotation(rng).T
        self.parts.append(self.dress(v, f))
        self._attach([v], count - 1, (0.3, 0.8))

    def blob(self) -> None:
        """A sphere with smooth random relief and anisotropic scale, plus 0–2 attached primitives."""
        rng = self.rng
        sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5 * self.size)
        v = np.asarray(sphere.vertices)
        f = np.asarray(sphere.faces)
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        r = 1.0 + 0.25 * smooth_field(rng, unit, 1.5, 6) + 0.08 * smooth_field(rng, unit, 0.5, 10)
        v = v * r[:, None] * rng.uniform(0.5, 1.0, 3)
        v = v @ random_rotation(rng).T
        self.parts.append(self.dress(v, f))
        self._attach([v], int(rng.integers(0, 3)), (0.2, 0.5))

    def deformed(self) -> None:
        """A tessellated box or cylinder tapered, twisted and bent, with relief, plus 0–2 primitives."""
        rng = self.rng
        if rng.random() < 0.5:
            ext = self.size * rng.uniform(0.3, 1.0, 3)
            ext[2] = self.size
            box = box_part(tuple(ext), (0.0, 0.0, 0.0), cell=1.4 * self.step)
            v, f = merge_positions(box.vertices, box.faces)[:2]
        else:
            radius = self.size * rng.uniform(0.15, 0.4)
            h = self.size
            prof = polyline([(0.0, -h / 2), (radius, -h / 2), (radius, h / 2), (0.0, h / 2)], self.step)
            v, f = revolve(prof, max(16, round(2 * math.pi * radius / self.step)))
        v, f = subdivide(v, f, 1.4 * self.step)
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
        v = relief(rng, v, f, 0.02 * self.size, 0.4 * self.size)
        v = v @ random_rotation(rng).T
        self.parts.append(self.dress(v, f))
        self._attach([v], int(rng.integers(0, 3)), (0.2, 0.45))

    def revolution(self) -> None:
        """A solid of revolution (continuous symmetry about z; a half-turn about x when mirrored)."""
        rng = self.rng
        mirror = rng.random() < 0.4
        height = self.size * rng.uniform(0.5, 1.0)
        radius = self.size * rng.uniform(0.2, 0.5)
        profile = smooth_profile(rng, height, radius, self.step, mirror=mirror)
        v, f = revolve(profile, 96)
        invariant = self._height_invariant(v, mirror)
        self.parts.append(self.invariant_part(v, f, invariant))
        self.continuous.append((np.array([0.0, 0.0, 1.0]), np.zeros(3)))
        if mirror:
            self.discrete.append(FLIP_X.copy())

    def _height_invariant(self, v: np.ndarray, mirror: bool) -> np.ndarray:
        z = v[:, 2]
        if mirror:
            zmax = float(np.abs(z).max()) or 1.0
            return np.abs(z) / zmax
        lo, hi = float(z.min()), float(z.max())
        return (z - lo) / max(hi - lo, 1e-12)

    def cyclic(self, n: int, *, dihedral: bool) -> None:
        """A body of revolution with ``n`` (``2n`` when ``dihedral``) copies of a piece: ``C_n`` / ``D_n``."""
        rng = self.rng
        group = [rot_z(2 * math.pi * k / n) for k in range(n)]
        if dihedral:
            group = group + [g @ FLIP_X for g in group]
        # The body: a solid of revolution with a multiple of n sections (mirror-symmetric for D_n).
        height = self.size * rng.uniform(0.3, 0.9)
        radius = self.size * rng.uniform(0.15, 0.35)
        profile = smooth_profile(rng, height, radius, self.step, mirror=dihedral)
        sections = n * max(1, math.ceil(48 / n))
        bv, bf = revolve(profile, sections)
        if rng.random() < 0.35:  # a prism-like body: few sections, sharp edges
            k_min = math.ceil(3 / n)
            bv, bf = revolve(profile, n * int(rng.integers(k_min, k_min + 2)))
        self.parts.append(self.invariant_part(bv, bf, self._height_invariant(bv, dihedral)))
        # The piece: an arbitrary primitive off the axis, replicated by every group element.
        kind = str(rng.choice(list(PRIMITIVES)))
        pv, pf = primitive(kind, self.size * rng.uniform(0.25, 0.5), rng, self.step)
        pv = pv @ random_rotation(rng).T
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
                Part(piece.vertices @ g.T, piece.faces.copy(), corner_uv=piece.corner_uv, colors=piece.colors)
            )
        self.discrete.extend(g for g in group[1:])

    def box(self) -> None:
        """A plain box with the symmetries of its extents (3, 7 or 23 non-identity rotations)."""
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
        v, f = fan_box(ext, max(2, min(12, round(float(ext.max()) / self.step))))
        a = np.abs(v)
        eq_xy = abs(ext[0] - ext[1]) < 1e-12
        cube = eq_xy and abs(ext[1] - ext[2]) < 1e-12
        if cube:
            group = cube_group()
            feats = np.sort(a, axis=1)
        elif eq_xy:
            group = [rot_z(math.pi / 2 * k) for k in range(4)]
            group = group + [g @ FLIP_X for g in group]
            feats = np.column_stack([np.sort(a[:, :2], axis=1), a[:, 2]])
        else:
            group = [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
            feats = a
        if self.appearance == "vertex":
            colors = color_field(feats, self.color_seed, self.size)
            self.parts.append(Part(v, f, colors=colors))
        else:
            self.parts.append(Part(v, f, colors=self._colors(v, self.color_seed)))
        self.discrete.extend(snap_rotation(g) for g in group[1:])

    # --- assembly -----------------------------------------------------------------------------------------
    def finish(
        self, symmetric: bool
    ) -> tuple[trimesh.Trimesh, np.ndarray, tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]]:
        """Assemble the parts into one mesh (metres, random diameter, centred), with the discrete ``(K, 4, 4)``
        and continuous ``((axis, offset_m), …)`` symmetry lists (turned with the mesh when it is turned)."""
        rng = self.rng
        vertices: list[np.ndarray] = []
        faces: list[np.ndarray] = []
        uvs: list[np.ndarray] = []
        normals: list[np.ndarray] = []
        colors: list[np.ndarray] = []
        textured = self.appearance == "texture"
        if textured:
            cols = max(1, math.ceil(math.sqrt(len(self.tiles) * 1.5)))
            image, rects = texture_atlas(self.tiles, cols=cols)
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
            if not has_flip and all_about_z(self.discrete, self.continuous):
                v = v - np.array([0.0, 0.0, (v[:, 2].min() + v[:, 2].max()) / 2])
        diameter = mesh_diameter(v)
        target = rng.uniform(self.cfg.min_diameter_m, self.cfg.max_diameter_m)
        v = v * (target / diameter)
        discrete = [snap_rotation(R) for R in self.discrete]
        continuous = [(a, o) for a, o in self.continuous]
        if symmetric and rng.random() < 0.5:
            R0 = random_rotation(rng)
            v = v @ R0.T
            nrm = nrm @ R0.T
            discrete = [R0 @ R @ R0.T for R in discrete]
            continuous = [(R0 @ a, R0 @ o) for a, o in continuous]
        if textured:
            visual = texture_visuals(np.concatenate(uvs), image)
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


def _source_vertex(v: np.ndarray, f: np.ndarray, split_f: np.ndarray, split_v: np.ndarray) -> np.ndarray:
    """For each vertex of a :func:`split_corners` result, the index of the input vertex it was split from."""
    src = np.zeros(len(split_v), dtype=np.int64)
    src[split_f.reshape(-1)] = np.asarray(f, dtype=np.int64).reshape(-1)
    return src
