"""Decimation of meshes for rendering, keeping their appearance.

Renderers draw :attr:`ObjectModel.render_mesh`, a copy of the object's mesh with at most ~20k faces made by
quadric edge-collapse decimation (``fast-simplification``). Decimation moves vertices, so the appearance is
transferred from the original surface afterwards:

* **Vertex colours**: each new vertex takes the colour the original mesh shows at the closest point of its
  surface — the barycentric interpolation of the original vertex colours in the closest triangle. A
  rasteriser shows exactly this linear interpolant, so this reproduces the original colour field at the new
  vertices; the nearest *vertex* would instead copy the colour of a possibly distant vertex wherever the
  original triangles are large, and be biased towards it everywhere.
* **Face colours**: each new face takes the colour of the original face closest to its centroid.
* **Textures**: the texture image is kept unchanged; each new vertex gets the UV of the closest original
  surface point (barycentric interpolation of the original UVs). UVs are stored per face corner, and vertices
  are split wherever the corners disagree, as in any textured mesh. *Seam caveat*: a new triangle whose
  corners land on different UV islands (it straddles a texture seam) cannot interpolate between them — that
  would smear a strip of unrelated atlas texels across it. For such triangles, the corners that are not on the
  island of the triangle's centroid get UVs extrapolated from the original triangle under the centroid (its
  affine xyz→uv map). The triangle then shows the texture of one island, slightly stretched beyond that
  island's border (into the atlas padding, if any); the error is confined to triangles along seams and is of
  the order of one decimated triangle.

Geometry is decimated after merging vertices that share a position (UV seams and triangle soups would
otherwise be open borders that the decimation tears apart). Output normals of textured meshes are smooth
across edges whose dihedral angle is under ``sharp_angle_deg`` and sharp otherwise (see
:func:`corner_normals`), so the vertex splits at UV seams do not show in shading.
"""

from __future__ import annotations

import logging

import fast_simplification
import numpy as np
import trimesh
from numpy.typing import ArrayLike

from meshpose.mesh.load import MeshError
from meshpose.mesh.sample import barycentric

__all__ = ["corner_normals", "merge_positions", "simplify_mesh", "split_corners"]

log = logging.getLogger(__name__)


def simplify_mesh(mesh: trimesh.Trimesh, max_faces: int = 20_000, *, sharp_angle_deg: float = 45.0) -> trimesh.Trimesh:
    """Decimate a mesh to at most ``max_faces`` faces, keeping its vertex colours or texture.

    A mesh that already has at most ``max_faces`` faces is returned unchanged (the same object).

    Args:
        mesh: triangle mesh (metres), with vertex colours, face colours, a texture or no appearance.
        max_faces: face budget, ``≥ 4``.
        sharp_angle_deg: dihedral angle (degrees) above which an edge is shaded sharp in the output normals of
            textured meshes.

    Returns:
        A new mesh with ``≤ max_faces`` faces and the same kind of appearance (``mesh.metadata`` copied, with
        ``"simplified_from_faces"`` added).

    Raises:
        ValueError: ``max_faces < 4``.
        MeshError: the decimation could not meet the budget.

    Example:
        >>> sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.05)  # 20480 faces
        >>> len(simplify_mesh(sphere, max_faces=2000).faces) <= 2000
        True
    """
    if max_faces < 4:
        raise ValueError(f"max_faces must be at least 4, got {max_faces}")
    if len(mesh.faces) <= max_faces:
        return mesh

    vertices, faces, _ = merge_positions(mesh.vertices, mesh.faces)
    faces = _drop_degenerate(faces)
    new_vertices, new_faces = _decimate(vertices, faces, max_faces)

    visual = mesh.visual
    metadata = {k: v for k, v in mesh.metadata.items() if not str(k).startswith("_ply_raw")}
    metadata["simplified_from_faces"] = len(mesh.faces)

    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material.copy() if visual.material is not None else None
        if visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            corner_uv = _transfer_uv(mesh, new_vertices, new_faces)
            normals = corner_normals(new_vertices, new_faces, sharp_angle_deg)
            sv, sf, suv, sn = split_corners(new_vertices, new_faces, corner_uv, normals)
            out = trimesh.Trimesh(
                sv,
                sf,
                vertex_normals=sn,
                visual=trimesh.visual.TextureVisuals(uv=suv, material=material),
                process=False,
            )
        else:
            out = trimesh.Trimesh(
                new_vertices,
                new_faces,
                visual=trimesh.visual.TextureVisuals(material=material),
                process=False,
            )
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "face":
        centroids = new_vertices[new_faces].mean(axis=1)
        _, _, face = trimesh.proximity.closest_point(mesh, centroids)
        out = trimesh.Trimesh(new_vertices, new_faces, face_colors=visual.face_colors[face], process=False)
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        closest, _, face = trimesh.proximity.closest_point(mesh, new_vertices)
        face = np.asarray(face, dtype=np.int64)
        bary = barycentric(mesh, face, closest)
        colors = np.asarray(visual.vertex_colors, dtype=np.float64)[np.asarray(mesh.faces)[face]]
        new_colors = np.clip(np.rint(np.einsum("nk,nkc->nc", bary, colors)), 0, 255).astype(np.uint8)
        out = trimesh.Trimesh(new_vertices, new_faces, vertex_colors=new_colors, process=False)
    else:
        out = trimesh.Trimesh(new_vertices, new_faces, process=False)
    out.metadata.update(metadata)
    return out


def _decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to ``≤ max_faces`` faces (retrying with a lower target if the first run overshoots);
    degenerate faces and unreferenced vertices are removed. A mesh that will not go that low (vertices split along
    sharp rims pin the edges there) keeps its smallest attempt, with a warning: a budget is a budget, not a reason
    to refuse an object."""
    if len(faces) <= max_faces:
        return _compact(vertices, faces)
    target = max_faces
    n_out = len(faces)
    smallest: tuple[np.ndarray, np.ndarray] | None = None
    for _ in range(8):
        v, f = fast_simplification.simplify(
            np.ascontiguousarray(vertices, dtype=np.float64),
            np.ascontiguousarray(faces, dtype=np.int64),
            target_count=target,
        )
        f = _drop_degenerate(np.asarray(f, dtype=np.int64).reshape(-1, 3))
        n_out = len(f)
        if 0 < n_out <= max_faces:
            return _compact(np.asarray(v, dtype=np.float64), f)
        if 0 < n_out < (len(faces) if smallest is None else len(smallest[1])):
            smallest = (np.asarray(v, dtype=np.float64), f)
        target = max(4, int(target * 0.85))
    if smallest is not None:
        log.warning("decimation could not reach %d faces; kept %d of %d", max_faces, len(smallest[1]), len(faces))
        return _compact(*smallest)
    raise MeshError(f"decimation could not reach {max_faces} faces (last attempt: {n_out} faces)")


def _drop_degenerate(faces: np.ndarray) -> np.ndarray:
    faces = np.asarray(faces, dtype=np.int64)
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return faces[ok]


def _compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove unreferenced vertices."""
    used, inverse = np.unique(faces.ravel(), return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3).astype(np.int64)


def merge_positions(vertices: ArrayLike, faces: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge vertices with the same position (to 1e-9 of the bounding-box size), ignoring UVs and normals.

    Args:
        vertices: ``(V, 3)`` positions.
        faces: ``(F, 3)`` vertex indices.

    Returns:
        ``(merged_vertices (V', 3), faces (F, 3) into them, index (V,))`` where ``index[i]`` is the merged
        vertex of input vertex ``i``.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    scale = float(np.ptp(v, axis=0).max()) if len(v) else 0.0
    quantum = scale * 1e-9 if scale > 0 else 1e-12
    keys = np.rint((v - v.min(axis=0)) / quantum).astype(np.int64)
    _, first, index = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    index = index.reshape(-1)
    return v[first], index[f], index


def corner_normals(vertices: ArrayLike, faces: ArrayLike, sharp_angle_deg: float = 45.0) -> np.ndarray:
    """Per-face-corner normals, smooth across gentle edges and sharp across creases.

    The normal at corner ``(f, v)`` is the area-weighted mean of the normals of the faces around vertex ``v``
    that deviate from face ``f``'s normal by less than ``sharp_angle_deg`` (so a box keeps flat sides and a
    sphere is smooth).

    Args:
        vertices: ``(V, 3)`` positions (vertices at the same position must already be merged to share normals
            across UV seams; see :func:`merge_positions`).
        faces: ``(F, 3)`` indices.
        sharp_angle_deg: crease angle in degrees.

    Returns:
        ``(F, 3, 3)`` float64 unit normals, ``[f, k]`` for corner ``k`` of face ``f``.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n_faces = len(f)
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    double_area = np.linalg.norm(cross, axis=1)
    face_normal = cross / np.maximum(double_area, 1e-300)[:, None]

    corner_vertex = f.ravel()
    corner_face = np.repeat(np.arange(n_faces), 3)
    order = np.argsort(corner_vertex, kind="stable")
    counts = np.bincount(corner_vertex, minlength=len(v))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    degree = counts[corner_vertex]
    a = np.repeat(np.arange(3 * n_faces), degree)  # each corner, once per face around its vertex
    offsets = np.arange(len(a)) - np.repeat(np.cumsum(degree) - degree, degree)
    g = corner_face[order[starts[corner_vertex[a]] + offsets]]  # a face around that vertex
    cos_limit = np.cos(np.radians(sharp_angle_deg))
    keep = np.einsum("ij,ij->i", face_normal[corner_face[a]], face_normal[g]) >= cos_limit
    weight = double_area[g] * keep
    normals = np.stack(
        [np.bincount(a, weights=weight * face_normal[g, c], minlength=3 * n_faces) for c in range(3)], axis=1
    )
    length = np.linalg.norm(normals, axis=1)
    bad = length < 1e-300
    normals[bad] = face_normal[corner_face[bad]]
    length[bad] = np.linalg.norm(normals[bad], axis=1)
    normals[length == 0] = [0.0, 0.0, 1.0]
    length[length == 0] = 1.0
    return (normals / length[:, None]).reshape(n_faces, 3, 3)


def split_corners(
    vertices: ArrayLike, faces: ArrayLike, corner_uv: np.ndarray | None, corner_normal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Turn per-corner UVs and normals into per-vertex ones, splitting vertices where corners disagree.

    Args:
        vertices: ``(V, 3)`` positions.
        faces: ``(F, 3)`` indices.
        corner_uv: ``(F, 3, 2)`` UVs per corner, or ``None``.
        corner_normal: ``(F, 3, 3)`` normals per corner.

    Returns:
        ``(vertices (V', 3), faces (F, 3), uv (V', 2) or None, normals (V', 3))``.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    corner_vertex = f.reshape(-1, 1)
    normals = np.asarray(corner_normal, dtype=np.float64).reshape(-1, 3)
    columns = [corner_vertex, np.rint(normals * 1e6).astype(np.int64)]
    uv = None
    if corner_uv is not None:
        uv = np.asarray(corner_uv, dtype=np.float64).reshape(-1, 2)
        columns.append(np.rint(uv * 1e7).astype(np.int64))
    _, first, inverse = np.unique(np.hstack(columns), axis=0, return_index=True, return_inverse=True)
    new_uv = uv[first] if uv is not None else None
    return v[corner_vertex[first, 0]], inverse.reshape(-1, 3).astype(np.int64), new_uv, normals[first]


def uv_islands(mesh: trimesh.Trimesh) -> np.ndarray:
    """``(F,)`` label of the UV island (texture chart) of each face of a textured mesh.

    Faces are in one island when they connect through edges whose two vertices have the same position *and*
    the same UV on both sides."""
    uv = np.asarray(mesh.visual.uv, dtype=np.float64)  # type: ignore[union-attr]
    v = np.asarray(mesh.vertices, dtype=np.float64)
    scale = float(np.ptp(v, axis=0).max()) or 1.0
    keys = np.hstack([np.rint(v / (scale * 1e-9)), np.rint(uv * 1e9)]).astype(np.int64)
    _, index = np.unique(keys, axis=0, return_inverse=True)
    faces = index.reshape(-1)[np.asarray(mesh.faces)]
    adjacency = trimesh.graph.face_adjacency(faces=faces)
    return np.asarray(trimesh.graph.connected_component_labels(adjacency, node_count=len(faces)), dtype=np.int64)


def _transfer_uv(original: trimesh.Trimesh, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``(F, 3, 2)`` UVs of the corners of the decimated mesh ``(vertices, faces)`` from the closest points of
    the textured ``original`` (see the module docstring for the treatment of seams)."""
    orig_faces = np.asarray(original.faces)
    orig_uv = np.asarray(original.visual.uv, dtype=np.float64)  # type: ignore[union-attr]
    islands = uv_islands(original)

    closest, _, tri = trimesh.proximity.closest_point(original, vertices)
    tri = np.asarray(tri, dtype=np.int64)
    vertex_uv = np.einsum("nk,nkc->nc", barycentric(original, tri, closest), orig_uv[orig_faces[tri]])
    corner_uv = vertex_uv[faces].copy()
    corner_island = islands[tri][faces]

    mixed = np.flatnonzero((corner_island[:, 0] != corner_island[:, 1]) | (corner_island[:, 1] != corner_island[:, 2]))
    if len(mixed):
        centroids = vertices[faces[mixed]].mean(axis=1)
        _, _, ctri = trimesh.proximity.closest_point(original, centroids)
        ctri = np.asarray(ctri, dtype=np.int64)
        for k in range(3):
            off = corner_island[mixed, k] != islands[ctri]
            if not off.any():
                continue
            rows, t = mixed[off], ctri[off]
            bary = barycentric(original, t, vertices[faces[rows, k]])  # may be outside [0, 1]: extrapolation
            corner_uv[rows, k] = np.einsum("nk,nkc->nc", bary, orig_uv[orig_faces[t]])
    return corner_uv
