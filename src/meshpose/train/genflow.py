"""Training of the ``genflow`` refiner on synthetic novel objects drawn on the fly (``meshpose train genflow``).

Data (:mod:`meshpose.train.genflow_data`): :class:`~meshpose.synth.SceneSampler` scenes of generated objects
(``novel:N``; never held-out test objects) with distractors, random cameras, light, backgrounds and the sensor
model; every visible instance of an image becomes a training item — its ground-truth pose perturbed, the observed
crop around that initial pose and the object rendered alone at it. Options: :class:`GenFlowTrainConfig`.

Losses (everything the synthetic engine can label):

* a gamma-weighted L1 flow loss over the recurrent iterations, on match sources whose ground-truth point is
  visible in the observation (the ground-truth flow projects the rendered ``xyz`` with the true pose);
* a gamma-weighted symmetry-aware point-matching loss on the pose that the differentiable PnP returns at every
  iteration (mean distance of model points, minimum over the object's symmetries, in diameters).

Validation: ADD(-S) recall at 0.1·d of the ``genflow`` refiner with the network being trained, on held-out
generated objects (``val_objects``). The refiner lives above ``train/`` (``meshpose.refine``), so the caller
hands :func:`train_genflow` a factory of it (the CLI does).

Running (:mod:`meshpose.train.loop`): single process on a CPU (items drawn by ``workers`` spawned processes, each
with its own GL context), or ``torchrun --nproc_per_node K -m meshpose.cli train genflow ...`` for DDP over
processes/GPUs (rank 0 logs, validates and checkpoints). The run folder holds ``last.pt`` (resumed by
``--resume``), ``best.pt`` (best validation ADD(-S) recall), ``model.pt`` (weights only, float32, of ``best.pt`` —
or of ``last.pt`` when nothing was validated — written when a call ends), ``config.json``, ``train_log.jsonl`` and
``val_set.pkl`` (the validation images, drawn once).
"""

from __future__ import annotations

import functools
import pickle
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.utils.data

from meshpose.eval.metrics import add_or_adds
from meshpose.nets.batch import METHOD, CropBatch, load_genflow_model, run_network
from meshpose.nets.genflow import STRIDE, GenFlowNet, GenFlowOutput, project_points
from meshpose.synth import resolve_objects
from meshpose.train.cached_scenes import cached_views, open_cached
from meshpose.train.common import (
    initial_weights,
    lazy_validation,
    loop_config,
    method_task,
    resume_config,
    training_process,
    with_weights,
)
from meshpose.train.genflow_config import GenFlowTrainConfig, PerturbRegime, training_scene_config
from meshpose.train.genflow_data import ItemStream, appearance_gap, collate_items, make_items, make_validation_set
from meshpose.train.loop import LoopResult, Schedule, train_loop
from meshpose.train.losses import end_point_error, point_matching_loss, sample_nearest, sequence_loss
from meshpose.types import Camera, ObjectModel, Observation, Pose, RefineResult

__all__ = [
    "GenFlowTrainConfig",
    "ItemStream",
    "PerturbRegime",
    "PoseRefiner",
    "appearance_gap",
    "batch_to",
    "collate_items",
    "genflow_losses",
    "genflow_schedule",
    "make_items",
    "make_validation_set",
    "train_genflow",
    "training_scene_config",
    "validate",
]


class PoseRefiner(Protocol):
    """What validation needs of a refiner (:class:`meshpose.refine.base.Refiner` has it)."""

    def refine(self, obs: Observation, objects: Sequence[ObjectModel], init: Pose) -> RefineResult: ...


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def supervised_terms(
    out: GenFlowOutput,
    batch: CropBatch,
    target: Pose,
    own: torch.Tensor,
    points: torch.Tensor,
    symmetries: torch.Tensor,
    gamma: float,
    depth: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``genflow``'s supervised terms toward a target pose (the truth in training, a pseudo pose in ``adapt``).

    The flow target of each rendered point is where ``target`` projects it; a point counts where it lands inside
    the crop, on the object's own pixels (``own``) and — given the clean depth — at the depth the target gives it
    (within 5 % of the diameter, at least 1 cm: not hidden).

    Args:
        out: the network's output (:func:`~meshpose.nets.batch.run_network`).
        batch: its crops.
        target: ``(B,)`` the target poses.
        own: ``(B, 1, s, s)`` the object's visible pixels in the crop (instance mask, or a detection's mask).
        points: ``(B, P, 3)``; symmetries: ``(B, S, 4, 4)`` of the objects, for the point-matching loss.
        gamma: the sequence loss's decay.
        depth: ``(B, 1, s, s)`` clean observed depth, metres (``None``: no depth test).

    Returns:
        ``(flow loss, point-matching loss, flow target (B, N, 2), visibility (B, N) float)``, the losses
        gamma-weighted over the iterations (point matching clamped at 1 per item).
    """
    K64 = batch.K.to(torch.float64)
    points64 = out.points.to(torch.float64)
    gt_uv = project_points(target.to(torch.float64), points64, K64)
    flow_gt = (gt_uv - out.source.to(torch.float64)).to(torch.float32)  # (B, N, 2)
    s = batch.obs_rgb.shape[-1]
    inside = (gt_uv > -0.5).all(-1) & (gt_uv < s - 0.5).all(-1)
    visible = out.valid & inside & (sample_nearest(own, gt_uv) > 0.5)
    if depth is not None:
        R64, t64 = target.R.to(torch.float64), target.t.to(torch.float64)
        z_gt = (points64 @ R64.transpose(-1, -2) + t64[:, None])[..., 2]
        tol = torch.clamp(0.05 * batch.diameter, min=0.01)[:, None]
        visible = visible & ((sample_nearest(depth, gt_uv) - z_gt.float()).abs() < tol)
    vis = visible.to(torch.float32)
    n_vis = vis.sum(1).clamp_min(1.0)
    diam = batch.diameter.to(torch.float64)
    flow_terms, pose_terms = [], []
    for step in out.steps:
        pred = step.flow.flatten(2).transpose(1, 2)
        err = (pred - flow_gt).abs().sum(-1) / STRIDE  # L1 in feature cells
        flow_terms.append(((err * vis).sum(1) / n_vis).mean())
        pm = point_matching_loss(step.pose, target, points, symmetries, diam)
        pose_terms.append(pm.clamp(max=1.0).mean())
    return sequence_loss(flow_terms, gamma), sequence_loss(pose_terms, gamma), flow_gt, vis


def genflow_losses(
    net: GenFlowNet | torch.nn.Module, data: dict[str, Any], cfg: GenFlowTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward pass and losses of one batch (:func:`collate_items`); returns the total loss and scalars to log."""
    batch: CropBatch = data["batch"]
    out = run_network(net, batch, cfg.iterations)
    gt: Pose = data["gt"]
    sup = supervised_terms(
        out, batch, gt, data["instance"], data["points"], data["symmetries"], cfg.gamma, depth=data["depth_clean"]
    )
    flow_loss, pose_loss, flow_gt, vis = sup
    diam = batch.diameter.to(torch.float64)
    total = flow_loss + cfg.pose_weight * pose_loss.to(torch.float32)
    with torch.no_grad():
        pm_init = point_matching_loss(batch.pose, gt, data["points"], data["symmetries"], diam)
        pm_last = point_matching_loss(out.steps[-1].pose, gt, data["points"], data["symmetries"], diam)
        epe = end_point_error(out.steps[-1].flow.flatten(2).transpose(1, 2), flow_gt, vis)
    stats = {
        "loss": float(total.detach()),
        "flow": float(flow_loss.detach()),
        "pose": float(pose_loss.detach()),
        "epe_px": float(epe),
        "pm_init": float(pm_init.mean()),
        "pm_last": float(pm_last.mean()),
        "ok_init": float((pm_init < 0.1).float().mean()),
        "ok_last": float((pm_last < 0.1).float().mean()),
        "visible": float(vis.mean()),
    }
    return total, stats


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def validate(
    refiner: PoseRefiner,
    val: list[dict[str, Any]],
    objects: str | Mapping[int, ObjectModel],
    seed: int,
    *,
    with_depth: bool = False,
) -> dict[str, float]:
    """ADD(-S) recall at 0.1·d (and the initial poses' recall) of ``refiner`` on a validation set.

    Args:
        refiner: e.g. ``GenFlowRefiner(config, model=net)`` (the network in eval mode).
        val: :func:`make_validation_set` images.
        objects: the objects spec the set was drawn from (``"novel:4500-4540"``), or its objects by id (a
            pre-rendered split's).
        seed: the seed the objects were generated with (with a spec).
        with_depth: give the refiner the observed depth.
    """
    by_id = resolve_objects(objects, seed).by_id if isinstance(objects, str) else objects.__getitem__
    ok = ok0 = n = 0
    errs = []
    t0 = time.perf_counter()
    for v in val:
        cam = Camera(v["K"], *v["size"])
        obs = Observation(v["rgb"], cam, depth=v["depth"] if with_depth else None)
        models = [by_id(i) for i in v["obj_ids"]]
        res = refiner.refine(obs, models, Pose(*v["init"]))
        Re, te = res.pose.numpy()
        Rg, tg = v["gt"]
        Ri, ti = v["init"]
        for k, m in enumerate(models):
            e = float(add_or_adds(Re[k], te[k], Rg[k], tg[k], m.points, symmetric=m.is_symmetric)) / m.diameter
            e0 = float(add_or_adds(Ri[k], ti[k], Rg[k], tg[k], m.points, symmetric=m.is_symmetric)) / m.diameter
            ok += e < 0.1
            ok0 += e0 < 0.1
            errs.append(e)
            n += 1
    return {
        "add_recall": ok / max(n, 1),
        "init_recall": ok0 / max(n, 1),
        "median_add_d": float(np.median(errs)) if errs else float("nan"),
        "instances": n,
        "seconds": time.perf_counter() - t0,
    }


def _validation_set(run: Path, cfg: GenFlowTrainConfig) -> list[dict[str, Any]]:
    path = run / "val_set.pkl"
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    spec = cfg.val_cached
    val = make_validation_set(
        cfg.val_objects,
        cfg.val_images,
        seed=cfg.seed + 1,
        image_size=cfg.image_size,
        views=None if spec is None else (lambda rng: cached_views(spec, rng)),
    )
    with open(path, "wb") as f:
        pickle.dump(val, f)
    return val


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def genflow_schedule(cfg: GenFlowTrainConfig) -> Schedule:
    """The learning rate of a run: linear warm-up over ``cfg.warmup`` steps, cosine decay to 0.1·``cfg.lr``."""
    return Schedule(lr=cfg.lr, steps=cfg.steps, warmup=cfg.warmup, kind="cosine", floor=0.1)


def batch_to(data: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A :func:`collate_items` batch on ``device``."""
    out = dict(data)
    out["batch"] = data["batch"].to(device)
    for key in ("instance", "depth_clean", "points", "symmetries"):
        out[key] = data[key].to(device)
    out["gt"] = data["gt"].to(device=device)
    return out


def train_genflow(
    cfg: GenFlowTrainConfig,
    run_dir: str | Path,
    *,
    refiner: Callable[[GenFlowNet], PoseRefiner] | None = None,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train (or resume) a ``genflow`` network; see the module docstring.

    Args:
        cfg: the run's configuration (on resume, the saved one is used; only ``workers`` and ``threads`` are
            taken from ``cfg``).
        run_dir: the run folder.
        refiner: makes the refiner that validation measures from the network being trained, e.g.
            ``lambda net: GenFlowRefiner(GenFlowConfig(), model=net)``; needed when ``cfg.val_every > 0``.
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps`` (and, on resume, the saved length: the
            learning-rate schedule then spans the new length). ``None`` keeps the run's own length, so that
            resuming never changes the schedule by accident.
        max_steps: stop after this many steps in this call (resumable chunks).
        progress: called as ``progress(step, stats)`` at each log line.

    Returns:
        The step reached, the last logged statistics and validation, the best validation recall.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
        ValueError: validation is asked for (``val_every > 0``) but no ``refiner`` given.
    """
    run = Path(run_dir)
    cfg, ck = resume_config(cfg, run, METHOD, resume=resume, steps=steps)
    if cfg.val_every and refiner is None:
        raise ValueError("validation runs the genflow refiner: pass refiner=… (or set val_every to 0)")
    cfg, start = initial_weights(cfg, ck, load_genflow_model)
    with training_process(cfg, run) as ctx:
        net = with_weights(GenFlowNet(cfg.net), start)

        def data(start_step: int, rank: int) -> Iterator[dict[str, Any]]:
            loader = torch.utils.data.DataLoader(
                ItemStream(cfg, rank, start_step),
                batch_size=cfg.batch_size,
                num_workers=cfg.workers,
                collate_fn=collate_items,
                multiprocessing_context="spawn" if cfg.workers > 0 else None,
                persistent_workers=cfg.workers > 0,
                prefetch_factor=4 if cfg.workers > 0 else None,
            )
            return iter(loader)

        @functools.cache
        def split_objects(spec: str) -> Mapping[int, ObjectModel]:  # read at the first validation, once
            return open_cached(spec).objects()

        def measure(model: torch.nn.Module, val: list[dict[str, Any]]) -> dict[str, Any]:
            assert refiner is not None and isinstance(model, GenFlowNet)
            # the validation objects: a pre-rendered split's own meshes, or the spec's
            objects = cfg.val_objects if cfg.val_cached is None else split_objects(cfg.val_cached)
            return validate(refiner(model), val, objects, cfg.seed + 1)

        task = method_task(
            cfg,
            METHOD,
            net,
            cfg.net.to_dict(),
            data=data,
            loss=lambda m, batch: genflow_losses(m, batch, cfg),
            to_device=batch_to,
            validate=lazy_validation(lambda: _validation_set(run, cfg), measure),
        )
        loop = loop_config(cfg, val_metric="add_recall")  # the schedule: genflow_schedule(cfg)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
