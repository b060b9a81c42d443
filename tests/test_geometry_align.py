"""Kabsch and RANSAC rigid alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshpose.geometry import kabsch, ransac_rigid, rotation_angle
from meshpose.types import Pose

F64 = torch.float64


def _gt(seed: int = 0, batch: tuple[int, ...] = ()) -> Pose:
    g = torch.Generator().manual_seed(seed)
    return Pose.exp(torch.randn(*batch, 6, generator=g, dtype=F64))


def test_kabsch_recovers_transform_batched_and_weighted():
    gt = _gt(0, (4,))
    src = torch.randn(4, 30, 3, dtype=F64)
    est = kabsch(src, gt.apply(src))
    assert est.batch_shape == (4,)
    assert torch.allclose(est.matrix(), gt.matrix(), atol=1e-10)
    # zero weights ignore corrupted points
    dst = gt.apply(src).clone()
    dst[:, :5] += 1.0
    w = torch.ones(4, 30, dtype=F64)
    w[:, :5] = 0.0
    assert torch.allclose(kabsch(src, dst, w).matrix(), gt.matrix(), atol=1e-10)
    # numpy input; det stays +1 even for a reflected target
    one = kabsch(src[0].numpy(), (src[0] * torch.tensor([-1.0, 1.0, 1.0], dtype=F64)).numpy())
    assert float(torch.linalg.det(one.R)) == pytest.approx(1.0)


def test_kabsch_is_differentiable():
    gt = _gt(1)
    src = torch.randn(8, 3, dtype=F64)
    dst = (gt.apply(src) + 0.01 * torch.randn(8, 3, dtype=F64)).requires_grad_()
    est = kabsch(src, dst)
    est.t.sum().backward()
    assert dst.grad is not None and torch.isfinite(dst.grad).all()


def test_kabsch_validates():
    with pytest.raises(ValueError, match="same shape"):
        kabsch(torch.zeros(5, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 3"):
        kabsch(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="weights"):
        kabsch(torch.randn(5, 3), torch.randn(5, 3), -torch.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        kabsch(torch.full((5, 3), float("nan")), torch.zeros(5, 3))


def test_ransac_rigid_with_outliers_and_noise():
    rng = np.random.default_rng(0)
    gt = _gt(2)
    src = rng.uniform(-0.1, 0.1, (200, 3))
    dst = gt.apply(src).numpy() + rng.normal(0, 0.0005, (200, 3))
    outlier = rng.random(200) < 0.4
    dst[outlier] = rng.uniform(-0.3, 0.3, (int(outlier.sum()), 3)) + gt.t.numpy()
    pose, inliers = ransac_rigid(src, dst, threshold_m=0.003, iterations=200, seed=0)
    assert pose is not None and inliers.dtype == bool and inliers.shape == (200,)
    assert float((pose.t - gt.t).norm()) < 5e-4 and float(rotation_angle(pose.R, gt.R)) < np.radians(0.5)
    assert (inliers & ~outlier).sum() >= 0.98 * (~outlier).sum() and (inliers & outlier).sum() <= 3
    # exact data: exact result, deterministic for a seed
    exact = gt.apply(src).numpy()
    p2, _ = ransac_rigid(src, exact, threshold_m=1e-4, seed=3)
    p3, _ = ransac_rigid(torch.from_numpy(src), torch.from_numpy(exact), threshold_m=1e-4, seed=3)
    assert p2 is not None and p3 is not None and torch.allclose(p2.matrix(), gt.matrix(), atol=1e-10)
    assert torch.equal(p2.R, p3.R)


def test_ransac_rigid_failures():
    rng = np.random.default_rng(1)
    pose, inl = ransac_rigid(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), threshold_m=0.01)
    assert pose is None and inl.shape == (2,) and not inl.any()
    pose, inl = ransac_rigid(rng.normal(size=(30, 3)), rng.normal(size=(30, 3)), threshold_m=1e-3, min_inliers=10)
    assert pose is None and inl.sum() < 10
    with pytest.raises(ValueError, match="threshold_m"):
        ransac_rigid(np.zeros((5, 3)), np.zeros((5, 3)), threshold_m=0.0)
