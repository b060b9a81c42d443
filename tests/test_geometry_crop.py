"""Crop boxes, crop cameras and image crops (OpenCV and batched torch agree with the camera convention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpose.geometry import (
    crop_box_around_object,
    crop_cameras,
    crop_image,
    crop_images,
    object_box,
    project,
    square_crop_box,
)
from meshpose.types import Camera, Pose

F64 = torch.float64


def _cam(w=53, h=37):
    return Camera.from_fxfycxcy(60.0, 55.0, 26.0, 18.0, width=w, height=h)


def _affine_apply(A: np.ndarray, uv: np.ndarray) -> np.ndarray:
    return uv @ A[:, :2].T + A[:, 2]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    x0=st.floats(-100.0, 600.0),
    y0=st.floats(-100.0, 400.0),
    bw=st.floats(1.0, 800.0),
    bh=st.floats(1.0, 800.0),
    width=st.integers(1, 512),
    height=st.integers(1, 512),
)
def test_crop_camera_consistent_with_affine(seed, x0, y0, bw, bh, width, height):
    cam = Camera(np.array([[600.0, 0.3, 320.0], [0.0, 580.0, 240.0], [0.0, 0.0, 1.0]]), 640, 480)
    box = (x0, y0, x0 + bw, y0 + bh)
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(20, 3))
    pts[:, 2] = 0.2 + np.abs(pts[:, 2])
    crop = cam.crop(box, width, height)
    uv_crop = project(torch.from_numpy(pts), torch.from_numpy(np.array(crop.K)))
    uv_full = project(torch.from_numpy(pts), torch.from_numpy(np.array(cam.K)))
    expected = _affine_apply(cam.crop_affine(box, width, height), uv_full.numpy())
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.allclose(uv_crop.numpy(), expected, atol=1e-9 * scale, rtol=0)
    # The crop box's corners map onto the crop image's outer pixel edges.
    cs, _ = crop_cameras(cam, np.array([box]), width, height)
    assert np.allclose(cs[0].K, crop.K)
    corners = _affine_apply(cam.crop_affine(box, width, height), np.array([[box[0], box[1]], [box[2], box[3]]]))
    assert np.allclose(corners, [[-0.5, -0.5], [width - 0.5, height - 0.5]], atol=1e-9 * scale)


@pytest.mark.parametrize(
    ("box", "width", "height"),
    [
        ((3.40625, 5.15625, 23.40625, 15.15625), 40, 40),  # 2× and 4× upsampling at 1/32-pixel offsets
        ((-4.5, -2.5, 60.5, 40.5), 130, 43),  # beyond the image: zero padding
        ((10.5, 3.5, 42.5, 35.5), 16, 8),  # 2× and 4× downsampling
    ],
)
def test_crop_images_matches_cv2_exactly_on_dyadic_grids(box, width, height):
    # OpenCV quantises bilinear weights to 1/32 pixel; on sample positions that are multiples of 1/32
    # it is exact, so there both implementations must agree to float precision.
    rng = np.random.default_rng(0)
    img = rng.random((37, 53, 3)).astype(np.float32)
    cam = _cam()
    ref, crop_cam = crop_image(img, cam, box, width, height)
    A = cam.crop_affine(box, width, height)
    got = crop_images(torch.from_numpy(img).permute(2, 0, 1)[None], A, width, height)
    assert got.shape == (1, 3, height, width) and got.dtype == torch.float32
    assert np.abs(got[0].permute(1, 2, 0).numpy() - ref).max() < 1e-4
    assert np.allclose(crop_cam.K, cam.crop(box, width, height).K)


def test_crop_images_matches_cv2_on_general_boxes():
    rng = np.random.default_rng(1)
    H, W = 37, 53
    vv, uu = np.mgrid[0:H, 0:W]
    smooth = (np.sin(uu / 5.0) * np.cos(vv / 7.0)).astype(np.float32)  # slope ≤ 0.2 / px
    noisy = rng.random((H, W)).astype(np.float32)
    cam = _cam()
    boxes = [(3.3, 4.7, 33.1, 29.9), (-7.2, 1.1, 40.0, 30.3), (20.01, 10.2, 21.3, 11.9)]
    for box in boxes:
        for img, tol in ((smooth, 0.2 / 32 + 1e-4), (noisy, 1.0 / 32 + 1e-4)):
            ref, _ = crop_image(img, cam, box, 24, 18)
            got = crop_images(torch.from_numpy(img)[None, None], cam.crop_affine(box, 24, 18), 24, 18)[0, 0]
            assert np.abs(got.numpy() - ref).max() <= tol


def test_crop_convention_on_a_ramp():
    # Bilinear interpolation is exact on a linear image, so each crop pixel must hold the ramp
    # evaluated at the source position A⁻¹ [u', v', 1]: a direct check of the pixel-centre convention
    # end to end.
    cam = _cam()
    vv, uu = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    ramp = np.stack([uu, vv], axis=0)[None]  # (1, 2, H, W) holding each pixel's own (u, v)
    box = np.array([5.3, 4.1, 40.7, 30.2])
    A = cam.crop_affine(box, 20, 15)
    got = crop_images(torch.from_numpy(ramp), A, 20, 15)[0].permute(1, 2, 0).numpy()
    cv, cu = np.mgrid[0:15, 0:20].astype(np.float64)
    src = np.stack([cu, cv], -1) - A[:, 2]
    src = src @ np.linalg.inv(A[:, :2]).T
    assert np.allclose(got, src, atol=1e-9)
    ref, _ = crop_image(ramp[0].transpose(1, 2, 0).copy(), cam, box, 20, 15)
    assert np.abs(ref - src).max() <= 1.0 / 32 + 1e-6  # OpenCV: exact up to its 1/32-pixel weights


def test_crop_images_batched_nearest_and_gradients():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 2, 37, 53, generator=g, dtype=F64, requires_grad=True)
    cam = _cam()
    boxes = np.array([[0.5, 0.5, 20.5, 20.5], [10.0, 5.0, 30.0, 25.0], [-5.0, -5.0, 60.0, 45.0]])
    cams, A = crop_cameras(cam, boxes, 16, 16)
    assert len(cams) == 3 and A.shape == (3, 2, 3)
    out = crop_images(imgs, A, 16, 16)
    out.sum().backward()
    assert imgs.grad is not None and float(imgs.grad.abs().sum()) > 0
    # Nearest on an integer-aligned 1:1 box is an exact copy.
    masks = (torch.rand(1, 1, 37, 53, generator=g) > 0.5).float()
    A1 = cam.crop_affine((9.5, 4.5, 25.5, 20.5), 16, 16)
    near = crop_images(masks, A1, 16, 16, interpolation="nearest")
    assert torch.equal(near[0, 0], masks[0, 0, 5:21, 10:26])
    with pytest.raises(ValueError, match="affines"):
        crop_images(imgs, np.zeros((2, 2, 3)), 8, 8)
    with pytest.raises(ValueError, match="images"):
        crop_images(torch.zeros(37, 53), A1, 8, 8)


def test_crop_image_dtypes_and_channels():
    cam = _cam()
    rng = np.random.default_rng(0)
    box = (9.5, 4.5, 25.5, 20.5)
    mask = rng.random((37, 53)) > 0.5
    m, mcam = crop_image(mask, cam, box, 16, 16)
    assert m.dtype == bool and m.shape == (16, 16) and np.array_equal(m, mask[5:21, 10:26])
    depth = rng.random((37, 53)).astype(np.float32)
    d, _ = crop_image(depth, cam, (9.5, 4.5, 25.5, 20.5), 32, 32, interpolation="nearest")
    assert set(np.unique(d)).issubset(set(np.unique(depth)))  # nearest never blends
    many = rng.random((37, 53, 7))
    c, _ = crop_image(many, cam, box, 16, 16)
    assert c.shape == (16, 16, 7) and np.allclose(c, many[5:21, 10:26])
    one, _ = crop_image(many[:, :, :1], cam, box, 16, 16)
    assert one.shape == (16, 16, 1)
    rgb = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
    c8, _ = crop_image(rgb, cam, (-10.5, -10.5, 5.5, 5.5), 16, 16)
    assert c8.dtype == np.uint8 and np.all(c8[:10] == 0) and np.array_equal(c8[10:, 10:], rgb[:6, :6])
    assert np.allclose(mcam.K, cam.crop(box, 16, 16).K)
    with pytest.raises(ValueError, match="image"):
        crop_image(rgb[:-1], cam, box, 16, 16)
    with pytest.raises(ValueError, match="interpolation"):
        crop_image(rgb, cam, box, 16, 16, interpolation="cubic")  # type: ignore[arg-type]


def _scene():
    cam = Camera.from_fxfycxcy(600.0, 600.0, 320.0, 240.0, width=640, height=480)
    pose = Pose.exp(torch.tensor([0.05, -0.03, 0.7, 0.4, -0.3, 0.2], dtype=F64))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.05, 0.05, (500, 3)) + np.array([0.02, 0.0, 0.0])  # origin off-centre on purpose
    return cam, pose, pts


def test_object_box_and_square_box():
    cam, pose, pts = _scene()
    box = object_box(cam, pose, pts)
    uv = project(pose.apply(torch.from_numpy(pts)), torch.from_numpy(np.array(cam.K))).numpy()
    assert np.allclose(box, [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
    assert np.allclose(square_crop_box((10.0, 20.0), 8.0), [6.0, 16.0, 14.0, 24.0])
    with pytest.raises(ValueError, match="size_px"):
        square_crop_box((0.0, 0.0), 0.0)
    behind = Pose(pose.R, pose.t * torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    with pytest.raises(ValueError, match="behind the camera"):
        object_box(cam, behind, pts)
    with pytest.raises(ValueError, match="points_obj"):
        object_box(cam, pose, pts[:, :2])


@pytest.mark.parametrize("aspect", [1.0, 4.0 / 3.0, 0.5])
def test_crop_box_around_object(aspect):
    cam, pose, pts = _scene()
    tight = object_box(cam, pose, pts)
    box = crop_box_around_object(cam, pose, pts, padding=1.4, aspect=aspect)
    w, h = box[2] - box[0], box[3] - box[1]
    assert w / h == pytest.approx(aspect)
    origin = project(pose.t.reshape(1, 3), torch.from_numpy(np.array(cam.K))).numpy()[0]
    assert np.allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], origin)  # centred on the origin
    # the object fits with the padding margin on its tightest side
    half = np.array([w, h]) / 2 / 1.4
    assert np.all(tight[:2] >= origin - half - 1e-9) and np.all(tight[2:] <= origin + half + 1e-9)
    assert np.isclose(max(origin[0] - tight[0], tight[2] - origin[0]), half[0]) or np.isclose(
        max(origin[1] - tight[1], tight[3] - origin[1]), half[1]
    )
    # tiny object: min size wins
    small = crop_box_around_object(cam, pose, pts * 1e-3, min_size_px=32.0, aspect=aspect)
    assert min(small[2] - small[0], small[3] - small[1]) == pytest.approx(32.0)
    with pytest.raises(ValueError, match="aspect"):
        crop_box_around_object(cam, pose, pts, aspect=0.0)
