"""Benchmark the synthetic scene engine: images per second (GL) and seconds per image (path tracer).

Usage::

    python benchmarks/bench_synth.py                                    # gl and photoreal, prints JSON
    python benchmarks/bench_synth.py --renderers gl --out synth.json    # gl only, writes the JSON
    python benchmarks/bench_synth.py --renderers photoreal --variants scalar_rgb llvm_ad_rgb --spp 32

For each renderer a dataset is written with :func:`meshpose.synth.synthesize` into a temporary folder (or
``--keep DIR``), ``--objects-per-scene`` annotated objects per scene plus the default 0–4 distractors, at
``--width × --height``. One warm-up scene comes first (it builds the objects, writes the models, starts GL or
compiles the Mitsuba kernels); the figures are then taken from the timestamps of the progress callback:

* ``steady_images_per_s`` / ``steady_s_per_image``: images of the timed scenes, new scene layouts included
  (objects are cached once built, as in a long run over a fixed object set), files written;
* ``end_to_end_images_per_s``: the whole timed ``synthesize`` call (setup and models included);
* ``sampler_images_per_s`` (gl): :meth:`SceneSampler.view` alone, nothing written — the on-the-fly rate a
  training loader gets;
* ``cpu_s_per_image``: CPU time of the process (all threads) per image — unlike wall time, it does not grow
  when other processes share the cores; ``2 / cpu_s_per_image`` bounds the rate on two free cores.

The machine's core count and load average are recorded: other processes on a shared machine slow every
figure down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.synth import SceneConfig, SceneSampler, SynthConfig, resolve_objects, synthesize


def run_synth(
    renderer: str,
    *,
    out: Path,
    objects: str,
    per_scene: int,
    width: int,
    height: int,
    scenes: int,
    images_per_scene: int,
    spp: int,
    variant: str,
    seed: int,
    geometry: str = "gl",
) -> dict[str, Any]:
    scene = SceneConfig(
        width=width,
        height=height,
        objects_per_scene=(per_scene, per_scene),
        spp=spp,
        mitsuba_variant=variant,
        photoreal_geometry=geometry,  # type: ignore[arg-type]
    )
    base = SynthConfig(
        out=str(out),
        objects=objects,
        scenes=1,
        images_per_scene=images_per_scene,
        split="train_pbr",
        renderer=renderer,  # type: ignore[arg-type]
        seed=seed,
        scene=scene,
    )
    t0 = time.perf_counter()
    # Warm-up: one image of one scene in another split builds the objects, writes the models, starts GL or
    # compiles the Mitsuba kernels.
    synthesize(dataclasses.replace(base, split="warmup", images_per_scene=1))
    warmup_s = time.perf_counter() - t0
    stamps: list[float] = []
    timed = dataclasses.replace(base, first_scene_id=1, scenes=scenes)
    cpu0 = os.times()
    t1 = time.perf_counter()
    result = synthesize(timed, progress=lambda done, total: stamps.append(time.perf_counter()))
    total_s = time.perf_counter() - t1
    cpu1 = os.times()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    per_image = np.diff(np.asarray([t1, *stamps]))
    steady = float(np.sum(per_image))
    n = len(per_image)
    return {
        "renderer": renderer,
        "variant": variant if renderer == "photoreal" else None,
        "spp": spp if renderer == "photoreal" else None,
        "photoreal_geometry": geometry if renderer == "photoreal" else None,
        "width": width,
        "height": height,
        "objects": objects,
        "objects_per_scene": per_scene,
        "distractors_per_scene": list(scene.distractors_per_scene),
        "scenes_timed": scenes,
        "images_per_scene": images_per_scene,
        "images_timed": n,
        "warmup_s": round(warmup_s, 2),
        "steady_images_per_s": round(n / steady, 3),
        "steady_s_per_image": round(steady / n, 3),
        "median_s_per_image": round(float(np.median(per_image)), 3),
        "p90_s_per_image": round(float(np.quantile(per_image, 0.9)), 3),
        "end_to_end_images_per_s": round(result.images_written / total_s, 3),
        # CPU seconds this process (all its threads) spent per image: independent of other processes on a
        # shared machine; with C cores free the rate cannot exceed C / cpu_s_per_image.
        "cpu_s_per_image": round(cpu_s / max(1, result.images_written), 3),
        "cpu_bound_images_per_s_on_2_cores": round(2.0 / max(cpu_s / max(1, result.images_written), 1e-9), 3),
    }


def sampler_rate(objects: str, per_scene: int, width: int, height: int, n: int, seed: int) -> dict[str, Any]:
    """Images per second of :meth:`SceneSampler.view` (GL, nothing written), new layout every 10 images."""
    objs = resolve_objects(objects, seed)
    sampler = SceneSampler(
        objs,
        SceneConfig(width=width, height=height, objects_per_scene=(per_scene, per_scene)),
        distractors=resolve_objects(f"novel:64@{seed + 1000}", 0),
    )
    rng = np.random.default_rng(seed)
    layout = sampler.layout(rng)
    sampler.view(layout, rng)  # warm-up
    t0 = time.perf_counter()
    views = 0
    for i in range(n):
        if i % 10 == 0:
            layout = sampler.layout(rng)
        sampler.view(layout, rng)
        views += 1
    dt = time.perf_counter() - t0
    return {"images": views, "images_per_s": round(views / dt, 3), "layout_every": 10}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renderers", nargs="+", default=["gl", "photoreal"], choices=["gl", "photoreal"])
    parser.add_argument("--objects", default="novel:16", help="object set (objects are cached once built)")
    parser.add_argument("--objects-per-scene", type=int, default=8)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--scenes", type=int, default=4, help="timed scenes (gl)")
    parser.add_argument("--images-per-scene", type=int, default=10, help="images per scene (gl)")
    parser.add_argument("--photoreal-images", type=int, default=3, help="timed images per variant (photoreal)")
    parser.add_argument("--spp", type=int, default=8, help="path-tracer samples per pixel (denoised)")
    parser.add_argument("--variants", nargs="+", default=["scalar_rgb", "llvm_ad_rgb"])
    parser.add_argument(
        "--photoreal-geometry",
        nargs="+",
        default=["gl"],
        choices=["gl", "mitsuba"],
        help="where path-traced images take depth and masks from (SceneConfig.photoreal_geometry)",
    )
    parser.add_argument("--sampler-images", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="write the datasets under this folder instead of a temporary one")
    parser.add_argument("--out", help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "device": {
            "cpu_count": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
            "machine": platform.machine(),
            "python": sys.version.split()[0],
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        common = {
            "objects": args.objects,
            "per_scene": args.objects_per_scene,
            "width": args.width,
            "height": args.height,
            "seed": args.seed,
        }
        if "gl" in args.renderers:
            results["gl"] = run_synth(
                "gl",
                out=root / "gl",
                scenes=args.scenes,
                images_per_scene=args.images_per_scene,
                spp=args.spp,
                variant="",
                **common,
            )
            results["gl"]["sampler"] = sampler_rate(
                args.objects, args.objects_per_scene, args.width, args.height, args.sampler_images, args.seed
            )
        if "photoreal" in args.renderers:
            try:
                import mitsuba

                from meshpose.render.photoreal import select_variant

                results["mitsuba_version"] = mitsuba.__version__
            except ImportError:
                results["photoreal"] = {"skipped": "mitsuba is not installed (pip install mitsuba)"}
            else:
                results["photoreal"] = {}
                for variant in args.variants:
                    try:
                        usable = select_variant(variant) == variant
                        if variant == "llvm_ad_rgb":
                            usable = select_variant("auto") == "llvm_ad_rgb"
                    except ValueError as exc:
                        results["photoreal"][variant] = {"skipped": str(exc)}
                        continue
                    if not usable:
                        results["photoreal"][variant] = {"skipped": "no working LLVM (apt-get install libllvm19)"}
                        continue
                    for geometry in args.photoreal_geometry:
                        results["photoreal"][f"{variant}/{geometry}"] = run_synth(
                            "photoreal",
                            out=root / f"photoreal_{variant}_{geometry}",
                            scenes=1,
                            images_per_scene=args.photoreal_images,
                            spp=args.spp,
                            variant=variant,
                            geometry=geometry,
                            **common,
                        )
    results["device"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
