"""The ``deeprm`` preset: the refiner's contract, its recurrent state per object, weights loading and (when shipped)
that the weights refine held-out generated objects better than the init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshpose.nets.checkpoint import package_weights_path
from meshpose.nets.deeprm import DeepRMNet, DeepRMOutput, RecurrentState, load_deeprm_model
from meshpose.refine.base import RefinerError
from meshpose.refine.deeprm import DeepRMConfig, DeepRMRefiner, NoWeightsError
from meshpose.refine.registry import available_methods, make_refiner
from meshpose.types import Observation, Pose
from support import scenes
from support.real_data import LMO
from test_nets_deeprm import TINY

#: Generated objects held out of training (training draws novel objects below 5000).
HELD_OUT = "novel:5000-5006"


def _cases(n: int, seed: int, rot_deg: float = 15.0, trans_frac: float = 0.1, objects: str = HELD_OUT) -> list[tuple]:
    return scenes.rendered_cases(objects, n, seed, rot_deg=rot_deg, trans_frac=trans_frac, with_depth=False)


class Recorder(torch.nn.Module):
    """Wraps a network and records the state each call got."""

    def __init__(self, net: DeepRMNet) -> None:
        super().__init__()
        self.net, self.config = net, net.config
        self.states: list[RecurrentState | None] = []

    def forward(self, x: torch.Tensor, state: RecurrentState | None = None, *, flow: bool = False) -> DeepRMOutput:
        self.states.append(state)
        return self.net(x, state, flow=flow)


def _untrained(**kw: object) -> DeepRMRefiner:
    torch.manual_seed(0)
    net = DeepRMNet(TINY).eval()
    with torch.no_grad():  # heads that react, so that poses move and the state matters
        net.trans_head.weight.normal_(0.0, 0.02)
        net.rot_head.weight.normal_(0.0, 0.02)
    return DeepRMRefiner(DeepRMConfig(**kw), model=net)  # type: ignore[arg-type]


def test_registered_and_clear_error_without_weights() -> None:
    assert "deeprm" in available_methods()
    with pytest.raises(NoWeightsError, match="meshpose train deeprm"):
        make_refiner("deeprm", weights="package:no_such_weights")
    with pytest.raises(FileNotFoundError, match="no such file"):
        DeepRMRefiner(DeepRMConfig(weights="/nonexistent/model.pt"))
    if not package_weights_path("deeprm").is_file():  # no default weights shipped: the default says so at once
        with pytest.raises(NoWeightsError, match="no shipped weights"):
            make_refiner("deeprm")
    with pytest.raises(ValueError):
        DeepRMConfig(padding=0.5)


def test_history_callback_state_carried_and_reset_per_call() -> None:
    obj, _gt, init, obs = _cases(1, seed=5)[0]
    ref = _untrained(iterations=3)
    rec = Recorder(ref.model)
    ref.model = rec  # type: ignore[assignment]
    seen: list[int] = []
    res = ref.refine(obs, [obj], init.reshape(1), callback=lambda it, p: seen.append(it))
    assert seen == [1, 2, 3] and len(res.history) == 4 and res.info.iterations == 3
    assert res.pose.batch_shape == (1,) and 0.0 <= res.score[0] <= 1.0
    assert {"crop", "render", "network", "total"} <= set(res.info.timings)
    # the first iteration starts from zeros, later ones get the previous iteration's state
    assert rec.states[0] is None and all(s is not None and len(s.c) == 3 for s in rec.states[1:3])
    # a second call starts afresh (nothing carries over between calls) and gives the same answer
    res2 = ref.refine(obs, [obj], init.reshape(1))
    assert rec.states[3] is None
    assert torch.allclose(res2.pose.t, res.pose.t) and torch.allclose(res2.pose.R, res.pose.R)
    assert not torch.allclose(res.pose.t, init.reshape(1).t)  # it did move


def test_each_object_has_its_own_state() -> None:
    """Two instances refined in one call get the same answers as each refined alone."""
    (o1, _g1, i1, obs1), (o2, _g2, i2, _obs2) = _cases(2, seed=7)
    ref = _untrained(iterations=3)
    both = ref.refine(obs1, [o1, o2], Pose.stack([i1, i2]))
    alone1 = ref.refine(obs1, [o1], i1.reshape(1))
    alone2 = ref.refine(obs1, [o2], i2.reshape(1))
    assert torch.allclose(both.pose.t[0], alone1.pose.t[0], atol=1e-6)
    assert torch.allclose(both.pose.t[1], alone2.pose.t[0], atol=1e-6)


def test_bad_inputs_are_refused_and_implausible_updates_stop_the_instance() -> None:
    obj, _gt, init, obs = _cases(1, seed=3)[0]
    ref = _untrained(iterations=2)
    with pytest.raises(RefinerError):
        ref.refine(obs, [obj, obj], init.reshape(1))
    strict = _untrained(iterations=2, max_step_frac=1e-9)
    res = strict.refine(obs, [obj], init.reshape(1))
    assert res.info.failure[0] is not None and res.info.failure[0].code.name == "IMPLAUSIBLE_UPDATE"
    assert torch.allclose(res.pose.t, init.reshape(1).t)
    assert isinstance(obs, Observation)


@pytest.mark.skipif(not package_weights_path("deeprm").is_file(), reason="no deeprm weights shipped")
def test_shipped_weights_load_and_refine_held_out_generated_objects() -> None:
    """From 15° / 10 % d (RGB), the shipped novel-object weights make the ADD(-S) error smaller on average."""
    assert package_weights_path("deeprm").stat().st_size < 50e6
    net = load_deeprm_model()
    assert isinstance(net, DeepRMNet) and not net.training
    ref = make_refiner("deeprm", threads=2)
    before, after = [], []
    for obj, gt, init, obs in _cases(8, seed=11):
        res = ref.refine(obs, [obj], init.reshape(1))
        before.append(scenes.add_error(obj, init, gt) / obj.diameter)
        after.append(scenes.add_error(obj, res.pose[0], gt) / obj.diameter)
    assert np.mean(after) < np.mean(before), (before, after)


@pytest.mark.skipif(
    not package_weights_path("deeprm", "lmo").is_file() or not (LMO / "models").is_dir(),
    reason="no deeprm package:lmo weights, or no LM-O meshes at MESHPOSE_LMO / ../shared/data/lmo",
)
def test_known_object_weights_refine_rendered_scenes_of_their_objects() -> None:
    """``package:lmo`` loads and, from 15° / 10 % d, makes the ADD(-S) error of rendered LM-O objects smaller."""
    assert package_weights_path("deeprm", "lmo").stat().st_size < 50e6
    ref = make_refiner("deeprm", weights="package:lmo", threads=2)
    before, after = [], []
    for obj, gt, init, obs in _cases(8, seed=12, objects=str(LMO)):
        res = ref.refine(obs, [obj], init.reshape(1))
        before.append(scenes.add_error(obj, init, gt) / obj.diameter)
        after.append(scenes.add_error(obj, res.pose[0], gt) / obj.diameter)
    assert np.mean(after) < np.mean(before), (before, after)
