"""How right the pseudo poses of a ``meshpose adapt`` run are — measured against the dataset's ground truth, which
``adapt`` itself never reads (this script is for reporting only; nothing is chosen by it).

For every pseudo pose in ``RUN/pseudo_poses.json`` the ADD(-S) error against the ground-truth instance of its object
in its image (the nearest one when an image has several), as a fraction of the diameter; then the share within
0.1 d of all pseudo poses and of the best-scored ``--share`` of them (the items of ``meshpose adapt abstract`` at its
default ``pseudo_share``), and the median errors. Writes ``--out`` (JSON).

Example::

    python benchmarks/pseudo_pose_quality.py --dataset ../shared/data/lmo --run RUN --out pseudo_quality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from meshpose.eval.pose_errors import add_or_adds
from meshpose.io.bop import BopDataset
from meshpose.train.adapt_config import PseudoPose


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", type=Path, required=True, help="an adapt run folder (its pseudo_poses.json)")
    ap.add_argument("--share", type=float, default=0.5, help="best-scored share reported apart")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    ds = BopDataset(args.dataset, args.split)
    pseudo = [PseudoPose.from_dict(p) for p in json.loads((args.run / "pseudo_poses.json").read_text())["poses"]]
    objects = ds.objects(sorted({p.obj_id for p in pseudo}))
    errors, scores = [], []
    for p in pseudo:
        obj = objects[p.obj_id]
        gts = [g for g in ds.gt(p.scene_id, p.im_id) if g.obj_id == p.obj_id]
        if not gts:
            continue
        errs = []
        for g in gts:
            Rg, tg = g.pose.numpy()
            errs.append(float(add_or_adds(p.R, p.t, Rg, tg, obj.points, symmetric=obj.is_symmetric)))
        errors.append(min(errs) / obj.diameter)
        scores.append(p.score)
    err, sc = np.asarray(errors), np.asarray(scores)
    order = np.argsort(-sc)
    top = err[order[: int(np.ceil(args.share * len(err)))]]

    def summary(e: np.ndarray) -> dict[str, float | int]:
        return {"count": len(e), "within_0.1d": float(np.mean(e < 0.1)), "median_over_d": float(np.median(e))}

    out = {
        "dataset": str(args.dataset),
        "run": str(args.run),
        "all": summary(err),
        f"best_scored_{args.share:g}": summary(top),
        "rest": summary(err[order[len(top) :]]) if len(top) < len(err) else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
