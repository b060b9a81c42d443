"""``picopose``'s stage 2 alone: how well the template → query similarity is found, learned vs. RANSAC.

Pairs as stage 2 meets them when stage 1 picked the right template (:func:`meshpose.train.picopose_data.make_pairs`:
a template view within 11° of the query's, the query turned to the template's in-plane orientation up to ±12°,
masked or box queries, cluttered synthetic scenes) of generated objects held out from training and validation
(default ``novel:6000-6011``, the test objects of docs/picopose.md), each with its true similarity. For every pair:
the mean distance, over the template's foreground patch centres, between the map found and the true one (crop
pixels, 128 px crops), for the identity (stage 1 alone), RANSAC on mutual-nearest-neighbour patch matches (the
training-free stage 2) and each learned network given. Figures: median, mean, and the shares within 2 / 4 / 8 px.

Example::

    python benchmarks/bench_picopose_stage2.py --weights learned=runs/simnet/model.pt --pairs 256 \\
        --out benchmarks/results/picopose_stage2.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from meshpose.nets.simnet import load_simnet, similarity_matrices
from meshpose.train.picopose_data import validation_pairs
from meshpose.train.picopose_similarity import SimilarityTrainConfig, collate_similarity, map_errors, ransac_maps


def _figures(err: np.ndarray) -> dict[str, float]:
    return {
        "median_px": float(np.median(err)),
        "mean_px": float(np.mean(err)),
        "within_2px": float(np.mean(err < 2)),
        "within_4px": float(np.mean(err < 4)),
        "within_8px": float(np.mean(err < 8)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="learned=package", help="NAME=SPEC[,NAME=SPEC…] stage-2 networks")
    ap.add_argument("--objects", default="novel:6000-6011", help="held-out generated objects")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--features", default="xfeat+trained")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = SimilarityTrainConfig(
        data="novel:8", val_objects=args.objects, val_items=args.pairs, seed=args.seed, features=args.features
    )
    t0 = time.perf_counter()
    items = validation_pairs(cfg)
    draw_s = time.perf_counter() - t0
    nets = {name: load_simnet(spec) for name, _, spec in (w.partition("=") for w in args.weights.split(","))}
    errs: dict[str, list[torch.Tensor]] = {"identity": [], "ransac": [], **{k: [] for k in nets}}
    for a in range(0, len(items), 32):
        data = collate_similarity(items[a : a + 32], cfg)
        errs["identity"].append(
            map_errors(similarity_matrices(torch.zeros(len(data["qf"]), 4), cfg.size), data, cfg.size)
        )
        errs["ransac"].append(map_errors(ransac_maps(data, cfg.size), data, cfg.size))
        with torch.no_grad():
            for name, net in nets.items():
                A = similarity_matrices(net(data["qf"], data["q_fg"], data["tf"], data["t_fg"]), cfg.size)
                errs[name].append(map_errors(A, data, cfg.size))
    masked = np.array([bool(it["masked"]) for it in items])
    result: dict = {
        "config": {**vars(args), "out": str(args.out), "pairs_drawn": len(items), "draw_s": draw_s},
        "pair_config": {
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            if k in ("view_jitter_deg", "inplane_residual_deg", "masked_probability", "size", "padding")
        },
    }
    for name, parts in errs.items():
        e = torch.cat(parts).numpy()
        result[name] = {"all": _figures(e), "masked": _figures(e[masked]), "box": _figures(e[~masked])}
        print(f"{name:>10}: " + " ".join(f"{k} {v:.3f}" for k, v in result[name]["all"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
