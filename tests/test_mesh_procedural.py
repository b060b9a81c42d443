"""Procedural test objects: sizes, closedness, texture richness, determinism, asymmetry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from meshpose.mesh import (
    example_mesh,
    example_object,
    sample_surface_points,
    surface_colors,
    texture_image,
    texture_pattern,
    textured_box,
    vertex_colored_mesh,
)
from meshpose.mesh.simplify import merge_positions
from meshpose.types import ObjectModel


def _closed_parts(mesh: trimesh.Trimesh) -> list[bool]:
    """Watertightness of each connected part once vertices at the same position are merged."""
    v, f, _ = merge_positions(mesh.vertices, mesh.faces)
    merged = trimesh.Trimesh(v, f, process=False)
    return [part.is_watertight and part.volume > 0 for part in merged.split(only_watertight=False)]


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])


def _texture_is_rich(image: np.ndarray) -> None:
    """Strong grey-level contrast at several scales: what dense optical flow needs to lock on."""
    lum = _luminance(image)
    assert lum.std() > 25
    gy, gx = np.gradient(lum)
    grad = np.hypot(gx, gy)
    assert (grad > 4).mean() > 0.5  # little flat area
    # contrast survives at a coarser scale (8×8 block means)
    h, w = (s // 8 * 8 for s in lum.shape)
    coarse = lum[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))
    assert coarse.std() > 15


@pytest.mark.parametrize("kind", ["checker", "noise", "stripes"])
def test_texture_patterns_are_rich_and_deterministic(kind: str) -> None:
    a = texture_pattern(kind, 128, seed=1)  # type: ignore[arg-type]
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, texture_pattern(kind, 128, seed=1))  # type: ignore[arg-type]
    assert not np.array_equal(a, texture_pattern(kind, 128, seed=2))  # type: ignore[arg-type]
    _texture_is_rich(a)
    with pytest.raises(ValueError, match="unknown texture"):
        texture_pattern("plaid", 64)  # type: ignore[arg-type]


@pytest.mark.parametrize("texture", ["checker", "noise", "stripes"])
def test_textured_box(texture: str) -> None:
    box = textured_box((0.12, 0.08, 0.05), seed=3, texture=texture, texture_px=64)  # type: ignore[arg-type]
    np.testing.assert_allclose(box.extents, [0.12, 0.08, 0.05], atol=1e-12)
    np.testing.assert_allclose(box.bounds.mean(axis=0), 0.0, atol=1e-12)
    assert isinstance(box.visual, trimesh.visual.TextureVisuals)
    image = texture_image(box)
    assert image is not None and image.mode == "RGB" and image.size == (192, 128)
    assert box.visual.uv.min() > 0 and box.visual.uv.max() < 1
    assert _closed_parts(box) == [True]
    np.testing.assert_allclose(box.volume, 0.12 * 0.08 * 0.05)
    # flat normals, pointing out
    assert np.all(np.einsum("ij,ij->i", box.face_normals, box.triangles_center) > 0)
    _texture_is_rich(np.asarray(image))
    # deterministic per seed
    again = textured_box((0.12, 0.08, 0.05), seed=3, texture=texture, texture_px=64)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.asarray(texture_image(again)), np.asarray(image))
    np.testing.assert_array_equal(again.visual.uv, box.visual.uv)
    other = textured_box((0.12, 0.08, 0.05), seed=4, texture=texture, texture_px=64)  # type: ignore[arg-type]
    assert not np.array_equal(np.asarray(texture_image(other)), np.asarray(image))


def test_textured_box_sides_look_different() -> None:
    box = textured_box((0.1, 0.1, 0.1), seed=0, texture="checker", texture_px=64)
    pts = sample_surface_points(box, 6000, seed=0)
    axis = np.argmax(np.abs(pts), axis=1)
    side = 2 * axis + (pts[np.arange(len(pts)), axis] < 0)
    means = np.array([surface_colors(box, pts[side == k]).mean(axis=0) for k in range(6)])
    for i, j in itertools.combinations(range(6), 2):
        assert np.abs(means[i] - means[j]).max() > 0.01


_SIZES = {
    "icosphere": (0.1, 0.1, 0.1),
    "cylinder": (0.07, 0.07, 0.1),
    "capsule": (0.05, 0.05, 0.1),
    "cone": (0.08, 0.08, 0.1),
    "torus": (0.1, 0.1, 0.03),
    "box": (0.1, 0.1, 0.1),
}


@pytest.mark.parametrize("kind", list(_SIZES))
def test_vertex_colored_mesh(kind: str) -> None:
    mesh = vertex_colored_mesh(kind, seed=5)  # type: ignore[arg-type]
    np.testing.assert_allclose(np.sort(mesh.extents), np.sort(_SIZES[kind]), rtol=0.01)
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)
    assert 1000 <= len(mesh.faces) <= 20_000
    assert _closed_parts(mesh) == [True]
    assert mesh.visual.kind == "vertex"
    np.testing.assert_allclose(np.linalg.norm(mesh.vertex_normals, axis=1), 1.0, atol=1e-9)
    # high-frequency colours with strong luminance contrast
    lum = _luminance(mesh.visual.vertex_colors)
    assert lum.std() > 40
    # neighbouring vertices differ: colour changes over a few millimetres
    positions, first = np.unique(mesh.vertices, axis=0, return_index=True)  # split copies share a colour
    tree = cKDTree(positions)
    near = tree.query(positions, k=2)[0][:, 1]
    assert np.median(near) < 0.005
    pairs = tree.query_pairs(0.012, output_type="ndarray")
    assert np.abs(lum[first[pairs[:, 0]]] - lum[first[pairs[:, 1]]]).mean() > 10
    # deterministic
    again = vertex_colored_mesh(kind, seed=5)  # type: ignore[arg-type]
    np.testing.assert_array_equal(again.vertices, mesh.vertices)
    np.testing.assert_array_equal(again.visual.vertex_colors, mesh.visual.vertex_colors)
    other = vertex_colored_mesh(kind, seed=6)  # type: ignore[arg-type]
    assert not np.array_equal(other.visual.vertex_colors, mesh.visual.vertex_colors)


def test_vertex_colored_mesh_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        vertex_colored_mesh("teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size_m"):
        vertex_colored_mesh("box", size_m=0.0)


def test_example_mesh_is_textured_closed_and_sized() -> None:
    mesh = example_mesh(seed=0)
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    image = texture_image(mesh)
    assert image is not None and image.size == (1020, 1020)
    assert len(mesh.faces) <= 20_000
    extent = mesh.extents
    assert 0.1 <= extent.max() <= 0.2
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-12)
    assert _closed_parts(mesh) == [True, True, True, True]
    _texture_is_rich(np.asarray(image))
    again = example_mesh(seed=0)
    np.testing.assert_array_equal(again.vertices, mesh.vertices)
    np.testing.assert_array_equal(np.asarray(texture_image(again)), np.asarray(image))
    other = example_mesh(seed=1)
    np.testing.assert_array_equal(other.vertices, mesh.vertices)  # same shape, different texture
    assert not np.array_equal(np.asarray(texture_image(other)), np.asarray(image))


def test_example_mesh_shape_is_asymmetric() -> None:
    # No proper rotation of the 24-element cube group (the candidates for a box-like shape) maps the shape
    # onto itself: the one-sided chamfer distance stays large for every non-identity rotation.
    mesh = example_mesh(seed=0)
    pts = sample_surface_points(mesh, 3000, seed=0)
    pts -= pts.mean(axis=0)
    tree = cKDTree(pts)
    rotations = [
        np.array(p) * np.array(s)[:, None]
        for p in itertools.permutations(np.eye(3))
        for s in itertools.product([1, -1], repeat=3)
    ]
    rotations = [r for r in rotations if np.linalg.det(r) > 0]
    assert len(rotations) == 24
    errors = [tree.query(pts @ r.T)[0].mean() for r in rotations if not np.allclose(r, np.eye(3))]
    assert min(errors) > 0.005  # > 5 mm mean, while sampling noise is ~1 mm


def test_example_object() -> None:
    obj = example_object()
    assert isinstance(obj, ObjectModel)
    assert obj.obj_id == 1 and obj.name == "example"
    assert 0.1 < obj.diameter < 0.2
    assert not obj.is_symmetric
    assert obj.render_mesh is obj.mesh  # within the render budget
    assert obj.points.shape == (2048, 3)
    np.testing.assert_array_equal(example_object().points, obj.points)
    # the points are on the outer surface: on the mesh, and not inside any of its overlapping parts
    v, f, _ = merge_positions(obj.mesh.vertices, obj.mesh.faces)
    parts = trimesh.Trimesh(v, f, process=False).split(only_watertight=False)
    assert len(parts) == 4
    depth_inside = max(trimesh.proximity.signed_distance(part, obj.points).max() for part in parts)
    assert depth_inside < 1e-6
    assert trimesh.proximity.closest_point(obj.mesh, obj.points)[1].max() < 1e-4  # trimesh snaps within ~20 µm
