"""Generated novel objects: determinism, variety, and exact symmetries (the mesh and its appearance map onto
themselves under every listed transform)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from meshpose.geometry.symmetry import symmetry_transforms_from_lists
from meshpose.mesh import load_mesh
from meshpose.synth import (
    SYMMETRIC_FAMILIES,
    NovelConfig,
    novel_mesh,
    novel_object,
    photo_like_texture,
    text_texture,
)

SYMMETRIC_ONLY = NovelConfig(symmetric_fraction=1.0)


def _face_keys(points: np.ndarray, faces: np.ndarray, quantum: float) -> tuple[np.ndarray, np.ndarray]:
    """Per face: its three corners' quantised positions sorted into a canonical order, and that order."""
    q = np.rint(points[faces] / quantum).astype(np.int64)  # (F, 3, 3)
    order = np.lexsort((q[..., 2], q[..., 1], q[..., 0]), axis=-1)  # (F, 3) corners sorted by position
    keyed = np.take_along_axis(q, order[..., None], axis=1).reshape(len(faces), 9)
    return keyed, order


def _corner_attributes(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-vertex appearance: UVs of a textured mesh, else RGB vertex colours in [0, 1]."""
    if mesh.visual.kind == "texture":
        return np.asarray(mesh.visual.uv, dtype=np.float64)
    return np.asarray(mesh.visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0


def symmetry_mismatch(mesh: trimesh.Trimesh, transform: np.ndarray) -> tuple[float, float]:
    """Map every face through ``transform`` and look it up among the mesh's faces (corner positions equal to
    1e-7 of the size). Returns (fraction of faces without a match, largest appearance difference of matched
    corners: UV units or colour in [0, 1])."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    quantum = 1e-7 * float(np.ptp(v, axis=0).max())
    moved = v @ transform[:3, :3].T + transform[:3, 3]
    base, base_order = _face_keys(v, f, quantum)
    mapped, mapped_order = _face_keys(moved, f, quantum)
    attr = _corner_attributes(mesh)
    base_attr = np.take_along_axis(attr[f], base_order[..., None], axis=1)
    mapped_attr = np.take_along_axis(attr[f], mapped_order[..., None], axis=1)
    table: dict[bytes, list[int]] = {}
    for i, row in enumerate(base):
        table.setdefault(row.tobytes(), []).append(i)
    missing, worst = 0, 0.0
    for i, row in enumerate(mapped):
        hits = table.get(row.tobytes())
        if hits is None:
            missing += 1
            continue
        worst = max(worst, min(float(np.abs(base_attr[j] - mapped_attr[i]).max()) for j in hits))
    return missing / len(f), worst


def surface_deviation(mesh: trimesh.Trimesh, transform: np.ndarray, n: int = 1500) -> float:
    """Largest distance (relative to the size) from transformed surface samples to the surface."""
    pts = trimesh.sample.sample_surface(mesh, n, seed=0)[0]
    moved = pts @ transform[:3, :3].T + transform[:3, 3]
    _, dist, _ = trimesh.proximity.closest_point(mesh, moved)
    return float(dist.max() / np.ptp(np.asarray(mesh.vertices), axis=0).max())


def test_same_seed_same_object_and_prefix_property() -> None:
    a = novel_mesh(7, seed=3)
    b = novel_mesh(7, seed=3)
    assert np.array_equal(a.mesh.vertices, b.mesh.vertices)
    assert np.array_equal(a.mesh.faces, b.mesh.faces)
    assert a.family == b.family and a.appearance == b.appearance
    if a.mesh.visual.kind == "texture":
        assert np.array_equal(np.asarray(a.mesh.visual.material.image), np.asarray(b.mesh.visual.material.image))
    c = novel_mesh(7, seed=4)
    assert len(c.mesh.vertices) != len(a.mesh.vertices) or not np.allclose(c.mesh.vertices, a.mesh.vertices)


def test_objects_are_distinct_and_sized() -> None:
    cfg = NovelConfig(min_diameter_m=0.08, max_diameter_m=0.2)
    signatures = set()
    for i in range(10):
        model, obj = novel_object(i, seed=11, config=cfg, num_points=512)
        assert 0.08 - 1e-9 <= model.diameter <= 0.2 + 1e-9
        assert model.obj_id == i + 1
        assert len(model.render_mesh.faces) <= 20_000
        signatures.add((len(obj.mesh.faces), round(model.diameter, 6)))
        # Points lie on the surface.
        _, dist, _ = trimesh.proximity.closest_point(obj.mesh, model.points[:32])
        assert dist.max() < 1e-4 * model.diameter
    assert len(signatures) == 10


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_symmetric_objects_are_exactly_symmetric(seed: int) -> None:
    """Every listed discrete symmetry maps each face onto a face with the same colour or UVs; a continuous
    symmetry maps the surface onto itself up to tessellation."""
    families = set()
    for i in range(12):
        obj = novel_mesh(i, seed=seed, config=SYMMETRIC_ONLY)
        assert obj.family in SYMMETRIC_FAMILIES and obj.is_symmetric
        families.add(obj.family)
        for S in obj.symmetries_discrete:
            missing, worst = symmetry_mismatch(obj.mesh, S)
            assert missing == 0.0, f"object {i} ({obj.family}): {missing:.1%} of faces do not map onto a face"
            assert worst <= 1.5 / 255.0, f"object {i} ({obj.family}, {obj.appearance}): appearance differs by {worst}"
        for axis, offset in obj.symmetries_continuous:
            for angle in (0.37, 1.9, 4.4):
                T = trimesh.transformations.rotation_matrix(angle, axis, offset)
                assert surface_deviation(obj.mesh, T) < 5e-3, f"object {i}: not symmetric about {axis}"
    assert len(families) >= 3


def test_asymmetric_objects_are_not_symmetric_under_a_half_turn() -> None:
    cfg = NovelConfig(symmetric_fraction=0.0)
    for i in range(4):
        obj = novel_mesh(i, seed=5, config=cfg)
        assert not obj.is_symmetric
        for axis in np.eye(3):
            T = trimesh.transformations.rotation_matrix(np.pi, axis, obj.mesh.bounding_box.centroid)
            assert surface_deviation(obj.mesh, T, n=400) > 1e-2


def test_object_model_symmetries_match_the_lists() -> None:
    for i in range(3):
        model, obj = novel_object(i, seed=2, config=SYMMETRIC_ONLY, num_points=256)
        expected = symmetry_transforms_from_lists(
            list(obj.symmetries_discrete), list(obj.symmetries_continuous), model.diameter
        )
        assert np.allclose(model.symmetries, expected)
        assert model.is_symmetric


def test_textures_are_rich_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    text = text_texture(128, rng)
    photo = photo_like_texture(96, np.random.default_rng(1), height_px=64)
    assert text.shape == (128, 128, 3) and text.dtype == np.uint8
    assert photo.shape == (64, 96, 3)
    for img in (text, photo):
        grey = img.astype(np.float64).mean(-1)
        assert grey.std() > 10.0  # luminance contrast
    assert np.array_equal(photo, photo_like_texture(96, np.random.default_rng(1), height_px=64))


def test_photo_textures_from_a_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = photo_like_texture(32, np.random.default_rng(0), photo_dir=str(tmp_path))
    assert out.shape == (32, 32, 3)
    cfg = NovelConfig(photo_dir=str(tmp_path), texture_weights={"photo": 1.0}, appearance_weights={"texture": 1.0})
    obj = novel_mesh(0, seed=0, config=cfg)
    assert obj.appearance in ("texture/photo", "vertex", "plain", "textureless")


def test_textured_model_round_trips_through_bop_ply(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from meshpose.io.bop_write import write_model_ply

    cfg = NovelConfig(appearance_weights={"texture": 1.0}, symmetric_fraction=0.0)
    obj = novel_mesh(0, seed=0, config=cfg)
    assert obj.mesh.visual.kind == "texture"
    path = tmp_path / "obj_000001.ply"
    write_model_ply(path, obj.mesh, keep_texture=True)
    assert (tmp_path / "obj_000001.png").is_file()
    back = load_mesh(path, units="mm")
    assert back.visual.kind == "texture"
    assert np.allclose(back.vertices, obj.mesh.vertices, atol=1e-6)
    assert np.allclose(back.visual.uv, obj.mesh.visual.uv, atol=1e-6)
    assert np.array_equal(
        np.asarray(back.visual.material.image.convert("RGB")), np.asarray(obj.mesh.visual.material.image.convert("RGB"))
    )
