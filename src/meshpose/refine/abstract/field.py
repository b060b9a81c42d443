"""Descriptors fused onto an object: a voxel grid in the object frame, and the field it defines on the surface.

Fusion (:func:`fuse_samples`): descriptor samples seen at object-frame surface points (from rendered views of the
object) are averaged per voxel of a grid whose edge is chosen so that about ``voxels`` voxels hold samples; each
occupied voxel keeps the mean descriptor and the mean position of its samples. Every vertex of the mesh gets the
inverse-distance-weighted descriptor of its 4 nearest voxels (as in abstract render-and-compare).

Rendering the descriptors (:meth:`DescriptorField.sample`): the rasteriser gives the object-frame point seen at
every pixel (``xyz``), and the descriptor there is the same inverse-distance-weighted field, precomputed on the
nodes of a regular grid around the surface and interpolated trilinearly. This is the continuous version of drawing
the mesh with per-vertex descriptors and interpolating them across faces, without depending on how finely the
mesh is tessellated, and without one extra render target per four descriptor channels: one GL pass (``xyz``,
``instance``, ``depth``) serves every descriptor dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

__all__ = ["DescriptorField", "FieldSet", "fuse_samples", "idw"]

#: Nearest voxels of the inverse-distance weighting.
IDW_NEIGHBOURS = 4
#: Largest number of nodes of the sampling grid (the edge grows past it).
MAX_GRID_NODES = 2_000_000


def idw(tree: cKDTree, values: np.ndarray, query: np.ndarray, k: int = IDW_NEIGHBOURS) -> np.ndarray:
    """Inverse-distance-weighted mean of ``values`` at the ``k`` points of ``tree`` nearest each query point.

    Args:
        tree: KD-tree of ``V`` points.
        values: ``(V, D)`` values at them.
        query: ``(M, 3)`` query points.
        k: neighbours (fewer when the tree holds fewer points).

    Returns:
        ``(M, D)`` float32; a query point that coincides with a tree point gets that point's value.
    """
    k = min(k, tree.n)
    dist, idx = tree.query(np.asarray(query, dtype=np.float64), k=k)
    if k == 1:
        dist, idx = dist[:, None], idx[:, None]
    w = 1.0 / np.maximum(dist, 1e-9)
    w /= w.sum(1, keepdims=True)
    return np.einsum("mk,mkd->md", w, values[idx]).astype(np.float32)


@dataclass(frozen=True, eq=False)
class DescriptorField:
    """An object's fused descriptors (its arrays are not to be changed in place: see :meth:`sample`).

    Args:
        voxel_points: ``(V, 3)`` float32 mean object-frame position of each occupied voxel's samples, metres.
        voxel_desc: ``(V, D)`` float32 mean descriptor of each occupied voxel.
        vertex_desc: ``(Nv, D)`` float32 descriptor of each vertex of the mesh it was fused for.
        origin: ``(3,)`` float64 object-frame position of grid node ``(0, 0, 0)``, metres.
        edge: spacing of the grid nodes (the voxel edge), metres.
        grid: ``(D, nz, ny, nx)`` float32 field at the grid nodes (node ``(k, j, i)`` at
            ``origin + edge · (i, j, k)``).
    """

    voxel_points: np.ndarray
    voxel_desc: np.ndarray
    vertex_desc: np.ndarray
    origin: np.ndarray
    edge: float
    grid: np.ndarray

    @property
    def dim(self) -> int:
        """Descriptor channels ``D``."""
        return int(self.voxel_desc.shape[1])

    @cached_property
    def _field_set(self) -> FieldSet:
        """This field alone as a :class:`FieldSet` (built on the first :meth:`sample`, then kept: a channels-last
        copy of :attr:`grid`)."""
        return FieldSet([self])

    def sample(self, xyz: np.ndarray) -> np.ndarray:
        """Descriptors at object-frame points: trilinear in the node grid; outside it, clamped to the grid's
        border (the value at the nearest point of the grid's box).

        The interpolation is :meth:`FieldSet.sample`'s, on a one-object set made on the first call and kept on
        the instance (so :attr:`grid` must not be changed in place afterwards).

        Args:
            xyz: ``(M, 3)`` object-frame points, metres.

        Returns:
            ``(M, D)`` float32.
        """
        pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
        return self._field_set.sample(pts, np.zeros(len(pts), np.intp))


class FieldSet:
    """Several objects' fields sampled in one call: the one implementation of the fields' trilinear interpolation
    (:meth:`DescriptorField.sample` is a one-object set).

    The node grids are stored once, channels last, one after the other in one ``(ΣV + 1, D)`` table (``ΣV``: the
    nodes of all grids; the last row is 0: the descriptor of objects without a field); a point's descriptor is the
    weighted sum of its 8 grid corners' rows — one sparse ``(M, ΣV + 1)`` matrix of trilinear weights times the
    table, for all points of all objects. The interpolation is ``torch.nn.functional.grid_sample``'s (trilinear,
    ``align_corners=True``, padding ``"border"``: a point outside the grid gets the value at the nearest point of
    the grid's box), equal to it up to float32 rounding (the tests compare them). Plain numpy/scipy (one thread):
    no parallel region that a busy core would stall.

    Args:
        fields: per object, its fused descriptors (``None``: the object has none; its points get 0).
        dim: descriptor channels ``D`` (default: the fields'; needed when every field is ``None``).

    Raises:
        ValueError: fields of different descriptor sizes, or no way to know ``D``.
    """

    def __init__(self, fields: Sequence[DescriptorField | None], dim: int | None = None) -> None:
        present = [f for f in fields if f is not None]
        dims = {f.dim for f in present} | ({int(dim)} if dim is not None else set())
        if len(dims) != 1:
            raise ValueError(f"FieldSet: fields of different descriptor sizes, or none given: {sorted(dims)}")
        self.dim = dims.pop()
        n = len(fields)
        total = sum(int(np.prod(f.grid.shape[1:])) for f in present)
        if total + 1 >= 2**31:
            raise ValueError("FieldSet: the grids hold too many nodes")
        # Per object (columns), float rows: origin (3), grid_sample's normalisation edge · max(size - 1, 1) (3),
        # the last node size - 1 (3), the largest lower corner max(size - 2, 0) (3); int rows: first table row,
        # row steps along x, y, z (0 along an axis of a single node). An object without a field: the zero row.
        par_f = np.zeros((12, n), np.float32)
        par_f[3:6] = 1.0
        par_i = np.zeros((4, n), np.int32)
        par_i[0] = total
        table = np.zeros((total + 1, self.dim), np.float32)
        at = 0
        for k, f in enumerate(fields):
            if f is None:
                continue
            _, nz, ny, nx = f.grid.shape
            size = np.array([nx, ny, nz], dtype=np.float32)
            par_f[0:3, k] = f.origin.astype(np.float32)
            par_f[3:6, k] = np.float32(f.edge) * np.maximum(size - 1, 1)
            par_f[6:9, k] = size - 1
            par_f[9:12, k] = np.maximum(size - 2, 0)
            par_i[:, k] = [at, nx > 1, (ny > 1) * nx, (nz > 1) * nx * ny]
            table[at : at + nx * ny * nz] = f.grid.reshape(self.dim, -1).T
            at += nx * ny * nz
        self.table = table
        self._par_f = par_f
        self._par_i = par_i
        # per object, the table rows of its 8 corners relative to the first one (grid_sample's order)
        sx, sy, sz = par_i[1], par_i[2], par_i[3]
        self._corner_offsets = np.ascontiguousarray(
            np.stack([np.zeros_like(sx), sx, sy, sx + sy, sz, sz + sx, sz + sy, sz + sx + sy], 1), dtype=np.int32
        )  # (N, 8)

    def sample(self, xyz: np.ndarray, index: np.ndarray, rows: np.ndarray | None = None, n_rows: int = 0) -> np.ndarray:
        """Descriptors of object-frame points of several objects.

        Args:
            xyz: ``(M, 3)`` object-frame points, metres.
            index: ``(M,)`` int, the object of each point.
            rows: ``(M,)`` strictly increasing output rows of the points (default ``0 … M−1``); the other rows of
                the output are 0 (e.g. the background pixels of an image whose object pixels are the points).
            n_rows: output rows when ``rows`` is given (``> rows[-1]``).

        Returns:
            ``(M, D)`` float32, or ``(n_rows, D)`` with ``rows``.
        """
        k = np.asarray(index, dtype=np.intp).reshape(-1)
        m = len(k)
        n_out = m if rows is None else int(n_rows)
        if m == 0:
            return np.zeros((n_out, self.dim), np.float32)
        weights, nodes = self._corners(xyz, k)
        if rows is None:
            step = np.arange(0, 8 * m + 1, 8, dtype=np.int32)
        else:
            count = np.zeros(n_out + 1, np.int32)
            count[np.asarray(rows) + 1] = 8
            step = np.cumsum(count, dtype=np.int32)
        mix = sparse.csr_array((weights.reshape(-1), nodes.reshape(-1), step), shape=(n_out, len(self.table)))
        return np.asarray(mix @ self.table, dtype=np.float32)

    def _corners(self, xyz: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(M, 8)`` float32 trilinear weights and ``(M, 8)`` int32 table rows of the points' grid corners.

        The arithmetic is grid_sample's, operation by operation (in place, and the ``(M, 8)`` results filled
        column by column: a broadcast into them is several times slower)."""
        pos = np.array(np.asarray(xyz, dtype=np.float32).reshape(-1, 3).T, dtype=np.float32, order="C")  # (3, M)
        m = len(k)
        pf = np.take(self._par_f, k, axis=1)
        # grid_sample (align_corners=True, padding "border"): normalise to [-1, 1], back to node units, clamp:
        # pos = min(max(((2 (p − origin) / norm − 1) + 1) / 2 · top, 0), top)
        top = pf[6:9]
        pos -= pf[0:3]
        pos *= 2.0
        pos /= pf[3:6]
        pos -= 1.0
        pos += 1.0
        pos /= 2.0
        pos *= top
        np.maximum(pos, 0.0, out=pos)
        np.minimum(pos, top, out=pos)
        first = np.floor(pos)
        np.minimum(first, pf[9:12], out=first)
        w1 = pos - first
        w0 = first + 1.0
        w0 -= pos
        # corners in grid_sample's order: z outer, then y, then x
        xy = (w0[0] * w0[1], w1[0] * w0[1], w0[0] * w1[1], w1[0] * w1[1])
        weights = np.empty((m, 8), np.float32)
        for c in range(4):
            np.multiply(xy[c], w0[2], out=weights[:, c])
            np.multiply(xy[c], w1[2], out=weights[:, 4 + c])
        fi = first.astype(np.int32)
        pi = self._par_i
        base = np.take(pi[0], k) + fi[0] * np.take(pi[1], k) + fi[1] * np.take(pi[2], k) + fi[2] * np.take(pi[3], k)
        nodes = np.take(self._corner_offsets, k, axis=0)
        for c in range(8):
            nodes[:, c] += base
        return weights, nodes


def _voxel_keys(pts: np.ndarray, lo: np.ndarray, edge: float) -> np.ndarray:
    """One int64 key per point: the linear index of its voxel (``edge`` metres, corner at ``lo``)."""
    ijk = np.floor((pts - lo) / edge).astype(np.int64)
    dims = ijk.max(0) + 1
    return (ijk[:, 2] * dims[1] + ijk[:, 1]) * dims[0] + ijk[:, 0]


def fuse_samples(
    points: np.ndarray, desc: np.ndarray, vertices: np.ndarray, voxels: int = 5000, margin: int = 2
) -> DescriptorField:
    """Average descriptor samples per voxel and build the field (see the module docstring).

    Args:
        points: ``(S, 3)`` object-frame points where descriptors were seen, metres.
        desc: ``(S, D)`` the descriptors seen there.
        vertices: ``(Nv, 3)`` the mesh's vertices (they get :attr:`DescriptorField.vertex_desc`).
        voxels: about this many voxels should hold samples (the edge is chosen for it).
        margin: node layers added around the samples' bounding box.

    Raises:
        ValueError: no samples, or shapes that do not match.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(desc, dtype=np.float32)
    if len(pts) == 0 or d.ndim != 2 or len(d) != len(pts):
        raise ValueError(f"fuse_samples: need (S, 3) points and (S, D) descriptors, S > 0; got {pts.shape}, {d.shape}")
    lo = pts.min(0)
    # The edge: bisect (in log scale) for about `voxels` occupied voxels (counted on a subsample).
    extent = float(np.max(pts.max(0) - lo)) or 1e-3
    probe = pts[np.random.default_rng(0).choice(len(pts), 100_000, replace=False)] if len(pts) > 100_000 else pts
    a, b = extent / 2000.0, extent
    for _ in range(16):
        mid = math.sqrt(a * b)
        n = len(np.unique(_voxel_keys(probe, lo, mid)))
        a, b = (mid, b) if n > voxels else (a, mid)
    edge = b
    _, inverse, counts = np.unique(_voxel_keys(pts, lo, edge), return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    n_vox = len(counts)
    vox_pts = np.zeros((n_vox, 3))
    np.add.at(vox_pts, inverse, pts)
    vox_pts /= counts[:, None]
    vox_desc = np.zeros((n_vox, d.shape[1]), np.float64)
    np.add.at(vox_desc, inverse, d.astype(np.float64))
    vox_desc /= counts[:, None]
    tree = cKDTree(vox_pts)
    vox_desc32 = vox_desc.astype(np.float32)
    vertex_desc = idw(tree, vox_desc32, np.asarray(vertices, dtype=np.float64).reshape(-1, 3))
    # The node grid around the samples (coarser than the voxels only if it would be huge).
    span = pts.max(0) - lo
    node_edge = edge
    while np.prod(np.floor(span / node_edge) + 1 + 2 * margin) > MAX_GRID_NODES:
        node_edge *= 1.25
    shape = (np.floor(span / node_edge) + 1 + 2 * margin).astype(np.int64)  # (nx, ny, nz)
    origin = lo - margin * node_edge
    axes = [origin[i] + node_edge * np.arange(shape[i]) for i in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    nodes = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
    values = idw(tree, vox_desc32, nodes)  # (nz·ny·nx, D)
    grid = np.ascontiguousarray(values.T.reshape(d.shape[1], shape[2], shape[1], shape[0]))
    return DescriptorField(vox_pts.astype(np.float32), vox_desc32, vertex_desc, origin, float(node_edge), grid)
