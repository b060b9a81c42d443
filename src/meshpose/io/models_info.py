"""BOP ``models_info.json``: the one reader and writer of the file (millimetres there, metres everywhere else).

An entry describes one object: ``diameter``, the bounding box (``min_x``, ``min_y``, ``min_z``, ``size_x``,
``size_y``, ``size_z``) and, optionally, ``symmetries_discrete`` (4×4 row-major ``obj_from_obj`` transforms,
translation in mm) and ``symmetries_continuous`` (``{"axis": [3], "offset": [3] mm}``: a rotation about ``axis``
through the point ``offset``).

* :func:`read_models_info` reads a file into :class:`ModelInfo` records in metres (``BopDataset``, object
  folders of ``meshpose synth``);
* :func:`expand_symmetries` expands one entry to the finite set of transforms an :class:`~meshpose.types.ObjectModel`
  holds (via :func:`~meshpose.geometry.symmetry.symmetry_transforms_from_lists`, which works in metres);
* :func:`models_info_entry` makes the entry of an object, :class:`ModelsInfoFile` writes a file object by object
  (a dataset writer that resumes keeps the entries already there as they are).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from meshpose.geometry.symmetry import symmetry_transforms_from_lists
from meshpose.io.jsonfile import write_json_atomic
from meshpose.types import ObjectModel

__all__ = [
    "ContinuousSymmetry",
    "ModelInfo",
    "ModelsInfoFile",
    "expand_symmetries",
    "models_info_entry",
    "read_models_info",
]

_MM_TO_M = 1e-3
_M_TO_MM = 1e3

#: A continuous symmetry ``(axis, offset_m)``: rotation about the unit ``axis`` through the point ``offset_m``.
ContinuousSymmetry = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True, eq=False)
class ModelInfo:
    """One object's ``models_info.json`` entry, in metres.

    Args:
        diameter: the object's diameter in metres, or ``None`` when the entry has none.
        min_xyz: ``(3,)`` lower corner of the bounding box in metres, or ``None``.
        size_xyz: ``(3,)`` size of the bounding box in metres, or ``None``.
        symmetries_discrete: ``(K, 4, 4)`` float64 discrete symmetries as listed (identity not included),
            translations in metres.
        symmetries_continuous: ``(axis, offset_m)`` pairs as listed.
    """

    diameter: float | None
    min_xyz: np.ndarray | None
    size_xyz: np.ndarray | None
    symmetries_discrete: np.ndarray
    symmetries_continuous: tuple[ContinuousSymmetry, ...]

    @property
    def is_symmetric(self) -> bool:
        return len(self.symmetries_discrete) > 0 or len(self.symmetries_continuous) > 0

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> ModelInfo:
        """Convert one entry as BOP stores it (millimetres) to metres.

        Raises:
            ValueError: a discrete symmetry without 16 entries, or a continuous one that is not a mapping with
                an ``axis`` (and an ``offset``) of 3 numbers.

        Example:
            >>> info = ModelInfo.from_entry({"diameter": 120.0, "symmetries_continuous": [{"axis": [0, 0, 1],
            ...                              "offset": [0, 0, 5]}]})
            >>> info.diameter, info.symmetries_continuous
            (0.12, (((0.0, 0.0, 1.0), (0.0, 0.0, 0.005)),))
        """
        diameter = float(entry["diameter"]) * _MM_TO_M if "diameter" in entry else None
        box = [entry.get(k) for k in ("min_x", "min_y", "min_z", "size_x", "size_y", "size_z")]
        min_xyz = size_xyz = None
        if all(v is not None for v in box):
            min_xyz = np.asarray(box[:3], dtype=np.float64) * _MM_TO_M
            size_xyz = np.asarray(box[3:], dtype=np.float64) * _MM_TO_M
        mats = []
        for i, M in enumerate(entry.get("symmetries_discrete", []) or []):
            A = np.asarray(M, dtype=np.float64)
            if A.size != 16:
                raise ValueError(f"symmetries_discrete[{i}] must have 16 entries, got {A.size}")
            A = A.reshape(4, 4).copy()
            A[:3, 3] *= _MM_TO_M
            mats.append(A)
        continuous = []
        for i, c in enumerate(entry.get("symmetries_continuous", []) or []):
            if not isinstance(c, Mapping) or "axis" not in c:
                raise ValueError(f"symmetries_continuous[{i}] must be a mapping with 'axis' and 'offset'")
            axis = tuple(float(x) for x in c["axis"])
            offset = tuple(float(x) * _MM_TO_M for x in c.get("offset", (0.0, 0.0, 0.0)))
            if len(axis) != 3 or len(offset) != 3:
                raise ValueError(f"symmetries_continuous[{i}]: axis and offset must be 3 numbers each")
            continuous.append((axis, offset))
        return cls(
            diameter=diameter,
            min_xyz=min_xyz,
            size_xyz=size_xyz,
            symmetries_discrete=np.asarray(mats, dtype=np.float64).reshape(-1, 4, 4),
            symmetries_continuous=tuple(continuous),
        )

    def symmetry_transforms(self, *, max_sym_disc_step: float = 0.01) -> np.ndarray:
        """The expanded ``(S, 4, 4)`` float64 ``obj_from_obj`` transforms in metres, identity first (see
        :func:`~meshpose.geometry.symmetry.symmetry_transforms_from_lists`).

        Raises:
            ValueError: the entry has no diameter, or a malformed symmetry or step.
        """
        if self.diameter is None:
            raise ValueError("models_info entry has no 'diameter'")
        return symmetry_transforms_from_lists(
            list(self.symmetries_discrete),
            list(self.symmetries_continuous),
            self.diameter,
            max_sym_disc_step=max_sym_disc_step,
        )


def _read_entries(path: Path) -> dict[int, dict[str, Any]]:
    """The raw entries (millimetres) of a ``models_info.json``, keyed by object id."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed JSON in {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} must hold an object keyed by object id")
    return {int(k): v for k, v in raw.items()}


def read_models_info(path: str | Path) -> dict[int, ModelInfo]:
    """Read a ``models_info.json`` into :class:`ModelInfo` records (metres), keyed by object id.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed JSON or a malformed entry (the message names the file and the object).
    """
    p = Path(path)
    out = {}
    for obj_id, entry in _read_entries(p).items():
        try:
            out[obj_id] = ModelInfo.from_entry(entry)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{p}: object {obj_id}: {exc}") from exc
    return out


def expand_symmetries(info: Mapping[str, Any], *, max_sym_disc_step: float = 0.01) -> np.ndarray:
    """Symmetry transforms of one BOP ``models_info.json`` entry, converted to metres.

    Args:
        info: the entry as BOP stores it, in **millimetres**: ``"diameter"`` (required),
            optional ``"symmetries_discrete"`` (list of 16 row-major numbers, translation in mm) and
            ``"symmetries_continuous"`` (list of ``{"axis": [3], "offset": [3] mm}``).
        max_sym_disc_step: see :func:`~meshpose.geometry.symmetry.symmetry_transforms_from_lists`.

    Returns:
        ``(S, 4, 4)`` float64 ``obj_from_obj`` transforms with translations in metres, identity first.

    Raises:
        ValueError: missing or non-positive diameter, or malformed symmetry entries.

    Example:
        >>> flip_z = [-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 10, 0, 0, 0, 1]  # 180° about z, then 10 mm along z
        >>> info = {"diameter": 100.0, "symmetries_discrete": [flip_z]}
        >>> T = expand_symmetries(info)
        >>> T.shape, float(T[1, 2, 3])
        ((2, 4, 4), 0.01)
    """
    return ModelInfo.from_entry(info).symmetry_transforms(max_sym_disc_step=max_sym_disc_step)


def models_info_entry(
    obj: ObjectModel,
    *,
    continuous: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
    discrete: Sequence[ArrayLike] | None = None,
) -> dict[str, Any]:
    """A ``models_info.json`` entry (millimetres) for an object.

    Args:
        obj: the object (metres). Its non-identity ``symmetries`` are written as ``symmetries_discrete`` unless
            ``continuous`` or ``discrete`` describes them.
        continuous: ``(axis, offset_m)`` pairs written as ``symmetries_continuous`` (then the discrete list is
            left out, since the expanded transforms of a continuous symmetry are not discrete symmetries).
        discrete: the discrete symmetries to write, ``(4, 4)`` transforms in metres without the identity (e.g.
            the half-turn of a cylinder next to its continuous symmetry, as BOP lists it); ``None`` keeps the
            behaviour above.
    """
    v = np.asarray(obj.mesh.vertices, dtype=np.float64) * _M_TO_MM
    lo, hi = v.min(0), v.max(0)
    entry: dict[str, Any] = {
        "diameter": obj.diameter * _M_TO_MM,
        "min_x": lo[0],
        "min_y": lo[1],
        "min_z": lo[2],
        "size_x": hi[0] - lo[0],
        "size_y": hi[1] - lo[1],
        "size_z": hi[2] - lo[2],
    }
    if continuous:
        entry["symmetries_continuous"] = [
            {"axis": [float(a) for a in axis], "offset": [float(o) * _M_TO_MM for o in off]} for axis, off in continuous
        ]
    listed = discrete if discrete is not None else (obj.symmetries[1:] if obj.is_symmetric and not continuous else ())
    if len(listed):
        mats = []
        for S in listed:
            M = np.array(S, dtype=np.float64).reshape(4, 4)
            M[:3, 3] *= _M_TO_MM
            mats.append([float(x) for x in M.reshape(16)])
        entry["symmetries_discrete"] = mats
    return {k: (float(x) if isinstance(x, np.floating) else x) for k, x in entry.items()}


class ModelsInfoFile:
    """A ``models_info.json`` written object by object.

    The entries of an existing file are kept exactly as they are (a dataset writer that resumes rewrites the
    file with its old entries unchanged and the new ones added); :meth:`write` orders the entries by id.

    Args:
        path: the file (read when it exists).

    Raises:
        ValueError: an existing file holds malformed JSON.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: dict[int, dict[str, Any]] = _read_entries(self.path) if self.path.is_file() else {}

    def __contains__(self, obj_id: object) -> bool:
        return isinstance(obj_id, int | np.integer) and int(obj_id) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        obj: ObjectModel,
        *,
        continuous: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
        discrete: Sequence[ArrayLike] | None = None,
    ) -> None:
        """Add (or replace) the entry of ``obj`` (see :func:`models_info_entry` for the symmetry lists)."""
        self._entries[int(obj.obj_id)] = models_info_entry(obj, continuous=continuous, discrete=discrete)

    def write(self) -> None:
        """Write the file (atomically), entries ordered by object id."""
        write_json_atomic(self.path, {str(k): self._entries[k] for k in sorted(self._entries)})
