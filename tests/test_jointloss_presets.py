"""The ``jointloss`` presets behind the seams: ``make_estimator("jointloss")`` and ``make_refiner("jointloss")``
(mechanics with a small untrained network; accuracy is the benchmark's and the trainer test's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.support.scenes import make_camera, objects, render_observation, single_object_cases

from meshpose.coarse import make_estimator
from meshpose.coarse.jointloss import JointLossEstimator, JointLossEstimatorConfig
from meshpose.geometry.crop import mask_bbox
from meshpose.nets.jointloss import JointLossNet, JointLossNetConfig
from meshpose.refine import make_refiner
from meshpose.refine.jointloss import JointLossRefiner
from meshpose.render.gl import get_default_renderer
from meshpose.types import Detection, FailureCode, Observation


@pytest.fixture(scope="module")
def net() -> JointLossNet:
    torch.manual_seed(0)
    cfg = JointLossNetConfig(
        num_objects=2, obj_ids=(1, 2), image_size=48, num_points=64, cnn_width=8, colour_dim=8,
        geo_dims=(16, 32), global_dims=(32, 64), head_dims=(32, 16), refiner_kind="regress", refiner_scale=1.0,
    )  # fmt: skip
    return JointLossNet(cfg).eval()


@pytest.fixture(scope="module")
def scene() -> tuple[Observation, Detection, object]:
    cam = make_camera(160, 120)
    obj, gt, _, seed = single_object_cases(1, seed=2, camera=cam)[0]
    obs = render_observation([obj], gt.reshape(1), cam, seed=seed, with_depth=True)
    mask = get_default_renderer().render([obj], gt.reshape(1), cam).mask[0]
    box = mask_bbox(mask)
    assert box is not None
    return obs, Detection(obj.obj_id, box, mask), gt


def test_the_presets_are_registered() -> None:
    with pytest.raises(FileNotFoundError):  # no weights of that name are shipped
        make_estimator("jointloss", weights="package:nothing")
    with pytest.raises(FileNotFoundError):
        make_refiner("jointloss", weights="package:nothing")


def test_estimator_gives_distinct_hypotheses_and_clear_failures(net: JointLossNet, scene: tuple) -> None:
    obs, det, _ = scene
    obj = objects()[0]
    est = JointLossEstimator(JointLossEstimatorConfig(refine_iterations=2), model=net)
    (res,) = est.estimate(obs, [obj], [det], hypotheses=3)
    assert res.failure is None and 1 <= len(res.hypotheses) <= 3
    scores = [h.score for h in res.hypotheses]
    assert scores == sorted(scores, reverse=True)
    for h in res.hypotheses:
        R, t = h.pose.numpy()
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-4) and t[2] > 0
    no_mask = Detection(det.obj_id, det.bbox, None)
    other = Detection(3, det.bbox, det.mask)
    r_mask, r_other = est.estimate(obs, [obj, objects()[2]], [no_mask, other])
    assert r_mask.failure is not None and r_mask.failure.code == FailureCode.BAD_DETECTION
    assert r_other.failure is not None and r_other.failure.code == FailureCode.UNKNOWN_OBJECT
    with pytest.raises(ValueError, match="depth"):
        est.estimate(Observation(obs.rgb, obs.camera), [obj], [det])


def test_refiner_refines_known_objects_and_keeps_unknown_ones(net: JointLossNet, scene: tuple) -> None:
    obs, _, gt = scene
    obj = objects()[0]
    ref = JointLossRefiner(model=net)
    res = ref.refine(obs, [obj], gt.reshape(1), iterations=2)
    assert len(res.history) == 3 and res.info.failure[0] is None
    assert torch.isfinite(res.pose.t).all()
    # an object the weights do not know keeps its pose, with the reason
    unknown = objects()[2]
    res2 = ref.refine(obs, [unknown], gt.reshape(1))
    assert res2.info.failure[0] is not None and res2.info.failure[0].code == FailureCode.UNKNOWN_OBJECT
    assert torch.allclose(res2.pose.t, gt.reshape(1).t)
    mask = ref.object_mask(obs, obj, gt)
    assert mask.sum() > 50


def test_the_shipped_lmo_weights_load_and_name_their_objects() -> None:
    from meshpose.nets.jointloss import load_jointloss_net

    net = load_jointloss_net("package:lmo")
    assert net.config.obj_ids == (1, 5, 6, 8, 9, 10, 11, 12)
    assert net.head_of(9) == 4 and net.head_of(2) is None
    est = make_estimator("jointloss")  # package:lmo is the default
    assert isinstance(est, JointLossEstimator) and est.model.config.obj_ids == net.config.obj_ids
