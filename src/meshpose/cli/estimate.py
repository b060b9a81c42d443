"""``meshpose estimate``: poses from 2D detections (a BOP detections file, or ground truth), optionally refined."""

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

__all__ = ["estimate"]


def estimate(
    dataset: Annotated[Path, typer.Argument(help="BOP dataset folder.")],
    detections: Annotated[
        str,
        typer.Option(
            help="BOP default-detections JSON (boxes, optional COCO RLE masks), or 'gt' for the ground truth's "
            "visible boxes and masks (diagnostics)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output BOP results CSV, one row per detection (resumed if it exists).")],
    method: Annotated[str, typer.Option(help="Coarse estimator preset.")] = "picopose",
    hypotheses: Annotated[int, typer.Option(min=1, help="Pose hypotheses per detection.")] = 1,
    refine: Annotated[
        str | None,
        typer.Option(
            help="Refine every hypothesis with this refiner preset or chain (contour, genflow+contour) and keep the "
            "best by a render-and-compare score."
        ),
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="Estimator options as JSON (fields of its Config), e.g. '{\"templates\": 42}'.")
    ] = None,
    refine_config: Annotated[
        str | None,
        typer.Option(
            "--refine-config",
            help='Refiner options as JSON, as refine --config takes them: \'{"weights": "run/model.pt"}\'.',
        ),
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(min=0, help="Outer iterations of the refiner (default: the refiner's).")
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    models_dir: ModelsDir = "models",
    min_score: Annotated[float, typer.Option(help="Use only the detections with at least this score.")] = 0.0,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Use at most this many detections of each object per image (best).")
    ] = None,
    hypotheses_out: Annotated[
        Path | None,
        typer.Option(
            "--hypotheses-out", help="Also write every detection's hypotheses (and refined ones) here, as JSON lines."
        ),
    ] = None,
    max_images: Annotated[int | None, typer.Option(min=0, help="Stop after this many images.")] = None,
    no_depth: Annotated[bool, typer.Option("--no-depth", help="Do not give depth to RGB methods.")] = False,
    always_refined: Annotated[
        bool,
        typer.Option(
            "--always-refined",
            help="With --refine, write the refined poses even where the unrefined one scores higher by the "
            "render-and-compare score (default: keep the higher-scoring one).",
        ),
    ] = False,
    restart: Restart = False,
    threads: Threads = None,
    executor: ExecutorName = "serial",
    workers: Workers = None,
    address: Address = None,
    verbose: Verbose = False,
) -> None:
    """Estimate object poses from 2D detections over a BOP dataset, optionally refining them; writes each finished
    image at once and resumes a stopped run.

    Results: one BOP row per detection that gave a pose (time: the image's, detection time included). A detection
    that fails (box off the image, empty mask, unknown object, no pose) is logged in RESULTS.failures.jsonl with
    its reason, not written. Exit code: 0 when every detection gave a pose, 3 when some failed, 2 for bad usage.
    """
    setup_logging(verbose)
    from meshpose.coarse.registry import make_estimator
    from meshpose.io.bop import BopDataset
    from meshpose.io.detections import DetectionsByImage, read_detections
    from meshpose.refine.registry import make_refiner
    from meshpose.run import make_executor
    from meshpose.run.estimate import GT, estimate_dataset
    from meshpose.run.estimate_job import EstimateSpec

    try:
        set_threads(threads)
        ex = make_executor(executor, workers=workers, address=address)
        ds = BopDataset(dataset, split, models_dir=models_dir)
        est_opts = json_object(config, "--config", "estimator options")
        ref_opts = json_object(refine_config, "--refine-config", "refiner options")
        if refine_config and not refine:
            raise ValueError("--refine-config needs --refine")
        if refine is None and iterations is not None:
            raise ValueError("--iterations is the refiner's: it needs --refine")
        needs_depth = [f"method '{method}'"] if make_estimator(method, **est_opts).modality == "rgbd" else []
        if refine and make_refiner(refine, **ref_opts).modality == "rgbd":
            needs_depth.append(f"refiner '{refine}'")
        if needs_depth and not ds.has_depth:
            verb = "needs" if len(needs_depth) == 1 else "need"
            raise ValueError(f"{' and '.join(needs_depth)} {verb} depth, but {dataset} has no depth images")
        dets: DetectionsByImage | str = GT
        dets_path = None
        if detections != GT:
            dets_path = Path(detections)
            if not dets_path.is_file():
                raise ValueError(f"--detections {detections}: no such file (give a BOP detections JSON, or 'gt')")
            dets = read_detections(dets_path, min_score=min_score, top_k_per_object=top_k)
        spec = EstimateSpec(
            dataset=str(dataset),
            split=split,
            method=method,
            config=est_opts,
            hypotheses=hypotheses,
            refine=refine,
            refine_config=ref_opts,
            iterations=iterations,
            use_depth=not no_depth,
            threads=threads,
            models_dir=models_dir,
            keep_unrefined=not always_refined,
        )
        label = f"estimate [{method}{f' → {refine}' if refine else ''}]"
        try:
            summary = run_with_progress(
                label,
                lambda progress: estimate_dataset(
                    spec,
                    dets,
                    out,
                    executor=ex,
                    progress=progress,
                    restart=restart,
                    max_images=max_images,
                    detections_path=dets_path,
                    hypotheses_path=hypotheses_out,
                ),
            )
        finally:
            ex.close()
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"estimated {summary.images_done} image(s) ({summary.detections} detection(s), {summary.rows_written} "
        f"pose(s)) in {summary.seconds:.1f} s ({summary.images_skipped} already done, {summary.images_failed} "
        f"failed, {summary.instance_failures} detection failure(s)); results: {summary.results_path}"
    )
    if summary.hypotheses_path is not None:
        typer.echo(f"hypotheses: {summary.hypotheses_path}")
    exit_on_failures(summary)
