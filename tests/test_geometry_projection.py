"""Projection, back-projection and depth maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpose.geometry import depth_to_points, project, project_object_points, unproject
from meshpose.types import Pose

F64 = torch.float64


def _K(fx=500.0, fy=480.0, cx=320.0, cy=240.0, s=0.0, dtype=F64):
    return torch.tensor([[fx, s, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    fx=st.floats(50.0, 2000.0),
    fy=st.floats(50.0, 2000.0),
    skew=st.floats(-5.0, 5.0),
    z_lo=st.floats(0.05, 5.0),
)
def test_project_unproject_round_trip(seed, fx, fy, skew, z_lo):
    g = torch.Generator().manual_seed(seed)
    K = _K(fx, fy, 300.0, 200.0, skew)
    pts = torch.randn(2, 17, 3, generator=g, dtype=F64)
    pts[..., 2] = z_lo + pts[..., 2].abs()
    uv = project(pts, K)
    assert uv.shape == (2, 17, 2)
    back = unproject(uv, pts[..., 2], K)
    assert torch.allclose(back, pts, atol=1e-10 * (1 + z_lo), rtol=1e-10)
    # And the other way: pixels → points → pixels.
    assert torch.allclose(project(back, K), uv, atol=1e-8)


def test_project_known_values_and_batched_K():
    K = torch.stack([_K(), _K(fx=1000.0, fy=1000.0)])
    pts = torch.tensor([[[0.1, -0.05, 1.0]], [[0.1, -0.05, 2.0]]], dtype=F64)
    uv = project(pts, K)
    assert torch.allclose(uv, torch.tensor([[[370.0, 216.0]], [[370.0, 215.0]]], dtype=F64))
    # numpy input is accepted and yields float64
    assert project(np.array([[0.0, 0.0, 2.0]]), np.asarray(_K())).dtype == F64
    # min_depth keeps points at or behind the camera finite
    assert torch.isfinite(project(torch.tensor([[0.1, 0.1, 0.0]]), _K(dtype=torch.float32), min_depth=1e-3)).all()
    with pytest.raises(ValueError, match="points_cam"):
        project(torch.zeros(4, 2), _K())
    with pytest.raises(ValueError, match="K"):
        project(torch.ones(4, 3), torch.eye(4))
    with pytest.raises(ValueError, match="z"):
        unproject(torch.zeros(4, 2), torch.zeros(3), _K())


def test_project_object_points_matches_manual():
    pose = Pose.exp(torch.tensor([0.02, -0.01, 0.6, 0.3, -0.2, 0.1], dtype=F64))
    X = torch.randn(10, 3, dtype=F64) * 0.05
    P = X @ pose.R.T + pose.t
    manual = (P @ _K().T)[:, :2] / P[:, 2:]
    assert torch.allclose(project_object_points(pose, X, _K()), manual, atol=1e-10)
    batched = Pose.stack([pose, pose])
    assert project_object_points(batched, X, _K()).shape == (2, 10, 2)


def test_gradcheck_project():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(2, 5, 3, generator=g, dtype=F64)
    pts[..., 2] = 1.0 + pts[..., 2].abs()
    K = _K(s=0.5).expand(2, 3, 3).clone()
    assert torch.autograd.gradcheck(project, (pts.requires_grad_(), K.requires_grad_()))
    uv = torch.rand(2, 5, 2, generator=g, dtype=F64) * 100
    z = torch.rand(2, 5, generator=g, dtype=F64) + 0.5
    assert torch.autograd.gradcheck(unproject, (uv.requires_grad_(), z.requires_grad_(), K))


def test_depth_to_points():
    K = _K(fx=2.0, fy=3.0, cx=1.0, cy=0.5)
    depth = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.5, float("nan")]], dtype=F64)
    pts = depth_to_points(depth, K)
    assert pts.shape == (2, 3, 3)
    # pixel (u=2, v=0) at depth 2: x = (2 - 1)/2 · 2 = 1, y = (0 - 0.5)/3 · 2 = -1/3
    assert torch.allclose(pts[0, 2], torch.tensor([1.0, -1.0 / 3.0, 2.0], dtype=F64))
    assert torch.all(pts[0, 1] == 0) and torch.all(pts[1, 2] == 0)  # missing (0 and NaN) → zeros
    # Projecting back lands on the pixel centres.
    uv = project(pts[1, :2].reshape(1, 2, 3), K)[0]
    assert torch.allclose(uv, torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=F64))
    # Batched with per-image K, numpy input.
    d = np.ones((2, 4, 5), dtype=np.float32)
    pb = depth_to_points(d, torch.stack([K, _K()]))
    assert pb.shape == (2, 4, 5, 3) and pb.dtype == F64
    assert torch.allclose(
        pb[1, 3, 4], unproject(torch.tensor([[4.0, 3.0]], dtype=F64), torch.tensor([1.0], dtype=F64), _K())[0]
    )
    with pytest.raises(ValueError, match="depth"):
        depth_to_points(np.ones((2, 2), dtype=np.uint16), K)
    with pytest.raises(ValueError, match="K"):
        depth_to_points(torch.ones(2, 3, 3), torch.stack([K, K, K]))
