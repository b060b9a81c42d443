"""Tiny golden image: a 32×24 render of a coloured box and sphere, stored in ``tests/data/render_golden.npz``.

The stored arrays come from the embree ray caster (the reference; regenerate with
``python tests/render_fixtures.py`` after an intended change of the scene or of the shading definition). Both
renderers are compared with them, so a change in either one's projection, occlusion, colours or lighting shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from meshpose.render import RaycastRenderer, get_default_renderer
from meshpose.render.base import RenderOutput
from support.render_fixtures import GOLDEN_PATH, golden_scene


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_PATH) as data:
        return {k: data[k] for k in data.files}


def check_against_golden(out: RenderOutput, golden: dict[str, np.ndarray], max_rgb: float, min_agree: float) -> None:
    instance = out.instance[0]
    assert instance.shape == golden["instance"].shape == (24, 32)
    agree = instance == golden["instance"]
    assert agree.mean() >= min_agree, f"{(~agree).sum()} pixels with another instance"
    assert set(np.unique(instance)) == {0, 1, 2}
    same = agree & (instance > 0)
    assert np.abs(out.depth[0] - golden["depth"])[same].max() < 1e-4
    assert np.abs(out.xyz[0] - golden["xyz"])[same].max() < 1e-4
    rgb = np.round(out.rgb[0] * 255).astype(int)
    err = np.abs(rgb - golden["rgb"].astype(int)).max(-1)[same]
    assert np.median(err) <= 1 and err.max() <= max_rgb, f"rgb differs by up to {err.max()}/255"
    assert np.all(out.rgb[0][instance == 0] == 0) and np.all(out.depth[0][instance == 0] == 0)


def test_raycaster_reproduces_golden(golden: dict[str, np.ndarray]) -> None:
    objects, poses, cam, light = golden_scene()
    out = RaycastRenderer().render(objects, poses, cam, lighting=light)
    check_against_golden(out, golden, max_rgb=1, min_agree=0.995)


def test_gl_matches_golden(golden: dict[str, np.ndarray]) -> None:
    objects, poses, cam, light = golden_scene()
    out = get_default_renderer().render(objects, poses, cam, lighting=light)
    # 768 pixels: allow 4 silhouette pixels to flip; colours within a few levels (float32 vs float64 shading,
    # GL's per-fragment normalisation of the interpolated normal).
    check_against_golden(out, golden, max_rgb=4, min_agree=0.995)
