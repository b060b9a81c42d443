"""What is refined: rigid object models (:class:`ObjectModel`) and the images they are seen in
(:class:`Observation`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from meshpose.types.camera import Camera

if TYPE_CHECKING:
    import trimesh

__all__ = ["ObjectModel", "Observation"]


@dataclass(frozen=True, eq=False)
class ObjectModel:
    """A rigid object: its mesh and what metrics and losses need.

    Build it with ``meshpose.mesh.load_object_model`` (from a file) or ``make_object_model`` (from a mesh).

    Args:
        obj_id: integer id (BOP ``obj_id``).
        mesh: full-resolution ``trimesh.Trimesh`` in metres, in the object frame, with vertex colours or a
            texture when the source has them.
        render_mesh: simplified copy (≤ 20k faces) used by renderers.
        diameter: largest distance between two vertices, metres.
        symmetries: ``(S, 4, 4)`` float64 transforms ``obj_from_obj`` under which the object looks the same;
            the identity comes first and is always present (``S ≥ 1``).
        points: ``(P, 3)`` float64 fixed sample of surface points (metres) for metrics and losses.
        name: free-form name (e.g. the file stem).
    """

    obj_id: int
    mesh: trimesh.Trimesh
    render_mesh: trimesh.Trimesh
    diameter: float
    symmetries: np.ndarray
    points: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        sym = np.asarray(self.symmetries, dtype=np.float64)
        if sym.ndim != 3 or sym.shape[1:] != (4, 4) or sym.shape[0] < 1:
            raise ValueError(f"object {self.obj_id}: symmetries must have shape (S, 4, 4), got {sym.shape}")
        if not np.allclose(sym[0], np.eye(4), atol=1e-9):
            raise ValueError(f"object {self.obj_id}: the first symmetry must be the identity")
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ValueError(f"object {self.obj_id}: points must have shape (P, 3), got {pts.shape}")
        if not (math.isfinite(self.diameter) and self.diameter > 0):
            raise ValueError(f"object {self.obj_id}: diameter must be positive, got {self.diameter}")
        object.__setattr__(self, "symmetries", sym)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "diameter", float(self.diameter))

    @property
    def is_symmetric(self) -> bool:
        return len(self.symmetries) > 1

    def __repr__(self) -> str:
        return (
            f"ObjectModel(obj_id={self.obj_id}, name={self.name!r}, faces={len(self.mesh.faces)}, "
            f"render_faces={len(self.render_mesh.faces)}, diameter={self.diameter:.4f} m, "
            f"symmetries={len(self.symmetries)})"
        )


@dataclass(frozen=True, eq=False)
class Observation:
    """One image to refine poses in.

    Args:
        rgb: ``(H, W, 3)`` uint8 colour image.
        camera: the camera that took it; ``camera.width == W`` and ``camera.height == H``.
        depth: optional ``(H, W)`` float32 depth in metres (z along the optical axis); ``0`` = missing. NaN and
            inf values are read as missing.
        mask: optional ``(N, H, W)`` bool masks, one per object instance of the refinement call (a ``(H, W)``
            mask is taken as ``N = 1``); a method may use them to ignore clutter.

    Raises:
        ValueError: shapes or dtypes that do not match, negative depth, or an empty mask.
    """

    rgb: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        rgb = np.asarray(self.rgb)
        h, w = self.camera.height, self.camera.width
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"observation rgb must have shape (H, W, 3), got {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"observation rgb must be uint8, got {rgb.dtype}")
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"observation rgb is {rgb.shape[1]}×{rgb.shape[0]} but the camera is {w}×{h}")
        if self.depth is not None:
            depth = np.asarray(self.depth, dtype=np.float32)
            if depth.shape != (h, w):
                raise ValueError(f"observation depth must have shape {(h, w)}, got {depth.shape}")
            depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
            if np.any(depth < 0):
                raise ValueError(f"observation depth has negative values (min {depth.min():.4f} m)")
            object.__setattr__(self, "depth", depth)
        if self.mask is not None:
            mask = np.asarray(self.mask).astype(bool)
            if mask.ndim == 2:
                mask = mask[None]
            if mask.ndim != 3 or mask.shape[1:] != (h, w):
                raise ValueError(f"observation mask must have shape (N, {h}, {w}), got {np.shape(self.mask)}")
            empty = ~mask.reshape(len(mask), -1).any(1)
            if np.any(empty):
                raise ValueError(f"observation mask {int(np.argmax(empty))} is empty")
            object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "rgb", rgb)

    @property
    def has_depth(self) -> bool:
        return self.depth is not None
