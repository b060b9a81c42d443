"""``meshpose adapt`` benchmark: ADD(-S)@0.1d of a learned refiner (``--method genflow``, ``abstract`` or
``deeprm``) before and after self-supervised adaptation.

Protocol (issue 20): adapt on the images of ``--dataset`` with ``im_id`` in ``--adapt-range`` (unlabeled: ``adapt``
never reads their poses), then measure on the images in ``--test-range``: every ground-truth pose there is
perturbed exactly ``--rot-deg`` / ``--trans-frac`` (``meshpose perturb``'s draw over the whole dataset, seed
``--seed``, then kept for the test images), refined by the method with the weights the run starts from (before:
the config's ``init_weights``, default the shipped ones) and with the adapted ``RUN/model.pt`` (after), and scored
by ADD(-S) recall at 0.1·d (``meshpose eval``). RGB by default (LM-O here has no depth).

Detections: ``--detections gt`` stands in for a detector — the visible masks and boxes of the adapt images'
ground truth (:func:`meshpose.coarse.gt_detections.detections_from_gt`), written to ``OUT_DIR/dets_gt.json``
before ``adapt`` runs; ``adapt`` itself reads only that file, the images and the meshes.

The JSON written to ``--out`` holds the commands, the timings (pseudo poses + adaptation, each refine run), the
settings and the figures. Example (the full run; the lead runs it)::

    python benchmarks/bench_adapt.py --dataset ../shared/data/lmo --detections gt --steps 300 \\
        --out-dir /work/runs/adapt_lmo --out benchmarks/results/adapt_lmo.json
    python benchmarks/bench_adapt.py --method abstract --dataset ../shared/data/lmo --detections gt --steps 1000 \\
        --config '{"init_weights": "package:lmo"}' --out-dir /work/runs/adapt_abs --out abstract_lmo.json

A tiny check that it runs: ``--steps 2 --max-adapt-images 3 --max-test-images 2 --config '{"val_every": 1}'``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from meshpose.coarse.gt_detections import detections_from_gt
from meshpose.eval.perturb import perturb_dataset
from meshpose.eval.report import EvalConfig, evaluate
from meshpose.io.bop import BopDataset
from meshpose.io.detections import write_detections
from meshpose.io.results import read_results, write_results


def _range(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.split(":"))
    return a, b


def _run(cmd: list[str]) -> float:
    """Run a ``meshpose`` command; its wall time in seconds (exit code 3, some items failed, is accepted)."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    if rc not in (0, 3):
        raise SystemExit(f"command failed ({rc}): {shlex.join(cmd)}")
    return time.perf_counter() - t0


def _score(ds: BopDataset, path: Path) -> dict[str, Any]:
    rep = evaluate(ds, read_results(path), EvalConfig(metrics=("add",), only_result_images=True))
    o = rep["overall"]
    return {k: o.get(k) for k in ("add_s_recall", "adds_auc", "median_re_deg", "median_te_mm", "instances") if k in o}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = ("genflow", "abstract", "deeprm")
    ap.add_argument("--method", default="genflow", choices=methods, help="the refiner to adapt")
    ap.add_argument("--dataset", type=Path, default=Path("../shared/data/lmo"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--detections", default="gt", help="detections JSON with masks, or gt (stand-in, see above)")
    ap.add_argument("--adapt-range", default="0:300", help="A:B, adapt on images with A <= im_id < B")
    ap.add_argument("--test-range", default="300:600", help="A:B, measure on images with A <= im_id < B")
    ap.add_argument("--rot-deg", type=float, default=15.0)
    ap.add_argument("--trans-frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="adaptation steps")
    ap.add_argument("--config", default=None, help="adapt --config JSON")
    ap.add_argument("--max-adapt-images", type=int, default=None, help="tiny runs: only the first N adapt images")
    ap.add_argument("--max-test-images", type=int, default=None, help="tiny runs: only the first N test images")
    ap.add_argument("--no-depth", action="store_true", help="RGB only even if the dataset has depth")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, required=True, help="run folder, detections, inits and results")
    ap.add_argument("--out", type=Path, required=True, help="the JSON summary")
    args = ap.parse_args()

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = BopDataset(args.dataset, args.split)
    a0, a1 = _range(args.adapt_range)
    t0_, t1_ = _range(args.test_range)
    keys = ds.image_keys(targets_only=False)
    adapt_keys = [k for k in keys if a0 <= k[1] < a1][: args.max_adapt_images]
    test_keys = [k for k in keys if t0_ <= k[1] < t1_][: args.max_test_images]
    if not adapt_keys or not test_keys:
        raise SystemExit(f"no images to adapt on ({len(adapt_keys)}) or to test on ({len(test_keys)})")
    # the adapt range as the command sees it: up to the last adapt image kept
    adapt_range = f"{a0}:{adapt_keys[-1][1] + 1}"

    dets_path = Path(args.detections)
    if args.detections == "gt":
        dets_path = out_dir / "dets_gt.json"
        write_detections(dets_path, {k: detections_from_gt(ds, *k) for k in adapt_keys})

    base = [sys.executable, "-m", "meshpose.cli"]
    threads = ["--threads", str(args.threads)] if args.threads else []
    run = out_dir / "run"
    cfg: dict[str, Any] = json.loads(args.config) if args.config else {}
    if args.no_depth:
        cfg["use_depth"] = False
    adapt_cmd = [*base, "adapt", args.method, "--images", str(args.dataset), "--detections", str(dets_path),
                 "--out", str(run), "--split", args.split, "--images-range", adapt_range, "--steps", str(args.steps),
                 *threads]  # fmt: skip
    if cfg:
        adapt_cmd += ["--config", json.dumps(cfg)]
    if (run / "last.pt").is_file() or (run / "pseudo_poses.json").is_file():
        adapt_cmd.append("--resume")
    t_adapt = _run(adapt_cmd)

    # inits: meshpose perturb's draw over the whole dataset, kept for the test images
    rows = perturb_dataset(ds, rot_deg=args.rot_deg, trans_frac=args.trans_frac, seed=args.seed)
    keep = set(test_keys)
    inits = out_dir / "inits_test.csv"
    write_results(inits, [r for r in rows if (r.scene_id, r.im_id) in keep])

    figures: dict[str, Any] = {"init": _score(ds, inits)}
    commands = {"adapt": shlex.join(adapt_cmd)}
    times = {"adapt_s": t_adapt}
    start = cfg.get("init_weights")
    for name, weights in (("before", start if start != "package" else None), ("after", str(run / "model.pt"))):
        res = out_dir / f"{args.method}_{name}.csv"
        cmd = [*base, "refine", str(args.dataset), "--inits", str(inits), "--method", args.method, "--out", str(res),
               "--split", args.split, *threads]  # fmt: skip
        if weights:
            cmd += ["--config", json.dumps({"weights": weights})]
        if args.no_depth:
            cmd.append("--no-depth")
        times[f"refine_{name}_s"] = _run(cmd)
        commands[f"refine_{name}"] = shlex.join(cmd)
        figures[name] = _score(ds, res)
    before, after = figures["before"].get("add_s_recall"), figures["after"].get("add_s_recall")
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    vals = [r for r in log if r.get("event") == "val"]
    summary = {
        "benchmark": f"adapt {args.method}",
        "command": shlex.join(sys.argv),
        "commands": commands,
        "settings": {
            "dataset": str(args.dataset),
            "split": args.split,
            "detections": args.detections,
            "adapt_images": len(adapt_keys),
            "adapt_range": adapt_range,
            "test_images": len(test_keys),
            "test_range": args.test_range,
            "rot_deg": args.rot_deg,
            "trans_frac": args.trans_frac,
            "seed": args.seed,
            "steps": args.steps,
            "config": cfg,
            "run_config": json.loads((run / "config.json").read_text()),
        },
        "figures": figures,
        "add_s_recall_gain": None if before is None or after is None else after - before,
        "validation": vals,
        "pseudo_poses": len(json.loads((run / "pseudo_poses.json").read_text())["poses"]),
        "timings": times,
        "machine": {
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "threads": args.threads,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({"figures": figures, "gain": summary["add_s_recall_gain"], "timings": times}, indent=1))


if __name__ == "__main__":
    main()
