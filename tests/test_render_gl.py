"""The GL renderer: agreement with the embree reference, projection, occlusion, batching, colours, caching."""

from __future__ import annotations

import gc
import threading
import zlib

import numpy as np
import pytest
import trimesh

from meshpose.render import (
    DEFAULT_COLOR,
    GLRenderer,
    Lighting,
    RaycastRenderer,
    Renderer,
    get_default_renderer,
    opencv_projection,
    pixel_rays,
)
from meshpose.types import Camera, ObjectModel, Pose
from support.render_fixtures import (
    camera,
    compare,
    face_colored_box,
    make_object,
    open_box,
    pose,
    quadrant_texture,
    random_poses,
    stable_pixels,
    textured_quad,
    torus,
    vertex_colored_sphere,
)

ALBEDO = Lighting(ambient=1.0, diffuse=0.0)
FLIP = np.diag([1.0, -1.0, -1.0])  # object +z towards the camera, object +y up in the image


@pytest.fixture(scope="module")
def gl() -> GLRenderer:
    return get_default_renderer()


@pytest.fixture(scope="module")
def rc() -> RaycastRenderer:
    return RaycastRenderer()


def crop_camera() -> Camera:
    """A non-square crop (50×70) of a 640×480 camera, off the image centre."""
    full = Camera.from_fxfycxcy(600.0, 590.0, 322.0, 236.0, width=640, height=480)
    return full.crop((250.0, 180.0, 350.0, 320.0), 50, 70)


# ----------------------------------------------------------------------------------------------------------
# Agreement with the ray caster
# ----------------------------------------------------------------------------------------------------------
MESHES = {
    "face_box": face_colored_box,
    "vertex_sphere": vertex_colored_sphere,
    "torus": torus,
    "open_box": open_box,
    "textured_quad": textured_quad,
}


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("cam_name", ["full", "crop"])
def test_gl_matches_raycaster(gl: GLRenderer, rc: RaycastRenderer, mesh_name: str, cam_name: str) -> None:
    obj = make_object(MESHES[mesh_name]())
    cam = camera(64, 48) if cam_name == "full" else crop_camera()
    rng = np.random.default_rng(zlib.crc32(f"{mesh_name}/{cam_name}".encode()))
    poses = random_poses(rng, 4, distance=0.35 if cam_name == "full" else 0.9, spread=0.01)
    if cam_name == "crop":  # put the objects where the crop looks
        R, t = poses.numpy()
        ray = np.linalg.solve(crop_camera().K, [25.0, 35.0, 1.0])
        poses = Pose(R, ray[None, :] * t[:, 2:3])
    poses = poses.reshape(4, 1)
    a = gl.render([obj], poses, cam)
    b = rc.render([obj], poses, cam)
    c = compare(a, b)
    assert c["covered"] > 200
    assert c["mask_agree"] >= 0.995, c
    # Depth and xyz agree to 1e-4 m on every pixel both cover, except where GL's 1/256-pixel vertex snapping
    # may legitimately change what a pixel centre sees: on surfaces seen edge-on, and within 1/64 px of an
    # occluding contour (found by re-casting the reference with jittered pixel centres). Even there, more
    # than 99.5 % of the pixels agree to 1e-4 m.
    both = a.mask & b.mask
    rays = pixel_rays(cam)[None]
    view = -rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    facing = np.abs(np.sum(b.normal * view, axis=-1)) > 0.15
    stable = stable_pixels(b, lambda cams: rc.render([obj], poses, cams), [cam] * 4)
    dz = np.abs(a.depth - b.depth)
    dxyz = np.abs(a.xyz - b.xyz).max(-1)
    exact = both & facing & stable
    assert exact.sum() >= 0.5 * both.sum()  # the exclusions are the exception
    assert dz[exact].max() <= 1e-4 and dxyz[exact].max() <= 1e-4, c
    assert np.mean(dz[both] <= 1e-4) >= 0.995 and np.mean(dxyz[both] <= 1e-4) >= 0.995
    assert c["normal_cos_median"] > 0.999 and c["normal_cos_p01"] > 0.9, c
    if mesh_name != "textured_quad":  # GL filters textures with mipmaps, the ray caster does not
        assert c["rgb_median"] <= 1 / 255 and c["rgb_p99"] <= 4 / 255, c


def test_gl_matches_raycaster_two_objects_with_occlusion(gl: GLRenderer, rc: RaycastRenderer) -> None:
    objs = [make_object(torus(), 1), make_object(vertex_colored_sphere(), 2), make_object(face_colored_box(), 3)]
    rng = np.random.default_rng(7)
    poses = random_poses(rng, 3, distance=0.3, spread=0.015)
    a = gl.render(objs, poses, camera(64, 48))
    b = rc.render(objs, poses, camera(64, 48))
    c = compare(a, b)
    assert len(np.unique(a.instance)) == 4  # all three objects and the background are visible
    assert c["instance_agree"] >= 0.99 and c["mask_agree"] >= 0.995, c
    assert np.mean(np.abs(a.depth - b.depth)[a.mask & b.mask] <= 1e-4) >= 0.99


# ----------------------------------------------------------------------------------------------------------
# Occlusion
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_object_wins(gl: GLRenderer, order: tuple[int, int]) -> None:
    """Two boxes overlap in the image; the nearer one owns instance, depth and xyz, whatever the draw order."""
    boxes = [make_object(face_colored_box((0.08, 0.06, 0.05)), i + 1) for i in range(2)]
    placed = [pose((0.0, 0.3, 0.0), (0.0, 0.0, 0.5)), pose((0.0, -0.2, 0.0), (0.03, 0.01, 0.4))]
    objs = [boxes[i] for i in order]
    poses = Pose.stack([placed[i] for i in order])
    out = gl.render(objs, poses, camera(64, 48))
    near_index = order.index(1) + 1
    far_index = order.index(0) + 1
    # Pixel rays that hit both boxes: compute each box's own depth map and check the minimum wins.
    alone = [gl.render([objs[k]], poses[k : k + 1], camera(64, 48)) for k in range(2)]
    both = alone[0].mask[0] & alone[1].mask[0]
    assert both.sum() > 50
    d = np.stack([alone[0].depth[0], alone[1].depth[0]])
    winner = np.argmin(np.where(d > 0, d, np.inf), axis=0) + 1
    assert np.array_equal(out.instance[0][both], winner[both])
    assert np.allclose(out.depth[0][both], d.min(axis=0)[both], atol=1e-6)
    xyz = np.where((winner == 1)[..., None], alone[0].xyz[0], alone[1].xyz[0])
    assert np.allclose(out.xyz[0][both], xyz[both], atol=1e-6)
    assert (winner[both] == near_index).mean() > 0.5 and far_index in out.instance[0]


# ----------------------------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------------------------
def _inside_triangle(pts: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether 2-D points are inside a 2-D triangle, and their distance (pixels) to the nearest edge."""
    signs, dists = [], []
    for i in range(3):
        a, b = tri[i], tri[(i + 1) % 3]
        edge = b - a
        cross = edge[0] * (pts[..., 1] - a[1]) - edge[1] * (pts[..., 0] - a[0])
        signs.append(cross)
        dists.append(np.abs(cross) / np.linalg.norm(edge))
    s = np.stack(signs)
    inside = np.all(s > 0, axis=0) | np.all(s < 0, axis=0)
    return inside, np.min(np.stack(dists), axis=0)


@pytest.mark.parametrize("skew", [0.0, 3.5])
def test_triangle_coverage_matches_opencv_projection(gl: GLRenderer, skew: float) -> None:
    """A tilted triangle: the covered pixels are exactly those whose centre lies inside the triangle projected
    with K (OpenCV), and the depth at each is the ray/plane intersection through the pixel centre."""
    cam = Camera(np.array([[83.0, skew, 30.2], [0.0, 91.0, 21.7], [0.0, 0.0, 1.0]]), 61, 45)
    tri_obj = np.array([[-0.11, -0.07, 0.02], [0.13, -0.05, -0.03], [0.01, 0.12, 0.04]])
    mesh = trimesh.Trimesh(tri_obj, [[0, 1, 2]], process=False)
    p = pose((0.3, -0.2, 0.1), (0.005, 0.01, 0.5))
    out = gl.render([make_object(mesh)], p, cam)
    R, t = p.numpy()
    tri_cam = tri_obj @ R.T + t
    proj = tri_cam @ cam.K.T
    tri_px = proj[:, :2] / proj[:, 2:]
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    inside, dist = _inside_triangle(np.stack([u, v], -1).astype(float), tri_px)
    clear = dist > 0.01  # pixel centres within 1/100 px of an edge may go either way
    assert inside.sum() > 300
    assert np.array_equal(out.mask[0][clear], inside[clear])
    normal = np.cross(tri_cam[1] - tri_cam[0], tri_cam[2] - tri_cam[0])
    rays = pixel_rays(cam)
    depth = (normal @ tri_cam[0]) / (rays @ normal)
    assert np.allclose(out.depth[0][out.mask[0]], depth[out.mask[0]], rtol=0, atol=2e-6)


def test_pixels_unproject_onto_the_mesh(gl: GLRenderer) -> None:
    """Depth unprojected with K equals the rendered xyz and lies on the surface; xyz projected with the pose
    and K lands on the centre of its own pixel."""
    mesh = torus()
    cam = crop_camera()
    R0 = pose((0.9, 0.4, -0.3), (0, 0, 0)).numpy()[0]
    ray = np.linalg.solve(cam.K, [24.0, 36.0, 1.0])
    p = Pose(R0, ray * 0.8)
    out = gl.render([make_object(mesh)], p, cam)
    m = out.mask[0]
    assert m.sum() > 300
    R, t = p.numpy()
    v, u = np.nonzero(m)
    cam_pts = np.linalg.solve(cam.K, np.stack([u, v, np.ones_like(u)]).astype(float)).T * out.depth[0][m][:, None]
    obj_pts = (cam_pts - t) @ R
    assert np.abs(obj_pts - out.xyz[0][m]).max() < 1e-5
    _, dist, _ = trimesh.proximity.closest_point(mesh, obj_pts)
    assert np.quantile(dist, 0.99) < 1e-5 and dist.max() < 1e-4
    proj = (out.xyz[0][m].astype(np.float64) @ R.T + t) @ cam.K.T
    uv = proj[:, :2] / proj[:, 2:]
    err = np.linalg.norm(uv - np.stack([u, v], -1), axis=1)
    assert np.quantile(err, 0.99) < 1e-3 and err.max() < 0.05


def test_vertices_land_where_projected(gl: GLRenderer) -> None:
    """Box corners projected with K: the pixel centres next to each corner are covered exactly when inside."""
    cam = Camera.from_fxfycxcy(120.0, 118.0, 40.3, 29.6, width=80, height=60)
    mesh = trimesh.creation.box((0.1, 0.08, 0.06))
    p = pose((0.0, 0.0, 0.0), (0.003, -0.002, 0.5))  # front face parallel to the image
    out = gl.render([make_object(mesh)], p, cam)
    R, t = p.numpy()
    front = mesh.vertices[mesh.vertices[:, 2] < 0] @ R.T + t
    uv = front @ cam.K.T
    uv = uv[:, :2] / uv[:, 2:]
    u0, v0 = uv.min(axis=0)
    u1, v1 = uv.max(axis=0)
    cols = (np.arange(cam.width) > u0) & (np.arange(cam.width) < u1)
    rows = (np.arange(cam.height) > v0) & (np.arange(cam.height) < v1)
    assert np.array_equal(out.mask[0], rows[:, None] & cols[None, :])


def test_projection_matrix_maps_pixel_edges_to_ndc() -> None:
    cam = Camera.from_fxfycxcy(100.0, 80.0, 20.0, 10.0, width=40, height=30)
    P = opencv_projection(cam, 0.1, 10.0)
    # The camera ray through the image corner (-0.5, -0.5) and (W - 0.5, H - 0.5).
    for (u, v), ndc in [((-0.5, -0.5), (-1.0, -1.0)), ((39.5, 29.5), (1.0, 1.0)), ((19.5, 14.5), (0.0, 0.0))]:
        x = np.linalg.solve(cam.K, [u, v, 1.0]) * 2.0
        clip = P @ np.append(x, 1.0)
        assert np.allclose(clip[:2] / clip[3], ndc)
    for z, zn in [(0.1, -1.0), (10.0, 1.0)]:
        clip = P @ np.array([0.0, 0.0, z, 1.0])
        assert np.isclose(clip[2] / clip[3], zn)
    with pytest.raises(ValueError, match="near < far"):
        opencv_projection(cam, 1.0, 0.5)


# ----------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------
def test_batch_equals_single_calls(gl: GLRenderer) -> None:
    objs = [make_object(torus(), 1), make_object(face_colored_box(), 2)]
    rng = np.random.default_rng(3)
    n_scenes = 5
    poses = random_poses(rng, 2 * n_scenes, distance=0.8, spread=0.02).reshape(n_scenes, 2)
    full = Camera.from_fxfycxcy(600.0, 600.0, 319.5, 239.5, width=640, height=480)
    cams = [full.crop((250.0 + 9 * i, 170.0 - 5 * i, 390.0 + 9 * i, 310.0 - 3 * i), 40, 36) for i in range(n_scenes)]
    batch = gl.render(objs, poses, cams)
    assert len(batch) == n_scenes and batch.rgb.shape == (n_scenes, 36, 40, 3)
    for i in range(n_scenes):
        one = gl.render(objs, poses[i], cams[i])
        assert one.mask[0].sum() > 100
        assert np.array_equal(batch.instance[i], one.instance[0])
        assert np.array_equal(batch.mask[i], one.mask[0])
        assert np.allclose(batch.depth[i], one.depth[0], atol=1e-5)
        assert np.allclose(batch.xyz[i], one.xyz[0], atol=1e-5)
        assert np.allclose(batch.normal[i], one.normal[0], atol=1e-3)
        assert np.allclose(batch.rgb[i], one.rgb[0], atol=1.5 / 255)


def test_batch_split_over_several_passes() -> None:
    """More scenes than fit in one atlas: drawn in several passes, same result."""
    obj = make_object(vertex_colored_sphere())
    rng = np.random.default_rng(4)
    poses = random_poses(rng, 7, distance=0.35).reshape(7, 1)
    small = GLRenderer(max_atlas_height=2 * 48)
    try:
        a = small.render([obj], poses, camera(64, 48))
    finally:
        small.release()
    b = get_default_renderer().render([obj], poses, camera(64, 48))
    assert np.array_equal(a.instance, b.instance) and np.allclose(a.depth, b.depth, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Colours, textures, lighting, normals
# ----------------------------------------------------------------------------------------------------------
def test_vertex_colors(gl: GLRenderer, rc: RaycastRenderer) -> None:
    mesh = trimesh.creation.icosphere(2, radius=0.05)
    mesh.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(mesh.vertices), 1))
    cam = camera(32, 24)
    out = gl.render([make_object(mesh)], pose((0, 0, 0), (0, 0, 0.4)), cam, lighting=ALBEDO)
    assert np.allclose(out.rgb[0][out.mask[0]], np.array([10, 200, 30]) / 255.0, atol=1e-6)
    gradient = make_object(vertex_colored_sphere())
    p = pose((0.3, 0.2, 0.1), (0, 0, 0.3))
    a = gl.render([gradient], p, cam, lighting=ALBEDO)
    b = rc.render([gradient], p, cam, lighting=ALBEDO)
    v, u = 12, 15
    assert a.mask[0, v, u] and np.allclose(a.rgb[0, v, u], b.rgb[0, v, u], atol=2 / 255)
    assert a.rgb[0][a.mask[0]].std(axis=0).min() > 0.05  # the colours do vary over the sphere


def test_face_colors_and_default_grey(gl: GLRenderer) -> None:
    cam = camera(32, 24)
    out = gl.render([make_object(face_colored_box())], pose((0, 0, 0), (0, 0, 0.4)), cam, lighting=ALBEDO)
    assert np.allclose(out.rgb[0, 12, 16], np.array([200, 50, 210]) / 255.0, atol=1e-6)  # the -z side
    plain = trimesh.creation.box((0.05, 0.05, 0.05))
    out = gl.render([make_object(plain)], pose((0.3, 0.4, 0), (0, 0, 0.4)), cam, lighting=ALBEDO)
    assert np.allclose(out.rgb[0][out.mask[0]], np.asarray(DEFAULT_COLOR[:3]) / 255.0, atol=1e-6)


@pytest.mark.parametrize("pbr", [False, True])
def test_texture_is_upright_with_the_right_colours(gl: GLRenderer, pbr: bool) -> None:
    cam = Camera.from_fxfycxcy(400.0, 400.0, 15.5, 15.5, width=32, height=32)
    out = gl.render([make_object(textured_quad(pbr=pbr))], Pose(FLIP, [0.0, 0.0, 0.5]), cam, lighting=ALBEDO)
    img = quadrant_texture()
    expected = {(8, 8): img[0, 0], (8, 24): img[0, -1], (24, 8): img[-1, 0], (24, 24): img[-1, -1]}
    for (v, u), rgb in expected.items():
        assert np.allclose(out.rgb[0, v, u], rgb / 255.0, atol=1e-6), (v, u, out.rgb[0, v, u])


def test_pbr_base_color_factor_tints_the_texture(gl: GLRenderer) -> None:
    mesh = textured_quad(pbr=True)
    mesh.visual.material.baseColorFactor = np.array([128, 255, 64, 255], np.uint8)
    cam = Camera.from_fxfycxcy(400.0, 400.0, 15.5, 15.5, width=32, height=32)
    out = gl.render([make_object(mesh)], Pose(FLIP, [0.0, 0.0, 0.5]), cam, lighting=ALBEDO)
    assert np.allclose(out.rgb[0, 8, 8], [128 / 255, 0.0, 0.0], atol=1e-6)  # red texel × tint
    assert np.allclose(out.rgb[0, 24, 24], [128 / 255, 1.0, 64 / 255], atol=1e-6)  # white texel × tint


def test_lighting(gl: GLRenderer, rc: RaycastRenderer) -> None:
    obj = make_object(vertex_colored_sphere())
    p = pose((0.2, 0.1, 0.0), (0, 0, 0.3))
    cam = camera(48, 36)
    light = Lighting(ambient=0.1, diffuse=0.7, direction=(0.3, -0.5, -0.8), specular=0.4, shininess=8.0)
    a = gl.render([obj], p, cam, lighting=light)
    b = rc.render([obj], p, cam, lighting=light)
    both = a.mask & b.mask
    err = np.abs(a.rgb - b.rgb).max(-1)[both]
    assert np.median(err) <= 1 / 255 and np.quantile(err, 0.99) <= 4 / 255
    dark = gl.render([obj], p, cam, lighting=Lighting(ambient=0.0, diffuse=0.0))
    assert np.all(dark.rgb == 0) and dark.mask.sum() == a.mask.sum()
    default = gl.render([obj], p, cam)
    assert np.allclose(default.rgb, gl.render([obj], p, cam, lighting=Lighting()).rgb)


def test_normals_face_the_camera_whatever_the_winding(gl: GLRenderer) -> None:
    sphere = trimesh.creation.icosphere(4, radius=0.05)
    inverted = trimesh.Trimesh(sphere.vertices, sphere.faces[:, ::-1], process=False)
    p = pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.3))
    cam = camera(48, 36)
    a = gl.render([make_object(sphere)], p, cam)
    b = gl.render([make_object(inverted)], p, cam)
    assert np.array_equal(a.mask, b.mask)
    assert np.allclose(a.normal, b.normal, atol=1e-5) and np.allclose(a.rgb, b.rgb, atol=1.5 / 255)
    m = a.mask[0]
    cam_pts = pixel_rays(cam)[m] * a.depth[0][m][:, None]
    radial = (cam_pts - [0.0, 0.0, 0.3]) / 0.05
    assert np.sum(a.normal[0][m] * radial, axis=-1).min() > 0.99
    assert np.allclose(np.linalg.norm(a.normal[0][m], axis=-1), 1.0, atol=1e-5)
    assert np.all(a.normal[0][~m] == 0)


def test_open_mesh_shows_its_inside(gl: GLRenderer) -> None:
    """Looking into an open box: the inner (back) faces are drawn, with normals turned to the camera."""
    obj = make_object(open_box())
    p = pose((np.pi, 0.0, 0.0), (0.0, 0.0, 0.3))  # the open top (+z) faces the camera
    out = gl.render([obj], p, camera(48, 36))
    m = out.mask[0]
    assert m.mean() > 0.1
    bottom = np.abs(out.xyz[0][..., 2] - (-0.025)) < 1e-6  # the inside of the bottom face
    assert bottom[18, 24] and np.allclose(out.normal[0, 18, 24], [0.0, 0.0, -1.0], atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
def test_bad_input(gl: GLRenderer) -> None:
    obj = make_object(face_colored_box())
    cam = camera()
    with pytest.raises(ValueError, match="at least one object"):
        gl.render([], Pose.identity((0,)), cam)
    with pytest.raises(ValueError, match="1 objects but poses for 2"):
        gl.render([obj], Pose.identity((2,)), cam)
    with pytest.raises(ValueError, match="same width and height"):
        gl.render([obj], Pose.identity((2, 1)), [camera(64, 48), camera(32, 48)])
    with pytest.raises(ValueError, match="2 cameras for 3 scenes"):
        gl.render([obj], Pose.identity((3, 1)), [cam, cam])
    bad = Pose(np.full((1, 3, 3), np.nan), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        gl.render([obj], bad, cam)
    with pytest.raises(ValueError, match="near and far"):
        GLRenderer(near=0.1)
    with pytest.raises(ValueError, match="near < far"):
        GLRenderer(near=1.0, far=0.5)


def test_objects_behind_the_camera_or_clipped(gl: GLRenderer) -> None:
    obj = make_object(face_colored_box())
    out = gl.render([obj], pose((0, 0, 0), (0, 0, -0.5)), camera())
    assert not out.mask.any() and np.all(out.depth == 0) and np.all(out.instance == 0)
    fixed = GLRenderer(near=0.1, far=0.45)
    try:  # the far plane cuts through the box: its front face (z = 0.475) is beyond it
        assert not fixed.render([obj], pose((0, 0, 0), (0, 0, 0.5)), camera()).mask.any()
        assert fixed.render([obj], pose((0, 0, 0), (0, 0, 0.3)), camera()).mask.any()
    finally:
        fixed.release()


# ----------------------------------------------------------------------------------------------------------
# Culling, caching, output memory, threads
# ----------------------------------------------------------------------------------------------------------
def test_culling_closed_meshes_changes_nothing(gl: GLRenderer) -> None:
    objs = [make_object(torus(), 1), make_object(vertex_colored_sphere(), 2)]
    rng = np.random.default_rng(5)
    poses = random_poses(rng, 8, distance=0.3, spread=0.02).reshape(4, 2)
    two_sided = GLRenderer(cull_closed=False)
    try:
        a = gl.render(objs, poses, camera(48, 36))
        b = two_sided.render(objs, poses, camera(48, 36))
    finally:
        two_sided.release()
    assert np.array_equal(a.instance, b.instance)
    assert np.allclose(a.depth, b.depth, atol=1e-6) and np.allclose(a.rgb, b.rgb, atol=1.5 / 255)


def test_mesh_cache_reuse_bound_and_release() -> None:
    r = GLRenderer(max_cached_meshes=2)
    try:
        mesh = vertex_colored_sphere()
        cam, p = camera(32, 24), pose((0, 0, 0), (0, 0, 0.3))
        first = r.render([make_object(mesh, 1)], p, cam)
        r.render([make_object(mesh, 7)], p, cam)  # a new ObjectModel around the same mesh object
        assert r.cache_info()["meshes"] == 1
        others = [face_colored_box(), torus()]
        r.render([make_object(m) for m in others], Pose.stack([p, p]), cam)
        assert r.cache_info()["meshes"] == 2  # bounded
        mesh.apply_translation([0.01, 0.0, 0.0])  # in-place change: the cache notices
        moved = r.render([make_object(mesh)], p, cam)
        assert not np.array_equal(moved.mask, first.mask)
        del others
        gc.collect()
        r.render([make_object(mesh)], p, cam)
        assert r.cache_info()["meshes"] == 1  # the dropped meshes' buffers were released
    finally:
        r.release()


def test_no_stale_pixels_between_calls() -> None:
    """The atlas is only cleared where the previous pass drew: a sequence of different scenes must render
    exactly as a fresh renderer renders each of them."""
    objs = [make_object(torus(), 1), make_object(face_colored_box(), 2)]
    rng = np.random.default_rng(11)
    cam = camera(64, 48)
    big = pose((0.3, 0.2, 0.1), (0.0, 0.0, 0.12))  # fills the view
    straddling = pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.01))  # reaches behind the camera
    scenes = [
        (Pose.stack([big, pose((0, 0, 0), (0.02, 0, 0.5))]).reshape(1, 2), [cam]),
        (random_poses(rng, 6, distance=0.5).reshape(3, 2), [cam, camera(64, 48, f=60.0), cam]),
        (Pose.stack([straddling, pose((0, 0, 0), (0.3, 0, 0.5))]).reshape(1, 2), [cam]),
        (random_poses(rng, 4, distance=0.6).reshape(2, 2), [camera(64, 48, f=120.0)] * 2),
        (Pose.stack([pose((0, 0, 0), (5.0, 0, 0.5)), pose((0, 0, 0), (0.0, 0, -1.0))]).reshape(1, 2), [cam]),
    ]
    reused = GLRenderer()
    try:
        for poses, cams in scenes:
            out = reused.render(objs, poses, cams)
            fresh = GLRenderer()
            try:
                ref = fresh.render(objs, poses, cams)
            finally:
                fresh.release()
            assert np.array_equal(out.instance, ref.instance) and np.array_equal(out.depth, ref.depth)
            assert np.array_equal(out.rgb, ref.rgb) and np.array_equal(out.xyz, ref.xyz)
    finally:
        reused.release()


def test_drawn_region_bounds_every_fragment() -> None:
    """The rectangles recorded for the next clear contain every covered pixel (white-box check)."""
    objs = [make_object(torus(), 1), make_object(face_colored_box(), 2)]
    rng = np.random.default_rng(12)
    r = GLRenderer()
    try:
        for distance in (0.08, 0.2, 0.6):
            poses = random_poses(rng, 16, distance=distance, spread=0.05).reshape(8, 2)
            out = r.render(objs, poses, camera(64, 48))
            dirty = r._atlases[(64, 48, False)].dirty  # (width, height, geometry)
            assert dirty is not None
            covered = np.zeros((8 * 48, 64), bool)
            for x, y, w, h in dirty:
                covered[y : y + h, x : x + w] = True
            assert not np.any(out.mask.reshape(8 * 48, 64) & ~covered)
            assert covered.mean() < 1.0 or distance < 0.1  # and it is not everything
    finally:
        r.release()


def test_more_meshes_in_one_call_than_the_cache_holds() -> None:
    r = GLRenderer(max_cached_meshes=1)
    try:
        objs = [make_object(m(), i + 1) for i, m in enumerate((face_colored_box, textured_quad, torus))]
        placed = [
            pose((0.2, 0.3, 0), (-0.06, 0, 0.4)),
            pose((np.pi, 0, 0), (0.0, 0, 0.45)),
            pose((0, 0, 0), (0.06, 0, 0.4)),
        ]
        out = r.render(objs, Pose.stack(placed), camera(64, 48))
        assert set(np.unique(out.instance)) == {0, 1, 2, 3}  # textured and coloured programs in one pass
        assert r.cache_info()["meshes"] == 1
        ref = RaycastRenderer().render(objs, Pose.stack(placed), camera(64, 48))
        assert compare(out, ref)["instance_agree"] > 0.99
    finally:
        r.release()


def test_output_memory_is_never_overwritten_while_held() -> None:
    r = GLRenderer()
    try:
        obj = make_object(vertex_colored_sphere())
        cam = camera(32, 24)
        p1, p2 = pose((0, 0, 0), (0, 0, 0.3)), pose((0, 0, 0), (0.02, 0, 0.5))
        out1 = r.render([obj], p1, cam)
        keep = out1.depth.copy()
        view = out1.depth[0, 5:15]  # a view outliving its parent output
        view_copy = view.copy()
        address = out1.rgb.__array_interface__["data"][0]
        del out1
        out2 = r.render([obj], p2, cam)
        assert np.array_equal(view, view_copy) and not np.array_equal(out2.depth, keep)
        del view
        out3 = r.render([obj], p1, cam)  # out2 still held, the first slab is free again
        assert out3.rgb.__array_interface__["data"][0] == address
        assert np.array_equal(out3.depth, keep)
        assert not np.shares_memory(out2.depth, out3.depth)
        for a in (out3.rgb, out3.depth, out3.mask, out3.xyz, out3.normal, out3.instance):
            assert a.flags.c_contiguous
    finally:
        r.release()


def test_renderer_is_lazy_and_per_thread() -> None:
    r = GLRenderer()
    assert r._ctx is None  # nothing created before the first render
    assert isinstance(r, Renderer)
    r.render([make_object(face_colored_box())], pose((0, 0, 0), (0, 0, 0.4)), camera(16, 12))
    errors: list[BaseException] = []
    others: list[GLRenderer] = []

    def use() -> None:
        try:
            r.render([make_object(face_colored_box())], pose((0, 0, 0), (0, 0, 0.4)), camera(16, 12))
        except RuntimeError as exc:
            errors.append(exc)
        mine = get_default_renderer()
        mine.render([make_object(face_colored_box())], pose((0, 0, 0), (0, 0, 0.4)), camera(16, 12))
        others.append(mine)
        mine.release()

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    r.release()
    assert errors and "thread" in str(errors[0])
    assert others[0] is not get_default_renderer() and get_default_renderer() is get_default_renderer()


def test_object_model_fixture_is_valid() -> None:
    obj = make_object(face_colored_box())
    assert isinstance(obj, ObjectModel) and obj.render_mesh is obj.mesh
