"""RANSAC PnP (poselib and OpenCV) and the differentiable Gauss-Newton/LM PnP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meshpose.geometry import (
    PnPResult,
    gauss_newton_pnp,
    perturb_pose,
    pnp_ransac,
    poselib_available,
    rotation_angle,
)
from meshpose.types import Camera, Pose

F64 = torch.float64
CAM = Camera.from_fxfycxcy(600.0, 600.0, 320.0, 240.0, width=640, height=480)
GT = Pose.exp(torch.tensor([0.03, -0.02, 0.5, 0.3, -0.5, 0.2], dtype=F64))
BACKENDS = ["opencv", *(["poselib"] if poselib_available() else [])]


def _matches(n: int, seed: int, cam: Camera = CAM, pose: Pose = GT) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-0.08, 0.08, (n, 3))
    P = pose.apply(X).numpy()
    uv = (P @ cam.K.T)[:, :2] / P[:, 2:]
    return uv, X


def _errors(est: Pose, gt: Pose) -> tuple[float, float]:
    return float((est.t - gt.t).norm()), float(rotation_angle(est.R, gt.R))


# ----------------------------------------------------------------------------------------------- RANSAC
@pytest.mark.parametrize("backend", BACKENDS)
def test_pnp_ransac_exact_matches(backend):
    uv, X = _matches(50, 0)
    res = pnp_ransac(uv, X, CAM, backend=backend)
    assert isinstance(res, PnPResult) and res.success and res.reason is None and res.backend == backend
    assert res.pose is not None
    et, er = _errors(res.pose, GT)
    assert et <= 1e-6 and er <= 1e-6
    assert res.num_inliers == 50 and res.inliers.dtype == bool and res.inliers.all()
    assert res.reprojection_error_px < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_pnp_ransac_outliers_and_noise(backend):
    n = 1000
    uv, X = _matches(n, 1)
    rng = np.random.default_rng(2)
    uv = uv + rng.normal(0.0, 0.5, uv.shape)
    outlier = rng.random(n) < 0.3
    uv[outlier] = rng.uniform([0.0, 0.0], [640.0, 480.0], (int(outlier.sum()), 2))
    res = pnp_ransac(uv, X, CAM, max_reprojection_error_px=2.0, backend=backend)
    assert res.success and res.pose is not None
    et, er = _errors(res.pose, GT)
    assert et <= 1e-3 and math.degrees(er) <= 0.1
    # Inliers: nearly every true match (0.5 px noise vs 2 px threshold) and almost no outlier.
    assert (res.inliers & ~outlier).sum() >= 0.98 * (~outlier).sum()
    assert (res.inliers & outlier).sum() <= 0.02 * outlier.sum()
    assert 0.3 < res.reprojection_error_px < 1.0


def test_pnp_ransac_handles_skew_and_is_deterministic():
    cam = Camera(np.array([[600.0, 2.0, 320.0], [0.0, 610.0, 240.0], [0.0, 0.0, 1.0]]), 640, 480)
    uv, X = _matches(40, 3, cam)
    for backend in BACKENDS:
        res = pnp_ransac(uv, X, cam, backend=backend)
        assert res.success and res.pose is not None
        et, er = _errors(res.pose, GT)
        assert et < 1e-6 and er < 1e-6
    a = pnp_ransac(uv + 0.3, torch.from_numpy(X), cam, seed=5)
    b = pnp_ransac(torch.from_numpy(uv + 0.3), X, cam, seed=5)
    assert a.pose is not None and b.pose is not None
    assert torch.equal(a.pose.R, b.pose.R) and np.array_equal(a.inliers, b.inliers)


def test_pnp_ransac_degenerate_inputs_do_not_raise():
    uv, X = _matches(10, 4)
    few = pnp_ransac(uv[:3], X[:3], CAM)
    assert not few.success and few.pose is None and "fewer than 4" in (few.reason or "")
    assert few.inliers.shape == (3,) and not few.inliers.any() and few.num_inliers == 0
    same = pnp_ransac(uv, np.repeat(X[:1], 10, 0), CAM)
    assert not same.success and "collinear" in (same.reason or "")
    line = np.linspace(0, 1, 10)[:, None] * np.array([[0.1, 0.05, 0.02]])
    assert not pnp_ransac(uv, line, CAM).success
    assert not pnp_ransac(np.repeat(uv[:1], 10, 0), X, CAM).success
    rng = np.random.default_rng(0)
    junk = pnp_ransac(rng.uniform(0, 640, (30, 2)), rng.uniform(-1, 1, (30, 3)), CAM, min_inliers=20)
    assert not junk.success and junk.reason is not None
    for backend in BACKENDS:
        empty = pnp_ransac(np.zeros((0, 2)), np.zeros((0, 3)), CAM, backend=backend)
        assert not empty.success


def test_pnp_ransac_validates_inputs():
    uv, X = _matches(10, 5)
    bad = uv.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="points2d"):
        pnp_ransac(bad, X, CAM)
    badX = X.copy()
    badX[0, 0] = np.inf
    with pytest.raises(ValueError, match="points3d"):
        pnp_ransac(uv, badX, CAM)
    with pytest.raises(ValueError, match="same length"):
        pnp_ransac(uv, X[:-1], CAM)
    with pytest.raises(ValueError, match="points3d"):
        pnp_ransac(uv, X[:, :2], CAM)
    with pytest.raises(ValueError, match="max_reprojection_error_px"):
        pnp_ransac(uv, X, CAM, max_reprojection_error_px=0.0)


# ----------------------------------------------------------------------------------------------- Gauss-Newton
def _gn_problem(B: int, N: int, seed: int, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    X = (torch.rand(B, N, 3, generator=g, dtype=F64) - 0.5) * 0.16
    gt = perturb_pose(Pose.stack([GT] * B), 0.5, 0.05, g)  # B different poses around GT
    K = torch.tensor(CAM.K).expand(B, 3, 3)
    P = gt.apply(X)
    uv = (P @ K.transpose(-1, -2))[..., :2] / P[..., 2:]
    init = perturb_pose(gt, math.radians(5.0), 0.01, g)
    return X.to(dtype), uv.to(dtype), K.to(dtype), gt, init.to(dtype)


@pytest.mark.parametrize("pivot", ["camera", "object"])
def test_gauss_newton_pnp_converges_from_5deg_1cm(pivot):
    X, uv, K, gt, init = _gn_problem(4, 40, 0)
    w = torch.ones(4, 40, dtype=F64)
    est = gauss_newton_pnp(uv, X, w, K, init, iterations=10, pivot=pivot)
    et = (est.t - gt.t).norm(dim=-1)
    er = rotation_angle(est.R, gt.R)
    assert float(et.max()) <= 1e-6 and float(er.max()) <= 1e-6
    # plain Gauss-Newton (no damping) converges too
    est0 = gauss_newton_pnp(uv, X, w, K, init, iterations=10, damping=0.0, pivot=pivot)
    assert float((est0.t - gt.t).norm(dim=-1).max()) <= 1e-6
    # R stays a rotation
    eye = torch.eye(3, dtype=F64).expand(4, 3, 3)
    assert torch.allclose(est.R @ est.R.transpose(-1, -2), eye, atol=1e-12)


def test_gauss_newton_pnp_float32_weights_and_huber():
    X, uv, K, gt, init = _gn_problem(2, 60, 1, torch.float32)
    w = torch.ones(2, 60)
    bad = uv.clone()
    bad[:, :10] += 40.0  # gross outliers
    # zero weights remove the outliers exactly
    w0 = w.clone()
    w0[:, :10] = 0.0
    est = gauss_newton_pnp(bad, X, w0, K, init, iterations=10)
    assert est.dtype == torch.float32
    assert float((est.t.double() - gt.t).norm(dim=-1).max()) < 2e-4
    # Huber IRLS limits their pull compared with plain least squares
    ls = gauss_newton_pnp(bad, X, w, K, init, iterations=10)
    hub = gauss_newton_pnp(bad, X, w, K, init, iterations=10, huber_px=2.0)
    err_ls = (ls.t.double() - gt.t).norm(dim=-1)
    err_hub = (hub.t.double() - gt.t).norm(dim=-1)
    assert bool(torch.all(err_hub < 0.5 * err_ls))
    # all-zero weights leave the pose where it was
    still = gauss_newton_pnp(uv, X, torch.zeros(2, 60), K, init, iterations=3)
    assert torch.allclose(still.t, init.t) and torch.allclose(still.R, init.R)


def test_gauss_newton_pnp_depth_residual():
    X, uv, K, gt, init = _gn_problem(2, 30, 2)
    z_obs = gt.apply(X)[..., 2]
    w = torch.ones(2, 30, dtype=F64)
    est = gauss_newton_pnp(uv, X, w, K, init, iterations=10, depth=z_obs, depth_weight=1.0)
    assert float((est.t - gt.t).norm(dim=-1).max()) <= 1e-6
    # with depth only supporting a shifted pose, the estimate moves towards it
    z_far = z_obs + 0.01
    z_far[:, ::2] = 0.0  # missing depth is ignored
    shifted = gauss_newton_pnp(uv, X, w, K, init, iterations=10, depth=z_far, depth_weight=10.0)
    assert bool(torch.all(shifted.t[:, 2] > gt.t[:, 2] + 1e-4))


def test_gauss_newton_pnp_depth_prior():
    """The prior holds the depth of the origin at z₀ against a scale the matches get wrong; both pivots agree."""
    X, uv, K, gt, init = _gn_problem(2, 40, 3)
    w = torch.ones(2, 40, dtype=F64)
    # Matches of the object 5 % farther away: only the scale of the pattern says so.
    far = Pose(gt.R, gt.t * 1.05)
    P = far.apply(X)
    uv_far = (P @ K.transpose(-1, -2))[..., :2] / P[..., 2:]
    free = gauss_newton_pnp(uv_far, X, w, K, init, iterations=15)
    assert torch.allclose(free.t, far.t, atol=1e-6)
    # λ = 0 and no prior are the same computation
    zero = gauss_newton_pnp(uv_far, X, w, K, init, iterations=15, depth_prior=gt.t[:, 2], depth_prior_weight=0.0)
    assert torch.allclose(zero.t, free.t) and torch.allclose(zero.R, free.R)
    z0 = gt.t[:, 2]
    held = {}
    for pivot in ("camera", "object"):
        strong = gauss_newton_pnp(
            uv_far, X, w, K, init, iterations=30, depth_prior=z0, depth_prior_weight=1e3, pivot=pivot
        )
        assert torch.allclose(strong.t[:, 2], z0, atol=1e-4)
        # the lateral position still follows the matches: the origin projects within a few pixels of where they put it
        assert torch.allclose(strong.t[:, :2] / strong.t[:, 2:], far.t[:, :2] / far.t[:, 2:], atol=5e-3)
        held[pivot] = gauss_newton_pnp(
            uv_far, X, w, K, init, iterations=40, depth_prior=z0, depth_prior_weight=3e-3, pivot=pivot
        )
    # a moderate prior lands in between, at the same minimum whatever the parametrisation (checks both Jacobians)
    mid = held["object"].t[:, 2]
    assert bool(torch.all((mid > z0 + 1e-4) & (mid < far.t[:, 2] - 1e-4)))
    assert torch.allclose(held["camera"].t, held["object"].t, atol=1e-7)
    assert float(rotation_angle(held["camera"].R, held["object"].R).max()) < 1e-7
    with pytest.raises(ValueError, match="depth_prior_weight"):
        gauss_newton_pnp(uv, X, w, K, init, depth_prior=z0, depth_prior_weight=-1.0)
    with pytest.raises(ValueError, match="depth_prior"):
        gauss_newton_pnp(uv, X, w, K, init, depth_prior=-z0, depth_prior_weight=1.0)
    with pytest.raises(ValueError, match="depth_prior"):
        gauss_newton_pnp(uv, X, w, K, init, depth_prior=z0[:1], depth_prior_weight=1.0)


def test_object_pivot_converges_faster_for_a_far_object():
    """Far from the camera, rotation about the camera centre couples with translation; the object pivot does not."""
    g = torch.Generator().manual_seed(5)
    X = (torch.rand(1, 50, 3, generator=g, dtype=F64) - 0.5) * 0.1
    gt = Pose(torch.eye(3, dtype=F64)[None], torch.tensor([[0.05, -0.03, 2.0]], dtype=F64))
    K = torch.tensor(CAM.K).expand(1, 3, 3)
    P = gt.apply(X)
    uv = (P @ K.transpose(-1, -2))[..., :2] / P[..., 2:]
    init = perturb_pose(gt, math.radians(20.0), 0.02, g)
    w = torch.ones(1, 50, dtype=F64)
    errs = {}
    for pivot in ("camera", "object"):
        est = gauss_newton_pnp(uv, X, w, K, init, iterations=3, damping=1e-2, pivot=pivot)
        errs[pivot] = float(rotation_angle(est.R, gt.R)[0])
    assert errs["object"] < math.radians(0.05)
    assert errs["object"] < 0.5 * errs["camera"]
    with pytest.raises(ValueError, match="pivot"):
        gauss_newton_pnp(uv, X, w, K, init, pivot="world")  # type: ignore[arg-type]


def test_gauss_newton_pnp_validates():
    X, uv, K, gt, init = _gn_problem(2, 8, 3)
    w = torch.ones(2, 8, dtype=F64)
    bad = uv.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="points2d"):
        gauss_newton_pnp(bad, X, w, K, init)
    with pytest.raises(ValueError, match="weights"):
        gauss_newton_pnp(uv, X, -w, K, init)
    with pytest.raises(ValueError, match="points3d"):
        gauss_newton_pnp(uv, X[:, :5], w, K, init)
    with pytest.raises(ValueError, match="init"):
        gauss_newton_pnp(uv, X, w, K, gt[0])
    assert gauss_newton_pnp(uv, X, w, K[0], init, iterations=0).t.equal(init.t)


def test_gradcheck_gauss_newton_pnp():
    X, uv, K, gt, _ = _gn_problem(1, 6, 4)
    g = torch.Generator().manual_seed(9)
    uv = uv + torch.randn(uv.shape, generator=g, dtype=F64)  # non-zero residuals at the solution
    w = (torch.rand(1, 6, generator=g, dtype=F64) + 0.5).requires_grad_()
    xi0 = (gt.log() + 0.02 * torch.randn(1, 6, generator=g, dtype=F64)).requires_grad_()

    for pivot in ("camera", "object"):

        def f(points2d: torch.Tensor, weights: torch.Tensor, xi: torch.Tensor, pivot: str = pivot) -> torch.Tensor:
            est = gauss_newton_pnp(
                points2d,
                X,
                weights,
                K,
                Pose.exp(xi),
                iterations=2,
                huber_px=3.0,
                pivot=pivot,
                depth_prior=gt.t[:, 2] * 1.02,
                depth_prior_weight=1e-3,
            )
            return torch.cat([est.R.reshape(-1), est.t.reshape(-1)])

        assert torch.autograd.gradcheck(f, (uv.clone().requires_grad_(), w, xi0))
