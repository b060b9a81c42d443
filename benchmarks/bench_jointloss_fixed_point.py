"""Where the ``jointloss`` refiner ends when started at the true pose (its fixed point), next to ``contour`` and
``icp``, on a labelled RGB-D BOP dataset (labels read to start and to score only).

Example::

    python benchmarks/bench_jointloss_fixed_point.py --dataset /work/runs/synth_lmo_pr_test --split test \
        --out benchmarks/results/jointloss/pr_test_fixed_point.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meshpose.eval.pose_errors import add_or_adds
from meshpose.eval.scores import add_s_recall
from meshpose.geometry.lie import rotation_angle
from meshpose.io.bop import BopDataset
from meshpose.refine import make_refiner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--methods", default="jointloss,contour,icp")
    ap.add_argument("--config", default="{}", help="options of the jointloss refiner, JSON")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = BopDataset(args.dataset, split=args.split)
    objects = ds.objects()
    keys = ds.image_keys(targets_only=False)[: args.max_images]
    out: dict[str, dict[str, float]] = {}
    for name in args.methods.split(","):
        refiner = make_refiner(name, **(json.loads(args.config) if name == "jointloss" else {}))
        err, rot, tra, diam, secs = [], [], [], [], 0.0
        for scene_id, im_id in keys:
            obs = ds.observation(scene_id, im_id, with_depth=True)
            for g in ds.gt(scene_id, im_id):
                obj = objects[g.obj_id]
                t0 = time.perf_counter()
                res = refiner.refine(obs, [obj], g.pose.reshape(1))
                secs += time.perf_counter() - t0
                R, t = res.pose[0].numpy()
                gR, gt = g.pose.numpy()
                err.append(float(add_or_adds(R, t, gR, gt, obj.points, symmetric=obj.is_symmetric)))
                rot.append(float(np.degrees(float(rotation_angle(R, gR)))))
                tra.append(float(np.linalg.norm(t - gt) * 1000))
                diam.append(obj.diameter)
        out[name] = {
            "add(-s)_0.1d": add_s_recall(err, diam),
            "median_rot_deg": float(np.median(rot)),
            "median_trans_mm": float(np.median(tra)),
            "instances": len(err),
            "ms_per_instance": 1000 * secs / max(1, len(err)),
        }
        print(name, out[name], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"command": " ".join(["python", *sys.argv]), "dataset": args.dataset, "images": len(keys), "methods": out},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
