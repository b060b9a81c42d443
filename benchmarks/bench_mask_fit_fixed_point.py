"""Fixed point of ``picopose``'s mask fit (:mod:`meshpose.coarse.mask_fit`): started *at the ground-truth pose*
with a perfect detector's modal masks (the other detections as occluders), where does the fit end?

Writes JSON: ADD(-S) recall at 0.1 d of the fitted poses, median rotation / translation drift from the truth, the
IoU at the start and end. Real ground truth is used to measure only.

Example::

    python benchmarks/bench_mask_fit_fixed_point.py --dataset ../shared/data/lmo --max-images 10 --out fp.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from meshpose.coarse.gt_detections import iter_gt_detections
from meshpose.coarse.mask_fit import fit_to_mask, occluder_masks
from meshpose.eval.pose_errors import add_or_adds, re, te
from meshpose.io.bop import BopDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="BOP dataset folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-images", type=int, default=10)
    ap.add_argument("--out", required=True, help="JSON report")
    args = ap.parse_args()
    ds = BopDataset(args.dataset, args.split)
    objs = ds.objects()
    keys = ds.image_keys()[: args.max_images]
    add_d, rot, trans, iou0, iou1 = [], [], [], [], []
    for (s, i), dets in iter_gt_detections(ds, keys):
        obs = ds.observation(s, i, with_depth=False)
        gts = ds.gt(s, i)
        for det, occ in zip(dets, occluder_masks(dets), strict=True):
            same = [g for g in gts if g.obj_id == det.obj_id]
            if len(same) != 1:  # an instance that cannot be told from its twins: skipped
                continue
            model, gt = objs[det.obj_id], same[0].pose
            res = fit_to_mask(obs, model, det, gt, occluders=occ)
            Re, te_ = res.pose.numpy()
            Rg, tg = gt.numpy()
            add_d.append(
                float(add_or_adds(Re, te_, Rg, tg, model.points, symmetric=model.is_symmetric)) / model.diameter
            )
            rot.append(float(re(Re, Rg)))
            trans.append(float(te(te_, tg)))
            iou0.append(res.iou_start)
            iou1.append(res.iou)
    a = np.asarray(add_d)
    report = {
        "dataset": args.dataset,
        "images": len(keys),
        "instances": len(a),
        "add_s_recall_0.1d": float((a < 0.1).mean()) if len(a) else None,
        "median_rot_deg": float(np.median(rot)) if rot else None,
        "median_trans_mm": float(np.median(trans) * 1e3) if trans else None,
        "mean_iou_start": float(np.mean(iou0)) if iou0 else None,
        "mean_iou_end": float(np.mean(iou1)) if iou1 else None,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
