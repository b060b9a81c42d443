"""Refinement benchmark: perturb → refine → eval over initial-error levels, for several methods.

For each level ``ROT:FRAC`` (rotation in degrees, translation as a fraction of the diameter) the ground-truth poses
of the dataset are perturbed exactly that much (seeded), every method refines them, and ``meshpose eval`` scores
the results. The script writes into ``--out-dir``:

* ``summary.json``: per level and method, ADD(-S) recall at 0.1 d, MSPD/MSSD (and VSD) average recalls, median
  errors, mean time per object, failures; the initial poses are scored as the method ``init``;
* ``basin_rotation.png`` and ``basin_overlap.png``: the two basin-of-attraction plots of the abstract
  render-and-compare paper — success rate (ADD(-S) < 0.1 d) versus the initial rotation error, and versus the
  initial 2D overlap (IoU of the silhouettes at the initial and the true pose);
* the inits, results and reports of every run (a re-run resumes unfinished result files).

Example (LM-O sample, RGB refiners, the two levels of the issue)::

    python benchmarks/bench_refine.py --dataset ../shared/data/lmo --methods flow-pnp,contour \
        --levels 15:0.1,30:0.2 --out-dir benchmarks/results/lmo
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.eval.metrics import add_or_adds
from meshpose.eval.perturb import perturb_dataset
from meshpose.eval.report import EvalConfig, evaluate
from meshpose.io.bop import BopDataset, GtInstance
from meshpose.io.results import ResultRow, read_results, write_results
from meshpose.refine.registry import make_refiner
from meshpose.render.gl import get_default_renderer
from meshpose.run import JobSpec, refine_dataset
from meshpose.types import Pose
from meshpose.viz.plots import plot_basins

OVERLAP_BINS = np.linspace(0.0, 1.0, 6)


def _parse_levels(text: str) -> list[tuple[float, float]]:
    out = []
    for part in text.split(","):
        rot, frac = part.split(":")
        out.append((float(rot), float(frac)))
    return out


def _instance_outcomes(ds: BopDataset, rows: list[ResultRow], inits: list[ResultRow]) -> list[dict[str, Any]]:
    """Per initial pose: success of its refined pose (ADD(-S) < 0.1 d) and the initial silhouette IoU."""
    renderer = get_default_renderer()
    by_key: dict[tuple[int, int, int], list[ResultRow]] = defaultdict(list)
    for r in rows:
        by_key[(r.scene_id, r.im_id, r.obj_id)].append(r)
    init_key: dict[tuple[int, int, int], list[ResultRow]] = defaultdict(list)
    for r in inits:
        init_key[(r.scene_id, r.im_id, r.obj_id)].append(r)
    out = []
    for (s, i, o), init_rows in init_key.items():
        gts = [g for g in ds.gt(s, i) if g.obj_id == o]
        obj = ds.object(o)
        cam = ds.camera(s, i)
        refined = by_key.get((s, i, o), [])
        for k, (ir, g) in enumerate(zip(init_rows, gts, strict=False)):
            Rg, tg = g.pose.numpy()
            if k < len(refined):
                err = float(add_or_adds(refined[k].R, refined[k].t, Rg, tg, obj.points, symmetric=obj.is_symmetric))
            else:
                err = float("inf")
            masks = renderer.render([obj], _pair(ir, g), cam).mask
            inter = float((masks[0] & masks[1]).sum())
            union = float((masks[0] | masks[1]).sum())
            out.append({"success": err < 0.1 * obj.diameter, "iou": inter / union if union > 0 else 0.0})
    return out


def _pair(init_row: ResultRow, gt: GtInstance) -> Pose:
    """The initial and the true pose as two one-object scenes ``(2, 1)``."""
    return Pose.stack([init_row.pose, gt.pose]).reshape(2, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, type=Path, help="BOP dataset folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--methods", default="flow-pnp,contour", help="comma-separated refiner presets")
    ap.add_argument("--levels", default="15:0.1,30:0.2", help="comma-separated ROT_DEG:TRANS_FRAC levels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=None, help="use only the first N target images")
    ap.add_argument("--first-image", type=int, default=0, help="skip the first K target images")
    ap.add_argument(
        "--config",
        default="{}",
        help="JSON dict of refiner config overrides, for every method and chain member, or per chain member "
        '(e.g. {"deeprm": {"weights": "package:lmo"}})',
    )
    ap.add_argument("--iterations", type=int, default=None, help="outer iterations (default: each method's)")
    ap.add_argument("--no-depth", action="store_true", help="do not give depth to RGB methods")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out-dir", required=True, type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    ds = BopDataset(args.dataset, args.split)
    keys = ds.image_keys()[args.first_image :]
    if args.max_images is not None:
        keys = keys[: args.max_images]
    overrides = json.loads(args.config)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    levels = _parse_levels(args.levels)
    metrics = ("mssd", "mspd", "vsd") if ds.has_depth else ("mssd", "mspd")
    config = EvalConfig(metrics=metrics, only_result_images=True)

    summary: dict[str, Any] = {
        "dataset": str(args.dataset),
        "dataset_info": ds.describe(),
        "images": len(keys),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "first_image": args.first_image,
        "config_overrides": overrides,
        "levels": {},
    }
    basin_rot: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"rot": [], "success": [], "count": []})
    overlap_records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rot, frac in levels:
        tag = f"{rot:g}deg_{frac:g}d"
        inits = perturb_dataset(ds, rot_deg=rot, trans_frac=frac, seed=args.seed, image_keys=keys)
        inits_path = out / f"inits_{tag}.csv"
        write_results(inits_path, inits)
        level: dict[str, Any] = {}
        runs = [("init", inits_path, None)] + [(m, out / f"results_{m}_{tag}.csv", m) for m in methods]
        for name, path, method in runs:
            t0 = time.perf_counter()
            run_info: dict[str, Any] = {}
            if method is not None:
                # the overrides go to every method, and so to every member of a chain — unless they are given per
                # member ({"deeprm": {...}, "contour": {...}}: keys that are the chain's members)
                members = method.split("+")
                per = overrides
                if "+" in method and overrides and not set(overrides) <= set(members):
                    per = {m: overrides for m in members}
                refiner = make_refiner(method, **per)
                if refiner.modality == "rgbd" and not ds.has_depth:
                    level[name] = {"skipped": "needs depth"}
                    continue
                spec = JobSpec(
                    str(args.dataset),
                    args.split,
                    method,
                    per,
                    iterations=args.iterations,
                    use_depth=not args.no_depth,
                )
                s = refine_dataset(spec, inits, path)
                run_info = {
                    "images_failed": s.images_failed,
                    "instance_failures": s.instance_failures,
                    "refine_seconds": s.seconds,
                }
            rows = read_results(path)
            rep = evaluate(ds, rows, config)
            (out / f"report_{name}_{tag}.json").write_text(json.dumps(rep, indent=1))
            o = rep["overall"]
            keep = ("add_s_recall", "ar_mspd", "ar_mssd", "ar_vsd", "ar", "adds_auc", "median_re_deg", "median_te_mm")
            entry = {k: o.get(k) for k in keep if k in o}
            entry["num_targets"] = o["num_targets"]
            entry["mean_time_per_object_s"] = o.get("mean_time_per_estimate_s")
            entry.update(run_info)
            entry["wall_s"] = time.perf_counter() - t0
            level[name] = entry
            outcomes = _instance_outcomes(ds, rows, inits)
            basin_rot[name]["rot"].append(rot)
            basin_rot[name]["success"].append(float(np.mean([r["success"] for r in outcomes])) if outcomes else 0.0)
            basin_rot[name]["count"].append(len(outcomes))
            overlap_records[name].extend(outcomes)
            print(f"[{tag}] {name}: {json.dumps({k: v for k, v in entry.items() if k != 'wall_s'})}", flush=True)
        summary["levels"][tag] = level

    basin_ov: dict[str, dict[str, list[float] | list[int]]] = {}
    for name, recs in overlap_records.items():
        iou = np.array([r["iou"] for r in recs])
        ok = np.array([r["success"] for r in recs], dtype=float)
        centers, succ, count = [], [], []
        for lo, hi in itertools.pairwise(OVERLAP_BINS):
            sel = (iou >= lo) & (iou < hi if hi < 1.0 else iou <= hi)
            centers.append(float((lo + hi) / 2))
            succ.append(float(ok[sel].mean()) if sel.any() else float("nan"))
            count.append(int(sel.sum()))
        basin_ov[name] = {"iou": centers, "success": succ, "count": count}
    summary["basin_rotation"] = dict(basin_rot)
    summary["basin_overlap"] = basin_ov
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    title = f"{args.dataset.name}: {len(keys)} images"
    plot_basins(basin_rot, out / "basin_rotation.png", x_key="rot", xlabel="initial rotation error (deg)", title=title)
    plot_basins(basin_ov, out / "basin_overlap.png", x_key="iou", xlabel="initial 2D overlap (IoU)", title=title)
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
