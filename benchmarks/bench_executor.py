"""Executor benchmark: wall time of ``meshpose refine`` serial vs ``--executor ray --workers N``, and the per-image
overhead Ray adds.

Four runs over the same initial poses (made as ``meshpose perturb --rot-deg 15 --trans-frac 0.1 --seed 0`` does,
unless ``--inits`` is given), each into a fresh results file through :func:`meshpose.run.refine_dataset`:

* ``serial`` and ``ray``: the method with its default iterations; wall time from the call to the last row (Ray's
  start and the actors' loading included), the time to the first finished image, and the steady rate after it;
* ``serial_noop`` and ``ray1_noop``: ``iterations=0`` (each image is loaded and its poses scored, no refinement)
  on one Ray actor against the serial run, one torch thread each: the difference of their steady per-image times
  is what Ray adds to an image (task submission, pickling, result transfer) once the actors run;
* ``ray_roundtrip``: that cost alone, with an actor that returns each image's rows untouched, one image at a time
  (latency) and all in flight (throughput).

The poses of the serial and the Ray run are compared (they must agree to 1e-6). Writes one JSON file.

Example::

    python benchmarks/bench_executor.py --dataset ../shared/data/lmo --method contour --workers 2 \\
        --out benchmarks/results/executor_lmo.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.eval.perturb import perturb_dataset
from meshpose.io.bop import BopDataset
from meshpose.io.results import ResultRow, read_results, write_results
from meshpose.run import Executor, JobSpec, RayExecutor, SerialExecutor, refine_dataset
from meshpose.run.job import ImageOutcome, ImageTask, instance_keys, plan_tasks


def _timed_run(
    spec: JobSpec, inits: list[ResultRow], out: Path, executor: Executor, max_images: int | None
) -> dict[str, Any]:
    stamps: list[float] = []
    t0 = time.perf_counter()
    s = refine_dataset(
        spec, inits, out, executor=executor, restart=True, max_images=max_images,
        progress=lambda done, total, key: stamps.append(time.perf_counter()),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    executor.close()
    n = len(stamps)
    steady = (stamps[-1] - stamps[0]) / (n - 1) if n > 1 else float("nan")
    per_image = [r.time_s for r in read_results(out)]
    return {
        "images": n,
        "images_failed": s.images_failed,
        "instance_failures": s.instance_failures,
        "wall_s": wall,
        "first_image_s": stamps[0] - t0 if stamps else None,
        "steady_s_per_image": steady,
        "steady_images_per_s": 1.0 / steady if n > 1 and steady > 0 else None,
        "mean_worker_s_per_image": float(np.mean(per_image)) if per_image else None,
    }


class _Echo:
    """A Ray actor that returns each task's rows untouched: what is left is Ray's own cost of an image."""

    def process(self, task: ImageTask) -> ImageOutcome:
        return ImageOutcome(task.key, task.rows, (), 0.0)


def _ray_roundtrip(tasks: list[ImageTask], address: str | None) -> dict[str, float]:
    """Seconds per image of submitting a task to one actor and getting its outcome back: one at a time (the
    latency an image pays) and with all in flight (the throughput limit)."""
    import ray

    ray.init(address=address, num_cpus=None if address else 1, include_dashboard=False, log_to_driver=False)
    try:
        actor: Any = ray.remote(num_cpus=1)(_Echo).remote()
        ray.get(actor.process.remote(tasks[0]))
        t0 = time.perf_counter()
        for t in tasks:
            ray.get(actor.process.remote(t))
        latency = (time.perf_counter() - t0) / len(tasks)
        t0 = time.perf_counter()
        ray.get([actor.process.remote(t) for t in tasks])
        pipelined = (time.perf_counter() - t0) / len(tasks)
    finally:
        ray.shutdown()
    return {"latency_s_per_image": latency, "pipelined_s_per_image": pipelined, "images": len(tasks)}


def _max_pose_diff(a: Path, b: Path) -> float:
    ra, rb = read_results(a), read_results(b)
    pa = dict(zip(instance_keys(ra), ra, strict=True))
    pb = dict(zip(instance_keys(rb), rb, strict=True))
    if sorted(pa) != sorted(pb):
        return float("inf")
    return max((max(np.abs(pa[k].R - pb[k].R).max(), np.abs(pa[k].t - pb[k].t).max()) for k in pa), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, type=Path, help="BOP dataset folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--method", default="contour")
    ap.add_argument("--inits", type=Path, default=None, help="initial poses (default: perturbed ground truth)")
    ap.add_argument("--rot-deg", type=float, default=15.0)
    ap.add_argument("--trans-frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="Ray actors")
    ap.add_argument("--address", default=None, help="a running Ray cluster to use (default: a local one)")
    ap.add_argument("--max-images", type=int, default=None, help="only the first N images")
    ap.add_argument("--noop-images", type=int, default=40, help="images of the iterations=0 overhead runs")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the results files go (default: a temp dir)")
    ap.add_argument("--out", required=True, type=Path, help="output JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_executor_"))
    work.mkdir(parents=True, exist_ok=True)
    ds = BopDataset(args.dataset, args.split)
    if args.inits is not None:
        inits = read_results(args.inits)
    else:
        inits = perturb_dataset(ds, rot_deg=args.rot_deg, trans_frac=args.trans_frac, seed=args.seed)
        write_results(work / "inits.csv", inits)
    spec = JobSpec(str(args.dataset), args.split, args.method)
    # one torch thread on both sides, as a Ray actor with one CPU has
    noop = JobSpec(str(args.dataset), args.split, args.method, iterations=0, threads=1)
    threads_serial = torch.get_num_threads()
    runs: dict[str, Any] = {}
    plan: list[tuple[str, JobSpec, Executor, int | None]] = [
        ("serial", spec, SerialExecutor(), args.max_images),
        ("ray", spec, RayExecutor(args.workers, address=args.address), args.max_images),
        ("serial_noop", noop, SerialExecutor(), args.noop_images),
        ("ray1_noop", noop, RayExecutor(1, address=args.address), args.noop_images),
    ]
    for name, job, executor, limit in plan:
        runs[name] = _timed_run(job, inits, work / f"{name}.csv", executor, limit)
        print(f"{name}: {json.dumps(runs[name])}", flush=True)
    overhead = runs["ray1_noop"]["steady_s_per_image"] - runs["serial_noop"]["steady_s_per_image"]
    tasks = plan_tasks(ds, inits)[0]
    roundtrip = _ray_roundtrip((tasks * (1 + 200 // max(len(tasks), 1)))[:200], args.address)
    print(f"ray round trip: {json.dumps(roundtrip)}", flush=True)
    summary = {
        "dataset": str(args.dataset),
        "method": args.method,
        "inits": str(args.inits)
        if args.inits
        else f"perturb --rot-deg {args.rot_deg:g} --trans-frac {args.trans_frac:g} --seed {args.seed}",
        "workers": args.workers,
        "address": args.address,
        "max_images": args.max_images,
        "cpus": os.cpu_count(),
        "torch_threads_serial": threads_serial,
        "machine": platform.processor() or platform.machine(),
        "runs": runs,
        "speedup_wall": runs["serial"]["wall_s"] / runs["ray"]["wall_s"],
        "speedup_steady": runs["serial"]["steady_s_per_image"] / runs["ray"]["steady_s_per_image"],
        "ray_overhead_s_per_image": overhead,
        "ray_roundtrip": roundtrip,
        "max_pose_diff_serial_vs_ray": _max_pose_diff(work / "serial.csv", work / "ray.csv"),
        "work_dir": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
