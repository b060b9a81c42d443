"""What the presets share: the update guard, the edge-based pose selection, crop views and the registry."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from meshpose.geometry.lie import rotation_about_axis
from meshpose.refine.guards import guard_update, usable_update
from meshpose.refine.select import EdgeJudge, pick_by_edges
from meshpose.refine.views import cut_crop, inside_image, window_crop
from meshpose.types import FailureCode, Observation
from support import scenes


def test_guard_update_checks_finite_then_camera_then_step() -> None:
    eye, t0 = np.eye(3), np.array([0.0, 0.0, 0.5])
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    R30 = rotation_about_axis(z, math.radians(30.0)).numpy()
    ok = guard_update(eye, t0, R30, t0 + np.array([0.01, 0, 0]), diameter=0.1, max_rot_deg=45.0, max_trans_frac=0.5)
    assert ok.ok and abs(ok.rot_deg - 30.0) < 1e-9 and abs(ok.trans_m - 0.01) < 1e-12
    big = guard_update(eye, t0, R30, t0, diameter=0.1, max_rot_deg=20.0, max_trans_frac=0.5)
    assert big.failure is not None and big.failure.code is FailureCode.IMPLAUSIBLE_UPDATE
    assert "30.0°" in big.failure.message
    far = guard_update(eye, t0, eye, t0 + np.array([0.06, 0, 0]), diameter=0.1, max_trans_frac=0.5)
    assert far.failure is not None and far.failure.code is FailureCode.IMPLAUSIBLE_UPDATE
    behind = guard_update(eye, t0, eye, [0.0, 0.0, -0.1], diameter=0.1)
    assert behind.failure is not None and behind.failure.code is FailureCode.BEHIND_CAMERA
    nan = guard_update(eye, t0, eye * np.nan, t0, diameter=0.1, max_rot_deg=0.0)
    assert nan.failure is not None and nan.failure.code is FailureCode.NUMERICAL
    # A pivot: the displacement of that object point; a turn about it does not move it.
    pivot = np.array([0.0, 0.0, 0.05])
    t_turn = t0 + pivot - R30 @ pivot
    about = guard_update(eye, t0, R30, t_turn, diameter=0.1, max_trans_frac=1e-6, pivot=pivot)
    assert about.ok and about.trans_m < 1e-12


def test_pick_by_edges_needs_a_margin_over_the_last_pose() -> None:
    assert pick_by_edges([0.5], 0.05) == 0
    assert pick_by_edges([0.7, 0.6, 0.7, 0.6], 0.05) == 0  # the first of equals
    assert pick_by_edges([0.6, 0.64, 0.6], 0.05) == 2


def test_crop_views_cut_the_observation() -> None:
    cam = scenes.make_camera(160, 120)
    obj, gt, _, seed = scenes.single_object_cases(1, camera=cam)[0]
    obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=seed, with_depth=True)
    obs = Observation(obs.rgb, cam, depth=obs.depth, mask=np.ones((1, 120, 160), bool))
    box = np.array([20.0, 10.0, 84.0, 74.0])
    crop = cut_crop(obs, box, 32)
    assert crop.rgb.shape == (32, 32, 3) and crop.depth is not None and crop.mask is not None
    assert crop.valid.all() and crop.camera.width == 32 and crop.camera.fx == pytest.approx(cam.fx / 2)
    outside = cut_crop(obs, np.array([-40.0, -40.0, 24.0, 24.0]), 32, valid="centres", depth=False, mask=False)
    assert outside.depth is None and outside.mask is None
    assert np.array_equal(outside.valid, inside_image(cam, np.array([-40.0, -40.0, 24.0, 24.0]), 32, 32))
    assert not outside.valid[0, 0] and outside.valid[-1, -1]
    win = window_crop(obs, 10, 20, 64, 32)
    assert np.array_equal(win.rgb, obs.rgb[20:52, 10:74]) and win.camera.cx == pytest.approx(cam.cx - 10)
    with pytest.raises(ValueError, match="inside the 160"):
        window_crop(obs, 120, 0, 64, 32)
    with pytest.raises(ValueError, match="no rendering"):
        _ = crop.own
    judge = EdgeJudge.around(obs, gt, obj.points)
    assert judge.grad.shape == (128, 128, 2) and judge.score(np.zeros((128, 128), bool)) == 0.0


def test_registry_imports_without_a_cycle() -> None:
    # Each module imported first, alone, in a fresh interpreter: a circle of imports fails one of them.
    mods = ["meshpose.refine.chain", "meshpose.refine.registry", "meshpose.refine.base", "meshpose.refine.contour"]
    for mod in mods:
        subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)


def test_usable_update_is_guard_update_without_limits() -> None:
    R = np.eye(3)
    pivot = np.array([0.0, 0.0, 0.2])
    cases = [
        (R, np.array([0.0, 0.0, 0.5]), None),
        (R, np.array([0.0, 0.0, -0.1]), None),  # origin behind the camera
        (R, np.array([0.0, 0.0, -0.1]), pivot),  # ... but the pivot in front of it
        (np.diag([1.0, -1.0, -1.0]), np.array([0.0, 0.0, 0.1]), pivot),  # turned: the pivot behind
        (R, np.array([np.nan, 0.0, 0.5]), None),
    ]
    for Rn, tn, p in cases:
        assert usable_update(Rn, tn, p) == guard_update(R, [0, 0, 0.5], Rn, tn, diameter=0.1, pivot=p).ok
    assert [usable_update(Rn, tn, p) for Rn, tn, p in cases] == [True, False, True, False, False]
