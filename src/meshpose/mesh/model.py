"""Building :class:`~meshpose.types.ObjectModel` objects from meshes and files, with a load cache."""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from numpy.typing import ArrayLike

from meshpose.mesh.load import MAX_EXTENT_M, MeshError, Units, load_mesh
from meshpose.mesh.sample import mesh_diameter, sample_surface_points
from meshpose.mesh.simplify import simplify_mesh
from meshpose.types import ObjectModel

__all__ = [
    "CACHE_SIZE",
    "clear_cache",
    "light_model",
    "load_object_model",
    "make_object_model",
    "validate_symmetries",
]

#: Most object models kept by the :func:`load_object_model` cache (least recently used ones are dropped).
CACHE_SIZE = 32


def make_object_model(
    mesh: trimesh.Trimesh,
    obj_id: int,
    *,
    name: str = "",
    symmetries: ArrayLike | None = None,
    max_render_faces: int = 20_000,
    num_points: int = 2048,
    seed: int = 0,
) -> ObjectModel:
    """Build an :class:`ObjectModel` from a mesh in metres.

    Args:
        mesh: the full-resolution mesh, metres, object frame (it is stored, not copied).
        obj_id: integer object id (BOP ``obj_id``).
        name: free-form name.
        symmetries: ``(S, 4, 4)`` transforms ``obj_from_obj`` in **metres** with the identity first (e.g. the
            expansion of BOP's ``symmetries_discrete``/``symmetries_continuous`` after mm → m); ``None`` means
            no symmetry (the identity only). See :func:`validate_symmetries`.
        max_render_faces: face budget of ``render_mesh`` (see :func:`~meshpose.mesh.simplify_mesh`).
        num_points: number of surface points sampled for metrics and losses.
        seed: seed of the point sample.

    Returns:
        The object model: ``diameter`` is exact (largest vertex distance), ``points`` an area-uniform sample
        ``(num_points, 3)`` of the full mesh, ``render_mesh`` the mesh itself when it is within the budget.

    Raises:
        MeshError: a mesh without faces, with NaN/inf vertices, or larger than 5 m (millimetres?).
        ValueError: invalid symmetries or arguments.
    """
    obj_id = _check_obj_id(obj_id)
    label = f"object {obj_id}" + (f" ({name})" if name else "")
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshError(f"{label}: needs a triangle mesh with faces, got {mesh!r}")
    if not np.isfinite(mesh.vertices).all():
        raise MeshError(f"{label}: the mesh has NaN or inf vertices")
    extent = float(np.max(mesh.extents))
    if extent > MAX_EXTENT_M:
        raise MeshError(
            f"{label}: the mesh is {extent:.1f} units across: it looks like millimetres; "
            "scale it to metres (mesh.apply_scale(1e-3), or load_mesh(..., units='mm'))"
        )
    if num_points < 1:
        raise ValueError(f"{label}: num_points must be positive, got {num_points}")
    diameter = mesh_diameter(mesh)
    points = sample_surface_points(mesh, num_points, seed=seed)
    points.flags.writeable = False  # shared by cached models
    sym = validate_symmetries(symmetries, points=points, diameter=diameter, label=label)
    render_mesh = simplify_mesh(mesh, max_render_faces)
    return ObjectModel(
        obj_id=obj_id,
        mesh=mesh,
        render_mesh=render_mesh,
        diameter=diameter,
        symmetries=sym,
        points=points,
        name=name,
    )


def _check_obj_id(obj_id: object) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, int | np.integer):
        raise ValueError(f"obj_id must be an integer, got {obj_id!r}")
    return int(obj_id)


def validate_symmetries(
    symmetries: ArrayLike | None,
    *,
    points: np.ndarray | None = None,
    diameter: float | None = None,
    label: str = "object",
    centroid_tol: float = 0.1,
) -> np.ndarray:
    """Check a set of symmetry transforms and return it as ``(S, 4, 4)`` float64.

    Args:
        symmetries: ``(S, 4, 4)`` (or a single ``(4, 4)``) rigid transforms in metres, identity first;
            ``None`` gives ``eye(4)[None]``.
        points: optional ``(P, 3)`` surface sample of the object; with ``diameter``, each symmetry must map
            the sample's centroid to within ``centroid_tol · diameter`` of itself (a true symmetry leaves it
            fixed; a translation in millimetres does not).
        diameter: the object's diameter in metres.
        label: how error messages name the object.
        centroid_tol: tolerance of the centroid test, as a fraction of the diameter.

    Returns:
        ``(S, 4, 4)`` float64.

    Raises:
        ValueError: wrong shape, NaN/inf, a non-rotation (orthonormal with det +1 to 1e-4), a bottom row other
            than ``[0, 0, 0, 1]``, a first transform other than the identity, or a failed centroid test.
    """
    if symmetries is None:
        return np.eye(4)[None]
    sym = np.asarray(symmetries, dtype=np.float64)
    if sym.shape == (4, 4):
        sym = sym[None]
    if sym.ndim != 3 or sym.shape[1:] != (4, 4) or len(sym) == 0:
        raise ValueError(f"{label}: symmetries must have shape (S, 4, 4), got {np.shape(symmetries)}")
    if not np.isfinite(sym).all():
        raise ValueError(f"{label}: symmetries contain NaN or inf")
    if not np.allclose(sym[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{label}: symmetry transforms must have the bottom row [0, 0, 0, 1]")
    R = sym[:, :3, :3]
    err = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bad = (err > 1e-4) | (np.abs(det - 1.0) > 1e-4)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{label}: symmetry {i} is not a rotation (|RRᵀ - I| = {err[i]:.2e}, det = {det[i]:.4f})")
    if not np.allclose(sym[0], np.eye(4), atol=1e-9):
        raise ValueError(f"{label}: the first symmetry must be the identity (got {np.round(sym[0], 4).tolist()})")
    if points is not None and diameter is not None and len(sym) > 1:
        c = np.asarray(points, dtype=np.float64).mean(axis=0)
        moved = np.linalg.norm(sym[:, :3, :3] @ c + sym[:, :3, 3] - c, axis=1)
        worst = int(np.argmax(moved))
        if moved[worst] > centroid_tol * diameter:
            raise ValueError(
                f"{label}: symmetry {worst} moves the object's centroid by {moved[worst]:.4g} m "
                f"(diameter {diameter:.4g} m), so it is not a symmetry of this mesh; symmetries must be in "
                "metres (BOP models_info.json is in millimetres)"
            )
    return sym


# ----------------------------------------------------------------------------------------------------------
# Loading with a cache
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Loaded:
    mesh: trimesh.Trimesh
    render_mesh: trimesh.Trimesh
    diameter: float
    points: np.ndarray


_cache: OrderedDict[tuple[Any, ...], _Loaded] = OrderedDict()
_cache_lock = threading.Lock()


def load_object_model(
    path: str | os.PathLike[str],
    obj_id: int,
    *,
    units: Units = "m",
    symmetries: ArrayLike | None = None,
    name: str | None = None,
    max_render_faces: int = 20_000,
    num_points: int = 2048,
    seed: int = 0,
    cache: bool = True,
) -> ObjectModel:
    """Load a mesh file and build its :class:`ObjectModel`, cached in-process.

    The expensive part (loading, decimation, diameter, point sample) is cached under the key (resolved path,
    file modification time, file size, ``units``, ``max_render_faces``, ``num_points``, ``seed``), so loading
    the same unchanged file again is instant; editing the file changes the key and reloads it. At most
    :data:`CACHE_SIZE` entries are kept (least recently used dropped); :func:`clear_cache` empties it. Cached
    models share their mesh objects: treat ``mesh``/``render_mesh``/``points`` as read-only.

    Args:
        path: mesh file (any format :func:`~meshpose.mesh.load_mesh` reads).
        obj_id: integer object id.
        units: file units, see :func:`~meshpose.mesh.load_mesh` (``"mm"`` for BOP models).
        symmetries: ``(S, 4, 4)`` in metres with the identity first, or ``None`` (identity only).
        name: object name (default: the file stem).
        max_render_faces: face budget of the render mesh.
        num_points: size of the surface point sample.
        seed: seed of the point sample.
        cache: use (and fill) the cache.

    Returns:
        The object model.

    Raises:
        MeshError: the file cannot be used (see :func:`~meshpose.mesh.load_mesh`).
        ValueError: invalid symmetries.
    """
    p = Path(path)
    obj_id = _check_obj_id(obj_id)
    label = f"object {obj_id}"
    try:
        resolved = p.resolve(strict=True)
        st = resolved.stat()
    except OSError as e:
        raise MeshError(f"mesh file {p} does not exist") from e
    key = (str(resolved), st.st_mtime_ns, st.st_size, units, max_render_faces, num_points, seed)
    entry = None
    if cache:
        with _cache_lock:
            entry = _cache.get(key)
            if entry is not None:
                _cache.move_to_end(key)
    if entry is None:
        model = make_object_model(
            load_mesh(p, units=units),
            obj_id,
            name=p.stem if name is None else name,
            symmetries=symmetries,
            max_render_faces=max_render_faces,
            num_points=num_points,
            seed=seed,
        )
        if cache:
            with _cache_lock:
                _cache[key] = _Loaded(model.mesh, model.render_mesh, model.diameter, model.points)
                while len(_cache) > CACHE_SIZE:
                    _cache.popitem(last=False)
        return model
    sym = validate_symmetries(symmetries, points=entry.points, diameter=entry.diameter, label=label)
    return ObjectModel(
        obj_id=obj_id,
        mesh=entry.mesh,
        render_mesh=entry.render_mesh,
        diameter=entry.diameter,
        symmetries=sym,
        points=entry.points,
        name=p.stem if name is None else name,
    )


def clear_cache() -> None:
    """Empty the :func:`load_object_model` cache."""
    with _cache_lock:
        _cache.clear()


# render mesh -> {face budget: decimated copy}; weak keys: a copy lives as long as the mesh it was made from
_light: weakref.WeakKeyDictionary[trimesh.Trimesh, dict[int, trimesh.Trimesh]] = weakref.WeakKeyDictionary()
_light_lock = threading.Lock()


def light_model(obj: ObjectModel, max_faces: int) -> ObjectModel:
    """``obj`` with its render mesh decimated to at most ``max_faces`` faces, for renders that only need the shape
    or coarse appearance at crop resolution (silhouette fits, iterative refiners' crops).

    The decimated copy (:func:`~meshpose.mesh.simplify.simplify_mesh`) is made once per render mesh and face budget
    in this process and kept while the mesh lives, so every method drawing the same object at the same budget shares
    it. ``max_faces ≤ 0``, or a render mesh already within the budget, gives ``obj`` itself.
    """
    mesh = obj.render_mesh
    limit = int(max_faces)
    if limit <= 0 or len(mesh.faces) <= limit:
        return obj
    with _light_lock:
        copies = _light.setdefault(mesh, {})
        light = copies.get(limit)
        if light is None:
            light = copies[limit] = simplify_mesh(mesh, limit)
    return replace(obj, render_mesh=light)
