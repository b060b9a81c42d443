"""SO(3)/SE(3) helpers: exp/log round trips (incl. near 0 and π), pose algebra, angles, perturbations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpose.geometry import (
    perturb_pose,
    random_rotations,
    random_unit_vectors,
    rotation_about_axis,
    rotation_angle,
    se3_exp,
    se3_log,
    skew,
)
from meshpose.types import Pose

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None)

finite = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
vec3 = st.tuples(finite, finite, finite).filter(lambda v: math.hypot(*v) > 1e-3)


def _unit(v: tuple[float, float, float]) -> torch.Tensor:
    a = torch.tensor(v, dtype=F64)
    return a / a.norm()


def _twist(trans: tuple[float, float, float], axis: tuple[float, float, float], angle: float) -> torch.Tensor:
    return torch.cat([torch.tensor(trans, dtype=F64), _unit(axis) * angle])


# ----------------------------------------------------------------------------------------------- exp / log
@SETTINGS
@given(trans=st.tuples(finite, finite, finite), axis=vec3, angle=st.floats(0.0, math.pi - 1e-3))
def test_exp_log_round_trip_general(trans, axis, angle):
    xi = _twist(trans, axis, angle)
    assert torch.allclose(Pose.exp(xi).log(), xi, atol=1e-9)


@SETTINGS
@given(trans=st.tuples(finite, finite, finite), axis=vec3, angle=st.floats(1e-8, 1e-4))
def test_exp_log_round_trip_near_zero(trans, axis, angle):
    xi = _twist(trans, axis, angle)
    back = Pose.exp(xi).log()
    assert torch.allclose(back, xi, atol=1e-12, rtol=0)
    # The recovered angle keeps relative precision even for tiny angles.
    assert abs(float(back[3:].norm()) - angle) <= 1e-9 * angle


@SETTINGS
@given(trans=st.tuples(finite, finite, finite), axis=vec3, eps=st.floats(0.0, 1e-6))
def test_exp_log_round_trip_near_pi(trans, axis, eps):
    angle = math.pi - eps
    xi = _twist(trans, axis, angle)
    pose = Pose.exp(xi)
    back = pose.log()
    # Near π the rotation vector is ±axis·θ; the transform itself must round-trip, and the angle must survive.
    assert abs(float(back[3:].norm()) - angle) < 1e-9
    assert torch.allclose(Pose.exp(back).matrix(), pose.matrix(), atol=1e-9)
    if eps > 1e-7:  # away from the ±ambiguity, the twist itself comes back
        assert torch.allclose(back, xi, atol=1e-6)


def test_exp_matches_matrix_exponential():
    g = torch.Generator().manual_seed(3)
    xi = torch.randn(20, 6, generator=g, dtype=F64)
    hat = torch.zeros(20, 4, 4, dtype=F64)
    hat[:, :3, :3] = skew(xi[:, 3:])
    hat[:, :3, 3] = xi[:, :3]
    assert torch.allclose(Pose.exp(xi).matrix(), torch.linalg.matrix_exp(hat), atol=1e-10)


# ----------------------------------------------------------------------------------------------- algebra
poses = st.tuples(st.tuples(finite, finite, finite), vec3, st.floats(0.0, math.pi)).map(lambda a: Pose.exp(_twist(*a)))


@SETTINGS
@given(a=poses, b=poses)
def test_compose_inverse_identity(a, b):
    eye = torch.eye(4, dtype=F64)
    assert torch.allclose(a.compose(a.inverse()).matrix(), eye, atol=1e-12)
    assert torch.allclose(a.inverse().compose(a).matrix(), eye, atol=1e-12)
    assert torch.allclose((a @ b).matrix(), a.matrix() @ b.matrix(), atol=1e-12)
    assert torch.allclose((a @ b).inverse().matrix(), (b.inverse() @ a.inverse()).matrix(), atol=1e-12)


@SETTINGS
@given(a=poses, pts=st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=8))
def test_apply_matches_homogeneous_matrix(a, pts):
    p = torch.tensor(pts, dtype=F64)
    ph = torch.cat([p, torch.ones(len(p), 1, dtype=F64)], 1)
    assert torch.allclose(a.apply(p), (ph @ a.matrix().T)[:, :3], atol=1e-12)


# ----------------------------------------------------------------------------------------------- angles
@SETTINGS
@given(
    axis=vec3,
    angle=st.one_of(st.floats(1e-9, 1e-4), st.floats(0.0, math.pi), st.floats(math.pi - 1e-6, math.pi)),
)
def test_rotation_angle_is_exact_near_zero_and_pi(axis, angle):
    R0 = random_rotations(1, torch.Generator().manual_seed(0))[0]
    R = rotation_about_axis(_unit(axis), angle)
    got = float(rotation_angle(R0, R @ R0))
    assert abs(got - angle) <= 1e-12 + 1e-9 * angle
    assert float(rotation_angle(R @ R0, R0)) == pytest.approx(got, abs=1e-12)


def test_rotation_angle_batched_and_numpy():
    R = random_rotations(5, torch.Generator().manual_seed(1))
    ang = rotation_angle(R, R[torch.tensor([1, 2, 3, 4, 0])])
    assert ang.shape == (5,) and bool(torch.all(ang > 0))
    assert float(rotation_angle(np.eye(3), np.eye(3))) == 0.0
    with pytest.raises(ValueError, match="R_b"):
        rotation_angle(np.eye(3), np.eye(4))


def test_rotation_about_axis_basics():
    R = rotation_about_axis(torch.tensor([0.0, 0.0, 1.0], dtype=F64), math.pi / 2)
    assert torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 0.0], dtype=F64))
    Rb = rotation_about_axis(torch.randn(4, 3, dtype=F64), torch.tensor([0.1, 0.2, 0.3, 3.0], dtype=F64))
    assert torch.allclose(Rb @ Rb.transpose(-1, -2), torch.eye(3, dtype=F64).expand(4, 3, 3), atol=1e-12)
    with pytest.raises(ValueError, match="axis"):
        rotation_about_axis([0.0, 0.0, 0.0], 1.0)


def test_random_rotations_are_uniform_rotations():
    R = random_rotations(4000, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.linalg.det(R), torch.ones(4000, dtype=F64), atol=1e-12)
    # Haar measure: E[R] = 0, and the angle has density (1 - cos θ)/π, so E[θ] = π/2 + 2/π.
    assert float(R.mean(0).abs().max()) < 0.05
    mean_angle = float(rotation_angle(torch.eye(3, dtype=F64), R).mean())
    assert mean_angle == pytest.approx(math.pi / 2 + 2 / math.pi, abs=0.03)
    same = random_rotations(3, torch.Generator().manual_seed(7))
    assert torch.equal(same, random_rotations(3, torch.Generator().manual_seed(7)))
    d = random_unit_vectors((2, 5))
    assert d.shape == (2, 5, 3) and torch.allclose(d.norm(dim=-1), torch.ones(2, 5, dtype=F64))


# ----------------------------------------------------------------------------------------------- perturb
@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    rot=st.one_of(st.floats(0.0, math.pi), st.floats(1e-8, 1e-4), st.floats(math.pi - 1e-6, math.pi)),
    trans=st.floats(0.0, 2.0),
)
def test_perturb_pose_has_exact_magnitudes(seed, rot, trans):
    base = Pose.exp(torch.randn(3, 6, generator=torch.Generator().manual_seed(seed), dtype=F64))
    out = perturb_pose(base, rot, trans, torch.Generator().manual_seed(seed))
    assert out.batch_shape == base.batch_shape
    ang = rotation_angle(base.R, out.R)
    assert torch.allclose(ang, torch.full_like(ang, rot), atol=1e-12 + 1e-9 * rot, rtol=0)
    dist = (out.t - base.t).norm(dim=-1)
    assert torch.allclose(dist, torch.full_like(dist, trans), atol=1e-12, rtol=0)
    # The rotation acts about the object origin in the camera frame: R' = ΔR R with ΔR an exact rotation.
    dR = out.R @ base.R.transpose(-1, -2)
    assert torch.allclose(dR @ dR.transpose(-1, -2), torch.eye(3, dtype=F64).expand(3, 3, 3), atol=1e-12)


def test_perturb_pose_is_deterministic_and_validates():
    base = Pose.identity((4,))
    a = perturb_pose(base, 0.2, 0.01, torch.Generator().manual_seed(5))
    b = perturb_pose(base, 0.2, 0.01, torch.Generator().manual_seed(5))
    c = perturb_pose(base, 0.2, 0.01, torch.Generator().manual_seed(6))
    assert torch.equal(a.R, b.R) and torch.equal(a.t, b.t) and not torch.equal(a.R, c.R)
    single = perturb_pose(Pose.identity().to(torch.float32), 0.1, 0.0)
    assert single.batch_shape == () and single.dtype == torch.float32
    with pytest.raises(ValueError, match="rot_rad"):
        perturb_pose(base, 4.0, 0.0)
    with pytest.raises(ValueError, match="trans_m"):
        perturb_pose(base, 0.1, -1.0)


# ----------------------------------------------------------------------------------------------- gradients
def test_gradcheck_se3_exp():
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e-3, 2.5):
        xi = (torch.randn(3, 6, generator=g, dtype=F64) * scale).requires_grad_()
        assert torch.autograd.gradcheck(lambda x: se3_exp(x), (xi,))


def test_gradcheck_se3_log_away_from_pi():
    g = torch.Generator().manual_seed(1)
    xi = torch.randn(3, 6, generator=g, dtype=F64)
    xi[:, 3:] = xi[:, 3:] / xi[:, 3:].norm(dim=-1, keepdim=True) * torch.tensor([[0.3], [1.5], [2.5]], dtype=F64)
    R, t = se3_exp(xi)

    # Parametrise R on the manifold (R exp([ε]×)) so finite differences stay on SO(3).
    def f(eps: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return se3_log(R @ torch.linalg.matrix_exp(skew(eps)), tt)

    eps = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (eps, t.clone().requires_grad_()))


def test_perturb_pose_rotates_about_the_origin_in_the_camera_frame():
    # Documented draw order: axis first, then translation direction, from the same generator.
    base = Pose.exp(torch.tensor([[0.1, -0.2, 0.7, 0.5, -1.0, 0.3]], dtype=F64))
    out = perturb_pose(base, 0.3, 0.05, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    axis = random_unit_vectors((1,), g)
    direction = random_unit_vectors((1,), g)
    assert torch.allclose(out.R, rotation_about_axis(axis, 0.3) @ base.R, atol=1e-14)
    assert torch.allclose(out.t, base.t + 0.05 * direction, atol=1e-14)
    # so the camera-frame rotation axis is fixed by ΔR = R' Rᵀ (not by Rᵀ R', unless they commute)
    dR = out.R @ base.R.transpose(-1, -2)
    assert torch.allclose(dR @ axis[0], axis[0], atol=1e-12)


def test_rotation_angle_gradient_is_finite_at_zero():
    R = random_rotations(2, torch.Generator().manual_seed(2))
    Rb = R.clone().requires_grad_()
    rotation_angle(R, Rb).sum().backward()
    assert Rb.grad is not None and torch.isfinite(Rb.grad).all()
    # and matches finite differences away from zero
    eps = torch.full((2, 3), 0.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: rotation_angle(R, R @ torch.linalg.matrix_exp(skew(e))), (eps,))
