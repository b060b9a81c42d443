"""The ``icp`` preset: RGB-D point-to-plane ICP against re-rendered surfaces, on scenes the tests render themselves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from meshpose.refine.base import RefinerError
from meshpose.refine.icp import ICPConfig, ICPRefiner
from meshpose.refine.registry import make_refiner
from meshpose.render.gl import get_default_renderer
from meshpose.types import Camera, FailureCode, ObjectModel, Observation, Pose
from support import scenes


def _depth_obs(obj: ObjectModel, gt: Pose, camera: Camera, seed: int) -> Observation:
    return scenes.render_observation([obj], gt.reshape(1), camera, seed=seed, with_depth=True)


def _rel_add(obj: ObjectModel, est: Pose, gt: Pose) -> float:
    return scenes.add_error(obj, est, gt) / obj.diameter


def _same_pose(a: Pose, b: Pose) -> bool:
    return bool(torch.equal(a.R, b.R) and torch.equal(a.t, b.t))


def _occluded_scene(
    target: ObjectModel, occluder: ObjectModel, camera: Camera, seed: int, dz: float = -0.05
) -> tuple[Pose, Pose, float]:
    """``target`` at a random pose and ``occluder`` ``-dz`` metres closer, shifted sideways to hide ~30 % of it.

    Returns ``(target_pose, occluder_pose, hidden_fraction)``.
    """
    renderer = get_default_renderer()
    gt = scenes.look_at_pose(0.6, np.random.default_rng(seed + 10), (0.0, 0.0), camera)
    alone = int(renderer.render([target], gt.reshape(1), camera).mask[0].sum())
    best: tuple[float, Pose] | None = None
    for dx in np.linspace(0.0, 0.15, 61):
        occ = Pose(gt.R, gt.t + torch.tensor([dx, 0.0, dz], dtype=torch.float64))
        seen = int((renderer.render([target, occluder], Pose.stack([gt, occ]), camera).instance[0] == 1).sum())
        hidden = 1.0 - seen / alone
        if best is None or abs(hidden - 0.3) < abs(best[0] - 0.3):
            best = (hidden, occ)
    assert best is not None
    return gt, best[1], best[0]


# ------------------------------------------------------------------------------------------------------------
# Construction and refusals
# ------------------------------------------------------------------------------------------------------------
def test_preset_is_registered_with_typed_config() -> None:
    refiner = make_refiner("icp", iterations=3, kernel="huber")
    assert isinstance(refiner, ICPRefiner)
    assert (refiner.name, refiner.modality) == ("icp", "rgbd")
    assert refiner.config == ICPConfig(iterations=3, kernel="huber")
    with pytest.raises(ValueError, match="no option"):
        make_refiner("icp", not_an_option=1)
    with pytest.raises(ValueError, match="kernel"):
        ICPConfig(kernel="cauchy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_correspondence"):
        ICPConfig(max_correspondence_fine=0.5, max_correspondence_coarse=0.1)


def test_refuses_an_observation_without_depth() -> None:
    camera = scenes.make_camera()
    obj, gt, init, seed = scenes.single_object_cases(1, camera=camera)[0]
    obs = scenes.render_observation([obj], gt.reshape(1), camera, seed=seed, with_depth=False)
    with pytest.raises(RefinerError, match="needs depth"):
        make_refiner("icp").refine(obs, [obj], init.reshape(1))


# ------------------------------------------------------------------------------------------------------------
# Accuracy
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "seed"),
    [(320, 2), pytest.param(640, 2, marks=pytest.mark.slow), pytest.param(320, 1, marks=pytest.mark.slow)],
)
def test_accuracy_on_fixed_set(width: int, seed: int) -> None:
    """24 fixed cases (8 per object; depth with noise and holes; 15° / 10 % of the diameter off): the refined
    ADD is below 0.05·diameter in ≥ 95 % of them."""
    camera = scenes.make_camera(width, width * 3 // 4)
    refiner = make_refiner("icp")
    errors, inits = [], []
    for obj, gt, init, scene_seed in scenes.single_object_cases(24, camera=camera, seed=seed):
        res = refiner.refine(_depth_obs(obj, gt, camera, scene_seed), [obj], init.reshape(1))
        errors.append(_rel_add(obj, res.pose[0], gt))
        inits.append(_rel_add(obj, init, gt))
    errors_arr = np.array(errors)
    assert min(inits) > 0.08  # the perturbation is real
    assert np.mean(errors_arr < 0.05) >= 0.95, np.round(errors_arr, 4)
    assert np.median(errors_arr) < 0.01, np.round(errors_arr, 4)


def test_unknown_occluder_hiding_30_percent() -> None:
    """A second object, not part of the call, hides ~30 % of the target from 5 cm in front of its centre."""
    camera = scenes.make_camera()
    target, occluder = scenes.objects()[1], scenes.objects()[2]
    gt, occ, hidden = _occluded_scene(target, occluder, camera, seed=1)
    assert 0.25 < hidden < 0.4
    obs = scenes.render_observation([target, occluder], Pose.stack([gt, occ]), camera, seed=1, with_depth=True)
    init = scenes.perturb(gt, 15.0, 0.1, target.diameter, seed=1)
    res = make_refiner("icp").refine(obs, [target], init.reshape(1))
    assert res.info.failure == [None]
    assert _rel_add(target, res.pose[0], gt) < 0.05
    # With the instance mask of the visible target the same case works too.
    visible = get_default_renderer().render([target, occluder], Pose.stack([gt, occ]), camera).instance[0] == 1
    obs_masked = Observation(obs.rgb, camera, depth=obs.depth, mask=visible[None])
    res_masked = make_refiner("icp").refine(obs_masked, [target], init.reshape(1))
    assert _rel_add(target, res_masked.pose[0], gt) < 0.05


def test_two_objects_refined_together_with_occlusion() -> None:
    """Both objects in the call, one hiding ~30 % of the other, both perturbed: both converge."""
    camera = scenes.make_camera()
    target, occluder = scenes.objects()[2], scenes.objects()[0]
    gt, occ, _ = _occluded_scene(target, occluder, camera, seed=0)
    obs = scenes.render_observation([target, occluder], Pose.stack([gt, occ]), camera, seed=0, with_depth=True)
    init = Pose.stack(
        [scenes.perturb(gt, 15.0, 0.1, target.diameter, seed=3), scenes.perturb(occ, 15.0, 0.1, occluder.diameter, 4)]
    )
    res = make_refiner("icp").refine(obs, [target, occluder], init)
    assert res.info.failure == [None, None]
    assert _rel_add(target, res.pose[0], gt) < 0.05
    assert _rel_add(occluder, res.pose[1], occ) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("dz", [-0.12, -0.05])
@pytest.mark.parametrize("pair", [(0, 1), (1, 2), (2, 0)])
def test_unknown_occluder_many(pair: tuple[int, int], dz: float) -> None:
    camera = scenes.make_camera()
    target, occluder = scenes.objects()[pair[0]], scenes.objects()[pair[1]]
    for seed in range(4):
        gt, occ, hidden = _occluded_scene(target, occluder, camera, seed=seed, dz=dz)
        assert 0.2 < hidden < 0.45
        obs = scenes.render_observation([target, occluder], Pose.stack([gt, occ]), camera, seed=seed, with_depth=True)
        init = scenes.perturb(gt, 15.0, 0.1, target.diameter, seed)
        res = make_refiner("icp").refine(obs, [target], init.reshape(1))
        assert _rel_add(target, res.pose[0], gt) < 0.05, (seed, hidden)


# ------------------------------------------------------------------------------------------------------------
# Failures never raise
# ------------------------------------------------------------------------------------------------------------
def _one_case() -> tuple[ObjectModel, Pose, Pose, Observation]:
    camera = scenes.make_camera()
    obj, gt, init, seed = scenes.single_object_cases(1, camera=camera, seed=3)[0]
    return obj, gt, init, _depth_obs(obj, gt, camera, seed)


def test_object_outside_the_image_is_a_failure_not_an_exception() -> None:
    obj, _, init, obs = _one_case()
    away = Pose(init.R, init.t + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)).reshape(1)
    res = make_refiner("icp").refine(obs, [obj], away)
    failure = res.info.failure[0]
    assert failure is not None and failure.code is FailureCode.OUTSIDE_IMAGE and "outside the image" in failure.message
    assert _same_pose(res.pose, away)
    assert res.score[0] == 0.0
    assert not res.info.converged[0]


def test_empty_region_is_a_failure_with_the_pose_unchanged() -> None:
    obj, _, init, obs = _one_case()
    cam = obs.camera
    # A mask far from the object: nothing of the region is left.
    mask = np.zeros((1, cam.height, cam.width), bool)
    mask[0, :10, :10] = True
    res = make_refiner("icp").refine(Observation(obs.rgb, cam, depth=obs.depth, mask=mask), [obj], init.reshape(1))
    assert res.info.failure[0] is not None and res.info.failure[0].code is FailureCode.NO_DEPTH
    assert _same_pose(res.pose, init.reshape(1))
    # No depth at all inside the image.
    no_depth = Observation(obs.rgb, cam, depth=np.zeros_like(obs.depth))
    res = make_refiner("icp").refine(no_depth, [obj], init.reshape(1))
    failure = res.info.failure[0]
    assert failure is not None and failure.code is FailureCode.NO_DEPTH and "too few observed depth" in failure.message
    assert _same_pose(res.pose, init.reshape(1))
    assert res.score[0] == 0.0


def test_divergent_step_keeps_the_last_good_pose() -> None:
    obj, _, init, obs = _one_case()
    res = make_refiner("icp", max_step_rot_deg=1e-3).refine(obs, [obj], init.reshape(1))
    failure = res.info.failure[0]
    assert failure is not None and failure.code is FailureCode.IMPLAUSIBLE_UPDATE and "diverged" in failure.message
    assert _same_pose(res.pose, init.reshape(1))


# ------------------------------------------------------------------------------------------------------------
# Score, history, diagnostics
# ------------------------------------------------------------------------------------------------------------
def test_score_ranks_a_converged_pose_above_a_bad_one() -> None:
    obj, gt, init, obs = _one_case()
    refiner = make_refiner("icp")
    good = refiner.refine(obs, [obj], init.reshape(1))
    bad_pose = scenes.perturb(gt, 30.0, 0.3, obj.diameter, seed=7).reshape(1)
    bad = refiner.refine(obs, [obj], bad_pose, iterations=0)
    assert len(bad.history) == 1 and _same_pose(bad.pose, bad_pose)
    assert 0.0 <= bad.score[0] <= 1.0 and 0.0 <= good.score[0] <= 1.0
    assert good.score[0] > 0.7
    assert good.score[0] > bad.score[0] + 0.3
    # Pushed away from the camera, the observed object lies in front of the render: the visibility term sinks it.
    behind = Pose(gt.R, gt.t * 1.3).reshape(1)
    assert refiner.refine(obs, [obj], behind, iterations=0).score[0] < 0.3


def test_history_callback_and_diagnostics() -> None:
    obj, _, init, obs = _one_case()
    seen: list[int] = []
    res = make_refiner("icp", stop_early=False).refine(
        obs, [obj], init.reshape(1), iterations=4, callback=lambda k, p: seen.append(k)
    )
    assert seen == [1, 2, 3, 4]
    assert len(res.history) == 5 and res.info.iterations == 4
    assert _same_pose(res.history[0], init.reshape(1))
    assert _same_pose(res.history[-1], res.pose)
    assert res.pose.dtype == torch.float64 and tuple(res.pose.batch_shape) == (1,)
    for key in ("render", "points", "icp", "score", "total"):
        assert key in res.info.timings
    extra = res.info.extra
    assert len(extra["fitness"][0]) == 4 and len(extra["max_correspondence"]) == 4
    schedule = [row[0] for row in extra["max_correspondence"]]
    assert all(a > b for a, b in itertools.pairwise(schedule))  # coarse to fine
    assert res.info.converged.shape == (1,)
