"""Adaptation of the ``abstract`` descriptor network to a user's unlabeled images (``meshpose adapt abstract``).

The seed paper trains its descriptors on pairs whose frame A is a photoreal synthetic frame *or an unlabeled real
frame whose object poses were found by the pipeline itself* with high confidence. This module is that second source:

* **Frames A from the user's images.** Each image's detections (their masks) with the *pseudo poses* the teacher gave
  them (:mod:`meshpose.run.adapt`: ``picopose`` + ``pseudo_refine``, scored by render-and-compare; never a
  ground-truth pose) make a view (:func:`~meshpose.train.cached_scenes.view_from_masks`): the detection masks are the
  instance map, and only the best-scored ``pseudo_share`` of the pseudo poses (at least ``min_score``) are items — the
  other detections still count as foreground, and everything outside every detection is background (the known-object
  case: clutter maps to 0, as with :mod:`meshpose.train.abstract`'s distractors). The items are cut exactly as for
  synthetic views (:func:`~meshpose.train.abstract_data.make_pairs`): frame B is the object rendered alone, the
  correspondences are A's pixels inside its detection mask *and* the silhouette at the pseudo pose, projected into B.
* **Synthetic scenes of the same meshes** keep the rest of the draws (``1 − real_share``): GL scenes of the user's
  objects with distractors drawn on the fly, so that the network keeps what it learned where the pseudo poses are
  wrong.
* **Held out.** A share ``val_share`` of the *images* is never trained on; their items (at fixed crops) measure the
  run: ``match`` (match@0.1d against the pseudo poses, :func:`~meshpose.train.abstract.validate_pairs`) chooses
  ``best.pt``. No label anywhere.

The loss, the network and the run folder are those of ``meshpose train abstract`` (:mod:`meshpose.train.abstract`),
and ``RUN/model.pt`` is a descriptor checkpoint: ``--config '{"weights": "RUN/model.pt"}'`` for the refiner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.nets.descriptor import METHOD, DescriptorNet, load_descriptor_net
from meshpose.train.abstract import abstract_losses, pair_batches, validate_pairs
from meshpose.train.abstract_config import AbstractAdaptConfig
from meshpose.train.abstract_data import AbstractPairStream, make_pairs
from meshpose.train.adapt_config import PseudoPose
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
from meshpose.train.pseudo_views import PseudoViews, mixed_items

__all__ = ["AbstractAdaptConfig", "PseudoPairStream", "train_adapt_abstract", "validation_items"]


class PseudoPairStream(AbstractPairStream):
    """Training pairs from the user's images (share ``real_share`` of the draws) and from synthetic scenes of the
    same meshes (the rest); the stream depends only on ``(seed, rank, worker, start_step)``."""

    SALT = 0xAB5A
    cfg: AbstractAdaptConfig

    def __init__(self, cfg: AbstractAdaptConfig, views: PseudoViews, rank: int = 0, start_step: int = 0) -> None:
        super().__init__(cfg, rank, start_step)
        self.views = views

    def __iter__(self) -> Iterator[Any]:
        rng = self.stream_rng()
        for items in mixed_items(self.cfg, self.views, rng, lambda sample: self.make(sample, rng)):
            yield from items


def validation_items(cfg: AbstractAdaptConfig, views: PseudoViews) -> list[dict[str, Any]]:
    """At most ``val_items`` pairs of the held-out images (fixed crops and B frames: seed ``cfg.seed + 1``)."""
    rng = np.random.default_rng([cfg.seed + 1, 0xAB5B])
    return views.held_out_items(lambda view: make_pairs(view, rng, cfg), cfg.val_items)


def train_adapt_abstract(
    cfg: AbstractAdaptConfig,
    run_dir: str | Path,
    pseudo: Sequence[PseudoPose],
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Adapt (or resume adapting) the descriptor network to unlabeled images; see the module docstring.

    Args:
        cfg: the run's options (on resume, the saved ones are used but for ``workers`` and ``threads``).
        run_dir: the run folder (``last.pt``, ``best.pt``, ``model.pt``, ``config.json``, ``train_log.jsonl``).
        pseudo: the pseudo poses of the detections (:mod:`meshpose.run.adapt` computes and caches them).
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps``.
        max_steps: stop after this many steps in this call.
        progress: called as ``progress(step, stats)`` at each log line.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
        ValueError: nothing to train on (see :class:`PseudoViews`).
    """
    run = Path(run_dir)
    cfg, ck = resume_config(cfg, run, METHOD, resume=resume, steps=steps)
    cfg, start = initial_weights(cfg, ck, load_descriptor_net)
    views = PseudoViews(cfg, pseudo)
    with training_process(cfg, run) as ctx:
        validate: Callable[[torch.nn.Module, int], dict[str, Any]] | None = None
        if views.val_images:
            validate = lazy_validation(lambda: validation_items(cfg, views), lambda m, val: validate_pairs(m, val, cfg))
        task = method_task(
            cfg,
            METHOD,
            with_weights(DescriptorNet(cfg.net), start),
            cfg.net.to_dict(),
            data=lambda step, rank: pair_batches(cfg, PseudoPairStream(cfg, views, rank, step), rank, step),
            loss=lambda m, batch: abstract_losses(m, batch, cfg),
            to_device=batch_to_device,
            validate=validate,
            make_optimizer=adamw(cfg, decay_groups=True),
        )
        loop = loop_config(cfg, val_metric="match", floor=0.05)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
