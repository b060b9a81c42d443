"""Pre-rendered scenes (``cached``) in every trainer's data: the share of views they get, the methods' item makers
on them, and a ``genflow`` run fed and validated from a pre-rendered split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.refine.genflow import GenFlowConfig, GenFlowRefiner
from meshpose.synth import resolve_objects
from meshpose.train.adapt_config import AdaptConfig
from meshpose.train.cached_scenes import cached_views
from meshpose.train.common import TrainOptions, draw_held_out, scene_items
from meshpose.train.genflow import GenFlowTrainConfig, make_items, train_genflow
from meshpose.train.jointloss_config import JointLossTrainConfig

TINY_NET = {"feature_dim": 16, "context_dim": 16, "hidden_dim": 16, "motion_dim": 16, "encoder_dims": [8, 12, 16]}


def _sources(cfg: TrainOptions, draws: int) -> Counter[str]:
    """Where the views of ``draws`` draws of :func:`scene_items` came from (``gl`` or ``cached``)."""
    rng = np.random.default_rng(5)
    stream = scene_items(cfg, resolve_objects(cfg.data), cfg.scene_config(), rng, lambda s: [s.info["renderer"]])
    return Counter(src for _ in range(draws) for src in next(stream))


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_pre_rendered_views_get_their_share(tiny_bop: Path, share: float) -> None:
    """A draw is ``views_per_scene`` views from the split or from a GL scene: the split gets ``cached_share`` of
    the views (0: none, 1: all)."""
    cfg = TrainOptions(
        data="novel:3", image_size=(96, 72), views_per_scene=2, cached=f"{tiny_bop}:test", cached_share=share
    )
    got = _sources(cfg, 40)
    assert sum(got.values()) == 80 and set(got) <= {"gl", "cached"}
    if share in (0.0, 1.0):
        assert got["cached"] == 80 * share
    else:
        assert 0.3 < got["cached"] / 80 < 0.7, got  # binomial over 40 draws: ±0.08 one sigma
    with pytest.raises(ValueError, match="cached_share"):
        TrainOptions(cached_share=-0.1)


def test_held_out_views_come_from_val_cached(tiny_bop: Path) -> None:
    """``val_cached``: the validation views are the split's, the same for every call."""
    cfg = TrainOptions(data="novel:3", val_cached=f"{tiny_bop}:test")
    picks = [draw_held_out(cfg, 3, cfg.scene_config(), lambda s, _rng: [s.info["im_id"]]) for _ in range(2)]
    assert picks[0] == picks[1] and len(picks[0]) == 3
    views = cached_views(f"{tiny_bop}:test", np.random.default_rng(0))
    assert next(views).info["renderer"] == "cached"


def test_genflow_trains_and_validates_on_a_pre_rendered_split(tiny_bop: Path, tmp_path: Path) -> None:
    """``genflow`` items are cut from pre-rendered views as from GL ones; a run fed only from the split validates
    on it (its objects are the split's own meshes)."""
    spec = f"{tiny_bop}:test"
    cfg = GenFlowTrainConfig.from_dict(
        {
            "data": str(tiny_bop),
            "cached": spec,
            "cached_share": 1.0,
            "val_cached": spec,
            "val_images": 2,
            "crop_size": 64,
            "iterations": 1,
            "batch_size": 2,
            "views_per_scene": 1,
            "workers": 0,
            "val_every": 1,
            "net": TINY_NET,
        }
    )
    view = next(cached_views(spec, np.random.default_rng(1)))
    items = make_items(view, np.random.default_rng(1), cfg)
    assert items and all(it["obs_rgb"].shape == (64, 64, 3) for it in items)
    assert all(it["ren_mask"].any() for it in items)
    run = tmp_path / "run"
    refiner = lambda net: GenFlowRefiner(GenFlowConfig(stages=((64, 1.4, 1, 1),)), model=net)  # noqa: E731
    train_genflow(cfg, run, refiner=refiner, steps=1)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    val = [e for e in log if e.get("event") == "val"]
    assert val and val[-1]["instances"] >= 2, log
    assert json.loads((run / "config.json").read_text())["val_cached"] == spec


def test_a_stream_that_gives_nothing_fails_instead_of_waiting(tiny_bop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Draws that give no item many times in a row (e.g. a split whose instances are all under ``min_visib``) end
    the stream with a message naming the sources, rather than leaving the trainer waiting forever."""
    monkeypatch.setattr("meshpose.train.common.MAX_EMPTY_DRAWS", 4)
    cfg = TrainOptions(data="novel:3", image_size=(96, 72), views_per_scene=1, cached=f"{tiny_bop}:test")
    stream = scene_items(cfg, resolve_objects("novel:3"), cfg.scene_config(), np.random.default_rng(0), lambda s: [])
    with pytest.raises(RuntimeError, match=r"no training item in 4 draws in a row from novel:3 and .*:test"):
        for _ in range(5):
            next(stream)
    # one item now and then keeps it going
    calls = iter(range(100))
    keep = scene_items(
        cfg,
        resolve_objects("novel:3"),
        cfg.scene_config(),
        np.random.default_rng(0),
        lambda s: [1][: next(calls) % 3 == 0],
    )
    assert sum(len(next(keep)) for _ in range(12)) >= 3


@pytest.mark.parametrize("option", ["cached", "val_cached"])
def test_trainers_on_given_frames_refuse_pre_rendered_scenes(option: str) -> None:
    """``jointloss`` and ``adapt`` train on the user's frames: a pre-rendered split is refused, not ignored."""
    for config in (JointLossTrainConfig, AdaptConfig):
        with pytest.raises(ValueError, match="do not apply"):
            config(**{option: "somewhere:test"})


@pytest.mark.parametrize("method", ["genflow", "picopose"])
def test_a_wrong_split_is_refused_before_the_run_starts(method: str, tiny_bop: Path, tmp_path: Path) -> None:
    """A ``cached`` / ``val_cached`` that names no dataset or split fails at once with the reason (exit 2), not in a
    data worker or at the first validation, and leaves no run folder behind."""
    runner = CliRunner()
    for over, message in (
        ({"cached": str(tmp_path / "nope")}, "not found"),
        ({"val_cached": f"{tiny_bop}:nosplit"}, "nosplit"),
    ):
        run = tmp_path / f"run_{len(message)}"
        args = ["train", method, "--data", "novel:3", "--out", str(run), "--steps", "1", "--workers", "1"]
        res = runner.invoke(app, [*args, "--config", json.dumps(over)])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert not run.exists()
