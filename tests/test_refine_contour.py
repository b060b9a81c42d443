"""The ``contour`` refiner: its image-space terms, and end-to-end refinement on synthetic scenes.

The end-to-end tests render their own scenes (``tests/scenes.py``: textured objects over clutter, a different
light, noise and blur) and assert real accuracy thresholds. The full 16-case single-object set runs under
``-m slow``; the default run keeps a smaller set with the same threshold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meshpose.refine.base import RefinerError
from meshpose.refine.contour import ContourConfig, ContourRefiner
from meshpose.refine.contour.terms import (
    ColorModel,
    contour_lines,
    motion_jacobian,
    neighbourhood_min_distance,
    project_under_increment,
    region_energy,
)
from meshpose.refine.registry import make_refiner
from meshpose.types import FailureCode, Observation, Pose
from support import scenes

ADD_OK = 0.05  # fraction of the diameter


@pytest.fixture(scope="module")
def refiner() -> ContourRefiner:
    return ContourRefiner()


def _single_case_errors(refiner: ContourRefiner, n: int) -> tuple[list[float], list[float]]:
    cam = scenes.make_camera()
    errors, scores = [], []
    for obj, gt, init, seed in scenes.single_object_cases(n):
        obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=seed)
        res = refiner.refine(obs, [obj], init.reshape(1))
        errors.append(scenes.add_error(obj, res.pose[0], gt) / obj.diameter)
        scores.append(float(res.score[0]))
    return errors, scores


# ----------------------------------------------------------------------------------------------------------
# Terms
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("centered", [False, True])
def test_motion_jacobian_matches_autograd(centered: bool) -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform([-0.1, -0.1, 0.4], [0.1, 0.1, 0.8], (7, 3))
    K = np.array([[420.0, 0.3, 61.5], [0.0, 415.0, 66.0], [0.0, 0.0, 1.0]])
    center = np.array([0.02, -0.01, 0.6]) if centered else None
    J = motion_jacobian(pts, K, center)
    auto = torch.autograd.functional.jacobian(
        lambda d: project_under_increment(
            d, torch.tensor(pts), torch.tensor(K), None if center is None else torch.tensor(center)
        ),
        torch.zeros(6, dtype=torch.float64),
    )  # (M, 2, 6)
    np.testing.assert_allclose(J, auto.numpy(), rtol=1e-9, atol=1e-9)


def test_color_model_separates_foreground_and_background() -> None:
    rng = np.random.default_rng(1)
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = np.array([200, 40, 40]) + rng.integers(-10, 10, (64, 32, 3))  # red left half
    img[:, 32:] = np.array([40, 60, 200]) + rng.integers(-10, 10, (64, 32, 3))  # blue right half
    fg = np.zeros((64, 64), bool)
    fg[8:56, 4:28] = True
    bg = np.zeros((64, 64), bool)
    bg[8:56, 36:60] = True
    for tiles in (1, 4):
        post = ColorModel.fit(img, fg, bg, bins=16, tiles=tiles).posterior(img)
        assert post.shape == (64, 64) and post.dtype == np.float32
        assert post[:, :30].mean() > 0.9
        assert post[:, 34:].mean() < 0.1


def test_contour_lines_find_a_shifted_contour() -> None:
    """A posterior whose disc is 3 px larger than the rendered one: every line reports about +3 px."""
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(xx - 47.5, yy - 47.5)
    own = r < 20.0
    posterior = np.where(r < 23.0, 0.95, 0.05).astype(np.float32)
    movable = own & ~(np.hypot(xx - 47.5, yy - 47.5) < 19.0)
    lines = contour_lines(own, movable, posterior, half_length=8, max_lines=100, slope=1.0, alpha=0.8)
    assert 40 <= len(lines.rows) <= 100
    assert abs(float(np.median(lines.offset)) - 3.0) < 0.75
    radial = np.stack([lines.cols - 47.5, lines.rows - 47.5], 1)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert np.all(np.einsum("ij,ij->i", radial, lines.normals) > 0.9)  # outward normals
    # The same disc as the posterior: offsets near zero, and a lower region energy.
    e_small, _ = region_energy(own, np.ones_like(own), posterior, 8.0, 1.0)
    e_right, agree = region_energy(r < 23.0, np.ones_like(own), posterior, 8.0, 1.0)
    assert e_right < e_small and agree > 0.8


def test_neighbourhood_min_distance_forgives_small_shifts() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 100, (32, 32, 3)).astype(np.float32)
    shifted = np.roll(a, 1, axis=1)
    assert float(np.median(neighbourhood_min_distance(a, shifted, 0))) > 10.0
    assert float(np.median(neighbourhood_min_distance(a, shifted, 1)[:, 2:-2])) == 0.0


# ----------------------------------------------------------------------------------------------------------
# Refinement
# ----------------------------------------------------------------------------------------------------------
def test_preset_is_registered() -> None:
    ref = make_refiner("contour", iterations=(2, 3))
    assert isinstance(ref, ContourRefiner)
    assert ref.name == "contour" and ref.modality == "rgb"
    assert ref.config.iterations == (2, 3)
    assert ref.schedule(None) == [(0, 2), (1, 3)]
    assert ref.schedule(1) == [(1, 1)]
    with pytest.raises(ValueError, match="one value per level"):
        ContourConfig(iterations=(1, 2, 3))


def test_single_object_converges(refiner: ContourRefiner) -> None:
    """Default run: 6 of the fixed 15°/10 % cases; ≥ 90 % must end below 0.05·d (here: at most one miss)."""
    errors, _ = _single_case_errors(refiner, 6)
    assert sum(e < ADD_OK for e in errors) >= 5, errors
    assert float(np.median(errors)) < 0.03, errors


@pytest.mark.slow
def test_single_object_converges_full_set(refiner: ContourRefiner) -> None:
    errors, _ = _single_case_errors(refiner, 16)
    assert np.mean(np.array(errors) < ADD_OK) >= 0.9, errors


def test_single_object_with_mask(refiner: ContourRefiner) -> None:
    """A given instance mask fixes the foreground model: convergence gets tighter."""
    from meshpose.render.gl import get_default_renderer

    cam = scenes.make_camera()
    for obj, gt, init, seed in scenes.single_object_cases(3, seed=3):
        obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=seed)
        mask = get_default_renderer().render([obj], gt.reshape(1), cam).mask[0]
        res = refiner.refine(Observation(obs.rgb, cam, mask=mask), [obj], init.reshape(1))
        assert scenes.add_error(obj, res.pose[0], gt) / obj.diameter < 0.03


@pytest.mark.parametrize("seed", [0, 3])
def test_two_overlapping_objects_refined_jointly(refiner: ContourRefiner, seed: int) -> None:
    """The near box hides about a third of the far object; both start perturbed and both converge."""
    objs, gt, init, scene_seed = scenes.overlapping_pair_case(seed)
    obs = scenes.render_observation(list(objs), gt, scenes.make_camera(), seed=scene_seed)
    res = refiner.refine(obs, list(objs), init)
    errors = [scenes.add_error(o, res.pose[i], gt[i]) / o.diameter for i, o in enumerate(objs)]
    assert all(e < ADD_OK for e in errors), errors
    assert res.info.failure == [None, None]


def test_score_separates_converged_from_wrong(refiner: ContourRefiner) -> None:
    cam = scenes.make_camera()
    good, bad = [], []
    for (obj, gt, init, seed), (_, _, wrong, _) in zip(
        scenes.single_object_cases(4, seed=5), scenes.single_object_cases(4, seed=5, rot_deg=60.0), strict=True
    ):
        obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=seed)
        res = refiner.refine(obs, [obj], init.reshape(1))
        if scenes.add_error(obj, res.pose[0], gt) / obj.diameter < ADD_OK:
            good.append(float(res.score[0]))
        res_bad = refiner.refine(obs, [obj], wrong.reshape(1))
        if scenes.add_error(obj, res_bad.pose[0], gt) / obj.diameter > 0.2:
            bad.append(float(res_bad.score[0]))
        bad.append(float(refiner.refine(obs, [obj], wrong.reshape(1), iterations=0).score[0]))
    assert len(good) >= 3 and len(bad) >= 4
    assert all(0.0 <= s <= 1.0 for s in good + bad)
    assert min(good) > max(bad), (good, bad)


def test_callback_history_and_info(refiner: ContourRefiner) -> None:
    cam = scenes.make_camera()
    obj, gt, init, seed = scenes.single_object_cases(1)[0]
    obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=seed)
    calls: list[tuple[int, Pose]] = []
    res = refiner.refine(obs, [obj], init.reshape(1), iterations=5, callback=lambda k, p: calls.append((k, p)))
    assert [k for k, _ in calls] == list(range(1, len(calls) + 1))
    assert len(calls) == res.info.iterations == len(res.history) - 1 and 1 <= len(calls) <= 5
    assert torch.equal(res.history[0].R, init.reshape(1).R) and torch.equal(res.history[0].t, init.reshape(1).t)
    for (_, p), h in zip(calls, res.history[1:], strict=True):
        assert tuple(p.batch_shape) == (1,) and torch.equal(p.R, h.R) and torch.equal(p.t, h.t)
    assert res.pose.dtype == torch.float64 and tuple(res.pose.batch_shape) == (1,)
    assert res.info.failure == [None] and res.score.shape == (1,)
    assert {"render", "terms", "total"} <= set(res.info.timings)
    # No iterations: the initial pose comes back, scored.
    res0 = refiner.refine(obs, [obj], init.reshape(1), iterations=0)
    assert len(res0.history) == 1 and torch.allclose(res0.pose.t, init.reshape(1).t)
    assert 0.0 < res0.score[0] < 1.0


def test_never_returns_a_worse_pose_than_a_good_init(refiner: ContourRefiner) -> None:
    """Started at the ground truth, the returned pose stays there (the best pose is kept, not the last)."""
    cam = scenes.make_camera()
    obj, gt, _, seed = scenes.single_object_cases(2)[1]
    obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=seed)
    res = refiner.refine(obs, [obj], gt.reshape(1))
    assert scenes.add_error(obj, res.pose[0], gt) / obj.diameter < 0.02


def test_object_outside_the_image_is_a_failure_not_an_error(refiner: ContourRefiner) -> None:
    cam = scenes.make_camera()
    (far, near), gt, _, scene_seed = scenes.overlapping_pair_case(0)
    obs = scenes.render_observation([far], gt[:1], cam, seed=scene_seed)
    away = Pose(gt.R[1], gt.t[1] + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))  # far to the right
    init = Pose.stack([gt[0], away])
    res = refiner.refine(obs, [far, near], init)
    assert res.info.failure[0] is None
    failure = res.info.failure[1]
    assert failure is not None and failure.code is FailureCode.OUTSIDE_IMAGE and "outside the image" in failure.message
    assert res.score[1] == 0.0 and not res.info.converged[1]
    assert torch.allclose(res.pose[1].t, away.t) and torch.allclose(res.pose[1].R, away.R)


def test_bad_inputs_raise(refiner: ContourRefiner) -> None:
    cam = scenes.make_camera()
    obj, gt, init, seed = scenes.single_object_cases(1)[0]
    obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=seed)
    with pytest.raises(RefinerError, match="no objects"):
        refiner.refine(obs, [], init.reshape(1))
    with pytest.raises(RefinerError, match="objects but init poses"):
        refiner.refine(obs, [obj, obj], init.reshape(1))
    nan = Pose(init.R.clone(), torch.tensor([math.nan, 0.0, 0.5], dtype=torch.float64))
    with pytest.raises(RefinerError, match="NaN"):
        refiner.refine(obs, [obj], nan.reshape(1))
    behind = Pose(init.R.clone(), torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64))
    with pytest.raises(RefinerError, match="behind the camera"):
        refiner.refine(obs, [obj], behind.reshape(1))
    with pytest.raises(RefinerError, match="iterations"):
        refiner.refine(obs, [obj], init.reshape(1), iterations=-1)
