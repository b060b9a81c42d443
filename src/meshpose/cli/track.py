"""``meshpose track``: follow objects through each scene's frames (in ``im_id`` order) from their first poses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshpose.cli.common import (
    Address,
    ExecutorName,
    ModelsDir,
    Restart,
    Threads,
    Verbose,
    Workers,
    exit_on_failures,
    fail,
    json_object,
    run_with_progress,
    set_threads,
    setup_logging,
)

__all__ = ["track"]


def track(
    dataset: Annotated[Path, typer.Argument(help="BOP dataset folder; each scene is a sequence (im_id order).")],
    out: Annotated[Path, typer.Option(help="Output BOP results CSV, one row per object per frame (resumed).")],
    inits: Annotated[
        Path | None,
        typer.Option(
            help="BOP results CSV of start poses: each object instance starts at the first frame it has a row in "
            "(later rows of it are ignored, so `meshpose perturb` output works)."
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="Refiner preset or chain (contour, contour+icp, genflow+contour).")] = (
        "contour"
    ),
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help="The speed configuration: contour at one level of 64 px, 2 iterations; a lost track's recovery"
            " stops after 25 ms per frame.",
        ),
    ] = False,
    detections: Annotated[
        Path | None,
        typer.Option(
            help="BOP detections JSON: start poses (estimate) of objects without inits; each frame, tracked poses "
            "fitted to their detection masks, and tracks that drifted off or whose object was moved re-estimated."
        ),
    ] = None,
    estimator: Annotated[str, typer.Option(help="Coarse estimator for --detections.")] = "picopose",
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    models_dir: ModelsDir = "models",
    config: Annotated[
        str | None,
        typer.Option(help="Refiner options as JSON (as refine --config takes them), e.g. '{\"max_lines\": 100}'."),
    ] = None,
    tracker_config: Annotated[
        str | None,
        typer.Option(
            "--tracker-config", help="Tracker options as JSON (TrackerConfig fields), e.g. '{\"lost_after\": 3}'."
        ),
    ] = None,
    max_images: Annotated[int | None, typer.Option(min=0, help="Stop after this many frames.")] = None,
    no_depth: Annotated[bool, typer.Option("--no-depth", help="Do not give depth to RGB methods.")] = False,
    restart: Restart = False,
    threads: Threads = None,
    executor: ExecutorName = "serial",
    workers: Workers = None,
    address: Address = None,
    verbose: Verbose = False,
) -> None:
    """Track objects through every scene of a BOP dataset; writes each finished frame at once and resumes.

    Every frame gets one row per started object (time: the frame's). Frames that go badly for an object (low
    score, refiner failure, out of the image, lost) keep their row and are logged with the reason in
    RESULTS.failures.jsonl, as are frames that cannot be read (the tracks go on from their predictions). Exit
    code: 0 when every frame tracked every object, 3 when some failed, 2 for bad usage.
    """
    setup_logging(verbose)
    from meshpose.io.bop import BopDataset
    from meshpose.io.detections import read_detections
    from meshpose.io.results import read_inits
    from meshpose.refine.registry import make_refiner
    from meshpose.run import make_executor
    from meshpose.run.track import TrackSpec, track_dataset
    from meshpose.track import TrackerConfig, fast_refiner_options, fast_tracker_options

    try:
        set_threads(threads)
        if inits is None and detections is None:
            raise ValueError("give --inits (start poses) or --detections (or both)")
        ds = BopDataset(dataset, split, models_dir=models_dir)
        overrides = json_object(config, "--config", "refiner options")
        if fast:
            overrides = fast_refiner_options(method, overrides)
        tracker_opts = json_object(tracker_config, "--tracker-config", "tracker options")
        if fast:
            tracker_opts = fast_tracker_options(tracker_opts)
        TrackerConfig.from_dict(tracker_opts)  # bad options fail here, before any work
        refiner = make_refiner(method, **overrides)
        if refiner.modality == "rgbd" and not ds.has_depth:
            raise ValueError(f"method '{method}' needs depth, but {dataset} has no depth images")
        rows = read_inits(inits) if inits is not None else None
        dets = read_detections(detections) if detections is not None else None
        spec = TrackSpec(
            dataset=str(dataset),
            split=split,
            method=method,
            config=overrides,
            fast=fast,
            tracker=tracker_opts,
            estimator=estimator,
            use_depth=not no_depth,
            threads=threads,
            models_dir=models_dir,
        )
        label = f"track [{method}{' fast' if fast else ''}]"
        ex = make_executor(executor, workers=workers, address=address)
        try:
            summary = run_with_progress(
                label,
                lambda progress: track_dataset(
                    spec,
                    rows,
                    out,
                    detections=dets,
                    detections_path=detections,
                    restart=restart,
                    max_images=max_images,
                    inits_path=inits,
                    progress=progress,
                    refiner=refiner if executor == "serial" else None,
                    executor=ex,
                ),
            )
        finally:
            ex.close()
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"tracked {summary.tracks} object(s) through {summary.images_done} frame(s) in {summary.seconds:.1f} s "
        f"({summary.images_skipped} already done, {summary.images_failed} unreadable, {summary.lost_rows} lost "
        f"row(s), {summary.recovered} recover(ies)); results: {summary.results_path}"
    )
    exit_on_failures(summary)
