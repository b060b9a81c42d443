"""``jointloss`` benchmark: the RGB-D estimator from detections, its refiner, and ``icp`` / ``genflow+icp`` from the
same estimates, scored by ADD-S AUC (PoseCNN/DenseFusion's, to 10 cm) and ADD(-S) < 0.1 d.

The weights were trained without pose labels (``meshpose train jointloss``); the labels of ``--dataset`` are read
here only, to score. Detections: a BOP detections JSON (for the synthetic sets, the modal masks of ``mask_visib``
stand in for a detector). A detection is matched to the one annotated instance of its object in its image.

Example (held-out photoreal RGB-D scenes of the LM-O meshes)::

    python benchmarks/bench_jointloss.py --dataset /work/runs/synth_lmo_pr_test --split test \
        --detections /work/runs/jl/dets_pr_test.json --weights package:lmo \
        --out benchmarks/results/jointloss/pr_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.coarse.jointloss import JointLossEstimator, JointLossEstimatorConfig
from meshpose.eval.pose_errors import add_or_adds, adds
from meshpose.eval.scores import add_s_recall, adds_auc
from meshpose.io.bop import BopDataset
from meshpose.io.detections import read_detections
from meshpose.nets.jointloss import load_jointloss_net
from meshpose.refine import make_refiner
from meshpose.types import Pose


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--detections", required=True)
    ap.add_argument("--weights", default="package:lmo")
    ap.add_argument("--refiners", default="icp,genflow+icp", help="baseline refiners run from the raw estimates")
    ap.add_argument(
        "--ref-iterations", default="4,2", help="refiner iterations K, comma-separated (rows est+ref, est+refK)"
    )
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = BopDataset(args.dataset, split=args.split)
    dets = read_detections(args.detections)
    net = load_jointloss_net(args.weights)
    est0 = JointLossEstimator(JointLossEstimatorConfig(weights=args.weights, refine_iterations=0), model=net)
    ks = [int(v) for v in args.ref_iterations.split(",") if v]
    refined = {
        ("jointloss_est+ref" if i == 0 else f"jointloss_est+ref{k}"): JointLossEstimator(
            JointLossEstimatorConfig(weights=args.weights, refine_iterations=k), model=net
        )
        for i, k in enumerate(ks)
    }
    baselines = {name: make_refiner(name) for name in args.refiners.split(",") if name}
    objects = ds.objects()
    keys = sorted(k for k in dets if dets[k])[: args.max_images]
    names = ["jointloss_est", *refined, *(f"est+{b}" for b in baselines)]
    err: dict[str, list[float]] = {n: [] for n in names}
    err_sym: dict[str, list[float]] = {n: [] for n in names}
    secs: dict[str, float] = {n: 0.0 for n in names}
    diam: list[float] = []
    failures: dict[str, int] = {n: 0 for n in names}
    t_start = time.perf_counter()
    for k, (scene_id, im_id) in enumerate(keys):
        obs = ds.observation(scene_id, im_id, with_depth=True)
        gts = ds.gt(scene_id, im_id)
        image_dets = [d for d in dets[(scene_id, im_id)] if d.obj_id in objects]
        t0 = time.perf_counter()
        raw = est0.estimate(obs, list(objects.values()), image_dets)
        secs["jointloss_est"] += time.perf_counter() - t0
        refd = {}
        for name, est in refined.items():
            t0 = time.perf_counter()
            refd[name] = est.estimate(obs, list(objects.values()), image_dets)
            secs[name] += time.perf_counter() - t0
        for i, (det, r0) in enumerate(zip(image_dets, raw, strict=True)):
            inst = [g for g in gts if g.obj_id == det.obj_id]
            if len(inst) != 1:
                continue
            obj = objects[det.obj_id]
            gR, gt = inst[0].pose.numpy()
            poses: dict[str, Pose | None] = {"jointloss_est": r0.hypotheses[0].pose if r0.hypotheses else None}
            for name, found in refd.items():
                poses[name] = found[i].hypotheses[0].pose if found[i].hypotheses else None
            for b, refiner in baselines.items():
                name = f"est+{b}"
                if poses["jointloss_est"] is None:
                    poses[name] = None
                    continue
                t0 = time.perf_counter()
                try:
                    res = refiner.refine(obs, [obj], poses["jointloss_est"].reshape(1))
                    poses[name] = res.pose[0]
                except Exception as exc:  # a benchmark records the failure and goes on
                    print(f"{name} failed on {scene_id}/{im_id} obj {det.obj_id}: {exc}", file=sys.stderr)
                    poses[name] = None
                secs[name] += time.perf_counter() - t0
            diam.append(obj.diameter)
            for name, p in poses.items():
                if p is None:
                    err[name].append(float("inf"))
                    err_sym[name].append(float("inf"))
                    failures[name] += 1
                    continue
                R, t = p.numpy()
                err[name].append(float(adds(R, t, gR, gt, obj.points)))
                err_sym[name].append(float(add_or_adds(R, t, gR, gt, obj.points, symmetric=obj.is_symmetric)))
        print(f"{k + 1}/{len(keys)} images, {len(diam)} instances, {time.perf_counter() - t_start:.0f} s", flush=True)
    n = max(len(diam), 1)
    summary: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "dataset": args.dataset,
        "split": args.split,
        "detections": args.detections,
        "weights": args.weights,
        "images": len(keys),
        "instances": len(diam),
        "threads": args.threads,
        "methods": {
            name: {
                "adds_auc": adds_auc(err[name]),
                "adds_0.1d": add_s_recall(err[name], diam),
                "add(-s)_0.1d": add_s_recall(err_sym[name], diam),
                "median_adds_mm": float(np.median(err[name]) * 1000) if err[name] else None,
                "failures": failures[name],
                "ms_per_instance": 1000 * secs[name] / n,
            }
            for name in names
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["methods"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
