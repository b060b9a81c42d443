"""The one resumable training loop of the learned methods (single process or ``torchrun`` DDP).

A method brings a :class:`TrainTask` — its network, an optimiser factory, a data stream, a loss returning
``(loss, metrics)``, a validation hook — and :func:`train_loop` does the rest, the same way for every method:

* learning rate from a :class:`Schedule` (linear warm-up, then cosine decay to a floor, as ``genflow`` has always
  trained; or one-cycle), set before each step; gradient-norm clipping; a step whose loss or gradient is not
  finite is skipped (on every rank at once under DDP);
* DDP when launched by ``torchrun`` (``WORLD_SIZE > 1``; NCCL on GPUs, gloo on CPUs): the network is wrapped in
  ``DistributedDataParallel``, each rank draws its own data, rank 0 alone logs, validates and writes;
* a run folder with ``last.pt`` (everything to resume: network, optimiser, step, every rank's RNG states — written
  every ``ckpt_every`` steps, at the end of a call and on Ctrl-C), ``best.pt`` (the best validation so far by
  ``val_metric``), ``model.pt`` (the weights to use, exported from ``best.pt`` or else ``last.pt`` when a call
  ends) — all in the format of :mod:`meshpose.nets.checkpoint` — and ``train_log.jsonl``: one JSON object per
  logged step (mean loss and metrics since the previous line, ``lr``, ``items_per_s``, ``data_wait_s``) and
  one per validation (``"event": "val"``).

A run cut into calls (``max_steps``) or stopped by Ctrl-C and resumed reaches the same weights as one
uninterrupted call when its data stream depends only on the step it starts at (bit-identical on a CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, TextIO, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from meshpose.nets.checkpoint import Checkpoint, Provenance, load_checkpoint, save_checkpoint

__all__ = [
    "DistContext",
    "LoopConfig",
    "LoopResult",
    "Schedule",
    "TrainTask",
    "export_weights",
    "open_run",
    "setup_distributed",
    "teardown_distributed",
    "train_loop",
]

log = logging.getLogger(__name__)

B = TypeVar("B")


# ----------------------------------------------------------------------------------------------------------
# Schedule and options
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Learning rate per optimiser step.

    ``"cosine"`` (``genflow``'s): ``lr · min(1, (step+1)/warmup) · (floor + (1 - floor) · ½(1 + cos(π · step /
    steps)))`` — a linear warm-up over ``warmup`` steps times a cosine decay from ``lr`` to ``floor · lr`` over the
    run. ``"one-cycle"``: linear warm-up from ``floor · lr`` to ``lr`` over ``warmup`` steps, then a cosine decay to
    ``floor · lr`` at ``steps``. ``"constant"``: ``lr`` after the linear warm-up.

    Args:
        lr: peak learning rate.
        steps: the run's length (the decay spans it).
        warmup: warm-up steps.
        kind: the shape.
        floor: the final learning rate as a share of ``lr``.

    Example:
        >>> s = Schedule(lr=1e-3, steps=100, warmup=10)
        >>> round(s(0), 6), round(s(9), 6), round(s(100), 6)
        (0.0001, 0.000982, 0.0001)
    """

    lr: float
    steps: int
    warmup: int = 0
    kind: Literal["cosine", "one-cycle", "constant"] = "cosine"
    floor: float = 0.1

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            warm = min(1.0, (step + 1) / max(self.warmup, 1))
            prog = min(1.0, step / max(self.steps, 1))
            return self.lr * warm * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * prog)))
        if self.kind == "one-cycle":
            if step < self.warmup:
                return self.lr * (self.floor + (1.0 - self.floor) * step / max(self.warmup, 1))
            prog = min(1.0, (step - self.warmup) / max(self.steps - self.warmup, 1))
            return self.lr * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * prog)))
        if self.kind == "constant":
            return self.lr * min(1.0, (step + 1) / max(self.warmup, 1))
        raise ValueError(f"unknown schedule kind {self.kind!r} (cosine, one-cycle, constant)")


@dataclass(frozen=True)
class LoopConfig:
    """How :func:`train_loop` runs (the method's own options live in its task).

    Args:
        schedule: the learning rate per step; ``schedule.steps`` is the run's length.
        grad_clip: clip the gradient norm to this (``None``: no clipping; the norm is still logged).
        log_every: write a log line every this many steps.
        val_every: validate every this many steps and at the end of a call (0: never).
        ckpt_every: write ``last.pt`` every this many steps (and always at the end of a call).
        items_per_step: items in one step's batch on one process (for ``items_per_s``).
        val_metric: the validation figure ``best.pt`` is chosen by.
        higher_is_better: whether a larger ``val_metric`` is better.
        seed: the torch seed of rank ``r`` is ``seed + r`` (set by :func:`train_loop` when a run starts, before
            the task's data stream is opened; the network is usually built by the task earlier: seed it there).
    """

    schedule: Schedule
    grad_clip: float | None = 1.0
    log_every: int = 10
    val_every: int = 0
    ckpt_every: int = 100
    items_per_step: int = 1
    val_metric: str = "score"
    higher_is_better: bool = True
    seed: int = 0

    @property
    def steps(self) -> int:
        return self.schedule.steps


@dataclass
class TrainTask(Generic[B]):
    """What a learned method brings to :func:`train_loop`.

    Args:
        method: the method name written into checkpoints (``"genflow"``).
        model: the bare network (not DDP-wrapped); :func:`train_loop` moves it to the device.
        net_config: the network's config as a dict (stored with the weights so a reader can rebuild it).
        make_optimizer: builds the optimiser from the network's parameters (after the move to the device).
        data: ``data(start_step, rank)`` → an endless iterator of batches, for the run resuming at ``start_step``.
        loss: ``loss(model, batch)`` → ``(scalar loss, {name: float})``; ``model`` may be DDP-wrapped: call it,
            do not reach into it.
        to_device: moves a batch to the device (default: as is).
        validate: ``validate(model, step)`` → ``{name: float}`` with ``LoopConfig.val_metric``; run on rank 0 with
            the bare network in eval mode, under ``torch.no_grad`` — or ``None``.
        data_spec: what it trains on (provenance).
        run_config: the method's training options as a dict (saved in every checkpoint; the method reads them
            back on resume).
    """

    method: str
    model: torch.nn.Module
    net_config: dict[str, Any]
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    data: Callable[[int, int], Iterator[B]]
    loss: Callable[[torch.nn.Module, B], tuple[torch.Tensor, dict[str, float]]]
    to_device: Callable[[B, torch.device], B] = field(default=lambda batch, _device: batch)
    validate: Callable[[torch.nn.Module, int], dict[str, Any]] | None = None
    data_spec: str | None = None
    run_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopResult:
    """What a :func:`train_loop` call ended with.

    Args:
        step: the run's step count when the call stopped.
        stats: the last log line (empty when nothing was logged in this call).
        val: the last validation of this call (empty if none).
        best: the best ``val_metric`` of the run so far (``nan``: never validated).
    """

    step: int
    stats: dict[str, Any]
    val: dict[str, Any]
    best: float


# ----------------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly distributed) run.

    Args:
        world: processes in the run.
        rank: this process's rank (0 writes).
        device: where this process computes (``cuda:LOCAL_RANK`` when there is a GPU).
        owns_group: whether :func:`setup_distributed` started the process group (and so ends it).
    """

    world: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the process group ``torchrun`` (``WORLD_SIZE > 1``) or the caller set up; a single process otherwise.

    Args:
        device: where to compute (``None``: ``cuda:LOCAL_RANK`` if CUDA is available, else the CPU).
    """
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object) use the current device
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistContext(world, rank, device, owns)


def teardown_distributed(ctx: DistContext) -> None:
    """End the process group if :func:`setup_distributed` started it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------
def _rng_state(ctx: DistContext) -> dict[str, Any]:
    """This process's RNG states as plain data (python, numpy, torch CPU and CUDA)."""
    # numpy's legacy global generator: code that still draws from it must resume where it stopped
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
        "numpy": [kind, torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(py_state), gauss],
    }


def _set_rng_state(state: dict[str, Any], ctx: DistContext) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], ctx.device)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


def open_run(run_dir: str | Path, resume: bool, method: str | None = None) -> Checkpoint | None:
    """The run's ``last.pt`` to resume from, or ``None`` for a new run.

    A ``resume`` of a folder without ``last.pt`` starts a new run (as a run stopped before its first checkpoint
    has nothing to resume).

    Raises:
        FileExistsError: the folder holds a run and ``resume`` is false.
        ValueError: ``last.pt`` is not a training checkpoint (of ``method``).
    """
    path = Path(run_dir) / "last.pt"
    if not path.is_file():
        return None
    if not resume:
        raise FileExistsError(f"{run_dir} already holds a checkpoint: pass --resume to continue it or use a new folder")
    ck = load_checkpoint(path, method)
    if ck.training is None:
        raise ValueError(f"{path} holds weights only, no training state to resume")
    return ck


def export_weights(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best.pt") -> Path:
    """Write a run's weights ``model.pt`` (float32, no training state) to ``out_dir``; when ``out_dir`` is another
    folder, the run's ``config.json`` (with ``exported_from``) and ``train_log.jsonl`` go with it.

    Returns:
        The ``model.pt`` written.
    """
    run, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(run / checkpoint)
    training = ck.training or {}
    step = int(training.get("step", ck.provenance.steps or 0))
    val = training.get("val") or {}
    prov = replace(ck.provenance, steps=step, metrics=dict(val))
    path = save_checkpoint(out / "model.pt", replace(ck.weights_only(), provenance=prov))
    if out.resolve() != run.resolve():  # a copy of the run's config and log travels with the weights
        cfg = dict(training.get("config") or ck.provenance.config)
        cfg["exported_from"] = {"checkpoint": checkpoint, "step": step, "val": val}
        (out / "config.json").write_text(json.dumps(cfg, indent=1))
        if (run / "train_log.jsonl").is_file():
            (out / "train_log.jsonl").write_text((run / "train_log.jsonl").read_text())
    return path


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
def _write(logf: TextIO | None, record: dict[str, Any]) -> None:
    if logf is not None:
        logf.write(json.dumps(record) + "\n")
        logf.flush()


def train_loop(
    task: TrainTask[B],
    cfg: LoopConfig,
    run_dir: str | Path,
    *,
    resume_from: Checkpoint | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    ctx: DistContext | None = None,
) -> LoopResult:
    """Train ``task`` for ``cfg.steps`` steps (or ``max_steps`` more in this call), resumably; see the module doc.

    Args:
        task: the method's network, optimiser, data, loss and validation.
        cfg: the loop's options.
        run_dir: the run folder (created).
        resume_from: the run's ``last.pt`` (:func:`open_run`) to continue, or ``None`` for a new run.
        max_steps: stop after this many steps in this call.
        progress: called as ``progress(step, stats)`` at each log line (rank 0).
        ctx: the process's place in a distributed run (``None``: :func:`setup_distributed`, torn down at the end).

    Returns:
        The step reached, the last log line and validation, the best validation figure.

    Raises:
        KeyboardInterrupt: after writing ``last.pt`` (unless the interrupt came in the middle of an update).
    """
    own_ctx = ctx is None
    ctx = ctx or setup_distributed()
    run = Path(run_dir)
    rank0 = ctx.rank == 0
    net = task.model.to(ctx.device)
    opt = task.make_optimizer(net)
    step, best = 0, float("nan")
    last_val: dict[str, Any] = {}
    if resume_from is not None:
        tr = resume_from.training or {}
        net.load_state_dict({k.removeprefix("module."): v for k, v in resume_from.state_dict.items()})
        opt.load_state_dict(tr["optimizer"])
        step = int(tr["step"])
        best = float(tr.get("best", float("nan")))
        last_val = dict(tr.get("val") or {})
        states = tr.get("rng") or []
        if len(states) == ctx.world:
            _set_rng_state(states[ctx.rank], ctx)
        else:  # another world size (or a file without RNG states): a fresh, step-dependent seed
            torch.manual_seed(cfg.seed + ctx.rank + 1_000_003 * step)
    else:
        torch.manual_seed(cfg.seed + ctx.rank)
    model: torch.nn.Module = net
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    if rank0:
        run.mkdir(parents=True, exist_ok=True)
    logf = open(run / "train_log.jsonl", "a") if rank0 else None  # noqa: SIM115
    _write(
        logf,
        {
            "event": "start" if step == 0 else "resume",
            "step": step,
            "device": str(ctx.device),
            "world": ctx.world,
            "cuda": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None,
            "threads": torch.get_num_threads(),
            "time": time.time(),
        },
    )

    def better(v: float) -> bool:
        if not math.isfinite(best):
            return True
        return v > best if cfg.higher_is_better else v < best

    def checkpoint(rng: list[dict[str, Any]]) -> Checkpoint:
        training = {
            "step": step,
            "optimizer": opt.state_dict(),
            "rng": rng,
            "best": best,
            "val": last_val,
            "config": task.run_config,
            "world": ctx.world,
        }
        prov = Provenance.now(task.method, data=task.data_spec, steps=step, config=task.run_config)
        return Checkpoint(net.state_dict(), task.net_config, prov, training)

    def all_rng() -> list[dict[str, Any]]:  # every rank's states, gathered on every rank (a collective)
        mine = _rng_state(ctx)
        if not ctx.distributed:
            return [mine]
        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, mine)
        return gathered

    stop = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    acc: dict[str, float] = {}
    n_acc, t_data = 0, 0.0
    t_last = time.perf_counter()
    last_stats: dict[str, Any] = {}
    saved_step = step if resume_from is not None else -1
    updating = False
    model.train()
    it = task.data(step, ctx.rank)
    try:
        while step < stop:
            t0 = time.perf_counter()
            batch = task.to_device(next(it), ctx.device)
            t_data += time.perf_counter() - t0
            lr = cfg.schedule(step)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, stats = task.loss(model, batch)
            stats = {k: float(v) for k, v in stats.items()}
            finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
            if ctx.distributed:  # a rank that skipped its backward would leave the others waiting
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            opt.zero_grad(set_to_none=True)
            if bool(finite.item() > 0):
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(
                    net.parameters(), cfg.grad_clip if cfg.grad_clip is not None else math.inf
                )
                if torch.isfinite(gn):
                    updating = True
                    opt.step()
                    updating = False
                stats["grad_norm"] = float(gn)
            else:
                stats["skipped"] = 1.0
            step += 1
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            end = step == stop
            if rank0 and (step % cfg.log_every == 0 or end):
                dt = max(time.perf_counter() - t_last, 1e-9)
                last_stats = {k: v / n_acc for k, v in acc.items()}
                last_stats.update(
                    step=step,
                    lr=lr,
                    items_per_s=n_acc * cfg.items_per_step * ctx.world / dt,
                    data_wait_s=t_data / n_acc,
                    time=time.time(),
                )
                _write(logf, last_stats)
                if progress is not None:
                    progress(step, last_stats)
                acc, n_acc, t_last, t_data = {}, 0, time.perf_counter(), 0.0
            new_best = False
            if rank0 and task.validate is not None and cfg.val_every and (step % cfg.val_every == 0 or end):
                net.eval()
                try:
                    with torch.no_grad():
                        last_val = dict(task.validate(net, step))
                finally:
                    net.train()
                last_val["step"] = step
                _write(logf, {"event": "val", **last_val, "time": time.time()})
                value = float(last_val[cfg.val_metric])
                if better(value):
                    best, new_best = value, True
            ckpt_now = step % cfg.ckpt_every == 0 or end
            if ckpt_now or new_best:
                # a collective at the checkpoint steps (the same on every rank); ``best.pt`` alone (rank 0 only)
                # keeps no RNG states under DDP: runs resume from ``last.pt``
                rng = all_rng() if ckpt_now else [] if ctx.distributed else [_rng_state(ctx)]
                if rank0:
                    if new_best:
                        save_checkpoint(run / "best.pt", checkpoint(rng))
                    if ckpt_now:
                        save_checkpoint(run / "last.pt", checkpoint(rng))
                        saved_step = step
        if rank0 and step > 0:
            export_weights(run, run, "best.pt" if (run / "best.pt").is_file() else "last.pt")
    except KeyboardInterrupt:
        if rank0 and not updating and step > saved_step and step > 0:
            save_checkpoint(run / "last.pt", checkpoint([_rng_state(ctx)] if ctx.world == 1 else []))
            log.warning("interrupted at step %d: wrote %s (resume it)", step, run / "last.pt")
        raise
    finally:
        if logf is not None:
            logf.close()
        close = getattr(it, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        if own_ctx:
            teardown_distributed(ctx)
    return LoopResult(step, last_stats, last_val, best)
