"""``meshpose adapt genflow``: self-supervised adaptation on unlabeled images (the labels are deleted first).

The fixture draws a tiny RGB-D dataset with the synthetic engine, makes detections from its masks, keeps the true
poses in memory (for a stand-in coarse estimator and the loss sanity check only) and deletes ``scene_gt.json``;
``BopDataset.gt`` is also made to fail, so nothing in ``adapt`` can read a pose label.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.support.unlabeled import Identity, NearTruth, Unlabeled, forbid_labels, make_unlabeled, pseudo_from_truth
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.geometry.lie import perturb_pose
from meshpose.io.bop import BopDataset
from meshpose.nets.batch import load_genflow_model
from meshpose.run.adapt import PSEUDO_FILE, adapt
from meshpose.train.adapt import (
    AdaptConfig,
    AdaptData,
    curriculum_share,
    selfsup_terms,
    split_images,
)
from meshpose.types import Pose

runner = CliRunner()

#: a run that fits the test budget: tiny crops, two recurrent iterations, two items per step
TINY: dict[str, Any] = {
    "batch_size": 2,
    "crop_size": 64,
    "loss_size": 32,
    "iterations": 2,
    "val_every": 2,
    "ckpt_every": 2,
    "log_every": 1,
    "val_share": 0.25,
    "val_items": 2,
    "lr": 1e-4,
    "warmup": 1,
}


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> Unlabeled:
    return make_unlabeled(tmp_path_factory.mktemp("adapt"), objects="novel:3", images=4, split="test", seed=3)


@pytest.fixture(autouse=True)
def no_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_labels(monkeypatch)


def test_refuses_a_dataset_without_images(unlabeled: Unlabeled, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(unlabeled.root / "models", bare / "models")
    (bare / "test" / "000000").mkdir(parents=True)
    shutil.copy(unlabeled.root / "test" / "000000" / "scene_camera.json", bare / "test" / "000000")
    with pytest.raises(ValueError, match=rf"{bare}.*has no images"):
        adapt("genflow", bare, unlabeled.dets, tmp_path / "run")
    res = runner.invoke(app, ["adapt", "genflow", "--images", str(bare), "--detections", str(unlabeled.dets),
                              "--out", str(tmp_path / "run2")])  # fmt: skip
    assert res.exit_code == 2 and "has no images" in res.output
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    bad = runner.invoke(app, ["adapt", "genflow", "--images", str(unlabeled.root), "--detections", str(unlabeled.dets),
                              "--out", str(tmp_path / "run3"), "--images-range", "5"])  # fmt: skip
    assert bad.exit_code == 2 and "--images-range" in bad.output


def test_refuses_detections_without_masks_and_other_methods(unlabeled: Unlabeled, tmp_path: Path) -> None:
    raw = json.loads(unlabeled.dets.read_text())
    for r in raw:
        r.pop("segmentation", None)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="no mask"):
        adapt("genflow", unlabeled.root, boxes, tmp_path / "run")
    with pytest.raises(ValueError, match=r"'contour' cannot be adapted \(supported: genflow, abstract, deeprm\)"):
        adapt("contour", unlabeled.root, unlabeled.dets, tmp_path / "run")


def test_loss_is_lower_near_the_true_pose(unlabeled: Unlabeled) -> None:
    ds = BopDataset(unlabeled.root, "test")
    pseudo = pseudo_from_truth(unlabeled)
    cfg = AdaptConfig(
        data=str(ds.root), detections=str(unlabeled.dets), val_share=0.0, rot_deg=(0.0, 0.0), trans_frac=(0.0, 0.0),
        **{k: v for k, v in TINY.items() if k not in ("val_share",)},
    )  # fmt: skip
    data = AdaptData(cfg, pseudo)
    batch = data.make_batch(data.train[:4], np.random.default_rng(0))
    assert batch is not None and batch["has_depth"]  # an RGB-D set: the geometry term is on
    true = batch["batch"].pose
    gen = torch.Generator().manual_seed(0)
    diam = batch["batch"].diameter.double()
    close = Pose.stack([perturb_pose(true[k], math.radians(3.0), 0.02 * float(diam[k]), gen) for k in range(len(diam))])
    far = Pose.stack([perturb_pose(true[k], math.radians(30.0), 0.3 * float(diam[k]), gen) for k in range(len(diam))])
    at_true = selfsup_terms(batch, true, cfg, data.tensors)
    near = selfsup_terms(batch, close, cfg, data.tensors)
    away = selfsup_terms(batch, far, cfg, data.tensors)
    assert bool((near.total < away.total).all()), (near.total, away.total)
    assert float(at_true.total.mean()) < float(near.total.mean())
    assert bool((away.iou > near.iou).all()) and float(near.geometry.mean()) < float(away.geometry.mean())
    # held out: whole images, never trained on; the training items best-scored first
    split = AdaptData(dataclasses.replace(cfg, val_share=0.5), [dataclasses.replace(p, score=0.1 * k) for k, p in
                                                                  enumerate(pseudo)])  # fmt: skip
    assert split.val and {p.image for p in split.train}.isdisjoint(p.image for p in split.val)
    assert len(split.held_out_images) == 2 and [p.score for p in split.train] == sorted(
        (p.score for p in split.train), reverse=True
    )


def test_held_out_images_are_fixed_and_never_all() -> None:
    images = [(0, i) for i in range(10)]
    a, b = split_images(images, 0.3, seed=0), split_images(images, 0.3, seed=0)
    assert a == b and len(a) == 3 and split_images(images, 0.3, seed=1) != a
    assert split_images(images[:2], 0.9, 0) and len(split_images(images[:2], 0.9, 0)) == 1
    assert not split_images(images[:1], 0.5, 0) and not split_images(images, 0.0, 0)
    cfg = AdaptConfig(steps=100, curriculum_start=0.4, curriculum_widen=0.5)
    shares = [curriculum_share(s, cfg) for s in (0, 25, 50, 99)]
    assert shares == pytest.approx([0.4, 0.7, 1.0, 1.0])


def test_adapt_runs_resumes_and_changes_the_weights(unlabeled: Unlabeled, tmp_path: Path) -> None:
    run = tmp_path / "run"
    est = NearTruth(unlabeled.truth)
    res = adapt(
        "genflow", unlabeled.root, unlabeled.dets, run, options=TINY, steps=3, max_steps=2, estimator=est,
        refiner=Identity(),
    )  # fmt: skip
    assert not (unlabeled.root / "test" / "000000" / "scene_gt.json").exists()
    assert res.step == 2 and est.calls == 4  # one call per image
    for name in (PSEUDO_FILE, "last.pt", "best.pt", "model.pt", "config.json", "train_log.jsonl"):
        assert (run / name).is_file(), name
    cache = json.loads((run / PSEUDO_FILE).read_text())
    assert len(cache["images"]) == 4 and len(cache["poses"]) == sum(len(v) for v in unlabeled.truth.values())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    vals = [r for r in log if r.get("event") == "val"]
    assert vals and all(math.isfinite(v["val_loss"]) and v["items"] >= 1 for v in vals)
    steps = [r for r in log if "loss" in r]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    # the weights moved away from the shipped ones
    base = load_genflow_model("package").state_dict()
    after = load_genflow_model(run / "last.pt").state_dict()
    assert any(not torch.equal(base[k], after[k]) for k in base)
    # a second call without --resume is refused; --resume continues from last.pt with the cached pseudo poses
    with pytest.raises(FileExistsError):
        adapt("genflow", unlabeled.root, unlabeled.dets, run, options=TINY, estimator=est, refiner=Identity())
    again = adapt("genflow", unlabeled.root, unlabeled.dets, run, resume=True, estimator=est, refiner=Identity())
    assert again.step == 3 and est.calls == 4  # nothing re-estimated
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" and r["step"] == 2 for r in log)
    assert json.loads((run / "config.json").read_text())["crop_size"] == 64


def test_pseudo_label_term_points_to_the_pseudo_pose_and_trains(unlabeled: Unlabeled, tmp_path: Path) -> None:
    from meshpose.nets.batch import load_genflow_model as load
    from meshpose.train.adapt import adapt_losses

    pseudo = pseudo_from_truth(unlabeled)
    cfg = AdaptConfig(
        data=str(unlabeled.root), detections=str(unlabeled.dets), val_share=0.0, rot_deg=(8.0, 8.0),
        trans_frac=(0.05, 0.05), pseudo_weight=1.0, **{k: v for k, v in TINY.items() if k not in ("val_share",)},
    )  # fmt: skip
    data = AdaptData(cfg, pseudo)
    batch = data.make_batch(data.train[:4], np.random.default_rng(0))
    assert batch is not None
    net = load("package")
    with torch.no_grad():
        _, right = adapt_losses(net, batch, cfg, data.tensors)
        # the same crops with pseudo poses turned 20° away: the pseudo-label term is larger
        wrong = dict(batch)
        gen = torch.Generator().manual_seed(1)
        wrong["target"] = Pose.stack(
            [perturb_pose(batch["target"][k], math.radians(20.0), 0.0, gen) for k in range(len(batch["obj_index"]))]
        )
        _, off = adapt_losses(net, wrong, cfg, data.tensors)
    assert right["pseudo_visible"] > 0.05 and off["pseudo_pose"] > right["pseudo_pose"]
    # a run with the term trains (finite losses logged)
    run = tmp_path / "run"
    est = NearTruth(unlabeled.truth)
    opts = {**TINY, "pseudo_weight": 1.0}
    adapt("genflow", unlabeled.root, unlabeled.dets, run, options=opts, steps=2, estimator=est, refiner=Identity())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("pseudo_flow" in r and math.isfinite(r["pseudo_flow"]) for r in log)
