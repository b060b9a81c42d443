"""``meshpose train``: train a learned preset on synthetic scenes drawn on the fly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from meshpose.cli.common import Verbose, fail, json_object, log, setup_logging

if TYPE_CHECKING:
    from meshpose.train.loop import LoopResult

__all__ = ["train"]

C = TypeVar("C")

#: Learned presets with a trainer.
TRAINABLE = ("genflow", "deeprm", "picopose", "picopose-similarity", "abstract", "jointloss")


def train(
    method: Annotated[
        str,
        typer.Argument(
            help="Learned preset to train (genflow, deeprm, picopose, picopose-similarity, abstract, jointloss)."
        ),
    ],
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
    detections: Annotated[
        Path | None,
        typer.Option(
            help="jointloss: BOP detections JSON (boxes + masks) of the unlabeled RGB-D frames of --data (a BOP "
            "dataset whose poses are never read)."
        ),
    ] = None,
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
    if data is not None and objects is not None:
        raise fail("give one of --data and --objects, not both")
    if data is None and objects is None and not (resume and (out / "last.pt").is_file()):
        hint = f" ({out} has no last.pt to resume)" if resume else ""
        raise fail(f"give the training objects: --data novel:N (generated) or --objects MESHES_OR_BOP_DATASET{hint}")
    # On --resume the run's saved options (its objects included) are used, so the objects may be left out.
    source = str(data if data is not None else objects) if (data or objects) else None
    known = objects is not None
    opts: dict[str, Any] = dict(batch_size=batch_size, threads=threads, val_every=val_every, seed=seed)
    if detections is not None:
        if method != "jointloss":
            raise fail("--detections is an option of jointloss only (it trains on unlabeled frames + detections)")
        opts["detections"] = str(detections)
    if method == "deeprm":
        if workers:
            raise fail("deeprm draws its data in the training process: --workers is not an option of it")
    else:
        opts["workers"] = workers
    trainer = _TRAINERS[method]()
    try:
        cfg = _train_config(trainer.config, source, known, config, opts)
        result = trainer.run(cfg, out, progress=trainer.progress, resume=resume, steps=steps, max_steps=max_steps)
    except trainer.errors as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"stopped at step {result.step}; last validation {result.val}; run folder {out}")


def _train_config(cls: type[C], source: str | None, known: bool, config: str | None, opts: dict[str, Any]) -> C:
    """A training config of class ``cls`` (a :class:`~meshpose.train.common.TrainOptions`: ``to_dict``/``from_dict``
    with a nested ``net``) from the defaults, the ``--config`` JSON and the command-line options given.

    Raises:
        ValueError: ``--config`` is not a JSON object or names unknown options.
    """
    base = (cls(data=source) if source is not None else cls()).to_dict()  # type: ignore[call-arg,attr-defined]
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


@dataclass(frozen=True)
class _Trainer:
    """A method's trainer as the command runs it.

    Args:
        config: its options class.
        run: ``run(cfg, out, *, progress, resume, steps, max_steps)`` trains (:func:`meshpose.train.genflow.
            train_genflow` and the others).
        progress: shows a log line.
        errors: the exceptions reported as a failure message (others end with a traceback).
    """

    config: type[Any]
    run: Callable[..., LoopResult]
    progress: Callable[[int, dict[str, float]], None]
    errors: tuple[type[Exception], ...] = (ValueError, OSError, RuntimeError)


def _show(fmt: str, *keys: str) -> Callable[[int, dict[str, float]], None]:
    """A progress callback that logs ``fmt % (step, stats[key] for key in keys)``."""

    def show(step: int, stats: dict[str, float]) -> None:
        log.info(fmt, step, *(stats[k] for k in keys))

    return show


def _genflow() -> _Trainer:
    """``meshpose train genflow``: validation measures the refiner with the network being trained."""
    from meshpose.nets.genflow import GenFlowNet
    from meshpose.refine.genflow import GenFlowConfig, GenFlowRefiner
    from meshpose.train.genflow import GenFlowTrainConfig, train_genflow

    def refiner(net: GenFlowNet) -> GenFlowRefiner:
        return GenFlowRefiner(GenFlowConfig(device=str(next(net.parameters()).device)), model=net)

    fmt = "step %d loss %.4f flow %.4f pose %.4f ok %.2f→%.2f %.2f samples/s"
    show = _show(fmt, "loss", "flow", "pose", "ok_init", "ok_last", "items_per_s")
    return _Trainer(GenFlowTrainConfig, partial(train_genflow, refiner=refiner), show, (ValueError, OSError))


def _deeprm() -> _Trainer:
    """``meshpose train deeprm``."""
    from meshpose.train.deeprm import DeepRMTrainConfig, train_deeprm

    fmt = "step %d loss %.4f dpml %.4f epe %.4f ok %.2f→%.2f %.2f items/s"
    return _Trainer(
        DeepRMTrainConfig, train_deeprm, _show(fmt, "loss", "dpml", "epe", "ok_init", "ok_last", "items_per_s")
    )


def _picopose() -> _Trainer:
    """``meshpose train picopose``: the stage-1 patch features of the ``picopose`` coarse estimator."""
    from meshpose.train.picopose import PicoPoseTrainConfig, train_picopose

    fmt = "step %d loss %.4f acc %.3f tau %.3f %.2f pairs/s"
    return _Trainer(PicoPoseTrainConfig, train_picopose, _show(fmt, "loss", "acc", "temperature", "items_per_s"))


def _picopose_similarity() -> _Trainer:
    """``meshpose train picopose-similarity``: the learned stage 2 of the ``picopose`` coarse estimator."""
    from meshpose.train.picopose_similarity import SimilarityTrainConfig, train_similarity

    fmt = "step %d loss %.4f err %.2f px (identity %.2f) ok4 %.2f %.2f pairs/s"
    show = _show(fmt, "loss", "err_px", "err0_px", "ok4", "items_per_s")
    return _Trainer(SimilarityTrainConfig, train_similarity, show)


def _abstract() -> _Trainer:
    """``meshpose train abstract``: the descriptor network of the ``abstract`` refiner."""
    from meshpose.train.abstract import AbstractTrainConfig, train_abstract

    fmt = "step %d loss %.4f pos %.3f neg %.3f hard_ok %.3f %.2f pairs/s"
    show = _show(fmt, "loss", "pos_dist", "neg_dist", "hard_ok", "items_per_s")
    return _Trainer(AbstractTrainConfig, train_abstract, show)


def _jointloss() -> _Trainer:
    """``meshpose train jointloss``: the RGB-D estimator + refiner from unlabeled frames and their detections."""
    from meshpose.train.jointloss import JointLossTrainConfig, train_jointloss

    def show(step: int, stats: dict[str, float]) -> None:
        if stats.get("stage") == 1.0:
            log.info(
                "step %d (weak) loss %.4f est %.4f m ref %.4f m",
                step,
                stats["loss"],
                stats["est_weak"],
                stats.get("ref_weak", float("nan")),
            )
        else:
            log.info(
                "step %d (joint) loss %.4f iou %.3f→%.3f geo %.4f→%.4f m",
                step,
                stats["loss"],
                stats["est_iou"],
                stats["ref_iou"],
                stats["est_geo"],
                stats["ref_geo"],
            )

    return _Trainer(JointLossTrainConfig, train_jointloss, show)


#: the trainer of each trainable preset (imported when used)
_TRAINERS: dict[str, Callable[[], _Trainer]] = {
    "genflow": _genflow,
    "deeprm": _deeprm,
    "picopose": _picopose,
    "picopose-similarity": _picopose_similarity,
    "abstract": _abstract,
    "jointloss": _jointloss,
}
