"""``meshpose perturb``, ``refine``, ``eval`` and ``overlay``: initial poses, refining them over a dataset, scoring
and drawing results files."""

from __future__ import annotations

import json
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
    check_output_dir,
    check_output_file,
    exit_on_failures,
    fail,
    json_object,
    log,
    run_with_progress,
    set_threads,
    setup_logging,
)

__all__ = ["eval_cmd", "overlay", "perturb", "refine"]


def perturb(
    dataset: Annotated[Path, typer.Argument(help="BOP dataset folder.")],
    out: Annotated[Path, typer.Option(help="Output BOP results CSV of initial poses.")],
    rot_deg: Annotated[float, typer.Option(help="Rotation error in degrees (exact).")] = 15.0,
    trans_frac: Annotated[float, typer.Option(help="Translation error as a fraction of the diameter (exact).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    models_dir: ModelsDir = "models",
    verbose: Verbose = False,
) -> None:
    """Write initial poses made from ground truth: exact rotation angle about a random axis, exact shift."""
    setup_logging(verbose)
    from meshpose.eval.perturb import perturb_dataset
    from meshpose.io.bop import BopDataset
    from meshpose.io.results import write_results

    try:
        ds = BopDataset(dataset, split, models_dir=models_dir)
        rows = perturb_dataset(ds, rot_deg=rot_deg, trans_frac=trans_frac, seed=seed)
        write_results(out, rows)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"wrote {len(rows)} initial poses to {out}")


def refine(
    dataset: Annotated[Path, typer.Argument(help="BOP dataset folder.")],
    inits: Annotated[Path, typer.Option(help="BOP results CSV of initial poses.")],
    out: Annotated[Path, typer.Option(help="Output BOP results CSV (resumed if it exists).")],
    method: Annotated[
        str, typer.Option(help="Refiner preset, or presets joined by '+' run one after the other (genflow+contour).")
    ] = "flow-pnp",
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    models_dir: ModelsDir = "models",
    iterations: Annotated[
        int | None, typer.Option(min=0, help="Outer iterations (default: the method's; 0 scores the inits).")
    ] = None,
    max_images: Annotated[int | None, typer.Option(min=0, help="Stop after this many images.")] = None,
    no_depth: Annotated[bool, typer.Option("--no-depth", help="Do not give depth to RGB methods.")] = False,
    restart: Restart = False,
    threads: Threads = None,
    executor: ExecutorName = "serial",
    workers: Workers = None,
    address: Address = None,
    config: Annotated[
        str | None,
        typer.Option(
            help='Refiner options as JSON, e.g. \'{"weights": "run/model.pt"}\' (fields of its Config); for a chain, '
            'per member: \'{"genflow": {"weights": "run/model.pt"}}\'.'
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Refine initial poses over a BOP dataset; writes each finished image at once and resumes a stopped run.

    Exit code: 0 when every item was refined, 3 when some failed (see RESULTS.failures.jsonl), 2 for bad usage.
    A malformed or implausible inits row, an unknown object or a broken mesh fails its items only.
    """
    setup_logging(verbose)
    from meshpose.io.bop import BopDataset
    from meshpose.io.results import read_inits
    from meshpose.refine.registry import make_refiner
    from meshpose.run import JobSpec, make_executor, refine_dataset

    try:
        set_threads(threads)
        ex = make_executor(executor, workers=workers, address=address)
        ds = BopDataset(dataset, split, models_dir=models_dir)
        rows = read_inits(inits)
        overrides = json_object(config, "--config", "refiner options")
        refiner = make_refiner(method, **overrides)
        if refiner.modality == "rgbd" and not ds.has_depth:
            raise ValueError(f"method '{method}' needs depth, but {dataset} has no depth images")
        spec = JobSpec(
            dataset=str(dataset),
            split=split,
            method=method,
            config=overrides,
            iterations=iterations,
            use_depth=not no_depth,
            threads=threads,
            models_dir=models_dir,
        )
        try:
            summary = run_with_progress(
                f"refine [{method}]",
                lambda progress: refine_dataset(
                    spec,
                    rows,
                    out,
                    executor=ex,
                    progress=progress,
                    restart=restart,
                    max_images=max_images,
                    inits_path=inits,
                ),
            )
        finally:
            ex.close()
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"refined {summary.images_done} image(s) in {summary.seconds:.1f} s "
        f"({summary.images_skipped} already done, {summary.images_failed} failed, "
        f"{summary.instance_failures} instance failure(s)); results: {summary.results_path}"
    )
    exit_on_failures(summary)


def eval_cmd(
    dataset: Annotated[Path, typer.Argument(help="BOP dataset folder.")],
    results: Annotated[Path, typer.Option(help="BOP results CSV to score.")],
    out: Annotated[Path, typer.Option(help="Output REPORT.json.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated: add,adds,mssd,mspd,vsd.")] = "add,adds,mssd,mspd,vsd",
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    min_visib: Annotated[
        float, typer.Option(help="Ignore ground-truth instances less visible than this (BOP: 0.1).")
    ] = 0.1,
    only_result_images: Annotated[
        bool, typer.Option(help="Score only the images that appear in the results file.")
    ] = False,
    plots: Annotated[Path | None, typer.Option(help="Also draw recall curves into this folder.")] = None,
    models_dir: ModelsDir = "models",
    verbose: Verbose = False,
) -> None:
    """Score a BOP results file: ADD(-S), ADD-S AUC, MSSD/MSPD/VSD recalls and BOP AR, per object and overall.

    Where the report and the plots go is checked before the evaluation runs; the report is written to a temporary
    file and renamed, so a failure never leaves half a report.
    """
    setup_logging(verbose)
    from meshpose.eval.report import EvalConfig, evaluate_file
    from meshpose.io.bop import BopDataset
    from meshpose.io.jsonfile import write_json_atomic

    names = tuple(m.strip().lower() for m in metrics.split(",") if m.strip())
    try:
        check_output_file(out, "--out")
        if plots is not None:
            check_output_dir(plots, "--plots")
        config = EvalConfig(metrics=names, min_visib=min_visib, only_result_images=only_result_images)
        ds = BopDataset(dataset, split, models_dir=models_dir)
        report = evaluate_file(ds, results, config, split=split)
        write_json_atomic(out, report)
        if plots is not None:
            from meshpose.viz.plots import plot_report

            plot_report(report, plots)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(report["overall"], indent=1))
    typer.echo(f"wrote {out}")


def overlay(
    dataset: Annotated[Path, typer.Argument(help="BOP dataset folder.")],
    results: Annotated[Path, typer.Option(help="BOP results CSV to draw.")],
    out: Annotated[Path, typer.Option(help="Output folder: one SCENE_IMAGE.png per image.")],
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    models_dir: ModelsDir = "models",
    max_images: Annotated[int | None, typer.Option(min=0, help="Draw at most this many images.")] = None,
    gt: Annotated[bool, typer.Option("--gt/--no-gt", help="Also draw the ground truth (magenta) when there.")] = True,
    verbose: Verbose = False,
) -> None:
    """Draw the results on the images: each pose's rendered silhouette outline and axes (green), over the ground
    truth (magenta) when the dataset has it. Exit code 3 when some images could not be drawn."""
    setup_logging(verbose)
    from meshpose.io.bop import BopDataset
    from meshpose.io.results import read_inits
    from meshpose.viz.overlay import overlay_results

    try:
        check_output_dir(out, "--out")
        ds = BopDataset(dataset, split, models_dir=models_dir)
        rows = read_inits(results)  # a malformed row is left out (and said), not fatal
        for problem in rows.problems:
            log.warning("left out: %s", problem)
        summary = overlay_results(ds, rows.rows, out, max_images=max_images, with_gt=gt)
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"wrote {len(summary.written)} overlay(s) to {out}")
    left_out = summary.skipped_rows + len(rows.problems)
    if summary.failed or left_out:
        typer.echo(f"{len(summary.failed)} image(s) could not be drawn, {left_out} row(s) left out (see the log)")
        raise typer.Exit(code=3)
