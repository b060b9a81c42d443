"""``deeprm`` on held-out generated objects: accuracy against the number of iterations, speed, training curve.

LM-O figures come from ``bench_refine.py --methods deeprm`` (perturb → refine → eval, next to the other
presets); this script measures what that one does not, on synthetic images of generated objects that no training
or validation run saw (``--objects``, default ``novel:5000-5040``; scene seed ``--seed``):

* per initial-error level ``ROT:FRAC`` (exact errors: degrees, fraction of the diameter) and per iteration count
  (``--iterations``, e.g. 1,2,4,6,8,12: the paper's table of iterations): ADD(-S) recall at 0.1 d, mean and
  median ADD(-S) in diameters, the share of instances the refiner improved — the init's figures beside them;
* time per iteration per object (crop + render + network, one object per call, ``--threads`` torch threads);
* the training curve of the weights' run (``train_log.jsonl``), as a PNG (``--curve``).

Example::

    python benchmarks/bench_deeprm.py --weights package --levels 15:0.1,30:0.2 --iterations 1,2,4,6,8,12 \
        --out benchmarks/results/deeprm/novel.json --curve benchmarks/results/deeprm/novel_training.png
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.eval.metrics import add_or_adds
from meshpose.nets.checkpoint import resolve_weights
from meshpose.nets.deeprm import METHOD, load_deeprm_model
from meshpose.refine.deeprm import DeepRMConfig, DeepRMRefiner
from meshpose.synth import resolve_objects
from meshpose.train.genflow_data import make_validation_set
from meshpose.types import Camera, Observation, Pose
from meshpose.viz.plots import plot_training_log


def level_figures(
    refiner: DeepRMRefiner, objects_spec: str, images: int, seed: int, rot: float, frac: float, iterations: list[int]
) -> dict[str, Any]:
    """Accuracy of ``refiner`` at one init level for each iteration count (the same images and inits for all)."""
    val = make_validation_set(objects_spec, images, seed=seed, rot_deg=rot, trans_frac=frac)
    objects = resolve_objects(objects_spec, seed)
    out: dict[str, Any] = {}
    for n_it in iterations:
        err, err0 = [], []
        t0 = time.perf_counter()
        for v in val:
            obs = Observation(v["rgb"], Camera(v["K"], *v["size"]))
            models = [objects.by_id(i) for i in v["obj_ids"]]
            res = refiner.refine(obs, models, Pose(*v["init"]), iterations=n_it)
            (Re, te), (Rg, tg), (Ri, ti) = res.pose.numpy(), v["gt"], v["init"]
            for k, m in enumerate(models):
                sym = m.is_symmetric
                err.append(float(add_or_adds(Re[k], te[k], Rg[k], tg[k], m.points, symmetric=sym)) / m.diameter)
                err0.append(float(add_or_adds(Ri[k], ti[k], Rg[k], tg[k], m.points, symmetric=sym)) / m.diameter)
        e, e0 = np.asarray(err), np.asarray(err0)
        out[str(n_it)] = {
            "instances": len(e),
            "add_s_recall": round(float((e < 0.1).mean()), 4),
            "init_add_s_recall": round(float((e0 < 0.1).mean()), 4),
            "mean_add_d": round(float(e.mean()), 4),
            "init_mean_add_d": round(float(e0.mean()), 4),
            "median_add_d": round(float(np.median(e)), 4),
            "init_median_add_d": round(float(np.median(e0)), 4),
            "improved_share": round(float((e < e0).mean()), 4),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        print(f"{rot}°/{frac}d, {n_it} iterations: {json.dumps(out[str(n_it)])}", flush=True)
    return out


def speed(refiner: DeepRMRefiner, objects_spec: str, seed: int, runs: int, iterations: int) -> dict[str, float]:
    """Median and 90th-percentile wall time per iteration per object (one object per call, after a warm-up)."""
    val = make_validation_set(objects_spec, max(2, runs // 3 + 1), seed=seed + 7, rot_deg=15.0, trans_frac=0.1)
    objects = resolve_objects(objects_spec, seed + 7)
    cases = [(v, k) for v in val for k in range(len(v["obj_ids"]))][: runs + 1]
    times = []
    for j, (v, k) in enumerate(cases):
        obs = Observation(v["rgb"], Camera(v["K"], *v["size"]))
        init = Pose(*v["init"])[k : k + 1]
        t0 = time.perf_counter()
        refiner.refine(obs, [objects.by_id(v["obj_ids"][k])], init, iterations=iterations)
        if j:  # the first call warms up
            times.append((time.perf_counter() - t0) / iterations)
    a = np.asarray(times) * 1e3
    return {"median_ms_per_iteration": round(float(np.median(a)), 2), "p90_ms": round(float(np.quantile(a, 0.9)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="package", help="weights spec (default: the shipped novel weights)")
    parser.add_argument("--objects", default="novel:5000-5040", help="held-out generated objects")
    parser.add_argument("--images", type=int, default=40, help="synthetic images per level")
    parser.add_argument("--levels", default="15:0.1,30:0.2", help="comma-separated ROT_DEG:TRANS_FRAC")
    parser.add_argument("--iterations", default="6", help="comma-separated iteration counts")
    parser.add_argument("--runs", type=int, default=20, help="timed single-object calls")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    parser.add_argument("--curve", type=Path, help="write the training-curve PNG here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    weights = resolve_weights(args.weights, METHOD)
    net = load_deeprm_model(weights)
    refiner = DeepRMRefiner(DeepRMConfig(weights=str(weights)), model=net)
    iterations = [int(x) for x in args.iterations.split(",")]
    result: dict[str, Any] = {
        "weights": str(args.weights),
        "network": net.config.to_dict(),
        "objects": args.objects,
        "images": args.images,
        "seed": args.seed,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "levels": {},
    }
    for level in args.levels.split(","):
        rot, frac = (float(x) for x in level.split(":"))
        result["levels"][level] = level_figures(refiner, args.objects, args.images, args.seed, rot, frac, iterations)
    result["speed"] = speed(refiner, args.objects, args.seed, args.runs, 6)
    # a shipped NAME.pt has NAME_train_log.jsonl beside it; model.pt and a run's checkpoints train_log.jsonl
    logs = [weights.parent / f"{weights.stem}_train_log.jsonl", weights.parent / "train_log.jsonl"]
    log = next((p for p in logs if p.is_file()), None)
    if args.curve is not None and log is not None:
        args.curve.parent.mkdir(parents=True, exist_ok=True)
        plot_training_log(log, args.curve)
        result["curve"] = str(args.curve)
    text = json.dumps(result, indent=1)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
