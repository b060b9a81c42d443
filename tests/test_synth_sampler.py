"""The scene sampler (on-the-fly samples), placement, the sensor models and object sources."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh

from meshpose.render.gl import get_default_renderer
from meshpose.synth import (
    NovelConfig,
    SceneConfig,
    SceneSampler,
    SyntheticStream,
    apply_color_sensor,
    apply_depth_sensor,
    resolve_objects,
)
from meshpose.types import Camera, Pose

SMALL = SceneConfig(width=160, height=120, objects_per_scene=(3, 3), distractors_per_scene=(1, 1))


@pytest.fixture(scope="module")
def objects():  # type: ignore[no-untyped-def]
    return resolve_objects("novel:5", 21)


@pytest.fixture(scope="module")
def distractors():  # type: ignore[no-untyped-def]
    return resolve_objects("novel:2@99", 0)


def test_sample_ground_truth_is_consistent(objects, distractors) -> None:  # type: ignore[no-untyped-def]
    sampler = SceneSampler(objects, SMALL, distractors=distractors)
    s = sampler.sample(np.random.default_rng(0))
    n = len(s.obj_ids)
    assert n == 3 and s.rgb.shape == (120, 160, 3) and s.rgb.dtype == np.uint8
    assert s.masks.shape == s.masks_visib.shape == (3, 120, 160)
    assert not np.any(s.masks_visib & ~s.masks)
    for i in range(n):
        assert np.array_equal(s.instance == i + 1, s.masks_visib[i])
        assert s.px_count_all[i] >= s.masks[i].sum()
        assert math.isclose(s.visib_fract[i], s.masks_visib[i].sum() / max(1, s.px_count_all[i]))
    s.poses.check(in_front=True)
    # Re-rendering the annotated objects alone at their poses gives the full masks and the clean depth.
    out = get_default_renderer().render(list(s.objects), s.poses, s.camera)
    for i in range(n):
        alone = get_default_renderer().render([s.objects[i]], s.poses[i : i + 1], s.camera).mask[0]
        assert np.array_equal(alone, s.masks[i])
    sel = s.masks_visib.any(0)
    assert np.allclose(out.depth[0][sel], s.depth_clean[sel], atol=1e-5)
    # The sensor depth is noisy but close, with holes.
    valid = sel & (s.depth > 0)
    assert valid.sum() > 0.5 * sel.sum()
    assert np.median(np.abs(s.depth[valid] - s.depth_clean[valid])) < 0.01
    obs = s.observation()
    assert obs.depth is not None and obs.camera is s.camera


def test_exact_config_and_determinism(objects) -> None:  # type: ignore[no-untyped-def]
    sampler = SceneSampler(objects, SMALL.exact())
    a = sampler.sample(np.random.default_rng(5))
    b = sampler.sample(np.random.default_rng(5))
    c = sampler.sample(np.random.default_rng(6))
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    assert not np.array_equal(a.rgb, c.rgb)
    lo, hi = SMALL.depth_range_m
    inside = (a.depth_clean >= lo) & (a.depth_clean <= hi)
    assert np.array_equal(a.depth[inside], a.depth_clean[inside])


def test_plane_layout_rests_objects_without_overlap(objects, distractors) -> None:  # type: ignore[no-untyped-def]
    sampler = SceneSampler(objects, SceneConfig(placement="plane", objects_per_scene=(4, 4)), distractors=distractors)
    layout = sampler.layout(np.random.default_rng(1))
    assert layout.placement == "plane" and layout.ground is not None
    discs = []
    for obj, M in zip(layout.objects, layout.world_from_obj, strict=True):
        v = np.asarray(obj.render_mesh.vertices) @ M[:3, :3].T + M[:3, 3]
        assert abs(v[:, 2].min()) < 1e-9  # touching the ground, not in it
        c = 0.5 * (v[:, :2].min(0) + v[:, :2].max(0))
        discs.append((c, np.linalg.norm(v[:, :2] - c, axis=1).max()))
    for i in range(len(discs)):
        for j in range(i):
            assert np.linalg.norm(discs[i][0] - discs[j][0]) >= discs[i][1] + discs[j][1] - 1e-9
    _, cam_from_world = sampler.camera_pose(layout, np.random.default_rng(2))
    eye = -cam_from_world[:3, :3].T @ cam_from_world[:3, 3]
    assert eye[2] > 0  # above the ground
    assert np.isclose(np.linalg.det(cam_from_world[:3, :3]), 1.0)


def test_float_layout_keeps_objects_apart(objects) -> None:  # type: ignore[no-untyped-def]
    sampler = SceneSampler(objects, SceneConfig(placement="float", objects_per_scene=(5, 5)))
    layout = sampler.layout(np.random.default_rng(3))
    assert layout.ground is None
    spheres = []
    for obj, M in zip(layout.objects, layout.world_from_obj, strict=True):
        v = np.asarray(obj.render_mesh.vertices)
        c = 0.5 * (v.min(0) + v.max(0))
        spheres.append((M[:3, :3] @ c + M[:3, 3], np.linalg.norm(v - c, axis=1).max()))
    for i in range(len(spheres)):
        for j in range(i):
            assert np.linalg.norm(spheres[i][0] - spheres[j][0]) >= spheres[i][1] + spheres[j][1] - 1e-9


def test_silhouettes_beyond_the_border(objects) -> None:  # type: ignore[no-untyped-def]
    obj = objects[0]
    camera = Camera.from_fxfycxcy(150.0, 150.0, 79.5, 59.5, width=160, height=120)
    z = 0.6
    pose = Pose(np.eye(3)[None], np.array([[-79.5 / 150.0 * z, 0.0, z]]))  # centre on the left border
    sampler = SceneSampler(objects, SMALL)
    masks, px_all, bbox = sampler.silhouettes([obj], pose, camera)
    assert bbox[0, 0] < 0 and px_all[0] > masks[0].sum() > 0
    wide = camera.crop((-160.5, -0.5, 159.5, 119.5), 320, 120)  # the same pixels plus 160 columns on the left
    full = get_default_renderer().render([obj], pose, wide).mask[0]
    assert int(full.sum()) == int(px_all[0])
    assert np.array_equal(full[:, 160:], masks[0])


def test_depth_sensor_model() -> None:
    h, w = 60, 80
    camera = Camera.from_fxfycxcy(80.0, 80.0, 39.5, 29.5, width=w, height=h)
    normal = np.zeros((h, w, 3), np.float32)
    normal[..., 2] = -1.0
    cfg = SceneConfig(depth_holes=(0.0, 0.0), depth_edge_dropout=0.0)
    stds = []
    for z in (0.5, 2.0):
        d = apply_depth_sensor(np.full((h, w), z, np.float32), normal, camera, np.random.default_rng(0), cfg)
        assert (d > 0).all()
        stds.append(float(np.std(d - z)))
    assert stds[1] > 3 * stds[0] > 0  # axial noise grows with distance
    far = apply_depth_sensor(np.full((h, w), 9.0, np.float32), normal, camera, np.random.default_rng(0), cfg)
    assert not far.any()  # out of range
    step = np.full((h, w), 1.0, np.float32)
    step[:, w // 2 :] = 1.5
    edge_cfg = SceneConfig(depth_holes=(0.0, 0.0), depth_edge_dropout=1.0, depth_noise=0.0)
    d = apply_depth_sensor(step, normal, camera, np.random.default_rng(0), edge_cfg)
    assert not d[:, w // 2 - 1 : w // 2 + 1].any() and d[:, :10].all()
    holes = apply_depth_sensor(step, normal, camera, np.random.default_rng(0), SceneConfig(depth_holes=(0.2, 0.2)))
    assert 0.1 < (holes == 0).mean() < 0.4
    grazing = normal.copy()
    grazing[..., 0], grazing[..., 2] = -1.0, -0.05
    grazing /= np.linalg.norm(grazing, axis=-1, keepdims=True)
    g = apply_depth_sensor(step, grazing, camera, np.random.default_rng(0), cfg)
    # Rays near the image centre meet that surface at ~87°: lost; at the left edge (~60°) it is still seen.
    assert not g[:, 38:42].any() and g[:, :5].all()


def test_color_sensor_exact_and_jittered() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((40, 50, 3)).astype(np.float32)
    exact = apply_color_sensor(img, np.random.default_rng(1), SceneConfig().exact())
    assert np.array_equal(exact, np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    noisy = apply_color_sensor(img, np.random.default_rng(1), SceneConfig(noise_std=(0.05, 0.05)))
    assert noisy.dtype == np.uint8 and np.abs(noisy.astype(int) - exact.astype(int)).mean() > 2


def test_stream_yields_samples(objects) -> None:  # type: ignore[no-untyped-def]
    stream = SyntheticStream(list(objects), SMALL, seed=0, views_per_scene=2, distractors=[])
    it = iter(stream)
    a, b = next(it), next(it)
    assert a.info["scene_seed"] == b.info["scene_seed"]  # two views of one scene
    assert not np.array_equal(a.rgb, b.rgb)


@pytest.mark.slow
def test_stream_in_a_data_loader() -> None:
    from torch.utils.data import DataLoader

    stream = SyntheticStream("novel:4", SMALL, seed=1, views_per_scene=2, distractors=[])
    loader = DataLoader(stream, batch_size=2, num_workers=1, collate_fn=list, multiprocessing_context="spawn")
    batch = next(iter(loader))
    assert len(batch) == 2 and batch[0].rgb.shape == (120, 160, 3)


def test_resolve_objects_specs(tmp_path: Path) -> None:
    objs = resolve_objects("novel:3-5", 0)
    assert objs.obj_ids == [4, 5]
    pinned = resolve_objects("novel:5@7", 123)
    assert np.array_equal(pinned.by_id(1).mesh.vertices, resolve_objects("novel:1", 7).by_id(1).mesh.vertices)
    for bad in ("novel:", "novel:5-5", "novel:x"):
        with pytest.raises(ValueError):
            resolve_objects(bad, 0)
    with pytest.raises(FileNotFoundError):
        resolve_objects(str(tmp_path / "nope"), 0)

    # A plain folder of meshes in metres: ids by sorted name.
    plain = tmp_path / "plain"
    plain.mkdir()
    trimesh.creation.box((0.1, 0.05, 0.04)).export(plain / "b_box.ply")
    trimesh.creation.icosphere(radius=0.05).export(plain / "a_ball.obj")
    objs = resolve_objects(str(plain), 0)
    assert objs.obj_ids == [1, 2] and objs.by_id(1).name == "a_ball"
    assert math.isclose(objs.by_id(2).diameter, math.sqrt(0.1**2 + 0.05**2 + 0.04**2), rel_tol=1e-6)

    # A BOP models folder (millimetres) with a symmetry in models_info.json.
    bop = tmp_path / "bop" / "models"
    bop.mkdir(parents=True)
    trimesh.creation.cylinder(radius=30.0, height=80.0, sections=32).export(bop / "obj_000007.ply")
    info = {"7": {"diameter": 100.0, "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}}
    (bop / "models_info.json").write_text(json.dumps(info))
    objs = resolve_objects(str(bop.parent), 0)
    assert objs.obj_ids == [7]
    model = objs.by_id(7)
    assert model.diameter < 0.2 and model.is_symmetric
    assert objs.symmetry_lists(7)[1] == (((0.0, 0.0, 1.0), (0.0, 0.0, 0.0)),)
    assert "symmetries_continuous" in objs.models_info(7)


def test_novel_config_reaches_the_objects() -> None:
    objs = resolve_objects("novel:2", 0, novel=NovelConfig(min_diameter_m=0.3, max_diameter_m=0.31))
    assert all(0.3 - 1e-9 <= objs[i].diameter <= 0.31 + 1e-9 for i in range(2))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("blur_sigma_px", (2.0, 0.5), "lo ≤ hi"),
        ("hue", (0.1, -0.1), "lo ≤ hi"),
        ("noise_std", (-0.01, 0.02), "not be negative"),
        ("motion_blur_px", (3.0, float("nan")), "lo ≤ hi"),
        ("depth_holes", (0.1,), "range"),
        ("blur_probability", 1.5, "probability"),
        ("gamma", (0.0, 1.0), "gamma > 0"),
    ],
)
def test_scene_config_refuses_bad_ranges(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        SceneConfig(**{field: value})  # type: ignore[arg-type]
    assert field in str(err.value)
    SceneConfig(hue=(-0.05, 0.05), roll_deg=(-30.0, 30.0), blur_sigma_px=(0.5, 0.5))  # signed and empty ranges are fine
