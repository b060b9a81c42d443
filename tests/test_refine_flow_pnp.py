"""``flow-pnp`` on scenes the tests render: it must bring perturbed poses close to the truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshpose.refine.base import RefinerError
from meshpose.refine.flow_pnp import FlowPnPRefiner, FlowStage
from meshpose.refine.registry import make_refiner
from meshpose.types import Pose
from support import scenes


def _run(n: int, *, with_depth: bool, seed: int, **cfg: object) -> list[float]:
    ref = make_refiner("flow-pnp", **cfg)
    cam = scenes.make_camera(320, 240)
    errs = []
    for obj, gt, init, s in scenes.single_object_cases(n, seed=seed, camera=cam):
        obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=s, with_depth=with_depth)
        res = ref.refine(obs, [obj], init.reshape(1))
        errs.append(scenes.add_error(obj, res.pose[0], gt) / obj.diameter)
    return errs


def test_flow_pnp_recovers_15deg_perturbations() -> None:
    errs = np.array(_run(6, with_depth=False, seed=1))
    assert np.mean(errs < 0.05) >= 5 / 6, errs


@pytest.mark.slow
def test_flow_pnp_recovers_15deg_perturbations_full_set() -> None:
    errs = np.array(_run(20, with_depth=False, seed=2))
    assert np.mean(errs < 0.05) >= 0.9, errs


def test_flow_pnp_with_depth() -> None:
    errs = np.array(_run(4, with_depth=True, seed=3))
    assert np.mean(errs < 0.05) >= 0.75, errs


def test_history_callback_and_result_shape() -> None:
    cam = scenes.make_camera(320, 240)
    (obj, gt, init, s), *_ = scenes.single_object_cases(1, seed=5, camera=cam)
    obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=s)
    seen: list[int] = []
    ref = FlowPnPRefiner(FlowPnPRefiner.Config(stages=(FlowStage(128, 1.6, 1), FlowStage(192, 1.3, 1))))
    res = ref.refine(obs, [obj], init.reshape(1), callback=lambda it, p: seen.append(it))
    assert seen == [1, 2]
    assert torch.equal(res.history[0].R, init.reshape(1).R)
    assert res.pose.batch_shape == (1,) and res.score.shape == (1,)
    assert 0.0 <= res.score[0] <= 1.0
    assert res.info.iterations == len(res.history) - 1
    assert {"render", "flow", "pnp", "total"} <= set(res.info.timings)


def test_bad_inputs_are_refused() -> None:
    cam = scenes.make_camera(160, 120)
    obj = scenes.objects()[0]
    pose = scenes.look_at_pose(0.5, np.random.default_rng(0), (0.0, 0.0), cam)
    obs = scenes.render_observation([obj], pose.reshape(1), cam)
    ref = make_refiner("flow-pnp")
    with pytest.raises(RefinerError, match="no objects"):
        ref.refine(obs, [], pose.reshape(1))
    with pytest.raises(RefinerError, match="2 objects"):
        ref.refine(obs, [obj, obj], pose.reshape(1))
    bad = Pose(pose.R, torch.tensor([0.0, 0.0, float("nan")], dtype=torch.float64))
    with pytest.raises(RefinerError, match="NaN"):
        ref.refine(obs, [obj], bad.reshape(1))
    behind = Pose(pose.R, torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64))
    with pytest.raises(RefinerError, match="behind the camera"):
        ref.refine(obs, [obj], behind.reshape(1))
    with pytest.raises(ValueError, match="no option"):
        make_refiner("flow-pnp", bogus=1)
    with pytest.raises(ValueError, match="unknown refiner"):
        make_refiner("nope")


def test_object_outside_the_image_is_a_failure_not_an_exception() -> None:
    cam = scenes.make_camera(160, 120)
    obj = scenes.objects()[1]
    pose = scenes.look_at_pose(0.5, np.random.default_rng(1), (0.0, 0.0), cam)
    obs = scenes.render_observation([obj], pose.reshape(1), cam)
    away = Pose(pose.R, pose.t + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
    res = make_refiner("flow-pnp").refine(obs, [obj], away.reshape(1))
    assert res.info.failure[0] is not None
    assert torch.allclose(res.pose.t, away.reshape(1).t)
