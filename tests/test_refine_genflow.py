"""The ``genflow`` preset: the shipped weights load and refine generated objects; the refiner's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshpose.nets.batch import load_genflow_model
from meshpose.nets.checkpoint import package_weights_path, resolve_weights
from meshpose.nets.genflow import GenFlowNet
from meshpose.refine.base import RefinerError
from meshpose.refine.genflow import GenFlowConfig, GenFlowRefiner, GenFlowStage
from meshpose.refine.registry import make_refiner
from meshpose.types import FailureCode, Pose
from support import scenes
from support.real_data import LMO
from test_nets_genflow import TINY

#: Generated objects held out of training (training draws novel objects below 5000).
HELD_OUT = "novel:5000-5006"


def _cases(n: int, seed: int, rot_deg: float = 15.0, trans_frac: float = 0.1, objects: str = HELD_OUT) -> list[tuple]:
    return scenes.rendered_cases(objects, n, seed, rot_deg=rot_deg, trans_frac=trans_frac, with_depth=True)


def test_shipped_weights_load() -> None:
    assert package_weights_path("genflow").is_file()
    net = load_genflow_model()
    assert isinstance(net, GenFlowNet) and not net.training
    n_bytes = package_weights_path("genflow").stat().st_size
    assert n_bytes < 50e6
    with pytest.raises(FileNotFoundError, match="train them"):
        load_genflow_model("/nonexistent/model.pt")


def _untrained() -> GenFlowRefiner:
    torch.manual_seed(0)
    cfg = GenFlowConfig(stages=(GenFlowStage(64, 1.5, 1, 2), GenFlowStage(64, 1.2, 1, 2)))
    return GenFlowRefiner(cfg, model=GenFlowNet(TINY).eval())


def test_history_callback_timings_and_schedule() -> None:
    obj, _gt, init, obs = _cases(1, seed=5)[0]
    ref = _untrained()
    seen: list[int] = []
    res = ref.refine(obs, [obj], init.reshape(1), callback=lambda it, p: seen.append(it))
    assert seen == [1, 2]
    assert res.pose.batch_shape == (1,) and res.score.shape == (1,)
    assert torch.equal(res.history[0].R, init.reshape(1).R)
    assert res.info.iterations == len(res.history) - 1 == 2
    assert {"crop", "render", "network", "total"} <= set(res.info.timings)
    # iterations=N keeps the last stage for the extra iterations; 1 runs only the fine stage
    assert [s.padding for s in ref._schedule(4)] == [1.5, 1.2, 1.2, 1.2]
    assert [s.padding for s in ref._schedule(1)] == [1.2]
    assert ref._schedule(0) == []


def test_several_objects_in_one_call() -> None:
    (far, near), gt, init, s = scenes.overlapping_pair_case(0, camera=scenes.make_camera(320, 240))
    obs = scenes.render_observation([far, near], gt, scenes.make_camera(320, 240), seed=s)
    res = _untrained().refine(obs, [far, near], init)
    assert res.pose.batch_shape == (2,)
    assert all(f is None or f.code is FailureCode.IMPLAUSIBLE_UPDATE for f in res.info.failure)


def test_bad_inputs_are_refused_and_bad_poses_are_failures() -> None:
    obj, _gt, init, obs = _cases(1, seed=7)[0]
    ref = _untrained()
    with pytest.raises(RefinerError, match="no objects"):
        ref.refine(obs, [], init.reshape(1))
    behind = Pose(init.R, torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64))
    with pytest.raises(RefinerError, match="behind the camera"):
        ref.refine(obs, [obj], behind.reshape(1))
    away = Pose(init.R, init.t + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64))
    res = ref.refine(obs, [obj], away.reshape(1))
    failure = res.info.failure[0]
    assert failure is not None and failure.code is FailureCode.OUTSIDE_IMAGE and "not in the image" in failure.message
    assert torch.allclose(res.pose.t, away.reshape(1).t)
    with pytest.raises(ValueError, match="stage"):
        GenFlowConfig(stages=(GenFlowStage(60, 1.5, 1, 2),))


def test_select_by_edges_returns_the_best_fitting_visited_pose() -> None:
    obj, gt, _, obs = _cases(1, seed=9)[0]
    torch.manual_seed(1)
    cfg = GenFlowConfig(stages=(GenFlowStage(64, 1.4, 3, 2),), select_by_edges=True, select_margin=0.0)
    ref = GenFlowRefiner(cfg, model=GenFlowNet(TINY).eval())
    start = gt.reshape(1)  # start at the truth: the best fit is known
    res = ref.refine(obs, [obj], start)
    visited = torch.stack([h.t[0] for h in res.history])
    assert bool(((visited - res.pose.t[0]).norm(dim=-1) < 1e-12).any())  # one of the visited poses
    edge = res.info.extra["edge_score"][0]
    assert 0.0 <= edge <= 1.0
    # the untrained network walks away from the truth; the truth fits the edges better and is returned
    assert scenes.add_error(obj, res.history[-1][0], gt) > 0.01 * obj.diameter
    assert scenes.add_error(obj, res.pose[0], gt) < 1e-6


@pytest.mark.parametrize("with_depth", [False, True])
def test_shipped_weights_refine_held_out_generated_objects(with_depth: bool) -> None:
    """From 15° / 10 % d, the refined ADD(-S) is smaller than the initial one on most held-out cases."""
    ref = make_refiner("genflow", threads=2)
    before, after = [], []
    for obj, gt, init, obs in _cases(6, seed=1 + int(with_depth)):
        if not with_depth:
            obs = type(obs)(rgb=obs.rgb, camera=obs.camera)
        res = ref.refine(obs, [obj], init.reshape(1))
        before.append(scenes.add_error(obj, init, gt) / obj.diameter)
        after.append(scenes.add_error(obj, res.pose[0], gt) / obj.diameter)
    before_a, after_a = np.array(before), np.array(after)
    assert np.mean(after_a < before_a) >= 5 / 6, (before, after)
    assert np.median(after_a) < 0.5 * np.median(before_a), (before, after)


def test_depth_prior_holds_the_depth_in_rgb_and_is_off_with_depth() -> None:
    """RGB: a very strong prior keeps the object's depth where the initial pose had it (the network still moves it
    sideways); RGB-D: the prior is not used at all."""
    net = load_genflow_model()
    (obj, _gt, init, obs), *_ = _cases(1, seed=5)
    rgb_only = type(obs)(rgb=obs.rgb, camera=obs.camera)
    runs = {}
    for lam in (0.0, 1e3):
        ref = GenFlowRefiner(GenFlowConfig(depth_prior_weight=lam), model=net)
        runs[lam] = (ref.refine(rgb_only, [obj], init.reshape(1)), ref.refine(obs, [obj], init.reshape(1)))
    z0 = float(init.t[2])
    held, free = runs[1e3][0].pose[0], runs[0.0][0].pose[0]
    assert abs(float(held.t[2]) - z0) < 1e-3 * z0
    assert abs(float(free.t[2]) - z0) > 5e-3 * z0  # without the prior the depth moves
    assert float((held.t[:2] / held.t[2] - init.t[:2] / init.t[2]).norm()) > 1e-3  # it still refines laterally
    with_depth = runs[1e3][1].pose, runs[0.0][1].pose
    assert torch.equal(with_depth[0].t, with_depth[1].t) and torch.equal(with_depth[0].R, with_depth[1].R)
    with pytest.raises(ValueError, match="depth_prior_weight"):
        GenFlowConfig(depth_prior_weight=-1.0)
    with pytest.raises(ValueError, match="depth_prior"):
        GenFlowConfig(stages=[[128, 1.6, 1, 4, -0.1]])


def test_a_stage_can_run_its_own_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    obj, _gt, init, obs = _cases(1, seed=8)[0]  # obs has depth: no RGB prior anchored at the call's start pose
    torch.manual_seed(1)
    net_a, net_b = GenFlowNet(TINY).eval(), GenFlowNet(TINY).eval()
    path = tmp_path / "fine.pt"
    torch.save({"net_config": TINY.to_dict(), "state_dict": net_b.state_dict()}, path)
    coarse, fine = GenFlowStage(64, 1.5, 1, 2), GenFlowStage(64, 1.2, 1, 2)
    cfg = GenFlowConfig(stages=(coarse, GenFlowStage(64, 1.2, 1, 2, weights=str(path))))
    both = GenFlowRefiner(cfg, model=net_a)
    assert set(both.stage_models) == {str(path)}
    res = both.refine(obs, [obj], init.reshape(1))
    # The same as the coarse stage with net_a, then the fine stage with net_b from where that ended …
    mid = GenFlowRefiner(GenFlowConfig(stages=(coarse,)), model=net_a).refine(obs, [obj], init.reshape(1)).pose
    end = GenFlowRefiner(GenFlowConfig(stages=(fine,)), model=net_b).refine(obs, [obj], mid).pose
    assert torch.allclose(res.history[1].t, mid.t)
    assert torch.allclose(res.pose.R, end.R, atol=1e-6) and torch.allclose(res.pose.t, end.t, atol=1e-7)
    # … and not what net_a would have done in the fine stage.
    same_net = GenFlowRefiner(GenFlowConfig(stages=(fine,)), model=net_a).refine(obs, [obj], mid).pose
    assert not torch.allclose(res.pose.t, same_net.t, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        GenFlowRefiner(GenFlowConfig(stages=(GenFlowStage(64, weights=str(tmp_path / "missing.pt")),)), model=net_a)
    assert package_weights_path("genflow", "model") == package_weights_path("genflow")
    assert (
        resolve_weights(None, "genflow")
        == resolve_weights("package", "genflow")
        == resolve_weights("package:model", "genflow")
        == package_weights_path("genflow")
    )
    assert resolve_weights("package:fine", "genflow") == package_weights_path("genflow", "fine")
    assert resolve_weights("a/b.pt", "genflow").name == "b.pt"


@pytest.mark.skipif(
    not package_weights_path("genflow", "lmo").is_file() or not (LMO / "models").is_dir(),
    reason="no genflow package:lmo weights, or no LM-O meshes at MESHPOSE_LMO / ../shared/data/lmo",
)
def test_known_object_weights_refine_rendered_scenes_of_their_objects() -> None:
    """``package:lmo`` loads and, from 15° / 10 % d (RGB), refines rendered LM-O objects: most end closer, the
    median error halves."""
    assert package_weights_path("genflow", "lmo").stat().st_size < 50e6
    ref = make_refiner("genflow", weights="package:lmo", threads=2)
    before, after = [], []
    for obj, gt, init, obs in _cases(6, seed=12, objects=str(LMO)):
        res = ref.refine(type(obs)(rgb=obs.rgb, camera=obs.camera), [obj], init.reshape(1))
        before.append(scenes.add_error(obj, init, gt) / obj.diameter)
        after.append(scenes.add_error(obj, res.pose[0], gt) / obj.diameter)
    before_a, after_a = np.array(before), np.array(after)
    assert np.mean(after_a < before_a) >= 5 / 6, (before, after)
    assert np.median(after_a) < 0.5 * np.median(before_a), (before, after)
