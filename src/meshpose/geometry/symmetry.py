"""Expansion of object symmetries (as BOP ``models_info.json`` lists them) to a finite set of rigid transforms.

The semantics follow bop_toolkit's ``get_symmetry_transformations``: the identity plus every listed discrete
symmetry, each combined with every step of every discretised continuous symmetry. A continuous symmetry
about an ``axis`` through ``offset`` is sampled at ``n = ceil(π / max_sym_disc_step)`` angles ``2π k / n``
(``k = 0 … n-1``, so the identity is included): a point at distance ``r ≤ diameter / 2`` from the axis
(true for every point of an object with that symmetry) then moves at most ``r · 2π / n ≤
max_sym_disc_step · diameter`` between consecutive steps. Note ``n`` does not depend on the diameter itself.

Transforms are ``obj_from_obj`` ``(S, 4, 4)`` float64 in **metres**, identity first, duplicates removed — the
format of :attr:`meshpose.types.ObjectModel.symmetries`. Everything here is in metres: the entries of a
``models_info.json`` file (millimetres) are read and converted by :mod:`meshpose.io.models_info`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["continuous_steps", "symmetry_transforms_from_lists"]


def continuous_steps(max_sym_disc_step: float) -> int:
    """Number of samples of a continuous symmetry: ``ceil(π / max_sym_disc_step)`` (identity included).

    Example:
        >>> continuous_steps(0.01)
        315
    """
    step = float(max_sym_disc_step)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"max_sym_disc_step must be positive, got {max_sym_disc_step}")
    return math.ceil(math.pi / step)


def _axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` about the unit ``axis`` (Rodrigues)."""
    x, y, z = axis
    W = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * W + (1.0 - math.cos(angle)) * (W @ W)


def _rigid(M: ArrayLike, name: str, atol: float = 1e-3) -> np.ndarray:
    """Check a 4×4 rigid transform and snap its rotation to the nearest rotation (JSON files round values)."""
    A = np.asarray(M, dtype=np.float64)
    if A.size != 16:
        raise ValueError(f"{name} must have 16 entries (a 4×4 matrix), got {A.size}")
    A = A.reshape(4, 4).copy()
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or inf")
    if not np.allclose(A[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{name} must have last row [0, 0, 0, 1], got {A[3].tolist()}")
    R = A[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > atol or abs(np.linalg.det(R) - 1.0) > atol:
        raise ValueError(f"{name} does not hold a rotation (RRᵀ ≠ I or det ≠ 1): {R.tolist()}")
    U, _, Vt = np.linalg.svd(R)
    A[:3, :3] = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    return A


def _parse_continuous(item: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(item, Mapping):
        if "axis" not in item:
            raise ValueError(f"continuous symmetry {i} has no 'axis'")
        axis, offset = item["axis"], item.get("offset", (0.0, 0.0, 0.0))
    else:
        try:
            axis, offset = item
        except (TypeError, ValueError) as e:
            raise ValueError(f"continuous symmetry {i} must be (axis, offset) or a mapping with 'axis'") from e
    a = np.asarray(axis, dtype=np.float64).reshape(-1)
    o = np.asarray(offset, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or o.shape != (3,) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(o))):
        raise ValueError(f"continuous symmetry {i}: axis and offset must be 3 finite numbers each")
    norm = np.linalg.norm(a)
    if norm < 1e-12:
        raise ValueError(f"continuous symmetry {i} has a zero axis")
    return a / norm, o


def _dedup(T: np.ndarray, atol_t: float) -> np.ndarray:
    """Drop transforms equal (rotation within 1e-6, translation within ``atol_t``) to an earlier one."""
    keep: list[int] = []
    for i in range(len(T)):
        if keep:
            K = T[keep]
            same = (np.abs(K[:, :3, :3] - T[i, :3, :3]).max(axis=(1, 2)) < 1e-6) & (
                np.abs(K[:, :3, 3] - T[i, :3, 3]).max(axis=1) < atol_t
            )
            if np.any(same):
                continue
        keep.append(i)
    return T[keep]


def symmetry_transforms_from_lists(
    discrete_m: Sequence[ArrayLike],
    continuous: Sequence[Any],
    diameter_m: float,
    *,
    max_sym_disc_step: float = 0.01,
) -> np.ndarray:
    """Expand symmetries given in metres.

    Args:
        discrete_m: 4×4 (or 16-element row-major) ``obj_from_obj`` transforms, translations in metres. The
            identity need not be listed.
        continuous: ``(axis, offset_m)`` pairs, or mappings with ``"axis"`` and ``"offset"`` (metres):
            rotation about ``axis`` through the point ``offset``.
        diameter_m: the object's diameter in metres (``> 0``); sets the translation tolerance of
            de-duplication (``1e-6 · diameter``). The step count is ``ceil(π / max_sym_disc_step)``
            regardless (see module doc).
        max_sym_disc_step: largest displacement of any object point between consecutive continuous steps, as a
            fraction of the diameter.

    Returns:
        ``(S, 4, 4)`` float64 transforms, identity first. Each continuous-step rotation ``Rc`` (offset ``o``,
        ``tc = o - Rc o``) is composed after each discrete ``(Rd, td)``: ``(Rc Rd, Rc td + tc)``.

    Raises:
        ValueError: a malformed transform or axis, or a non-positive diameter or step.

    Example:
        >>> T = symmetry_transforms_from_lists([], [((0, 0, 1), (0, 0, 0))], 0.1, max_sym_disc_step=0.1)
        >>> T.shape, bool(np.allclose(T[0], np.eye(4)))
        ((32, 4, 4), True)
    """
    diam = float(diameter_m)
    if not (math.isfinite(diam) and diam > 0):
        raise ValueError(f"diameter_m must be positive, got {diameter_m}")
    n = continuous_steps(max_sym_disc_step)  # validates the step even when there is no continuous symmetry
    disc = [np.eye(4)] + [_rigid(M, f"discrete symmetry {i}") for i, M in enumerate(discrete_m)]
    cont: list[np.ndarray] = []
    if len(continuous):
        for i, item in enumerate(continuous):
            axis, offset = _parse_continuous(item, i)
            for k in range(n):
                T = np.eye(4)
                T[:3, :3] = _axis_angle_matrix(axis, 2.0 * math.pi * k / n)
                T[:3, 3] = offset - T[:3, :3] @ offset
                cont.append(T)
    combos = [C @ D for D in disc for C in cont] if cont else disc
    return _dedup(np.stack(combos), atol_t=1e-6 * diam)
