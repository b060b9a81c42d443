"""The embree reference renderer against closed-form answers (it is the oracle of the GL tests)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from meshpose.render import Lighting, RaycastRenderer, Renderer, pixel_rays, shade
from meshpose.types import Camera, Pose
from support.render_fixtures import camera, face_colored_box, make_object, pose, quadrant_texture, textured_quad

ALBEDO = Lighting(ambient=1.0, diffuse=0.0)


@pytest.fixture(scope="module")
def rc() -> RaycastRenderer:
    return RaycastRenderer()


def test_is_a_renderer(rc: RaycastRenderer) -> None:
    assert isinstance(rc, Renderer)


def test_pixel_rays_hit_pixel_centres() -> None:
    cam = Camera(np.array([[90.0, 2.0, 20.3], [0.0, 95.0, 13.7], [0.0, 0.0, 1.0]]), 40, 30)
    rays = pixel_rays(cam)
    assert rays.shape == (30, 40, 3) and np.allclose(rays[..., 2], 1.0)
    proj = rays @ cam.K.T
    v, u = np.mgrid[0:30, 0:40]
    assert np.allclose(proj[..., 0], u) and np.allclose(proj[..., 1], v)


def test_tilted_plane_depth_and_xyz_are_exact(rc: RaycastRenderer) -> None:
    """A big square tilted about x: depth and object coordinates follow from ray/plane intersection."""
    mesh = trimesh.creation.box((1.0, 1.0, 1e-3))
    obj = make_object(mesh)
    p = pose((0.4, 0.0, 0.0), (0.01, -0.02, 0.8))
    cam = camera(40, 30)
    out = rc.render([obj], p, cam, lighting=ALBEDO)
    assert out.mask.all()  # the plane fills the view
    R, t = p.numpy()
    normal = R[:, 2]
    plane_point = R @ np.array([0.0, 0.0, -5e-4]) + t  # the face towards the camera
    rays = pixel_rays(cam)
    depth = (normal @ plane_point) / (rays @ normal)
    assert np.allclose(out.depth[0], depth, atol=1e-6)
    xyz = (rays * depth[..., None] - t) @ R
    assert np.allclose(out.xyz[0], xyz, atol=1e-6)
    assert np.allclose(out.normal[0], -normal, atol=1e-6)  # turned towards the camera
    assert np.all(out.instance == 1)


def test_sphere_silhouette_and_depth(rc: RaycastRenderer) -> None:
    r, dist = 0.05, 0.5
    mesh = trimesh.creation.icosphere(5, radius=r)
    cam = Camera.from_fxfycxcy(200.0, 200.0, 31.5, 31.5, width=64, height=64)
    out = rc.render([make_object(mesh)], pose((0, 0, 0), (0, 0, dist)), cam)
    rays = pixel_rays(cam)
    unit = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    c = np.array([0.0, 0.0, dist])
    b = unit @ c
    disc = b**2 - (c @ c - r**2)
    inside = disc > 0
    # Pixels clearly inside / outside the true sphere silhouette agree (the icosphere is slightly smaller).
    sure_in = disc > 2e-5
    sure_out = disc < 0
    assert out.mask[0][sure_in].all() and not out.mask[0][sure_out].any()
    s = b - np.sqrt(np.where(inside, disc, 0.0))
    z_true = (unit * s[..., None])[..., 2]
    err = np.abs(out.depth[0] - z_true)[sure_in]
    assert err.max() < 2e-4  # icosphere faceting (5 subdivisions): chord error r (1 - cos(θ/2)) ≈ 1e-4
    n_true = (unit * s[..., None] - c) / r
    cos = np.sum(out.normal[0] * n_true, axis=-1)[sure_in]
    assert cos.min() > 0.999


def test_nearest_object_wins(rc: RaycastRenderer) -> None:
    near_box, far_box = make_object(face_colored_box(), 1), make_object(face_colored_box(), 2)
    cam = camera(48, 36)
    poses = Pose.stack([pose((0, 0, 0), (0.0, 0, 0.5)), pose((0, 0, 0), (0.02, 0, 0.4))])
    out = rc.render([near_box, far_box], poses, cam)
    centre = out.instance[0, 18, 24]
    assert centre == 2 and np.isclose(out.depth[0, 18, 24], 0.4 - 0.025, atol=1e-7)


def test_texture_lookup_upright(rc: RaycastRenderer) -> None:
    cam = Camera.from_fxfycxcy(400.0, 400.0, 15.5, 15.5, width=32, height=32)
    flip = np.diag([1.0, -1.0, -1.0])  # object +z towards the camera, object +y up in the image
    out = rc.render([make_object(textured_quad())], Pose(flip, np.array([0.0, 0.0, 0.5])), cam, lighting=ALBEDO)
    img = quadrant_texture()
    expected = {(8, 8): img[0, 0], (8, 24): img[0, -1], (24, 8): img[-1, 0], (24, 24): img[-1, -1]}
    for (v, u), rgb in expected.items():
        assert np.allclose(out.rgb[0, v, u], rgb / 255.0, atol=1e-6), (v, u)


def test_shade_formula() -> None:
    albedo = np.array([[0.5, 0.4, 0.2]])
    n = np.array([[0.0, 0.0, -1.0]])
    view = np.array([[0.0, 0.0, -1.0]])
    assert np.allclose(shade(albedo, n, view, ALBEDO), albedo)
    light = Lighting(ambient=0.2, diffuse=0.6, direction=(0.0, 0.6, -0.8), specular=0.5, shininess=4.0)
    r = 2 * 0.8 * n[0] - np.array([0.0, 0.6, -0.8])
    expected = albedo * (0.2 + 0.6 * 0.8) + 0.5 * max(r @ view[0], 0) ** 4
    assert np.allclose(shade(albedo, n, view, light), np.clip(expected, 0, 1))
