"""Training of ``picopose``'s learned stage 2 (``meshpose train picopose-similarity``).

Data: the pairs of :mod:`meshpose.train.picopose_data` (a template-like rendering of a generated object, and the
object in a cluttered synthetic scene cut around its modal mask's box, masked or not, turned to the template's
in-plane orientation up to a residual), each with the least-squares similarity that maps the object's projected
points from the template crop to the turned query crop (``sim``). Their patch features come from the estimator's
frozen stage-1 extractor (``features``, ``feature_weights``: the same as at inference), computed as the batch is
collated.

Loss: over the template's foreground patch centres ``p``, the distance in crop pixels between the predicted and the
true map of ``p``, Huber with ``loss_delta_px``, averaged per pair (the "grid loss" of geometric-matching networks).

Validation: on held-out pairs of ``val_objects``: ``val_err_px`` (the median over pairs of that mean distance;
chooses ``best.pt``, lower is better), ``ok4`` (the share of pairs within 4 px), and the same of the training-free
stand-in on the same pairs (RANSAC on mutual-nearest-neighbour patch matches,
:func:`~meshpose.coarse.picopose.matching.fit_similarity`) and of the identity, for comparison.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from meshpose.coarse.picopose.features import DenseFeatures, make_features
from meshpose.coarse.picopose.matching import fit_similarity, foreground_patches
from meshpose.nets.simnet import METHOD, SimilarityNet, SimilarityNetConfig, load_simnet, similarity_matrices
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
from meshpose.train.loop import LoopResult, train_loop
from meshpose.train.picopose_config import PairOptions
from meshpose.train.picopose_data import PairStream, validation_pairs

__all__ = [
    "SimilarityTrainConfig",
    "collate_similarity",
    "similarity_losses",
    "train_similarity",
    "validate_similarity",
]


@dataclass(frozen=True)
class SimilarityTrainConfig(PairOptions):
    """A ``meshpose train picopose-similarity`` run: :class:`~meshpose.nets.simnet.SimilarityNet` trained on pairs of
    generated objects; the options of :class:`~meshpose.train.picopose_config.PairOptions` (``batch_size``: pairs
    per step) and these.

    Args:
        features: the stage-1 feature extractor the network reads (frozen; the estimator's ``features``).
        feature_weights: weights of its ``"trained"`` part (``None``: the shipped ones; the estimator's
            ``feature_weights``).
        loss_delta_px: the Huber loss's threshold, crop pixels.
        net: network sizes.
        init_weights: start from these stage-2 weights (a weights spec) instead of a random initialisation.
    """

    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 50
    features: str = "xfeat+trained"
    feature_weights: str | None = None
    loss_delta_px: float = 2.0
    val_every: int = 100
    ckpt_every: int = 50
    net: SimilarityNetConfig = field(default_factory=SimilarityNetConfig)
    init_weights: str | None = None

    def check(self) -> None:
        super().check()
        if self.size // 8 != self.net.grid:
            raise ValueError(f"net.grid must be size / 8 = {self.size // 8}, got {self.net.grid}")
        if self.loss_delta_px <= 0:
            raise ValueError(f"loss_delta_px must be > 0, got {self.loss_delta_px}")


@functools.cache
def _extractor(name: str, weights: str | None) -> DenseFeatures:
    """One frozen extractor per process (XFeat's weights load once)."""
    return make_features(name, weights)


def collate_similarity(items: list[dict[str, Any]], cfg: SimilarityTrainConfig) -> dict[str, torch.Tensor]:
    """Stack pairs and take their features.

    Returns:
        ``qf``, ``tf`` ``(B, C, h, w)`` unit features of the turned query and the template; ``q_fg``, ``t_fg``
        ``(B, h, w)`` bool (the query's region, the template's silhouette: as the estimator takes them);
        ``sim`` ``(B, 2, 3)`` the true maps.
    """
    feats = _extractor(cfg.features, cfg.feature_weights)
    q_rgb = np.stack([it["q_rgb"] for it in items])
    t_rgb = np.stack([it["t_rgb"] for it in items])
    with torch.no_grad():
        f = feats(np.concatenate([q_rgb, t_rgb]))
    b = len(items)
    return {
        "qf": f[:b],
        "tf": f[b:],
        "q_fg": foreground_patches(np.stack([it["q_region"] for it in items]), feats.stride),
        "t_fg": foreground_patches(np.stack([it["t_mask"] for it in items]), feats.stride),
        "sim": torch.from_numpy(np.stack([it["sim"] for it in items])).float(),
    }


def map_errors(A: torch.Tensor, data: dict[str, torch.Tensor], size: int, delta: float | None = None) -> torch.Tensor:
    """``(B,)``: per pair, the mean over the template's foreground patch centres ``p`` of ``|A p - A_true p|``
    (crop pixels), or of its Huber loss with ``delta``.

    Args:
        A: ``(B, 2, 3)`` maps found (template → turned query pixels).
        data: a :func:`collate_similarity` batch (``t_fg``, ``sim``).
        size: the crops' side, pixels.
        delta: Huber threshold in pixels (``None``: the plain distance).
    """
    h, w = data["t_fg"].shape[1:]
    stride = size // w
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([(xs + 0.5) * stride - 0.5, (ys + 0.5) * stride - 0.5, torch.ones(h, w)], -1)
    p = p.reshape(-1, 3).to(A)  # (P, 3)
    diff = torch.einsum("bij,pj->bpi", A - data["sim"].to(A), p)  # (B, P, 2)
    d = diff.norm(dim=-1)
    if delta is not None:
        d = F.huber_loss(d, torch.zeros_like(d), reduction="none", delta=delta)
    fg = data["t_fg"].flatten(1).to(d.dtype)
    return (d * fg).sum(1) / fg.sum(1).clamp(min=1.0)


def similarity_losses(
    net: torch.nn.Module, data: dict[str, torch.Tensor], cfg: SimilarityTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a :func:`collate_similarity` batch (module docstring) and scalars to log: ``loss``, ``err_px``
    (mean map error), ``ok4`` (share within 4 px), ``err0_px`` (the identity's error)."""
    A = similarity_matrices(net(data["qf"], data["q_fg"], data["tf"], data["t_fg"]), cfg.size)
    loss = map_errors(A, data, cfg.size, cfg.loss_delta_px).mean()
    with torch.no_grad():
        err = map_errors(A.detach(), data, cfg.size, None)
        eye = similarity_matrices(torch.zeros(len(A), 4, dtype=A.dtype, device=A.device), cfg.size)
        err0 = map_errors(eye, data, cfg.size, None)
    stats = {
        "loss": float(loss.detach()),
        "err_px": float(err.mean()),
        "ok4": float((err < 4.0).float().mean()),
        "err0_px": float(err0.mean()),
    }
    return loss, stats


def ransac_maps(data: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """``(B, 2, 3)``: the training-free stage 2 (:func:`~meshpose.coarse.picopose.matching.fit_similarity`) on each
    pair of a :func:`collate_similarity` batch (the query is already turned: angle 0)."""
    stride = size // data["t_fg"].shape[-1]
    maps = [
        fit_similarity(data["qf"][i], data["q_fg"][i], data["tf"][i], data["t_fg"][i], 0.0, size, stride)[0]
        for i in range(len(data["qf"]))
    ]
    return torch.from_numpy(np.stack(maps)).float()


def validate_similarity(
    net: torch.nn.Module, items: list[dict[str, Any]], cfg: SimilarityTrainConfig, *, batch_size: int = 16
) -> dict[str, Any]:
    """``val_err_px`` / ``ok4`` of ``net`` (eval mode, no gradient) on held-out pairs, beside the RANSAC stand-in's
    (``ransac_err_px`` / ``ransac_ok4``) and the identity's (``identity_err_px``)."""
    t0 = time.perf_counter()
    device = next(net.parameters()).device
    errs: dict[str, list[torch.Tensor]] = {"net": [], "ransac": [], "identity": []}
    with torch.no_grad():
        for a in range(0, len(items), batch_size):
            data = collate_similarity(items[a : a + batch_size], cfg)
            dev = batch_to_device(data, device)
            A = similarity_matrices(net(dev["qf"], dev["q_fg"], dev["tf"], dev["t_fg"]), cfg.size).cpu()
            errs["net"].append(map_errors(A, data, cfg.size, None))
            errs["ransac"].append(map_errors(ransac_maps(data, cfg.size), data, cfg.size, None))
            eye = similarity_matrices(torch.zeros(len(A), 4), cfg.size)
            errs["identity"].append(map_errors(eye, data, cfg.size, None))
    e = {k: torch.cat(v) for k, v in errs.items()}
    return {
        "val_err_px": float(e["net"].median()),
        "ok4": float((e["net"] < 4.0).float().mean()),
        "ransac_err_px": float(e["ransac"].median()),
        "ransac_ok4": float((e["ransac"] < 4.0).float().mean()),
        "identity_err_px": float(e["identity"].median()),
        "items": len(items),
        "seconds": time.perf_counter() - t0,
    }


def _batches(cfg: SimilarityTrainConfig, rank: int, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
    it = iter(PairStream(cfg, rank, start_step))
    while True:
        yield collate_similarity([next(it) for _ in range(cfg.batch_size)], cfg)


def train_similarity(
    cfg: SimilarityTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train (or resume) ``picopose``'s stage-2 network; see the module docstring.

    Args:
        cfg: the run's configuration (on resume, the saved one is used; only ``threads`` is taken from ``cfg``).
        run_dir: the run folder (``last.pt``, ``best.pt``, ``model.pt``, ``config.json``, ``train_log.jsonl``).
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps``.
        max_steps: stop after this many steps in this call.
        progress: called as ``progress(step, stats)`` at each log line.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
    """
    run = Path(run_dir)
    cfg, ck = resume_config(cfg, run, METHOD, resume=resume, steps=steps)
    cfg, start = initial_weights(cfg, ck, load_simnet)
    with training_process(cfg, run) as ctx:
        task = method_task(
            cfg,
            METHOD,
            with_weights(SimilarityNet(cfg.net), start),
            cfg.net.to_dict(),
            data=lambda start, rank: _batches(cfg, rank, start),
            loss=lambda m, batch: similarity_losses(m, batch, cfg),
            to_device=batch_to_device,
            validate=lazy_validation(lambda: validation_pairs(cfg), lambda m, val: validate_similarity(m, val, cfg)),
        )
        loop = loop_config(cfg, val_metric="val_err_px", higher_is_better=False, floor=0.05)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
