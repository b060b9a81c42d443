"""Stage-1 features of ``picopose`` compared on held-out objects: pretrained XFeat, features trained here on generated
objects (``meshpose train picopose``), LINE-2D-like gradient orientations.

For each feature extractor, on every ground-truth instance at least ``--min-visib`` visible (its modal mask from
``mask_visib/`` as the detection: a perfect detector), RGB only:

* stage-1 retrieval: whether one of the top-1 / top-6 (template, rotation) candidates of
  :func:`~meshpose.coarse.picopose.matching.match_templates` has a viewing direction within 15° / 25° of the true
  one (the direction from the object's centre to the camera, object frame; the best over the object's symmetries);
* the full coarse estimate (top hypothesis): rotation error < 15° (the best over the symmetries), ADD(-S) < 0.1 d,
  median rotation error, and seconds per detection with the object's templates already prepared (their features
  per object reported apart).

Example (the held-out set of docs/picopose.md)::

    MESHPOSE_CACHE_DIR=/work/runs/tcache python benchmarks/bench_picopose_features.py \\
        --dataset /work/runs/synth_pico_val --features xfeat,classical,trained=RUN/model.pt \\
        --out benchmarks/results/picopose_features.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.coarse.gt_detections import mask_bbox
from meshpose.coarse.picopose import PicoPoseConfig, PicoPoseEstimator
from meshpose.coarse.picopose.matching import foreground_patches, match_templates
from meshpose.coarse.picopose.views import cut_query, rotate_about_centre
from meshpose.coarse.templates import template_rotations
from meshpose.eval.pose_errors import add_or_adds, re
from meshpose.io.bop import BopDataset
from meshpose.types import Detection, ObjectModel, Observation


def _parse(text: str) -> list[tuple[str, str, str | None]]:
    """``xfeat,classical,trained=PATH`` → ``[(label, features, weights)]``."""
    out: list[tuple[str, str, str | None]] = []
    for part in text.split(","):
        name, _, weights = part.partition("=")
        out.append((name if not weights else f"{name}:{Path(weights).parent.name or weights}", name, weights or None))
    return out


def _view_dir(R: np.ndarray, t: np.ndarray, center: np.ndarray) -> np.ndarray:
    p = R @ center + t
    return -R.T @ (p / np.linalg.norm(p))


def _center(model: ObjectModel) -> np.ndarray:
    """The template bank's centre: the middle of the render mesh's used vertices' bounding box."""
    mesh = model.render_mesh
    used = np.asarray(mesh.vertices, np.float64)[np.unique(np.asarray(mesh.faces))]
    return np.asarray(0.5 * (used.min(0) + used.max(0)))


def _stage1(est: PicoPoseEstimator, obs: Observation, det: Detection, model: ObjectModel, top: int) -> list[int]:
    """The templates of the ``top`` best stage-1 candidates, as the estimator draws them."""
    cfg = est.config
    data = est._object(model)
    q = cut_query(obs, det, cfg.size, cfg.padding)
    angles = np.arange(cfg.rotations) * (360.0 / cfg.rotations)
    q_rgb = np.stack([rotate_about_centre(q.rgb, a) for a in angles])
    q_mask = np.stack([rotate_about_centre(q.mask, a, nearest=True) for a in angles])
    feats = est.features(q_rgb)
    fg = foreground_patches(q_mask, est.features.stride)
    return [c.template for c in match_templates(feats, fg, data.feats, data.fg, angles, top)]


def _instances(ds: BopDataset, min_visib: float, limit: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for scene, im in ds.image_keys(targets_only=False):
        for g in ds.gt(scene, im):
            if g.visib_fract is None or g.visib_fract < min_visib:
                continue
            m = ds.mask_visib(scene, im, g.gt_id)
            box = None if m is None else mask_bbox(m)
            if box is None:
                continue
            out.append({"scene": scene, "im": im, "det": Detection(g.obj_id, box, m), "gt": g.pose})
            if limit is not None and len(out) >= limit:
                return out
    return out


def run(ds: BopDataset, label: str, features: str, weights: str | None, items: list[dict[str, Any]]) -> dict[str, Any]:
    est = PicoPoseEstimator(PicoPoseConfig(features=features, feature_weights=weights))
    views = -template_rotations(est.config.templates)[:, 2, :]
    t_prep: list[float] = []
    prepared: set[int] = set()
    rows = []
    for it in items:
        det, gt = it["det"], it["gt"]
        model = ds.object(det.obj_id)
        if det.obj_id not in prepared:
            t0 = time.perf_counter()
            est._object(model)
            t_prep.append(time.perf_counter() - t0)
            prepared.add(det.obj_id)
        obs = ds.observation(it["scene"], it["im"], with_depth=False)
        Rg, tg = gt.numpy()
        sym = np.asarray(model.symmetries)
        Rs = Rg[None] @ sym[:, :3, :3]
        center = _center(model)
        dirs = np.stack([_view_dir(Rs[k], Rg @ sym[k, :3, 3] + tg, center) for k in range(len(sym))])
        cands = _stage1(est, obs, det, model, 6)
        ang = np.degrees(np.arccos(np.clip(views[cands] @ dirs.T, -1.0, 1.0))).min(1)  # (top,)
        t0 = time.perf_counter()
        (res,) = est.estimate(obs, [model], [det], hypotheses=1)
        dt = time.perf_counter() - t0
        row = {"obj_id": det.obj_id, "view_err_top1": float(ang[0]), "view_err_top6": float(ang.min()), "s": dt}
        if res.ok:
            R, t = res.hypotheses[0].pose.numpy()
            row["rot_err"] = float(re(R[None], Rs).min())
            err = add_or_adds(R, t, Rg, tg, model.points, symmetric=model.is_symmetric)
            row["add"] = float(err) / model.diameter
        else:
            row["rot_err"], row["add"] = 180.0, float("inf")
        rows.append(row)
        print(label, len(rows), {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    v1 = np.array([r["view_err_top1"] for r in rows])
    v6 = np.array([r["view_err_top6"] for r in rows])
    rot = np.array([r["rot_err"] for r in rows])
    add = np.array([r["add"] for r in rows])
    return {
        "features": features,
        "weights": weights,
        "detections": len(rows),
        "top1_within_15": float(np.mean(v1 < 15)),
        "top1_within_25": float(np.mean(v1 < 25)),
        "top6_within_15": float(np.mean(v6 < 15)),
        "top6_within_25": float(np.mean(v6 < 25)),
        "rot_lt_15": float(np.mean(rot < 15)),
        "add_lt_0.1d": float(np.mean(add < 0.1)),
        "median_rot_deg": float(np.median(rot)),
        "s_per_detection": float(np.mean([r["s"] for r in rows])),
        "template_features_s_per_object": float(np.mean(t_prep)) if t_prep else 0.0,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="BOP dataset of held-out generated objects (split test).")
    ap.add_argument("--features", default="xfeat,classical", help="xfeat, classical, trained=WEIGHTS (comma list).")
    ap.add_argument("--min-visib", type=float, default=0.3)
    ap.add_argument("--limit", type=int, default=None, help="At most this many detections.")
    ap.add_argument("--out", required=True, help="JSON file to write (merged with an existing one).")
    args = ap.parse_args(argv)
    ds = BopDataset(args.dataset, split="test")
    items = _instances(ds, args.min_visib, args.limit)
    out_path = Path(args.out)
    summary: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    summary["dataset"] = str(args.dataset)
    for label, name, weights in _parse(args.features):
        summary[label] = run(ds, label, name, weights, items)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(summary, indent=1))
        s = {k: v for k, v in summary[label].items() if k != "rows"}
        print(json.dumps({label: s}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
