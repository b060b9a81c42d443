"""``picopose``'s stage-1 feature extractors: the trained network's shapes, the factory, the LINE-2D-like descriptor,
and the estimator with ``features="classical"``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from meshpose.coarse.picopose import PicoPoseConfig, PicoPoseEstimator
from meshpose.coarse.picopose.classical import GradientOrientationFeatures
from meshpose.coarse.picopose.features import TrainedFeatures, XFeatFeatures, make_features
from meshpose.geometry.crop import mask_bbox
from meshpose.nets.checkpoint import Checkpoint, Provenance, save_checkpoint
from meshpose.nets.patchfeat import METHOD, PatchFeatConfig, PatchFeatNet, load_patchfeat
from meshpose.render.gl import get_default_renderer
from meshpose.synth.novel import novel_object
from meshpose.types import Detection
from support.scenes import look_at_pose, make_camera, render_observation


def _unit(x: torch.Tensor) -> bool:
    return bool(torch.allclose(x.norm(dim=1), torch.ones_like(x[:, 0]), atol=1e-5))


def test_network_shapes_unit_norm_and_size() -> None:
    net = PatchFeatNet().eval()
    assert sum(p.numel() for p in net.parameters()) < 1_000_000
    with torch.no_grad():
        out = net(torch.rand(3, 3, 128, 96))
    assert out.shape == (3, 64, 16, 12) and _unit(out)
    tiny = PatchFeatNet(PatchFeatConfig(widths=(8, 8, 16, 16), dim=16))
    assert tiny(torch.rand(1, 3, 64, 64)).shape == (1, 16, 8, 8)
    assert PatchFeatConfig.from_dict(tiny.config.to_dict()) == tiny.config


def test_factory_and_weights_round_trip(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    for name, cls, dim in [("xfeat", XFeatFeatures, 64), ("classical", GradientOrientationFeatures, 33)]:
        f = make_features(name)
        assert isinstance(f, cls) and f.stride == 8
        out = f(images)
        assert out.shape == (2, dim, 8, 8) and _unit(out)
    with pytest.raises(ValueError, match="unknown picopose features"):
        make_features("dinov2")
    net = PatchFeatNet(PatchFeatConfig(widths=(8, 8, 16, 16), dim=16))
    path = save_checkpoint(
        tmp_path / "model.pt", Checkpoint(net.state_dict(), net.config.to_dict(), Provenance(METHOD))
    )
    assert load_patchfeat(path).config == net.config
    f = make_features("trained", str(path))
    assert isinstance(f, TrainedFeatures)
    out = f(images)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(out, ref, atol=1e-5)


def test_classical_descriptor_follows_edges() -> None:
    """A flat image has only the ``flat`` bin; a vertical edge's patches are vertical-orientation histograms, and
    the same edge turned by 90° gives the horizontal bin instead."""
    f = GradientOrientationFeatures()
    flat = f(np.full((1, 32, 32, 3), 90, np.uint8))
    assert bool((flat[0, -1] > 0.999).all())
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[:, :, 16:] = 200
    ori = f.orientations(img)[0]  # (8, S, S)
    assert int(ori[0, 16, 15:17].sum()) >= 1 and float(ori[4].sum()) == 0.0  # gradient along x: bin 0 (0°)
    turned = f.orientations(np.ascontiguousarray(np.rot90(img, axes=(1, 2))))[0]
    assert float(turned[4].sum()) > 0 and float(turned[0].sum()) == 0.0  # along y: bin 4 (90°)


def test_estimator_runs_with_classical_features(tmp_path: Path) -> None:
    obj, _ = novel_object(7003, obj_id=1)
    cam = make_camera(320, 240)
    rng = np.random.default_rng(4)
    gt = look_at_pose(4.0 * obj.diameter, rng, (5.0, -5.0), cam)
    obs = render_observation([obj], gt.reshape(1), cam, seed=4)
    sil = get_default_renderer().render([obj], gt.reshape(1, 1), cam).mask[0]
    box = mask_bbox(sil)
    assert box is not None
    est = PicoPoseEstimator(PicoPoseConfig(features="classical", templates=42, cache_dir=str(tmp_path)))
    assert isinstance(est.features, GradientOrientationFeatures)
    (res,) = est.estimate(obs, [obj], [Detection(1, box, sil)], hypotheses=2)
    assert res.ok, res.failure
    assert 1 <= len(res.hypotheses) <= 2
    t = res.hypotheses[0].pose.numpy()[1]
    assert np.linalg.norm(t - gt.numpy()[1]) < 0.5 * obj.diameter


def test_joined_features_are_unit_and_average_the_similarities() -> None:
    from meshpose.coarse.picopose.features import ConcatFeatures

    imgs = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    a, b = make_features("xfeat"), make_features("classical")
    joined = make_features("xfeat+classical")
    assert isinstance(joined, ConcatFeatures) and joined.stride == 8
    fa, fb, fj = a(imgs), b(imgs), joined(imgs)
    assert fj.shape == (2, fa.shape[1] + fb.shape[1], 8, 8)
    assert torch.allclose(fj.norm(dim=1), torch.ones(2, 8, 8), atol=1e-4)
    cos = lambda f: (f[0, :, 2, 3] * f[1, :, 5, 1]).sum()  # noqa: E731
    assert torch.isclose(cos(fj), 0.5 * (cos(fa) + cos(fb)), atol=1e-5)
    with pytest.raises(ValueError, match="two extractors"):
        ConcatFeatures([a])
