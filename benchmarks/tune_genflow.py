"""Compare ``genflow`` inference settings on held-out *validation* objects (never a test set, never LM-O).

This is where the refiner's defaults are chosen (e.g. ``depth_prior_weight``): every variant runs on validation
images of the generated objects ``novel:4500-4540`` (disjoint from training, ``novel:<4500``, and from the test and
benchmark objects, ``novel:≥5000``), at 15°/10 % and 30°/20 % inits, RGB and RGB-D, through
:func:`meshpose.train.genflow.validate` — the same measurement as the training-time validation.

Example (the two validation sets behind the shipped defaults)::

    python benchmarks/tune_genflow.py --seed 7 --images 30 --out out/tune/val1.json \
        --variants '{"free": {"depth_prior_weight": 0}, "default": {}, "p1e-3": {"depth_prior_weight": 1e-3}}'
    python benchmarks/tune_genflow.py --seed 11 --images 70 --out out/tune/val2.json --rgb-only --variants ...

Each variant is a JSON object of :class:`~meshpose.refine.genflow.GenFlowConfig` fields (as ``meshpose refine
--config`` takes them). Writes ``{variant: {"15/0.1": {...}, "15/0.1-D": {...}, ...}}`` with the ADD(-S)@0.1d
recall, the initial poses' recall and the time per instance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from meshpose.nets.batch import load_genflow_model
from meshpose.refine.genflow import GenFlowConfig, GenFlowRefiner
from meshpose.train.genflow import make_validation_set, validate

VAL_OBJECTS = "novel:4500-4540"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default='{"default": {}}', help="JSON {name: GenFlowConfig overrides}")
    ap.add_argument("--weights", default=None, help="model.pt (default: the shipped weights)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the validation objects and images")
    ap.add_argument("--images", type=int, default=30, help="validation images per init level")
    ap.add_argument("--levels", default="15:0.1,30:0.2", help="ROT_DEG:TRANS_FRAC levels")
    ap.add_argument("--rgb-only", action="store_true", help="skip the RGB-D runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="output JSON")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    variants: dict[str, dict[str, Any]] = json.loads(args.variants)
    levels = [tuple(float(x) for x in lv.split(":")) for lv in args.levels.split(",")]
    sets = {
        (rot, tr): make_validation_set(VAL_OBJECTS, args.images, seed=args.seed, rot_deg=rot, trans_frac=tr)
        for rot, tr in levels
    }
    net = load_genflow_model(args.weights)
    results: dict[str, Any] = {}
    for name, over in variants.items():
        config = GenFlowConfig(**over)
        variant_net = load_genflow_model(config.weights) if "weights" in over else net  # a variant's own weights
        row = {}
        for (rot, tr), val in sets.items():
            for depth in (False,) if args.rgb_only else (False, True):
                refiner = GenFlowRefiner(config, model=variant_net)
                r = validate(refiner, val, VAL_OBJECTS, args.seed, with_depth=depth)
                row[f"{rot:g}/{tr:g}{'-D' if depth else ''}"] = {
                    "add_recall": round(r["add_recall"], 3),
                    "init_recall": round(r["init_recall"], 3),
                    "instances": r["instances"],
                    "ms_per_instance": round(1000 * r["seconds"] / max(r["instances"], 1)),
                }
        results[name] = row
        print(name, json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seed": args.seed, "images": args.images, "variants": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
