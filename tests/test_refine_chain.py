"""Refiner chains (``--method a+b``): built by name, run their members in order, and keep the seam's contract."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from meshpose.refine.base import Modality, RefinerError
from meshpose.refine.chain import ChainRefiner
from meshpose.refine.registry import make_refiner
from meshpose.types import Failure, FailureCode, ObjectModel, Observation, Pose, RefineInfo, RefineResult
from support import scenes


class _Nudge:
    """A fake refiner: each iteration moves every pose by ``step`` metres along x; returns its best = first pose
    when ``return_first`` (as a refiner that keeps the best visited pose may)."""

    def __init__(
        self,
        name: str,
        step: float,
        *,
        modality: Modality = "rgb",
        return_first: bool = False,
        fail: Failure | None = None,
    ) -> None:
        self.name, self.step, self.modality = name, step, modality
        self.return_first, self.fail = return_first, fail
        self.seen: list[Pose] = []

    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        self.seen.append(init)
        history = [init]
        for it in range(2 if iterations is None else iterations):
            p = history[-1]
            history.append(Pose(p.R, p.t + torch.tensor([self.step, 0.0, 0.0], dtype=p.t.dtype)))
            if callback is not None:
                callback(it + 1, history[-1])
        n = len(objects)
        return RefineResult(
            pose=history[1] if self.return_first and len(history) > 1 else history[-1],
            score=np.full(n, self.step),
            history=history,
            info=RefineInfo(
                timings={"total": 0.5},
                converged=np.ones(n, dtype=bool),
                failure=[self.fail] * n,
                iterations=len(history) - 1,
                extra={"tag": self.name},
            ),
        )


def _scene() -> tuple[Observation, ObjectModel, Pose]:
    cam = scenes.make_camera(160, 120)
    obj = scenes.objects()[0]
    gt = scenes.look_at_pose(0.5, np.random.default_rng(0), (0.0, 0.0), cam)
    return scenes.render_observation([obj], gt.reshape(1), cam, seed=0), obj, gt.reshape(1)


def test_members_run_in_order_from_the_previous_answer() -> None:
    obs, obj, init = _scene()
    a, b = _Nudge("a", 0.01, return_first=True), _Nudge("b", 0.001, fail=Failure(FailureCode.NUMERICAL, "diverged"))
    chain = ChainRefiner([a, b])
    calls: list[int] = []
    res = chain.refine(obs, [obj], init, callback=lambda i, p: calls.append(i))
    assert chain.name == "a+b" and chain.modality == "rgb"
    # b starts from a's answer (its first iterate), not from a's last iterate
    assert torch.allclose(b.seen[0].t, init.t + torch.tensor([0.01, 0, 0], dtype=torch.float64))
    assert torch.allclose(res.pose.t, init.t + torch.tensor([0.012, 0, 0], dtype=torch.float64))
    assert calls == [1, 2, 3, 4] and res.info.iterations == 4 and len(res.history) == 5
    assert res.score.tolist() == [0.001]
    assert res.info.failure == [Failure(FailureCode.NUMERICAL, "b: diverged")]
    assert res.info.timings["a.total"] == 0.5 and res.info.timings["b.total"] == 0.5 and "total" in res.info.timings
    assert res.info.extra["members"] == {"a": {"tag": "a"}, "b": {"tag": "b"}}
    # iterations is the first member's; the polisher keeps its own schedule
    res3 = chain.refine(obs, [obj], init, iterations=3)
    assert res3.info.iterations == 3 + 2
    assert torch.allclose(b.seen[-1].t, init.t + torch.tensor([0.01, 0, 0], dtype=torch.float64))
    res0 = chain.refine(obs, [obj], init, iterations=0)
    assert torch.allclose(res0.pose.t, init.t + torch.tensor([0.002, 0, 0], dtype=torch.float64))


def test_modality_is_rgbd_if_a_member_needs_depth() -> None:
    obs, obj, init = _scene()
    chain = ChainRefiner([_Nudge("a", 0.0), _Nudge("b", 0.0, modality="rgbd")])
    assert chain.modality == "rgbd"
    with pytest.raises(RefinerError, match="needs depth"):
        chain.refine(Observation(rgb=obs.rgb, camera=obs.camera), [obj], init)


def test_chains_are_built_by_name_with_options_per_member() -> None:
    chain = make_refiner("flow-pnp+contour", **{"flow-pnp": {"min_inliers": 9}})
    assert isinstance(chain, ChainRefiner) and chain.name == "flow-pnp+contour"
    assert [m.name for m in chain.members] == ["flow-pnp", "contour"]
    assert chain.members[0].config.min_inliers == 9  # type: ignore[attr-defined]
    assert make_refiner("contour+icp").modality == "rgbd"
    with pytest.raises(ValueError, match="no member"):
        make_refiner("flow-pnp+contour", min_inliers=9)
    with pytest.raises(ValueError, match="distinct preset names"):
        make_refiner("contour+contour")
    with pytest.raises(ValueError, match="unknown refiner"):
        make_refiner("contour+nope")
    with pytest.raises(ValueError, match="must be a dict"):
        make_refiner("flow-pnp+contour", contour=3)
    with pytest.raises(ValueError, match="needs at least two"):
        ChainRefiner([_Nudge("a", 0.0)])


def test_a_polished_chain_refines_a_rendered_scene() -> None:
    """flow-pnp then contour on a rendered scene: the chain ends closer to the truth than it started, and at
    least as close as its first member alone (contour polishes inside its basin)."""
    errs_init, errs_first, errs_chain = [], [], []
    first = make_refiner("flow-pnp")
    chain = make_refiner("flow-pnp+contour")
    cam = scenes.make_camera()
    for obj, gt, init, s in scenes.single_object_cases(3, seed=4, camera=cam):
        obs = scenes.render_observation([obj], gt.reshape(1), cam, seed=s)
        errs_init.append(scenes.add_error(obj, init, gt))
        errs_first.append(scenes.add_error(obj, first.refine(obs, [obj], init.reshape(1)).pose[0], gt))
        errs_chain.append(scenes.add_error(obj, chain.refine(obs, [obj], init.reshape(1)).pose[0], gt))
    assert np.median(errs_chain) < 0.3 * np.median(errs_init), (errs_init, errs_chain)
    assert np.median(errs_chain) <= np.median(errs_first) * 1.05, (errs_first, errs_chain)
