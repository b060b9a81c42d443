"""Speed of the ``abstract`` refiner per image, and how its results compare with a saved reference.

On the first ``--images`` target images of a BOP dataset (e.g. LM-O, all objects of an image refined jointly) the
ground-truth poses are perturbed (``--rot-deg``, ``--trans-frac``, ``--seed``), refined once to warm up (descriptor
fusion caches, GL context), then refined again for every ``--threads`` count (torch intra-op threads) and timed.
The script writes ``--out`` (JSON):

* per thread count: seconds per image, their mean, the refiner's stage timings per image and the 1-minute load
  average after each image (other processes sharing the cores slow everything down: read the times with it);
* ADD(-S) / diameter per object of the inits and of the results, and the recall at 0.1 d;
* with ``--reference`` (poses saved by an earlier run with ``--save-poses``, e.g. of an older version): the
  difference of every pose from it (mm of translation, degrees of rotation) and the reference's ADD(-S) recall;
* whether the results of the thread counts agree with each other.

Example (the numbers of issue 19)::

    MESHPOSE_CACHE_DIR=cache OMP_NUM_THREADS=1 python benchmarks/bench_abstract_speed.py \
        --dataset ../shared/data/lmo --images 5 --threads 1,2 --save-poses new.npz --reference old.npz \
        --out abstract_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.eval.metrics import add_or_adds
from meshpose.eval.perturb import perturb_dataset
from meshpose.io.bop import BopDataset
from meshpose.io.results import ResultRow
from meshpose.refine.registry import make_refiner
from meshpose.types import ObjectModel, Pose


def _key(scene_id: int, im_id: int, obj_id: int) -> str:
    return f"{scene_id}_{im_id}_{obj_id}"


def _refine_all(
    refiner: Any, ds: BopDataset, keys: list[tuple[int, int]], inits: list[ResultRow], objs: dict[int, ObjectModel]
) -> tuple[dict[str, np.ndarray], list[float], list[dict[str, float]], list[float]]:
    """Refine every image; poses by key (``…_R``, ``…_t``), seconds, stage timings and load per image."""
    poses: dict[str, np.ndarray] = {}
    seconds, stages, loads = [], [], []
    for s, i in keys:
        rows = [r for r in inits if r.scene_id == s and r.im_id == i]
        obs = ds.observation(s, i, with_depth=False)
        t0 = time.perf_counter()
        res = refiner.refine(obs, [objs[r.obj_id] for r in rows], Pose.stack([r.pose for r in rows]))
        seconds.append(time.perf_counter() - t0)
        R, t = res.pose.numpy()
        for k, r in enumerate(rows):
            poses[_key(s, i, r.obj_id) + "_R"], poses[_key(s, i, r.obj_id) + "_t"] = R[k], t[k]
        stages.append({k: round(float(v), 4) for k, v in res.info.timings.items()})
        loads.append(os.getloadavg()[0])
    return poses, seconds, stages, loads


def _add_over_d(
    poses: dict[str, np.ndarray], ds: BopDataset, keys: list[tuple[int, int]], objs: dict[int, ObjectModel]
) -> dict[str, float]:
    """ADD(-S) / diameter of every pose found in ``poses``."""
    out = {}
    for s, i in keys:
        for gt in ds.gt(s, i):
            k = _key(s, i, gt.obj_id)
            if k + "_R" not in poses:
                continue
            obj = objs[gt.obj_id]
            Rg, tg = gt.pose.numpy()
            err = add_or_adds(poses[k + "_R"], poses[k + "_t"], Rg, tg, obj.points, symmetric=obj.is_symmetric)
            out[k] = float(err) / obj.diameter
    return out


def _difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per pose in both: translation difference (mm) and rotation difference (degrees); summary figures."""
    per = {}
    for k in sorted(x[:-2] for x in a if x.endswith("_R") and x in b):
        dt = float(np.linalg.norm(a[k + "_t"] - b[k + "_t"])) * 1e3
        cos = (np.trace(a[k + "_R"].T @ b[k + "_R"]) - 1.0) / 2.0
        per[k] = (dt, float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))))
    dts = np.array([v[0] for v in per.values()])
    drs = np.array([v[1] for v in per.values()])
    return {
        "n": len(per),
        "max_mm": float(dts.max(initial=0.0)),
        "median_mm": float(np.median(dts)) if len(dts) else 0.0,
        "max_deg": float(drs.max(initial=0.0)),
        "median_deg": float(np.median(drs)) if len(drs) else 0.0,
        "over_0.1mm_or_0.01deg": [k for k, (dt, dr) in per.items() if dt >= 0.1 or dr >= 0.01],
        "per_pose_mm_deg": per,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="BOP dataset folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=5, help="the first N target images")
    ap.add_argument("--threads", default="1,2", help="torch thread counts to time, comma-separated")
    ap.add_argument("--rot-deg", type=float, default=15.0)
    ap.add_argument("--trans-frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="JSON options of the abstract preset")
    ap.add_argument("--reference", type=Path, help="poses (.npz of --save-poses) to compare the results with")
    ap.add_argument("--save-poses", type=Path, help="write the results' poses here (.npz)")
    ap.add_argument("--out", type=Path, required=True, help="JSON report")
    args = ap.parse_args()

    ds = BopDataset(args.dataset, args.split)
    keys = ds.image_keys()[: args.images]
    inits = perturb_dataset(ds, rot_deg=args.rot_deg, trans_frac=args.trans_frac, seed=args.seed, image_keys=keys)
    objs = ds.objects()
    refiner = make_refiner("abstract", **json.loads(args.config))
    threads = [int(x) for x in args.threads.split(",")]

    torch.set_num_threads(threads[0])
    t0 = time.perf_counter()
    _refine_all(refiner, ds, keys, inits, objs)  # warm-up: fused descriptors, GL context, network weights
    report: dict[str, Any] = {
        "dataset": str(args.dataset),
        "images": [list(k) for k in keys],
        "objects": len(inits),
        "inits": {"rot_deg": args.rot_deg, "trans_frac": args.trans_frac, "seed": args.seed},
        "config": json.loads(args.config),
        "cpu_count": os.cpu_count(),
        "warm_up_s": time.perf_counter() - t0,
        "load_before": os.getloadavg(),
        "timings": {},
    }
    first: dict[str, np.ndarray] | None = None
    for th in threads:
        torch.set_num_threads(th)
        poses, seconds, stages, loads = _refine_all(refiner, ds, keys, inits, objs)
        report["timings"][f"threads_{th}"] = {
            "seconds_per_image": seconds,
            "mean_s": float(np.mean(seconds)),
            "stages": stages,
            "load_1min": loads,
        }
        print(f"threads {th}: {np.mean(seconds):.2f} s per image (load {np.mean(loads):.1f})", flush=True)
        if first is None:
            first = poses
        else:
            report["timings"][f"threads_{th}"][f"vs_threads_{threads[0]}"] = _difference(first, poses)
    assert first is not None

    init_poses: dict[str, np.ndarray] = {}
    for r in inits:
        R, t = r.pose.numpy()
        (
            init_poses[_key(r.scene_id, r.im_id, r.obj_id) + "_R"],
            init_poses[_key(r.scene_id, r.im_id, r.obj_id) + "_t"],
        ) = R, t
    acc: dict[str, Any] = {}
    named = {"init": init_poses, "result": first}
    if args.reference is not None:
        with np.load(args.reference) as z:
            named["reference"] = {k: z[k] for k in z.files}
        report["vs_reference"] = _difference(named["reference"], first)
    for name, poses in named.items():
        e = _add_over_d(poses, ds, keys, objs)
        acc[name] = {"recall_0.1d": float(np.mean([v < 0.1 for v in e.values()])), "add_over_d": e}
    report["accuracy"] = acc
    if args.save_poses is not None:
        arrays: dict[str, Any] = dict(first)
        np.savez(args.save_poses, **arrays)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    summary = {k: round(v["recall_0.1d"], 3) for k, v in acc.items()}
    print(f"ADD(-S) recall at 0.1 d: {summary}")
    if "vs_reference" in report:
        ref = report["vs_reference"]
        print(f"vs reference: max {ref['max_mm']:.3g} mm, {ref['max_deg']:.3g} deg; over 0.1 mm / 0.01 deg: "
              f"{ref['over_0.1mm_or_0.01deg']}")  # fmt: skip


if __name__ == "__main__":
    main()
