"""The diameter of a mesh or point set: the largest distance between two of its points, exactly and fast.

Comparing all pairs is quadratic, and restricting to the convex hull does not help when every vertex is on it
(a finely tessellated sphere: 655k vertices, 1.3 M faces). Here a lower bound ``L`` (farthest-point sweeps and
the extreme points along a fixed set of directions) prunes the pairs that could still be longer, with one of
two exact filters, whichever leaves fewer pairs to measure:

* **caps**: the fixed unit directions cover the sphere of directions within an angle ``θ``; a pair longer than
  ``L`` has its two ends in the top and the bottom cap (``L cos θ`` apart) along some direction. Few pairs for
  shapes with a distinct longest extent (boxes, cylinders, tetrahedra, ellipsoids).
* **balls**: with a centre ``c`` and ``R = max |p - c|``, a pair ``(a, b)`` longer than ``L`` has ``b`` within
  ``sqrt(2 R² + 2 |a - c|² - L²)`` of ``a``'s reflection ``2 c - a`` (parallelogram law), found with a k-d
  tree. Few pairs for round shapes, where the caps hold many points.

Both filters first drop the points whose ball is empty (they cannot end a pair longer than ``L``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Final

import numpy as np
import trimesh
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

__all__ = ["MAX_EXACT_PAIRS", "mesh_diameter", "render_bounding_sphere"]

log = logging.getLogger(__name__)

#: Most point pairs the exact search measures after pruning; beyond that (only shapes of nearly constant width
#: with millions of vertices) the result is the pruning's lower bound, within a stated relative error.
MAX_EXACT_PAIRS: Final[int] = 200_000_000
# Sets up to this size are compared all against all.
_BRUTE_FORCE_MAX: Final[int] = 1500
# Pairwise distances are computed in blocks of this many rows (memory: block × n float64).
_BLOCK: Final[int] = 512
# Elements per temporary array (projections, pair lists): about 32 MiB of float64.
_CHUNK_ELEMENTS: Final[int] = 1 << 22
# Nearest points of each reflection fetched at once by the ball filter (at least; at most).
_NEAREST: Final[int] = 2
_MAX_NEAREST: Final[int] = 128
# Ball-filter pairs per point below which it is used without trying the caps.
_EASY_BALL_PAIRS_PER_POINT: Final[int] = 64
# Icosphere subdivision level of the pruning directions (321 directions) and of the fallback's (1281).
_LEVEL: Final[int] = 3
_FALLBACK_LEVEL: Final[int] = 4
# Relative slack on every pruning bound, far above float64 rounding of the quantities compared.
_SLACK: Final[float] = 1e-9


def render_bounding_sphere(mesh: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    """The renderer's bounding sphere of a mesh: ``(centre (3,), radius)`` in the mesh's units — the centre of the
    bounding box of the vertices that faces use, and the largest distance from it to one of them.

    Example:
        >>> import trimesh
        >>> c, r = render_bounding_sphere(trimesh.creation.box((2.0, 2.0, 2.0)))
        >>> c.tolist(), round(r, 6)
        ([0.0, 0.0, 0.0], 1.732051)
    """
    used = np.asarray(mesh.vertices, dtype=np.float64)[np.unique(np.asarray(mesh.faces))]
    center = 0.5 * (used.min(axis=0) + used.max(axis=0))
    return center, float(np.linalg.norm(used - center, axis=1).max())


def mesh_diameter(mesh: trimesh.Trimesh | ArrayLike) -> float:
    """The exact diameter: the largest distance between two vertices of a mesh (or two points of a set).

    Exact for every input up to :data:`MAX_EXACT_PAIRS` pairs left after pruning (see the module docstring),
    which covers meshes of any size whose shape is not of nearly constant width: a sphere of 1.3 M faces
    (655k vertices, all on the hull) takes 2-4 s on one CPU core, a box or a scan of that size under a
    second. Only beyond that limit (e.g. a Reuleaux-like body with millions of vertices) is the result a
    lower bound ``L`` with ``L ≤ diameter ≤ L / cos θ`` (θ ≈ 0.048 rad: a relative error below 1.2e-3), and
    a warning says so. Memory stays bounded (temporaries of about 32 MiB besides a k-d tree of the points).

    Args:
        mesh: a ``trimesh.Trimesh`` (the vertices referenced by faces are used; all vertices if it has no
            faces) or an ``(N, 3)`` array of points.

    Returns:
        The diameter in the input's units (metres for meshpose meshes); ``0.0`` for a single point.

    Raises:
        ValueError: no points, or NaN/inf coordinates.

    Example:
        >>> round(mesh_diameter(trimesh.creation.box((0.1, 0.2, 0.2))), 6)
        0.3
    """
    if isinstance(mesh, trimesh.Trimesh):
        faces = np.asarray(mesh.faces)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        points = vertices[np.unique(faces)] if len(faces) else vertices
    else:
        points = np.asarray(mesh, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("cannot compute the diameter of an empty point set")
    if not np.isfinite(points).all():
        raise ValueError("cannot compute the diameter of points with NaN or inf coordinates")
    return _max_pairwise_distance(points)


def _max_pairwise_distance(points: np.ndarray) -> float:
    """Largest pairwise distance of ``(N, 3)`` points (exact up to :data:`MAX_EXACT_PAIRS`, see above)."""
    p = points - (points.min(axis=0) + points.max(axis=0)) / 2
    if len(p) < 2:
        return 0.0
    if len(p) <= _BRUTE_FORCE_MAX:
        return _max_cross_distance(p, p)
    best = _sweep_lower_bound(p)
    centre, rho2, r2max = _centre(p)
    q, reach2 = _ball_filter(p, rho2, r2max, best)
    if len(q) <= _BRUTE_FORCE_MAX:
        return max(best, _max_cross_distance(q, q))
    # Round shapes: the balls are nearly empty, settle it at once.
    tree = cKDTree(q)
    ball_pairs, k = _ball_pair_estimate(tree, q, centre, reach2)
    if ball_pairs <= _EASY_BALL_PAIRS_PER_POINT * len(q):
        return _search_balls(q, tree, 2.0 * centre - q, np.sqrt(reach2) * (1.0 + _SLACK), best, k)
    # Otherwise: a better lower bound from the extreme points along the directions, then the cheaper filter.
    directions, theta = _pruning_directions(_LEVEL)
    lo, hi = _extent(q, directions)
    best = max(best, _extreme_pairs_bound(q, directions, lo, hi))
    n_before = len(q)
    q, reach2 = _ball_filter(q, np.sum((q - centre) ** 2, axis=-1), r2max, best)
    if len(q) < n_before:
        if len(q) <= _BRUTE_FORCE_MAX:
            return max(best, _max_cross_distance(q, q))
        tree = cKDTree(q)
        ball_pairs, k = _ball_pair_estimate(tree, q, centre, reach2)
        lo, hi = _extent(q, directions)
    cap_pairs = _cap_pair_count(q, directions, lo, hi, best * np.cos(theta) * (1.0 - _SLACK))
    if cap_pairs <= MAX_EXACT_PAIRS and cap_pairs <= ball_pairs:
        return _search_caps(q, directions, lo, hi, theta, best)
    if ball_pairs <= MAX_EXACT_PAIRS:
        return _search_balls(q, tree, 2.0 * centre - q, np.sqrt(reach2) * (1.0 + _SLACK), best, k)
    fine, fine_theta = _pruning_directions(_FALLBACK_LEVEL)
    bound = max(best, _extreme_pairs_bound(q, fine, *_extent(q, fine), count=len(fine)))
    log.warning(
        "mesh_diameter: %d points of a shape of nearly constant width; an exact search would measure about "
        "%.2g pairs, so the result %.9g is a lower bound within a relative %.1e of the diameter",
        len(points),
        min(cap_pairs, ball_pairs),
        bound,
        1.0 / np.cos(fine_theta) - 1.0,
    )
    return bound


def _sweep_lower_bound(p: np.ndarray) -> float:
    """A distance between two of the points: farthest-point sweeps from the first point."""
    i, best = 0, 0.0
    for _ in range(4):
        d = _distances(p, p[i])
        j = int(np.argmax(d))
        if d[j] <= best:
            break
        i, best = j, float(d[j])
    return best


def _ball_filter(p: np.ndarray, rho2: np.ndarray, r2max: float, best: float) -> tuple[np.ndarray, np.ndarray]:
    """The points that can end a pair longer than ``best`` and their squared ball radii (see the module)."""
    reach2 = 2.0 * r2max + 2.0 * rho2 - best * best + _SLACK * best * best
    keep = reach2 > 0
    return p[keep], reach2[keep]


def _ball_pair_estimate(tree: cKDTree, q: np.ndarray, centre: np.ndarray, reach2: np.ndarray) -> tuple[float, int]:
    """Pairs the ball filter would measure, estimated from 256 sample points, and how many nearest points to
    fetch per point (enough for about 99 % of the balls)."""
    sample = np.random.default_rng(0).choice(len(q), size=min(len(q), 256), replace=False)
    radii = np.sqrt(reach2[sample]) * (1.0 + _SLACK)
    counts = np.asarray(tree.query_ball_point(2.0 * centre - q[sample], radii, return_length=True))
    k = int(np.clip(2 ** np.ceil(np.log2(max(1.0, float(np.percentile(counts, 99)) + 1))), _NEAREST, _MAX_NEAREST))
    return float(np.mean(np.maximum(counts, k))) * len(q), min(k, len(q))


def _extent(q: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K,)`` minimum and maximum projections of the points on the directions."""
    lo = np.full(len(directions), np.inf)
    hi = np.full(len(directions), -np.inf)
    for proj in _projections(q, directions):
        np.minimum(lo, proj.min(axis=1), out=lo)
        np.maximum(hi, proj.max(axis=1), out=hi)
    return lo, hi


def _extreme_pairs_bound(
    q: np.ndarray, directions: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: int = 8
) -> float:
    """The longest distance between the two extreme points along each of the ``count`` widest directions."""
    widest = directions[np.argsort(hi - lo)[-count:]]
    step = max(1, _CHUNK_ELEMENTS // len(widest))
    i_lo = np.zeros(len(widest), dtype=np.int64)
    i_hi = np.zeros(len(widest), dtype=np.int64)
    v_lo = np.full(len(widest), np.inf)
    v_hi = np.full(len(widest), -np.inf)
    for start in range(0, len(q), step):
        proj = widest @ q[start : start + step].T
        a, b = proj.argmin(axis=1), proj.argmax(axis=1)
        rows = np.arange(len(widest))
        take_lo, take_hi = proj[rows, a] < v_lo, proj[rows, b] > v_hi
        v_lo[take_lo], i_lo[take_lo] = proj[rows, a][take_lo], a[take_lo] + start
        v_hi[take_hi], i_hi[take_hi] = proj[rows, b][take_hi], b[take_hi] + start
    return float(np.sqrt(np.sum((q[i_hi] - q[i_lo]) ** 2, axis=-1)).max())


def _projections(p: np.ndarray, directions: np.ndarray) -> Iterator[np.ndarray]:
    """``(K, m)`` projections of consecutive chunks of ``m`` points on the ``K`` directions (rows contiguous)."""
    step = max(1, _CHUNK_ELEMENTS // len(directions))
    for start in range(0, len(p), step):
        yield directions @ p[start : start + step].T


def _centre(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The centre among a few candidates with the smallest enclosing radius; squared distances to it."""
    choice: tuple[np.ndarray, np.ndarray, float] | None = None
    for c in (np.zeros(3), p.mean(axis=0)):
        rho2 = np.sum((p - c) ** 2, axis=-1)
        r2max = float(rho2.max())
        if choice is None or r2max < choice[2]:
            choice = (c, rho2, r2max)
    assert choice is not None
    return choice


def _cap_pair_count(q: np.ndarray, directions: np.ndarray, lo: np.ndarray, hi: np.ndarray, margin: float) -> float:
    """Pairs the cap filter would measure: ``sum_k |top_k| |bottom_k|``."""
    top = np.zeros(len(directions))
    bottom = np.zeros(len(directions))
    for proj in _projections(q, directions):
        top += np.count_nonzero(proj >= (lo + margin)[:, None], axis=1)
        bottom += np.count_nonzero(proj <= (hi - margin)[:, None], axis=1)
    return float(np.sum(top * bottom))


def _search_caps(
    q: np.ndarray, directions: np.ndarray, lo: np.ndarray, hi: np.ndarray, theta: float, best: float
) -> float:
    """Exact farthest pair by the cap filter (``best``: a distance already attained)."""
    step = max(1, _CHUNK_ELEMENTS // len(q))
    for start in range(0, len(directions), step):
        proj = directions[start : start + step] @ q.T
        for k in range(len(proj)):
            margin = best * np.cos(theta) * (1.0 - _SLACK)
            top = proj[k] >= lo[start + k] + margin
            bottom = proj[k] <= hi[start + k] - margin
            if top.any() and bottom.any():
                best = max(best, _max_cross_distance(q[top], q[bottom]))
    return best


def _search_balls(q: np.ndarray, tree: cKDTree, mirrored: np.ndarray, radii: np.ndarray, best: float, k: int) -> float:
    """Exact farthest pair by the ball filter: each point against the points in its ball around its reflection.

    The ``k`` nearest points of each reflection settle the points whose ball holds fewer; the others ask the
    tree for their whole ball. Pairs are measured in chunks of about ``_CHUNK_ELEMENTS / 4``.
    """
    rest = []
    step = max(1, _CHUNK_ELEMENTS // (4 * k))
    for start in range(0, len(q), step):
        dist, idx = tree.query(mirrored[start : start + step], k=k)
        d2 = np.sum((q[start : start + step, None, :] - q[idx]) ** 2, axis=-1)
        best = max(best, float(np.sqrt(d2.max())))
        rest.append(np.flatnonzero(dist[:, -1] <= radii[start : start + step]) + start)
    todo = np.concatenate(rest)
    step = max(1, _CHUNK_ELEMENTS // (4 * len(q)))
    for start in range(0, len(todo), step):
        rows = todo[start : start + step]
        found = tree.query_ball_point(mirrored[rows], radii[rows])
        lengths = np.array([len(f) for f in found], dtype=np.int64)
        a = np.repeat(rows, lengths)
        b = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64, count=int(lengths.sum()))
        if len(a):
            best = max(best, float(np.sqrt(np.sum((q[a] - q[b]) ** 2, axis=-1).max())))
    return best


def _distances(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(np.sqrt(np.sum((p - x) ** 2, axis=-1)), dtype=np.float64)


_directions_cache: dict[int, tuple[np.ndarray, float]] = {}


def _pruning_directions(level: int) -> tuple[np.ndarray, float]:
    """Half of the vertices of a subdivided icosahedron (one of each ±d pair) and ``θ``, a bound on the angle
    from any unit vector to the nearest of ±those: the largest circumradius of the icosphere's triangles (a
    point of a spherical triangle is never farther than that from the triangle's nearest corner)."""
    if level not in _directions_cache:
        sphere = trimesh.creation.icosphere(subdivisions=level, radius=1.0)
        v = np.asarray(sphere.vertices, dtype=np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        tri = v[np.asarray(sphere.faces)]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        normal *= np.sign(np.einsum("ij,ij->i", normal, tri[:, 0]))[:, None]
        cos_radius = np.einsum("ij,ij->i", normal, tri[:, 0])
        theta = float(np.arccos(np.clip(cos_radius.min(), -1.0, 1.0))) * (1.0 + 1e-6)
        g = np.array([0.3141, 0.5926, 0.7412])
        _directions_cache[level] = (v[v @ g > 0], theta)
    return _directions_cache[level]


def _max_cross_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``max |aᵢ - bⱼ|`` over all pairs, in row blocks (memory: ``_BLOCK × len(b)`` float64)."""
    best = 0.0
    for start in range(0, len(a), _BLOCK):
        block = a[start : start + _BLOCK]
        d2 = np.sum((block[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))
