"""Training of ``picopose``'s stage-1 patch features (``meshpose train picopose``).

Data (:mod:`meshpose.train.picopose_data`): pairs of a template-like rendering of a generated object (alone on
black, a viewing direction near the query's) and the query (the object in a cluttered synthetic scene, cut around
its modal mask's box, masked or not, turned to the template's in-plane orientation up to a residual), with the
patch correspondences their object coordinates give.

Loss: a symmetric multi-positive InfoNCE over the foreground patches, with a learned temperature ``τ``
(:attr:`~meshpose.nets.patchfeat.PatchFeatNet.temperature`). Each query patch on the object that has a
corresponding template patch is an anchor: ``-log(Σ_pos exp(s/τ) / Σ_all exp(s/τ))`` over the template patches on
the object (of its own pair, and of the other pairs of the batch when ``batch_negatives``); each template patch
with a corresponding query patch likewise against every query patch of the query's region (for an unmasked query
the background in its box too, which stage 1 also compares).

Validation: held-out pairs of ``val_objects``; ``patch_acc``, the share of anchored query patches whose most
similar template patch (of their own template) corresponds, chooses ``best.pt``.

Running: single process (:mod:`meshpose.train.loop`; data in ``workers`` spawned processes or in the training
process).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from meshpose.nets.patchfeat import METHOD, PatchFeatNet, load_patchfeat
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
from meshpose.train.picopose_config import PicoPoseTrainConfig
from meshpose.train.picopose_data import PairStream, collate_pairs, validation_pairs

__all__ = [
    "METHOD",
    "PicoPoseTrainConfig",
    "info_nce",
    "load_patchfeat",
    "picopose_losses",
    "train_picopose",
    "validate_pairs",
]


def info_nce(
    anchors: torch.Tensor,
    cands: torch.Tensor,
    pos: torch.Tensor,
    temperature: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-positive InfoNCE per anchor: ``logsumexp(s/τ over candidates) - logsumexp(s/τ over positives)``.

    Args:
        anchors: ``(N, C)`` unit features.
        cands: ``(M, C)`` unit features.
        pos: ``(N, M)`` bool, each row with at least one positive.
        temperature: scalar ``τ``.
        valid: ``(N, M)`` bool, the candidates of each anchor (default: all).

    Returns:
        ``(N,)`` losses (≥ 0; 0 when the positives take all the probability).

    Example:
        >>> a = torch.tensor([[1.0, 0.0]]); c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(info_nce(a, c, torch.tensor([[True, True]]), torch.tensor(0.1)))
        0.0
    """
    logits = anchors @ cands.T / temperature
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)


def _block(pos: torch.Tensor) -> torch.Tensor:
    """``(B, P, Q)`` per-pair positives → ``(B·P, B·Q)`` block-diagonal."""
    b, p, q = pos.shape
    eye = torch.eye(b, dtype=torch.bool, device=pos.device)
    return (eye[:, None, :, None] & pos[:, :, None, :]).reshape(b * p, b * q)


def picopose_losses(
    net: torch.nn.Module, data: dict[str, torch.Tensor], cfg: PicoPoseTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Features of a :func:`~meshpose.train.picopose_data.collate_pairs` batch and their loss (module docstring).

    Returns:
        The loss and scalars to log: ``loss``, ``q2t``, ``t2q``, ``acc`` (as ``patch_acc`` in validation),
        ``temperature``, ``anchors`` (per pair).
    """
    b = len(data["q_rgb"])
    feats = net(torch.cat([data["q_rgb"], data["t_rgb"]]))
    c = feats.shape[1]
    qf = feats[:b].flatten(2).transpose(1, 2).reshape(-1, c)  # (B·P, C)
    tf = feats[b:].flatten(2).transpose(1, 2).reshape(-1, c)
    bare = getattr(net, "module", net)  # DDP-wrapped or not
    if not isinstance(bare, PatchFeatNet):
        raise TypeError(f"picopose features train a PatchFeatNet, not a {type(bare).__name__}")
    tau = bare.temperature
    pos = data["pos"]
    q_anchor = pos.any(2).flatten()
    t_anchor = pos.any(1).flatten()
    t_cand = data["t_ok"].flatten()
    q_cand = data["q_region"].flatten()
    if not cfg.batch_negatives:  # candidates of the own pair only: mask the other blocks out as non-candidates
        own = _block(torch.ones_like(pos))
    else:
        own = torch.ones(len(qf), len(tf), dtype=torch.bool, device=qf.device)
    big = _block(pos)
    zero = feats.sum() * 0.0
    if int(q_anchor.sum()) == 0 or int(t_anchor.sum()) == 0:
        return zero, {"loss": 0.0, "q2t": 0.0, "t2q": 0.0, "acc": 0.0, "temperature": float(tau), "anchors": 0.0}
    # query → template, template → query
    l_qt = info_nce(qf[q_anchor], tf[t_cand], big[q_anchor][:, t_cand], tau, own[q_anchor][:, t_cand])
    l_tq = info_nce(tf[t_anchor], qf[q_cand], big.T[t_anchor][:, q_cand], tau, own.T[t_anchor][:, q_cand])
    loss = 0.5 * (l_qt.mean() + l_tq.mean())
    with torch.no_grad():
        acc = _patch_acc(feats[:b].detach(), feats[b:].detach(), data)
    stats = {
        "loss": float(loss.detach()),
        "q2t": float(l_qt.detach().mean()),
        "t2q": float(l_tq.detach().mean()),
        "acc": acc,
        "temperature": float(tau.detach()),
        "anchors": float(q_anchor.sum()) / b,
    }
    return loss, stats


def _patch_acc(qf: torch.Tensor, tf: torch.Tensor, data: dict[str, torch.Tensor]) -> float:
    """Share of anchored query patches whose most similar patch of their own template (on the object) corresponds."""
    sim = torch.einsum("bcp,bcq->bpq", qf.flatten(2), tf.flatten(2))
    sim = sim.masked_fill(~data["t_ok"][:, None, :], float("-inf"))
    best = sim.argmax(2)  # (B, P)
    hit = torch.gather(data["pos"], 2, best[..., None])[..., 0]
    anchor = data["pos"].any(2)
    return float(hit[anchor].float().mean()) if bool(anchor.any()) else 0.0


def validate_pairs(
    net: torch.nn.Module, items: list[dict[str, Any]], cfg: PicoPoseTrainConfig, *, batch_size: int = 16
) -> dict[str, Any]:
    """Loss and ``patch_acc`` of ``net`` (eval mode, no gradient) on held-out pairs."""
    t0 = time.perf_counter()
    device = next(net.parameters()).device
    losses, accs, weights = [], [], []
    with torch.no_grad():
        for a in range(0, len(items), batch_size):
            data = batch_to_device(collate_pairs(items[a : a + batch_size], cfg, PatchFeatNet.stride), device)
            loss, stats = picopose_losses(net, data, cfg)
            n = float(data["pos"].any(2).sum())
            losses.append(float(loss) * n)
            accs.append(stats["acc"] * n)
            weights.append(n)
    total = max(sum(weights), 1.0)
    return {
        "val_loss": sum(losses) / total,
        "patch_acc": sum(accs) / total,
        "items": len(items),
        "seconds": time.perf_counter() - t0,
    }


def _batches(cfg: PicoPoseTrainConfig, rank: int, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
    collate = functools.partial(collate_pairs, cfg=cfg, stride=PatchFeatNet.stride)
    stream = PairStream(cfg, rank, start_step)
    if cfg.workers > 0:
        loader = torch.utils.data.DataLoader(
            stream,
            batch_size=cfg.batch_size,
            collate_fn=collate,
            num_workers=cfg.workers,
            multiprocessing_context="spawn",
            persistent_workers=True,
            prefetch_factor=2,
        )
        yield from loader
        return
    it = iter(stream)
    while True:
        yield collate([next(it) for _ in range(cfg.batch_size)])


def train_picopose(
    cfg: PicoPoseTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train (or resume) ``picopose``'s patch features; see the module docstring.

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
    cfg, start = initial_weights(cfg, ck, load_patchfeat)
    with training_process(cfg, run) as ctx:
        task = method_task(
            cfg,
            METHOD,
            with_weights(PatchFeatNet(cfg.net), start),
            cfg.net.to_dict(),
            data=lambda start, rank: _batches(cfg, rank, start),
            loss=lambda m, batch: picopose_losses(m, batch, cfg),
            to_device=batch_to_device,
            validate=lazy_validation(lambda: validation_pairs(cfg), lambda m, val: validate_pairs(m, val, cfg)),
            make_optimizer=adamw(cfg, decay_groups=True),
        )
        loop = loop_config(cfg, val_metric="patch_acc", floor=0.05)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
