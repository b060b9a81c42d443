"""Loading meshes: round trips through ply/obj/glb, units, and the errors a user sees."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import trimesh

from meshpose.mesh import (
    MeshError,
    load_mesh,
    sample_surface_points,
    surface_colors,
    texture_image,
    textured_box,
    vertex_colored_mesh,
)


def _color_error(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 1500) -> float:
    """Mean absolute RGB difference (0–255 scale) between two meshes' colours at points on ``a``."""
    pts = sample_surface_points(a, n, seed=5)
    return float(np.abs(surface_colors(a, pts) - surface_colors(b, pts)).mean() * 255)


# ------------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------------
def test_ply_with_vertex_colours_round_trip(tmp_path: Path) -> None:
    mesh = vertex_colored_mesh("capsule", seed=3, target_faces=1500)
    path = tmp_path / "capsule.ply"
    mesh.export(path)
    loaded = load_mesh(path)
    assert loaded.visual.kind == "vertex"
    assert len(loaded.faces) == len(mesh.faces)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)  # ply stores float32
    np.testing.assert_array_equal(loaded.visual.vertex_colors, mesh.visual.vertex_colors)
    assert loaded.metadata["units"] == "m" and loaded.metadata["scale_to_m"] == 1.0
    assert "_ply_raw" not in loaded.metadata


def test_obj_with_mtl_and_png_texture_round_trip(tmp_path: Path) -> None:
    mesh = textured_box((0.1, 0.07, 0.05), seed=2, texture="checker", texture_px=64)
    path = tmp_path / "box.obj"
    mesh.export(path)
    assert list(tmp_path.glob("*.mtl")) and list(tmp_path.glob("*.png"))
    loaded = load_mesh(path)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    image = texture_image(loaded)
    assert image is not None and image.size == texture_image(mesh).size  # type: ignore[union-attr]
    # process=False keeps the UV seams: one vertex per (position, uv) pair, as written
    assert len(loaded.vertices) == len(mesh.vertices)
    np.testing.assert_allclose(loaded.extents, [0.1, 0.07, 0.05], atol=1e-7)
    assert _color_error(mesh, loaded) < 0.5


def test_glb_with_texture_round_trip(tmp_path: Path) -> None:
    mesh = textured_box((0.06, 0.05, 0.04), seed=4, texture="noise", texture_px=64)
    path = tmp_path / "box.glb"
    mesh.export(path)
    loaded = load_mesh(path)
    assert loaded.visual.kind == "texture"
    assert texture_image(loaded) is not None
    assert _color_error(mesh, loaded) < 0.5


def test_glb_with_vertex_colours_round_trip(tmp_path: Path) -> None:
    mesh = vertex_colored_mesh("torus", seed=1, target_faces=1000)
    path = tmp_path / "torus.glb"
    mesh.export(path)
    loaded = load_mesh(path)
    assert loaded.visual.kind == "vertex"
    np.testing.assert_array_equal(loaded.visual.vertex_colors, mesh.visual.vertex_colors)


def test_scene_is_concatenated_with_transforms(tmp_path: Path) -> None:
    a = vertex_colored_mesh("icosphere", seed=0, size_m=0.05, target_faces=320)
    b = vertex_colored_mesh("box", seed=1, size_m=0.04, target_faces=300)
    scene = trimesh.Scene()
    scene.add_geometry(a, transform=trimesh.transformations.translation_matrix([0.1, 0.0, 0.0]))
    scene.add_geometry(b, transform=trimesh.transformations.translation_matrix([0.0, 0.0, -0.2]))
    path = tmp_path / "scene.glb"
    scene.export(path)
    loaded = load_mesh(path)
    assert len(loaded.faces) == len(a.faces) + len(b.faces)
    np.testing.assert_allclose(loaded.bounds, [[-0.02, -0.025, -0.22], [0.125, 0.025, 0.025]], atol=1e-6)
    assert loaded.visual.kind == "vertex"


def test_scene_of_textured_parts_keeps_a_texture(tmp_path: Path) -> None:
    a = textured_box((0.05, 0.05, 0.05), seed=1, texture="checker", texture_px=32)
    b = textured_box((0.03, 0.03, 0.03), seed=2, texture="stripes", texture_px=32)
    b.apply_translation([0.1, 0.0, 0.0])
    path = tmp_path / "two.obj"
    trimesh.Scene([a, b]).export(path)
    loaded = load_mesh(path)
    assert loaded.visual.kind == "texture"
    assert len(loaded.faces) == 24


def test_scene_mixing_texture_and_vertex_colours_falls_back_to_vertex_colours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = textured_box((0.05, 0.05, 0.05), seed=1, texture_px=32)
    b = vertex_colored_mesh("icosphere", seed=2, size_m=0.03, target_faces=320)
    b.apply_translation([0.1, 0.0, 0.0])
    path = tmp_path / "mixed.glb"
    trimesh.Scene([a, b]).export(path)
    with caplog.at_level(logging.WARNING, logger="meshpose.mesh.load"):
        loaded = load_mesh(path)
    assert "mixes textured and untextured" in caplog.text and "mixed.glb" in caplog.text
    assert loaded.visual.kind == "vertex"
    colors = np.asarray(loaded.visual.vertex_colors)
    assert colors[:, :3].std() > 10  # not trimesh's uniform default grey


# ------------------------------------------------------------------------------------------------------
# Units
# ------------------------------------------------------------------------------------------------------
def _mm_box(tmp_path: Path, name: str = "box_mm.ply") -> Path:
    mesh = vertex_colored_mesh("box", seed=0, size_m=0.1, target_faces=300)
    mesh.apply_scale(1000.0)  # 100 mm cube, as BOP stores models
    path = tmp_path / name
    mesh.export(path)
    return path


def test_mm_units_are_scaled_to_metres(tmp_path: Path) -> None:
    mesh = load_mesh(_mm_box(tmp_path), units="mm")
    np.testing.assert_allclose(mesh.extents, [0.1, 0.1, 0.1], atol=1e-6)
    assert mesh.metadata["units"] == "mm" and mesh.metadata["scale_to_m"] == 1e-3
    # normals survive the scaling (unit length, outward)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertex_normals, axis=1), 1.0, atol=1e-6)


def test_metres_on_a_millimetre_mesh_raises_and_suggests_mm(tmp_path: Path) -> None:
    path = _mm_box(tmp_path, "obj_000001.ply")
    with pytest.raises(MeshError, match=r"obj_000001\.ply is 100\.0 units across.*units='mm'"):
        load_mesh(path)


def test_millimetres_on_a_metre_mesh_raises(tmp_path: Path) -> None:
    path = tmp_path / "tiny.ply"
    trimesh.creation.box((0.1, 0.1, 0.1)).export(path)
    with pytest.raises(MeshError, match=r"tiny\.ply.*units='m'"):
        load_mesh(path, units="mm")


def test_auto_units_choose_and_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mm_path = _mm_box(tmp_path)
    m_path = tmp_path / "box_m.ply"
    trimesh.creation.box((0.1, 0.2, 0.3)).export(m_path)
    with caplog.at_level(logging.INFO, logger="meshpose.mesh.load"):
        from_mm = load_mesh(mm_path, units="auto")
        from_m = load_mesh(m_path, units="auto")
    assert from_mm.metadata["units"] == "mm" and from_m.metadata["units"] == "m"
    np.testing.assert_allclose(from_mm.extents, [0.1, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(from_m.extents, [0.1, 0.2, 0.3], atol=1e-7)
    assert "box_mm.ply" in caplog.text and "in mm" in caplog.text


def test_bad_units_argument() -> None:
    with pytest.raises(ValueError, match="units"):
        load_mesh("whatever.ply", units="cm")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------
# Errors name the file and the problem
# ------------------------------------------------------------------------------------------------------
_PLY_HEADER = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"


def _write_bad(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Write a broken file; returns its path and a regex its error message must match."""
    if case == "missing":
        return tmp_path / "nowhere.ply", "does not exist"
    if case == "empty":
        path = tmp_path / "empty.ply"
        path.write_bytes(b"")
        return path, "is empty"
    if case == "broken_ply":
        path = tmp_path / "broken.ply"
        path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\nfoo bar\n")
        return path, "could not be read"
    if case == "garbage_glb":
        path = tmp_path / "garbage.glb"
        path.write_bytes(b"\x00\x01 this is not a glb file")
        return path, "could not be read"
    if case == "unsupported":
        path = tmp_path / "mesh.xyz123"
        path.write_text("1 2 3\n")
        return path, "cannot read the format"
    if case == "point_cloud":
        path = tmp_path / "cloud.ply"
        trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(path)
        return path, "point cloud"
    if case == "no_faces_obj":
        path = tmp_path / "vertices_only.obj"
        path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
        return path, "point cloud|no geometry|no faces"
    if case == "nan":
        path = tmp_path / "nan.obj"
        path.write_text("v 0 0 nan\nv 0.1 0 0\nv 0 0.1 0\nv 0.1 0.1 0\nf 1 2 3\nf 2 4 3\n")
        return path, "NaN or inf"
    if case == "out_of_range":
        path = tmp_path / "oor.ply"
        path.write_text(
            _PLY_HEADER + "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
            "0 0 0\n0.1 0 0\n0 0.1 0\n3 0 1 9\n"
        )
        return path, "out of range"
    if case == "out_of_range_obj":
        path = tmp_path / "oor.obj"
        path.write_text("v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nf 1 2 7\n")
        return path, "out of range|could not be read"
    if case == "zero_area":
        path = tmp_path / "flat.obj"
        path.write_text("v 0 0 0\nv 0.1 0 0\nv 0.2 0 0\nf 1 2 3\n")
        return path, "zero area"
    if case == "directory":
        path = tmp_path / "a_dir.ply"
        path.mkdir()
        return path, "not a file"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "broken_ply",
        "garbage_glb",
        "unsupported",
        "point_cloud",
        "no_faces_obj",
        "nan",
        "out_of_range",
        "out_of_range_obj",
        "zero_area",
        "directory",
    ],
)
def test_bad_files_raise_mesh_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path, pattern = _write_bad(tmp_path, case)
    with pytest.raises(MeshError, match=pattern) as info:
        load_mesh(path)
    assert path.name in str(info.value)
    assert isinstance(info.value, ValueError)
