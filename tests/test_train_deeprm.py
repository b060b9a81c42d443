"""Training of ``deeprm``: its items and flow targets, a tiny model overfits on the CPU, the CLI trains and resumes,
known-object training reads a mesh folder and a BOP dataset."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.io.bop import BopFormatError
from meshpose.nets.batch import load_genflow_model
from meshpose.nets.checkpoint import load_checkpoint
from meshpose.nets.deeprm import DeepRMNet, DeepRMNetConfig, load_deeprm_model
from meshpose.refine.deeprm import DeepRMConfig, DeepRMRefiner
from meshpose.synth import SyntheticSample, resolve_objects
from meshpose.train.cached_scenes import cached_views
from meshpose.train.common import scene_items
from meshpose.train.deeprm import DeepRMTrainConfig, deeprm_losses, flow_target, train_deeprm
from meshpose.train.deeprm_data import batches, deeprm_items, item_config
from meshpose.train.genflow_config import training_scene_config
from meshpose.types import Pose
from test_nets_deeprm import TINY

runner = CliRunner()

#: a run that draws few small scenes
SMALL: dict = {
    "batch_size": 4,
    "iterations": 3,
    "image_size": [320, 240],
    "object_pool": 4,
    "pool_scenes": 1,
    "views_per_scene": 1,
    "mix_items": 0,
    "encoder_init": None,
    "net": TINY.to_dict(),
}


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def test_items_keep_their_objects_and_flow_targets_vanish_at_the_truth() -> None:
    cfg = DeepRMTrainConfig.from_dict({**SMALL, "data": "novel:8"})
    data = next(batches(cfg))
    b, s = len(data["models"]), TINY.resolution
    assert data["obs_rgb"].shape == (b, 3, s, s) and data["ren_rgb"].shape == (b, 3, s, s)
    for k, m in enumerate(data["models"]):
        assert m.obj_id == data["obj_ids"][k] and abs(m.diameter - float(data["diameter"][k])) < 1e-5
    # rendered at the true pose, every valid pixel's flow target is ~0
    gt: Pose = data["gt"]
    from meshpose.render.base import render_alone
    from meshpose.render.gl import get_default_renderer

    rend = render_alone(get_default_renderer(), data["models"], gt, data["cameras"], None)
    xyz = torch.from_numpy(rend.xyz).permute(0, 3, 1, 2).float()
    mask = torch.from_numpy(rend.mask)[:, None]
    flow, valid = flow_target(xyz, mask, gt, data["K"], data["instance"])
    assert valid.sum() > 50
    assert flow.permute(0, 2, 3, 1)[valid[:, 0]].abs().max() < 1.0 / s  # under a pixel


def _one_view(cfg: DeepRMTrainConfig) -> SyntheticSample:
    """The first synthetic view a run of ``cfg`` draws."""
    rng = np.random.default_rng(0)
    objects = resolve_objects(cfg.data, cfg.seed)
    for views in scene_items(cfg, objects, training_scene_config(item_config(cfg)), rng, lambda smp: [smp]):
        if views:
            return views[0]
    raise AssertionError("unreachable")


def test_perturbations_draw_several_inits_of_one_view_and_the_front_starts_from_genflow(tmp_path: Path) -> None:
    """``perturbations`` makes several items (own inits and crops) per instance; a new correlation-front run's
    encoder starts from the genflow weights it names, and its flow loss uses the front's three scales."""
    one = DeepRMTrainConfig.from_dict({**SMALL, "data": "novel:8", "perturbations": 1})
    three = DeepRMTrainConfig.from_dict({**SMALL, "data": "novel:8", "perturbations": 3})
    sample = _one_view(one)
    a = deeprm_items(sample, np.random.default_rng(1), one, item_config(one))
    b = deeprm_items(sample, np.random.default_rng(1), three, item_config(three))
    assert len(a) >= 1 and len(b) == 3 * len(a)
    assert len({tuple(np.round(it["t_init"], 6)) for it in b}) == len(b)  # each its own initial pose
    with pytest.raises(ValueError, match="perturbations"):
        DeepRMTrainConfig(perturbations=0)

    front = {**TINY.to_dict(), "feature_dim": 48, "encoder_dims": [24, 32, 48]}  # genflow's encoder
    cfg = {**SMALL, "data": "novel:8", "net": front, "steps": 1, "val_every": 0, "flow_scale_weights": [0.1, 0.3, 0.6]}
    cfg["encoder_init"] = "package"
    with pytest.raises(ValueError, match="encoder_init"):  # a front of other sizes cannot take genflow's encoder
        train_deeprm(DeepRMTrainConfig.from_dict({**cfg, "net": TINY.to_dict()}), tmp_path / "bad", max_steps=1)
    train_deeprm(DeepRMTrainConfig.from_dict(cfg), tmp_path / "run", max_steps=1)
    net = load_deeprm_model(tmp_path / "run" / "last.pt")
    assert net.encoder is not None
    # one AdamW step moved the encoder only a little from genflow's shipped weights
    w0, w1 = load_genflow_model("package").fnet.state_dict(), net.encoder.state_dict()
    assert all(torch.allclose(w0[k], w1[k], atol=1e-2) for k in w0 if w0[k].is_floating_point())


def test_tiny_model_overfits_a_few_samples_quickly() -> None:
    """Loss on 4 fixed items (3 unrolled iterations each) falls by 4× or more in 80 steps, well under a minute."""
    torch.manual_seed(0)
    cfg = DeepRMTrainConfig.from_dict({**SMALL, "data": "novel:10"})
    data = next(batches(cfg))
    net = DeepRMNet(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    losses = []
    for _ in range(80):
        loss, stats = deeprm_losses(net, data, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["dpml"])
    assert time.perf_counter() - t0 < 60.0
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < first / 4, losses[::10]


def test_cli_train_resume_and_refine_with_its_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny = {**SMALL, "batch_size": 2, "iterations": 2, "val_items": 3, "val_iterations": 2, "log_every": 1}
    args = ["train", "deeprm", "--data", "novel:6", "--out", str(run), "--config", json.dumps(tiny)]
    out = _ok([*args, "--steps", "3", "--max-steps", "2", "--val-every", "2"])
    assert "stopped at step 2" in out
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    val = [r for r in log if r.get("event") == "val"]
    assert val and 0.0 <= val[0]["add_recall"] <= 1.0 and len(val[0]["recall_per_iteration"]) == 2
    assert {"last.pt", "best.pt", "model.pt", "config.json"} <= {p.name for p in run.iterdir()}
    res = runner.invoke(app, [*args, "--steps", "3"])
    assert res.exit_code == 2 and "--resume" in res.output
    assert "stopped at step 3" in _ok([*args, "--resume"])
    assert load_checkpoint(run / "last.pt").training["step"] == 3  # type: ignore[index]
    net = load_deeprm_model(run / "model.pt")
    assert net.config == DeepRMNetConfig.from_dict(TINY.to_dict())
    ref = DeepRMRefiner(DeepRMConfig(weights=str(run / "model.pt"), iterations=2))
    assert ref.crop_size == TINY.resolution
    bad = runner.invoke(app, [*args, "--config", json.dumps({"nope": 1})])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_known_object_training_reads_a_mesh_folder_and_a_bop_dataset(tiny_bop: Path, tmp_path: Path) -> None:
    tiny = {**SMALL, "batch_size": 2, "iterations": 1, "val_items": 2, "val_iterations": 1}
    for name, source in (("meshes", tiny_bop / "models"), ("bop", tiny_bop)):
        run = tmp_path / name
        args = ["train", "deeprm", "--objects", str(source), "--out", str(run), "--config", json.dumps(tiny)]
        assert "stopped at step 1" in _ok([*args, "--steps", "1", "--val-every", "1"])
        saved = json.loads((run / "config.json").read_text())
        assert saved["data"] == saved["val_objects"] == str(source)  # validation: held-out scenes of them


def test_pre_rendered_scenes_feed_training_and_validation(tiny_bop: Path, tmp_path: Path) -> None:
    """A BOP-format split of pre-rendered scenes (``cached``) gives views with their objects, poses and instance
    maps; a run mixes them in and validates on a held-out one (``val_cached``)."""
    views = cached_views(f"{tiny_bop}:test", np.random.default_rng(0))
    view = next(views)
    assert len(view.objects) == 2 and view.poses.t.shape == (2, 3)
    assert set(np.unique(view.instance)) <= {0, 1, 2} and (view.instance == 1).sum() > 50
    assert np.array_equal(view.masks_visib[0], view.instance == 1)
    cfg = DeepRMTrainConfig.from_dict({**SMALL, "data": str(tiny_bop), "perturbations": 2})
    items = deeprm_items(view, np.random.default_rng(0), cfg, item_config(cfg))
    assert items and all(it["model"].obj_id in view.obj_ids for it in items)
    # a run fed only from the split (share 1), validated on it
    only = {**SMALL, "batch_size": 2, "iterations": 1, "val_items": 3, "val_iterations": 1, "cached_share": 1.0}
    run = tmp_path / "run"
    spec = f"{tiny_bop}:test"
    train_deeprm(
        DeepRMTrainConfig.from_dict({**only, "data": str(tiny_bop), "cached": spec, "val_cached": spec, "steps": 1}),
        run,
        max_steps=1,
    )
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any(e.get("items") == 3 for e in log), log  # validation items from the split
    with pytest.raises(ValueError, match="cached_share"):
        DeepRMTrainConfig(cached_share=1.5)
    # a split without visible masks is refused by name (the items need them)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_bop, bare)
    for masks in (bare / "test").glob("*/mask_visib"):
        shutil.rmtree(masks)
    with pytest.raises(BopFormatError, match="not found"):  # a wrong path fails at once, before any view
        cached_views(str(tmp_path / "nope"), np.random.default_rng(0))
    with pytest.raises(BopFormatError, match="mask_visib"):
        next(cached_views(f"{bare}:test", np.random.default_rng(0)))
