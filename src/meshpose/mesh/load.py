"""Reading meshes from disk into metres, keeping their appearance.

Everything inside meshpose is in metres (see ``DESIGN.md``). Mesh files say nothing about their unit, and
BOP models are in millimetres, so :func:`load_mesh` takes the unit as an explicit argument and refuses a mesh
whose size does not fit it, instead of silently producing an object a thousand times too large.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh

from meshpose.errors import MeshError

__all__ = ["MAX_EXTENT_M", "MeshError", "Units", "load_mesh"]

logger = logging.getLogger(__name__)

Units = Literal["m", "mm", "auto"]

#: Largest bounding-box extent (file units) accepted as metres; a larger mesh is taken to be in millimetres.
MAX_EXTENT_M = 5.0
#: Smallest bounding-box extent accepted as millimetres (a 1 mm object is implausible for pose estimation).
MIN_EXTENT_MM = 1.0


def load_mesh(path: str | os.PathLike[str], *, units: Units = "m") -> trimesh.Trimesh:
    """Load a triangle mesh from any format trimesh reads (ply, obj, glb/gltf, off, stl, …), in metres.

    The mesh is loaded with ``process=False``: vertices are neither merged nor reordered, so UV seams
    (vertices duplicated with different texture coordinates) survive and textures stay correct. Vertex
    colours, face colours and textures (``TextureVisuals`` with the material's image, e.g. an obj's mtl + png
    or a glb's base colour texture) are kept. A file holding a scene of several meshes is flattened into one
    mesh with every node's transform applied (trimesh packs several textures into one atlas); when such a
    scene mixes textured and untextured parts, the textures are converted to vertex colours (a warning is
    logged), since a trimesh mesh has one kind of appearance.

    Args:
        path: the mesh file.
        units: the unit of the file's coordinates. ``"m"``: used as is, and a mesh whose largest
            bounding-box extent exceeds :data:`MAX_EXTENT_M` (5 units) is refused as "looks like millimetres".
            ``"mm"``: scaled by 1e-3 (BOP models), and a mesh smaller than 1 unit is refused as "looks like
            metres". ``"auto"``: millimetres if the largest extent exceeds 5 units, else metres; the choice is
            logged (INFO) and stored in ``mesh.metadata["units"]``.

    Returns:
        The mesh in metres. ``mesh.metadata`` holds ``"file_path"``, ``"units"`` (the unit the file was read
        in, ``"m"`` or ``"mm"``) and ``"scale_to_m"`` (the factor applied).

    Raises:
        MeshError: the file is missing or empty, trimesh cannot read it, it holds no faces (e.g. a point
            cloud), its vertices contain NaN/inf, a face index is out of range, all faces have zero area, or
            its size does not fit ``units``.

    Example:
        >>> mesh = load_mesh("models/obj_000001.ply", units="mm")  # doctest: +SKIP
        >>> mesh.extents.max() < 1.0  # doctest: +SKIP
        True
    """
    if units not in ("m", "mm", "auto"):
        raise ValueError(f"units must be 'm', 'mm' or 'auto', got {units!r}")
    p = Path(path)
    if not p.exists():
        raise MeshError(f"mesh file {p} does not exist")
    if not p.is_file():
        raise MeshError(f"mesh file {p} is not a file")
    if p.stat().st_size == 0:
        raise MeshError(f"mesh file {p} is empty")

    try:
        loaded = trimesh.load(str(p), process=False)
    except NotImplementedError as e:
        raise MeshError(f"mesh file {p}: trimesh cannot read the format {p.suffix!r} ({e})") from e
    except Exception as e:  # trimesh raises anything from ValueError to IndexError on a bad file
        raise MeshError(f"mesh file {p} could not be read by trimesh: {type(e).__name__}: {e}") from e

    mesh = _as_single_mesh(loaded, p)
    _validate(mesh, p)

    extent = float(np.max(mesh.extents))
    if units == "auto":
        chosen: Literal["m", "mm"] = "mm" if extent > MAX_EXTENT_M else "m"
        logger.info("mesh %s is %.4g units across: reading it in %s", p, extent, chosen)
    else:
        chosen = units
    if chosen == "m" and extent > MAX_EXTENT_M:
        raise MeshError(f"mesh {p} is {extent:.1f} units across: it looks like millimetres; pass units='mm'")
    if chosen == "mm" and extent < MIN_EXTENT_MM:
        raise MeshError(f"mesh {p} is {extent:.4g} units across: it looks like metres; pass units='m'")

    scale = 1e-3 if chosen == "mm" else 1.0
    if scale != 1.0:
        mesh.apply_scale(scale)
    # trimesh keeps the raw ply arrays in the metadata: a second full copy of the mesh we do not need.
    for key in [k for k in mesh.metadata if str(k).startswith("_ply_raw")]:
        del mesh.metadata[key]
    mesh.metadata["file_path"] = str(p.resolve())
    mesh.metadata["units"] = chosen
    mesh.metadata["scale_to_m"] = scale
    return mesh


def _as_single_mesh(loaded: object, path: Path) -> trimesh.Trimesh:
    """Turn what ``trimesh.load`` returned into one ``Trimesh``, or raise a :class:`MeshError` saying why."""
    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    if isinstance(loaded, trimesh.PointCloud):
        raise MeshError(f"mesh file {path} is a point cloud ({len(loaded.vertices)} points, no faces)")
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
        if not parts:
            kinds = sorted({type(g).__name__ for g in loaded.geometry.values()})
            if not kinds:
                raise MeshError(f"mesh file {path} contains no geometry")
            if "PointCloud" in kinds:
                raise MeshError(f"mesh file {path} is a point cloud (no faces)")
            raise MeshError(f"mesh file {path} contains no triangle faces (found: {', '.join(kinds)})")
        if len(parts) == 1:
            return parts[0]
        textured = [_has_texture(g) for g in parts]
        if any(textured) and not all(textured):
            logger.warning(
                "mesh file %s mixes textured and untextured parts: converting the textures to vertex colours",
                path,
            )
            for g in parts:
                if isinstance(g.visual, trimesh.visual.TextureVisuals):
                    g.visual = g.visual.to_color()
        merged = trimesh.util.concatenate(parts)
        if not isinstance(merged, trimesh.Trimesh):  # pragma: no cover - always a Trimesh
            raise MeshError(f"mesh file {path}: could not concatenate its {len(parts)} parts")
        return merged
    raise MeshError(f"mesh file {path} holds a {type(loaded).__name__}, not a triangle mesh")


def _has_texture(mesh: trimesh.Trimesh) -> bool:
    visual = mesh.visual
    return isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None and len(visual.uv) > 0


def _validate(mesh: trimesh.Trimesh, path: Path) -> None:
    """Raise a :class:`MeshError` naming ``path`` for meshes no module can use."""
    faces = np.asarray(mesh.faces)
    vertices = np.asarray(mesh.vertices)
    if len(faces) == 0:
        raise MeshError(f"mesh file {path} has no faces ({len(vertices)} vertices): a point cloud is not a mesh")
    if len(vertices) == 0:
        raise MeshError(f"mesh file {path} has faces but no vertices")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(
            f"mesh file {path} has face indices out of range [{faces.min()}, {faces.max()}] "
            f"for {len(vertices)} vertices"
        )
    finite = np.isfinite(vertices).all(axis=1)
    if not finite.all():
        raise MeshError(
            f"mesh file {path} has {int((~finite).sum())} vertices with NaN or inf coordinates "
            f"(first at index {int(np.argmin(finite))})"
        )
    if not float(mesh.area) > 0.0:
        raise MeshError(f"mesh file {path} has {len(faces)} faces but all of them have zero area")
