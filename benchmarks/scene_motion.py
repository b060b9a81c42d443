"""Do the objects of a BOP scene stand still? Measured from its ground truth, for the tracking figures.

A still-scene tracker (``scene_rigid``) carries every object with the camera's motion. This script says how far
that assumption holds in a dataset's scene: between consecutive frames (in ``im_id`` order) the camera motion is
the one implied by the object whose motion best explains the others (the median distance, over all objects, between
where it carries an object's centre and where the object is), and an object whose centre lands more than
``--moved-m`` from where that motion carries it was moved. It also gives the share of all instances that are still
where the *first* frame's placement puts them (within 0.1 of the object's diameter, centres only), i.e. the most a
tracker could get from the first frame's poses and the camera's motion alone, without re-detecting anything.

Example:
    python benchmarks/scene_motion.py --dataset ../shared/data/lmo --out benchmarks/results/track/lmo_scene_motion.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from meshpose.io.bop import BopDataset


def _deviations(before: dict[int, np.ndarray], after: dict[int, np.ndarray]) -> dict[int, float]:
    """Per object seen in both frames, metres between its centre and where the consensus camera motion puts it."""
    common = sorted(set(before) & set(after))
    motions = {k: after[k] @ np.linalg.inv(before[k]) for k in common}

    def dev(o: int, k: int) -> float:
        moved = motions[k][:3, :3] @ before[o][:3, 3] + motions[k][:3, 3]
        return float(np.linalg.norm(moved - after[o][:3, 3]))

    best = min(common, key=lambda k: float(np.median([dev(o, k) for o in common])))
    return {o: dev(o, best) for o in common}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--scene", type=int, default=None)
    p.add_argument("--moved-m", type=float, default=0.02, help="an object farther than this was moved (metres)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    ds = BopDataset(args.dataset, args.split)
    scene = ds.scene_ids[0] if args.scene is None else args.scene
    frames = ds.image_ids(scene)
    poses = [{g.obj_id: g.pose.reshape().matrix().double().numpy() for g in ds.gt(scene, im)} for im in frames]
    events = []
    for i in range(1, len(frames)):
        dev = _deviations(poses[i - 1], poses[i])
        moved = {str(o): round(1000 * d) for o, d in dev.items() if d > args.moved_m}
        if moved:
            events.append({"from": int(frames[i - 1]), "to": int(frames[i]), "moved_mm": moved})
    total = in_place = 0
    for i in range(len(frames)):
        dev = _deviations(poses[0], poses[i])
        for o, d in dev.items():
            total += 1
            in_place += d < 0.1 * ds.object(o).diameter
    out = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "scene": scene,
        "frame_pairs": len(frames) - 1,
        "pairs_with_a_moved_object": len(events),
        "instances": total,
        "share_where_the_first_frame_puts_them": in_place / max(total, 1),
        "events": events,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "events"}))


if __name__ == "__main__":
    main()
