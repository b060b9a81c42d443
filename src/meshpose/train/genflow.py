"""Training of the ``genflow`` refiner on synthetic novel objects drawn on the fly (``meshpose train genflow``).

Data: :class:`~meshpose.train.synth.SceneSampler` scenes of generated objects (``novel:N``; never held-out test
objects) with distractors, random cameras, light, backgrounds and the sensor model. Every visible instance of an
image becomes a training item: its ground-truth pose perturbed (a *coarse* regime — wide crop, large errors — or
a *fine* one — tight crop, small errors), the observed crop around that initial pose (colour, noisy depth, and
for supervision the instance map and clean depth), and the object rendered alone at the initial pose into the
crop camera with a random light.

Losses (everything the synthetic engine can label):

* a gamma-weighted L1 flow loss over the recurrent iterations, on match sources whose ground-truth point is
  visible in the observation (the ground-truth flow projects the rendered ``xyz`` with the true pose);
* a gamma-weighted symmetry-aware point-matching loss on the pose that the differentiable PnP returns at every
  iteration (mean distance of model points, minimum over the object's symmetries, in diameters).

Running: single process on a CPU (items drawn by ``workers`` spawned processes, each with its own GL context),
or ``torchrun --nproc_per_node K -m meshpose.cli train genflow ...`` for DDP over processes/GPUs (rank 0 logs,
validates and checkpoints). The run folder holds ``last.pt`` (resumed by ``--resume``), ``best.pt`` (best
validation ADD(-S) recall), ``model.pt`` (weights only, float32, of ``best.pt`` — or of ``last.pt`` when nothing
was validated — written when a call ends), ``config.json`` and ``train_log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import torch
import torch.utils.data

from meshpose.eval.metrics import add_or_adds
from meshpose.geometry.crop import crop_box_around_object, crop_image
from meshpose.geometry.lie import perturb_pose
from meshpose.nets.genflow import STRIDE, GenFlowNet, GenFlowNetConfig, project_points
from meshpose.refine.genflow import (
    CropBatch,
    GenFlowConfig,
    GenFlowRefiner,
    load_genflow_model,
    make_crop_batch,
    run_network,
)
from meshpose.render.base import Lighting, render_alone
from meshpose.train.synth import SceneConfig, SceneSampler, SyntheticSample, default_distractors, resolve_objects
from meshpose.types import Camera, Observation, Pose

__all__ = [
    "GenFlowTrainConfig",
    "ItemStream",
    "PerturbRegime",
    "collate_items",
    "genflow_losses",
    "make_items",
    "make_validation_set",
    "train_genflow",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerturbRegime:
    """How initial poses of one regime are drawn from the ground truth.

    Args:
        probability: share of items in this regime.
        rot_deg: rotation error range (degrees, uniform).
        trans_frac: translation error range (fraction of the diameter, uniform; random 3D direction).
        padding: crop padding range.
    """

    probability: float
    rot_deg: tuple[float, float]
    trans_frac: tuple[float, float]
    padding: tuple[float, float]


@dataclass(frozen=True)
class GenFlowTrainConfig:
    """A ``meshpose train genflow`` run.

    Args:
        data: training objects: ``novel:N`` (generated, ids 1…N) or a mesh folder / BOP dataset whose models are
            put into synthetic scenes. Never the test objects.
        seed: seed of the generated objects and of the data stream.
        steps: optimiser steps of the whole run (the learning-rate schedule spans them).
        batch_size: items per step (per process under DDP).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps.
        grad_clip: gradient norm clip.
        crop_size: crop side in pixels.
        iterations: recurrent iterations per item.
        gamma: weight decay of earlier iterations in the sequence losses.
        pose_weight: weight of the point-matching loss against the flow loss.
        depth_probability: share of items that see the observed depth (the others are RGB-only).
        render_gap: share of items whose *rendered* crop gets a random appearance change (colour gains, gamma,
            saturation, a smooth multiplicative colour field, blur; foreground only), so that the network learns
            to match a rendering whose colours differ from the photo's, as a scanned mesh's vertex colours do.
            Runs saved before this option existed had none (0.0).
        regimes: perturbation regimes of the initial poses.
        min_visib: instances less visible than this are not used.
        max_items_per_image: at most this many instances of one image.
        views_per_scene: images drawn per synthetic scene.
        object_pool: objects a worker keeps in memory at a time (a new random pool every ``pool_scenes`` scenes).
        pool_scenes: scenes per object pool.
        image_size: ``(width, height)`` of the synthetic images.
        workers: data processes (0: draw items in the training process).
        threads: torch CPU threads of the training process.
        val_objects: objects of the validation scenes (disjoint from ``data`` and from the test objects).
        val_images: validation images.
        val_every: validate every this many steps (0: never).
        ckpt_every: checkpoint every this many steps.
        log_every: log every this many steps.
        net: network sizes (taken from the weights when ``init_weights`` is given).
        scene: overrides of :class:`~meshpose.train.synth.SceneConfig` fields for the training scenes (JSON
            values; lists become ranges), e.g. ``{"blur_probability": 0.6, "blur_sigma_px": [0.5, 2.2]}`` for
            blurrier photos; the size comes from ``image_size``. Validation scenes keep the defaults, so that
            validation figures of runs stay comparable.
        init_weights: start a new run from these weights (a ``model.pt`` or a checkpoint) instead of a random
            initialisation, e.g. to fine-tune the shipped ones (``"package"``: the weights shipped with meshpose).
            Only the network is taken over: the optimiser, schedule and step count start afresh.
    """

    data: str = "novel:4000"
    seed: int = 0
    steps: int = 30000
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 1e-4
    warmup: int = 300
    grad_clip: float = 1.0
    crop_size: int = 128
    iterations: int = 4
    gamma: float = 0.8
    pose_weight: float = 10.0
    depth_probability: float = 0.5
    render_gap: float = 0.0
    regimes: tuple[PerturbRegime, ...] = (
        PerturbRegime(0.55, (3.0, 35.0), (0.0, 0.25), (1.45, 1.8)),
        PerturbRegime(0.45, (0.0, 12.0), (0.0, 0.08), (1.15, 1.4)),
    )
    min_visib: float = 0.3
    max_items_per_image: int = 4
    views_per_scene: int = 3
    object_pool: int = 40
    pool_scenes: int = 30
    image_size: tuple[int, int] = (640, 480)
    workers: int = 1
    threads: int = 1
    val_objects: str = "novel:4500-4540"
    val_images: int = 24
    val_every: int = 500
    ckpt_every: int = 100
    log_every: int = 10
    net: GenFlowNetConfig = field(default_factory=GenFlowNetConfig)
    scene: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None

    def __post_init__(self) -> None:
        allowed = {f.name for f in dataclasses.fields(SceneConfig)} - {"width", "height"}
        unknown = sorted(set(self.scene) - allowed)
        if unknown:
            raise ValueError(f"unknown scene option(s) {unknown}: use SceneConfig fields except width/height")
        training_scene_config(self)  # bad scene values fail here, not later in a data worker
        if self.crop_size % STRIDE or self.crop_size < 32:
            raise ValueError(f"crop_size must be a multiple of {STRIDE} and ≥ 32, got {self.crop_size}")
        if not self.regimes or abs(sum(r.probability for r in self.regimes) - 1.0) > 1e-6:
            raise ValueError("regime probabilities must sum to 1")
        if not 0.0 <= self.render_gap <= 1.0 or not 0.0 <= self.depth_probability <= 1.0:
            raise ValueError("render_gap and depth_probability are shares in [0, 1]")
        if self.batch_size < 1 or self.iterations < 1 or self.steps < 0:
            raise ValueError("need batch_size ≥ 1, iterations ≥ 1, steps ≥ 0")
        m = self.data.strip()
        if m.startswith("novel:"):
            rng_part = m.split(":", 1)[1].split("@")[0]
            hi = int(rng_part.split("-")[-1])
            if hi > 5000:
                raise ValueError("novel objects 5000 and above are held out for testing: train on novel:N, N ≤ 5000")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenFlowTrainConfig:
        d = dict(d)
        d["regimes"] = (
            tuple(
                PerturbRegime(r["probability"], tuple(r["rot_deg"]), tuple(r["trans_frac"]), tuple(r["padding"]))
                for r in d.get("regimes", [])
            )
            or cls.regimes
        )
        d["image_size"] = tuple(d.get("image_size", (640, 480)))
        d["net"] = GenFlowNetConfig.from_dict(d.get("net", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------------------
def _random_light(rng: np.random.Generator) -> Lighting:
    d = rng.normal(0.0, 0.6, 3) + np.array([0.0, 0.0, -1.0])
    return Lighting(
        ambient=float(rng.uniform(0.3, 0.75)),
        diffuse=float(rng.uniform(0.2, 0.7)),
        direction=tuple(float(x) for x in d),  # type: ignore[arg-type]
        specular=float(rng.uniform(0.0, 0.2)),
    )


def appearance_gap(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random appearance change of a rendered crop, inside its mask only.

    Imitates how a mesh's colours differ from the photographed object (scanned vertex colours, another white
    balance, missing texture detail): per-channel gains, gamma, saturation, a smooth multiplicative colour field
    over the crop and a Gaussian blur that does not bleed the background in.

    Args:
        rgb: ``(H, W, 3)`` float32 colours in [0, 1].
        mask: ``(H, W)`` bool, the rendered object.
        rng: the random source.

    Returns:
        ``(H, W, 3)`` float32 in [0, 1]; pixels outside ``mask`` are unchanged.
    """
    h, w = mask.shape
    out = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    out = out ** np.float32(rng.uniform(0.7, 1.4))
    grey = out.mean(axis=2, keepdims=True)
    out = grey + np.float32(rng.uniform(0.5, 1.3)) * (out - grey)
    out = out * rng.uniform(0.75, 1.25, 3).astype(np.float32)
    field = rng.uniform(0.8, 1.2, (4, 4, 3)).astype(np.float32)
    out = out * cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    sigma = float(rng.uniform(0.0, 1.5))
    m = mask.astype(np.float32)
    if sigma > 0.3:
        num = cv2.GaussianBlur(out * m[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(m, (0, 0), sigma)[..., None]
        out = num / np.maximum(den, 1e-3)
    return np.where(mask[..., None], np.clip(out, 0.0, 1.0), rgb).astype(np.float32)


def _sym_subset(sym: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if len(sym) <= k:
        return sym
    idx = np.concatenate([[0], np.sort(rng.choice(np.arange(1, len(sym)), size=k - 1, replace=False))])
    return sym[idx]


def make_items(
    sample: SyntheticSample,
    rng: np.random.Generator,
    cfg: GenFlowTrainConfig,
    renderer: Any = None,
    *,
    n_points: int = 256,
    max_symmetries: int = 32,
) -> list[dict[str, Any]]:
    """Training items (dicts of numpy arrays) from the visible instances of one synthetic image."""
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    cand = [i for i in range(len(sample.objects)) if sample.visib_fract[i] >= cfg.min_visib]
    rng.shuffle(cand)
    cand = cand[: cfg.max_items_per_image]
    if not cand:
        return []
    probs = np.array([r.probability for r in cfg.regimes])
    s = cfg.crop_size
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    keep, boxes, inits, cams = [], [], [], []
    for i in cand:
        obj = sample.objects[i]
        reg = cfg.regimes[int(rng.choice(len(probs), p=probs))]
        rot = math.radians(rng.uniform(*reg.rot_deg))
        trans = rng.uniform(*reg.trans_frac) * obj.diameter
        init = perturb_pose(sample.poses[i], rot, trans, gen)
        try:
            box = crop_box_around_object(sample.camera, init, obj.points, padding=rng.uniform(*reg.padding))
        except ValueError:
            continue
        keep.append(i)
        boxes.append(box)
        inits.append(init)
        cams.append(sample.camera.crop(box, s, s))
    if not keep:
        return []
    init_poses = Pose.stack(inits)
    rend = render_alone(renderer, [sample.objects[i] for i in keep], init_poses, cams, _random_light(rng))
    items = []
    for k, i in enumerate(keep):
        obj = sample.objects[i]
        box = boxes[k]
        rgb, _ = crop_image(sample.rgb, sample.camera, box, s, s)
        depth = (
            crop_image(sample.depth, sample.camera, box, s, s, interpolation="nearest")[0]
            if sample.depth is not None and rng.random() < cfg.depth_probability
            else np.zeros((s, s), np.float32)
        )
        inst = crop_image(sample.instance == i + 1, sample.camera, box, s, s, interpolation="nearest")[0]
        dclean = crop_image(sample.depth_clean, sample.camera, box, s, s, interpolation="nearest")[0]
        pts = obj.points[rng.choice(len(obj.points), size=n_points, replace=len(obj.points) < n_points)]
        Rg, tg = sample.poses[i].numpy()
        Ri, ti = inits[k].numpy()
        ren_rgb = np.array(rend.rgb[k], np.float32)
        if cfg.render_gap > 0.0 and rng.random() < cfg.render_gap:
            ren_rgb = appearance_gap(ren_rgb, np.asarray(rend.mask[k], bool), rng)
        items.append(
            {
                "obs_rgb": rgb,
                "obs_depth": depth.astype(np.float32),
                "obs_instance": inst,
                "obs_depth_clean": dclean.astype(np.float32),
                "ren_rgb": ren_rgb,
                "ren_depth": np.array(rend.depth[k], np.float32),
                "ren_xyz": np.array(rend.xyz[k], np.float32),
                "ren_mask": np.array(rend.mask[k], bool),
                "K": cams[k].K.astype(np.float32),
                "R_init": Ri,
                "t_init": ti,
                "R_gt": Rg,
                "t_gt": tg,
                "points": pts.astype(np.float32),
                "symmetries": _sym_subset(obj.symmetries, max_symmetries, rng).astype(np.float32),
                "diameter": np.float32(obj.diameter),
            }
        )
    return items


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a :class:`CropBatch` plus supervision tensors (symmetries padded with the identity)."""
    b = len(items)
    s_max = max(len(it["symmetries"]) for it in items)
    sym = np.tile(np.eye(4, dtype=np.float32), (b, s_max, 1, 1))
    for k, it in enumerate(items):
        sym[k, : len(it["symmetries"])] = it["symmetries"]

    def st(key: str) -> np.ndarray:
        return np.stack([it[key] for it in items])

    rendered = SimpleNamespace(rgb=st("ren_rgb"), depth=st("ren_depth"), xyz=st("ren_xyz"), mask=st("ren_mask"))
    cams = [Camera(it["K"].astype(np.float64), it["obs_rgb"].shape[1], it["obs_rgb"].shape[0]) for it in items]
    batch = make_crop_batch(
        st("obs_rgb"),
        st("obs_depth"),
        rendered,
        cams,
        Pose(st("R_init"), st("t_init")),
        [float(it["diameter"]) for it in items],
    )
    return {
        "batch": batch,
        "gt": Pose(torch.from_numpy(st("R_gt")), torch.from_numpy(st("t_gt"))),
        "instance": torch.from_numpy(st("obs_instance"))[:, None],
        "depth_clean": torch.from_numpy(st("obs_depth_clean"))[:, None],
        "points": torch.from_numpy(st("points")),
        "symmetries": torch.from_numpy(sym),
    }


def training_scene_config(cfg: GenFlowTrainConfig) -> SceneConfig:
    """The :class:`SceneConfig` of the training scenes: the defaults, ``cfg.image_size`` and ``cfg.scene``."""
    over: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.scene.items()}
    return dataclasses.replace(SceneConfig(width=cfg.image_size[0], height=cfg.image_size[1]), **over)


class ItemStream(torch.utils.data.IterableDataset):
    """An endless stream of training items drawn from synthetic scenes (one stream per worker and rank).

    Args:
        cfg: the run's configuration.
        rank: process rank (DDP), mixed into the seed.
        start_step: the step the run resumes at, mixed into the seed so a resumed run sees new data.
    """

    def __init__(self, cfg: GenFlowTrainConfig, rank: int = 0, start_step: int = 0) -> None:
        super().__init__()
        self.cfg, self.rank, self.start_step = cfg, rank, start_step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else int(info.id)
        rng = np.random.default_rng([cfg.seed, self.rank, worker, self.start_step, 0x6F])
        objects = resolve_objects(cfg.data, cfg.seed)
        distractors = default_distractors(cfg.seed)
        scene = training_scene_config(cfg)
        while True:
            pool_idx = rng.choice(len(objects), size=min(cfg.object_pool, len(objects)), replace=False)
            pool = [objects[int(i)] for i in pool_idx]
            sampler = SceneSampler(pool, scene, distractors=distractors)
            for _ in range(cfg.pool_scenes):
                try:
                    layout = sampler.layout(rng)
                    for _ in range(cfg.views_per_scene):
                        yield from make_items(sampler.view(layout, rng), rng, cfg)
                except (RuntimeError, ValueError) as exc:  # a scene that cannot be drawn: draw another
                    log.debug("skipped a scene: %s", exc)


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def _sample_nearest(img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=uv.dtype, device=uv.device)
    grid = ((uv + 0.5) * scale - 1.0)[:, :, None, :].to(torch.float32)
    out = torch.nn.functional.grid_sample(img.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out[..., 0].transpose(1, 2)[..., 0]


def point_matching_loss(
    est: Pose, gt: Pose, points: torch.Tensor, symmetries: torch.Tensor, diameter: torch.Tensor
) -> torch.Tensor:
    """Symmetry-aware point matching: ``min_S mean_p |R p + t - (R_gt S p + t_gt)| / d`` per item ``(B,)``.

    Args:
        est: ``(B,)`` estimated poses.
        gt: ``(B,)`` true poses.
        points: ``(B, P, 3)`` model points, metres.
        symmetries: ``(B, S, 4, 4)`` symmetry transforms (identity first; padding with identities is harmless).
        diameter: ``(B,)`` metres.
    """
    dt = est.R.dtype
    pts = points.to(dt)
    p_est = pts @ est.R.transpose(-1, -2) + est.t[:, None]  # (B, P, 3)
    sym = symmetries.to(dt)
    p_sym = pts[:, None] @ sym[..., :3, :3].transpose(-1, -2) + sym[:, :, None, :3, 3]  # (B, S, P, 3)
    Rg, tg = gt.R.to(dt), gt.t.to(dt)
    p_gt = p_sym @ Rg[:, None].transpose(-1, -2) + tg[:, None, None]
    dist = (p_est[:, None] - p_gt).norm(dim=-1).mean(-1)  # (B, S)
    return dist.min(1).values / diameter.to(dt)


def genflow_losses(
    net: GenFlowNet | torch.nn.Module, data: dict[str, Any], cfg: GenFlowTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward pass and losses of one batch; returns the total loss and scalars to log."""
    batch: CropBatch = data["batch"]
    out = run_network(net, batch, cfg.iterations)
    gt: Pose = data["gt"]
    K64 = batch.K.to(torch.float64)
    points64 = out.points.to(torch.float64)
    gt_uv = project_points(gt.to(torch.float64), points64, K64)
    flow_gt = (gt_uv - out.source.to(torch.float64)).to(torch.float32)  # (B, N, 2)
    z_gt = (points64 @ gt.R.to(torch.float64).transpose(-1, -2) + gt.t.to(torch.float64)[:, None])[..., 2]
    s = batch.obs_rgb.shape[-1]
    inside = (gt_uv > -0.5).all(-1) & (gt_uv < s - 0.5).all(-1)
    own = _sample_nearest(data["instance"], gt_uv) > 0.5
    dc = _sample_nearest(data["depth_clean"], gt_uv)
    tol = torch.clamp(0.05 * batch.diameter, min=0.01)[:, None]
    visible = out.valid & inside & own & ((dc - z_gt.float()).abs() < tol)
    vis = visible.to(torch.float32)
    n_vis = vis.sum(1).clamp_min(1.0)
    diam = batch.diameter.to(torch.float64)
    T = len(out.steps)
    flow_loss = torch.zeros((), dtype=torch.float32)
    pose_loss = torch.zeros((), dtype=torch.float64)
    for k, step in enumerate(out.steps):
        wgt = cfg.gamma ** (T - 1 - k)
        pred = step.flow.flatten(2).transpose(1, 2)
        err = (pred - flow_gt).abs().sum(-1) / STRIDE  # L1 in feature cells
        flow_loss = flow_loss + wgt * ((err * vis).sum(1) / n_vis).mean()
        pm = point_matching_loss(step.pose, gt, data["points"], data["symmetries"], diam)
        pose_loss = pose_loss + wgt * pm.clamp(max=1.0).mean()
    total = flow_loss + cfg.pose_weight * pose_loss.to(torch.float32)
    with torch.no_grad():
        pm_init = point_matching_loss(batch.pose, gt, data["points"], data["symmetries"], diam)
        pm_last = point_matching_loss(out.steps[-1].pose, gt, data["points"], data["symmetries"], diam)
        epe = (
            (out.steps[-1].flow.flatten(2).transpose(1, 2) - flow_gt).norm(dim=-1) * vis
        ).sum() / vis.sum().clamp_min(1)
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
def make_validation_set(
    objects: str,
    n_images: int,
    *,
    seed: int = 1234,
    rot_deg: float = 15.0,
    trans_frac: float = 0.1,
    image_size: tuple[int, int] = (640, 480),
    max_per_image: int = 3,
) -> list[dict[str, Any]]:
    """Held-out images with perturbed initial poses (exact ``rot_deg`` / ``trans_frac``, like ``perturb``)."""
    objs = resolve_objects(objects, seed)
    sampler = SceneSampler(
        objs, SceneConfig(width=image_size[0], height=image_size[1]), distractors=default_distractors(seed)
    )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    out: list[dict[str, Any]] = []
    while len(out) < n_images:
        smp = sampler.sample(rng)
        idx = [i for i in range(len(smp.objects)) if smp.visib_fract[i] >= 0.3][:max_per_image]
        if not idx:
            continue
        gts = Pose.stack([smp.poses[i] for i in idx])
        diam = torch.tensor([smp.objects[i].diameter for i in idx], dtype=torch.float64)
        inits = []
        for k, _i in enumerate(idx):
            inits.append(perturb_pose(gts[k], math.radians(rot_deg), trans_frac * float(diam[k]), gen))
        out.append(
            {
                "rgb": smp.rgb,
                "depth": smp.depth,
                "K": smp.camera.K.copy(),
                "size": (smp.camera.width, smp.camera.height),
                "obj_ids": [int(smp.obj_ids[i]) for i in idx],
                "gt": gts.numpy(),
                "init": Pose.stack(inits).numpy(),
            }
        )
    return out


def validate(
    net: GenFlowNet,
    val: list[dict[str, Any]],
    objects: str,
    seed: int,
    *,
    with_depth: bool = False,
    config: GenFlowConfig | None = None,
) -> dict[str, float]:
    """ADD(-S) recall at 0.1·d (and the initial poses' recall) of the ``genflow`` refiner with ``net``."""
    objs = resolve_objects(objects, seed)
    was_training = net.training
    net.eval()
    ref = GenFlowRefiner(config or GenFlowConfig(), model=net)
    ok = ok0 = n = 0
    errs = []
    t0 = time.perf_counter()
    try:
        for v in val:
            cam = Camera(v["K"], *v["size"])
            obs = Observation(v["rgb"], cam, depth=v["depth"] if with_depth else None)
            models = [objs.by_id(i) for i in v["obj_ids"]]
            res = ref.refine(obs, models, Pose(*v["init"]))
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
    finally:
        net.train(was_training)
    return {
        "add_recall": ok / max(n, 1),
        "init_recall": ok0 / max(n, 1),
        "median_add_d": float(np.median(errs)) if errs else float("nan"),
        "instances": n,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------------------
def _lr_at(step: int, cfg: GenFlowTrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
    prog = min(1.0, step / max(cfg.steps, 1))
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * prog)))


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_weights(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best.pt") -> Path:
    """Write ``model.pt`` (weights only, float32), ``config.json`` and ``train_log.jsonl`` of a run to ``out_dir``."""
    run, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    same = out.resolve() == run.resolve()
    ck = torch.load(run / checkpoint, map_location="cpu", weights_only=False)
    state = {k.removeprefix("module."): v.float() for k, v in ck["model"].items()}
    _save_atomic({"net_config": ck["config"]["net"], "state_dict": state, "step": ck["step"]}, out / "model.pt")
    if not same:  # a copy of the run's config and log travels with the weights
        cfg = dict(ck["config"])
        cfg["exported_from"] = {"checkpoint": checkpoint, "step": ck["step"], "val": ck.get("val")}
        (out / "config.json").write_text(json.dumps(cfg, indent=1))
        if (run / "train_log.jsonl").is_file():
            (out / "train_log.jsonl").write_text((run / "train_log.jsonl").read_text())
    return out / "model.pt"


def train_genflow(
    cfg: GenFlowTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a ``genflow`` network; see the module docstring.

    Args:
        cfg: the run's configuration (on resume, the saved one is used; only ``workers`` and ``threads`` are
            taken from ``cfg``).
        run_dir: the run folder.
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps`` (and, on resume, the saved length: the
            learning-rate schedule then spans the new length). ``None`` keeps the run's own length, so that
            resuming never changes the schedule by accident.
        max_steps: stop after this many steps in this call (resumable chunks).
        progress: called as ``progress(step, stats)`` at each log line.

    Returns:
        The last logged statistics and the last validation.
    """
    run = Path(run_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    ddp = world > 1
    if ddp:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, cfg.threads))
    ckpt_path = run / "last.pt"
    ck = None
    if ckpt_path.is_file():
        if not resume:
            raise FileExistsError(f"{run} already holds a checkpoint: pass --resume to continue it or use a new folder")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = GenFlowTrainConfig.from_dict(ck["config"])
        cfg = dataclasses.replace(saved, workers=cfg.workers, threads=cfg.threads)
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    start: GenFlowNet | None = None
    if ck is None and cfg.init_weights is not None:
        start = load_genflow_model(cfg.init_weights)
        cfg = dataclasses.replace(cfg, net=start.config)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    torch.manual_seed(cfg.seed + rank)
    net = GenFlowNet(cfg.net).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best = 0, -1.0
    if start is not None:
        net.load_state_dict(start.state_dict())
    if ck is not None:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, best = int(ck["step"]), float(ck.get("best", -1.0))
    model: torch.nn.Module = net
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader = torch.utils.data.DataLoader(
        ItemStream(cfg, rank, step),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=collate_items,
        multiprocessing_context="spawn" if cfg.workers > 0 else None,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=4 if cfg.workers > 0 else None,
    )
    val: list[dict[str, Any]] | None = None
    logf = open(run / "train_log.jsonl", "a") if rank == 0 else None  # noqa: SIM115
    if logf is not None and step == 0:
        logf.write(
            json.dumps(
                {
                    "event": "start",
                    "device": str(device),
                    "world": world,
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "threads": torch.get_num_threads(),
                    "time": time.time(),
                }
            )
            + "\n"
        )
        logf.flush()
    stop = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    acc: dict[str, float] = {}
    n_acc = 0
    t_last, t_data = time.perf_counter(), 0.0
    last_stats: dict[str, Any] = {}
    last_val: dict[str, Any] = {}
    model.train()
    it = iter(loader)
    try:
        while step < stop:
            t0 = time.perf_counter()
            data = next(it)
            t_data += time.perf_counter() - t0
            data["batch"] = data["batch"].to(device)
            for key in ("instance", "depth_clean", "points", "symmetries"):
                data[key] = data[key].to(device)
            data["gt"] = data["gt"].to(device=device)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            loss, stats = genflow_losses(model, data, cfg)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                if torch.isfinite(gn):
                    opt.step()
                stats["grad_norm"] = float(gn)
            else:
                stats["skipped"] = 1.0
            step += 1
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            if rank == 0 and (step % cfg.log_every == 0 or step == stop):
                dt = time.perf_counter() - t_last
                last_stats = {k: v / n_acc for k, v in acc.items()}
                last_stats.update(
                    step=step,
                    lr=_lr_at(step, cfg),
                    samples_per_s=n_acc * cfg.batch_size * world / dt,
                    data_wait_s=t_data / n_acc,
                    time=time.time(),
                )
                assert logf is not None
                logf.write(json.dumps(last_stats) + "\n")
                logf.flush()
                if progress is not None:
                    progress(step, last_stats)
                acc, n_acc, t_last, t_data = {}, 0, time.perf_counter(), 0.0
            if rank == 0 and cfg.val_every and (step % cfg.val_every == 0 or step == stop):
                if val is None:
                    val = _validation_set(run, cfg)
                last_val = validate(net, val, cfg.val_objects, cfg.seed + 1)
                last_val["step"] = step
                assert logf is not None
                logf.write(json.dumps({"event": "val", **last_val, "time": time.time()}) + "\n")
                logf.flush()
                if last_val["add_recall"] > best:
                    best = last_val["add_recall"]
                    _save_atomic(_checkpoint(net, opt, step, cfg, best, last_val), run / "best.pt")
            if rank == 0 and (step % cfg.ckpt_every == 0 or step == stop):
                _save_atomic(_checkpoint(net, opt, step, cfg, best, last_val), ckpt_path)
        if rank == 0 and step > 0:
            export_weights(run, run, "best.pt" if (run / "best.pt").is_file() else "last.pt")
    finally:
        if logf is not None:
            logf.close()
        if ddp:
            import torch.distributed as dist

            dist.destroy_process_group()
    return {"step": step, "stats": last_stats, "val": last_val, "best": best}


def _checkpoint(
    net: GenFlowNet, opt: torch.optim.Optimizer, step: int, cfg: GenFlowTrainConfig, best: float, val: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "config": cfg.to_dict(),
        "best": best,
        "val": val,
    }


def _validation_set(run: Path, cfg: GenFlowTrainConfig) -> list[dict[str, Any]]:
    path = run / "val_set.pkl"
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    val = make_validation_set(cfg.val_objects, cfg.val_images, seed=cfg.seed + 1, image_size=cfg.image_size)
    with open(path, "wb") as f:
        pickle.dump(val, f)
    return val
