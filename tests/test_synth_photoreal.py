"""The Mitsuba 3 path tracer behind the Renderer protocol: OpenCV camera conventions, geometry that agrees with
the GL renderer, textures the right way up, the denoiser, and a photoreal dataset that passes the validator.

Skipped when Mitsuba is not installed (the optional ``photoreal`` extra). Uses ``scalar_rgb``, which needs no
LLVM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mitsuba")

from meshpose.mesh import example_object, make_object_model, vertex_colored_mesh
from meshpose.render import GLRenderer, Lighting
from meshpose.render.photoreal import (
    Material,
    PhotorealRenderer,
    denoise_radiance,
    opencv_sensor_params,
    select_variant,
)
from meshpose.synth import SceneConfig, SynthConfig, synthesize
from meshpose.types import Camera, Pose
from support.bop_validator import assert_valid

CAMERA = Camera.from_fxfycxcy(110.0, 110.0, 44.2, 38.6, width=96, height=72)  # off-centre principal point


def _scene() -> tuple[list, Pose]:  # type: ignore[type-arg]
    import roma
    import torch

    a = example_object(0)
    b = make_object_model(vertex_colored_mesh("capsule", seed=2, size_m=0.07, target_faces=1500), 2)
    R = roma.rotvec_to_rotmat(torch.tensor([[0.5, 0.8, 0.2], [1.2, -0.3, 0.4]], dtype=torch.float64)).numpy()
    t = np.array([[-0.03, 0.01, 0.42], [0.06, -0.02, 0.5]])
    return [a, b], Pose(R, t)


def test_sensor_params_follow_opencv() -> None:
    with pytest.raises(ValueError, match="square pixels"):
        opencv_sensor_params(Camera.from_fxfycxcy(100.0, 101.0, 10.0, 10.0, width=20, height=20))
    p = opencv_sensor_params(CAMERA)
    assert p["principal_point_offset_x"] == pytest.approx((48 - 0.5 - 44.2) / 96)
    assert select_variant("scalar_rgb") == "scalar_rgb"


def test_geometry_agrees_with_gl_and_textures_are_upright() -> None:
    objects, poses = _scene()
    light = Lighting(ambient=1.0, diffuse=0.0)
    gl = GLRenderer().render(objects, poses, CAMERA, lighting=light)
    r = PhotorealRenderer(
        variant="scalar_rgb", spp=16, max_depth=2, material=Material(roughness=1.0, specular=0.0), denoise=False
    )
    pr = r.render(objects, poses, CAMERA, lighting=light, seed=1)
    assert pr.rgb.shape == (1, 72, 96, 3)
    differ = int((gl.instance != pr.instance).sum())
    assert differ <= 4, f"{differ} pixels see another object in the path tracer"
    both = gl.mask[0] & pr.mask[0]
    assert np.abs(gl.depth[0][both] - pr.depth[0][both]).max() < 1e-4
    assert np.abs(gl.xyz[0][both] - pr.xyz[0][both]).max() < 1e-4
    assert np.percentile((gl.normal[0][both] * pr.normal[0][both]).sum(-1), 5) > 0.99
    # Lit by a uniform white environment only, a matte surface shows its albedo (less ambient occlusion):
    # the texture must line up with GL's.
    sel = both & (gl.instance[0] == 1)
    corr = np.corrcoef(gl.rgb[0][sel].ravel(), pr.rgb[0][sel].ravel())[0, 1]
    assert corr > 0.85


def test_gl_geometry_option_is_the_gl_output() -> None:
    objects, poses = _scene()
    gl = GLRenderer().render(objects, poses, CAMERA)
    pr = PhotorealRenderer(variant="scalar_rgb", spp=2, geometry="gl").render(objects, poses, CAMERA)
    assert np.array_equal(gl.instance, pr.instance) and np.array_equal(gl.depth, pr.depth)
    assert (pr.rgb[~pr.mask] == 0).all() and pr.rgb[pr.mask].mean() > 0.02


def test_denoiser_keeps_texture_and_removes_noise() -> None:
    rng = np.random.default_rng(0)
    albedo = (0.1 + 0.9 * rng.random((30, 40, 3))).astype(np.float32)
    instance = np.ones((30, 40), np.int32)
    instance[:, 25:] = 2
    light = np.where(instance[..., None] == 1, 0.8, 0.3).astype(np.float32)
    clean = albedo * light
    assert np.allclose(denoise_radiance(clean, albedo, instance, 1.5), clean, atol=1e-5)
    noisy = clean * (1.0 + 0.3 * rng.standard_normal(clean.shape).astype(np.float32))
    out = denoise_radiance(noisy, albedo, instance, 1.5)
    assert np.abs(out - clean).mean() < 0.5 * np.abs(noisy - clean).mean()


def test_photoreal_dataset_passes_the_validator(tmp_path: Path) -> None:
    config = SynthConfig(
        out=str(tmp_path / "pr"),
        objects="novel:3",
        scenes=1,
        images_per_scene=1,
        split="test",
        renderer="photoreal",
        seed=1,
        distractors="none",
        scene=SceneConfig(
            width=96,
            height=72,
            objects_per_scene=(2, 2),
            spp=4,
            mitsuba_variant="scalar_rgb",
            photoreal_geometry="mitsuba",
        ),
    )
    result = synthesize(config)
    assert result.images_written == 1
    assert_valid(tmp_path / "pr", "test")


@pytest.mark.slow
def test_auto_variant_probe() -> None:
    assert select_variant("auto") in ("scalar_rgb", "llvm_ad_rgb")
