"""A known-object fine-tune of a trainer, checked the same way for every method: a tiny run on generated objects,
then a run on a BOP dataset's objects that starts from its weights (``init_weights``, lr 0) and draws its frames from
a pre-rendered split of it (``cached``, ``val_cached``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def check_fine_tune_from_weights(
    train: Callable[..., Any],
    config: Any,
    load: Callable[[Path], torch.nn.Module],
    small: dict[str, Any],
    bop: Path,
    tmp_path: Path,
) -> list[dict[str, Any]]:
    """Train ``small`` for a step on ``novel:8``, then fine-tune from it on ``bop``'s objects and ``bop:test`` views.

    Asserts that the second run took the first one's network sizes and (lr 0) its parameters, and validated.

    Returns:
        The second run's log records.
    """
    first = tmp_path / "first"
    train(config.from_dict({**small, "data": "novel:8", "val_every": 0}), first, steps=1)
    spec = f"{bop}:test"
    over = {
        **small,
        "net": {},
        "data": str(bop),
        "val_objects": str(bop),
        "lr": 0.0,
        "init_weights": str(first / "model.pt"),
        "cached": spec,
        "cached_share": 1.0,
        "val_cached": spec,
        "val_every": 1,
    }
    tune = tmp_path / "tune"
    train(config.from_dict(over), tune, steps=1)
    start, tuned = load(first / "model.pt"), load(tune / "last.pt")
    assert tuned.config == start.config  # type: ignore[attr-defined]  # the sizes come from the weights
    params = dict(tuned.named_parameters())  # lr 0: the parameters it started from (norm statistics move)
    assert all(torch.equal(v, params[k]) for k, v in start.named_parameters())
    log = [json.loads(line) for line in (tune / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "val" for r in log), log
    return log
