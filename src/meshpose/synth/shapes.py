"""Shape primitives and deformations of generated objects (unit size; metres once scaled), and the exact
rotation groups of their symmetries. Deterministic for a given generator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import trimesh

from meshpose.mesh.procedural import BOX_SIDES, box_part, polyline
from meshpose.mesh.simplify import merge_positions

__all__ = [
    "FLIP_X",
    "PRIMITIVES",
    "all_about_z",
    "cube_group",
    "fan_box",
    "primitive",
    "random_rotation",
    "relief",
    "revolve",
    "rot_z",
    "smooth_field",
    "smooth_profile",
    "snap_rotation",
    "subdivide",
]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random ``(3, 3)`` rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def rot_z(angle: float) -> np.ndarray:
    """The ``(3, 3)`` rotation by ``angle`` radians about z."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


FLIP_X = np.diag([1.0, -1.0, -1.0])  # half-turn about x, exact


def revolve(profile: np.ndarray, sections: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed solid of revolution about z of an ``(r, z)`` profile that starts and ends on the axis."""
    mesh = trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=int(sections))
    v, f, _ = merge_positions(mesh.vertices, mesh.faces)
    return v, f


def smooth_profile(rng: np.random.Generator, height: float, radius: float, step: float, *, mirror: bool) -> np.ndarray:
    """A random smooth ``(r, z)`` profile from the bottom pole to the top pole (``r > 0`` in between), for
    :func:`revolve`; ``mirror``: symmetric about ``z = 0``. Ends are flat caps or rounded."""
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


def primitive(kind: str, size: float, rng: np.random.Generator, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed primitive of about ``size`` metres, centred at the origin, local axes."""
    if kind == "box":
        ext = size * rng.uniform(0.35, 1.0, 3)
        box = box_part(tuple(ext), (0.0, 0.0, 0.0), cell=max(step, float(ext.max()) / 10))
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
    return revolve(polyline(prof, step), sections)


PRIMITIVES = ("box", "ellipsoid", "cylinder", "cone", "frustum", "capsule", "torus")


def subdivide(v: np.ndarray, f: np.ndarray, max_edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Subdivide until no edge is longer than ``max_edge``; vertices at one position merged."""
    v2, f2 = trimesh.remesh.subdivide_to_size(v, f, max_edge=max_edge, max_iter=8)
    return merge_positions(v2, f2)[:2]


def smooth_field(rng: np.random.Generator, points: np.ndarray, scale: float, count: int = 8) -> np.ndarray:
    """A smooth random scalar field in [-1, 1] (sum of 3-D sinusoids with wavelengths ~ ``scale``)."""
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = 2 * math.pi / (scale * rng.uniform(0.5, 1.5, count))
    phase = rng.uniform(0, 2 * math.pi, count)
    amp = rng.uniform(0.5, 1.0, count)
    s = np.sin(points @ (d * k[:, None]).T + phase) @ amp
    return np.asarray(s / amp.sum(), dtype=np.float64)


def relief(rng: np.random.Generator, v: np.ndarray, f: np.ndarray, amount: float, scale: float) -> np.ndarray:
    """Displace vertices along their (area-weighted) normals by a smooth random field."""
    mesh = trimesh.Trimesh(v, f, process=False)
    normals = np.asarray(mesh.vertex_normals)
    return v + normals * (amount * smooth_field(rng, v, scale))[:, None]


def fan_box(extents: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed box centred at the origin whose sides are ``n × n`` grids of quads, each cut into 4 triangles
    around its centre: unlike a diagonal split, this triangulation maps onto itself under every symmetry of
    the box (so a symmetric box is symmetric face by face, not only as a surface)."""
    ext = np.asarray(extents, dtype=np.float64)
    s = (np.arange(n + 1) / n) - 0.5
    c = (np.arange(n) + 0.5) / n - 0.5
    verts, faces, offset = [], [], 0
    for axis, sign, ua, va in BOX_SIDES:
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


def all_about_z(discrete: Sequence[np.ndarray], continuous: Sequence[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether every symmetry (3×3 rotations, ``(axis, offset)`` pairs) keeps the z axis fixed."""
    z = np.array([0.0, 0.0, 1.0])
    return all(np.allclose(R @ z, z) for R in discrete) and all(np.allclose(np.abs(a), z) for a, _ in continuous)


def snap_rotation(R: np.ndarray) -> np.ndarray:
    """Round entries within 1e-12 of -1, 0 or 1 to them (exact half-turns and quarter-turns)."""
    out = np.array(R, dtype=np.float64)
    for c in (-1.0, 0.0, 1.0):
        out[np.abs(out - c) < 1e-12] = c
    return out


def cube_group() -> list[np.ndarray]:
    """The 24 rotations of the cube (signed permutation matrices with determinant +1), identity first."""
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
