"""Shared fixtures: a tiny BOP dataset the tests render themselves (no downloaded data)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from meshpose.io.bop_write import SceneWriter, write_camera_json, write_models
from meshpose.render.gl import get_default_renderer
from meshpose.types import Pose
from support import scenes


def make_tiny_bop(root: Path, *, n_images: int = 3, width: int = 200, height: int = 150, seed: int = 0) -> Path:
    """Write a BOP dataset of one scene with two textured objects (one partly hiding the other), with depth,
    masks and visibility, at ``root``."""
    objs = list(scenes.objects()[:2])
    camera = scenes.make_camera(width, height)
    write_models(root, objs)
    write_camera_json(root, camera)
    writer = SceneWriter(root, "test", 1)
    rng = np.random.default_rng(seed)
    renderer = get_default_renderer()
    for im_id in range(n_images):
        p0 = scenes.look_at_pose(0.55, rng, (-18.0, 0.0), camera)
        p1 = scenes.look_at_pose(0.65, rng, (22.0, 4.0), camera)
        poses = Pose.stack([p0, p1])
        obs = scenes.render_observation(objs, poses, camera, seed=seed + im_id, with_depth=True, hole_fraction=0.0)
        full = renderer.render(objs, poses, camera)
        masks = np.stack([renderer.render([o], poses[i : i + 1], camera).mask[0] for i, o in enumerate(objs)])
        visib = np.stack([full.instance[0] == i + 1 for i in range(len(objs))])
        writer.add_image(
            im_id,
            camera,
            obs.rgb,
            [o.obj_id for o in objs],
            poses,
            depth=obs.depth,
            masks=masks,
            masks_visib=visib,
        )
    writer.close()
    return root


@pytest.fixture(scope="session")
def tiny_bop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny generated BOP dataset (read-only: copy it if a test must change it)."""
    return make_tiny_bop(tmp_path_factory.mktemp("tiny_bop"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Caches (template banks) go to a temporary folder, never to the user's ``~/.cache``."""
    old = os.environ.get("MESHPOSE_CACHE_DIR")
    os.environ["MESHPOSE_CACHE_DIR"] = str(tmp_path_factory.mktemp("meshpose-cache"))
    yield
    if old is None:
        os.environ.pop("MESHPOSE_CACHE_DIR", None)
    else:
        os.environ["MESHPOSE_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Undo the logging set-up a CLI command makes in-process (its handler would outlive the test and print into
    later tests' captured output, e.g. the doctests')."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
