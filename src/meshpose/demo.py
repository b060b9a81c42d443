"""The embedded example (``meshpose demo``): the main job end to end on a scene meshpose makes itself.

A textured example object (built procedurally, nothing to download) stands among distractor objects over a
cluttered background; the scene is rendered with a light unlike the refiners' own, then blurred and given sensor
noise. Its true pose is perturbed by 15° and 10 % of the diameter, the chosen refiner refines it, and the demo
writes ``poses.json`` (true, initial and refined poses, errors, timings) and ``overlay.png`` (the image with the
object's outline and axes at the initial pose, left, and at the refined pose, right).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from meshpose.eval.metrics import add_or_adds, mspd, re, te
from meshpose.geometry.lie import perturb_pose
from meshpose.io.images import write_rgb
from meshpose.mesh import example_object, make_object_model, texture_pattern, vertex_colored_mesh
from meshpose.refine.registry import available_methods, make_refiner
from meshpose.render.base import Lighting
from meshpose.render.gl import get_default_renderer
from meshpose.types import Camera, ObjectModel, Observation, Pose
from meshpose.viz.overlay import draw_pose_overlay, side_by_side

__all__ = ["DEMO_METHOD_ORDER", "ExampleScene", "make_example_scene", "run_demo"]

#: Refiners the demo prefers, best first (on the demo's textured object); the first available one runs.
DEMO_METHOD_ORDER = ("flow-pnp", "contour")

_SCENE_LIGHT = Lighting(ambient=0.5, diffuse=0.65, direction=(-0.5, -0.7, -1.0), specular=0.2, shininess=25.0)


@dataclass(frozen=True, eq=False)
class ExampleScene:
    """The demo's scene: the observation, the target object and its true pose, and the distractors."""

    observation: Observation
    target: ObjectModel
    gt_pose: Pose
    distractors: list[ObjectModel]
    distractor_poses: Pose


def _pose_at(camera: Camera, rng: np.random.Generator, u: float, v: float, z: float) -> Pose:
    """A random orientation with the origin projecting at pixel ``(u, v)`` at depth ``z`` metres."""
    import roma

    q = torch.tensor(rng.normal(size=4), dtype=torch.float64)
    R = roma.unitquat_to_rotmat(q / q.norm())
    t = torch.tensor([(u - camera.cx) / camera.fx * z, (v - camera.cy) / camera.fy * z, z], dtype=torch.float64)
    return Pose(R, t)


def make_example_scene(seed: int = 0) -> ExampleScene:
    """Build and render the demo scene (640×480) deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    camera = Camera.from_fxfycxcy(600.0, 600.0, 319.5, 239.5, width=640, height=480)
    target = example_object(0)
    kinds = ("torus", "cylinder", "icosphere", "cone")
    distractors = [
        make_object_model(vertex_colored_mesh(k, seed=seed + 10 + j, size_m=0.09), 100 + j, name=k)  # type: ignore[arg-type]
        for j, k in enumerate(kinds)
    ]
    gt = _pose_at(camera, rng, 330.0, 250.0, 0.55)
    spots = [(200.0, 170.0, 0.62), (460.0, 320.0, 0.60), (160.0, 360.0, 0.7), (415.0, 215.0, 0.42)]
    dposes = Pose.stack([_pose_at(camera, rng, u, v, z) for u, v, z in spots])
    objects = [target, *distractors]
    poses = Pose.cat([gt.reshape(1), dposes])
    r = get_default_renderer().render(objects, poses, camera, lighting=_SCENE_LIGHT)
    bg = cv2.resize(texture_pattern("noise", 256, seed + 1), (640, 480), interpolation=cv2.INTER_CUBIC)
    bg = 0.55 * bg.astype(np.float32) + 0.45 * 110.0
    img = np.where(r.mask[0][..., None], r.rgb[0] * 255.0, bg)
    img = cv2.GaussianBlur(img, (3, 3), 0.7) + rng.normal(0.0, 2.5, img.shape)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return ExampleScene(Observation(rgb=rgb, camera=camera), target, gt, distractors, dposes)


def _errors(obj: ObjectModel, est: Pose, gt: Pose, camera: Camera) -> dict[str, float]:
    Re, tE = est.numpy()
    Rg, tg = gt.numpy()
    return {
        "add_over_diameter": float(add_or_adds(Re, tE, Rg, tg, obj.points, symmetric=obj.is_symmetric)) / obj.diameter,
        "rotation_deg": float(re(Re, Rg)),
        "translation_mm": float(te(tE, tg)) * 1e3,
        "mspd_px": float(mspd(Re, tE, Rg, tg, camera.K, obj.points, obj.symmetries)),
    }


def _pose_json(p: Pose) -> dict[str, Any]:
    R, t = p.numpy()
    return {"R": R.reshape(3, 3).tolist(), "t_m": t.reshape(3).tolist()}


def run_demo(
    out: str | Path, *, method: str | None = None, seed: int = 0, rot_deg: float = 15.0, trans_frac: float = 0.1
) -> dict[str, Any]:
    """Run the demo and write ``poses.json``, ``overlay.png`` and ``observation.png`` into ``out``.

    Args:
        out: output folder (created).
        method: refiner preset (default: the first available of :data:`DEMO_METHOD_ORDER`).
        seed: seed of the scene and of the perturbation.
        rot_deg: initial rotation error, degrees.
        trans_frac: initial translation error, fraction of the diameter.

    Returns:
        A summary: method, errors before and after, time, and the written paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if method is None:
        have = available_methods()
        method = next((m for m in DEMO_METHOD_ORDER if m in have), None)
        if method is None:
            raise ValueError(f"no RGB refiner available (have: {have})")
    refiner = make_refiner(method)
    scene = make_example_scene(seed)
    obs, obj = scene.observation, scene.target
    init = perturb_pose(
        scene.gt_pose, math.radians(rot_deg), trans_frac * obj.diameter, torch.Generator().manual_seed(seed)
    )
    t0 = time.perf_counter()
    result = refiner.refine(obs, [obj], init.reshape(1))
    elapsed = time.perf_counter() - t0
    refined = result.pose[0]
    failure = result.info.failure[0]
    errors = {
        "init": _errors(obj, init, scene.gt_pose, obs.camera),
        "refined": _errors(obj, refined, scene.gt_pose, obs.camera),
    }
    left = draw_pose_overlay(obs.rgb, obs.camera, [obj], [("initial pose", init.reshape(1), (255, 60, 60))])
    right = draw_pose_overlay(obs.rgb, obs.camera, [obj], [(f"refined ({method})", refined.reshape(1), (60, 255, 60))])
    overlay_path, obs_path, poses_path = out / "overlay.png", out / "observation.png", out / "poses.json"
    write_rgb(overlay_path, side_by_side(left, right))
    write_rgb(obs_path, obs.rgb)
    summary = {
        "method": method,
        "seed": seed,
        "object": {"name": obj.name, "diameter_m": obj.diameter},
        "camera": {"K": obs.camera.K.tolist(), "width": obs.camera.width, "height": obs.camera.height},
        "poses": {"gt": _pose_json(scene.gt_pose), "init": _pose_json(init), "refined": _pose_json(refined)},
        "errors": errors,
        "score": float(result.score[0]),
        "failure": None if failure is None else failure.as_dict(),
        "time_s": elapsed,
        "timings": result.info.timings,
        "iterations": result.info.iterations,
    }
    poses_path.write_text(json.dumps(summary, indent=1))
    return {**summary, "poses_path": str(poses_path), "overlay_path": str(overlay_path)}
