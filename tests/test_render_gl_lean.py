"""The GL renderer's lean mode (``outputs``): only the images asked for, equal to a full render's bit for bit."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from meshpose.render import GLRenderer, RaycastRenderer, RenderOutput
from meshpose.render.base import only_outputs
from meshpose.render.gl.renderer import OUTPUTS
from meshpose.types import Camera, ObjectModel, Pose
from support.render_fixtures import (
    camera,
    face_colored_box,
    make_object,
    open_box,
    pose,
    random_poses,
    textured_quad,
    torus,
    vertex_colored_sphere,
)

GEOMETRY = ("xyz", "depth", "instance")


@pytest.fixture(scope="module")
def gl() -> Iterator[GLRenderer]:
    r = GLRenderer()
    yield r
    r.release()


def _objects() -> list[ObjectModel]:
    """Closed (culled) and open (two-sided) meshes, per-vertex colours, face colours and a texture."""
    meshes = (torus(), vertex_colored_sphere(), face_colored_box(), open_box(), textured_quad())
    return [make_object(m, i + 1) for i, m in enumerate(meshes)]


def _crop_scene(n_crops: int = 6, seed: int = 3) -> tuple[Pose, list[Camera]]:
    """``n_crops`` scenes of the five objects bunched together (mutual occlusions), each seen through its own
    off-centre crop of one 640×480 camera, as a refiner crops around each object."""
    rng = np.random.default_rng(seed)
    full = Camera.from_fxfycxcy(600.0, 590.0, 322.0, 236.0, width=640, height=480)
    poses = random_poses(rng, 5 * n_crops, distance=0.35, spread=0.025).reshape(n_crops, 5)
    cams = []
    for _ in range(n_crops):
        cx, cy = 320 + rng.uniform(-40, 40), 240 + rng.uniform(-30, 30)
        half = rng.uniform(40, 90)
        cams.append(full.crop((cx - half, cy - half, cx + half, cy + half), 96, 96))
    return poses, cams


def _copy(out: RenderOutput) -> dict[str, np.ndarray]:
    return {name: np.array(getattr(out, name)) for name in OUTPUTS}


def test_lean_equals_full_render_with_occlusions_and_crops(gl: GLRenderer) -> None:
    objs = _objects()
    poses, cams = _crop_scene()
    full = _copy(gl.render(objs, poses, cams))
    assert all(len(np.unique(full["instance"][b])) >= 3 for b in range(len(cams)))
    assert set(np.unique(full["instance"])) == {0, 1, 2, 3, 4, 5}  # every mesh kind shows somewhere
    overlap = 0
    for b in range(len(cams)):  # several objects' footprints overlap: occlusion decides the pixels
        alone = [np.array(gl.render([o], poses[b, k], cams[b]).mask[0]) for k, o in enumerate(objs)]
        overlap += int((np.sum(alone, axis=0) >= 2).sum())
    assert overlap > 100
    lean = gl.render(objs, poses, cams, outputs=GEOMETRY)
    for name in GEOMETRY:
        got = getattr(lean, name)
        assert got.dtype == full[name].dtype and np.array_equal(got, full[name]), name
    assert lean.timings["total"] > 0


@pytest.mark.parametrize("outputs", [("depth",), ("instance", "mask"), ("mask",), ("xyz", "depth"), ("rgb", "depth")])
def test_subsets_and_zeros_for_the_rest(gl: GLRenderer, outputs: tuple[str, ...]) -> None:
    objs = _objects()
    poses, cams = _crop_scene(3, seed=5)
    full = _copy(gl.render(objs, poses, cams))
    lean = gl.render(objs, poses, cams, outputs=outputs)
    filled = set(outputs) | ({"instance"} if "mask" in outputs else set())
    for name in OUTPUTS:
        got = getattr(lean, name)
        assert got.shape == full[name].shape and got.dtype == full[name].dtype, name
        if name in filled:
            assert np.array_equal(got, full[name]), name
        else:  # not drawn: read-only zeros without memory of their own
            assert not got.flags.writeable and not np.any(got), name
    part = lean[1]
    assert len(part) == 1 and part.depth.shape == (1, 96, 96)


def test_modes_alternate_without_stale_pixels() -> None:
    """The lean and full modes keep separate framebuffers, each cleared where it last drew."""
    objs = _objects()
    r = GLRenderer()
    try:
        scenes = [_crop_scene(4, seed=s) for s in (1, 2, 3)]
        refs = []
        for poses, cams in scenes:
            fresh = GLRenderer()
            try:
                refs.append(_copy(fresh.render(objs, poses, cams)))
            finally:
                fresh.release()
        for k in (0, 1, 2, 0, 2, 1):
            poses, cams = scenes[k]
            outputs = GEOMETRY if k != 1 else None
            out = r.render(objs, poses, cams, outputs=outputs)
            for name in GEOMETRY:
                assert np.array_equal(getattr(out, name), refs[k][name]), (k, name)
            del out
    finally:
        r.release()


def test_lean_single_scene_and_passes() -> None:
    """One scene with an unbatched pose, and a batch split over several atlas passes."""
    r = GLRenderer(max_atlas_height=100)
    try:
        obj = make_object(face_colored_box())
        p = pose((0.3, 0.2, 0.1), (0.0, 0.0, 0.4))
        single = r.render([obj], p, camera(64, 48), outputs=["depth"])
        assert single.depth.shape == (1, 48, 64) and single.depth.max() > 0
        objs = [make_object(torus(), 1), make_object(vertex_colored_sphere(), 2)]
        poses = random_poses(np.random.default_rng(4), 10, distance=0.3).reshape(5, 2)
        full = _copy(r.render(objs, poses, camera(64, 48)))
        lean = r.render(objs, poses, camera(64, 48), outputs=GEOMETRY)
        for name in GEOMETRY:
            assert np.array_equal(getattr(lean, name), full[name]), name
    finally:
        r.release()


def test_bad_outputs(gl: GLRenderer) -> None:
    obj = make_object(face_colored_box())
    p = pose((0, 0, 0), (0, 0, 0.4))
    with pytest.raises(ValueError, match="unknown render outputs"):
        gl.render([obj], p, camera(), outputs=["xyz", "colour"])
    with pytest.raises(ValueError, match="collection of names"):
        gl.render([obj], p, camera(), outputs="depth")


def test_only_outputs_asks_for_the_lean_mode_only_where_it_exists() -> None:
    assert only_outputs(GLRenderer(), GEOMETRY) == {"outputs": GEOMETRY}
    assert only_outputs(GLRenderer(), None) == {}
    assert only_outputs(RaycastRenderer(), GEOMETRY) == {}
