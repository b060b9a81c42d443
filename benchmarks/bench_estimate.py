"""Coarse-estimation benchmark: ``meshpose estimate`` from detections, with and without refinement, scored by
``meshpose eval``.

For each configuration ``NAME=METHOD[+REFINER]`` the script runs ``meshpose estimate DATASET --detections DETS
--method METHOD [--refine REFINER]`` (resumable: a re-run continues unfinished result files) and scores the results:
MSPD and MSSD average recalls, their mean (the AR of an RGB benchmark without VSD), ADD(-S) recall at 0.1 d,
median errors, seconds per detection. It writes ``summary.json`` into ``--out-dir`` with one entry per configuration,
plus each run's results, failures and report.

Example (LM-O sample, perfect detections from ground truth, RGB)::

    python benchmarks/bench_estimate.py --dataset ../shared/data/lmo --detections gt \
        --configs coarse=picopose,coarse+contour=picopose+contour --out-dir benchmarks/results/estimate_lmo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshpose.eval.report import EvalConfig, evaluate
from meshpose.io.bop import BopDataset
from meshpose.io.results import read_results


def _parse_configs(text: str) -> list[tuple[str, str, str | None]]:
    out = []
    for part in text.split(","):
        name, spec = part.split("=", 1)
        method, _, refiner = spec.partition("+")
        out.append((name, method, refiner or None))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="BOP dataset folder")
    ap.add_argument("--detections", default="gt", help="detections JSON, or gt (modal boxes and masks from GT)")
    ap.add_argument("--configs", default="coarse=picopose,coarse+contour=picopose+contour")
    ap.add_argument("--config", default=None, help="JSON options of the estimator (all configurations)")
    ap.add_argument(
        "--refine-config",
        default=None,
        help="JSON options of the refiner (configurations that refine; per member of a chain)",
    )
    ap.add_argument("--hypotheses", type=int, default=1, help="hypotheses per detection handed to the refiner")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--no-depth", action="store_true", help="RGB only even where the dataset has depth")
    ap.add_argument("--out-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ds = BopDataset(args.dataset)
    summary: dict[str, Any] = {
        "dataset": str(args.dataset),
        "detections": args.detections,
        "hypotheses": args.hypotheses,
        "config": args.config,
        "refine_config": args.refine_config,
        "runs": {},
    }
    for name, method, refiner in _parse_configs(args.configs):
        out = args.out_dir / f"results_{name}.csv"
        cmd = [
            sys.executable, "-m", "meshpose.cli", "estimate", str(args.dataset), "--detections", args.detections,
            "--method", method, "--hypotheses", str(args.hypotheses), "--out", str(out),
        ]  # fmt: skip
        if refiner:
            cmd += ["--refine", refiner]
            if args.refine_config:
                cmd += ["--refine-config", args.refine_config]
        if args.config:
            cmd += ["--config", args.config]
        if args.max_images:
            cmd += ["--max-images", str(args.max_images)]
        if args.no_depth:
            cmd += ["--no-depth"]
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        wall = time.perf_counter() - t0
        rows = read_results(out) if out.exists() else []
        only = args.max_images is not None
        report = evaluate(ds, rows, EvalConfig(metrics=("mssd", "mspd"), only_result_images=only))
        (args.out_dir / f"report_{name}.json").write_text(json.dumps(report, indent=1))
        o = report["overall"]
        summary["runs"][name] = {
            "method": method,
            "refine": refiner,
            "exit_code": rc,
            "targets": o["num_targets"],
            "estimates": o["num_estimates"],
            "ar_mspd": o["ar_mspd"],
            "ar_mssd": o["ar_mssd"],
            "ar_mssd_mspd": o["ar_mssd_mspd"],
            "add_s_recall": o["add_s_recall"],
            "median_re_deg": o["median_re_deg"],
            "median_te_mm": o["median_te_mm"],
            "s_per_detection": o["mean_time_per_estimate_s"],
            "wall_s": wall,
        }
        print(name, json.dumps(summary["runs"][name]), flush=True)
        (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
