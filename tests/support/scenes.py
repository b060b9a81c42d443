"""Small synthetic scenes that the tests render themselves (no downloaded data).

An observation is the GL rendering of textured procedural objects over a procedural cluttered background, with a
light that differs from the refiners' default, sensor noise and a slight blur, so that a refiner never compares a
rendering with an identical rendering. Depth (optional) gets noise and holes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import cv2
import numpy as np
import torch

from meshpose.eval.metrics import add_or_adds
from meshpose.geometry.lie import perturb_pose
from meshpose.mesh import example_object, make_object_model, textured_box, vertex_colored_mesh
from meshpose.render.base import Lighting
from meshpose.render.gl import get_default_renderer
from meshpose.types import Camera, ObjectModel, Observation, Pose

SCENE_LIGHT = Lighting(ambient=0.55, diffuse=0.55, direction=(0.4, -0.6, -1.0), specular=0.15, shininess=30.0)


def make_camera(width: int = 320, height: int = 240, f: float | None = None) -> Camera:
    """A pinhole camera with square pixels and a slightly off-centre principal point."""
    f = f if f is not None else 1.1 * width
    return Camera.from_fxfycxcy(f, f * 1.002, width / 2 - 3.3, height / 2 + 2.1, width=width, height=height)


@cache
def objects() -> tuple[ObjectModel, ...]:
    """Three distinct textured objects: the example object, a textured box and a vertex-coloured capsule."""
    box = make_object_model(textured_box((0.11, 0.07, 0.05), seed=3, texture="noise"), 2, name="box")
    capsule = make_object_model(vertex_colored_mesh("capsule", seed=4, size_m=0.12), 3, name="capsule")
    return (example_object(0), box, capsule)


def background(height: int, width: int, seed: int) -> np.ndarray:
    """A cluttered procedural background: smooth colour noise with random rectangles and discs, uint8."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (max(2, height // 24), max(2, width // 24), 3)).astype(np.float32)
    img = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(25):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            w, h = int(rng.integers(5, width // 4)), int(rng.integers(5, height // 4))
            cv2.rectangle(img, (x, y), (x + w, y + h), color, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(3, height // 8)), color, -1)
    img = 0.65 * img + 0.35 * 128.0  # less saturated than pure noise, still cluttered
    return np.clip(img, 0, 255).astype(np.uint8)


def look_at_pose(distance: float, rng: np.random.Generator, offset_px: tuple[float, float], camera: Camera) -> Pose:
    """A random orientation at ``distance`` metres, the origin projecting ``offset_px`` from the image centre."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    import roma

    R = roma.unitquat_to_rotmat(torch.tensor(q, dtype=torch.float64))
    u = camera.width / 2 + offset_px[0]
    v = camera.height / 2 + offset_px[1]
    t = torch.tensor(
        [(u - camera.cx) / camera.fx * distance, (v - camera.cy) / camera.fy * distance, distance], dtype=torch.float64
    )
    return Pose(R, t)


def render_observation(
    objs: Sequence[ObjectModel],
    poses: Pose,
    camera: Camera,
    *,
    seed: int = 0,
    noise_std: float = 3.0,
    with_depth: bool = False,
    depth_noise_m: float = 0.001,
    hole_fraction: float = 0.02,
    lighting: Lighting = SCENE_LIGHT,
) -> Observation:
    """Render ``objs`` at ``poses`` (``(N,)``) over a cluttered background into an :class:`Observation`."""
    rng = np.random.default_rng(seed)
    r = get_default_renderer().render(list(objs), poses.reshape(-1), camera, lighting=lighting)
    bg = background(camera.height, camera.width, seed + 1000).astype(np.float32)
    fg = r.rgb[0] * 255.0
    m = r.mask[0][..., None]
    img = np.where(m, fg, bg)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img = img + rng.normal(0.0, noise_std, img.shape)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    depth = None
    if with_depth:
        d = r.depth[0].astype(np.float64)
        # A background plane behind the objects, then Gaussian noise and random holes.
        d = np.where(d > 0, d, float(poses.t[..., 2].max()) + 0.3)
        d = d + rng.normal(0.0, depth_noise_m, d.shape)
        d[rng.random(d.shape) < hole_fraction] = 0.0
        depth = d.astype(np.float32)
    return Observation(rgb=rgb, camera=camera, depth=depth)


def perturb(pose: Pose, rot_deg: float, trans_frac: float, diameter: float, seed: int) -> Pose:
    """``pose`` turned by exactly ``rot_deg`` and shifted by exactly ``trans_frac × diameter``."""
    return perturb_pose(pose, math.radians(rot_deg), trans_frac * diameter, torch.Generator().manual_seed(seed))


def add_error(obj: ObjectModel, est: Pose, gt: Pose) -> float:
    """ADD (ADD-S for a symmetric object) in metres between two single poses."""
    Re, te = est.numpy()
    Rg, tg = gt.numpy()
    return float(add_or_adds(Re, te, Rg, tg, obj.points, symmetric=obj.is_symmetric))


def single_object_cases(
    n: int, *, seed: int = 0, camera: Camera | None = None, rot_deg: float = 15.0, trans_frac: float = 0.1
) -> list[tuple[ObjectModel, Pose, Pose, int]]:
    """``n`` fixed cases ``(object, gt_pose, init_pose, scene_seed)`` cycling through :func:`objects`."""
    camera = camera or make_camera()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obj = objects()[i % len(objects())]
        dist = float(rng.uniform(0.45, 0.7))
        off = (float(rng.uniform(-30, 30)), float(rng.uniform(-20, 20)))
        gt = look_at_pose(dist, rng, off, camera)
        init = perturb(gt, rot_deg, trans_frac, obj.diameter, seed * 1000 + i)
        out.append((obj, gt, init, seed * 1000 + i))
    return out


def rendered_cases(
    objects_spec: str,
    n: int,
    seed: int,
    *,
    rot_deg: float = 15.0,
    trans_frac: float = 0.1,
    with_depth: bool = False,
) -> list[tuple[ObjectModel, Pose, Pose, Observation]]:
    """``n`` single-object scenes ``(object, gt_pose, init_pose, observation)`` of the objects ``objects_spec``
    names (``novel:A-B``, a mesh folder or a BOP dataset; cycled), centred in a 320×240 camera at a distance that
    scales with the object's diameter, the init exactly ``rot_deg`` and ``trans_frac`` diameters off."""
    from meshpose.synth import resolve_objects

    cam = make_camera(320, 240)
    objs = resolve_objects(objects_spec, 0)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obj = objs[i % len(objs)]
        gt = look_at_pose(float(rng.uniform(0.45, 0.65)) * obj.diameter / 0.15, rng, (0.0, 0.0), cam)
        init = perturb(gt, rot_deg, trans_frac, obj.diameter, seed * 100 + i)
        obs = render_observation([obj], gt.reshape(1), cam, seed=seed * 100 + i, with_depth=with_depth)
        out.append((obj, gt, init, obs))
    return out


def overlapping_pair_case(
    seed: int = 0, *, camera: Camera | None = None, rot_deg: float = 15.0, trans_frac: float = 0.1
) -> tuple[tuple[ObjectModel, ObjectModel], Pose, Pose, int]:
    """Two objects of :func:`objects`, the second in front of and partly hiding the first.

    Returns ``((far, near), gt (2,), init (2,), scene_seed)``: the example object at about 0.6 m and the
    textured box at about 0.45 m, shifted sideways so that it covers part of the example object; both initial
    poses are perturbed by exactly ``rot_deg`` and ``trans_frac`` × diameter.
    """
    camera = camera or make_camera()
    rng = np.random.default_rng(seed + 500)
    far, near = objects()[0], objects()[1]
    gt_far = look_at_pose(0.6, rng, (-12.0, 0.0), camera)
    gt_near = look_at_pose(0.45, rng, (30.0, 8.0), camera)
    gt = Pose.stack([gt_far, gt_near])
    init = Pose.stack(
        [
            perturb(gt_far, rot_deg, trans_frac, far.diameter, seed * 1000 + 500),
            perturb(gt_near, rot_deg, trans_frac, near.diameter, seed * 1000 + 501),
        ]
    )
    return (far, near), gt, init, seed + 500
