"""The ``jointloss`` estimator and refiner and their (weak-)supervised losses: shapes, gradients, votes, the
symmetry-aware loss, overfitting a few synthetic RGB-D samples, and the refiner's residual composition."""

from __future__ import annotations

import time
from typing import Any

import pytest
import roma
import torch

import meshpose.train.jointloss_losses as jl_losses
from meshpose.geometry.lie import rotation_angle
from meshpose.nets.jointloss import (
    Correspondences,
    JointInput,
    JointLossEstimator,
    JointLossNetConfig,
    JointLossRefiner,
    JointOutput,
    best_pose,
    compose_residual,
    count_parameters,
    quat_to_rotmat,
)
from meshpose.train.jointloss_losses import dense_fusion_loss, pose_distance, refiner_loss
from meshpose.train.losses import point_matching_loss
from meshpose.types import Pose

#: a small configuration for fast tests (same structure as the default)
TINY = JointLossNetConfig(
    image_size=32,
    num_points=64,
    colour_dim=16,
    cnn_width=8,
    geo_dims=(32, 64),
    global_dims=(64, 64),
    head_dims=(64, 32),
    refiner_kind="regress",
    refiner_scale=1.0,
)


def _box_points(n: int, g: torch.Generator, size: tuple[float, float, float] = (0.1, 0.06, 0.04)) -> torch.Tensor:
    """``(n, 3)`` random points on the surface of a box centred at the origin, metres."""
    half = torch.tensor(size) / 2
    x = (torch.rand(n, 3, generator=g) * 2 - 1) * half
    axis = torch.randint(0, 3, (n,), generator=g)
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    x[torch.arange(n), axis] = sign * half[axis]
    return x


def _random_rotations(b: int, g: torch.Generator) -> torch.Tensor:
    return roma.unitquat_to_rotmat(torch.nn.functional.normalize(torch.randn(b, 4, generator=g), dim=-1))


def _scene(
    b: int, n: int, side: int, g: torch.Generator, num_objects: int = 1
) -> tuple[JointInput, torch.Tensor, torch.Tensor]:
    """A batch of box observations at known poses: ``(inputs, R (B, 3, 3), t (B, 3))``."""
    R = _random_rotations(b, g)
    t = torch.tensor([0.0, 0.0, 0.6]) + torch.randn(b, 3, generator=g) * 0.05
    obs = torch.stack([_box_points(n, g) for _ in range(b)]) @ R.transpose(1, 2) + t[:, None]
    choose = torch.stack([torch.randperm(side * side, generator=g)[:n] for _ in range(b)])
    obj = torch.randint(0, num_objects, (b,), generator=g)
    return JointInput(torch.rand(b, 3, side, side, generator=g), choose, obs, obj), R, t


def test_config_round_trip_and_parameter_counts() -> None:
    cfg = JointLossNetConfig(num_objects=3, geo_dims=(16, 32))
    assert JointLossNetConfig.from_dict(cfg.to_dict()) == cfg
    assert JointLossNetConfig.from_dict({**cfg.to_dict(), "geo_dims": [16, 32], "unknown": 1}) == cfg
    with pytest.raises(ValueError):
        JointLossNetConfig(num_objects=0)
    with pytest.raises(ValueError):
        JointLossNetConfig(attention_kernel=4)
    # the whole default estimator + refiner stays small (CPU-friendly)
    default = JointLossNetConfig()
    n_est, n_ref = count_parameters(JointLossEstimator(default)), count_parameters(JointLossRefiner(default))
    assert n_est + n_ref < 3_000_000


def test_input_validation() -> None:
    g = torch.Generator().manual_seed(0)
    inp, _, _ = _scene(2, 10, 16, g)
    with pytest.raises(ValueError, match="choose must index"):
        JointInput(inp.rgb, inp.choose + 16 * 16, inp.points, inp.obj_index)
    with pytest.raises(ValueError, match="points"):
        JointInput(inp.rgb, inp.choose, inp.points[:, :5], inp.obj_index)
    with pytest.raises(ValueError, match="int64"):
        JointInput(inp.rgb, inp.choose.int(), inp.points, inp.obj_index)
    with pytest.raises(ValueError, match="rgb"):
        JointInput(inp.rgb[:, :1], inp.choose, inp.points, inp.obj_index)


def test_estimator_shapes_votes_and_gradients() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    b, n = 3, 40
    net = JointLossEstimator(JointLossNetConfig(**{**TINY.to_dict(), "num_objects": 2}))
    inp, R_gt, t_gt = _scene(b, n, 24, g, num_objects=2)  # any crop size and N
    out = net(inp)
    assert out.quat.shape == (b, n, 4) and out.R.shape == (b, n, 3, 3)
    assert out.t.shape == (b, n, 3) and out.c.shape == (b, n) and out.emb.shape == (b, TINY.colour_dim, n)
    # unit quaternions, the matrices are theirs, translation = observed point + offset, confidences in (0, 1)
    assert torch.allclose(out.quat.norm(dim=-1), torch.ones(b, n), atol=1e-6)
    assert torch.allclose(out.R, roma.unitquat_to_rotmat(out.quat), atol=1e-6)
    assert torch.allclose(quat_to_rotmat(-3.0 * out.quat), out.R, atol=1e-5)  # q and −q: the same rotation
    assert torch.allclose(out.t, inp.points + out.offset)
    assert bool(((out.c > 0) & (out.c < 1)).all())
    # the heads are per object
    other = JointInput(inp.rgb, inp.choose, inp.points, 1 - inp.obj_index)
    assert not torch.allclose(net(other).quat, out.quat)
    # the translations follow the observation: moving the points moves every tᵢ by the same vector
    shift = torch.tensor([0.1, -0.2, 0.3])
    moved = net(JointInput(inp.rgb, inp.choose, inp.points + shift, inp.obj_index))
    assert torch.allclose(moved.t, out.t + shift, atol=1e-5) and torch.allclose(moved.quat, out.quat, atol=1e-5)
    # a padded sample (repeated pixels, as for a small mask) is allowed and a repeated point votes alike
    choose, points = inp.choose.clone(), inp.points.clone()
    choose[:, -5:], points[:, -5:] = choose[:, :5], points[:, :5]
    padded = net(JointInput(inp.rgb, choose, points, inp.obj_index))
    assert torch.allclose(padded.t[:, -5:], padded.t[:, :5]) and torch.allclose(padded.c[:, -5:], padded.c[:, :5])
    # gradients of the loss reach every parameter
    model = _box_points(50, g)[None].expand(b, 50, 3)
    terms = dense_fusion_loss(out.R, out.t, out.c, R_gt, t_gt, model, torch.eye(4).expand(b, 1, 4, 4), torch.ones(b))
    terms.loss.mean().backward()
    missing = [k for k, p in net.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing


def test_best_pose_picks_the_most_confident_vote() -> None:
    b, n = 2, 5
    R = _random_rotations(b * n, torch.Generator().manual_seed(2)).view(b, n, 3, 3)
    t = torch.randn(b, n, 3)
    c = torch.tensor([[0.1, 0.9, 0.3, 0.2, 0.5], [0.7, 0.1, 0.2, 0.3, 0.95]])
    out = JointOutput(quat=roma.rotmat_to_unitquat(R), R=R, t=t, offset=t, c=c, emb=torch.zeros(b, 1, n))
    Rb, tb = best_pose(out)
    assert torch.equal(Rb, torch.stack([R[0, 1], R[1, 4]])) and torch.equal(tb, torch.stack([t[0, 1], t[1, 4]]))
    assert torch.equal(JointLossEstimator.best_pose(out)[1], tb)


def _box_symmetries(b: int) -> torch.Tensor:
    """``(B, 4, 4, 4)``: identity and the three 180° turns of a box about its axes."""
    S = torch.eye(4).repeat(4, 1, 1)
    for k, axis in enumerate(torch.eye(3)):
        S[k + 1, :3, :3] = roma.rotvec_to_rotmat(axis * torch.pi)
    return S[None].expand(b, 4, 4, 4)


def test_dense_fusion_loss_zero_at_target_and_symmetry_aware() -> None:
    g = torch.Generator().manual_seed(3)
    b, n, p = 2, 6, 80
    sym, diam = _box_symmetries(b), torch.full((b,), 0.12)
    # model points closed under the box's symmetries (as a mesh's vertices are), so that a turn permutes them
    model = (_box_points(p, g) @ sym[0, :, :3, :3].transpose(-1, -2)).reshape(1, 4 * p, 3).expand(b, 4 * p, 3)
    R_gt, t_gt = _random_rotations(b, g), torch.randn(b, 3, generator=g)
    c = torch.rand(b, n, generator=g) * 0.9 + 0.05
    # every vote at the target: zero distance; the loss is the confidence term only (0 where c = 1)
    at = dense_fusion_loss(
        R_gt[:, None].expand(b, n, 3, 3), t_gt[:, None].expand(b, n, 3), c, R_gt, t_gt, model, sym, diam
    )
    assert torch.allclose(at.loss, (-0.015 * c.log()).mean(1), atol=1e-6)
    assert float(at.distance.abs().max()) < 1e-6
    ones = dense_fusion_loss(
        R_gt[:, None].expand(b, n, 3, 3), t_gt[:, None].expand(b, n, 3), torch.ones(b, n), R_gt, t_gt, model, sym, diam
    )
    assert float(ones.loss.abs().max()) < 1e-6
    # a vote turned by a symmetry of the box costs nothing; without the symmetries it does
    R_sym = R_gt @ sym[:, 2, :3, :3]
    d_sym = pose_distance(R_sym[:, None], t_gt[:, None], R_gt, t_gt, model, sym)
    d_plain = pose_distance(R_sym[:, None], t_gt[:, None], R_gt, t_gt, model, sym[:, :1])
    assert float(d_sym.max()) < 1e-6 and float(d_plain.min()) > 0.01
    # the loss is the same for a pose and the same pose turned by a symmetry
    R = _random_rotations(b * n, g).view(b, n, 3, 3)
    t = t_gt[:, None] + 0.02 * torch.randn(b, n, 3, generator=g)
    a = dense_fusion_loss(R, t, c, R_gt, t_gt, model, sym, diam)
    turned = dense_fusion_loss(R @ sym[:, None, 3, :3, :3], t, c, R_gt, t_gt, model, sym, diam)
    assert torch.allclose(a.loss, turned.loss, atol=1e-6)
    # the logged distance is the most confident vote's, in metres and in diameters
    dist = pose_distance(R, t, R_gt, t_gt, model, sym)
    best = dist[torch.arange(b), c.argmax(1)]
    assert torch.allclose(a.distance, best) and torch.allclose(a.distance_d, best / diam)


def test_pose_distance_matches_point_matching_loss(monkeypatch: Any) -> None:
    g = torch.Generator().manual_seed(4)
    b, n, p = 2, 5, 30
    model = torch.randn(b, p, 3, generator=g, dtype=torch.float64) * 0.05
    sym = torch.eye(4, dtype=torch.float64).repeat(b, 7, 1, 1)
    sym[:, 1:, :3, :3] = roma.rotvec_to_rotmat(torch.randn(b, 6, 3, generator=g, dtype=torch.float64))
    R_gt, t_gt = _random_rotations(b, g).double(), torch.randn(b, 3, generator=g, dtype=torch.float64)
    R = _random_rotations(b * n, g).double().view(b, n, 3, 3).requires_grad_(True)
    t = torch.randn(b, n, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    diam = torch.full((b,), 0.2, dtype=torch.float64)
    monkeypatch.setattr(jl_losses, "_CHUNK_ELEMENTS", 1)  # one symmetry per chunk
    d = pose_distance(R, t, R_gt, t_gt, model, sym)
    ref = (
        point_matching_loss(
            Pose(R.reshape(-1, 3, 3), t.reshape(-1, 3)),
            Pose(R_gt.repeat_interleave(n, 0), t_gt.repeat_interleave(n, 0)),
            model.repeat_interleave(n, 0),
            sym.repeat_interleave(n, 0),
            diam.repeat_interleave(n, 0),
        ).view(b, n)
        * 0.2
    )
    assert torch.allclose(d, ref, atol=1e-12)
    gd = torch.autograd.grad(d.sum(), (R, t))
    gr = torch.autograd.grad(ref.sum(), (R, t))
    assert all(torch.allclose(x, y, atol=1e-10) for x, y in zip(gd, gr, strict=True))


def test_refiner_shapes_gradients_and_identity_start() -> None:
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(5)
    b, n = 3, 40
    est, ref = JointLossEstimator(TINY), JointLossRefiner(TINY)
    inp, R_gt, t_gt = _scene(b, n, 32, g)
    out = est(inp)
    R0, t0 = best_pose(out)
    q, dR, dt = ref(inp, out.emb.detach(), R0.detach(), t0.detach())
    assert q.shape == (b, 4) and dR.shape == (b, 3, 3) and dt.shape == (b, 3)
    assert torch.allclose(q.norm(dim=-1), torch.ones(b), atol=1e-6)
    # an untrained refiner barely moves the pose
    assert (
        torch.allclose(q, torch.tensor([0.0, 0, 0, 1]).expand(b, 4), atol=0.05)
        and float(dt.detach().abs().max()) < 0.05
    )
    iterates = ref.refine(inp, R0, t0, out.emb.detach(), iterations=2)
    assert len(iterates) == 2 and all(R.shape == (b, 3, 3) and t.shape == (b, 3) for R, t in iterates)
    model = _box_points(50, g)[None].expand(b, 50, 3)
    terms = refiner_loss(iterates, R_gt, t_gt, model, torch.eye(4).expand(b, 1, 4, 4), torch.full((b,), 0.12))
    assert terms.loss.shape == (b,) and terms.distance.shape == (b,)
    terms.loss.mean().backward()
    missing = [k for k, p in ref.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert all(p.grad is None for p in est.parameters())  # detached start and embeddings: the estimator untouched


def test_refiner_composes_residuals_in_the_object_frame() -> None:
    g = torch.Generator().manual_seed(6)
    b = 2
    R, t = _random_rotations(b, g), torch.randn(b, 3, generator=g)
    R_true, t_true = _random_rotations(b, g), torch.randn(b, 3, generator=g)

    def mat(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        T = torch.eye(4).repeat(R.shape[0], 1, 1)
        T[:, :3, :3], T[:, :3, 3] = R, t
        return T

    # the residual that brings the current pose to the true one is T⁻¹ T*, in the current object frame
    res = torch.linalg.inv(mat(R, t)) @ mat(R_true, t_true)
    R2, t2 = compose_residual(R, t, res[:, :3, :3], res[:, :3, 3])
    assert torch.allclose(R2, R_true, atol=1e-5) and torch.allclose(t2, t_true, atol=1e-5)

    # a refiner forced to output a known residual: every step applies it on the right, K times
    ref = JointLossRefiner(TINY)
    q_res = torch.nn.functional.normalize(torch.tensor([0.1, -0.2, 0.05, 1.0]), dim=0)
    dt_res = torch.tensor([0.01, -0.02, 0.03])
    with torch.no_grad():
        for head, bias in ((ref.rot_head, q_res), (ref.trans_head, dt_res)):
            last = head[-1]
            assert isinstance(last, torch.nn.Linear)
            last.weight.zero_()
            last.bias.copy_(bias)
    seen: list[torch.Tensor] = []
    fusion_forward = ref.fusion.forward

    def spy(emb: torch.Tensor, points: torch.Tensor, choose: torch.Tensor, size: tuple[int, int]) -> Any:
        seen.append(points.detach().clone())
        return fusion_forward(emb, points, choose, size)

    ref.fusion.forward = spy  # type: ignore[method-assign]
    inp, _, _ = _scene(b, 20, 32, g)
    iterates = ref.refine(inp, R, t, torch.randn(b, TINY.colour_dim, 20), iterations=3)
    T = mat(R, t)
    D = mat(roma.unitquat_to_rotmat(q_res)[None].expand(b, 3, 3), dt_res[None].expand(b, 3))
    for k, (Rk, tk) in enumerate(iterates):
        # the step's input: the observed points in the object frame of the incoming pose, Rᵀ (x − t)
        x_obj = (torch.linalg.inv(T) @ torch.cat([inp.points, torch.ones(b, 20, 1)], -1).transpose(1, 2))[:, :3]
        assert torch.allclose(seen[k], x_obj.transpose(1, 2), atol=1e-5)
        T = T @ D
        assert torch.allclose(Rk, T[:, :3, :3], atol=1e-5) and torch.allclose(tk, T[:, :3, 3], atol=1e-5)


def test_refine_detach_controls_the_gradient_to_the_start() -> None:
    g = torch.Generator().manual_seed(7)
    ref = JointLossRefiner(TINY)
    inp, _, _ = _scene(2, 20, 32, g)
    emb = torch.randn(2, TINY.colour_dim, 20)
    for detach in (True, False):
        R0 = _random_rotations(2, g).requires_grad_(True)
        t0 = torch.randn(2, 3, generator=g).requires_grad_(True)
        R2, t2 = ref.refine(inp, R0, t0, emb, iterations=2, detach=detach)[-1]
        (R2.sum() + t2.sum()).backward()
        assert (t0.grad is None) == detach


def test_tiny_estimator_overfits_four_samples() -> None:
    """4 boxes seen at known poses: the loss falls below 10 % of its start in < 60 s on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        b, n, p = 4, 64, 128
        inp, R_gt, t_gt = _scene(b, n, 32, g)
        model = _box_points(p, g)[None].expand(b, p, 3)
        sym, diam = torch.eye(4).expand(b, 1, 4, 4), torch.full((b,), 0.12)
        net = JointLossEstimator(TINY)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        start, first, last = time.perf_counter(), None, None
        while time.perf_counter() - start < 60:
            out = net(inp)
            loss = dense_fusion_loss(out.R, out.t, out.c, R_gt, t_gt, model, sym, diam).loss.mean()
            last = float(loss.detach())
            first = last if first is None else first
            if last < 0.1 * first:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert first is not None and last is not None and last < 0.1 * first, (first, last)
        with torch.no_grad():  # the votes themselves are good: the median vote is within 10 % of the diameter
            out = net(inp)
            dist = pose_distance(out.R, out.t, R_gt, t_gt, model, sym)
        assert float(dist.median(1).values.max()) < 0.012
    finally:
        torch.set_num_threads(threads)


DENSE = JointLossNetConfig(
    **{**TINY.to_dict(), "refiner_kind": "dense", "refiner_scale": 10.0, "refiner_surface_points": 600}
)


def _box_surface(n: int, g: torch.Generator, size: tuple[float, float, float] = (0.1, 0.06, 0.04)) -> torch.Tensor:
    """``(n, 6)`` points on a box's surface and their outward unit normals."""
    half = torch.tensor(size) / 2
    x = (torch.rand(n, 3, generator=g) * 2 - 1) * half
    axis = torch.randint(0, 3, (n,), generator=g)
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    x[torch.arange(n), axis] = sign * half[axis]
    nrm = torch.zeros(n, 3)
    nrm[torch.arange(n), axis] = sign
    return torch.cat([x, nrm], 1)


def test_dense_refiner_starts_as_robust_icp_fits_exactly_and_trains() -> None:
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(7)
    b, n = 3, 200
    est, ref = JointLossEstimator(DENSE), JointLossRefiner(DENSE)
    ref.set_surfaces(_box_surface(600, g)[None])
    with pytest.raises(ValueError, match="shape"):
        ref.set_surfaces(torch.zeros(2, 600, 6))
    inp, R_gt, t_gt = _scene(b, n, 32, g)
    out = est(inp)
    # at the truth, an untrained refiner stays there (every observed point is on the surface: δ ≈ 0, fit = identity)
    q, dR, dt = ref(inp, out.emb.detach(), R_gt, t_gt)
    assert q.shape == (b, 4) and dR.shape == (b, 3, 3) and dt.shape == (b, 3)
    assert float((dR.detach() - torch.eye(3)).abs().max()) < 0.01 and float(dt.detach().abs().max()) < 0.002
    # untrained, its steps are robust point-to-plane ICP steps: from 4° / 6 mm off, four of them get closer
    R_start = R_gt @ roma.rotvec_to_rotmat(torch.tensor([0.05, -0.03, 0.04]))
    t_start = t_gt + torch.tensor([0.004, -0.003, 0.003])
    model = _box_points(80, g)[None].expand(b, 80, 3)
    eye = torch.eye(4).expand(b, 1, 4, 4)
    with torch.no_grad():
        its = ref.refine(inp, R_start, t_start, out.emb, iterations=4)
    d0 = pose_distance(R_start[:, None], t_start[:, None], R_gt, t_gt, model, eye)[:, 0]
    d4 = pose_distance(its[-1][0][:, None], its[-1][1][:, None], R_gt, t_gt, model, eye)[:, 0]
    assert bool((d4 < 0.6 * d0).all()), (d0, d4)

    # a network that puts every point at its true object coordinate: the rigid fit lands on the truth in one step,
    # the Gauss-Newton step (linearised) within a few
    def perfect(inputs: JointInput, emb: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> Correspondences:
        x_obj = (inputs.points - t[:, None]) @ R
        y = (inputs.points - t_gt[:, None]) @ R_gt
        normal = torch.nn.functional.normalize(torch.randn(y.shape, generator=torch.Generator().manual_seed(0)), dim=-1)
        return Correspondences(x_obj, y, normal, torch.full(x_obj.shape[:2], 0.7))

    exact = JointLossRefiner(JointLossNetConfig(**{**DENSE.to_dict(), "refiner_solver": "kabsch"}))
    exact.correspondences = perfect  # type: ignore[method-assign]
    trace: list[tuple[torch.Tensor, torch.Tensor]] = []
    (R1, t1), (R2, _) = exact.refine(inp, R_start, t_start, out.emb.detach(), iterations=2, trace=trace)
    assert torch.allclose(R1, R_gt, atol=1e-4) and torch.allclose(t1, t_gt, atol=1e-5)
    assert torch.allclose(R2, R_gt, atol=1e-4) and len(trace) == 2
    newton = JointLossRefiner(DENSE)
    newton.correspondences = perfect  # type: ignore[method-assign]
    steps = newton.refine(inp, R_start, t_start, out.emb.detach(), iterations=4)
    errors = [float(rotation_angle(R, R_gt).max()) for R, _ in steps]
    assert errors[0] < 0.05 and errors[-1] < 1e-4 and float((steps[-1][1] - t_gt).abs().max()) < 1e-5, errors
    # the coordinate loss is the confidence term alone at the target, and larger off it
    y, c = trace[0]
    at = jl_losses.coordinate_loss(inp.points, y, c, R_gt, t_gt, w=0.015)
    assert torch.allclose(at, (-0.015 * c.log()).mean(1), atol=1e-5)
    off = jl_losses.coordinate_loss(inp.points, y + 0.01, c, R_gt, t_gt, w=0.015)
    assert bool((off > at + 0.005).all())
    # gradients of the pose loss and the coordinate loss reach every refiner parameter, not the estimator
    trace = []
    iterates = ref.refine(inp, R_start, t_start, out.emb.detach(), iterations=2, trace=trace)
    terms = refiner_loss(iterates, R_gt, t_gt, model, eye, torch.full((b,), 0.12))
    coord = jl_losses.coordinate_loss(inp.points, trace[0][0], trace[0][1], R_gt, t_gt)
    (terms.loss.mean() + coord.mean()).backward()
    missing = [k for k, p in ref.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert all(p.grad is None for p in est.parameters())
    # the surfaces travel with the weights
    again = JointLossRefiner(DENSE)
    again.load_state_dict(ref.state_dict())
    assert torch.equal(again.surface, ref.surface)
    with pytest.raises(ValueError, match="dense"):
        JointLossRefiner(TINY).correspondences(inp, out.emb, R_gt, t_gt)
    with pytest.raises(ValueError, match="refiner_kind"):
        JointLossNetConfig(refiner_kind="nope")
    with pytest.raises(ValueError, match="refiner_solver"):
        JointLossNetConfig(refiner_solver="nope")


def test_symmetric_target_is_the_equivalent_nearest_the_current_pose() -> None:
    g = torch.Generator().manual_seed(8)
    b = 2
    sym = _box_symmetries(b)
    model = _box_points(60, g)[None].expand(b, 60, 3)
    R_gt, t_gt = _random_rotations(b, g), torch.randn(b, 3, generator=g)
    # the current pose is near the target turned by the box's second symmetry: that equivalent is chosen
    turned_R = R_gt @ sym[:, 2, :3, :3]
    near = turned_R @ roma.rotvec_to_rotmat(torch.tensor([0.05, 0.0, -0.05]))
    R_sel, t_sel = jl_losses.symmetric_target(near, t_gt, R_gt, t_gt, model, sym)
    assert torch.allclose(R_sel, turned_R, atol=1e-5) and torch.allclose(t_sel, t_gt, atol=1e-6)
    # without symmetries the target itself
    R_one, _ = jl_losses.symmetric_target(near, t_gt, R_gt, t_gt, model, sym[:, :1])
    assert torch.allclose(R_one, R_gt)
