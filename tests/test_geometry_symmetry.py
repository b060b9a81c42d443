"""Symmetry expansion (BOP models_info semantics, metres; entries in millimetres read through meshpose.io)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshpose.geometry import continuous_steps, symmetry_transforms_from_lists
from meshpose.io.models_info import expand_symmetries


def _assert_rigid(T: np.ndarray) -> None:
    R = T[:, :3, :3]
    assert np.allclose(R @ np.swapaxes(R, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-12)
    assert np.allclose(T[:, 3], [0.0, 0.0, 0.0, 1.0])


def _max_step_displacement(T: np.ndarray, pts: np.ndarray) -> float:
    moved = pts[None] @ np.swapaxes(T[:, :3, :3], 1, 2) + T[:, None, :3, 3]  # (S, P, 3)
    return float(np.linalg.norm(np.diff(moved, axis=0), axis=-1).max())


def test_no_symmetry_is_identity_only():
    T = expand_symmetries({"diameter": 120.0})
    assert T.shape == (1, 4, 4) and np.array_equal(T[0], np.eye(4))


@pytest.mark.parametrize("step", [0.01, 0.05, 0.2])
def test_continuous_z_symmetry(step):
    diameter_mm = 80.0
    info = {"diameter": diameter_mm, "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}
    T = expand_symmetries(info, max_sym_disc_step=step)
    n = math.ceil(math.pi / step)
    assert len(T) == n == continuous_steps(step)
    assert np.allclose(T[0], np.eye(4))
    _assert_rigid(T)
    assert np.allclose(T[:, :3, 3], 0.0) and np.allclose(T[:, 2, 2], 1.0)
    # The farthest point from the axis (at diameter / 2, in metres) moves ≤ step · diameter per step.
    d = diameter_mm / 1000.0
    rim = np.array([[d / 2, 0.0, 0.01], [0.0, -d / 2, -0.02]])
    assert _max_step_displacement(T, rim) <= step * d + 1e-12
    angles = np.arctan2(T[:, 1, 0], T[:, 0, 0]) % (2 * np.pi)
    assert np.allclose(np.sort(angles), 2 * np.pi * np.arange(n) / n)


def test_continuous_axis_with_offset_in_mm():
    info = {"diameter": 100.0, "symmetries_continuous": [{"axis": [1, 0, 0], "offset": [0, 20.0, 0]}]}
    T = expand_symmetries(info, max_sym_disc_step=0.1)
    _assert_rigid(T)
    # points on the axis (y = 20 mm = 0.02 m, z = 0) are fixed by every transform
    on_axis = np.array([[0.3, 0.02, 0.0, 1.0], [-0.1, 0.02, 0.0, 1.0]])
    assert np.allclose(on_axis @ np.swapaxes(T, 1, 2), on_axis[None], atol=1e-12)
    # and the 180° step maps y = 0 to y = 0.04 m (translations are in metres)
    half = T[len(T) // 2]
    assert np.allclose(half @ np.array([0.0, 0.0, 0.0, 1.0]), [0.0, 0.04, 0.0, 1.0], atol=1e-12)


def test_discrete_and_continuous_combine():
    flip_x = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 30.0, 0, 0, 0, 1]  # 180° about x, then 30 mm along z
    info = {
        "diameter": 150.0,
        "symmetries_discrete": [flip_x],
        "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}],
    }
    T = expand_symmetries(info, max_sym_disc_step=0.1)
    n = continuous_steps(0.1)
    assert len(T) == 2 * n and np.allclose(T[0], np.eye(4))
    _assert_rigid(T)
    # half are upside-down (R[2,2] = -1) with the 0.03 m shift, half upright without
    flipped = T[:, 2, 2] < 0
    assert flipped.sum() == n and np.allclose(T[flipped, 2, 3], 0.03) and np.allclose(T[~flipped, :3, 3], 0.0)
    # every combination cont ∘ disc is present, e.g. the first continuous step after the flip
    flip = np.array(flip_x, dtype=float).reshape(4, 4)
    flip[:3, 3] *= 1e-3
    combo = T[1] @ flip
    assert np.min(np.abs(T - combo).reshape(len(T), -1).max(1)) < 1e-12


def test_discrete_only_and_duplicates():
    rot_z = lambda k: [  # noqa: E731
        math.cos(k * math.pi / 2), -math.sin(k * math.pi / 2), 0, 0,
        math.sin(k * math.pi / 2), math.cos(k * math.pi / 2), 0, 0,
        0, 0, 1, 0,
        0, 0, 0, 1,
    ]  # fmt: skip
    info = {"diameter": 50.0, "symmetries_discrete": [rot_z(1), rot_z(2), rot_z(3), rot_z(2), rot_z(0)]}
    T = expand_symmetries(info)
    assert len(T) == 4 and np.allclose(T[0], np.eye(4))
    _assert_rigid(T)
    # two continuous axes: the shared identity is kept once
    T2 = symmetry_transforms_from_lists(
        [], [((0, 0, 1), (0, 0, 0)), ((1, 0, 0), (0, 0, 0))], 0.1, max_sym_disc_step=0.5
    )
    n = continuous_steps(0.5)
    assert len(T2) == 2 * n - 1 and np.allclose(T2[0], np.eye(4))


def test_metric_path_matches_bop_path():
    info = {
        "diameter": 90.0,
        "symmetries_discrete": [[-1, 0, 0, 5.0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]],
        "symmetries_continuous": [{"axis": [0, 1, 0], "offset": [10.0, 0, 0]}],
    }
    a = expand_symmetries(info, max_sym_disc_step=0.2)
    flip = np.array(info["symmetries_discrete"][0], dtype=float).reshape(4, 4)
    flip[0, 3] = 0.005
    b = symmetry_transforms_from_lists(
        [flip], [{"axis": [0, 1, 0], "offset": [0.01, 0, 0]}], 0.09, max_sym_disc_step=0.2
    )
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-15)


def test_symmetry_validation():
    with pytest.raises(ValueError, match="diameter"):
        expand_symmetries({})
    with pytest.raises(ValueError, match="16"):
        expand_symmetries({"diameter": 1.0, "symmetries_discrete": [[1, 0, 0]]})
    with pytest.raises(ValueError, match="rotation"):
        expand_symmetries({"diameter": 1.0, "symmetries_discrete": [[2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]})
    with pytest.raises(ValueError, match="zero axis"):
        expand_symmetries({"diameter": 1.0, "symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]})
    with pytest.raises(ValueError, match="max_sym_disc_step"):
        expand_symmetries({"diameter": 1.0}, max_sym_disc_step=0.0)
    with pytest.raises(ValueError, match="diameter_m"):
        symmetry_transforms_from_lists([], [], 0.0)
