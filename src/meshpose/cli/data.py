"""``meshpose synth``: synthetic BOP-format datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshpose.cli.common import Verbose, fail, progress_bar, setup_logging

__all__ = ["synth"]


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
    setup_logging(verbose)
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
        with progress_bar(f"synth [{renderer}]") as bar:
            task = bar.add_task("synth", total=scenes * images_per_scene, item="")
            result = synthesize(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"wrote {result.images_written} image(s) in {result.scenes_written} scene(s) "
        f"({result.images_skipped} already there) to {out} at {result.images_per_second:.2f} images/s"
    )
