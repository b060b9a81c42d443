"""Stability at the true pose: start a refiner *at* the ground truth and measure how far it walks away.

A refiner that moves a correct pose sees a mismatch between rendering and image where there is none — its
fixed-point error, a floor under what it can reach from any init. The script runs the refiners on the visible
ground-truth instances (≥ 10 % visible, computed by rendering all annotated objects of the image) of either a BOP
dataset (``--dataset``, e.g. the LM-O sample; RGB only unless ``--depth``) or synthetic GL scenes drawn in memory
from an object spec (``--synthetic``, e.g. the LM-O meshes or ``novel:5000-5029``; instances ≥ 30 % visible), and
writes per method the median and 90th percentile of the rotation drift (degrees), the median translation drift
(mm) and the share of instances that end more than 0.1·d away (the ADD threshold, measured at the object origin).

Example (the figures of the README's genflow section)::

    python benchmarks/drift_at_gt.py --dataset ../shared/data/lmo --methods genflow,contour --images 15
    python benchmarks/drift_at_gt.py --synthetic ../shared/data/lmo --methods genflow,contour --images 12
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.eval.report import compute_visibility
from meshpose.geometry.lie import rotation_angle
from meshpose.io.bop import BopDataset
from meshpose.refine.base import Refiner
from meshpose.refine.registry import make_refiner
from meshpose.render.gl import get_default_renderer
from meshpose.synth import SceneConfig, SceneSampler, default_distractors, resolve_objects
from meshpose.types import ObjectModel, Observation, Pose


def _cases_bop(root: Path, images: int, depth: bool) -> list[tuple[Observation, list[ObjectModel], Pose]]:
    ds = BopDataset(root)
    objs = ds.objects()
    keys = ds.image_keys()
    keys = keys[:: max(1, len(keys) // images)][:images]
    out = []
    for sid, iid in keys:
        obs = ds.observation(sid, iid, with_depth=depth)
        gts = ds.gt(sid, iid)
        models = [objs[g.obj_id] for g in gts]
        poses = Pose.stack([g.pose for g in gts])
        vis = compute_visibility(obs.camera, models, poses, get_default_renderer())
        keep = [i for i in range(len(gts)) if vis[i] >= 0.1]
        if keep:
            out.append((obs, [models[i] for i in keep], poses[torch.tensor(keep)]))
    return out


def _cases_synthetic(spec: str, images: int, depth: bool) -> list[tuple[Observation, list[ObjectModel], Pose]]:
    sampler = SceneSampler(list(resolve_objects(spec, 0)), SceneConfig(), distractors=default_distractors(123))
    rng = np.random.default_rng(5)
    out = []
    for _ in range(images):
        s = sampler.sample(rng)
        keep = [i for i in range(len(s.objects)) if s.visib_fract[i] >= 0.3]
        if keep:
            out.append((s.observation(with_depth=depth), [s.objects[i] for i in keep], s.poses[torch.tensor(keep)]))
    return out


def drift(refiner: Refiner, cases: list[tuple[Observation, list[ObjectModel], Pose]]) -> dict[str, Any]:
    """Refine from the true poses; summary of how far the results are from them."""
    rot, trans, frac = [], [], []
    for obs, models, gt in cases:
        res = refiner.refine(obs, models, gt)
        for k, m in enumerate(models):
            rot.append(float(torch.rad2deg(rotation_angle(gt.R[k], res.pose.R[k]))))
            dt = float((gt.t[k] - res.pose.t[k]).norm())
            trans.append(dt * 1e3)
            frac.append(dt / m.diameter)
    r, t, f = np.array(rot), np.array(trans), np.array(frac)
    return {
        "instances": len(r),
        "median_rot_deg": round(float(np.median(r)), 2),
        "p90_rot_deg": round(float(np.percentile(r, 90)), 2),
        "median_trans_mm": round(float(np.median(t)), 1),
        "share_beyond_0.1d": round(float((f > 0.1).mean()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="BOP dataset folder (real images)")
    src.add_argument("--synthetic", help="object spec of synthetic GL scenes drawn in memory (mesh folder, novel:…)")
    ap.add_argument("--methods", default="genflow,contour")
    ap.add_argument("--images", type=int, default=15)
    ap.add_argument("--depth", action="store_true", help="give the refiners depth (when the data has it)")
    ap.add_argument("--config", default="{}", help="JSON overrides of the genflow config (also a chain's genflow)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="output JSON (default: print)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dataset is not None:
        cases = _cases_bop(args.dataset, args.images, args.depth)
    else:
        cases = _cases_synthetic(args.synthetic, args.images, args.depth)
    result: dict[str, Any] = {"source": str(args.dataset or args.synthetic), "images": len(cases), "methods": {}}
    genflow_options = json.loads(args.config)
    for name in args.methods.split(","):
        parts = name.split("+")
        if "genflow" not in parts or not genflow_options:
            refiner = make_refiner(name)
        elif len(parts) == 1:
            refiner = make_refiner(name, **genflow_options)
        else:  # a chain: the options go to its genflow member
            refiner = make_refiner(name, genflow=genflow_options)
        result["methods"][name] = drift(refiner, cases)
        print(name, json.dumps(result["methods"][name]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
