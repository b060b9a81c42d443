"""Training of the ``abstract`` descriptor network: the pairs' correspondences, the smaller crops, a tiny network
overfits one pair, and the CLI trains, resumes and exports weights that load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.nets.checkpoint import load_checkpoint
from meshpose.nets.descriptor import DescriptorNet, DescriptorNetConfig, load_descriptor_net
from meshpose.train.abstract import abstract_losses, train_abstract, validate_pairs
from meshpose.train.abstract_config import AbstractTrainConfig
from meshpose.train.abstract_data import AbstractPairStream, collate_pairs
from support.fine_tune import check_fine_tune_from_weights

runner = CliRunner()

TINY = DescriptorNetConfig(dim=8, widths=(8, 16, 16, 16), stem=4, decoder=(16, 16, 16, 8, 8))
#: a run that draws few small scenes
SMALL: dict[str, Any] = {
    "image_size": [320, 240],
    "object_pool": 4,
    "pool_scenes": 2,
    "views_per_scene": 2,
    "val_items": 2,
    "val_objects": "novel:4500-4503",
    "log_every": 1,
    "net": TINY.to_dict(),
}


@pytest.fixture(scope="module")
def cfg() -> AbstractTrainConfig:
    return AbstractTrainConfig.from_dict({**SMALL, "data": "novel:8"})


@pytest.fixture(scope="module")
def items(cfg: AbstractTrainConfig) -> list[dict[str, Any]]:
    it = iter(AbstractPairStream(cfg))
    return [next(it) for _ in range(4)]


def test_pairs_correspond_where_b_sees_the_point(cfg: AbstractTrainConfig, items: list[dict[str, Any]]) -> None:
    s = cfg.size
    for x in items:
        assert x["a_rgb"].shape == (s, s, 3) and x["b_rgb"].shape == (s, s, 3) and x["a_rgb"].dtype == np.uint8
        n = int(x["pos_ok"].sum())
        assert n >= 16
        pa, pb, pts = x["pos_a"][:n], x["pos_b"][:n], x["pos_xyz"][:n]
        assert x["a_fg"].reshape(-1)[pa].all() and x["b_fg"].reshape(-1)[pb].all()
        # B's object point at the corresponding pixel is the point of A's pixel (up to a pixel's footprint)
        err = np.linalg.norm(x["b_xyz"].reshape(-1, 3)[pb] - pts, axis=1)
        assert np.median(err) < 0.02 * x["diameter"], np.median(err) / x["diameter"]
        # the background of B is black and its descriptors' targets are zero there
        assert not x["b_rgb"][~x["b_fg"]].any()
        assert x["b_fg"].reshape(-1)[x["neg_b"][x["neg_ok"]]].all()


def test_collate_at_the_small_size(items: list[dict[str, Any]]) -> None:
    full, small = collate_pairs(items), collate_pairs(items, 64)
    assert small["a_rgb"].shape == (4, 3, 64, 64) and small["b_fg"].shape == (4, 64, 64)
    for key in ("pos_a", "pos_b", "neg_b"):
        assert int(small[key].max()) < 64 * 64
    v, u = full["pos_a"] // 128, full["pos_a"] % 128
    assert torch.equal(small["pos_a"], (v // 2) * 64 + u // 2)
    assert torch.allclose(small["a_rgb"][:, :, 3, 5], full["a_rgb"][:, :, 6:8, 10:12].mean((2, 3)))


def test_a_tiny_network_overfits_one_pair(cfg: AbstractTrainConfig, items: list[dict[str, Any]]) -> None:
    data = collate_pairs(items[:1], 64)
    torch.manual_seed(0)
    net = DescriptorNet(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first: dict[str, float] = {}
    for _ in range(150):
        loss, stats = abstract_losses(net, data, cfg)
        first = first or stats
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["loss"] < 0.3 * first["loss"], (first, stats)
    assert stats["pos_dist"] < 0.3 * cfg.margin, stats  # positives well inside the negatives' margin
    assert stats["neg_dist"] > 2.0 * stats["pos_dist"] and stats["hard_ok"] > 0.8, stats
    val = validate_pairs(net.eval(), items[:1], cfg)
    assert 0.0 <= val["match"] <= 1.0 and 0.0 <= val["fg_iou"] <= 1.0


def test_cli_trains_resumes_and_exports_loadable_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "abstract", "--data", "novel:8", "--out", str(run), "--steps", "4", "--batch-size", "2"]
    cfg = json.dumps(SMALL | {"val_every": 2, "ckpt_every": 2, "small_probability": 0.5})
    res = runner.invoke(app, [*args, "--max-steps", "2", "--config", cfg])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert load_checkpoint(run / "last.pt", "abstract").training["step"] == 2  # type: ignore[index]
    res = runner.invoke(app, ["train", "abstract", "--out", str(run), "--steps", "4", "--resume"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ck = load_checkpoint(run / "last.pt", "abstract")
    assert ck.training is not None and ck.training["step"] == 4
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if r.get("event") in ("start", "resume")] == ["start", "resume"]
    assert any(r.get("event") == "val" and {"match", "pos_dist", "fg_iou"} <= set(r) for r in log)
    net = load_descriptor_net(run / "model.pt")
    assert net.config == TINY
    desc, fg = net(torch.rand(1, 3, 64, 64))
    assert desc.shape == (1, 8, 64, 64) and fg.shape == (1, 1, 64, 64)


def test_known_object_fine_tuning_from_weights_on_pre_rendered_frames(tiny_bop: Path, tmp_path: Path) -> None:
    """A run on known objects can start from trained descriptors (``init_weights``; the sizes come from them) and
    take its frames A from a pre-rendered split (``cached``, photoreal renderings in practice), validating on it."""
    log = check_fine_tune_from_weights(
        train_abstract, AbstractTrainConfig, load_descriptor_net, SMALL, tiny_bop, tmp_path
    )
    assert load_descriptor_net(tmp_path / "tune" / "last.pt").config == TINY
    assert any(r.get("event") == "val" and r["items"] == 2 for r in log), log  # the split's pairs
