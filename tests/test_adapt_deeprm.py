"""``meshpose adapt deeprm``: the ``deeprm`` network adapted to unlabeled images, its items cut at pseudo poses
(the fixture's labels are deleted first, and ``BopDataset.gt`` fails)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.support.unlabeled import (
    Identity,
    NearTruth,
    Unlabeled,
    forbid_labels,
    make_unlabeled,
    pseudo_from_truth,
)

from meshpose.nets.deeprm import load_deeprm_model
from meshpose.run.adapt import PSEUDO_FILE, adapt, adapt_config
from meshpose.train.deeprm_config import DeepRMAdaptConfig
from meshpose.train.deeprm_data import batches, validation_items
from meshpose.train.pseudo_views import PseudoViews

#: a run that fits the test budget: one iteration, one perturbation per instance, two items per step
TINY: dict[str, Any] = {
    "batch_size": 2,
    "iterations": 1,
    "perturbations": 1,
    "mix_items": 2,
    "val_items": 2,
    "val_iterations": 1,
    "val_every": 1,
    "ckpt_every": 1,
    "log_every": 1,
    "val_share": 0.25,
    "warmup": 1,
    "views_per_scene": 1,
    "image_size": [200, 150],
}


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> Unlabeled:
    return make_unlabeled(tmp_path_factory.mktemp("adapt_rm"), objects="novel:3", images=4, split="test", seed=7)


@pytest.fixture(autouse=True)
def no_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_labels(monkeypatch)


def test_items_of_the_users_images_target_the_pseudo_poses(unlabeled: Unlabeled) -> None:
    cfg = adapt_config(unlabeled.root, unlabeled.dets, options={**TINY, "real_share": 1.0}, method="deeprm")
    assert isinstance(cfg, DeepRMAdaptConfig) and cfg.init_weights == "package"
    assert DeepRMAdaptConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    pseudo = pseudo_from_truth(unlabeled)
    views = PseudoViews(cfg, pseudo)
    batch = next(batches(cfg, views=views))
    targets = np.stack([p.t for p in pseudo])
    for t in batch["gt"].t.numpy():  # every item's "truth" is one of the pseudo poses
        assert float(np.abs(targets - t).sum(1).min()) < 1e-9
    init_err = np.linalg.norm(batch["init"].t.numpy() - batch["gt"].t.numpy(), axis=1)
    assert np.all(init_err > 0)  # the start poses are perturbed
    val = validation_items(cfg, views)
    assert val and {(it["obj_id"]) for it in val} <= {p.obj_id for p in pseudo}
    with pytest.raises(ValueError, match="pseudo_share must be > 0"):
        adapt_config(unlabeled.root, unlabeled.dets, options={"pseudo_share": 0.0}, method="deeprm")


def test_adapt_deeprm_runs_and_changes_the_weights(unlabeled: Unlabeled, tmp_path: Path) -> None:
    run = tmp_path / "run"
    est = NearTruth(unlabeled.truth)
    res = adapt("deeprm", unlabeled.root, unlabeled.dets, run, options=TINY, steps=2, estimator=est, refiner=Identity())
    assert res.step == 2 and est.calls == 4
    for name in (PSEUDO_FILE, "last.pt", "best.pt", "model.pt", "config.json", "train_log.jsonl"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    vals = [r for r in log if r.get("event") == "val"]
    assert vals and all(math.isfinite(v["pm_mean"]) and v["items"] >= 1 for v in vals)
    base = load_deeprm_model("package").state_dict()
    after = load_deeprm_model(str(run / "model.pt")).state_dict()
    assert any(not torch.equal(base[k], after[k]) for k in base)
