"""Training of the ``deeprm`` refiner on synthetic scenes drawn on the fly (``meshpose train deeprm``).

Data (:mod:`meshpose.train.deeprm_data`): ``genflow``'s synthetic items — a perturbed ground-truth pose, the
observed crop around it and the object rendered alone at it — of generated objects (``novel:N``) or of the user's
meshes (``--objects``: known-object training).

One step unrolls ``iterations`` (6) refinement iterations per item, as the refiner runs them: iteration ``k``
renders the object at the pose iteration ``k - 1`` reached into the item's crop camera (a random light for the
batch and a random brightness gain per item), runs the network with the recurrent state of iteration ``k - 1``
(zeros at ``k = 1``) and updates the pose (:func:`~meshpose.nets.deeprm.apply_update`). The pose is detached
between iterations (the rendering is not differentiable anyway); the recurrent state is carried with its gradient
(back-propagation through the iterations; ``truncate_state`` cuts it). Loss, averaged over the iterations:

* the disentangled point-matching loss (:func:`~meshpose.train.losses.disentangled_point_matching_loss`:
  image-plane shift, depth and rotation each against the ground truth of the other parts; symmetry-aware, and
  ADD-S-like for continuous symmetries), in diameters;
* ``α`` · the multi-scale end-point error (:func:`~meshpose.train.losses.multiscale_epe`) of the auxiliary flow
  decoder. Its target carries each rendered pixel to the projection, under the true pose, of the object point it
  shows (the rendered ``xyz``), where that pixel shows the object in the observation (its instance map), in crop
  sides.

Validation (no refiner needed, so ``train`` never imports ``refine``): the same unrolled iterations — fixed crop,
the refiner's default light, no gain — on held-out items at exactly ``val_rot_deg`` / ``val_trans_frac``; figures
per iteration. ``best.pt`` is chosen by ``pm_mean`` (mean symmetry-aware point distance after
``val_iterations``, in diameters, each item clamped at 1).

Running: single process (:mod:`meshpose.train.loop`; ``torchrun`` works, each rank drawing its own scenes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import roma
import torch

from meshpose.nets.batch import load_genflow_model
from meshpose.nets.deeprm import (
    METHOD,
    DeepRMNet,
    RecurrentState,
    apply_update,
    load_deeprm_model,
    make_input,
    origin_uv,
)
from meshpose.nets.genflow import project_points
from meshpose.render.base import Lighting, Renderer, render_alone
from meshpose.train.adapt_config import PseudoPose
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
from meshpose.train.deeprm_config import DeepRMTrainConfig
from meshpose.train.deeprm_data import batches, collate, validation_items
from meshpose.train.loop import LoopResult, train_loop
from meshpose.train.losses import disentangled_point_matching_loss, multiscale_epe, point_matching_loss, sample_nearest
from meshpose.train.pseudo_views import PseudoViews
from meshpose.types import Pose

__all__ = [
    "METHOD",
    "DeepRMTrainConfig",
    "Iteration",
    "deeprm_losses",
    "flow_target",
    "load_deeprm_model",
    "train_deeprm",
    "unroll",
    "validate_items",
]


@dataclass(frozen=True, eq=False)
class Iteration:
    """One unrolled iteration of a batch.

    Args:
        R: ``(B, 3, 3)`` estimated rotation (differentiable).
        uv: ``(B, 2)`` estimated pixel of the object origin in the crop (differentiable).
        z: ``(B,)`` estimated depth of the origin, metres (differentiable).
        pose: ``(B,)`` the new pose, float64, detached.
        flows: the flow decoder's outputs (empty if not run).
        flow_gt: ``(B, 2, S, S)`` flow target (in crop sides) of this iteration's rendering, or ``None``.
        flow_valid: ``(B, 1, S, S)`` bool, where the target holds, or ``None``.
    """

    R: torch.Tensor
    uv: torch.Tensor
    z: torch.Tensor
    pose: Pose
    flows: list[torch.Tensor]
    flow_gt: torch.Tensor | None = None
    flow_valid: torch.Tensor | None = None


def flow_target(
    xyz: torch.Tensor, mask: torch.Tensor, gt: Pose, K: torch.Tensor, instance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow of each rendered pixel to the projection of its object point under the true pose, in crop sides.

    Args:
        xyz: ``(B, 3, S, S)`` rendered object coordinates, metres.
        mask: ``(B, 1, S, S)`` bool rendered mask.
        gt: ``(B,)`` true poses.
        K: ``(B, 3, 3)`` crop intrinsics.
        instance: ``(B, 1, S, S)`` the observed instance map (where the object is visible in the observation).

    Returns:
        ``(B, 2, S, S)`` flow divided by ``S`` and ``(B, 1, S, S)`` bool validity (rendered, target inside the crop
        and on the visible object).
    """
    b, _, s, _ = xyz.shape
    X = xyz.flatten(2).transpose(1, 2)  # (B, N, 3)
    uv = project_points(Pose(gt.R.float(), gt.t.float()), X, K.float())
    v, u = torch.meshgrid(torch.arange(s, device=xyz.device), torch.arange(s, device=xyz.device), indexing="ij")
    grid = torch.stack([u, v], -1).reshape(1, -1, 2).float()
    flow = (uv - grid) / s
    inside = (uv > -0.5).all(-1) & (uv < s - 0.5).all(-1)
    own = sample_nearest(instance.float(), uv) > 0.5
    valid = mask.flatten(1) & inside & own
    return flow.transpose(1, 2).reshape(b, 2, s, s), valid.reshape(b, 1, s, s)


def _chw(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(B, H, W, C)`` numpy → ``(B, C, H, W)`` float32 on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().to(device)


def unroll(
    net: torch.nn.Module,
    data: dict[str, Any],
    iterations: int,
    renderer: Renderer | None,
    *,
    flow: bool = False,
    truncate_state: bool = False,
    lighting: Lighting | None = None,
    gain: torch.Tensor | None = None,
    render_first: bool = False,
) -> list[Iteration]:
    """Run ``iterations`` refinement iterations of a :func:`~meshpose.train.deeprm_data.collate` batch in its fixed
    crops, re-rendering the object at each reached pose (the first rendering is the batch's own).

    Args:
        net: a :class:`DeepRMNet` (possibly DDP-wrapped).
        data: the batch (on the network's device).
        iterations: iterations to run.
        renderer: renders iterations 2…; ``None``: the shared GL renderer.
        flow: run the flow decoder and compute its targets.
        truncate_state: detach the recurrent state between iterations.
        lighting: the light of the renderings of iterations 2… (default: ``data["lighting"]``).
        gain: ``(B,)`` brightness gains of those renderings (default: ``data["gain"]``).
        render_first: render the first iteration too (with ``lighting``), as the refiner does, instead of using the
            batch's own first rendering.
    """
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    device = data["obs_rgb"].device
    K = data["K"]
    size = data["obs_rgb"].shape[-1]
    light = lighting or data["lighting"]
    g = (data["gain"] if gain is None else gain).to(device)[:, None, None, None]
    pose: Pose = data["init"]
    ren_rgb, ren_xyz, ren_mask = data["ren_rgb"], data["ren_xyz"], data["ren_mask"]
    state: RecurrentState | None = None
    out: list[Iteration] = []
    for k in range(iterations):
        if k > 0 or render_first:
            rend = render_alone(renderer, data["models"], pose.to(device="cpu"), data["cameras"], light)
            ren_rgb = (_chw(rend.rgb, device) * g).clamp(0.0, 1.0)
            ren_xyz = _chw(rend.xyz, device)
            ren_mask = torch.from_numpy(np.ascontiguousarray(rend.mask))[:, None].to(device)
        res = net(make_input(data["obs_rgb"], ren_rgb), state, flow=flow)
        state = res.state.detach() if truncate_state else res.state
        Rc, tc = pose.R.float(), pose.t.float()
        dR = torch.nn.functional.normalize(res.quat, dim=-1)
        R = roma.unitquat_to_rotmat(dR) @ Rc
        uv = origin_uv(tc, K) + res.trans[:, :2] * size
        z = tc[:, 2] * torch.exp(-res.trans[:, 2])
        with torch.no_grad():
            new = apply_update(pose, res.quat.detach(), res.trans.detach(), K, size)
        fgt = fvalid = None
        if flow:
            with torch.no_grad():
                fgt, fvalid = flow_target(ren_xyz, ren_mask, data["gt"], K, data["instance"])
        out.append(Iteration(R, uv, z, Pose(new.R.detach(), new.t.detach()), res.flows, fgt, fvalid))
        pose = out[-1].pose
    return out


def deeprm_losses(
    net: torch.nn.Module, data: dict[str, Any], cfg: DeepRMTrainConfig, renderer: Renderer | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Unrolled forward pass and losses of one batch (see the module docstring); the loss and scalars to log."""
    its = unroll(net, data, cfg.iterations, renderer, flow=cfg.flow_weight > 0, truncate_state=cfg.truncate_state)
    gt = data["gt"]
    args = (data["K"], data["points"], data["symmetries"], data["diameter"], data["nearest"])
    dpml = [disentangled_point_matching_loss(it.R, it.uv, it.z, gt, *args).mean() for it in its]
    pose_loss = torch.stack(dpml).mean()
    total = pose_loss
    epe = torch.zeros(())
    if cfg.flow_weight > 0:
        terms = []
        for it in its:
            assert it.flow_gt is not None and it.flow_valid is not None
            weights = cfg.flow_scale_weights[-len(it.flows) :]  # the finest scales behind the correlation front
            terms.append(multiscale_epe(it.flows, it.flow_gt, it.flow_valid, weights))
        epe = torch.stack(terms).mean()
        total = total + cfg.flow_weight * epe
    with torch.no_grad():
        sym = data["symmetries"]
        pm0 = point_matching_loss(data["init"], gt, data["points"], sym, data["diameter"])
        pm1 = point_matching_loss(its[-1].pose, gt, data["points"], sym, data["diameter"])
    stats = {
        "loss": float(total.detach()),
        "dpml": float(pose_loss.detach()),
        "dpml_first": float(dpml[0].detach()),
        "dpml_last": float(dpml[-1].detach()),
        "epe": float(epe.detach()),
        "pm_init": float(pm0.mean()),
        "pm_last": float(pm1.mean()),
        "ok_init": float((pm0 < 0.1).float().mean()),
        "ok_last": float((pm1 < 0.1).float().mean()),
    }
    return total, stats


def validate_items(
    net: torch.nn.Module,
    items: list[dict[str, Any]],
    iterations: int,
    renderer: Renderer | None = None,
    *,
    batch_size: int = 16,
    lighting: Lighting | None = None,
) -> dict[str, Any]:
    """Figures of ``net`` (eval mode, no gradient) refining held-out items for ``iterations`` iterations.

    Returns:
        ``pm_mean`` / ``pm_init`` (mean symmetry-aware point distance in diameters, each item clamped at 1, after
        the last iteration / at the init), ``add_recall`` / ``init_recall`` (share below 0.1 d), ``median_pm``,
        ``recall_per_iteration`` (list, iteration 1 … ``iterations``), ``items``, ``ms_per_iteration`` (network and
        rendering per item and iteration) and ``seconds``.
    """
    light = lighting or Lighting(ambient=0.6, diffuse=0.5)
    device = next(net.parameters()).device
    t0 = time.perf_counter()
    errs, errs0 = [], []
    per_it = np.zeros(iterations)
    with torch.no_grad():
        for a in range(0, len(items), batch_size):
            data = batch_to_device(collate(items[a : a + batch_size], light), device)
            ones = torch.ones(len(data["models"]))
            its = unroll(net, data, iterations, renderer, lighting=light, gain=ones, render_first=True)
            args = (data["gt"], data["points"], data["symmetries"], data["diameter"])
            errs0.append(point_matching_loss(data["init"], *args).cpu())
            for k, it in enumerate(its):
                err = point_matching_loss(it.pose, *args).cpu()
                per_it[k] += float((err < 0.1).sum())
            errs.append(err)
    e, e0 = torch.cat(errs).numpy(), torch.cat(errs0).numpy()
    n = len(e)
    secs = time.perf_counter() - t0
    return {
        "pm_mean": float(np.minimum(e, 1.0).mean()),
        "pm_init": float(np.minimum(e0, 1.0).mean()),
        "add_recall": float((e < 0.1).mean()),
        "init_recall": float((e0 < 0.1).mean()),
        "median_pm": float(np.median(e)),
        "recall_per_iteration": [float(x) / n for x in per_it],
        "items": n,
        "ms_per_iteration": 1e3 * secs / max(n * iterations, 1),
        "seconds": secs,
    }


def train_deeprm(
    cfg: DeepRMTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    pseudo: Sequence[PseudoPose] | None = None,
) -> LoopResult:
    """Train (or resume) a ``deeprm`` network; see the module docstring.

    Args:
        cfg: the run's configuration (on resume, the saved one is used; only ``threads`` is taken from ``cfg``).
        run_dir: the run folder (``last.pt``, ``best.pt``, ``model.pt``, ``config.json``, ``train_log.jsonl``).
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps`` (on resume too: the schedule then spans it).
        max_steps: stop after this many steps in this call.
        progress: called as ``progress(step, stats)`` at each log line.
        pseudo: ``meshpose adapt deeprm`` (``cfg`` a :class:`~meshpose.train.deeprm_config.DeepRMAdaptConfig`):
            the pseudo poses of the user's detections; the items come from the user's images at the best-scored of
            them mixed with synthetic scenes, and validation from the held-out images
            (:mod:`meshpose.train.pseudo_views`).

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
        ValueError: ``pseudo`` leaves nothing to train on.
    """
    run = Path(run_dir)
    cfg, ck = resume_config(cfg, run, METHOD, resume=resume, steps=steps)
    cfg, start = initial_weights(cfg, ck, load_deeprm_model)
    views = PseudoViews(cfg, pseudo) if pseudo is not None else None
    with training_process(cfg, run) as ctx:
        net = with_weights(DeepRMNet(cfg.net), start)
        if net.encoder is not None and start is None and ck is None and cfg.encoder_init is not None:
            fnet = load_genflow_model(cfg.encoder_init).fnet
            try:
                net.encoder.load_state_dict(fnet.state_dict())
            except RuntimeError as exc:
                raise ValueError(
                    f"encoder_init {cfg.encoder_init!r}: that genflow encoder does not fit net.feature_dim / "
                    f"net.encoder_dims ({cfg.net.feature_dim}, {cfg.net.encoder_dims}); give the genflow sizes, or "
                    "encoder_init null for a random encoder"
                ) from exc
        task = method_task(
            cfg,
            METHOD,
            net,
            cfg.net.to_dict(),
            data=lambda start_step, rank: batches(cfg, rank, start_step, views),
            loss=lambda m, batch: deeprm_losses(m, batch, cfg),
            to_device=batch_to_device,
            validate=lazy_validation(
                lambda: validation_items(cfg, views), lambda m, val: validate_items(m, val, cfg.val_iterations)
            )
            if views is None or views.val_images
            else None,
        )
        loop = loop_config(cfg, val_metric="pm_mean", higher_is_better=False)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
