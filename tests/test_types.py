"""Core types: validation with clear messages, and the small algebra they carry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshpose.types import Camera, ObjectModel, Observation, Pose


def test_camera_rejects_bad_intrinsics() -> None:
    with pytest.raises(ValueError, match="non-positive focal length"):
        Camera.from_fxfycxcy(0.0, 500.0, 320, 240, width=640, height=480)
    with pytest.raises(ValueError, match="NaN or inf"):
        Camera(np.array([[500, 0, np.nan], [0, 500, 240], [0, 0, 1]]), 640, 480)
    with pytest.raises(ValueError, match="3×3"):
        Camera(np.eye(2), 640, 480)
    with pytest.raises(ValueError, match="upper triangular"):
        Camera(np.array([[500, 0, 320], [0, 500, 240], [0, 1, 1]]), 640, 480)
    with pytest.raises(ValueError, match="positive integers"):
        Camera.from_fxfycxcy(500, 500, 320, 240, width=0, height=480)


def test_camera_is_immutable_and_crops_scale_K() -> None:
    cam = Camera.from_fxfycxcy(500.0, 400.0, 319.5, 239.5, width=640, height=480)
    with pytest.raises(ValueError):
        cam.K[0, 0] = 1.0
    full = cam.crop((-0.5, -0.5, 639.5, 479.5), 640, 480)
    np.testing.assert_allclose(full.K, cam.K, atol=1e-12)
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (320, 240)
    assert half.fx == pytest.approx(250.0) and half.cx == pytest.approx(159.5)


def test_pose_check_names_the_problem() -> None:
    p = Pose.identity()
    with pytest.raises(ValueError, match="init pose contains NaN"):
        Pose(p.R, torch.tensor([0.0, float("nan"), 1.0], dtype=torch.float64)).check("init pose")
    with pytest.raises(ValueError, match="not orthonormal"):
        Pose(2 * p.R, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).check()
    with pytest.raises(ValueError, match=r"behind the camera \(t_z = -1.0000"):
        Pose(p.R, torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)).check(in_front=True)
    Pose(p.R, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).check(in_front=True)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3, 3\)"):
        Pose(torch.eye(4), torch.zeros(3))
    with pytest.raises(ValueError, match="to match R"):
        Pose(torch.eye(3).expand(2, 3, 3), torch.zeros(3, 3))


def test_pose_algebra_batches_and_numpy() -> None:
    xi = torch.tensor([[0.1, -0.2, 0.3, 0.2, 0.1, -0.4], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    p = Pose.exp(xi)
    assert p.batch_shape == (2,) and len(p) == 2
    assert torch.allclose(p.log(), xi)
    ident = p.compose(p.inverse())
    assert torch.allclose(ident.matrix(), torch.eye(4, dtype=torch.float64).expand(2, 4, 4), atol=1e-12)
    pts = torch.randn(5, 3, dtype=torch.float64)
    M = p.matrix()
    manual = pts @ M[:, :3, :3].transpose(-1, -2) + M[:, None, :3, 3]
    assert torch.allclose(p.apply(pts), manual)
    R, t = p[0].numpy()
    q = Pose(R, t)  # from numpy
    assert q.dtype == torch.float64 and torch.allclose(q.t, p[0].t)
    assert Pose.stack([p[0], p[1]]).batch_shape == (2,)
    assert Pose.cat([p, p]).batch_shape == (4,)


def test_observation_validation() -> None:
    cam = Camera.from_fxfycxcy(100, 100, 31.5, 23.5, width=64, height=48)
    rgb = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="64×48"):
        Observation(rgb=np.zeros((40, 64, 3), np.uint8), camera=cam)
    with pytest.raises(ValueError, match="uint8"):
        Observation(rgb=rgb.astype(np.float32), camera=cam)
    with pytest.raises(ValueError, match="negative"):
        Observation(rgb=rgb, camera=cam, depth=-np.ones((48, 64), np.float32))
    with pytest.raises(ValueError, match="mask 0 is empty"):
        Observation(rgb=rgb, camera=cam, mask=np.zeros((48, 64), bool))
    d = np.full((48, 64), 0.5, np.float32)
    d[0, 0] = np.nan
    obs = Observation(rgb=rgb, camera=cam, depth=d, mask=np.ones((48, 64), bool))
    assert obs.depth is not None and obs.depth[0, 0] == 0.0  # NaN depth reads as missing
    assert obs.mask is not None and obs.mask.shape == (1, 48, 64)


def test_object_model_validation() -> None:
    import trimesh

    mesh = trimesh.creation.box((0.1, 0.1, 0.1))
    ok = ObjectModel(1, mesh, mesh, 0.17, np.eye(4)[None], mesh.vertices)
    assert not ok.is_symmetric
    with pytest.raises(ValueError, match="first symmetry must be the identity"):
        ObjectModel(1, mesh, mesh, 0.17, np.stack([np.diag([-1.0, -1.0, 1.0, 1.0])]), mesh.vertices)
    with pytest.raises(ValueError, match="diameter must be positive"):
        ObjectModel(1, mesh, mesh, 0.0, np.eye(4)[None], mesh.vertices)


def test_failure_has_a_code_beside_its_message() -> None:
    from meshpose.types import Failure, FailureCode

    f = Failure(FailureCode.NO_DEPTH, "too few observed depth points")
    assert f.as_dict() == {"code": "no_depth", "message": "too few observed depth points"}
    g = f.with_prefix("icp")
    assert g.code is FailureCode.NO_DEPTH and g.message == "icp: too few observed depth points"
    assert f == Failure(FailureCode.NO_DEPTH, "too few observed depth points") and str(f) == f.message
    with pytest.raises(AttributeError):
        f.code = FailureCode.NUMERICAL  # type: ignore[misc]


def test_types_package_reexports_its_submodules() -> None:
    import meshpose.types as types
    from meshpose.types.camera import Camera as C
    from meshpose.types.pose import Pose as P
    from meshpose.types.pose import se3_exp

    assert types.Camera is C and types.Pose is P and types.se3_exp is se3_exp
    assert set(types.__all__) >= {"Camera", "ObjectModel", "Observation", "Pose", "PoseEstimate", "RefineInfo"}


# ------------------------------------------------------------------------------------------------------
# Issue 16: pose validation messages (reflection, slightly-off rotations, units hints)
# ------------------------------------------------------------------------------------------------------
def test_pose_check_reports_a_reflection_by_its_determinant() -> None:
    R = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"init pose is a reflection, not a rotation: det R = -1\.0000"):
        Pose(R, [0.0, 0.0, 1.0]).check("init pose")
    batch = Pose(torch.stack([torch.eye(3, dtype=torch.float64), R]), torch.tensor([[0.0, 0.0, 1.0]] * 2))
    with pytest.raises(ValueError, match=r"det R = -1\.0000 \(at batch index \(1,\)\)"):
        batch.check()


def test_pose_check_repairs_rotations_slightly_off_so3(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    rng = np.random.default_rng(0)
    good = Pose.exp(torch.tensor(rng.normal(size=(4, 6)) * 0.3, dtype=torch.float64))
    noisy_R = good.R + torch.tensor(rng.uniform(-5e-3, 5e-3, size=(4, 3, 3)))  # ~1e-2 off, as in LM-O
    noisy_R[0] = good.R[0]  # one exact rotation stays as it is
    noisy = Pose(noisy_R, good.t + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    with caplog.at_level(logging.WARNING, logger="meshpose.types.pose"):
        fixed = noisy.check("init pose", in_front=True)
    assert "init pose: rotation off SO(3)" in caplog.text and "3 of 4" in caplog.text
    eye = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    torch.testing.assert_close(fixed.R @ fixed.R.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(fixed.R), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(fixed.R[0], noisy.R[0], atol=0, rtol=0)
    assert float((fixed.R - noisy.R).abs().max()) < 1e-2  # the nearest rotation: a small change
    assert fixed.t is noisy.t and fixed.R.dtype == noisy.R.dtype
    assert good.check() is good  # nothing to repair: the same object
    with pytest.raises(ValueError, match=r"not orthonormal.*\|RRᵀ - I\| = 2\.\d+e-01.*up to 0\.1 is repaired"):
        Pose(torch.eye(3, dtype=torch.float64) * 1.1, [0.0, 0.0, 1.0]).check()


def test_pose_check_hints_at_units() -> None:
    eye = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="behind the camera.*units of t"):
        Pose(eye, [0.0, 0.0, -0.5]).check(in_front=True)
    # a t of 0.6 m read as BOP millimetres: 0.6 mm from the camera
    with pytest.raises(ValueError, match=r"implausibly close.*t_z = 0\.000600 m.*metres where millimetres"):
        Pose(eye, [0.0, 0.0, 0.0006]).check("init pose", in_front=True)
    # 600 mm read as metres
    with pytest.raises(ValueError, match=r"implausibly far.*t_z = 600\.0 m.*millimetres where metres"):
        Pose(eye, [0.0, 0.0, 600.0]).check("init pose", in_front=True)
    Pose(eye, [0.0, 0.0, 0.0006]).check()  # depth is only checked with in_front
