"""``meshpose adapt``: fine-tune a learned refiner on the user's own unlabeled images (self-supervised)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshpose.cli.common import Threads, Verbose, fail, json_object, log, set_threads, setup_logging

__all__ = ["adapt"]


def _range(text: str | None) -> tuple[int, int] | None:
    """``A:B`` → ``(A, B)``."""
    if text is None:
        return None
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError as exc:
        raise ValueError(f"--images-range {text!r}: give A:B (use the images with A ≤ im_id < B)") from exc
    if a >= b:
        raise ValueError(f"--images-range {text!r}: need A < B")
    return a, b


def adapt(
    method: Annotated[str, typer.Argument(help="Learned refiner to adapt: genflow, abstract or deeprm.")],
    images: Annotated[Path, typer.Option(help="The user's BOP dataset: images, cameras and meshes (no labels).")],
    detections: Annotated[Path, typer.Option(help="BOP default-detections JSON with masks (COCO RLE).")],
    out: Annotated[
        Path,
        typer.Option(help="Run folder: pseudo_poses.json, last.pt, best.pt, model.pt, config.json, train_log.jsonl."),
    ],
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    config: Annotated[
        str | None,
        typer.Option(
            help="Adaptation options as JSON (AdaptConfig fields; abstract: AbstractAdaptConfig; deeprm: "
            "DeepRMAdaptConfig), "
            'e.g. \'{"lr": 1e-5, "val_share": 0.3}\'.'
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Total optimiser steps (on --resume, a new length).")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps in this call.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT.")] = False,
    images_range: Annotated[
        str | None, typer.Option("--images-range", help="Use only the images with A ≤ im_id < B, given as A:B.")
    ] = None,
    estimator_config: Annotated[
        str | None,
        typer.Option(
            "--estimator-config", help="picopose options of the pseudo poses as JSON, e.g. '{\"templates\": 42}'."
        ),
    ] = None,
    threads: Threads = None,
    verbose: Verbose = False,
) -> None:
    """Adapt a learned refiner to your camera and lighting from unlabeled images: pseudo poses from picopose +
    genflow + contour (cached), then training toward them — genflow: its own flow and pose loss and self-supervised
    render-and-compare (colour + mask IoU, + geometry with depth), confident detections first; abstract and deeprm:
    their training loss on items cut from your images at the confident pseudo poses, mixed with synthetic scenes of
    your meshes — a held-out share of the images choosing best.pt.
    Ground-truth poses are never read. Use the result with ``--config '{"weights": "OUT/model.pt"}'``."""
    setup_logging(verbose)
    from meshpose.run.adapt import adapt as run_adapt

    def show_pseudo(done: int, total: int, key: tuple[int, int]) -> None:
        log.info("pseudo poses: %d/%d (scene %d image %d)", done, total, key[0], key[1])

    #: what a log line shows, by the keys the method's loss reports (genflow's are the default)
    shown = {
        "pos_dist": ("loss", "pos_dist", "neg_dist", "hard_ok"),  # abstract: the descriptor loss
        "dpml": ("loss", "dpml", "pm_init", "pm_last"),  # deeprm: point matching toward the pseudo poses
    }

    def show(step: int, stats: dict[str, float]) -> None:
        keys = next((v for k, v in shown.items() if k in stats), ("loss", "loss_start", "loss_last", "iou"))
        text = " ".join(f"{k} {stats.get(k, float('nan')):.4f}" for k in keys)
        log.info("step %d %s %.2f items/s", step, text, stats.get("items_per_s", float("nan")))

    try:
        set_threads(threads)
        opts = json_object(config, "--config", "adaptation options")
        if threads is not None:
            opts.setdefault("threads", threads)
        result = run_adapt(
            method,
            images,
            detections,
            out,
            split=split,
            options=opts,
            steps=steps,
            max_steps=max_steps,
            resume=resume,
            images_range=_range(images_range),
            estimator_config=json_object(estimator_config, "--estimator-config", "estimator options"),
            progress=show,
            pseudo_progress=show_pseudo,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"stopped at step {result.step}; last validation {result.val}; run folder {out}")
