"""``genflow`` speed on the CPU and its training curve.

Accuracy comes from ``bench_refine.py --methods genflow`` (perturb → refine → eval, next to the other presets);
this script measures what that one does not:

* time per object and per outer iteration of the refiner (crop, render, network, total), for one object of a
  640×480 synthetic image of a held-out generated object, RGB and RGB-D, over ``--runs`` refinements with
  ``--threads`` torch threads (the issue's target: ≤ 100 ms per object per outer iteration on 2 cores);
* the network alone: one forward pass of the default stage (batch 1) per crop size;
* the training curve (losses, train/validation ADD(-S) recall) of the weights' ``train_log.jsonl``, as a PNG.

Example::

    python benchmarks/bench_genflow.py --out benchmarks/results/genflow_speed.json \
        --curve benchmarks/results/genflow_training.png
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.geometry.lie import perturb_pose
from meshpose.nets.batch import METHOD, load_genflow_model
from meshpose.nets.checkpoint import resolve_weights
from meshpose.refine.genflow import GenFlowConfig, GenFlowRefiner
from meshpose.synth import SceneConfig, SceneSampler, SyntheticSample, resolve_objects
from meshpose.types import Pose
from meshpose.viz.plots import plot_training_log


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"median_ms": round(float(np.median(a)), 2), "p90_ms": round(float(np.quantile(a, 0.9)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="model.pt (default: the shipped weights)")
    parser.add_argument("--objects", default="novel:5000-5010", help="held-out generated objects")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the JSON here (default: print it)")
    parser.add_argument("--curve", help="write the training-curve PNG here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    weights = resolve_weights(args.weights, METHOD)
    net = load_genflow_model(weights)
    cfg = GenFlowConfig(weights=str(weights))
    refiner = GenFlowRefiner(cfg, model=net)
    sampler = SceneSampler(list(resolve_objects(args.objects, 0)), SceneConfig())
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    cases: list[tuple[SyntheticSample, int, Pose]] = []
    while len(cases) < args.runs:
        smp = sampler.sample(rng)
        for i in np.argsort(-smp.visib_fract):
            if smp.visib_fract[i] < 0.5 or len(cases) >= args.runs:
                break
            init = perturb_pose(smp.poses[int(i)], math.radians(15.0), 0.1 * smp.objects[int(i)].diameter, gen)
            cases.append((smp, int(i), init))

    results: dict[str, Any] = {
        "weights": str(weights),
        "net_parameters": sum(p.numel() for p in net.parameters()),
        "stages": [vars(s) for s in cfg.stages],
        "threads": torch.get_num_threads(),
        "device": {"cpu_count": __import__("os").cpu_count(), "machine": platform.machine()},
    }
    for modality in ("rgb", "rgbd"):
        totals: list[float] = []
        per_iter: list[float] = []
        parts: dict[str, list[float]] = {"crop": [], "render": [], "network": []}
        smp, i, init = cases[0]
        refiner.refine(smp.observation(with_depth=modality == "rgbd"), [smp.objects[i]], init.reshape(1))  # warm-up
        for smp, i, init in cases:
            obs = smp.observation(with_depth=modality == "rgbd")
            t0 = time.perf_counter()
            res = refiner.refine(obs, [smp.objects[i]], init.reshape(1))
            dt = time.perf_counter() - t0
            totals.append(dt)
            per_iter.append(dt / max(res.info.iterations, 1))
            for k in parts:
                parts[k].append(res.info.timings.get(k, 0.0) / max(res.info.iterations, 1))
        results[modality] = {
            "outer_iterations": res.info.iterations,
            "per_object": stats(totals),
            "per_object_per_outer_iteration": stats(per_iter),
            "per_outer_iteration_breakdown": {k: stats(v) for k, v in parts.items()},
        }

    net_only: dict[str, Any] = {}
    for size in sorted({s.size for s in cfg.stages}):
        x = torch.rand(1, 5, size, size)
        xyz = torch.randn(1, 3, size, size) * 0.03
        mask = torch.ones(1, 1, size, size, dtype=torch.bool)
        K = torch.tensor([[size * 1.2, 0.0, size / 2], [0.0, size * 1.2, size / 2], [0.0, 0.0, 1.0]])[None]
        pose = cases[0][2].reshape(1).to(torch.float32)
        times = []
        with torch.no_grad():
            for rep in range(12):
                t0 = time.perf_counter()
                net(x, x, xyz, mask, K, pose, iterations=cfg.stages[-1].inner)
                if rep >= 2:
                    times.append(time.perf_counter() - t0)
        net_only[str(size)] = {"inner_iterations": cfg.stages[-1].inner, **stats(times)}
    results["network_forward_batch1"] = net_only

    log_path = weights.parent / "train_log.jsonl"
    if args.curve and log_path.is_file():
        plot_training_log(log_path, args.curve, title=f"genflow training ({weights.parent.name})")
        results["training_curve"] = args.curve

    text = json.dumps(results, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
