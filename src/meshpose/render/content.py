"""Content keys of what the renderer draws, and the user cache folders built from renderings.

Caches of things rendered from a mesh (the template bank of the coarse estimators, the descriptor fields of
``abstract``) are keyed by the mesh's *content* — vertices, faces and whatever colours the renderer draws
(:func:`meshpose.render.base.surface_data`) — never by an object id or a file name, so an edited mesh is never
served a stale entry.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trimesh

__all__ = [
    "MATERIAL_ATTRS",
    "cache_dir",
    "cached",
    "hash_array",
    "hash_render_mesh",
    "hash_visual",
    "read_cache_npz",
    "write_cache_npz",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

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


def write_cache_npz(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], *, compressed: bool) -> None:
    """Write a cache entry atomically: ``meta`` (JSON) and ``arrays`` into a temporary ``.npz`` in the same folder,
    synced, then renamed over ``path`` (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            entries: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **arrays}
            if compressed:
                np.savez_compressed(f, **entries)
            else:
                np.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def read_cache_npz(
    path: Path, version: int, key: str, names: Iterable[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a cache entry written by :func:`write_cache_npz`: ``(meta, arrays)``.

    Raises:
        ValueError: the entry is of another format ``version`` or ``key``.
    """
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"][()]))
        if meta.get("version") != version or meta.get("key") != key:
            raise ValueError(f"cache file {path} is of another version or key")
        return meta, {name: data[name] for name in names}


def cached(
    path: Path,
    load: Callable[[Path], T],
    build: Callable[[], T],
    save: Callable[[T, Path], None],
    what: str,
    logger: logging.Logger | None = None,
) -> T:
    """``load(path)`` when the cache file exists and reads, else ``build()`` and ``save`` it there.

    An unreadable or mismatching file is rebuilt (a logged warning, never a crash), and a folder that cannot be
    written only costs the cache (a warning): the value is always returned.

    Args:
        path: the cache file.
        load: reads it (raises on anything wrong).
        build: makes the value.
        save: writes it (an ``OSError`` is only warned about).
        what: the kind of cache, for the messages (``"template"``…).
        logger: where the warnings go (default: this module's logger).
    """
    logger = logger if logger is not None else log
    if path.exists():
        try:
            return load(path)
        except Exception as exc:  # any unreadable file is rebuilt, never a crash
            logger.warning("%s cache %s is unreadable (%s: %s); rebuilding it", what, path, type(exc).__name__, exc)
    value = build()
    try:
        save(value, path)
    except OSError as exc:
        logger.warning("could not write the %s cache %s (%s); continuing without it", what, path, exc)
    return value
