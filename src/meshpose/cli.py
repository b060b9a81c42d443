"""The ``meshpose`` command line. Each command is thin: it builds a config, calls the library and writes files.

Logging and progress bars are configured here and only here.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.progress import Progress

app = typer.Typer(
    name="meshpose",
    help="6D pose estimation and refinement of novel rigid objects by render-and-compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("meshpose")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, show_time=False, rich_tracebacks=False)],
        force=True,
    )


def _fail(message: str) -> typer.Exit:
    """Print a one-line error (no traceback) and return the exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _probe_folder(folder: Path, what: str) -> None:
    """Check, before any long work and without creating anything, that ``folder`` can be made (a missing folder
    is made when the output is written) and written: its nearest existing ancestor must be a writable folder."""
    import tempfile

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".meshpose-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"{what}: cannot write into {existing} ({exc.strerror or exc})") from exc


def _check_output_file(path: Path, option: str) -> None:
    """Refuse an output file path that is a folder or whose folder cannot be written, before any work is done."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file path such as {path / 'report.json'}")
    _probe_folder(path.parent, f"{option} {path}")


def _check_output_dir(path: Path, option: str) -> None:
    """Refuse an output folder that is a file or cannot be written, before any work is done."""
    _probe_folder(path, option)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")]
ModelsDir = Annotated[
    str,
    typer.Option(
        "--models-dir", help="Folder of the meshes inside DATASET (BOP ships models, models_eval, models_eval_lowres)."
    ),
]


@app.callback()
def _main() -> None:
    """meshpose: find and refine the 6D pose of objects from their mesh and the camera intrinsics."""


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for poses.json and overlay.png.")] = Path("out/demo"),
    method: Annotated[str, typer.Option(help="Refiner preset to run (default: the best available).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the example scene and the perturbation.")] = 0,
    verbose: Verbose = False,
) -> None:
    """Run the main job on the embedded example: render a cluttered scene, perturb the pose, refine, report."""
    _setup_logging(verbose)
    from meshpose.demo import run_demo

    try:
        summary = run_demo(out, method=method or None, seed=seed)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(summary["errors"], indent=1))
    typer.echo(f"wrote {summary['poses_path']} and {summary['overlay_path']}")


@app.command()
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
    _setup_logging(verbose)
    from meshpose.eval.perturb import perturb_dataset
    from meshpose.io.bop import BopDataset
    from meshpose.io.results import write_results

    try:
        ds = BopDataset(dataset, split, models_dir=models_dir)
        rows = perturb_dataset(ds, rot_deg=rot_deg, trans_frac=trans_frac, seed=seed)
        write_results(out, rows)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {len(rows)} initial poses to {out}")


def _progress(description: str) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}"),
        transient=False,
    )


@app.command()
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
    restart: Annotated[
        bool, typer.Option("--restart", help="Start the results file over (its rows are deleted) instead of resuming.")
    ] = False,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads per worker (default: torch's; 1 per Ray worker).")
    ] = None,
    executor: Annotated[
        str, typer.Option(help="Where images run: serial (this process) or ray (Ray actors, --workers of them).")
    ] = "serial",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray actors (--executor ray; default: the CPU count).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster (HEAD:6379, or auto) instead of starting a local one."),
    ] = None,
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
    _setup_logging(verbose)
    from meshpose.io.bop import BopDataset
    from meshpose.io.results import read_inits
    from meshpose.refine.registry import make_refiner
    from meshpose.run import JobSpec, RateLogger, make_executor, refine_dataset

    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        ex = make_executor(executor, workers=workers, address=address)
        ds = BopDataset(dataset, split, models_dir=models_dir)
        rows = read_inits(inits)
        try:
            overrides = json.loads(config) if config else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config is not valid JSON: {exc}") from exc
        if not isinstance(overrides, dict):
            raise ValueError("--config must be a JSON object of refiner options")
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
        run_kw: dict[str, Any] = dict(restart=restart, max_images=max_images, inits_path=inits)
        try:
            if sys.stderr.isatty():
                with _progress(f"refine [{method}]") as bar:
                    task = bar.add_task("refine", total=None, item="")

                    def on_image(done: int, total: int, key: tuple[int, int]) -> None:
                        bar.update(task, completed=done, total=total, item=f"scene {key[0]} image {key[1]}")

                    summary = refine_dataset(spec, rows, out, executor=ex, progress=on_image, **run_kw)
            else:
                progress = RateLogger(f"refine [{method}]")
                summary = refine_dataset(spec, rows, out, executor=ex, progress=progress, **run_kw)
        finally:
            ex.close()
    except (ValueError, OSError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"refined {summary.images_done} image(s) in {summary.seconds:.1f} s "
        f"({summary.images_skipped} already done, {summary.images_failed} failed, "
        f"{summary.instance_failures} instance failure(s)); results: {summary.results_path}"
    )
    if summary.failed_items:
        earlier = f", {summary.earlier_failures} logged by earlier runs" if summary.earlier_failures else ""
        typer.echo(
            f"{summary.failed_items} failed item(s){earlier}: images {summary.images_done} done, "
            f"{summary.images_failed} failed, {summary.images_skipped} skipped; failure reasons: "
            f"{summary.failures_path}"
        )
        raise typer.Exit(code=summary.exit_code)


@app.command("eval")
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
    _setup_logging(verbose)
    from meshpose.eval.report import EvalConfig, evaluate_file
    from meshpose.io.bop import BopDataset
    from meshpose.io.jsonfile import write_json_atomic

    names = tuple(m.strip().lower() for m in metrics.split(",") if m.strip())
    try:
        _check_output_file(out, "--out")
        if plots is not None:
            _check_output_dir(plots, "--plots")
        config = EvalConfig(metrics=names, min_visib=min_visib, only_result_images=only_result_images)
        ds = BopDataset(dataset, split, models_dir=models_dir)
        report = evaluate_file(ds, results, config, split=split)
        write_json_atomic(out, report)
        if plots is not None:
            from meshpose.viz.plots import plot_report

            plot_report(report, plots)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(report["overall"], indent=1))
    typer.echo(f"wrote {out}")


@app.command()
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
    _setup_logging(verbose)
    from meshpose.io.bop import BopDataset
    from meshpose.io.results import read_inits
    from meshpose.viz.overlay import overlay_results

    try:
        _check_output_dir(out, "--out")
        ds = BopDataset(dataset, split, models_dir=models_dir)
        rows = read_inits(results)  # a malformed row is left out (and said), not fatal
        for problem in rows.problems:
            log.warning("left out: %s", problem)
        summary = overlay_results(ds, rows.rows, out, max_images=max_images, with_gt=gt)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {len(summary.written)} overlay(s) to {out}")
    left_out = summary.skipped_rows + len(rows.problems)
    if summary.failed or left_out:
        typer.echo(f"{len(summary.failed)} image(s) could not be drawn, {left_out} row(s) left out (see the log)")
        raise typer.Exit(code=3)


@app.command()
def synth(
    objects: Annotated[
        str,
        typer.Option(help="Objects: novel:N (generated), novel:A-B, example, a mesh folder or a BOP dataset."),
    ],
    out: Annotated[Path, typer.Option(help="Output BOP dataset folder (resumed if it exists).")],
    scenes: Annotated[int, typer.Option(help="Number of scenes.")] = 10,
    images_per_scene: Annotated[int, typer.Option(help="Views per scene.")] = 25,
    renderer: Annotated[str, typer.Option(help="gl (fast rasteriser) or photoreal (Mitsuba path tracer).")] = "gl",
    split: Annotated[str, typer.Option(help="Split folder, e.g. train_pbr or test.")] = "train_pbr",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same dataset).")] = 0,
    width: Annotated[int, typer.Option(help="Image width.")] = 640,
    height: Annotated[int, typer.Option(help="Image height.")] = 480,
    placement: Annotated[str, typer.Option(help="plane, float or mixed.")] = "mixed",
    units: Annotated[str, typer.Option(help="Units of a mesh folder: auto, m or mm.")] = "auto",
    background_dir: Annotated[Path | None, typer.Option(help="Folder of background photos.")] = None,
    spp: Annotated[int, typer.Option(help="Samples per pixel (photoreal).")] = 8,
    overwrite: Annotated[bool, typer.Option(help="Start the dataset over instead of resuming.")] = False,
    verbose: Verbose = False,
) -> None:
    """Write a synthetic BOP dataset: scenes of objects and distractors, random cameras, light, noise, depth."""
    _setup_logging(verbose)
    from meshpose.synth import SceneConfig, SynthConfig, synthesize

    try:
        scene = SceneConfig(
            width=width,
            height=height,
            placement=placement,  # type: ignore[arg-type]
            spp=spp,
            background_dir=str(background_dir) if background_dir else None,
        )
        cfg = SynthConfig(
            out=str(out),
            objects=objects,
            scenes=scenes,
            images_per_scene=images_per_scene,
            split=split,
            renderer=renderer,  # type: ignore[arg-type]
            seed=seed,
            scene=scene,
            units=units,  # type: ignore[arg-type]
            overwrite=overwrite,
        )
        with _progress(f"synth [{renderer}]") as bar:
            task = bar.add_task("synth", total=scenes * images_per_scene, item="")
            result = synthesize(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"wrote {result.images_written} image(s) in {result.scenes_written} scene(s) "
        f"({result.images_skipped} already there) to {out} at {result.images_per_second:.2f} images/s"
    )


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="Learned preset to train (genflow, deeprm).")],
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
    _setup_logging(verbose)
    if method not in ("genflow", "deeprm"):
        raise _fail(f"no trainer for '{method}' (trainable: genflow, deeprm)")
    if (data is None) == (objects is None):
        raise _fail("give the training objects: --data novel:N (generated) or --objects MESHES_OR_BOP_DATASET")
    source = str(data if data is not None else objects)
    if method == "deeprm":
        if workers:
            raise _fail("deeprm draws its data in the training process: --workers is not an option of it")
        opts = dict(batch_size=batch_size, threads=threads, val_every=val_every, seed=seed)
        _train_deeprm(source, objects is not None, out, opts, config, resume=resume, steps=steps, max_steps=max_steps)
        return
    from dataclasses import replace

    from meshpose.nets.genflow import GenFlowNet
    from meshpose.refine.genflow import GenFlowConfig, GenFlowRefiner
    from meshpose.train.genflow import GenFlowTrainConfig, train_genflow

    overrides: dict[str, Any] = {
        k: v
        for k, v in dict(
            batch_size=batch_size, workers=workers, threads=threads, val_every=val_every, seed=seed
        ).items()
        if v is not None
    }
    try:
        base = GenFlowTrainConfig(data=source).to_dict()
        if objects is not None:  # known objects: validate on held-out scenes of them
            base["val_objects"] = source
        if config:
            try:
                extra = json.loads(config)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--config is not valid JSON: {exc}") from exc
            if not isinstance(extra, dict):
                raise ValueError("--config must be a JSON object of training options")
            unknown = sorted(set(extra) - set(base)) + sorted(set(extra.get("net", {})) - set(base["net"]))
            if unknown:
                raise ValueError(f"unknown training option(s) {unknown}")
            base.update({k: v for k, v in extra.items() if k != "net"})
            base["net"].update(extra.get("net", {}))
        cfg = replace(GenFlowTrainConfig.from_dict(base), **overrides)

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

        result = train_genflow(
            cfg, out, refiner=refiner, resume=resume, steps=steps, max_steps=max_steps, progress=show
        )
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"stopped at step {result.step}; last validation {result.val}; run folder {out}")


def _train_deeprm(
    source: str,
    known: bool,
    out: Path,
    opts: dict[str, Any],
    config: str | None,
    *,
    resume: bool,
    steps: int | None,
    max_steps: int | None,
) -> None:
    """``meshpose train deeprm``: build a :class:`DeepRMTrainConfig` from the options and run it."""
    from dataclasses import replace

    from meshpose.train.deeprm import DeepRMTrainConfig, train_deeprm

    try:
        base = DeepRMTrainConfig(data=source).to_dict()
        if known:  # known objects: validate on held-out scenes of them
            base["val_objects"] = source
        if config:
            try:
                extra = json.loads(config)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--config is not valid JSON: {exc}") from exc
            if not isinstance(extra, dict):
                raise ValueError("--config must be a JSON object of training options")
            unknown = sorted(set(extra) - set(base)) + sorted(set(extra.get("net", {})) - set(base["net"]))
            if unknown:
                raise ValueError(f"unknown training option(s) {unknown}")
            base.update({k: v for k, v in extra.items() if k != "net"})
            base["net"].update(extra.get("net", {}))
        cfg = replace(DeepRMTrainConfig.from_dict(base), **{k: v for k, v in opts.items() if v is not None})

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

        result = train_deeprm(cfg, out, resume=resume, steps=steps, max_steps=max_steps, progress=show)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"stopped at step {result.step}; last validation {result.val}; run folder {out}")


def main() -> None:
    """Entry point of the ``meshpose`` script."""
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("interrupted: finished results are on disk; re-run to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
