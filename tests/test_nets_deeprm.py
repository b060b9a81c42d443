"""The ``deeprm`` network and its losses: shapes, gradients, the recurrent state, φ scaling, the DPML loss."""

from __future__ import annotations

import math

import pytest
import roma
import torch

from meshpose.nets.deeprm import DeepRMNet, DeepRMNetConfig, apply_update, make_input, origin_uv
from meshpose.nets.efficientnet import EfficientNet, EfficientNetConfig
from meshpose.train.losses import disentangled_point_matching_loss, multiscale_epe
from meshpose.types import Pose

#: a small network for fast tests (same structure as φ = 0, thinner)
TINY = DeepRMNetConfig(
    base_width=0.25,
    base_depth=0.34,
    base_resolution=64,
    head_channels=32,
    hidden=32,
    pool=2,
    feature_dim=16,
    encoder_dims=(8, 12, 16),
    front_width=64,
)
#: the same with DeepRM's early fusion (six channels into the backbone)
TINY_EARLY = DeepRMNetConfig(**{**TINY.to_dict(), "fusion": "early"})


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("cell", ["lstm", "gru", "fc"])
def test_shapes_and_gradients(cell: str) -> None:
    """Early fusion: four flow scales (strides 32 … 4); gradients everywhere."""
    torch.manual_seed(0)
    cfg = DeepRMNetConfig(**{**TINY_EARLY.to_dict(), "cell": cell})
    net = DeepRMNet(cfg)
    s = cfg.resolution
    x = torch.randn(3, 6, s, s, requires_grad=True)
    out = net(x, flow=True)
    assert out.quat.shape == (3, 4) and out.trans.shape == (3, 3)
    assert torch.allclose(out.quat.norm(dim=-1), torch.ones(3), atol=1e-6)
    n_state = {"lstm": (3, 3), "gru": (3, 0), "fc": (0, 0)}[cell]
    assert (len(out.state.h), len(out.state.c)) == n_state
    # flows coarse (stride 32) to fine (stride 4)
    assert [tuple(f.shape) for f in out.flows] == [(3, 2, s // d, s // d) for d in (32, 16, 8, 4)]
    loss = out.quat[:, :3].sum() + out.trans.sum() + sum(f.sum() for f in out.flows)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_correlation_front_shapes_gradients_and_genflow_encoder_layout() -> None:
    """Behind the correlation front: three flow scales (strides 32, 16, 8), gradients reach both crops through the
    encoder, and the encoder takes ``genflow``'s matching encoder weights as they are."""
    from meshpose.nets.genflow import GenFlowNet, GenFlowNetConfig

    torch.manual_seed(0)
    cfg = TINY
    net = DeepRMNet(cfg)
    assert net.encoder is not None and net.flow_scales == 3
    s = cfg.resolution
    x = torch.randn(2, 6, s, s, requires_grad=True)
    out = net(x, flow=True)
    assert out.quat.shape == (2, 4) and out.trans.shape == (2, 3)
    assert [tuple(f.shape) for f in out.flows] == [(2, 2, s // d, s // d) for d in (32, 16, 8)]
    (out.trans.sum() + out.quat[:, :3].sum() + sum(f.sum() for f in out.flows)).backward()
    assert x.grad is not None and x.grad[:, :3].abs().sum() > 0 and x.grad[:, 3:].abs().sum() > 0
    gf = GenFlowNet(GenFlowNetConfig(feature_dim=16, encoder_dims=(8, 12, 16)))
    net.encoder.load_state_dict(gf.fnet.state_dict())  # strict: the same layout
    with pytest.raises(ValueError, match="fusion"):
        DeepRMNetConfig(fusion="late")  # type: ignore[arg-type]
    # a crop that is not a multiple of the front's stride is refused by name
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.randn(1, 6, s + 4, s + 4))


def test_backbone_from_a_later_stage() -> None:
    """``start_stage`` builds the rest of B0 from a strided feature map (1×1 stem, the scales it reaches)."""
    full = EfficientNet(EfficientNetConfig())
    tail = EfficientNet(EfficientNetConfig(in_channels=40, start_stage=3, stem_base=64))
    feats = tail(torch.zeros(1, 40, 12, 12))
    assert [tuple(f.shape[-2:]) for f in feats] == [(6, 6), (3, 3)]
    assert tail.feature_channels == full.feature_channels[-2:]
    with pytest.raises(ValueError, match="start_stage"):
        EfficientNetConfig(start_stage=7)


def test_identity_biased_init_and_no_flow_at_inference() -> None:
    net = DeepRMNet(TINY).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 6, 64, 64))
    assert out.flows == []
    # an untrained network barely moves the pose: quaternion ≈ (0, 0, 0, 1), translation update ≈ 0
    assert torch.allclose(out.quat, torch.tensor([[0.0, 0, 0, 1]]).expand(2, 4), atol=0.05)
    assert out.trans.abs().max() < 0.05


def test_recurrent_state_is_carried_across_iterations() -> None:
    torch.manual_seed(1)
    net = DeepRMNet(DeepRMNetConfig(**{**TINY.to_dict(), "flow_head": False})).eval()
    with torch.no_grad():  # make the heads react (they start near zero)
        for head in (net.rot_head, net.trans_head):
            head.weight.normal_(0.0, 0.5)
    x1, x2 = torch.randn(2, 6, 64, 64), torch.randn(2, 6, 64, 64)
    first = net(x1)
    carried = net(x2, first.state)
    fresh = net(x2)  # None: a new object's zero state
    assert not torch.allclose(carried.trans, fresh.trans, atol=1e-6)
    # iteration 2's output depends on iteration 1's input through the state (gradient through time)
    x1g = x1.clone().requires_grad_(True)
    out2 = net(x2, net(x1g).state)
    out2.trans.sum().backward()
    assert x1g.grad is not None and x1g.grad.abs().sum() > 0
    # the zero state is the reset: a fresh call equals a call with explicit zeros
    zero = net.initial_state(2)
    assert torch.allclose(net(x2, zero).trans, fresh.trans)
    # a plain FC network has no state: iteration 2 ignores iteration 1
    fc = DeepRMNet(DeepRMNetConfig(**{**TINY.to_dict(), "cell": "fc", "flow_head": False})).eval()
    assert torch.allclose(fc(x2, fc(x1).state).trans, fc(x2).trans)
    # selecting instances keeps their rows
    sel = first.state.select(torch.tensor([1]))
    assert torch.equal(sel.h[0], first.state.h[0][1:]) and torch.equal(sel.c[2], first.state.c[2][1:])


def test_phi_scales_the_whole_network() -> None:
    small, large = DeepRMNetConfig(phi=0), DeepRMNetConfig(phi=1)
    assert large.resolution > small.resolution and large.hidden_size > small.hidden_size
    b0, b1 = EfficientNetConfig(phi=0), EfficientNetConfig(phi=1)
    assert sum(r for _, _, r, _, _ in b1.stages()) > sum(r for _, _, r, _, _ in b0.stages())
    assert all(c1 >= c0 for (_, c0, *_), (_, c1, *_) in zip(b0.stages(), b1.stages(), strict=True))
    assert _params(DeepRMNet(large)) > _params(DeepRMNet(small))
    assert _params(EfficientNet(b1)) > _params(EfficientNet(b0))


def test_apply_update_is_deepim_parameterisation() -> None:
    K = torch.tensor([[[120.0, 0, 40], [0, 118.0, 41], [0, 0, 1]]], dtype=torch.float64)
    R0 = roma.rotvec_to_rotmat(torch.tensor([[0.2, -0.4, 0.1]], dtype=torch.float64))
    pose = Pose(R0, torch.tensor([[0.03, -0.02, 0.6]], dtype=torch.float64))
    ident = torch.tensor([[0.0, 0, 0, 1]], dtype=torch.float64)
    same = apply_update(pose, ident, torch.zeros(1, 3, dtype=torch.float64), K, 80)
    assert torch.allclose(same.R, pose.R) and torch.allclose(same.t, pose.t)
    q = roma.rotvec_to_unitquat(torch.tensor([[0.0, 0.0, 0.3]], dtype=torch.float64))
    moved = apply_update(pose, q, torch.tensor([[0.05, -0.1, math.log(0.6 / 0.5)]], dtype=torch.float64), K, 80)
    assert torch.allclose(moved.t[:, 2], torch.tensor([0.5], dtype=torch.float64))
    shift = origin_uv(moved.t, K) - origin_uv(pose.t, K)
    assert torch.allclose(shift, torch.tensor([[4.0, -8.0]], dtype=torch.float64))
    assert torch.allclose(moved.R, roma.unitquat_to_rotmat(q) @ R0)
    assert make_input(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)).shape == (1, 6, 8, 8)


def _loss_case() -> tuple[Pose, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[[150.0, 0, 48], [0, 150.0, 48], [0, 0, 1]]], dtype=torch.float64)
    R = roma.rotvec_to_rotmat(torch.tensor([[0.3, 0.5, -0.2]], dtype=torch.float64))
    gt = Pose(R, torch.tensor([[0.02, 0.01, 0.7]], dtype=torch.float64))
    pts = (torch.rand(1, 200, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([0.1, 0.1, 0.04])
    return gt, K, pts, torch.tensor([0.12], dtype=torch.float64)


def test_dpml_is_zero_at_the_true_pose_and_positive_elsewhere() -> None:
    gt, K, pts, d = _loss_case()
    eye = torch.eye(4, dtype=torch.float64)[None, None]
    uv = origin_uv(gt.t, K)
    z = gt.t[:, 2]
    assert float(disentangled_point_matching_loss(gt.R, uv, z, gt, K, pts, eye, d)) == pytest.approx(0.0, abs=1e-12)
    R_off = roma.rotvec_to_rotmat(torch.tensor([[0.0, 0.1, 0.0]], dtype=torch.float64)) @ gt.R
    for R_, uv_, z_ in ((R_off, uv, z), (gt.R, uv + 2.0, z), (gt.R, uv, z * 1.05)):
        assert float(disentangled_point_matching_loss(R_, uv_, z_, gt, K, pts, eye, d)) > 1e-3
    # each part is judged alone: a depth error costs the same with or without an image-plane error elsewhere
    only_z = disentangled_point_matching_loss(gt.R, uv, z * 1.05, gt, K, pts, eye, d)
    ray = torch.linalg.solve(K[0], torch.cat([uv[0], torch.ones(1, dtype=torch.float64)]))
    expect = 0.05 * z * ray.abs().sum() / d  # |Δt|₁ of the depth error alone, in diameters
    assert torch.allclose(only_z, expect)
    # gradients reach every predicted part
    Rg, uvg, zg = R_off.clone().requires_grad_(True), (uv + 1.0).requires_grad_(True), (z * 1.1).requires_grad_(True)
    disentangled_point_matching_loss(Rg, uvg, zg, gt, K, pts, eye, d).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (Rg, uvg, zg))


def test_dpml_is_symmetry_aware() -> None:
    gt, K, pts, d = _loss_case()
    uv, z = origin_uv(gt.t, K), gt.t[:, 2]
    flip = torch.eye(4, dtype=torch.float64)
    flip[:3, :3] = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))  # 180° about the object z
    sym_pts = torch.cat([pts, pts @ flip[:3, :3].T], 1)  # a point set with that symmetry
    syms = torch.stack([torch.eye(4, dtype=torch.float64), flip])[None]
    R_sym = gt.R @ flip[:3, :3]  # the pose differs by the symmetry
    loss = disentangled_point_matching_loss(R_sym, uv, z, gt, K, sym_pts, syms, d)
    assert float(loss) == pytest.approx(0.0, abs=1e-12)
    no_sym = disentangled_point_matching_loss(R_sym, uv, z, gt, K, sym_pts, syms[:, :1], d)
    assert float(no_sym) > 0.05
    # a continuous symmetry (a disc about z): any rotation about z is ~free with the nearest-point form
    ang = torch.linspace(0, 2 * math.pi, 401, dtype=torch.float64)[:-1]
    disc = torch.stack([0.05 * torch.cos(ang), 0.05 * torch.sin(ang), torch.zeros_like(ang)], -1)[None]
    R_rot = gt.R @ roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, 0.7], dtype=torch.float64))[None]
    eye = torch.eye(4, dtype=torch.float64)[None, None]
    near = disentangled_point_matching_loss(R_rot, uv, z, gt, K, disc, eye, d, nearest=torch.tensor([True]))
    plain = disentangled_point_matching_loss(R_rot, uv, z, gt, K, disc, eye, d)
    assert float(near) < 0.01 and float(plain) > 0.2


def test_multiscale_epe() -> None:
    target = torch.zeros(2, 2, 16, 16)
    target[:, 0] = 0.1
    valid = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    preds = [torch.zeros(2, 2, s, s) for s in (2, 4, 8)]
    for p in preds:
        p[:, 0] = 0.1
    assert float(multiscale_epe(preds, target, valid)) == pytest.approx(0.0, abs=1e-7)
    off = [p + torch.tensor([0.0, 0.05])[None, :, None, None] for p in preds]
    assert float(multiscale_epe(off, target, valid, [1.0, 0.0, 0.0])) == pytest.approx(0.05, rel=1e-5)
    # invalid pixels do not count, even with a wild target there
    wild = target.clone()
    wild[:, :, :8] = 100.0
    half = valid.clone()
    half[:, :, :8] = False
    fine = [torch.zeros(2, 2, 16, 16)]
    fine[0][:, 0] = 0.1
    assert float(multiscale_epe(fine, wild, half)) == pytest.approx(0.0, abs=1e-6)
