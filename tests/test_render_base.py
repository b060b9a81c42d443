"""The renderer seam (render/base.py): argument checks, lighting, and the mesh → surface-attribute flattening."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from meshpose.render.base import (
    DEFAULT_COLOR,
    Lighting,
    RenderOutput,
    closed_orientation,
    corner_normals,
    normalize_scene_batch,
    surface_data,
)
from meshpose.types import Pose
from support.render_fixtures import (
    camera,
    face_colored_box,
    make_object,
    textured_quad,
    torus,
    vertex_colored_sphere,
)


# ----------------------------------------------------------------------------------------------------------
# normalize_scene_batch
# ----------------------------------------------------------------------------------------------------------
def test_normalize_scene_batch_shapes() -> None:
    objs = [make_object(face_colored_box()), make_object(torus(), 2)]
    cam = camera()
    poses, cams = normalize_scene_batch(objs, Pose.identity((2,)), cam)
    assert tuple(poses.batch_shape) == (1, 2) and cams == [cam]
    poses, cams = normalize_scene_batch(objs, Pose.identity((3, 2)), [cam, cam, cam])
    assert tuple(poses.batch_shape) == (3, 2) and len(cams) == 3


@pytest.mark.parametrize(
    ("n_objects", "pose_shape", "n_cams", "message"),
    [
        (0, (0,), 1, "at least one object"),
        (2, (3,), 1, "2 objects but poses for 3"),
        (1, (2, 1, 1), 1, r"batch shape \(N,\) or \(B, N\)"),
        (1, (3, 1), 2, "2 cameras for 3 scenes"),
    ],
)
def test_normalize_scene_batch_errors(n_objects: int, pose_shape: tuple[int, ...], n_cams: int, message: str) -> None:
    objs = [make_object(face_colored_box(), i + 1) for i in range(n_objects)]
    cams = camera() if n_cams == 1 else [camera()] * n_cams
    with pytest.raises(ValueError, match=message):
        normalize_scene_batch(objs, Pose.identity(pose_shape), cams)


def test_normalize_scene_batch_rejects_mixed_sizes() -> None:
    with pytest.raises(ValueError, match="same width and height"):
        normalize_scene_batch(
            [make_object(face_colored_box())], Pose.identity((2, 1)), [camera(64, 48), camera(48, 64)]
        )


# ----------------------------------------------------------------------------------------------------------
# Lighting and RenderOutput
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"ambient": -0.1}, {"diffuse": float("nan")}, {"direction": (0.0, 0.0, 0.0)}, {"color": (1.0, -1.0, 1.0)}],
)
def test_lighting_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="Lighting"):
        Lighting(**kwargs)


def test_lighting_unit_direction() -> None:
    assert np.allclose(Lighting(direction=(0.0, 3.0, -4.0)).unit_direction, [0.0, 0.6, -0.8])


def test_render_output_indexing_keeps_batch_axis_and_timings() -> None:
    b, h, w = 3, 4, 5
    out = RenderOutput(
        np.zeros((b, h, w, 3), np.float32),
        np.arange(b * h * w, dtype=np.float32).reshape(b, h, w),
        np.zeros((b, h, w), bool),
        np.zeros((b, h, w, 3), np.float32),
        np.zeros((b, h, w, 3), np.float32),
        np.zeros((b, h, w), np.int32),
        {"total": 1.0},
    )
    one = out[1]
    assert len(one) == 1 and one.depth.shape == (1, h, w)
    assert np.array_equal(one.depth[0], out.depth[1]) and one.timings == {"total": 1.0}
    assert len(out[1:]) == 2


# ----------------------------------------------------------------------------------------------------------
# corner normals, closedness
# ----------------------------------------------------------------------------------------------------------
def test_corner_normals_box_is_flat_and_sphere_is_smooth() -> None:
    box = trimesh.creation.box()
    assert np.allclose(corner_normals(box.vertices, box.faces, 30.0), box.face_normals[:, None, :])
    sphere = trimesh.creation.icosphere(3)
    smooth = corner_normals(sphere.vertices, sphere.faces, 30.0)
    radial = sphere.vertices[sphere.faces] / np.linalg.norm(sphere.vertices[sphere.faces], axis=-1, keepdims=True)
    assert np.min(np.sum(smooth * radial, axis=-1)) > 0.9999
    flat = corner_normals(sphere.vertices, sphere.faces, 0.0)
    assert np.allclose(flat, sphere.face_normals[:, None, :])


def test_corner_normals_follow_each_face_winding() -> None:
    sphere = trimesh.creation.icosphere(2)
    faces = sphere.faces.copy()
    faces[::3] = faces[::3, ::-1]  # flip every third face
    normals = corner_normals(sphere.vertices, faces, 30.0)
    tri = sphere.vertices[faces]
    winding = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(np.einsum("fj,fkj->fk", winding, normals) > 0)
    assert np.allclose(np.linalg.norm(normals, axis=-1), 1.0)


def test_closed_orientation() -> None:
    box = trimesh.creation.box()
    assert closed_orientation(box.vertices, box.faces) == 1
    assert closed_orientation(box.vertices, box.faces[:, ::-1]) == -1
    assert closed_orientation(box.vertices, box.faces[:-1]) == 0  # a hole
    flipped = box.faces.copy()
    flipped[0] = flipped[0, ::-1]
    assert closed_orientation(box.vertices, flipped) == 0  # inconsistent winding
    # The same closed surface with vertices split per face (as loaders produce) is still closed.
    split = box.vertices[box.faces].reshape(-1, 3)
    assert closed_orientation(split, np.arange(len(split)).reshape(-1, 3)) == 1
    # Two parts of opposite orientation: not safe to cull either way.
    small = trimesh.creation.box((0.2, 0.2, 0.2))
    v = np.vstack([box.vertices, small.vertices])
    assert closed_orientation(v, np.vstack([box.faces, small.faces[:, ::-1] + 8])) == 0
    assert closed_orientation(v, np.vstack([box.faces, small.faces + 8])) == 1


# ----------------------------------------------------------------------------------------------------------
# surface_data: colours, texture, splitting
# ----------------------------------------------------------------------------------------------------------
def test_surface_data_face_colors_stay_flat() -> None:
    mesh = face_colored_box()
    data = surface_data(mesh)
    assert data.faces.shape == (12, 3) and data.uvs is None and data.texture is None
    for f in range(12):
        assert np.all(data.colors[data.faces[f]] == mesh.visual.face_colors[f])
    assert data.orientation == 1
    assert np.allclose(data.center, 0.0) and np.isclose(data.radius, np.linalg.norm([0.04, 0.03, 0.025]))


def test_surface_data_vertex_colors_shared_vertices() -> None:
    mesh = vertex_colored_sphere()
    data = surface_data(mesh)
    assert len(data.positions) == len(mesh.vertices)  # smooth surface, per-vertex colours: nothing to split
    src = data.faces  # vertex k of the data maps back to the mesh vertex at the same position
    lookup = {tuple(p): i for i, p in enumerate(np.asarray(mesh.vertices))}
    idx = np.array([lookup[tuple(p)] for p in data.positions])
    assert np.array_equal(data.colors, mesh.visual.vertex_colors[idx])
    assert np.array_equal(idx[src], mesh.faces)


def test_surface_data_default_color() -> None:
    data = surface_data(trimesh.creation.icosphere(1))
    assert np.all(data.colors == np.asarray(DEFAULT_COLOR, np.uint8))
    data = surface_data(trimesh.creation.icosphere(1), default_color=(1, 2, 3, 255))
    assert np.all(data.colors == [1, 2, 3, 255])


@pytest.mark.parametrize("pbr", [False, True])
def test_surface_data_texture(pbr: bool) -> None:
    data = surface_data(textured_quad(pbr=pbr))
    assert data.textured and data.texture is not None and data.uvs is not None
    assert data.texture.shape == (16, 16, 4) and data.texture.dtype == np.uint8
    assert np.array_equal(data.texture[0, 0, :3], [255, 0, 0])  # row 0 = top of the image
    assert np.all(data.colors == 255)  # no tint


def test_surface_data_pbr_tint_and_textureless_material() -> None:
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    image = Image.new("RGB", (4, 4), (200, 100, 50))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, baseColorFactor=[0.5, 1.0, 1.0, 1.0])
    tri.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    data = surface_data(tri)
    assert data.textured and np.all(data.colors[:, :3] == [128, 255, 255])
    plain = trimesh.visual.material.PBRMaterial(baseColorFactor=[0, 255, 0, 255])
    tri.visual = trimesh.visual.TextureVisuals(uv=uv, material=plain)
    data = surface_data(tri)
    assert not data.textured and np.all(data.colors == [0, 255, 0, 255])


def test_surface_data_rejects_empty_mesh() -> None:
    with pytest.raises(ValueError, match="without triangles"):
        surface_data(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), int), process=False))
