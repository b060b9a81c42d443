"""The input-validation errors of meshpose: one typed hierarchy for every bad input.

Each error is a :class:`ValueError` (so ``except ValueError`` still catches it) whose message names where the
problem is (a file, a line, an id), the offending value and the likely cause (units, a reflection, a size
mismatch…). The same facts are kept as attributes for programs (``path``, ``line``, ``value``, ``cause``), and a
batch run turns a per-item error into a per-item failure (its ``code`` in the failures log) instead of stopping.

::

    InputError
    ├── FormatError          a malformed file or row (results/inits CSV: ResultsFormatError; BOP JSON: BopFormatError)
    ├── PoseError            a pose no method can start from (reflection, far off SO(3), behind the camera, units)
    ├── CameraError          bad intrinsics (non-positive focal, NaN, wrong shape)
    ├── ImageError           a missing, unreadable or mis-sized image (colour, depth, mask)
    ├── MeshError            a mesh file that cannot be used (empty, unreadable, NaN vertices, wrong units)
    └── UnknownObjectError   an object id the dataset has no mesh for

This module sits at the bottom of the layers (it imports nothing from meshpose), so every part may raise these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "CameraError",
    "FormatError",
    "ImageError",
    "InputError",
    "MeshError",
    "PoseError",
    "UnknownObjectError",
]


class InputError(ValueError):
    """A bad input; the message says where, what value and the likely cause.

    Args:
        message: the full message for people (already naming the file, line or id).
        path: the file the problem is in, when there is one.
        line: the 1-based line of ``path``, for line-based files.
        value: the offending value (as text or a number), when there is one.
        cause: the likely cause in a few words (e.g. ``"t in metres where millimetres are expected"``).

    Example:
        >>> err = FormatError("inits.csv:3: R must have 9 numbers", path="inits.csv", line=3, value="1 0 0")
        >>> isinstance(err, ValueError), err.where, str(err)
        (True, 'inits.csv:3', 'inits.csv:3: R must have 9 numbers')
    """

    #: Short machine-readable code of this kind of problem (a batch run's failures log uses it).
    code = "bad_input"

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        value: Any = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line
        self.value = value
        self.cause = cause

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def where(self) -> str:
        """``"file:line"``, ``"file"`` or ``""``."""
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the attributes across pickling (Ray ships errors between processes).
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[InputError], message: str, state: dict[str, Any]) -> InputError:
    err = cls(message)
    err.__dict__.update(state)
    return err


class FormatError(InputError):
    """A malformed file or row: wrong column count, non-numeric or non-finite values, bad JSON."""

    code = "malformed"


class PoseError(InputError):
    """A pose no method can start from: NaN, a reflection, a rotation far off SO(3), an object behind the camera
    or at an implausible depth (usually a units mistake)."""

    code = "bad_init"


class CameraError(InputError):
    """Camera intrinsics that cannot be used (non-positive focal length, NaN, not 3×3, no intrinsics at all)."""

    code = "bad_camera"


class ImageError(InputError):
    """An image file that is missing, unreadable, of the wrong kind or of the wrong size."""

    code = "bad_image"


class MeshError(InputError):
    """A mesh file (or mesh) that cannot be used: missing, empty, unreadable, NaN vertices, no faces, bad units."""

    code = "mesh_unreadable"


class UnknownObjectError(InputError):
    """An object id the dataset has no mesh for."""

    code = "unknown_object"
