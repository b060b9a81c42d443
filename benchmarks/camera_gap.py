"""A held-out synthetic set *with* a domain gap: a copy of a BOP dataset whose colour images all went through one
fixed "other camera" — white balance (BGR gains), gamma, Gaussian blur and sensor noise.

``meshpose adapt``'s synthetic check (photoreal scenes of the meshes the known-object weights were trained on) has no
gap to close; this copy gives it one, on synthetic data whose labels may be read to measure and to choose. Labels,
masks, depth and cameras are copied unchanged.

Example::

    python benchmarks/camera_gap.py --dataset SYN --out SYN_GAP
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True, help="a BOP dataset folder")
    ap.add_argument("--out", type=Path, required=True, help="the copy (must not exist)")
    ap.add_argument("--gains", type=float, nargs=3, default=(0.8, 0.95, 1.15), help="B G R gains")
    ap.add_argument("--gamma", type=float, default=0.8)
    ap.add_argument("--blur", type=float, default=1.2, help="Gaussian sigma, pixels")
    ap.add_argument("--noise", type=float, default=0.02, help="std of additive noise, in [0, 1] units")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.out.exists():
        raise SystemExit(f"{args.out} exists")
    shutil.copytree(args.dataset, args.out)
    rng = np.random.default_rng(args.seed)
    gains = np.asarray(args.gains, np.float32)
    images = sorted(args.out.glob("*/*/rgb/*.png")) + sorted(args.out.glob("*/*/rgb/*.jpg"))
    for f in images:
        im = cv2.imread(str(f)).astype(np.float32) / 255.0
        im = np.clip(im * gains, 0.0, 1.0) ** args.gamma
        if args.blur > 0:
            im = cv2.GaussianBlur(im, (0, 0), args.blur)
        im = im + rng.normal(0.0, args.noise, im.shape).astype(np.float32)
        cv2.imwrite(str(f), np.rint(np.clip(im, 0.0, 1.0) * 255.0).astype(np.uint8))
    (args.out / "camera_gap.json").write_text(json.dumps({"source": str(args.dataset), **vars(args)}, default=str))
    print(f"wrote {len(images)} image(s) to {args.out}")


if __name__ == "__main__":
    main()
