"""Tracking benchmark: success rate (ADD(-S) < 0.1·d) and ms per object per frame, ``--fast`` and the accurate
default, on synthetic RBOT-style sequences at frame steps 1–4 and on a BOP dataset's scene from its first frame.

Synthetic (RBOT protocol): each sequence's object starts at its ground truth; a frame counts as a success when
the tracked pose is within 0.1·d (ADD, ADD-S for symmetric objects); after a failure the track is reset to the
ground truth (``--no-reset``: it is not, and the tracker must recover by itself).
BOP: every object of the scene's first frame starts from its ground truth perturbed by exactly
``--init-rot-deg`` / ``--init-trans-frac``; the success rate is over all (object, frame) pairs of the scene with
ground truth (no reset).

Example (tiny):
    python benchmarks/bench_track.py --out /tmp/track.json --sequences 1 --frames 10 --steps 1,4
    python benchmarks/bench_track.py --out lmo.json --dataset ../shared/data/lmo --init-rot-deg 15 \\
        --init-trans-frac 0.1 --steps ''
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.coarse.gt_detections import detections_from_masks
from meshpose.eval.metrics import add_or_adds
from meshpose.geometry.lie import perturb_pose, rotation_angle
from meshpose.refine.registry import make_refiner
from meshpose.synth.novel import novel_object
from meshpose.synth.sequence import SequenceConfig, render_sequence
from meshpose.track import Tracker, TrackerConfig, fast_refiner_options, fast_tracker_options
from meshpose.types import ObjectModel, Pose


def _err(obj: ObjectModel, est: Pose, gt: Pose) -> float:
    Re, te = est.numpy()
    Rg, tg = gt.numpy()
    return float(add_or_adds(Re, te, Rg, tg, obj.points, symmetric=obj.is_symmetric)) / obj.diameter


def _diagnostics(im_id: int, obj: ObjectModel, r: Any, gt: Pose, err: float) -> dict[str, Any]:
    """One ``--per-frame`` row: the tracked pose's error (in object diameters; ``rot_deg`` its turn from the truth,
    ``dt`` its camera-frame offset in diameters) and, where the tracker recorded them, the errors of the pose it
    started the frame from (``predicted``) and of the refiner's pose before the scene fusion (``refined``)."""
    row: dict[str, Any] = {"im_id": int(im_id), "obj_id": obj.obj_id, "status": r.status, "score": float(r.score)}
    row["err"] = err
    # where the error lies: the turn (degrees) and the camera-frame offset (x, y, z in diameters) to the truth
    est, ref = r.pose.reshape(), gt.reshape()
    row["rot_deg"] = math.degrees(float(rotation_angle(est.R.double().reshape(3, 3), ref.R.double().reshape(3, 3))))
    row["dt"] = [float(v) / obj.diameter for v in (est.t.double() - ref.t.double()).reshape(3)]
    for key in ("predicted", "refined"):
        pose = r.info.get(key)
        if isinstance(pose, Pose):
            row[f"err_{key}"] = _err(obj, pose.reshape(), gt)
    for key in ("prediction", "gated", "redetected", "fitted", "hidden", "mask_iou", "box_iou", "redetect_scores"):
        if key in r.info:
            row[key] = r.info[key]
    return row


def _tracker_opts(args: argparse.Namespace) -> dict[str, Any]:
    """``--tracker-config`` with ``--prediction``, ``--scene-rigid`` and ``--detector`` on top."""
    opts: dict[str, Any] = json.loads(args.tracker_config)
    if args.prediction is not None:
        opts["prediction"] = args.prediction
    if args.scene_rigid:
        opts["scene_rigid"] = True
    if args.detector is not None:
        opts["matches"] = {**opts.get("matches", {}), "detector": args.detector}
    return opts


def _tracker(method: str, fast: bool, tracker_opts: dict[str, Any]) -> Tracker:
    opts = fast_refiner_options(method) if fast else {}
    tracker_opts = fast_tracker_options(tracker_opts) if fast else tracker_opts
    return Tracker(make_refiner(method, **opts), config=TrackerConfig.from_dict(tracker_opts))


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "median": 1000 * float(np.median(values)) if values else math.nan,
        "mean": 1000 * float(np.mean(values)) if values else math.nan,
    }


def synthetic(args: argparse.Namespace, mode: str, step: int) -> dict[str, Any]:
    ok = total = 0
    times: list[float] = []
    match_times: list[float] = []
    jump = tuple(float(v) for v in args.camera_jump_deg.split(",")) if args.camera_jump_deg else None
    for s in range(args.sequences):
        objs = [
            novel_object(args.first_object + args.objects * s + j, seed=args.object_seed, obj_id=j + 1)[0]
            for j in range(args.objects)
        ]
        cfg = SequenceConfig(
            width=args.width,
            height=args.height,
            frames=args.frames,
            frame_step=step,
            seed=1000 * step + s,
            camera_jump_deg=jump,  # type: ignore[arg-type]
            **({"size_frac": (0.6, 0.8)} if jump else {}),  # type: ignore[arg-type]
        )
        seq = render_sequence(objs, cfg)
        tracker = _tracker(args.method, mode == "fast", _tracker_opts(args))
        tracker.start(objs, seq.gt[0], frame=0, obs=seq.observation(0))
        for i in range(1, len(seq)):
            results = tracker.step(seq.observation(i), frame=i)
            bad = False
            for j, (r, obj) in enumerate(zip(results, objs, strict=True)):
                times.append(r.time_s)
                match_times.append(r.info.get("match_s", 0.0))
                good = _err(obj, r.pose, seq.gt[i][j]) < 0.1
                ok += good
                total += 1
                bad |= not good
            if bad and not args.no_reset:
                tracker.start(objs, seq.gt[i], frame=i, obs=seq.observation(i))
    ms, mm = _ms(times), _ms(match_times)
    return {
        "success": ok / max(total, 1),
        "frames": total,
        "ms_per_object_frame_median": ms["median"],
        "ms_per_object_frame_mean": ms["mean"],
        "match_ms_per_object_frame_mean": mm["mean"],
    }


def _plain_novel(index: int, seed: int, obj_id: int) -> ObjectModel:
    """A generated object in one flat, fairly saturated colour: textureless, as LM-O's objects nearly are."""
    import colorsys
    import dataclasses

    import trimesh

    from meshpose.synth.novel import novel_mesh

    obj = novel_mesh(index, seed)
    mesh = obj.mesh.copy()
    rng = np.random.default_rng([seed, index])
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.95))
    colour = np.array([*(np.asarray(rgb) * 255), 255]).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(colour, (len(mesh.vertices), 1)))
    return dataclasses.replace(obj, mesh=mesh).to_object_model(obj_id)


def _write_rows(path: Path, tag: str, rows: list[dict[str, Any]]) -> None:
    """``--per-frame``: the rows as JSON lines, ``tag`` added to the file's stem."""
    path.with_name(f"{path.stem}_{tag}{path.suffix}").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _dataset_objects(root: Path) -> list[ObjectModel]:
    """Every object model of a BOP dataset (its meshes with their own colours; nothing of its images or poses)."""
    from meshpose.io.bop import BopDataset

    ds = BopDataset(root, "test")
    return [ds.object(k) for k in ds.object_ids]


def _moved(seq: Any, i: int, j: int) -> bool:
    """Whether object ``j`` of a still-scene sequence was moved in the scene between frames ``i - 1`` and ``i``
    (its pose relative to the others' changed by more than 1 mm)."""
    if len(seq.objects) < 2:
        return False
    k = 1 if j == 0 else 0
    a = seq.gt[i - 1][k].inverse() @ seq.gt[i - 1][j]
    b = seq.gt[i][k].inverse() @ seq.gt[i][j]
    return bool((a.t - b.t).norm() > 1e-3)


def still_scenes(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """LM-O-like synthetic sequences: ``--objects`` flat-coloured generated objects standing still on a textured
    table, a hand-held camera turning ``--camera-jump-deg`` between frames; every object starts from its first
    frame's truth perturbed by ``--init-rot-deg`` / ``--init-trans-frac``; no reset (as the LM-O protocol).
    ``--relocate P``: each object is moved elsewhere on the table between two frames with probability ``P`` (as LM-O's
    objects are); ``--distractors K``: K unannotated objects among them (clutter no detection outlines);
    ``--gt-detections``: a perfect detector's visible masks each frame, with ``--estimator``."""
    ok = total = moved = ok_moved = 0
    times: list[float] = []
    rows: list[dict[str, Any]] = []
    jump = tuple(float(v) for v in (args.camera_jump_deg or "15,35").split(","))
    gen = torch.Generator().manual_seed(args.seed)
    meshes = _dataset_objects(args.still_meshes) if args.still_meshes is not None else None
    for s in range(args.still):
        if meshes is None:
            objs = [
                _plain_novel(args.first_object + args.objects * s + j, args.object_seed, j + 1)
                for j in range(args.objects)
            ]
        else:  # the dataset's meshes in turn, --objects of them per scene
            objs = [meshes[(args.objects * s + j) % len(meshes)] for j in range(min(args.objects, len(meshes)))]
        d_mean = float(np.mean([o.diameter for o in objs]))
        cfg = SequenceConfig(
            width=args.width,
            height=args.height,
            frames=args.frames,
            seed=5000 + s,
            blur_samples=1,
            camera_jump_deg=jump,  # type: ignore[arg-type]
            size_frac=(0.6, 0.8),
            table_m=8.0 * d_mean,
            relocate=args.relocate,
            distractors=args.distractors,
        )
        seq = render_sequence(objs, cfg)
        inits = [
            perturb_pose(seq.gt[0][j], math.radians(args.init_rot_deg), args.init_trans_frac * o.diameter, gen)
            for j, o in enumerate(objs)
        ]
        tracker = _tracker(args.method, mode == "fast", _tracker_opts(args))
        if args.gt_detections:
            from meshpose.coarse.registry import make_estimator

            tracker.estimator = make_estimator(args.estimator)
        tracker.start(objs, Pose.stack(inits), frame=0)
        ids = [o.obj_id for o in objs]
        for i in range(len(seq)):
            dets = detections_from_masks(ids, list(seq.masks_visib[i])) if args.gt_detections else None
            for j, r in enumerate(tracker.step(seq.observation(i), dets, frame=i)):
                times.append(r.time_s)
                err = _err(objs[j], r.pose, seq.gt[i][j])
                if args.per_frame is not None:  # (im_id: scene × 1000 + frame)
                    rows.append(_diagnostics(1000 * s + i, objs[j], r, seq.gt[i][j], err))
                ok += err < 0.1
                total += 1
                if i > 0 and _moved(seq, i, j):
                    moved += 1
                    ok_moved += err < 0.1
    if args.per_frame is not None:
        _write_rows(args.per_frame, f"still_{mode}", rows)
    ms = _ms(times)
    return {
        "success": ok / max(total, 1),
        "instances": total,
        "moved_instances": moved,
        "success_moved": ok_moved / max(moved, 1),
        "ms_per_object_frame_median": ms["median"],
        "ms_per_object_frame_mean": ms["mean"],
    }


def bop_sequence(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from meshpose.io.bop import BopDataset

    ds = BopDataset(args.dataset, args.split)
    scene = ds.scene_ids[0] if args.scene is None else args.scene
    frames = ds.image_ids(scene)[: args.max_frames]
    gts = ds.gt(scene, frames[0])
    objs = [ds.object(g.obj_id) for g in gts]
    gen = torch.Generator().manual_seed(args.seed)
    inits = [
        perturb_pose(g.pose, math.radians(args.init_rot_deg), args.init_trans_frac * o.diameter, gen)
        for g, o in zip(gts, objs, strict=True)
    ]
    tracker = _tracker(args.method, mode == "fast", _tracker_opts(args))
    if args.gt_detections:  # diagnostics: a perfect detector's masks each frame, lost tracks re-estimated from them
        from meshpose.coarse.gt_detections import detections_from_gt
        from meshpose.coarse.registry import make_estimator

        tracker.estimator = make_estimator(args.estimator)
    tracker.start(objs, Pose.stack(inits), frame=frames[0])
    ok = total = lost = 0
    times: list[float] = []
    match_times: list[float] = []
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for im_id in frames:
        dets = detections_from_gt(ds, scene, im_id) if args.gt_detections else None
        results = tracker.step(ds.observation(scene, im_id, with_depth=False), dets, frame=im_id)
        by_obj = {g.obj_id: g for g in ds.gt(scene, im_id)}
        for r, o in zip(results, objs, strict=True):
            times.append(r.time_s)
            match_times.append(r.info.get("match_s", 0.0))
            lost += r.status == "lost"
            if o.obj_id in by_obj:
                gt = by_obj[o.obj_id].pose
                err = _err(o, r.pose, gt)
                ok += err < 0.1
                total += 1
                if args.per_frame is not None:
                    rows.append(_diagnostics(im_id, o, r, gt, err))
    if args.per_frame is not None:
        _write_rows(args.per_frame, mode, rows)
    return {
        "scene": scene,
        "frames": len(frames),
        "instances": total,
        "success": ok / max(total, 1),
        "lost_rows": lost,
        "ms_per_object_frame_median": 1000 * float(np.median(times)),
        "ms_per_object_frame_mean": 1000 * float(np.mean(times)),
        "match_ms_per_object_frame_mean": _ms(match_times)["mean"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--method", default="contour")
    p.add_argument("--modes", default="fast,default")
    p.add_argument("--steps", default="1,2,3,4", help="synthetic frame steps ('' for none)")
    p.add_argument("--sequences", type=int, default=10)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--first-object", type=int, default=9000, help="first generated object index (novel objects)")
    p.add_argument("--object-seed", type=int, default=7)
    p.add_argument("--no-reset", action="store_true")
    p.add_argument("--dataset", type=Path, default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--scene", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--init-rot-deg", type=float, default=15.0)
    p.add_argument("--init-trans-frac", type=float, default=0.1)
    p.add_argument("--tracker-config", default="{}")
    p.add_argument("--prediction", choices=["velocity", "matches"], default=None, help="TrackerConfig.prediction")
    p.add_argument("--scene-rigid", action="store_true", help="TrackerConfig.scene_rigid")
    p.add_argument("--detector", choices=["sift", "orb"], default=None, help="MatchConfig.detector")
    p.add_argument("--objects", type=int, default=1, help="objects per synthetic sequence")
    p.add_argument(
        "--camera-jump-deg", default="", help="synthetic static scenes, camera turning LO,HI degrees per frame"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--gt-detections",
        action="store_true",
        help="BOP: give the tracker a perfect detector's masks (from the ground truth; diagnostics only) to recover",
    )
    p.add_argument("--estimator", default="picopose", help="with --gt-detections: the recovery's estimator")
    p.add_argument("--still", type=int, default=0, help="LM-O-like synthetic still-scene sequences (see still_scenes)")
    p.add_argument(
        "--still-meshes",
        type=Path,
        default=None,
        help="still scenes: a BOP dataset whose meshes (not its images or poses) are the objects",
    )
    p.add_argument("--relocate", type=float, default=0.0, help="still scenes: probability an object is moved per frame")
    p.add_argument("--distractors", type=int, default=0, help="still scenes: unannotated objects among the objects")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--per-frame",
        type=Path,
        default=None,
        help="BOP and still sequences: write one JSON line per object and frame (errors of the prediction, the refined "
        "and the tracked pose) to this path, the mode's name added to its stem",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "synthetic": {}, "bop": {}}
    modes = [m for m in args.modes.split(",") if m]
    steps = [int(s) for s in args.steps.split(",") if s]
    for mode in modes:
        for step in steps:
            out["synthetic"][f"{mode}/step{step}"] = r = synthetic(args, mode, step)
            print(mode, "step", step, json.dumps(r), flush=True)
        if args.still:
            out.setdefault("still", {})[mode] = r = still_scenes(args, mode)
            print(mode, "still", json.dumps(r), flush=True)
        if args.dataset is not None:
            out["bop"][mode] = r = bop_sequence(args, mode)
            print(mode, "bop", json.dumps(r), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
