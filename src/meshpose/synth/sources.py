"""Object sources of synthetic scenes: ``novel:N`` generated objects, ``example``, a folder of meshes or a BOP
dataset, resolved into a lazy, cached :class:`ObjectSet` (the CLI's ``--objects``)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.io.models_info import ContinuousSymmetry, ModelInfo, models_info_entry, read_models_info
from meshpose.mesh.load import Units
from meshpose.synth.novel import NovelConfig, novel_mesh
from meshpose.synth.placement import clear_stable_poses
from meshpose.types import ObjectModel

__all__ = ["ObjectSet", "SymmetryLists", "clear_caches", "default_distractors", "resolve_objects"]

_MESH_EXTS = (".ply", ".obj", ".glb", ".gltf", ".off", ".stl")

#: ``(discrete (K, 4, 4) metres without the identity, continuous ((axis, offset_m), …))`` of an object.
SymmetryLists = tuple[np.ndarray, tuple[ContinuousSymmetry, ...]]


class ObjectSet(Sequence[ObjectModel]):
    """The objects of a synthetic dataset, built or loaded lazily and cached (least recently used dropped).

    Args:
        spec: the specification it came from.
        obj_ids: object ids, in order.
        loaders: one function per object returning ``(model, discrete_m, continuous)``: the symmetries as BOP
            lists them (discrete ``(K, 4, 4)`` in metres without the identity; continuous ``(axis, offset_m)``).
        cache_size: objects kept in memory.
    """

    def __init__(
        self,
        spec: str,
        obj_ids: Sequence[int],
        loaders: Sequence[Callable[[], tuple[ObjectModel, np.ndarray, Any]]],
        *,
        cache_size: int = 96,
    ) -> None:
        if len(obj_ids) != len(loaders):
            raise ValueError("one loader per object id")
        if len(set(obj_ids)) != len(obj_ids):
            raise ValueError(f"object ids of {spec!r} are not unique")
        self.spec = spec
        self.obj_ids = [int(i) for i in obj_ids]
        self._loaders = list(loaders)
        self._position = {oid: k for k, oid in enumerate(self.obj_ids)}
        self._cache: OrderedDict[int, tuple[ObjectModel, np.ndarray, Any]] = OrderedDict()
        self._cache_size = int(cache_size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.obj_ids)

    def __getitem__(self, k: int) -> ObjectModel:  # type: ignore[override]
        if isinstance(k, slice):
            raise TypeError("ObjectSet does not support slicing; use by_id or a list comprehension")
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self._entry(k % len(self))[0]

    def __repr__(self) -> str:
        return f"ObjectSet({self.spec!r}, {len(self)} objects)"

    def _entry(self, k: int) -> tuple[ObjectModel, np.ndarray, Any]:
        with self._lock:
            hit = self._cache.get(k)
            if hit is not None:
                self._cache.move_to_end(k)
                return hit
        entry = self._loaders[k]()
        with self._lock:
            self._cache[k] = entry
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return entry

    def by_id(self, obj_id: int) -> ObjectModel:
        """The object with id ``obj_id``."""
        if obj_id not in self._position:
            raise KeyError(f"object id {obj_id} is not in {self.spec!r}")
        return self._entry(self._position[obj_id])[0]

    def symmetry_lists(self, obj_id: int) -> SymmetryLists:
        """``(discrete (K, 4, 4) metres without the identity, continuous ((axis, offset_m), …))`` of an object."""
        _, discrete, continuous = self._entry(self._position[obj_id])
        return discrete, continuous

    def models_info(self, obj_id: int) -> dict[str, Any]:
        """The ``models_info.json`` entry (millimetres) of an object, symmetries included."""
        model = self.by_id(obj_id)
        discrete, continuous = self.symmetry_lists(obj_id)
        return models_info_entry(model, continuous=continuous, discrete=list(discrete))


_RESOLVED: OrderedDict[tuple[Any, ...], ObjectSet] = OrderedDict()


def resolve_objects(spec: str, seed: int = 0, *, units: Units = "auto", novel: NovelConfig | None = None) -> ObjectSet:
    """The object set named by ``spec`` (the CLI's ``--objects``).

    Args:
        spec: one of

            * ``"novel:N"`` — generated objects ``0 … N-1`` (ids ``1 … N``) of :func:`~meshpose.synth.novel.novel_mesh`
              with ``seed``; ``"novel:A-B"`` — objects ``A … B-1`` (ids ``A+1 … B``), e.g. held-out test objects
              for a model trained on ``novel:A``; a suffix ``@S`` pins the generator seed (``"novel:1000@7"``).
            * ``"example"`` — the demo object (:func:`~meshpose.mesh.example_object`).
            * a folder of meshes (``.ply .obj .glb .gltf .off .stl``, searched non-recursively): ids from
              ``obj_XXXXXX`` file names when every file is named so, else ``1 … N`` in sorted name order;
              symmetries from a ``models_info.json`` in the folder (BOP, millimetres) when there is one.
            * a BOP dataset folder (it has ``models/``): its models and ``models_info.json``.

        seed: generator seed of ``novel`` presets.
        units: units of mesh files (``"auto"``: millimetres if larger than 5 units, and always for a BOP
            folder; an explicit ``"m"`` or ``"mm"`` is honoured, BOP folders included).
        novel: generator settings.

    Returns:
        An :class:`ObjectSet` (lazy: generated objects are built when first used).

    Raises:
        ValueError: a malformed spec or an empty folder.
        FileNotFoundError: a folder that does not exist.

    Example:
        >>> objs = resolve_objects("novel:1000", seed=0)
        >>> len(objs), objs.obj_ids[:3]
        (1000, [1, 2, 3])
    """
    spec = spec.strip()
    key: tuple[Any, ...] = (spec, int(seed), units, repr(novel))
    folder_key = None
    if not spec.startswith("novel") and spec != "example":
        p = Path(spec).expanduser()
        folder_key = (str(p.resolve()), p.stat().st_mtime_ns) if p.exists() else None
    key = (*key, folder_key)
    hit = _RESOLVED.get(key)
    if hit is not None:
        _RESOLVED.move_to_end(key)
        return hit
    out = _resolve_objects(spec, seed, units=units, novel=novel)
    _RESOLVED[key] = out
    while len(_RESOLVED) > 4:
        _RESOLVED.popitem(last=False)
    return out


def _resolve_objects(spec: str, seed: int, *, units: Units, novel: NovelConfig | None) -> ObjectSet:
    m = re.fullmatch(r"novel:(\d+)(?:-(\d+))?(?:@(-?\d+))?", spec)
    if m:
        a, b, s = m.group(1), m.group(2), m.group(3)
        start, stop = (0, int(a)) if b is None else (int(a), int(b))
        if stop <= start:
            raise ValueError(f"object spec {spec!r} selects no objects")
        gen_seed = int(s) if s is not None else int(seed)
        cfg = novel or NovelConfig()

        def make(index: int) -> Callable[[], tuple[ObjectModel, np.ndarray, Any]]:
            def load() -> tuple[ObjectModel, np.ndarray, Any]:
                obj = novel_mesh(index, gen_seed, cfg)
                return obj.to_object_model(index + 1), obj.symmetries_discrete, obj.symmetries_continuous

            return load

        indices = range(start, stop)
        return ObjectSet(spec, [i + 1 for i in indices], [make(i) for i in indices])
    if spec == "example":
        from meshpose.mesh import example_object

        return ObjectSet(spec, [1], [lambda: (example_object(0), np.zeros((0, 4, 4)), ())])
    if spec.startswith("novel"):
        raise ValueError(f"malformed object spec {spec!r}: use novel:N, novel:A-B or novel:N@SEED")
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"object folder {folder} does not exist (or use a preset such as novel:100)")
    if not folder.is_dir():
        raise ValueError(f"--objects must be a folder or a preset, got the file {folder}")
    if (folder / "models").is_dir():
        folder = folder / "models"
        if units == "auto":
            units = "mm"  # BOP models are millimetres; an explicit --units is honoured
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _MESH_EXTS)
    if not files:
        raise ValueError(f"object folder {folder} holds no meshes ({', '.join(_MESH_EXTS)})")
    bop_names = [re.fullmatch(r"obj_(\d+)", p.stem) for p in files]
    if all(bop_names):
        ids = [int(n.group(1)) for n in bop_names if n is not None]
    else:
        ids = list(range(1, len(files) + 1))
    info: dict[int, ModelInfo] = {}
    info_path = folder / "models_info.json"
    if info_path.is_file():
        info = read_models_info(info_path)
        if info and all(bop_names) and units == "auto":
            units = "mm"  # BOP models are millimetres; an explicit --units is honoured

    def make_file(path: Path, obj_id: int) -> Callable[[], tuple[ObjectModel, np.ndarray, Any]]:
        def load() -> tuple[ObjectModel, np.ndarray, Any]:
            from meshpose.mesh import load_object_model

            entry = info.get(obj_id)
            sym = entry.symmetry_transforms() if entry is not None and entry.diameter is not None else None
            model = load_object_model(path, obj_id, units=units, symmetries=sym, name=path.stem)
            if entry is None:
                return model, np.zeros((0, 4, 4)), ()
            return model, entry.symmetries_discrete, entry.symmetries_continuous

        return load

    return ObjectSet(str(folder), ids, [make_file(p, i) for p, i in zip(files, ids, strict=True)])


def clear_caches() -> None:
    """Forget the object sets of :func:`resolve_objects` and the cached stable poses (they are rebuilt)."""
    _RESOLVED.clear()
    clear_stable_poses()


def default_distractors(seed: int, count: int = 64) -> ObjectSet:
    """Generated distractor objects from a seed derived from ``seed`` (never the targets' stream)."""
    return resolve_objects(f"novel:{count}@{(int(seed) * 7919 + 0x0D15) % (2**31 - 1)}", 0)
