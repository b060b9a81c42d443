"""Content keys of what the renderer draws, and the user cache folders built from renderings.

Caches of things rendered from a mesh (the template bank of the coarse estimators, the descriptor fields of
``abstract``) are keyed by the mesh's *content* — vertices, faces and whatever colours the renderer draws
(:func:`meshpose.render.base.surface_data`) — never by an object id or a file name, so an edited mesh is never
served a stale entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

__all__ = ["MATERIAL_ATTRS", "cache_dir", "hash_array", "hash_render_mesh", "hash_visual"]

#: Material attributes of a textured mesh that change what is drawn.
MATERIAL_ATTRS = ("baseColorTexture", "image", "baseColorFactor", "main_color")


def hash_array(h: Any, name: str, value: Any) -> None:
    """Feed ``name``, dtype, shape and bytes of an array into the hash object ``h`` (``hashlib``-like)."""
    arr = np.ascontiguousarray(np.asarray(value))
    h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
    h.update(arr.tobytes())


def hash_visual(h: Any, mesh: trimesh.Trimesh) -> None:
    """Feed what colours the renderer draws of ``mesh`` (vertex/face colours, or uv + texture and material
    colours) into ``h``."""
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    h.update(f"kind:{kind};".encode())
    if kind == "vertex":
        hash_array(h, "vertex_colors", visual.vertex_colors)  # type: ignore[union-attr]
    elif kind == "face":
        hash_array(h, "face_colors", visual.face_colors)  # type: ignore[union-attr]
    elif kind == "texture":
        material = getattr(visual, "material", None)
        for owner, attr in [(visual, "uv"), *((material, a) for a in MATERIAL_ATTRS)]:
            value = getattr(owner, attr, None)
            if value is not None:  # images as RGBA pixels
                hash_array(h, attr, value.convert("RGBA") if hasattr(value, "convert") else value)


def hash_render_mesh(h: Any, mesh: trimesh.Trimesh) -> None:
    """Feed a mesh's vertices (float64), faces (int64) and drawn colours into ``h``."""
    hash_array(h, "vertices", np.asarray(mesh.vertices, dtype=np.float64))
    hash_array(h, "faces", np.asarray(mesh.faces, dtype=np.int64))
    hash_visual(h, mesh)


def cache_dir(kind: str) -> Path:
    """``$MESHPOSE_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/meshpose/<kind>``, else ``~/.cache/meshpose/<kind>``.

    Example:
        >>> import os
        >>> os.environ["MESHPOSE_CACHE_DIR"] = "/tmp/mp"
        >>> str(cache_dir("templates"))
        '/tmp/mp/templates'
        >>> del os.environ["MESHPOSE_CACHE_DIR"]
    """
    root = os.environ.get("MESHPOSE_CACHE_DIR")
    if root:
        return Path(root).expanduser() / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "meshpose" / kind
