"""Decimation keeps the budget, the shape and the appearance."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from meshpose.mesh import (
    example_mesh,
    mesh_diameter,
    sample_surface_points,
    simplify_mesh,
    surface_colors,
    texture_image,
    textured_box,
    vertex_colored_mesh,
)
from meshpose.mesh.simplify import corner_normals, merge_positions, split_corners, uv_islands


def _hausdorff(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 2000) -> float:
    """Symmetric Hausdorff distance estimated from surface samples of both meshes (metres)."""
    d_ab = trimesh.proximity.closest_point(b, sample_surface_points(a, n, seed=1))[1]
    d_ba = trimesh.proximity.closest_point(a, sample_surface_points(b, n, seed=2))[1]
    return float(max(d_ab.max(), d_ba.max()))


def _color_errors(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 3000) -> np.ndarray:
    """Per-point mean absolute RGB difference (0–255) between the colours of ``a`` and ``b`` at points of
    ``a``."""
    pts = sample_surface_points(a, n, seed=3)
    return np.asarray(np.abs(surface_colors(a, pts) - surface_colors(b, pts)).mean(axis=1) * 255)


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    mesh = vertex_colored_mesh("icosphere", seed=0, target_faces=20_000)
    assert len(mesh.faces) == 20_480
    return mesh


def test_under_budget_returns_the_same_object() -> None:
    mesh = vertex_colored_mesh("cylinder", seed=0, target_faces=1000)
    assert simplify_mesh(mesh, max_faces=len(mesh.faces)) is mesh
    assert simplify_mesh(mesh) is mesh


@pytest.mark.parametrize("budget", [50, 1000, 8000])
def test_face_budget_is_respected_and_shape_kept(sphere: trimesh.Trimesh, budget: int) -> None:
    out = simplify_mesh(sphere, max_faces=budget)
    assert 0.5 * budget <= len(out.faces) <= budget
    assert out.metadata["simplified_from_faces"] == len(sphere.faces)
    tolerance = {50: 0.15, 1000: 0.01, 8000: 0.004}[budget]
    assert _hausdorff(sphere, out) < tolerance * mesh_diameter(sphere)
    merged_v, merged_f, _ = merge_positions(out.vertices, out.faces)
    assert trimesh.Trimesh(merged_v, merged_f, process=False).is_watertight


def test_vertex_colours_are_transferred_exactly_for_a_linear_colour_field() -> None:
    # colour = affine function of position: interpolation at the closest surface point is exact
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.05)
    rgb = np.clip((mesh.vertices / 0.05 + 1.0) / 2.0, 0, 1) * 255
    mesh.visual.vertex_colors = np.c_[rgb, np.full(len(rgb), 255)].astype(np.uint8)
    out = simplify_mesh(mesh, max_faces=2000)
    assert out.visual.kind == "vertex"
    want = np.clip((out.vertices / 0.05 + 1.0) / 2.0, 0, 1) * 255
    assert np.abs(out.visual.vertex_colors[:, :3] - want).max() < 3.0  # uint8 rounding + off-surface vertices


def test_vertex_colours_are_preserved(sphere: trimesh.Trimesh) -> None:
    out = simplify_mesh(sphere, max_faces=10_000)
    err = _color_errors(sphere, out)
    pts = sample_surface_points(sphere, 3000, seed=3)
    colours = surface_colors(sphere, pts) * 255
    spread = np.abs(colours - colours.mean(axis=0)).mean()  # error of a uniform colour: ~70
    assert spread > 50
    assert err.mean() < 12.0 < spread / 4


def test_texture_is_kept_and_colours_preserved_across_seams() -> None:
    mesh = example_mesh(seed=0)  # 24 UV islands, box-projected
    assert len(np.unique(uv_islands(mesh))) == 24
    out = simplify_mesh(mesh, max_faces=600)
    assert len(out.faces) <= 600
    assert isinstance(out.visual, trimesh.visual.TextureVisuals)
    assert texture_image(out) is not None
    assert texture_image(out).size == texture_image(mesh).size  # type: ignore[union-attr]
    assert _hausdorff(mesh, out) < 0.02 * mesh_diameter(mesh)
    err = _color_errors(mesh, out)
    # interpolating UVs across seams naively gives a mean error of ~40 here; the seam handling keeps it small
    assert err.mean() < 5.0
    assert np.median(err) < 0.5
    # explicit per-vertex normals (from corner normals over merged geometry) survive
    np.testing.assert_allclose(np.linalg.norm(out.vertex_normals, axis=1), 1.0, atol=1e-6)


def test_flat_textured_box_is_transferred_exactly() -> None:
    box = textured_box((0.1, 0.07, 0.05), seed=1, texture="noise", texture_px=64, segments=20)
    assert len(box.faces) == 4800
    out = simplify_mesh(box, max_faces=200)
    assert len(out.faces) <= 200
    np.testing.assert_allclose(out.extents, box.extents, atol=1e-9)
    assert _color_errors(box, out).max() < 0.5


def test_face_colours_are_preserved() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.05)
    mesh.visual.face_colors = np.where(mesh.triangles_center[:, [0]] > 0, [255, 0, 0, 255], [0, 0, 255, 255])
    out = simplify_mesh(mesh, max_faces=500)
    assert out.visual.kind == "face"
    want = np.where(out.triangles_center[:, 0] > 0, 255, 0)
    agree = (out.visual.face_colors[:, 0] == want).mean()
    assert agree > 0.95


def test_mesh_without_appearance_and_bad_budget() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=4)
    out = simplify_mesh(mesh, max_faces=300)
    assert len(out.faces) <= 300
    with pytest.raises(ValueError, match="at least 4"):
        simplify_mesh(mesh, max_faces=3)


def test_triangle_soup_is_merged_before_decimation() -> None:
    # every face has its own three vertices: without merging, all edges would be borders and nothing collapses
    base = trimesh.creation.icosphere(subdivisions=4, radius=0.05)
    soup = trimesh.Trimesh(base.triangles.reshape(-1, 3), np.arange(3 * len(base.faces)).reshape(-1, 3), process=False)
    out = simplify_mesh(soup, max_faces=400)
    assert len(out.faces) <= 400
    assert _hausdorff(base, out) < 0.02 * 0.1


def test_corner_normals_keep_creases_and_smooth_curves() -> None:
    box = trimesh.creation.box((1.0, 2.0, 3.0))
    normals = corner_normals(box.vertices, box.faces)
    np.testing.assert_allclose(normals, np.repeat(box.face_normals[:, None], 3, axis=1), atol=1e-12)
    sphere = trimesh.creation.icosphere(subdivisions=3)
    normals = corner_normals(sphere.vertices, sphere.faces)
    radial = sphere.vertices[sphere.faces]
    assert np.einsum("fkc,fkc->fk", normals, radial).min() > 0.995


def test_split_corners_splits_only_where_needed() -> None:
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    v, f, uv, n = split_corners(box.vertices, box.faces, None, corner_normals(box.vertices, box.faces))
    assert uv is None
    assert len(v) == 24  # 8 corners × 3 sides
    np.testing.assert_allclose(v[f], box.vertices[box.faces])
    np.testing.assert_allclose(n[f], np.repeat(box.face_normals[:, None], 3, axis=1), atol=1e-12)


def test_a_mesh_that_will_not_reach_the_budget_keeps_its_smallest_decimation(caplog: pytest.LogCaptureFixture) -> None:
    # A vertex-coloured cone: its vertices are split along the rims, which pins the decimation above 3000 faces.
    from meshpose.mesh import vertex_colored_mesh

    cone = vertex_colored_mesh("cone", seed=2, size_m=0.1)
    with caplog.at_level("WARNING"):
        out = simplify_mesh(cone, max_faces=3000)
    assert 3000 < len(out.faces) < len(cone.faces)
    assert "could not reach 3000" in caplog.text
