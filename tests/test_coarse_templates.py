"""The template bank: view coverage, framing, xyz/depth consistency, nearest view, and the disk cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from meshpose.coarse import templates
from meshpose.coarse.templates import (
    POLE_ANGLE_DEG,
    TemplateBank,
    TemplateConfig,
    build_templates,
    default_cache_dir,
    load_templates,
    template_cache_key,
    template_rotations,
)
from meshpose.types import ObjectModel
from support.render_fixtures import face_colored_box, make_object, textured_quad, vertex_colored_sphere

#: Largest angle (degrees) from any direction to the nearest of the 162 views (the icosphere's largest triangle
#: circumradius is 10.8°).
MAX_GAP_162_DEG = 12.0
SMALL = TemplateConfig(views=42, size=48)


def _offset(mesh: trimesh.Trimesh, shift: tuple[float, float, float] = (0.07, -0.04, 0.11)) -> trimesh.Trimesh:
    """The mesh moved so that its origin is far from its centre."""
    mesh = mesh.copy()
    mesh.apply_translation(shift)
    return mesh


@pytest.fixture(scope="module")
def sphere_bank() -> TemplateBank:
    return build_templates(make_object(_offset(vertex_colored_sphere(0.04, 3))), TemplateConfig(views=162, size=48))


@pytest.fixture(scope="module")
def box_bank() -> TemplateBank:
    return build_templates(make_object(_offset(face_colored_box())), SMALL)


def _backproject(bank: TemplateBank) -> np.ndarray:
    """Object-frame points ``(N, S, S, 3)`` from each template's depth through its camera and pose."""
    s = bank.config.size
    u, v = np.meshgrid(np.arange(s, dtype=np.float64), np.arange(s, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(bank.camera.K).T  # (S, S, 3), z = 1
    cam = bank.depth[..., None].astype(np.float64) * rays[None]
    return np.einsum("nij,nhwi->nhwj", bank.rotations, cam - bank.translations[:, None, None, :])


def test_config_rejects_bad_values() -> None:
    for kwargs in ({"views": 100}, {"views": 2562}, {"size": 4}, {"fill": 0.0}, {"fill": 1.2}, {"focal": -1.0}):
        with pytest.raises(ValueError):
            TemplateConfig(**kwargs)
    with pytest.raises(ValueError, match="views"):
        template_rotations(10)


@pytest.mark.parametrize("views", [12, 42, 162, 642])
def test_rotations_are_proper_and_follow_the_up_rule(views: int) -> None:
    R = template_rotations(views)
    assert R.shape == (views, 3, 3)
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    view = -R[:, 2]
    sphere = np.asarray(trimesh.creation.icosphere(subdivisions=templates.VIEW_COUNTS[views]).vertices)
    assert np.allclose(view, sphere / np.linalg.norm(sphere, axis=1, keepdims=True))
    # image up (-y of the camera) is the projection of object +z, or of +y near the poles
    pole = np.abs(view[:, 2]) > np.cos(np.radians(POLE_ANGLE_DEG))
    axis = np.where(pole[:, None], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    assert np.allclose(np.einsum("ni,ni->n", R[:, 0], axis), 0.0, atol=1e-12)  # x_cam ⊥ the up axis
    assert np.all(np.einsum("ni,ni->n", -R[:, 1], axis) > 0)  # and up points along it


def test_views_cover_the_sphere() -> None:
    view = -template_rotations(162)[:, 2]
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50_000, 3))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gap = np.degrees(np.arccos(np.clip((q @ view.T).max(axis=1), -1.0, 1.0)))
    assert gap.max() < MAX_GAP_162_DEG
    # and no two views coincide
    cos = view @ view.T - 2 * np.eye(len(view))
    assert np.degrees(np.arccos(cos.max())) > 5.0


def test_bank_fields(sphere_bank: TemplateBank) -> None:
    bank = sphere_bank
    n, s = 162, 48
    assert len(bank) == n
    assert bank.rgb.shape == (n, s, s, 3) and bank.rgb.dtype == np.uint8
    assert bank.mask.shape == (n, s, s) and bank.mask.dtype == bool
    assert bank.xyz.shape == (n, s, s, 3) and bank.xyz.dtype == np.float32
    assert bank.depth.shape == (n, s, s) and bank.depth.dtype == np.float32
    assert (bank.camera.width, bank.camera.height) == (s, s)
    assert np.all(bank.xyz[~bank.mask] == 0) and np.all(bank.depth[~bank.mask] == 0)
    assert np.all(bank.depth[bank.mask] > 0)
    assert np.all(bank.rgb[bank.mask].max(axis=-1) > 0)  # coloured and lit
    assert not bank.rgb.flags.writeable and not bank.xyz.flags.writeable
    d = bank.view_dirs()
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    # every pose puts the bounding-sphere centre on the optical axis at the configured distance
    R, t = bank.pose(5).numpy()
    assert np.allclose(R @ bank.center + t, [0.0, 0.0, bank.distance])
    Rs, ts = bank.poses().numpy()
    assert np.allclose(np.einsum("nij,j->ni", Rs, bank.center) + ts, [0.0, 0.0, bank.distance])
    assert np.allclose(bank.center, [0.07, -0.04, 0.11], atol=1e-9)


def test_sphere_is_centred_and_fills(sphere_bank: TemplateBank) -> None:
    """A sphere's silhouette is its bounding sphere's projection: centred, spanning ``fill`` of the side."""
    cfg = sphere_bank.config
    target = cfg.fill * cfg.size
    for m in sphere_bank.mask:
        ys, xs = np.nonzero(m)
        width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert abs(width - target) <= 2.0 and abs(height - target) <= 2.0
        centre = (cfg.size - 1) / 2
        assert abs((xs.max() + xs.min()) / 2 - centre) <= 1.0
        assert abs((ys.max() + ys.min()) / 2 - centre) <= 1.0


def test_box_stays_inside_the_fill_circle(box_bank: TemplateBank) -> None:
    cfg = box_bank.config
    centre = (cfg.size - 1) / 2
    v, u = np.mgrid[: cfg.size, : cfg.size]
    r = np.hypot(u - centre, v - centre)
    for m in box_bank.mask:
        assert r[m].max() <= cfg.fill * cfg.size / 2 + 1.0
        assert r[m].max() >= 0.6 * cfg.fill * cfg.size / 2  # a box fills most of its bounding sphere
        assert m.sum() > 0.2 * cfg.size**2


@pytest.mark.parametrize("which", ["sphere", "box"])
def test_xyz_agrees_with_backprojected_depth(which: str, request: pytest.FixtureRequest) -> None:
    bank: TemplateBank = request.getfixturevalue(f"{which}_bank")
    err = np.linalg.norm(_backproject(bank) - bank.xyz, axis=-1)[bank.mask]
    assert err.max() < 1e-3


def test_nearest(box_bank: TemplateBank) -> None:
    rng = np.random.default_rng(1)
    for i in range(len(box_bank)):
        R = box_bank.rotations[i]
        assert box_bank.nearest(R) == i
        small = Rotation.from_rotvec(rng.normal(size=3) * np.radians(2.0) / np.sqrt(3)).as_matrix()
        assert box_bank.nearest(small @ R) == i  # a slightly perturbed view
        roll = Rotation.from_rotvec([0.0, 0.0, rng.uniform(-np.pi, np.pi)]).as_matrix()
        assert box_bank.nearest(roll @ R) == i  # in-plane rotation does not change the view
    with pytest.raises(ValueError):
        box_bank.nearest(np.eye(4))


# --- the disk cache -----------------------------------------------------------------------------------------
@pytest.fixture
def build_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ``build_templates`` made by ``load_templates``."""
    calls = [0]
    original = templates.build_templates

    def spy(*args: object, **kwargs: object) -> TemplateBank:
        calls[0] += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(templates, "build_templates", spy)
    return calls


def test_cache_loads_the_second_time(tmp_path: Path, build_count: list[int]) -> None:
    obj = make_object(_offset(face_colored_box()))
    first = load_templates(obj, SMALL, cache_dir=tmp_path)
    assert build_count[0] == 1
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    second = load_templates(obj, SMALL, cache_dir=tmp_path)
    assert build_count[0] == 1  # from disk
    assert np.array_equal(first.rgb, second.rgb) and np.array_equal(first.mask, second.mask)
    assert np.allclose(first.rotations, second.rotations) and np.allclose(first.translations, second.translations)
    assert np.abs(first.xyz - second.xyz).max() < 1e-4  # float16 offsets on disk: ≤ 2⁻¹² r per coordinate
    assert np.abs(first.depth - second.depth).max() < 1e-4
    assert second.obj_id == obj.obj_id and second.radius == pytest.approx(first.radius)
    err = np.linalg.norm(_backproject(second) - second.xyz, axis=-1)[second.mask]
    assert err.max() < 1e-3


def _changed_models(mesh: trimesh.Trimesh) -> list[ObjectModel]:
    moved = mesh.copy()
    moved.vertices[0] += [0.0, 0.0, 0.002]
    recoloured = mesh.copy()
    visual: Any = recoloured.visual
    colors = np.array(visual.face_colors)
    colors[0, :3] = 255 - colors[0, :3]
    visual.face_colors = colors
    return [make_object(moved), make_object(recoloured)]


def test_cache_key_changes_with_mesh_and_config(tmp_path: Path, build_count: list[int]) -> None:
    mesh = _offset(face_colored_box())
    obj = make_object(mesh)
    key = template_cache_key(obj, SMALL)
    assert template_cache_key(make_object(mesh.copy()), SMALL) == key  # same content, same key
    load_templates(obj, SMALL, cache_dir=tmp_path)
    changed = _changed_models(mesh)
    for other in changed:
        assert template_cache_key(other, SMALL) != key
    other_config = TemplateConfig(views=42, size=48, fill=0.8)
    assert template_cache_key(obj, other_config) != key
    for model in changed:
        load_templates(model, SMALL, cache_dir=tmp_path)
    load_templates(obj, other_config, cache_dir=tmp_path)
    assert build_count[0] == 4
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_cache_key_sees_textures() -> None:
    quad = textured_quad()
    key = template_cache_key(make_object(quad), SMALL)
    other = textured_quad()
    visual: Any = other.visual
    image = np.array(visual.material.image)
    image[0, 0] = (1, 2, 3)
    visual.material.image = Image.fromarray(image)
    assert template_cache_key(make_object(other), SMALL) != key
    shifted = textured_quad()
    shifted_visual: Any = shifted.visual
    shifted_visual.uv = np.array(shifted_visual.uv) * 0.5
    assert template_cache_key(make_object(shifted), SMALL) != key


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_rebuilt(
    damage: str, tmp_path: Path, build_count: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    obj = make_object(_offset(face_colored_box()))
    first = load_templates(obj, SMALL, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    data = path.read_bytes()
    path.write_bytes(b"not a zip file" if damage == "garbage" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="meshpose.coarse.templates"):
        bank = load_templates(obj, SMALL, cache_dir=tmp_path)
    assert "rebuilding" in caplog.text
    assert build_count[0] == 2
    assert np.array_equal(bank.mask, first.mask)
    load_templates(obj, SMALL, cache_dir=tmp_path)  # the rewritten file loads
    assert build_count[0] == 2


def test_unwritable_cache_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="meshpose.coarse.templates"):
        bank = load_templates(make_object(face_colored_box()), TemplateConfig(views=12, size=32), cache_dir=blocker)
    assert len(bank) == 12 and "could not write" in caplog.text


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHPOSE_CACHE_DIR", str(tmp_path / "mp"))
    assert default_cache_dir() == tmp_path / "mp" / "templates"
    monkeypatch.delenv("MESHPOSE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "meshpose" / "templates"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "meshpose" / "templates"
