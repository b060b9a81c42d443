"""The genflow network's modules: shapes, gradients, the correlation lookup, the shape constraint, and overfitting."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from meshpose.geometry.lie import rotation_angle
from meshpose.nets.corr import CorrPyramid, coords_grid
from meshpose.nets.encoder import FeatureEncoder
from meshpose.nets.genflow import GenFlowNet, GenFlowNetConfig, make_input, project_points
from meshpose.nets.update import UpdateBlock
from meshpose.synth import SceneConfig, SceneSampler, resolve_objects
from meshpose.train.genflow import (
    GenFlowTrainConfig,
    PerturbRegime,
    appearance_gap,
    collate_items,
    genflow_losses,
    make_items,
)
from meshpose.train.losses import point_matching_loss
from meshpose.types import Pose

TINY = GenFlowNetConfig(
    feature_dim=32,
    context_dim=16,
    hidden_dim=32,
    motion_dim=32,
    encoder_dims=(16, 24, 32),
    corr_levels=2,
    corr_radius=2,
)


def _grads_everywhere(module: torch.nn.Module) -> list[str]:
    """Names of parameters that received no (or an all-zero) gradient."""
    return [n for n, p in module.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]


def test_encoder_shape_and_gradients() -> None:
    enc = FeatureEncoder(5, 24, (8, 12, 16), norm="group")
    x = torch.randn(2, 5, 64, 48, requires_grad=True)
    y = enc(x)
    assert y.shape == (2, 24, 8, 6)
    y.square().mean().backward()
    assert not _grads_everywhere(enc)
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="3 widths"):
        FeatureEncoder(5, 24, (8, 16))


def test_correlation_lookup_matches_direct_dot_products() -> None:
    torch.manual_seed(0)
    f1, f2 = torch.randn(1, 8, 6, 7, dtype=torch.float64), torch.randn(1, 8, 6, 7, dtype=torch.float64)
    corr = CorrPyramid(f1, f2, levels=2, radius=1)
    assert corr.channels == 2 * 9
    # Looking up every cell at its own position: the window centre of level 0 is <f1[i], f2[i]> / sqrt(D).
    out = corr.lookup(coords_grid(1, 6, 7, dtype=torch.float64))
    assert out.shape == (1, 18, 6, 7)
    direct = (f1 * f2).sum(1) / math.sqrt(8)
    assert torch.allclose(out[:, 4], direct, atol=1e-12)
    # The window entry (dx, dy) = (+1, 0) of source cell (i, j) is <f1[i, j], f2[i, j+1]>.
    right = (f1[..., :, :-1] * f2[..., :, 1:]).sum(1) / math.sqrt(8)
    assert torch.allclose(out[:, 5, :, :-1], right, atol=1e-12)
    # Outside the grid the lookup is zero.
    far = corr.lookup(coords_grid(1, 6, 7, dtype=torch.float64) + 100.0)
    assert bool((far == 0).all())
    # A fractional position interpolates bilinearly between neighbours.
    half = corr.lookup(coords_grid(1, 6, 7, dtype=torch.float64) + torch.tensor([0.5, 0.0]).view(1, 2, 1, 1))
    assert torch.allclose(half[:, 4, :, :-1], 0.5 * (direct[..., :-1] + right), atol=1e-12)
    with pytest.raises(ValueError, match="equal"):
        CorrPyramid(f1, f2[..., :5])


def test_correlation_gradients_reach_both_feature_maps() -> None:
    f1 = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    coords = coords_grid(1, 4, 4, dtype=torch.float64) + 0.3

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return CorrPyramid(a, b, levels=2, radius=1).lookup(coords)

    assert torch.autograd.gradcheck(f, (f1, f2))


def test_update_block_shapes_range_and_gradients() -> None:
    blk = UpdateBlock(corr_channels=50, context_dim=16, hidden_dim=24, motion_dim=32)
    h = torch.zeros(2, 24, 5, 6)
    h2, dflow, conf = blk(h, torch.randn(2, 16, 5, 6), torch.randn(2, 50, 5, 6), torch.randn(2, 2, 5, 6))
    assert h2.shape == h.shape and dflow.shape == (2, 2, 5, 6) and conf.shape == (2, 1, 5, 6)
    assert bool(((conf > 0) & (conf < 1)).all())
    (h2.square().mean() + dflow.square().mean() + conf.mean()).backward()
    assert not _grads_everywhere(blk)


def _rendered_pair(
    B: int = 2, S: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Pose, torch.Tensor, torch.Tensor]:
    """A synthetic crop: a plane of object points in front of the camera, its xyz map, mask and intrinsics."""
    K = torch.tensor([[90.0, 0, S / 2 - 0.5], [0, 90, S / 2 - 0.5], [0, 0, 1]]).expand(B, 3, 3)
    pose = Pose(torch.eye(3).expand(B, 3, 3), torch.tensor([0.0, 0.0, 0.6]).expand(B, 3))
    v, u = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    x = (u - K[0, 0, 2]) / 90.0 * 0.6
    y = (v - K[0, 1, 2]) / 90.0 * 0.6
    xyz = torch.stack([x, y, 0.02 * torch.sin(8 * x)], 0).expand(B, 3, S, S).contiguous()
    mask = ((x.abs() < 0.12) & (y.abs() < 0.12))[None, None].expand(B, 1, S, S)
    xyz = xyz * mask
    rgb = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(0))
    depth = (0.6 + xyz[:, 2:]) * mask
    return rgb, depth, xyz, pose, K, mask


def test_make_input_channels() -> None:
    rgb, depth, _, pose, _, mask = _rendered_pair()
    x = make_input(rgb, depth, mask, pose.t[:, 2], torch.full((2,), 0.2))
    assert x.shape == (2, 5, 64, 64)
    assert torch.equal(x[:, 4:] > 0, mask & (depth > 0))
    assert bool((x[:, 3].abs() <= 1.5).all())
    assert bool((make_input(rgb, None, None, pose.t[:, 2], torch.full((2,), 0.2))[:, 3:] == 0).all())


def test_network_steps_follow_the_shape_constraint() -> None:
    """Each step's induced flow is exactly the flow of its PnP pose; gradients reach every parameter."""
    torch.manual_seed(0)
    rgb, depth, xyz, pose, K, mask = _rendered_pair()
    net = GenFlowNet(TINY)
    diam = torch.full((2,), 0.3)
    rendered = make_input(rgb, depth, mask, pose.t[:, 2], diam)
    observed = make_input(rgb.roll(2, -1), depth.roll(2, -1), None, pose.t[:, 2], diam)
    out = net(rendered, observed, xyz, mask, K, pose, iterations=3, observed_depth=depth.roll(2, -1))
    assert len(out.steps) == 3 and out.grid == (8, 8)
    assert out.source.shape == (2, 64, 2) and out.points.shape == (2, 64, 3) and out.valid.shape == (2, 64)
    for step in out.steps:
        assert step.flow.shape == (2, 2, 8, 8) and step.weights.shape == (2, 1, 8, 8)
        uv = project_points(step.pose, out.points.double(), K.double())
        induced = (uv - out.source.double()).transpose(1, 2).reshape(2, 2, 8, 8)
        assert torch.allclose(step.induced.double(), induced, atol=1e-4)
        assert bool((step.weights.flatten(1)[~out.valid] == 0).all())  # no weight off the rendered object
    loss = sum(s.flow.abs().mean() + s.pose.t.square().sum() + s.pose.R.sum() for s in out.steps)
    loss.backward()  # type: ignore[union-attr]
    assert not _grads_everywhere(net)
    with pytest.raises(ValueError, match="multiple of 8"):
        net(rendered[..., :60, :60], observed[..., :60, :60], xyz[..., :60, :60], mask[..., :60, :60], K, pose)


@pytest.mark.parametrize("pose_grad", ["confidence", "all"])
def test_where_the_pose_gradient_goes(pose_grad: str) -> None:
    """A loss on the PnP poses trains only the confidence head by default; end to end, it reaches the encoders."""
    torch.manual_seed(0)
    rgb, depth, xyz, pose, K, mask = _rendered_pair()
    net = GenFlowNet(dataclasses.replace(TINY, pose_grad=pose_grad))
    diam = torch.full((2,), 0.3)
    rendered = make_input(rgb, depth, mask, pose.t[:, 2], diam)
    observed = make_input(rgb.roll(2, -1), None, None, pose.t[:, 2], diam)
    out = net(rendered, observed, xyz, mask, K, pose, iterations=2)
    sum(s.pose.t.square().sum() + s.pose.R[:, 0].sum() for s in out.steps).backward()  # type: ignore[union-attr]
    reached = {
        n.split(".")[0] + "." + n.split(".")[1]
        for n, p in net.named_parameters()
        if p.grad is not None and bool(p.grad.abs().sum() > 0)
    }
    if pose_grad == "confidence":
        assert reached == {"update.conf_head"}
    else:
        assert {"fnet.layers", "cnet.layers", "update.flow_head", "update.conf_head", "update.gru"} <= reached
    with pytest.raises(ValueError, match="pose_grad"):
        GenFlowNet(dataclasses.replace(TINY, pose_grad="flow"))


def test_point_matching_loss_is_symmetry_aware() -> None:
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(1, 100, 3, dtype=torch.float64, generator=g) * 0.05
    gt = Pose.exp(torch.tensor([[0.0, 0.0, 0.5, 0.2, 0.1, 0.3]], dtype=torch.float64))
    flip = torch.eye(4, dtype=torch.float64)
    flip[0, 0] = flip[1, 1] = -1.0  # a half-turn about z
    syms = torch.stack([torch.eye(4, dtype=torch.float64), flip])[None]
    turned = Pose(gt.R @ flip[:3, :3], gt.t)
    diam = torch.tensor([0.2], dtype=torch.float64)
    assert float(point_matching_loss(turned, gt, pts, syms, diam)[0]) < 1e-12
    assert float(point_matching_loss(turned, gt, pts, syms[:, :1], diam)[0]) > 0.05
    off = Pose(gt.R, gt.t + torch.tensor([[0.02, 0.0, 0.0]], dtype=torch.float64))
    assert float(point_matching_loss(off, gt, pts, syms, diam)[0]) == pytest.approx(0.1, rel=1e-9)


@pytest.fixture(scope="module")
def tiny_batch() -> tuple[GenFlowTrainConfig, dict]:
    cfg = GenFlowTrainConfig(
        data="novel:3",
        crop_size=64,
        iterations=3,
        net=TINY,
        regimes=(PerturbRegime(1.0, (5.0, 10.0), (0.02, 0.05), (1.3, 1.4)),),
        depth_probability=0.5,
    )
    sampler = SceneSampler(list(resolve_objects("novel:3", 0)), SceneConfig(width=320, height=240))
    rng = np.random.default_rng(0)
    items: list[dict] = []
    while len(items) < 4:
        items += make_items(sampler.sample(rng), rng, cfg)
    return cfg, collate_items(items[:4])


def test_training_items_are_consistent(tiny_batch: tuple[GenFlowTrainConfig, dict]) -> None:
    """The perturbation is within the regime; the rendered xyz reprojects onto the rendered mask."""
    _cfg, data = tiny_batch
    batch, gt = data["batch"], data["gt"]
    assert batch.obs_rgb.shape == (4, 3, 64, 64) and batch.ren_xyz.shape == (4, 3, 64, 64)
    deg = torch.rad2deg(rotation_angle(batch.pose.R, gt.R.double()))
    assert bool(((deg > 4.99) & (deg < 10.01)).all())
    # pixels on the rendered mask: their xyz, posed at the rendered pose, projects back onto the pixel
    K = batch.K.double()
    for b in range(4):
        m = batch.ren_mask[b, 0]
        vv, uu = torch.nonzero(m, as_tuple=True)
        X = batch.ren_xyz[b].permute(1, 2, 0)[m].double()
        uv = project_points(batch.pose[b : b + 1], X[None], K[b : b + 1])[0]
        assert float((uv - torch.stack([uu, vv], -1).double()).norm(dim=-1).median()) < 0.5


def test_render_gap_changes_only_the_rendered_foreground() -> None:
    """The appearance change keeps the range and the background, changes the object's colours, and is off at 0."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - 32) ** 2 + (xx - 30) ** 2 < 20**2
    rgb = np.zeros((64, 64, 3), np.float32)
    rgb[mask] = rng.uniform(0.1, 0.9, (int(mask.sum()), 3))
    rgb[~mask] = 0.3
    changed = [appearance_gap(rgb, mask, np.random.default_rng(s)) for s in range(8)]
    for out in changed:
        assert out.shape == rgb.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out[~mask], rgb[~mask])
    diffs = [float(np.abs(out[mask] - rgb[mask]).mean()) for out in changed]
    assert min(diffs) > 0.01 and max(diffs) < 0.4, diffs
    # items of a config with render_gap=1 differ from those without it only in the rendered colours
    sampler = SceneSampler(list(resolve_objects("novel:3", 0)), SceneConfig(width=320, height=240))
    sample = sampler.sample(np.random.default_rng(1))
    base = GenFlowTrainConfig(data="novel:3", crop_size=64, net=TINY)
    plain = make_items(sample, np.random.default_rng(2), base)
    gapped = make_items(sample, np.random.default_rng(2), dataclasses.replace(base, render_gap=1.0))
    assert plain and len(plain) == len(gapped)
    for a, b in zip(plain, gapped, strict=True):
        np.testing.assert_array_equal(a["obs_rgb"], b["obs_rgb"])
        np.testing.assert_array_equal(a["ren_xyz"], b["ren_xyz"])
        assert float(np.abs(a["ren_rgb"] - b["ren_rgb"]).max()) > 0.01
    with pytest.raises(ValueError, match="render_gap"):
        GenFlowTrainConfig(render_gap=1.5)


def test_tiny_model_overfits_a_handful_of_samples(tiny_batch: tuple[GenFlowTrainConfig, dict]) -> None:
    """The whole training path (network, differentiable PnP, losses) can fit 4 samples: loss falls ≥ 10×."""
    cfg, data = tiny_batch
    torch.manual_seed(0)
    net = GenFlowNet(cfg.net)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss, stats = genflow_losses(net, data, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert min(losses[-10:]) < 0.1 * losses[0], (losses[0], losses[-10:])
    # the refined pose is much better than the initial one on these samples
    assert stats["pm_last"] < 0.5 * stats["pm_init"]
