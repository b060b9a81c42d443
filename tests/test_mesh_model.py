"""ObjectModel construction, symmetry validation and the load cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from meshpose.mesh import (
    MeshError,
    clear_cache,
    light_model,
    load_object_model,
    make_object_model,
    mesh_diameter,
    validate_symmetries,
    vertex_colored_mesh,
)
from meshpose.mesh import model as model_module
from meshpose.types import ObjectModel


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    clear_cache()


def _rot_z(angle: float, t: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    m = trimesh.transformations.rotation_matrix(angle, [0, 0, 1])
    m[:3, 3] = t
    return m


def test_make_object_model_fills_every_field() -> None:
    mesh = vertex_colored_mesh("cylinder", seed=1, target_faces=3000)
    obj = make_object_model(mesh, 7, name="can", max_render_faces=1000, num_points=500, seed=2)
    assert isinstance(obj, ObjectModel)
    assert obj.obj_id == 7 and obj.name == "can"
    assert obj.mesh is mesh
    assert len(obj.render_mesh.faces) <= 1000 and obj.render_mesh.visual.kind == "vertex"
    assert obj.diameter == pytest.approx(mesh_diameter(mesh))
    assert obj.diameter == pytest.approx(np.hypot(0.07, 0.1), rel=1e-4)  # cylinder r=0.035, h=0.1
    assert obj.points.shape == (500, 3) and obj.points.dtype == np.float64
    assert not obj.points.flags.writeable
    np.testing.assert_array_equal(obj.symmetries, np.eye(4)[None])
    assert not obj.is_symmetric
    # deterministic
    again = make_object_model(mesh, 7, name="can", max_render_faces=1000, num_points=500, seed=2)
    np.testing.assert_array_equal(obj.points, again.points)


def test_symmetries_are_validated_and_kept() -> None:
    box = vertex_colored_mesh("box", seed=0, size_m=0.1, target_faces=500)
    sym = np.stack([np.eye(4), _rot_z(np.pi / 2), _rot_z(np.pi), _rot_z(-np.pi / 2)])
    obj = make_object_model(box, 1, symmetries=sym)
    np.testing.assert_allclose(obj.symmetries, sym)
    assert obj.is_symmetric
    single = make_object_model(box, 1, symmetries=np.eye(4))
    assert single.symmetries.shape == (1, 4, 4)


@pytest.mark.parametrize(
    ("symmetries", "message"),
    [
        (np.zeros((2, 3, 3)), "shape"),
        (np.stack([_rot_z(np.pi), np.eye(4)]), "first symmetry must be the identity"),
        (np.stack([np.eye(4), np.diag([2.0, 1.0, 1.0, 1.0])]), "not a rotation"),
        (np.stack([np.eye(4), np.diag([-1.0, 1.0, 1.0, 1.0])]), "not a rotation"),  # a reflection
        (np.stack([np.eye(4), np.full((4, 4), np.nan)]), "NaN"),
        (np.stack([np.eye(4), _rot_z(np.pi) + np.eye(4)[[3]] * 0.5]), "bottom row"),
        # BOP-style offset in millimetres: moves the object's centroid by 10 m
        (np.stack([np.eye(4), _rot_z(np.pi, (0.0, 0.0, 10.0))]), "millimetres"),
    ],
)
def test_bad_symmetries_are_refused(symmetries: np.ndarray, message: str) -> None:
    box = vertex_colored_mesh("box", seed=0, size_m=0.1, target_faces=500)
    with pytest.raises(ValueError, match=message):
        make_object_model(box, 3, symmetries=symmetries)


def test_validate_symmetries_accepts_an_offset_symmetry_that_fixes_the_centroid() -> None:
    # a box centred at (0.02, 0, 0): a half turn about its own axis is x -> R x + (0.04, 0, 0)
    centre = np.array([0.02, 0.0, 0.0])
    half = np.random.default_rng(0).uniform(-0.05, 0.05, (1000, 3))
    pts = np.concatenate([centre + half, centre - half])  # symmetric about its centre
    sym = np.stack([np.eye(4), _rot_z(np.pi, (0.04, 0.0, 0.0))])
    out = validate_symmetries(sym, points=pts, diameter=0.17)
    assert out.shape == (2, 4, 4)
    assert validate_symmetries(None).shape == (1, 4, 4)


def test_make_object_model_refuses_bad_meshes() -> None:
    mesh = vertex_colored_mesh("icosphere", seed=0, target_faces=320)
    big = mesh.copy()
    big.apply_scale(1000.0)
    with pytest.raises(MeshError, match="looks like millimetres"):
        make_object_model(big, 1)
    with pytest.raises(ValueError, match="obj_id"):
        make_object_model(mesh, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_points"):
        make_object_model(mesh, 1, num_points=0)
    empty = trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    with pytest.raises(MeshError, match="faces"):
        make_object_model(empty, 1)


# ------------------------------------------------------------------------------------------------------
# load_object_model and its cache
# ------------------------------------------------------------------------------------------------------
def _write(path: Path, kind: str = "cylinder", scale: float = 1.0, faces: int = 2000) -> Path:
    mesh = vertex_colored_mesh(kind, seed=0, target_faces=faces)
    mesh.apply_scale(scale)
    mesh.export(path)
    return path


def test_load_object_model_reads_mm_and_names_by_stem(tmp_path: Path) -> None:
    path = _write(tmp_path / "obj_000005.ply", scale=1000.0, faces=25_000)  # above the render budget
    obj = load_object_model(path, 5, units="mm")
    assert obj.name == "obj_000005" and obj.obj_id == 5
    assert obj.diameter == pytest.approx(np.hypot(0.07, 0.1), rel=1e-4)
    assert len(obj.render_mesh.faces) <= 20_000 < len(obj.mesh.faces)
    assert obj.mesh.metadata["units"] == "mm"


def test_second_load_is_cached_and_equal(tmp_path: Path) -> None:
    path = _write(tmp_path / "can.ply", faces=25_000)
    t0 = time.perf_counter()
    first = load_object_model(path, 1)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_object_model(path, 1)
    t_second = time.perf_counter() - t0
    assert t_second < 0.05 and t_second < t_first / 5
    assert second.mesh is first.mesh and second.render_mesh is first.render_mesh
    assert second.diameter == first.diameter
    np.testing.assert_array_equal(second.points, first.points)
    np.testing.assert_array_equal(second.symmetries, first.symmetries)
    # per-call fields are not part of the cached work
    other = load_object_model(path, 9, name="renamed", symmetries=np.stack([np.eye(4), _rot_z(np.pi)]))
    assert other.mesh is first.mesh and other.obj_id == 9 and other.name == "renamed" and other.is_symmetric
    # different options miss the cache
    fewer = load_object_model(path, 1, num_points=100)
    assert fewer.points.shape == (100, 3) and fewer.mesh is not first.mesh


def test_changed_file_is_reloaded(tmp_path: Path) -> None:
    path = _write(tmp_path / "thing.ply", kind="cylinder")
    first = load_object_model(path, 1)
    stat = path.stat()
    _write(path, kind="icosphere")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # make sure the mtime moves
    second = load_object_model(path, 1)
    assert second.mesh is not first.mesh
    assert second.diameter == pytest.approx(0.1, rel=1e-6) != pytest.approx(first.diameter, rel=1e-3)


def test_clear_cache_and_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "a.ply", kind="icosphere")
    first = load_object_model(path, 1)
    clear_cache()
    assert load_object_model(path, 1).mesh is not first.mesh
    assert load_object_model(path, 1, cache=False).mesh is not first.mesh
    monkeypatch.setattr(model_module, "CACHE_SIZE", 2)
    clear_cache()
    for n in (10, 20, 30):
        load_object_model(path, 1, num_points=n)
    assert len(model_module._cache) == 2


def test_load_object_model_errors(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match=r"missing\.ply does not exist"):
        load_object_model(tmp_path / "missing.ply", 1)
    path = _write(tmp_path / "mm.ply", kind="icosphere", scale=1000.0)
    with pytest.raises(MeshError, match="units='mm'"):
        load_object_model(path, 1)


def test_light_model_is_made_once_per_mesh_and_face_budget() -> None:
    """Decimated copies for crop renders: within the budget, one copy per (render mesh, budget) shared by every
    caller; the object itself when the budget is 0 or the mesh is already within it."""
    obj = make_object_model(trimesh.creation.icosphere(subdivisions=4, radius=0.05), 1)  # 5120 faces
    assert len(obj.render_mesh.faces) == 5120
    a, b = light_model(obj, 1000), light_model(obj, 300)
    assert len(a.render_mesh.faces) <= 1000 and len(b.render_mesh.faces) <= 300
    assert a.render_mesh is not b.render_mesh  # one copy per budget, not the first one made
    assert light_model(obj, 1000).render_mesh is a.render_mesh
    assert a.obj_id == obj.obj_id and a.mesh is obj.mesh and a.points is obj.points
    assert light_model(obj, 0) is obj and light_model(obj, 10_000) is obj
