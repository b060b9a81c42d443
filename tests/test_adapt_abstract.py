"""``meshpose adapt abstract``: the descriptor network adapted to unlabeled images from pseudo poses (the labels of
the fixture are deleted first, and ``BopDataset.gt`` fails)."""

from __future__ import annotations

import dataclasses
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
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.io.detections import read_detections
from meshpose.nets.descriptor import load_descriptor_net
from meshpose.run.adapt import PSEUDO_FILE, adapt, adapt_config, teacher_config
from meshpose.train.abstract_config import AbstractAdaptConfig
from meshpose.train.adapt_abstract import PseudoPairStream, validation_items
from meshpose.train.pseudo_views import PseudoViews

runner = CliRunner()

#: a run that fits the test budget: small crops, a tiny batch, validation every step
TINY: dict[str, Any] = {
    "batch_size": 2,
    "size": 64,
    "small_size": 32,
    "positives": 32,
    "negatives": 64,
    "val_every": 1,
    "ckpt_every": 1,
    "log_every": 1,
    "val_share": 0.25,
    "val_items": 2,
    "warmup": 1,
    "views_per_scene": 1,
    "image_size": [200, 150],
}


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> Unlabeled:
    return make_unlabeled(tmp_path_factory.mktemp("adapt_abs"), objects="novel:3", images=4, split="test", seed=5)


@pytest.fixture(autouse=True)
def no_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_labels(monkeypatch)


def _cfg(unlabeled: Unlabeled, **over: Any) -> AbstractAdaptConfig:
    cfg = adapt_config(unlabeled.root, unlabeled.dets, options={**TINY, **over}, method="abstract")
    assert isinstance(cfg, AbstractAdaptConfig)
    return cfg


def test_options_are_checked(unlabeled: Unlabeled) -> None:
    cfg = _cfg(unlabeled)
    assert cfg.init_weights == "package" and cfg.scene["distractors_per_scene"] == [2, 6]
    assert AbstractAdaptConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="pseudo_share must be > 0"):
        _cfg(unlabeled, pseudo_share=0.0)
    with pytest.raises(ValueError, match=r"real_share is a share in \[0, 1\]"):
        _cfg(unlabeled, real_share=1.5)
    with pytest.raises(ValueError, match=r"unknown adapt option\(s\) \['crop_size'\]"):
        _cfg(unlabeled, crop_size=64)  # a genflow option
    with pytest.raises(ValueError, match="do not apply to adapt abstract"):
        _cfg(unlabeled, cached="somewhere:train_pbr")
    # the teacher: the adapted method's member runs the starting weights, the others their defaults
    assert teacher_config("abstract", "abstract+contour", "runs/a/model.pt") == {
        "abstract": {"weights": "runs/a/model.pt"}
    }
    assert teacher_config("genflow", "genflow", "package") == {} and teacher_config("abstract", "contour", "x") == {}


def test_views_hold_the_confident_pseudo_poses_and_hold_images_out(unlabeled: Unlabeled) -> None:
    pseudo = pseudo_from_truth(unlabeled, lambda n: 0.1 * n)
    cfg = _cfg(unlabeled, pseudo_share=0.5, val_share=0.25)
    views = PseudoViews(cfg, pseudo)
    assert len(views.val_images) == 1 and set(views.train_images).isdisjoint(views.val_images)
    held_out_items = {(p.scene_id, p.im_id, p.det_index) for p in pseudo if p.image in views.val_images}
    # half of each part's pseudo poses are items, the best scored ones
    train_items = views.items - held_out_items
    ranked = sorted((p for p in pseudo if p.image not in views.val_images), key=lambda p: -p.score)
    assert train_items == {(p.scene_id, p.im_id, p.det_index) for p in ranked[: math.ceil(0.5 * len(ranked))]}
    key = views.train_images[0]
    view = views.view(key)
    dets = read_detections(unlabeled.dets)[key]
    assert len(view.objects) == len(views.by_image[key]) == len(dets)
    for i, p in enumerate(views.by_image[key]):
        mask = np.asarray(dets[p.det_index].mask, bool)
        assert np.all(view.instance[mask] > 0)  # every detection is foreground …
        chosen = (p.scene_id, p.im_id, p.det_index) in views.items
        assert view.visib_fract[i] == (1.0 if chosen else 0.0)  # … but only the items are items
        np.testing.assert_allclose(view.poses[i].numpy()[1], p.t)
    assert view.depth is None and view.info["renderer"] == "real"
    # a score floor above every pseudo pose leaves nothing to train on
    with pytest.raises(ValueError, match="no pseudo pose to train on"):
        PseudoViews(dataclasses.replace(cfg, min_score=1e9), pseudo)


def test_pairs_of_real_views_correspond(unlabeled: Unlabeled) -> None:
    """Pairs cut from the user's images at (here, true) pseudo poses: their corresponding pixels show the same
    object points in A and B, and a stream with ``real_share`` 1 gives only such pairs."""
    cfg = _cfg(unlabeled, pseudo_share=1.0, val_share=0.0, real_share=1.0, same_orientation_probability=1.0)
    views = PseudoViews(cfg, pseudo_from_truth(unlabeled, lambda n: 0.1 * n))
    stream = iter(PseudoPairStream(cfg, views))
    items = [next(stream) for _ in range(4)]
    known = {p.obj_id for p in pseudo_from_truth(unlabeled, lambda n: 0.1 * n)}
    for it in items:
        assert it["obj_id"] in known and it["a_rgb"].shape == (64, 64, 3)
        ok = it["pos_ok"]
        assert ok.sum() >= 16
        # B's object point at each positive's B pixel is the positive's object point
        b_pts = it["b_xyz"].reshape(-1, 3)[it["pos_b"][ok]]
        err = np.linalg.norm(b_pts - it["pos_xyz"][ok], axis=1)
        assert np.median(err) < 0.05 * float(it["diameter"])
    # held-out pairs are fixed
    cfg_v = dataclasses.replace(cfg, val_share=0.25)
    v = PseudoViews(cfg_v, pseudo_from_truth(unlabeled, lambda n: 0.1 * n))
    a, b = validation_items(cfg_v, v), validation_items(cfg_v, v)
    assert a and all(np.array_equal(x["pos_a"], y["pos_a"]) for x, y in zip(a, b, strict=True))


def test_adapt_abstract_runs_resumes_and_changes_the_weights(unlabeled: Unlabeled, tmp_path: Path) -> None:
    run = tmp_path / "run"
    est = NearTruth(unlabeled.truth)
    res = adapt(
        "abstract", unlabeled.root, unlabeled.dets, run, options={**TINY, "real_share": 0.5}, steps=3, max_steps=2,
        estimator=est, refiner=Identity(),
    )  # fmt: skip
    assert res.step == 2 and est.calls == 4
    for name in (PSEUDO_FILE, "last.pt", "best.pt", "model.pt", "config.json", "train_log.jsonl"):
        assert (run / name).is_file(), name
    settings = json.loads((run / PSEUDO_FILE).read_text())["settings"]
    assert settings["refiner"] == "genflow+contour" and settings["init_weights"] is None  # abstract is no teacher
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    vals = [r for r in log if r.get("event") == "val"]
    assert vals and all(0.0 <= v["match"] <= 1.0 and v["items"] >= 1 for v in vals)
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    base = load_descriptor_net("package").state_dict()
    after = load_descriptor_net(str(run / "model.pt")).state_dict()
    assert any(not torch.equal(base[k], after[k]) for k in base)
    again = adapt("abstract", unlabeled.root, unlabeled.dets, run, resume=True, estimator=est, refiner=Identity())
    assert again.step == 3 and est.calls == 4  # the pseudo poses come from the cache
    # the command line: a method it cannot adapt is refused with the list
    res_cli = runner.invoke(
        app, ["adapt", "icp", "--images", str(unlabeled.root), "--detections", str(unlabeled.dets), "--out",
              str(tmp_path / "r2")],
    )  # fmt: skip
    assert res_cli.exit_code == 2 and "supported: genflow, abstract, deeprm" in res_cli.output
