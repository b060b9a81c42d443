"""``meshpose train``: train a learned preset on synthetic scenes drawn on the fly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from meshpose.cli.common import Verbose, fail, json_object, log, setup_logging

__all__ = ["train"]

C = TypeVar("C")

#: Learned presets with a trainer.
TRAINABLE = ("genflow", "deeprm", "picopose")


def train(
    method: Annotated[str, typer.Argument(help="Learned preset to train (genflow, deeprm, picopose).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, config.json, train_log.jsonl.")],
    data: Annotated[
        str | None, typer.Option(help="Training objects: novel:N (generated) or a mesh folder / BOP dataset.")
    ] = None,
    objects: Annotated[
        Path | None,
        typer.Option(
            help="Known-object training: a mesh folder or BOP dataset; scenes of these objects only, validation "
            "on held-out scenes of them."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Total optimiser steps of the run (LR schedule length); on --resume, a new length."),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps in this call (a chunk).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its last checkpoint.")] = False,
    batch_size: Annotated[int | None, typer.Option(help="Items per step (per process under torchrun).")] = None,
    workers: Annotated[int | None, typer.Option(help="Data processes (0: in the training process).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads of the training process.")] = None,
    val_every: Annotated[int | None, typer.Option(help="Validate every N steps (0: never).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the objects and the data stream.")] = None,
    config: Annotated[
        str | None,
        typer.Option(help='Training options as JSON, e.g. \'{"crop_size": 96, "net": {"hidden_dim": 32}}\'.'),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Train a learned refiner on synthetic scenes drawn on the fly; resumable, logs losses and validation.

    The run folder gets ``last.pt`` (resumed by ``--resume``), ``best.pt`` (best validation), ``model.pt`` (the
    weights to refine with: ``meshpose refine --method genflow --config '{"weights": "RUN/model.pt"}'``),
    ``config.json`` and ``train_log.jsonl``.
    """
    setup_logging(verbose)
    if method not in TRAINABLE:
        raise fail(f"no trainer for '{method}' (trainable: {', '.join(TRAINABLE)})")
    if (data is None) == (objects is None):
        raise fail("give the training objects: --data novel:N (generated) or --objects MESHES_OR_BOP_DATASET")
    source = str(data if data is not None else objects)
    known = objects is not None
    opts: dict[str, Any] = dict(batch_size=batch_size, threads=threads, val_every=val_every, seed=seed)
    run_kw: dict[str, Any] = dict(resume=resume, steps=steps, max_steps=max_steps)
    if method == "deeprm":
        if workers:
            raise fail("deeprm draws its data in the training process: --workers is not an option of it")
        _train_deeprm(source, known, out, opts, config, run_kw)
    elif method == "picopose":
        _train_picopose(source, known, out, {**opts, "workers": workers}, config, run_kw)
    else:
        _train_genflow(source, known, out, {**opts, "workers": workers}, config, run_kw)


def _train_config(cls: type[C], source: str, known: bool, config: str | None, opts: dict[str, Any]) -> C:
    """A training config of class ``cls`` (``GenFlowTrainConfig``, ``DeepRMTrainConfig``: ``to_dict``/``from_dict``
    with a nested ``net``) from the defaults, the ``--config`` JSON and the command-line options given.

    Raises:
        ValueError: ``--config`` is not a JSON object or names unknown options.
    """
    base = cls(data=source).to_dict()  # type: ignore[call-arg,attr-defined]
    if known:  # known objects: validate on held-out scenes of them
        base["val_objects"] = source
    extra = json_object(config, "--config", "training options")
    unknown = sorted(set(extra) - set(base)) + sorted(set(extra.get("net", {})) - set(base["net"]))
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}")
    base.update({k: v for k, v in extra.items() if k != "net"})
    base["net"].update(extra.get("net", {}))
    cfg: C = cls.from_dict(base)  # type: ignore[attr-defined]
    return replace(cfg, **{k: v for k, v in opts.items() if v is not None})  # type: ignore[type-var]


def _train_genflow(
    source: str, known: bool, out: Path, opts: dict[str, Any], config: str | None, run_kw: dict[str, Any]
) -> None:
    """``meshpose train genflow``."""
    from meshpose.nets.genflow import GenFlowNet
    from meshpose.refine.genflow import GenFlowConfig, GenFlowRefiner
    from meshpose.train.genflow import GenFlowTrainConfig, train_genflow

    try:
        cfg = _train_config(GenFlowTrainConfig, source, known, config, opts)

        def show(step: int, stats: dict[str, float]) -> None:
            log.info(
                "step %d loss %.4f flow %.4f pose %.4f ok %.2f→%.2f %.2f samples/s",
                step,
                stats["loss"],
                stats["flow"],
                stats["pose"],
                stats["ok_init"],
                stats["ok_last"],
                stats["items_per_s"],
            )

        def refiner(net: GenFlowNet) -> GenFlowRefiner:  # what validation measures: the refiner with this network
            return GenFlowRefiner(GenFlowConfig(device=str(next(net.parameters()).device)), model=net)

        result = train_genflow(cfg, out, refiner=refiner, progress=show, **run_kw)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"stopped at step {result.step}; last validation {result.val}; run folder {out}")


def _train_deeprm(
    source: str, known: bool, out: Path, opts: dict[str, Any], config: str | None, run_kw: dict[str, Any]
) -> None:
    """``meshpose train deeprm``."""
    from meshpose.train.deeprm import DeepRMTrainConfig, train_deeprm

    try:
        cfg = _train_config(DeepRMTrainConfig, source, known, config, opts)

        def show(step: int, stats: dict[str, float]) -> None:
            log.info(
                "step %d loss %.4f dpml %.4f epe %.4f ok %.2f→%.2f %.2f items/s",
                step,
                stats["loss"],
                stats["dpml"],
                stats["epe"],
                stats["ok_init"],
                stats["ok_last"],
                stats["items_per_s"],
            )

        result = train_deeprm(cfg, out, progress=show, **run_kw)
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"stopped at step {result.step}; last validation {result.val}; run folder {out}")


def _train_picopose(
    source: str, known: bool, out: Path, opts: dict[str, Any], config: str | None, run_kw: dict[str, Any]
) -> None:
    """``meshpose train picopose``: the stage-1 patch features of the ``picopose`` coarse estimator."""
    from meshpose.train.picopose import PicoPoseTrainConfig, train_picopose

    try:
        cfg = _train_config(PicoPoseTrainConfig, source, known, config, opts)

        def show(step: int, stats: dict[str, float]) -> None:
            log.info(
                "step %d loss %.4f acc %.3f tau %.3f %.2f pairs/s",
                step,
                stats["loss"],
                stats["acc"],
                stats["temperature"],
                stats["items_per_s"],
            )

        result = train_picopose(cfg, out, progress=show, **run_kw)
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"stopped at step {result.step}; last validation {result.val}; run folder {out}")
