"""Training of the ``jointloss`` RGB-D estimator and refiner **without pose labels** (``meshpose train jointloss``).

After *Joint-Loss Enhanced Self-Supervised Learning for Refinement-Coupled 6D Pose Estimation*. The data are
unlabeled RGB-D frames and their detections (:class:`~meshpose.train.jointloss_data.JointLossDataset`: a crop, the
sampled mask pixels and their back-projected depth per detection; the frames' ``scene_gt.json`` is never opened).

* **Stage 1** (the first ``weak_steps`` steps), the inaccurate weak loss: rough pose targets made from the observed
  depth and the mesh alone by multi-start robust registration (:mod:`meshpose.train.weak_labels`, computed once and
  cached; those scored below ``min_weak_score`` are left out) supervise DenseFusion's confidence-weighted per-vote
  loss (:func:`~meshpose.train.jointloss_losses.dense_fusion_loss`) and the refiner's iterates
  (:func:`~meshpose.train.jointloss_losses.refiner_loss`).
* **Stage 2**, the self-supervised joint loss (:mod:`meshpose.train.selfsup_losses`) through the differentiable
  renderer (:func:`meshpose.render.diff.render_soft`): the estimator's most confident vote and each refiner iterate
  are rendered into the crop and compared with it — colour in LAB without L (neighbourhood-nearest), mask IoU with
  the detection's mask, and the mean distance of the observed points to the model at that pose (``λ`` colour /
  IoU / geometry = 2e-4 / 0.1 / 1) — and ``votes`` random votes per crop get DenseFusion's confidence-weighted form
  of the geometric term (so every vote and the confidences keep learning). ``weak_weight`` keeps some of stage 1.

The refiner sees the estimator's colour embeddings detached (its loss trains only itself), from the estimator's
most confident vote (detached), ``refine_iterations`` steps.

Validation (``val_data``, a held-out labelled set: labels read here only): ``est_auc`` / ``ref_auc``, the ADD-S AUC
(PoseCNN's, to 10 cm) of the estimator and of the refined poses, ``est_adds`` / ``ref_adds`` (ADD-S < 0.1 d), and
``ref_auc`` chooses ``best.pt``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import roma
import torch

from meshpose.eval.pose_errors import adds
from meshpose.eval.scores import add_s_recall, adds_auc
from meshpose.io.bop import BopDataset
from meshpose.io.detections import read_detections
from meshpose.nets.jointloss import (
    METHOD,
    JointInput,
    JointLossNet,
    JointLossNetConfig,
    best_pose,
    load_jointloss_net,
    surface_samples,
)
from meshpose.render.diff import DiffMesh, SoftRasterSettings, render_soft
from meshpose.train.common import (
    batch_to_device,
    initial_weights,
    lazy_validation,
    loop_config,
    method_task,
    resume_config,
    training_process,
    with_weights,
)
from meshpose.train.jointloss_config import JointLossTrainConfig
from meshpose.train.jointloss_data import JointAugment, JointLossDataset, JointSample, collate
from meshpose.train.jointloss_losses import coordinate_loss, dense_fusion_loss, refiner_loss, symmetric_target
from meshpose.train.loop import LoopResult, train_loop
from meshpose.train.selfsup_losses import JointLossWeights, geometric_loss, joint_loss
from meshpose.train.weak_labels import WeakLabelSet, weak_labels
from meshpose.types import ObjectModel

__all__ = [
    "METHOD",
    "JointLossTrainConfig",
    "ObjectTensors",
    "joint_input",
    "jointloss_losses",
    "load_jointloss_net",
    "refiner_starts",
    "render_crops",
    "train_jointloss",
    "validate_jointloss",
    "visible_weight",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectTensors:
    """The training objects as the losses need them, in head order.

    Args:
        obj_ids: BOP ids, head order.
        points: ``(K, P, 3)`` model points, metres.
        symmetries: ``(K, S, 4, 4)`` symmetry transforms (padded with identities).
        diameters: ``(K,)`` metres.
        meshes: the differentiable renderer's meshes.
    """

    obj_ids: tuple[int, ...]
    points: torch.Tensor
    symmetries: torch.Tensor
    diameters: torch.Tensor
    meshes: tuple[DiffMesh, ...]

    @classmethod
    def of(cls, objects: dict[int, ObjectModel], model_points: int, faces: int, seed: int = 0) -> ObjectTensors:
        ids = tuple(sorted(objects))
        rng = np.random.default_rng(seed)
        pts, syms = [], []
        s_max = max(len(objects[o].symmetries) for o in ids)
        for o in ids:
            p = objects[o].points
            pts.append(p[rng.choice(len(p), model_points, replace=len(p) < model_points)])
            s = objects[o].symmetries
            syms.append(np.concatenate([s, np.broadcast_to(np.eye(4), (s_max - len(s), 4, 4))]))
        return cls(
            obj_ids=ids,
            points=torch.tensor(np.stack(pts), dtype=torch.float32),
            symmetries=torch.tensor(np.stack(syms), dtype=torch.float32),
            diameters=torch.tensor([objects[o].diameter for o in ids], dtype=torch.float32),
            meshes=tuple(DiffMesh.from_object(objects[o], max_faces=faces) for o in ids),
        )

    def index(self, obj_ids: torch.Tensor) -> torch.Tensor:
        """Head indices ``(B,)`` of BOP ids ``(B,)``."""
        lut = {o: k for k, o in enumerate(self.obj_ids)}
        return torch.tensor([lut[int(o)] for o in obj_ids], dtype=torch.int64)


def joint_input(data: dict[str, Any]) -> JointInput:
    """The network input of a :func:`~meshpose.train.jointloss_data.collate` batch with its ``obj_index``."""
    return JointInput(rgb=data["rgb"], choose=data["choose"], points=data["points"], obj_index=data["obj_index"])


def render_crops(
    objects: ObjectTensors,
    index: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    size: int,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft renderings of one object per crop (items grouped by object).

    Args:
        objects: the objects.
        index: ``(B,)`` head index per crop.
        R: ``(B, 3, 3)``; t: ``(B, 3)`` poses (camera frame).
        K: ``(B, 3, 3)`` crop cameras.
        size: crop side, pixels.
        sigma: edge softness, pixels².

    Returns:
        ``(colour (B, size, size, 3), silhouette (B, size, size), depth (B, size, size))`` (depth in metres, 0
        off the object), differentiable in ``R`` and ``t``.
    """
    settings = SoftRasterSettings(sigma=sigma)
    colour = R.new_zeros((len(R), size, size, 3))
    sil = R.new_zeros((len(R), size, size))
    depth = R.new_zeros((len(R), size, size))
    for k in index.unique().tolist():
        sel = (index == k).nonzero()[:, 0]
        out = render_soft([objects.meshes[k]], R[sel, None], t[sel, None], K[sel], (size, size), settings)
        colour = colour.index_put((sel,), out.color)
        sil = sil.index_put((sel,), out.silhouette)
        depth = depth.index_put((sel,), out.depth)
    return colour, sil, depth


def refiner_starts(
    R0: torch.Tensor,
    t0: torch.Tensor,
    weak_R: torch.Tensor,
    weak_t: torch.Tensor,
    weak_ok: torch.Tensor,
    diameter: torch.Tensor,
    cfg: JointLossTrainConfig,
    stage: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The poses the refiner starts from in a training step (detached): the estimator's most confident vote, or —
    for a share ``refiner_perturb_share`` of the items — a pose turned by up to ``refiner_perturb_deg`` and moved
    by up to ``refiner_perturb_frac`` · diameter from the weak target (stage 1, items with one) or from the
    estimator's vote (stage 2: no target is used). Early in a run the estimator's votes are far off and alike;
    the perturbed starts give the refiner residuals of every size to learn from.

    Returns:
        ``(R (B, 3, 3), t (B, 3))``.
    """
    R0, t0 = R0.detach(), t0.detach()
    b = len(R0)
    pick = torch.rand(b, generator=gen) < cfg.refiner_perturb_share
    if not bool(pick.any()) or cfg.refiner_perturb_share <= 0:
        return R0, t0
    use_weak = pick & weak_ok.bool() if stage == 1 else torch.zeros_like(pick)
    base_R = torch.where(use_weak[:, None, None], weak_R, R0)
    base_t = torch.where(use_weak[:, None], weak_t, t0)
    axis = torch.nn.functional.normalize(torch.randn(b, 3, generator=gen), dim=1)
    angle = torch.rand(b, generator=gen) * math.radians(cfg.refiner_perturb_deg)
    dR = roma.rotvec_to_rotmat(axis * angle[:, None]).to(R0.dtype)
    direction = torch.nn.functional.normalize(torch.randn(b, 3, generator=gen), dim=1)
    shift = direction * (torch.rand(b, generator=gen) * cfg.refiner_perturb_frac)[:, None] * diameter[:, None]
    R = torch.where(pick[:, None, None], dR @ base_R, R0)
    t = torch.where(pick[:, None], base_t + shift.to(t0.dtype), t0)
    return R, t


def visible_weight(
    silhouette: torch.Tensor,
    depth: torch.Tensor,
    observed_depth: torch.Tensor,
    observed_mask: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """``(B, H, W)`` 0 where the rendered object is hidden in the observation, else 1 (no gradient).

    The detection's mask is *modal* (the visible part) and the rendering *amodal*: where something stands in front of
    the object, the IoU would pull the pose away from the occluder. A rendered pixel outside the mask whose observed
    depth lies more than ``margin`` metres in front of the rendered surface is taken as occluded and left out of the
    mask IoU (the mask term then compares only what can be seen).

    Args:
        silhouette: ``(B, H, W)`` rendered soft silhouette.
        depth: ``(B, H, W)`` rendered depth, metres (0 off the object).
        observed_depth: ``(B, H, W)`` the observed depth crop, metres (0 = missing).
        observed_mask: ``(B, H, W)`` bool, the detection's mask.
        margin: metres.
    """
    with torch.no_grad():
        hidden = (observed_depth > 0) & (depth > 0) & (observed_depth < depth - margin) & ~observed_mask
        return (~(hidden & (silhouette > 0.05))).to(silhouette.dtype)


def _masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum() / w.sum().clamp_min(1.0)


def jointloss_losses(
    net: JointLossNet, data: dict[str, Any], cfg: JointLossTrainConfig, objects: ObjectTensors
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (module docstring); ``data["stage"]`` is 1 or 2.

    Returns:
        The loss and scalars to log (``stage``, ``loss``, ``est_weak`` / ``ref_weak``: mean distance of the most
        confident vote / last iterate to the weak targets (metres), the stage-2 terms when in stage 2).
    """
    inputs = joint_input(data)
    idx = data["obj_index"]
    pts, syms, diam = objects.points[idx], objects.symmetries[idx], objects.diameters[idx]
    out = net.estimator(inputs)
    R0, t0 = best_pose(out)
    ok = data["weak_ok"].float()
    stage = int(data["stage"])
    gen = torch.Generator().manual_seed(int(data["step"]) * 7919 + 1)
    Rs, ts = refiner_starts(R0, t0, data["weak_R"], data["weak_t"], data["weak_ok"], diam, cfg, stage, gen)
    trace: list[tuple[torch.Tensor, torch.Tensor]] = []
    iterates = net.refiner.refine(inputs, Rs, ts, out.emb.detach(), iterations=cfg.refine_iterations, trace=trace)
    stats: dict[str, float] = {"stage": float(stage), "weak_share": float(ok.mean())}
    weak = torch.zeros((), dtype=R0.dtype)
    if stage == 1 or cfg.weak_weight > 0:
        est = dense_fusion_loss(out.R, out.t, out.c, data["weak_R"], data["weak_t"], pts, syms, diam, w=cfg.conf_w)
        weak = _masked_mean(est.loss, ok)
        stats["est_weak"] = float(_masked_mean(est.distance, ok))
        if iterates:
            ref = refiner_loss(iterates, data["weak_R"], data["weak_t"], pts, syms, diam)
            weak = weak + _masked_mean(ref.loss, ok)
            stats["ref_weak"] = float(_masked_mean(ref.distance, ok))
        if trace:  # the dense refiner: its per-point object coordinates against the weak target's
            tR, tt = symmetric_target(Rs, ts, data["weak_R"], data["weak_t"], pts, syms)
            coord = torch.stack([coordinate_loss(data["points"], y, c, tR, tt, cfg.conf_w) for y, c in trace]).mean(0)
            weak = weak + _masked_mean(coord, ok)
            stats["ref_coord"] = float(_masked_mean(coord.detach(), ok))
    if stage == 1:
        stats["loss"] = float(weak.detach())
        return weak, stats
    loss = cfg.weak_weight * weak
    b, n = data["choose"].shape
    obs_pts = data["points"][:, : min(n, 200)]
    # every vote's geometry, confidence-weighted (DenseFusion's form, with the geometric term for the label)
    pick = torch.randint(0, n, (b, min(cfg.votes, n)), generator=torch.Generator().manual_seed(int(data["step"])))
    Rv = out.R.gather(1, pick[..., None, None].expand(-1, -1, 3, 3))
    tv = out.t.gather(1, pick[..., None].expand(-1, -1, 3))
    cv = out.c.gather(1, pick)
    v = pick.shape[1]
    geo_v = geometric_loss(
        obs_pts.repeat_interleave(v, 0),
        pts.repeat_interleave(v, 0),
        Rv.flatten(0, 1),
        tv.flatten(0, 1),
        clip=cfg.geometry_clip,
    ).view(b, v)
    votes = (geo_v * cv - cfg.conf_w * torch.log(cv.clamp_min(1e-12))).mean()
    weights = JointLossWeights(colour=cfg.colour_weight, iou=cfg.iou_weight, geometry=cfg.geometry_weight)
    obs_rgb = data["rgb"].permute(0, 2, 3, 1)
    obs_mask = data["mask"] > 0
    terms_all = []
    for R, t in [(R0, t0), *iterates]:
        colour, sil, depth = render_crops(objects, idx, R, t, data["K_crop"], cfg.crop, cfg.render_sigma)
        seen = visible_weight(sil, depth, data["depth"], obs_mask, cfg.occlusion_margin) if cfg.occlusion_aware else 1.0
        terms_all.append(
            joint_loss(
                colour,
                sil * seen,
                obs_rgb,
                obs_mask,
                weights,
                observed_points=obs_pts,
                model_points=pts,
                R=R,
                t=t,
                clip=cfg.geometry_clip,
            )
        )
    joint = torch.stack([x.total.mean() for x in terms_all]).sum()
    loss = loss + cfg.vote_weight * votes + joint
    first, last = terms_all[0], terms_all[-1]
    stats.update(
        loss=float(loss.detach()),
        votes=float(votes.detach()),
        est_colour=float(first.colour.detach().mean()),
        est_iou=float(first.iou.detach().mean()),
        est_geo=float(first.geometry.detach().mean()),
        ref_colour=float(last.colour.detach().mean()),
        ref_iou=float(last.iou.detach().mean()),
        ref_geo=float(last.geometry.detach().mean()),
    )
    return loss, stats


def _with_surfaces(
    net: JointLossNet, objects: dict[int, ObjectModel], obj_ids: tuple[int, ...], seed: int
) -> JointLossNet:
    """``net`` with its dense refiner's surface samples of ``objects`` (head order); other refiners unchanged."""
    if net.config.refiner_kind == "dense":
        count = net.config.refiner_surface_points
        net.refiner.set_surfaces(torch.stack([surface_samples(objects[o].mesh, count, seed) for o in obj_ids]))
    return net


def _weak_targets(
    cfg: JointLossTrainConfig,
    run: Path,
    dataset: JointLossDataset,
    bop: BopDataset,
    dets: Any,
    objects: dict[int, ObjectModel],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weak pose targets of every item ``(R (I, 3, 3), t (I, 3), ok (I,))`` (computed once, cached)."""
    cache = Path(cfg.weak_labels) if cfg.weak_labels else run / "weak_labels.npz"
    images = sorted({(k[0], k[1]) for k in dataset.keys})
    found: WeakLabelSet = weak_labels(bop, dets, objects, images, cache, seed=cfg.seed)
    n = len(dataset)
    R = torch.eye(3).repeat(n, 1, 1)
    t = torch.zeros(n, 3)
    ok = torch.zeros(n, dtype=torch.bool)
    for i, key in enumerate(dataset.keys):
        lab = found.labels.get((int(key[0]), int(key[1]), int(key[2])))
        if lab is None or lab.score < cfg.min_weak_score:
            continue
        Rl, tl = lab.pose.numpy()
        R[i], t[i], ok[i] = torch.tensor(Rl, dtype=torch.float32), torch.tensor(tl, dtype=torch.float32), True
    log.info("weak targets: %d of %d items (score ≥ %.2f)", int(ok.sum()), n, cfg.min_weak_score)
    if not bool(ok.any()) and cfg.weak_steps > 0:
        raise ValueError("no weak target passed min_weak_score: stage 1 has nothing to learn from")
    return R, t, ok


def _batches(
    cfg: JointLossTrainConfig,
    dataset: JointLossDataset,
    weak: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    objects: ObjectTensors,
    rank: int,
    start_step: int,
) -> Iterator[dict[str, Any]]:
    """The training batches from ``start_step`` on: each step draws its items from ``(seed, rank, step)`` alone, so
    a resumed run draws what the uninterrupted one would have."""
    step = start_step
    n = len(dataset)
    while True:
        rng = np.random.default_rng([cfg.seed, rank, step, 0x10147])
        items = rng.choice(n, cfg.batch_size, replace=n < cfg.batch_size)
        dataset.set_epoch(step)
        data = collate([dataset[int(i)] for i in items])
        sel = torch.as_tensor(items)
        data.update(
            obj_index=objects.index(data["obj_id"]),
            weak_R=weak[0][sel],
            weak_t=weak[1][sel],
            weak_ok=weak[2][sel],
            stage=1 if step < cfg.weak_steps else 2,
            step=step,
        )
        yield data
        step += 1


def validation_items(cfg: JointLossTrainConfig, obj_ids: tuple[int, ...]) -> list[dict[str, Any]]:
    """The held-out crops (batches of ``batch_size``) with the true pose of their object (read from ``val_data``'s
    labels: validation only). A detection is matched to the annotated instance of its object in its image."""
    bop = BopDataset(cfg.val_data, split=cfg.val_split)
    dets = read_detections(cfg.val_detections)
    ds = JointLossDataset(bop, dets, obj_ids, crop=cfg.crop, points=cfg.points, seed=cfg.seed + 7)
    samples: list[JointSample] = []
    gts: list[tuple[np.ndarray, np.ndarray]] = []
    for i, key in enumerate(ds.keys):
        if len(samples) >= cfg.val_items:
            break
        sample = ds[i]
        inst = [g for g in bop.gt(key[0], key[1]) if g.obj_id == sample.obj_id]
        if len(inst) != 1:  # an object twice in one image: which instance a mask belongs to is ambiguous
            continue
        R, t = inst[0].pose.numpy()
        samples.append(sample)
        gts.append((R, t))
    batches = []
    for a in range(0, len(samples), cfg.batch_size):
        part = samples[a : a + cfg.batch_size]
        data = collate(part)
        data["gt_R"] = torch.tensor(np.stack([g[0] for g in gts[a : a + cfg.batch_size]]), dtype=torch.float32)
        data["gt_t"] = torch.tensor(np.stack([g[1] for g in gts[a : a + cfg.batch_size]]), dtype=torch.float32)
        batches.append(data)
    log.info("validation: %d crops of %s", len(samples), cfg.val_data)
    return batches


def validate_jointloss(
    net: JointLossNet, batches: list[dict[str, Any]], cfg: JointLossTrainConfig, objects: ObjectTensors
) -> dict[str, Any]:
    """ADD-S AUC and ADD-S < 0.1 d of the estimator and the refiner on the held-out crops (module docstring)."""
    t0 = time.perf_counter()
    est_err, ref_err, diams = [], [], []
    points = {o: objects.points[k].double().numpy() for k, o in enumerate(objects.obj_ids)}
    with torch.no_grad():
        for data in batches:
            data = dict(data, obj_index=objects.index(data["obj_id"]))
            out, its = net(joint_input(data), iterations=cfg.refine_iterations)
            R0, t0_ = best_pose(out)
            Rr, tr = its[-1] if its else (R0, t0_)
            for j in range(len(R0)):
                oid = int(data["obj_id"][j])
                gR, gt = data["gt_R"][j].double().numpy(), data["gt_t"][j].double().numpy()
                est_err.append(adds(R0[j].double().numpy(), t0_[j].double().numpy(), gR, gt, points[oid]))
                ref_err.append(adds(Rr[j].double().numpy(), tr[j].double().numpy(), gR, gt, points[oid]))
                diams.append(float(objects.diameters[data["obj_index"][j]]))
    return {
        "est_auc": adds_auc(est_err),
        "ref_auc": adds_auc(ref_err),
        "est_adds": add_s_recall(est_err, diams),
        "ref_adds": add_s_recall(ref_err, diams),
        "items": len(est_err),
        "seconds": time.perf_counter() - t0,
    }


def train_jointloss(
    cfg: JointLossTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train (or resume) the ``jointloss`` estimator and refiner without pose labels; see the module docstring.

    Args:
        cfg: the run's configuration (on resume, the saved one is used; only ``workers`` and ``threads`` are
            taken from ``cfg``).
        run_dir: the run folder (``last.pt``, ``best.pt``, ``model.pt``, ``config.json``, ``train_log.jsonl``,
            ``weak_labels.npz``).
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps``.
        max_steps: stop after this many steps in this call.
        progress: called as ``progress(step, stats)`` at each log line.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
        ValueError: the frames have no depth, no usable detection, or no weak target.
    """
    run = Path(run_dir)
    cfg, ck = resume_config(cfg, run, METHOD, resume=resume, steps=steps)
    cfg, start = initial_weights(cfg, ck, load_jointloss_net)
    cfg.check_data()
    bop = BopDataset(cfg.data, split=cfg.split)
    dets = read_detections(cfg.detections)
    objects = bop.objects()
    tensors = ObjectTensors.of(objects, cfg.model_points, cfg.render_faces, cfg.seed)
    augment = JointAugment() if cfg.augment else None
    dataset = JointLossDataset(
        bop, dets, tensors.obj_ids, crop=cfg.crop, points=cfg.points, seed=cfg.seed, augment=augment
    )
    if start is not None and tuple(start.config.obj_ids) != tensors.obj_ids:
        raise ValueError(
            f"init_weights {cfg.init_weights!r} know objects {list(start.config.obj_ids)}, the frames' dataset "
            f"{list(tensors.obj_ids)}: start from weights of the same objects, or without init_weights"
        )
    net_cfg = JointLossNetConfig.from_dict(
        {
            **cfg.net.to_dict(),
            "num_objects": len(tensors.obj_ids),
            "obj_ids": list(tensors.obj_ids),
            "image_size": cfg.crop,
            "num_points": cfg.points,
        }
    )
    with training_process(cfg, run) as ctx:
        weak = _weak_targets(cfg, run, dataset, bop, dets, objects)
        val: Callable[[torch.nn.Module, int], dict[str, Any]] = lambda m, s: {}  # noqa: E731
        if cfg.val_data:
            val = lazy_validation(
                lambda: validation_items(cfg, tensors.obj_ids),
                lambda m, b: validate_jointloss(m, b, cfg, tensors),  # type: ignore[arg-type]
            )
        task = method_task(
            cfg,
            METHOD,
            _with_surfaces(with_weights(JointLossNet(net_cfg), start), objects, tensors.obj_ids, cfg.seed),
            net_cfg.to_dict(),
            data=lambda start, rank: _batches(cfg, dataset, weak, tensors, rank, start),
            loss=lambda m, batch: jointloss_losses(m, batch, cfg, tensors),  # type: ignore[arg-type]
            to_device=batch_to_device,
            validate=val,
        )
        loop = loop_config(cfg, val_metric="ref_auc", floor=0.05)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
