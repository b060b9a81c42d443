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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

__all__ = ["DescriptorField", "fuse_samples", "idw"]

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
    """An object's fused descriptors.

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

    def sample(self, xyz: np.ndarray) -> np.ndarray:
        """Descriptors at object-frame points (trilinear in the node grid; outside it, the nearest node's value).

        Args:
            xyz: ``(M, 3)`` object-frame points, metres.

        Returns:
            ``(M, D)`` float32.
        """
        pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
        if len(pts) == 0:
            return np.zeros((0, self.dim), np.float32)
        _, nz, ny, nx = self.grid.shape
        size = np.array([nx, ny, nz], dtype=np.float32)
        # grid_sample's normalised coordinates (align_corners=True): -1 at node 0, +1 at the last node.
        g = 2.0 * (pts - self.origin.astype(np.float32)) / (np.float32(self.edge) * np.maximum(size - 1, 1)) - 1.0
        grid = torch.from_numpy(self.grid)[None]  # (1, D, nz, ny, nx)
        coords = torch.from_numpy(np.ascontiguousarray(g)).view(1, 1, 1, -1, 3)
        out = F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
        return out.view(self.dim, -1).T.contiguous().numpy()


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
