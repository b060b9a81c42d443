"""Scoring a results file against a BOP dataset (``meshpose eval``): per-object and overall figures.

The report holds, per object and pooled over all targets (as BOP pools them):

* ``add_s_recall``: ADD(-S) recall at ``0.1 × diameter`` (ADD for asymmetric objects, ADD-S for symmetric ones);
  ``add_recall`` and ``adds_recall`` (ADD and ADD-S for every object) when asked for;
* ``adds_auc``: PoseCNN's ADD-S AUC over 0–10 cm, and ``add_s_auc`` the same on ADD(-S) errors;
* ``ar_mssd``, ``ar_mspd``, ``ar_vsd``: BOP19 average recalls over their thresholds (``recall_mssd`` etc. per
  threshold), and ``ar`` = BOP AR, the mean of the three, when VSD could be computed (it needs depth);
  ``ar_mssd_mspd`` otherwise reads as the RGB-only summary;
* ``median_re_deg``, ``median_te_mm``: errors of the best estimate per ground-truth instance (diagnostics);
* timing: mean seconds per image and per estimate, from the results' ``time`` column.

Which ground-truth instances count follows BOP19: the targets of ``test_targets_bop19.json`` (the ``inst_count``
most visible instances of an object in an image), or every annotated instance when the file is absent; instances
less visible than ``min_visib`` are not counted. Visibility comes from ``scene_gt_info.json``; where a dataset has
none (the LM-O sample), it is computed by rendering all annotated objects of the image (occlusion by objects that
are not annotated is then not seen), and the report says so. Matching of estimates to instances is BOP's greedy
per-threshold matching (:mod:`meshpose.eval.matching`), keeping the top ``inst_count`` estimates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.eval.matching import best_errors_per_gt, match_estimates, match_per_threshold
from meshpose.eval.metrics import (
    BOP_MSPD_REFERENCE_WIDTH,
    BOP_MSPD_THRESHOLDS,
    BOP_MSSD_THRESHOLDS,
    BOP_VSD_DELTA,
    BOP_VSD_TAUS,
    BOP_VSD_THRESHOLDS,
    add,
    adds,
    adds_auc,
    mspd,
    mssd,
    re,
    sphere_projections_overlap,
    te,
    vsd,
)
from meshpose.io.bop import BopDataset, GtInstance
from meshpose.io.results import ResultRow, group_by_image, read_results
from meshpose.render.base import Renderer, full_silhouettes
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["KNOWN_METRICS", "EvalConfig", "compute_visibility", "evaluate", "evaluate_file"]

log = logging.getLogger(__name__)

KNOWN_METRICS = ("add", "adds", "mssd", "mspd", "vsd")


@dataclass(frozen=True)
class EvalConfig:
    """What ``meshpose eval`` computes.

    Args:
        metrics: any of ``add``, ``adds``, ``mssd``, ``mspd``, ``vsd``. ADD(-S) recall, the AUCs and the error
            medians are always reported; ``add``/``adds`` add the plain ADD and ADD-S recalls for every object.
        min_visib: ground-truth instances less visible than this fraction are not counted (BOP: 0.1).
        add_threshold_frac: ADD(-S) correctness threshold as a fraction of the diameter.
        only_result_images: score only images that appear in the results (e.g. a partial run); by default every
            target image counts, and an image without results counts as all misses.
        vsd_delta: VSD visibility tolerance, metres.
    """

    metrics: tuple[str, ...] = KNOWN_METRICS
    min_visib: float = 0.1
    add_threshold_frac: float = 0.1
    only_result_images: bool = False
    vsd_delta: float = BOP_VSD_DELTA

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(KNOWN_METRICS)}")
        if not (0.0 <= self.min_visib <= 1.0):
            raise ValueError(f"min_visib must be within [0, 1], got {self.min_visib}")


@dataclass
class _Acc:
    """Accumulated per-object counts."""

    n_targets: int = 0
    n_estimates: int = 0
    add_s_hits: int = 0
    add_hits: int = 0
    adds_hits: int = 0
    mssd_hits: np.ndarray = field(default_factory=lambda: np.zeros(len(BOP_MSSD_THRESHOLDS)))
    mspd_hits: np.ndarray = field(default_factory=lambda: np.zeros(len(BOP_MSPD_THRESHOLDS)))
    vsd_hits: np.ndarray = field(default_factory=lambda: np.zeros((len(BOP_VSD_TAUS), len(BOP_VSD_THRESHOLDS))))
    adds_err: list[float] = field(default_factory=list)
    add_s_err: list[float] = field(default_factory=list)
    re_deg: list[float] = field(default_factory=list)
    te_m: list[float] = field(default_factory=list)

    def merge(self, o: _Acc) -> None:
        self.n_targets += o.n_targets
        self.n_estimates += o.n_estimates
        self.add_s_hits += o.add_s_hits
        self.add_hits += o.add_hits
        self.adds_hits += o.adds_hits
        self.mssd_hits += o.mssd_hits
        self.mspd_hits += o.mspd_hits
        self.vsd_hits += o.vsd_hits
        self.adds_err += o.adds_err
        self.add_s_err += o.add_s_err
        self.re_deg += o.re_deg
        self.te_m += o.te_m


def compute_visibility(camera: Camera, objects: Sequence[ObjectModel], poses: Pose, renderer: Renderer) -> np.ndarray:
    """Visible fraction of each object of a scene: its pixels in a render of all of them, over its whole silhouette
    alone *including the part beyond the image border* (bop_toolkit's ``px_count_visib / px_count_all``), so an
    object half outside the image is half visible.

    Only the given objects occlude: an unannotated object in front of one (e.g. LM-O's benchvise) is not seen, so
    on datasets without depth or ``mask_visib`` this over-estimates the visibility of objects hidden by it.

    Args:
        camera: the image's camera.
        objects: the ``N`` annotated objects.
        poses: ``(N,)`` their poses.
        renderer: the renderer.

    Returns:
        ``(N,)`` float64 in [0, 1] (0 for an object that projects to no pixel).
    """
    poses = poses.reshape(-1)
    inst = renderer.render(objects, poses, camera).instance[0]
    _, px_all, _ = full_silhouettes(renderer, objects, poses, camera)
    visible = np.array([(inst == i + 1).sum() for i in range(len(objects))], np.float64)
    return np.where(px_all > 0, visible / np.maximum(px_all, 1), 0.0)


def _valid_instances(
    gts: Sequence[GtInstance], visib: np.ndarray | None, targets: dict[int, int] | None, min_visib: float
) -> np.ndarray:
    """Which GT instances count: visible enough, and (with a targets file) the inst_count most visible."""
    valid = np.ones(len(gts), dtype=bool)
    if visib is not None:
        valid &= visib >= min_visib
    if targets is not None:
        valid &= np.array([g.obj_id in targets for g in gts], dtype=bool)
        for obj_id, count in targets.items():
            idx = [i for i, g in enumerate(gts) if g.obj_id == obj_id and valid[i]]
            if len(idx) > count:
                order = sorted(idx, key=lambda i: -(visib[i] if visib is not None else 1.0))
                valid[order[count:]] = False
    return valid


def evaluate(
    dataset: BopDataset,
    rows: Sequence[ResultRow],
    config: EvalConfig | None = None,
    *,
    renderer: Renderer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score pose estimates against a dataset's ground truth.

    Args:
        dataset: the BOP dataset.
        rows: the estimates (any order; several per object and image allowed).
        config: what to compute.
        renderer: renderer for VSD and visibility (default: the process-wide GL renderer, created only if
            needed).
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        A JSON-ready dict: ``overall``, ``per_object`` (keyed by ``str(obj_id)``), ``config``, ``notes``.
    """
    config = config or EvalConfig()
    t_start = time.perf_counter()
    notes: list[str] = []
    by_image = group_by_image(rows)

    targets_by_image: dict[tuple[int, int], dict[int, int]] | None = None
    if dataset.targets_file is not None:
        targets_by_image = {}
        for tg in dataset.targets():
            targets_by_image.setdefault((tg.scene_id, tg.im_id), {})[tg.obj_id] = tg.inst_count
        keys = sorted(targets_by_image)
    else:
        keys = dataset.image_keys(targets_only=False)
        notes.append("no test_targets_bop19.json: every annotated instance is a target")
    if config.only_result_images:
        keys = [k for k in keys if k in by_image]
    extra = set(by_image) - set(keys)
    if extra and not config.only_result_images:
        notes.append(f"{len(extra)} image(s) of the results are not targets of the dataset and were ignored")

    want_vsd = "vsd" in config.metrics
    if want_vsd and not dataset.has_depth:
        notes.append("vsd not computed: the dataset has no depth images (BOP AR needs VSD; see ar_mssd_mspd)")
        want_vsd = False

    def get_renderer() -> Renderer:
        nonlocal renderer
        if renderer is None:
            from meshpose.render.gl import get_default_renderer

            renderer = get_default_renderer()
        return renderer

    visibility_source = "none (min_visib = 0)" if config.min_visib <= 0 else "scene_gt_info.json"
    per_obj: dict[int, _Acc] = {}
    for n_done, key in enumerate(keys, start=1):
        scene_id, im_id = key
        gts = dataset.gt(scene_id, im_id)
        if not gts:
            continue
        camera = dataset.camera(scene_id, im_id)
        visib: np.ndarray | None = None
        if config.min_visib > 0:
            if all(g.visib_fract is not None for g in gts):
                visib = np.array([g.visib_fract for g in gts], dtype=np.float64)
            else:
                visibility_source = "rendered from the annotated objects (no scene_gt_info.json)"
                objs = [dataset.object(g.obj_id) for g in gts]
                visib = compute_visibility(camera, objs, Pose.stack([g.pose for g in gts]), get_renderer())
        targets = targets_by_image.get(key) if targets_by_image is not None else None
        valid = _valid_instances(gts, visib, targets, config.min_visib)
        depth_test = None
        if want_vsd:
            depth_test = dataset.observation(scene_id, im_id, with_depth=True).depth
        est_rows = by_image.get(key, [])
        for obj_id in sorted({g.obj_id for g in gts}):
            gi = [i for i, g in enumerate(gts) if g.obj_id == obj_id]
            gvalid = valid[gi]
            if not gvalid.any():
                continue
            acc = per_obj.setdefault(obj_id, _Acc())
            ests = [r for r in est_rows if r.obj_id == obj_id]
            _score_object(
                acc, dataset, obj_id, camera, [gts[i] for i in gi], gvalid, ests, config, depth_test, get_renderer
            )
        if progress is not None:
            progress(n_done, len(keys))

    # Timing, from the results' time column (one value per image).
    times = [max(r.time_s for r in rs) for k, rs in by_image.items() if k in set(keys)]
    times = [t for t in times if t >= 0]
    n_est = sum(len(rs) for k, rs in by_image.items() if k in set(keys))

    total = _Acc()
    for acc in per_obj.values():
        total.merge(acc)
    per_object = {
        str(o): _summarise(acc, config, want_vsd, dataset.object(o).is_symmetric) for o, acc in sorted(per_obj.items())
    }
    overall = _summarise(total, config, want_vsd, None)
    overall["mean_time_per_image_s"] = float(np.mean(times)) if times else None
    overall["mean_time_per_estimate_s"] = float(np.sum(times) / n_est) if times and n_est else None
    overall["num_images"] = len(keys)
    return {
        "dataset": str(dataset.root),
        "split": dataset.split,
        "config": {
            "metrics": list(config.metrics),
            "min_visib": config.min_visib,
            "add_threshold_frac": config.add_threshold_frac,
            "only_result_images": config.only_result_images,
            "visibility_source": visibility_source,
        },
        "overall": overall,
        "per_object": per_object,
        "notes": notes,
        "eval_time_s": time.perf_counter() - t_start,
    }


def _score_object(
    acc: _Acc,
    dataset: BopDataset,
    obj_id: int,
    camera: Camera,
    gts: Sequence[GtInstance],
    valid: np.ndarray,
    ests: Sequence[ResultRow],
    config: EvalConfig,
    depth_test: np.ndarray | None,
    get_renderer: Callable[[], Renderer],
) -> None:
    """Add one (image, object) to ``acc``: errors of every estimate against every GT instance, matched BOP-style."""
    obj = dataset.object(obj_id)
    diameter = dataset.diameter(obj_id)
    n_valid = int(valid.sum())
    acc.n_targets += n_valid
    acc.n_estimates += len(ests)
    G = len(gts)
    if not ests:
        acc.adds_err += [math.inf] * n_valid
        acc.add_s_err += [math.inf] * n_valid
        return
    # Keep the top-scoring estimates, as many as there are targets (BOP19).
    ests = sorted(ests, key=lambda r: -r.score)[:n_valid]
    E = len(ests)
    scores = np.array([r.score for r in ests])
    Re = np.stack([r.R for r in ests])[:, None]  # (E, 1, 3, 3)
    tE = np.stack([r.t for r in ests])[:, None]
    Rg_list, tg_list = zip(*(g.pose.numpy() for g in gts), strict=True)
    Rg = np.stack(Rg_list)[None]  # (1, G, 3, 3)
    tg = np.stack(tg_list)[None]
    pts = obj.points

    e_add = add(Re, tE, Rg, tg, pts)  # (E, G)
    e_adds = adds(np.broadcast_to(Re, (E, G, 3, 3)), np.broadcast_to(tE, (E, G, 3)), Rg, tg, pts)
    e_add_s = e_adds if obj.is_symmetric else e_add
    thr = config.add_threshold_frac * diameter

    matched = match_estimates(scores, e_add_s, thr, gt_valid=valid)
    acc.add_s_hits += int(((matched >= 0) & valid).sum())
    if "add" in config.metrics:
        acc.add_hits += int(((match_estimates(scores, e_add, thr, gt_valid=valid) >= 0) & valid).sum())
    if "adds" in config.metrics:
        acc.adds_hits += int(((match_estimates(scores, e_adds, thr, gt_valid=valid) >= 0) & valid).sum())

    best_adds = best_errors_per_gt(scores, e_adds, math.inf, gt_valid=valid)
    best_add_s = best_errors_per_gt(scores, e_add_s, math.inf, gt_valid=valid)
    acc.adds_err += best_adds[valid].tolist()
    acc.add_s_err += best_add_s[valid].tolist()
    # Rotation/translation errors of the estimate matched (by ADD(-S), no threshold) to each valid instance.
    m_any = match_estimates(scores, e_add_s, math.inf, gt_valid=valid)
    for g in np.flatnonzero(valid & (m_any >= 0)):
        e = int(m_any[g])
        acc.re_deg.append(float(re(Re[e, 0], Rg[0, g])))
        acc.te_m.append(float(te(tE[e, 0], tg[0, g])))

    if "mssd" in config.metrics:
        e_mssd = mssd(Re, tE, Rg, tg, pts, obj.symmetries) / diameter
        m = match_per_threshold(scores, e_mssd, BOP_MSSD_THRESHOLDS, gt_valid=valid)
        acc.mssd_hits += ((m >= 0) & valid[None]).sum(1)
    if "mspd" in config.metrics:
        e_mspd = mspd(Re, tE, Rg, tg, camera.K, pts, obj.symmetries) * (BOP_MSPD_REFERENCE_WIDTH / camera.width)
        m = match_per_threshold(scores, e_mspd, BOP_MSPD_THRESHOLDS, gt_valid=valid)
        acc.mspd_hits += ((m >= 0) & valid[None]).sum(1)
    if depth_test is not None:
        renderer = get_renderer()
        est_poses = Pose.stack([r.pose for r in ests])
        gt_poses = Pose.stack([g.pose for g in gts])
        d_est = renderer.render([obj], est_poses.reshape(E, 1), camera).depth
        d_gt = renderer.render([obj], gt_poses.reshape(G, 1), camera).depth
        e_vsd = np.ones((E, G, len(BOP_VSD_TAUS)))
        overlap = sphere_projections_overlap(tE[:, 0][:, None], tg[0][None], diameter / 2.0)
        for ei in range(E):
            for gi in range(G):
                if valid[gi] and overlap[ei, gi]:
                    e_vsd[ei, gi] = vsd(
                        d_est[ei], d_gt[gi], depth_test, camera.K, delta=config.vsd_delta, diameter=diameter
                    )
        for k in range(len(BOP_VSD_TAUS)):
            m = match_per_threshold(scores, e_vsd[:, :, k], BOP_VSD_THRESHOLDS, gt_valid=valid)
            acc.vsd_hits[k] += ((m >= 0) & valid[None]).sum(1)


def _summarise(acc: _Acc, config: EvalConfig, with_vsd: bool, symmetric: bool | None) -> dict[str, Any]:
    n = acc.n_targets
    out: dict[str, Any] = {"num_targets": n, "num_estimates": acc.n_estimates}
    if symmetric is not None:
        out["symmetric"] = symmetric
    if n == 0:
        return out
    out["add_s_recall"] = acc.add_s_hits / n
    if "add" in config.metrics:
        out["add_recall"] = acc.add_hits / n
    if "adds" in config.metrics:
        out["adds_recall"] = acc.adds_hits / n
    out["adds_auc"] = adds_auc(np.array(acc.adds_err))
    out["add_s_auc"] = adds_auc(np.array(acc.add_s_err))
    ars = {}
    if "mssd" in config.metrics:
        rec = acc.mssd_hits / n
        out["recall_mssd"] = rec.tolist()
        ars["mssd"] = out["ar_mssd"] = float(rec.mean())
    if "mspd" in config.metrics:
        rec = acc.mspd_hits / n
        out["recall_mspd"] = rec.tolist()
        ars["mspd"] = out["ar_mspd"] = float(rec.mean())
    if with_vsd:
        rec = acc.vsd_hits / n
        out["recall_vsd"] = rec.mean(0).tolist()
        ars["vsd"] = out["ar_vsd"] = float(rec.mean())
    if "mssd" in ars and "mspd" in ars:
        out["ar_mssd_mspd"] = (ars["mssd"] + ars["mspd"]) / 2.0
        out["ar"] = (ars["vsd"] + ars["mssd"] + ars["mspd"]) / 3.0 if "vsd" in ars else None
    out["median_re_deg"] = float(np.median(acc.re_deg)) if acc.re_deg else None
    out["median_te_mm"] = float(np.median(acc.te_m) * 1e3) if acc.te_m else None
    out["num_matched"] = len(acc.re_deg)
    return out


def evaluate_file(
    dataset: str | Path | BopDataset,
    results: str | Path,
    config: EvalConfig | None = None,
    *,
    split: str = "test",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` on a results file; the report also names the file."""
    ds = dataset if isinstance(dataset, BopDataset) else BopDataset(dataset, split)
    rows = read_results(results)
    report = evaluate(ds, rows, config, progress=progress)
    report["results"] = str(results)
    return report
