"""The shared training loop and checkpoint format: resume is exact, files and logs are right, specs fail clearly."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from meshpose.nets.batch import load_genflow_model
from meshpose.nets.checkpoint import (
    Checkpoint,
    Provenance,
    WeightsSpec,
    available_weights,
    load_checkpoint,
    package_weights_path,
    save_checkpoint,
)
from meshpose.nets.genflow import GenFlowNet, GenFlowNetConfig
from meshpose.train.genflow import genflow_schedule
from meshpose.train.genflow_config import GenFlowTrainConfig
from meshpose.train.loop import LoopConfig, Schedule, TrainTask, open_run, setup_distributed, train_loop
from meshpose.train.losses import end_point_error, sequence_loss, sequence_weights

Batch = tuple[torch.Tensor, torch.Tensor]


class Toy(torch.nn.Module):
    """A tiny regression network with dropout, so that a resume must restore the RNG too."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


W_TRUE = torch.tensor([[0.5], [-1.0], [2.0], [0.25]])


def toy_batch(step: int, rank: int, n: int = 16) -> Batch:
    """The batch of one step on one rank: it depends on the step alone, as a resumable stream must."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(n, 4, generator=g)
    return x, x @ W_TRUE + 0.01 * torch.randn(n, 1, generator=g)


class ToyStream:
    """Batches from ``start`` on; raises KeyboardInterrupt when asked for the batch of step ``interrupt_at``."""

    def __init__(self, start: int, rank: int, interrupt_at: int | None = None) -> None:
        self.step, self.rank, self.interrupt_at = start, rank, interrupt_at

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.step == self.interrupt_at:
            raise KeyboardInterrupt
        self.step += 1
        return toy_batch(self.step - 1, self.rank)


def toy_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    x, y = batch
    loss = (model(x) - y).square().mean()
    return loss, {"loss": float(loss.detach()), "mse": float(loss.detach())}


def toy_validate(model: torch.nn.Module, step: int) -> dict[str, Any]:
    x, y = toy_batch(10_000, 0, 64)
    with torch.no_grad():
        return {"mse": float((model(x) - y).square().mean()), "step_seen": step}


def toy_task(interrupt_at: int | None = None) -> TrainTask[Batch]:
    torch.manual_seed(0)
    return TrainTask(
        method="toy",
        model=Toy(),
        net_config={"width": 8},
        make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-4),
        data=lambda start, rank: ToyStream(start, rank, interrupt_at),
        loss=toy_loss,
        validate=toy_validate,
        data_spec="toy:regression",
        run_config={"what": "toy"},
    )


LOOP = LoopConfig(
    schedule=Schedule(lr=1e-2, steps=12, warmup=3),
    grad_clip=1.0,
    log_every=2,
    val_every=4,
    ckpt_every=4,
    items_per_step=16,
    val_metric="mse",
    higher_is_better=False,
)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_runs_reach_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    """One call; two calls (max_steps); a Ctrl-C then a resume: all end at identical weights and optimiser state."""
    whole = train_loop(toy_task(), LOOP, tmp_path / "whole")
    assert whole.step == 12 and math.isfinite(whole.best)

    chunks = tmp_path / "chunks"
    first = train_loop(toy_task(), LOOP, chunks, max_steps=5)
    assert first.step == 5 and load_checkpoint(chunks / "last.pt").training["step"] == 5  # type: ignore[index]
    with pytest.raises(FileExistsError, match="--resume"):
        open_run(chunks, resume=False)
    second = train_loop(toy_task(), LOOP, chunks, resume_from=open_run(chunks, resume=True, method="toy"))
    assert second.step == 12

    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train_loop(toy_task(interrupt_at=7), LOOP, stopped)
    assert load_checkpoint(stopped / "last.pt").training["step"] == 7  # type: ignore[index]  # saved on Ctrl-C
    train_loop(toy_task(), LOOP, stopped, resume_from=open_run(stopped, resume=True))

    ref = load_checkpoint(tmp_path / "whole" / "last.pt")
    for run in (chunks, stopped):
        other = load_checkpoint(run / "last.pt")
        assert _same(ref.state_dict, other.state_dict)
        opt_a, opt_b = ref.training["optimizer"]["state"], other.training["optimizer"]["state"]  # type: ignore[index]
        assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
        assert _same(_state(tmp_path / "whole" / "model.pt"), _state(run / "model.pt"))
    # and the weights did learn something (dropout on, so only roughly)
    assert ref.training["val"]["mse"] < 0.9 * toy_validate(toy_task().model.eval(), 0)["mse"]  # type: ignore[index]


def test_run_folder_files_and_log(tmp_path: Path) -> None:
    seen: list[int] = []
    res = train_loop(toy_task(), LOOP, tmp_path, progress=lambda step, stats: seen.append(step))
    assert {"last.pt", "best.pt", "model.pt", "train_log.jsonl"} <= {p.name for p in tmp_path.iterdir()}
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if r.get("event") == "val"]
    assert rows[0]["event"] == "start" and [r["step"] for r in steps] == seen == [2, 4, 6, 8, 10, 12]
    for r in steps:
        assert {"loss", "mse", "lr", "items_per_s", "grad_norm", "data_wait_s"} <= set(r) and r["items_per_s"] > 0
    assert steps[-1]["lr"] == pytest.approx(LOOP.schedule(11))
    assert [v["step"] for v in vals] == [4, 8, 12] and res.val["step"] == 12
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.training is not None and best.training["best"] == min(v["mse"] for v in vals) == res.best
    model = load_checkpoint(tmp_path / "model.pt", "toy")
    assert model.training is None and model.net_config == {"width": 8}
    p = model.provenance
    assert (p.method, p.data, p.steps, p.config) == ("toy", "toy:regression", best.training["step"], {"what": "toy"})
    assert p.metrics["mse"] == res.best and p.date is not None
    assert _same(model.state_dict, best.state_dict)
    net = Toy()
    net.load_state_dict(model.state_dict)  # the exported weights load into a fresh network


def test_non_finite_steps_are_skipped(tmp_path: Path) -> None:
    task = toy_task()
    calls = {"n": 0}

    def bad_every_other(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        calls["n"] += 1
        loss, stats = toy_loss(model, batch)
        return (loss * float("nan") if calls["n"] % 2 else loss), stats

    task = dataclasses.replace(task, loss=bad_every_other, validate=None)
    train_loop(task, dataclasses.replace(LOOP, val_every=0), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines() if "loss" in line]
    assert all(r["skipped"] == 0.5 for r in rows)
    assert all(torch.isfinite(v).all() for v in _state(tmp_path / "model.pt").values())


def test_genflow_schedule_is_unchanged() -> None:
    """The loop's cosine schedule is exactly the one genflow has always trained with."""
    cfg = GenFlowTrainConfig(steps=1000, warmup=30, lr=4e-4)

    def old(step: int) -> float:
        warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
        prog = min(1.0, step / max(cfg.steps, 1))
        return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * prog)))

    sched = genflow_schedule(cfg)
    assert all(sched(s) == old(s) for s in range(0, 1200, 7))
    one = Schedule(lr=1.0, steps=100, warmup=10, kind="one-cycle", floor=0.04)
    assert one(0) == pytest.approx(0.04) and one(10) == pytest.approx(1.0) and one(100) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="schedule"):
        Schedule(1.0, 10, kind="linear")(0)  # type: ignore[arg-type]


def test_shared_losses() -> None:
    assert sequence_weights(3, 0.8) == pytest.approx([0.64, 0.8, 1.0])
    parts = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)]
    assert float(sequence_loss(parts, 0.5)) == pytest.approx(0.25 + 1.0 + 4.0)
    pred, gt = torch.zeros(1, 3, 2), torch.tensor([[[3.0, 4.0], [0.0, 1.0], [9.0, 9.0]]])
    assert float(end_point_error(pred, gt, torch.tensor([[1.0, 1.0, 0.0]]))) == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints and weights specs
# ----------------------------------------------------------------------------------------------------------
def test_weights_spec_parsing() -> None:
    assert WeightsSpec.parse(None) == WeightsSpec.parse("package") == WeightsSpec(package="model")
    assert WeightsSpec.parse("package:lmo") == WeightsSpec(package="lmo")
    assert WeightsSpec.parse("runs/x/model.pt") == WeightsSpec(package=None, path=Path("runs/x/model.pt"))
    assert (
        WeightsSpec.parse(Path("a.pt")).path == Path("a.pt") and str(WeightsSpec.parse("package:lmo")) == "package:lmo"
    )
    assert WeightsSpec.parse("package:lmo").resolve("genflow") == package_weights_path("genflow", "lmo")
    for bad in ("package:", "package:a/b", " "):
        with pytest.raises(ValueError):
            WeightsSpec.parse(bad)
    with pytest.raises(ValueError):
        WeightsSpec(package="model", path=Path("x.pt"))
    assert "model" in available_weights("genflow") and available_weights("no-such-method") == []


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    net = Toy()
    prov = Provenance.now("toy", data="toy:1", steps=3, config={"a": (1, 2)}, metrics={"x": torch.tensor(0.5).item()})
    ck = Checkpoint(net.state_dict(), {"width": 8, "dims": (1, 2)}, prov, {"step": 3, "note": "hi"})
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", ck)
    back = load_checkpoint(path, "toy")
    assert _same(back.state_dict, ck.state_dict) and back.training == {"step": 3, "note": "hi"}
    assert back.net_config == {"width": 8, "dims": [1, 2]} and back.provenance.config == {"a": [1, 2]}
    assert (back.method, back.provenance.steps, back.provenance.date) == ("toy", 3, prov.date)
    assert not list(tmp_path.glob("sub/*.tmp"))  # written atomically, nothing left over
    half = ck.weights_only(torch.float16)
    assert half.training is None and all(v.dtype == torch.float16 for v in half.state_dict.values())

    with pytest.raises(ValueError, match="holds toy weights, not genflow"):
        load_checkpoint(path, "genflow")
    with pytest.raises(ValueError, match="holds toy weights"):
        load_genflow_model(path)
    with pytest.raises(FileNotFoundError, match="train them with `meshpose train genflow`"):
        load_genflow_model(tmp_path / "missing.pt")
    with pytest.raises(
        FileNotFoundError, match=r"no shipped genflow weights 'package:nope'.*shipped: (package:\w+, )*package:model"
    ):
        load_genflow_model("package:nope")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a meshpose checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"something": 1}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="not a meshpose checkpoint"):
        load_checkpoint(tmp_path / "dict.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "text.pt")


def test_shipped_weights_in_the_old_format_load_unchanged(tmp_path: Path) -> None:
    """The shipped model.pt (written before this format) reads as genflow weights; re-saved in the new format it
    gives the same network bit for bit."""
    raw = torch.load(package_weights_path("genflow"), map_location="cpu", weights_only=True)
    ck = load_checkpoint("package", "genflow")
    assert ck.method == "genflow" and ck.training is None and ck.provenance.data == "novel:4000"
    assert ck.provenance.steps == raw["step"] and _same(ck.state_dict, raw["state_dict"])
    save_checkpoint(tmp_path / "model.pt", ck)
    old, new = load_genflow_model(), load_genflow_model(tmp_path / "model.pt")
    assert isinstance(new, GenFlowNet) and new.config == old.config == GenFlowNetConfig.from_dict(raw["net_config"])
    assert _same(old.state_dict(), new.state_dict())


def test_old_training_checkpoints_still_resume(tmp_path: Path) -> None:
    """A ``last.pt`` of the old format (``{"model", "optimizer", "step", "config"}``) resumes in the new loop."""
    train_loop(toy_task(), dataclasses.replace(LOOP, schedule=Schedule(1e-2, 4, 1)), tmp_path / "new")
    new = load_checkpoint(tmp_path / "new" / "last.pt")
    assert new.training is not None
    old_run = tmp_path / "old"
    old_run.mkdir()
    old_blob = {
        "model": new.state_dict,
        "optimizer": new.training["optimizer"],
        "step": 4,
        "config": {"data": "novel:3", "net": {"width": 8}},
        "best": 0.5,
        "val": {"add_recall": 0.5},
    }
    torch.save(old_blob, old_run / "last.pt")
    ck = open_run(old_run, resume=True, method="genflow")
    assert ck is not None and ck.training is not None
    assert (ck.method, ck.training["step"], ck.net_config, ck.provenance.data) == (
        "genflow",
        4,
        {"width": 8},
        "novel:3",
    )
    task = dataclasses.replace(toy_task(), method="genflow")
    res = train_loop(
        task, dataclasses.replace(LOOP, schedule=Schedule(1e-2, 6, 1), val_every=0), old_run, resume_from=ck
    )
    assert res.step == 6 and load_checkpoint(old_run / "model.pt", "genflow").provenance.steps == 6


# ----------------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init: str, run: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ctx = setup_distributed(device="cpu")
        assert (ctx.world, ctx.rank, ctx.owns_group) == (world, rank, False)
        task = toy_task()
        cfg = dataclasses.replace(LOOP, schedule=Schedule(1e-2, 6, 2), ckpt_every=3, val_every=3)
        train_loop(task, cfg, run, ctx=ctx)
        torch.save(task.model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ≈ 25 s on 2 cores: two processes start torch
def test_ddp_ranks_stay_in_sync(tmp_path: Path) -> None:
    """Two gloo ranks with different data end with the same weights; rank 0 alone writes, with both RNG states."""
    run = tmp_path / "run"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, str(run), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _same(a, b)
    last = load_checkpoint(run / "last.pt", "toy")
    assert last.training is not None and last.training["step"] == 6 and last.training["world"] == 2
    assert len(last.training["rng"]) == 2 and not torch.equal(
        last.training["rng"][0]["torch"], last.training["rng"][1]["torch"]
    )
    assert _same(last.state_dict, a)
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["world"] == 2 and [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert rows[-2]["items_per_s"] > 0  # 2 ranks × 16 items per step
