"""Training of the ``abstract`` refiner's descriptor network (``meshpose train abstract``).

Data (:mod:`meshpose.train.abstract_data`): pairs of a frame A (an instance of a generated object in a cluttered,
domain-randomised synthetic scene, cut around it) and a frame B (the object rendered alone on black with the default
light, as the refiner's fusion renders it, in A's orientation or a random one), with their pixel correspondences.
Some steps (``small_probability``) train at ``small_size`` (both frames downsampled).

Loss (self-supervised from the correspondences, after *Refining 6D Object Pose Predictions using Abstract
Render-and-Compare*), with descriptors ``f`` of :class:`~meshpose.nets.descriptor.DescriptorNet`:

* positives: ``‖f_A − f_B‖²`` over corresponding pixels;
* hard negatives: for each A sample, ``negatives`` B object pixels whose object point is farther than
  ``negative_radius`` · diameter, hinged ``max(0, M − ‖f_A − f_B⁻‖)²`` and averaged over the pairs still inside the
  margin (the hard-negative scaling of Dense Object Nets: the mean follows the hard ones as the easy ones drop
  out). Hinging only each sample's nearest negative (``hardest_only``) stalls: from the smooth descriptors of a new
  network the nearest negative is a neighbour of the positive, and the loss settles at ``‖f_A − f_B‖ ≈ ‖f_A −
  f_B⁻‖ ≈ M/2`` (a tiny network on one pair, 200 steps: 0.50 / 0.50 with it, 0.22 / 1.13 with the scaling);
* background term (weight ``λ = background_weight``): ``‖f‖²`` on the background pixels of both frames (outside
  every annotated object: the refiner renders the background as 0) plus ``max(0, M − ‖f‖)²`` on their object
  pixels, so that silhouettes show in descriptor space;
* the foreground head: binary cross-entropy of ``fg_logit`` against the object masks of both frames (A: every
  annotated object, not only the cropped instance, since the network cannot know which object a crop is about;
  B: the rendered object), weight ``fg_weight``.

Validation (held-out pairs of ``val_objects``, at ``size``): ``pos_dist`` (mean ``‖f_A − f_B‖`` of corresponding
pixels), ``match`` (the share of A samples whose nearest B object pixel in descriptor space, over all of B's object
pixels, lies within ``match_radius`` · diameter of the sample's object point: ``match@0.1d``; it chooses
``best.pt``), ``fg_iou`` (the foreground head on A, threshold 0.5) and ``bg_norm`` (mean ``‖f‖`` of A's background).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from meshpose.nets.descriptor import METHOD, DescriptorNet, load_descriptor_net
from meshpose.train.abstract_config import AbstractTrainConfig
from meshpose.train.abstract_data import AbstractPairStream, collate_pairs, validation_pairs
from meshpose.train.common import (
    adamw,
    batch_to_device,
    initial_weights,
    lazy_validation,
    loop_config,
    method_task,
    resume_config,
    training_process,
    with_weights,
)
from meshpose.train.loop import LoopResult, train_loop

__all__ = [
    "METHOD",
    "AbstractTrainConfig",
    "abstract_losses",
    "load_descriptor_net",
    "pair_batches",
    "train_abstract",
    "validate_pairs",
]


def _gather(desc: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W)`` descriptors at ``(B, K)`` flat pixel indices → ``(B, K, D)``."""
    flat = desc.flatten(2)
    return torch.gather(flat, 2, idx[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, P, D)``, ``(B, N, D)`` → ``(B, P, N)`` Euclidean distances (a finite gradient at 0)."""
    d2 = (a * a).sum(-1)[..., None] + (b * b).sum(-1)[:, None, :] - 2.0 * a @ b.transpose(1, 2)
    return d2.clamp_min(1e-8).sqrt()


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp_min(1)


def abstract_losses(
    net: torch.nn.Module, data: dict[str, torch.Tensor], cfg: AbstractTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Descriptors of a :func:`~meshpose.train.abstract_data.collate_pairs` batch and their loss (module docstring).

    Returns:
        The loss and scalars to log: ``loss``, ``pos``, ``neg``, ``bg``, ``obj``, ``fg`` (the terms),
        ``pos_dist``, ``neg_dist`` (mean descriptor distance of positives and of each sample's nearest negative),
        ``hard_ok`` (share of A samples whose positive is nearer than their hardest negative).
    """
    desc, fg_logit = net(torch.cat([data["a_rgb"], data["b_rgb"]]))
    return _losses(desc, fg_logit, data, cfg)


def _losses(
    desc: torch.Tensor, fg_logit: torch.Tensor, data: dict[str, torch.Tensor], cfg: AbstractTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`abstract_losses` of the network's outputs ``desc`` ``(2B, D, H, W)`` and ``fg_logit`` ``(2B, 1, H, W)``
    (A's frames first)."""
    b = len(data["a_rgb"])
    fa_pos = _gather(desc[:b], data["pos_a"])  # (B, P, D)
    fb_pos = _gather(desc[b:], data["pos_b"])
    fb_neg = _gather(desc[b:], data["neg_b"])  # (B, N, D)
    pos_ok = data["pos_ok"].float()
    pos_d2 = ((fa_pos - fb_pos) ** 2).sum(-1)
    l_pos = _masked_mean(pos_d2, pos_ok)
    far = torch.cdist(data["pos_xyz"], data["neg_xyz"]) > cfg.negative_radius * data["diameter"][:, None, None]
    allowed = far & data["neg_ok"][:, None, :]
    d_all = _dist(fa_pos, fb_neg)  # (B, P, N)
    d_neg = d_all.masked_fill(~allowed, float("inf")).min(-1).values  # (B, P)
    neg_ok = data["pos_ok"] & allowed.any(-1)
    d_neg = torch.where(neg_ok, d_neg, torch.zeros_like(d_neg))
    if cfg.hardest_only:
        l_neg = _masked_mean(F.relu(cfg.margin - d_neg) ** 2, neg_ok.float())
    else:  # hard-negative scaling: the mean over the negatives still inside the margin
        hinge = F.relu(cfg.margin - d_all) ** 2 * (allowed & data["pos_ok"][..., None])
        l_neg = hinge.sum() / (hinge > 0).sum().clamp_min(1)
    fg = torch.cat([data["a_fg"], data["b_fg"]]).float()  # (2B, H, W)
    norm2 = (desc**2).sum(1)
    l_bg = _masked_mean(norm2, 1.0 - fg)
    l_obj = _masked_mean(F.relu(cfg.margin - norm2.clamp_min(1e-8).sqrt()) ** 2, fg)
    l_fg = F.binary_cross_entropy_with_logits(fg_logit[:, 0], fg)
    loss = l_pos + l_neg + cfg.background_weight * (l_bg + l_obj) + cfg.fg_weight * l_fg
    with torch.no_grad():
        pos_d = pos_d2.clamp_min(1e-12).sqrt()
        hard = (pos_d < d_neg).float()
        stats = {
            "loss": float(loss.detach()),
            "pos": float(l_pos.detach()),
            "neg": float(l_neg.detach()),
            "bg": float(l_bg.detach()),
            "obj": float(l_obj.detach()),
            "fg": float(l_fg.detach()),
            "pos_dist": float(_masked_mean(pos_d, pos_ok)),
            "neg_dist": float(_masked_mean(d_neg, neg_ok.float())),
            "hard_ok": float(_masked_mean(hard, neg_ok.float())),
        }
    return loss, stats


def _match_counts(desc: torch.Tensor, data: dict[str, torch.Tensor], radius: float) -> tuple[float, float]:
    """Matched A samples (nearest B object pixel by descriptor within ``radius`` · diameter) and A samples."""
    b = len(data["a_rgb"])
    hits, total = 0.0, 0.0
    fa = _gather(desc[:b], data["pos_a"])
    for k in range(b):
        ok = data["pos_ok"][k]
        obj = data["b_fg"][k].flatten()
        if not bool(ok.any()) or not bool(obj.any()):
            continue
        fb = desc[b + k].flatten(1).T[obj]  # (M, D)
        xyz_b = data["b_xyz"][k].reshape(-1, 3)[obj]
        nearest = torch.cdist(fa[k][ok], fb).argmin(1)
        err = (xyz_b[nearest] - data["pos_xyz"][k][ok]).norm(dim=1)
        hits += float((err < radius * data["diameter"][k]).sum())
        total += float(ok.sum())
    return hits, total


def validate_pairs(
    net: torch.nn.Module, items: list[dict[str, Any]], cfg: AbstractTrainConfig, *, batch_size: int = 8
) -> dict[str, Any]:
    """``val_loss``, ``pos_dist``, ``match`` (match@0.1d), ``fg_iou`` and ``bg_norm`` of ``net`` (eval mode, no
    gradient) on held-out pairs (module docstring)."""
    t0 = time.perf_counter()
    device = next(net.parameters()).device
    sums = {"loss": 0.0, "pos_dist": 0.0, "hits": 0.0, "samples": 0.0, "inter": 0.0, "union": 0.0}
    bg_sum, bg_n, n_items = 0.0, 0.0, 0
    with torch.no_grad():
        for a in range(0, len(items), batch_size):
            data = batch_to_device(collate_pairs(items[a : a + batch_size]), device)
            b = len(data["a_rgb"])
            desc, fg_logit = net(torch.cat([data["a_rgb"], data["b_rgb"]]))
            loss, stats = _losses(desc, fg_logit, data, cfg)
            n_items += b
            sums["loss"] += float(loss) * b
            sums["pos_dist"] += stats["pos_dist"] * b
            hits, total = _match_counts(desc, data, cfg.match_radius)
            sums["hits"] += hits
            sums["samples"] += total
            pred = fg_logit[:b, 0] > 0
            sums["inter"] += float((pred & data["a_fg"]).sum())
            sums["union"] += float((pred | data["a_fg"]).sum())
            bg = ~data["a_fg"]
            bg_sum += float(desc[:b].norm(dim=1)[bg].sum())
            bg_n += float(bg.sum())
    n = max(n_items, 1)
    return {
        "val_loss": sums["loss"] / n,
        "pos_dist": sums["pos_dist"] / n,
        "match": sums["hits"] / max(sums["samples"], 1.0),
        "fg_iou": sums["inter"] / max(sums["union"], 1.0),
        "bg_norm": bg_sum / max(bg_n, 1.0),
        "items": len(items),
        "seconds": time.perf_counter() - t0,
    }


def _step_size(cfg: AbstractTrainConfig, rank: int, step: int) -> int:
    """The crop side of step ``step``: ``small_size`` with probability ``small_probability`` (a function of the
    seed, rank and step only, so a resumed run draws the same sizes)."""
    u = np.random.default_rng([cfg.seed, rank, step, 0x5A11]).random()
    return cfg.small_size if u < cfg.small_probability else cfg.size


def _groups(items: Iterator[dict[str, Any]], n: int) -> Iterator[list[dict[str, Any]]]:
    while True:
        yield [next(items) for _ in range(n)]


def pair_batches(
    cfg: AbstractTrainConfig, stream: AbstractPairStream, rank: int, start_step: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The training batches of a pair stream from ``start_step`` on (``cfg.workers`` data processes or none), each
    collated at its step's crop side (:func:`_step_size`)."""
    if cfg.workers > 0:
        groups: Iterator[list[dict[str, Any]]] = iter(
            torch.utils.data.DataLoader(
                stream,
                batch_size=cfg.batch_size,
                collate_fn=list,
                num_workers=cfg.workers,
                multiprocessing_context="spawn",
                persistent_workers=True,
                prefetch_factor=2,
            )
        )
    else:
        groups = _groups(iter(stream), cfg.batch_size)
    step = start_step
    for items in groups:
        yield collate_pairs(items, _step_size(cfg, rank, step))
        step += 1


def train_abstract(
    cfg: AbstractTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train (or resume) the ``abstract`` descriptor network; see the module docstring.

    Args:
        cfg: the run's configuration (on resume, the saved one is used; only ``workers`` and ``threads`` are
            taken from ``cfg``).
        run_dir: the run folder (``last.pt``, ``best.pt``, ``model.pt``, ``config.json``, ``train_log.jsonl``).
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps`` (on resume too: the schedule then spans it).
        max_steps: stop after this many steps in this call.
        progress: called as ``progress(step, stats)`` at each log line.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
    """
    run = Path(run_dir)
    cfg, ck = resume_config(cfg, run, METHOD, resume=resume, steps=steps)
    cfg, start = initial_weights(cfg, ck, load_descriptor_net)
    with training_process(cfg, run) as ctx:
        task = method_task(
            cfg,
            METHOD,
            with_weights(DescriptorNet(cfg.net), start),
            cfg.net.to_dict(),
            data=lambda start, rank: pair_batches(cfg, AbstractPairStream(cfg, rank, start), rank, start),
            loss=lambda m, batch: abstract_losses(m, batch, cfg),
            to_device=batch_to_device,
            validate=lazy_validation(lambda: validation_pairs(cfg), lambda m, val: validate_pairs(m, val, cfg)),
            make_optimizer=adamw(cfg, decay_groups=True),
        )
        loop = loop_config(cfg, val_metric="match", floor=0.05)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
