"""Benchmark the GL renderer: one 640×480 frame, one 256×256 crop, and 16 hypotheses at 128×128 in one call.

Usage::

    python benchmarks/bench_render.py                         # procedural ~20k-face mesh, prints JSON
    python benchmarks/bench_render.py --out render.json       # writes the JSON
    python benchmarks/bench_render.py --mesh /path/obj_000001.ply   # a BOP model (millimetres → --scale 1e-3)

Every figure is the median and 90th percentile wall time over ``--runs`` calls after ``--warmup`` calls, with a
different (seeded) object rotation per call. ``draw`` (GL commands until the GPU/llvmpipe finished),
``readback`` (framebuffer → numpy, plus splitting depth/instance) and ``prepare`` (checks, matrices) come from
``RenderOutput.timings``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import trimesh

from meshpose.render import GLRenderer, Lighting
from meshpose.types import Camera, ObjectModel, Pose


def procedural_mesh(subdivisions: int = 5, radius: float = 0.06, seed: int = 0) -> trimesh.Trimesh:
    """A bumpy, vertex-coloured icosphere (20 480 faces for 5 subdivisions), metres."""
    rng = np.random.default_rng(seed)
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    unit = np.asarray(mesh.vertices)
    freqs = rng.normal(size=(6, 3)) * 3.0
    phases = rng.uniform(0, 2 * np.pi, 6)
    bump = np.sin(unit @ freqs.T + phases).sum(axis=1) / 6.0
    stretch = np.array([1.0, 0.8, 0.6])
    vertices = unit * (1.0 + 0.15 * bump)[:, None] * stretch * radius
    colors = np.clip(np.column_stack([unit * 0.5 + 0.5, np.ones(len(unit))]) * 255, 0, 255).astype(np.uint8)
    return trimesh.Trimesh(vertices, mesh.faces, vertex_colors=colors, process=False)


def load_mesh(path: str, scale: float) -> trimesh.Trimesh:
    mesh = trimesh.load(path, force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"{path}: not a single triangle mesh")
    mesh.apply_scale(scale)
    mesh.apply_translation(-mesh.bounding_box.centroid)
    return mesh


def random_poses(rng: np.random.Generator, n: int, distance: float) -> Pose:
    """``(n,)`` poses with random rotations (QR of a Gaussian), the object centred ``distance`` ahead."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    t = np.column_stack([rng.uniform(-0.01, 0.01, (n, 2)), np.full(n, distance)])
    return Pose(q, t)


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"median_ms": round(float(np.median(a)), 3), "p90_ms": round(float(np.quantile(a, 0.9)), 3)}


def time_case(
    renderer: GLRenderer,
    obj: ObjectModel,
    make_call: Any,
    runs: int,
    warmup: int,
    per: int = 1,
) -> dict[str, Any]:
    """Time ``runs`` calls of ``make_call(i) -> (poses, cameras)``; ``per`` scenes per call."""
    lighting = Lighting()
    for i in range(warmup):
        renderer.render([obj], *make_call(i), lighting=lighting)
    wall: list[float] = []
    parts: dict[str, list[float]] = {"prepare": [], "draw": [], "readback": []}
    for i in range(runs):
        poses, cams = make_call(warmup + i)
        t0 = time.perf_counter()
        out = renderer.render([obj], poses, cams, lighting=lighting)
        wall.append(time.perf_counter() - t0)
        for k in parts:
            parts[k].append(out.timings[k])
    result: dict[str, Any] = {"per_call": stats(wall), "breakdown": {k: stats(v) for k, v in parts.items()}}
    if per > 1:
        result["scenes_per_call"] = per
        result["per_hypothesis"] = stats([w / per for w in wall])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", help="mesh file to render instead of the procedural one")
    parser.add_argument("--scale", type=float, default=None, help="scale for --mesh (default 1e-3: mm → m)")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per case (≥ 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--hypotheses", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)
    if args.runs < 30:
        parser.error("--runs must be at least 30")

    if args.mesh:
        mesh = load_mesh(args.mesh, 1e-3 if args.scale is None else args.scale)
        source = args.mesh
    else:
        mesh = procedural_mesh()
        source = "procedural bumpy icosphere (5 subdivisions), vertex colours"
    diameter = float(np.linalg.norm(np.ptp(np.asarray(mesh.vertices), axis=0)))
    obj = ObjectModel(1, mesh, mesh, diameter, np.eye(4)[None], np.asarray(mesh.vertices))
    rng = np.random.default_rng(args.seed)
    renderer = GLRenderer()

    full = Camera.from_fxfycxcy(600.0, 600.0, 319.5, 239.5, width=640, height=480)
    distance = 600.0 * diameter / 200.0  # the object's diameter spans about 200 pixels
    n_calls = args.warmup + args.runs
    single = random_poses(rng, n_calls, distance)
    batch = random_poses(rng, n_calls * args.hypotheses, distance)

    def crop_of(p: Pose, size: int) -> Camera:
        """A square crop around the object's projected centre, 1.5 diameters wide."""
        _, t = p.numpy()
        u, v = full.fx * t[0] / t[2] + full.cx, full.fy * t[1] / t[2] + full.cy
        half = 0.75 * full.fx * diameter / t[2]
        return full.crop((u - half, v - half, u + half, v + half), size, size)

    t0 = time.perf_counter()
    renderer.render([obj], single[0:1], full)  # creates the context, uploads the mesh
    first_call = time.perf_counter() - t0
    ctx_info = renderer.context.info

    results: dict[str, Any] = {
        "mesh": {"source": source, "faces": len(mesh.faces), "vertices": len(mesh.vertices)},
        "device": {
            "gl_renderer": ctx_info["GL_RENDERER"],
            "gl_version": ctx_info["GL_VERSION"],
            "cpu_count": os.cpu_count(),
            "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS"),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
        },
        "runs": args.runs,
        "warmup": args.warmup,
        "first_call_ms": round(first_call * 1e3, 1),
        "full_640x480": time_case(renderer, obj, lambda i: (single[i : i + 1], full), args.runs, args.warmup),
        "crop_256x256": time_case(
            renderer, obj, lambda i: (single[i : i + 1], crop_of(single[i], 256)), args.runs, args.warmup
        ),
    }
    h = args.hypotheses

    def batch_call(i: int) -> tuple[Pose, list[Camera]]:
        poses = batch[i * h : (i + 1) * h]
        return poses.reshape(h, 1), [crop_of(poses[j], 128) for j in range(h)]

    results[f"batch_{h}x128x128"] = time_case(renderer, obj, batch_call, args.runs, args.warmup, per=h)
    text = json.dumps(results, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    renderer.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
