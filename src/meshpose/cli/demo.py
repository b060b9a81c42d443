"""``meshpose demo``: the main job on the embedded example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meshpose.cli.common import Verbose, fail, setup_logging

__all__ = ["demo"]


def demo(
    out: Annotated[Path, typer.Option(help="Output folder for poses.json and overlay.png.")] = Path("out/demo"),
    method: Annotated[str, typer.Option(help="Refiner preset to run (default: the best available).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the example scene and the perturbation.")] = 0,
    verbose: Verbose = False,
) -> None:
    """Run the main job on the embedded example: render a cluttered scene, perturb the pose, refine, report."""
    setup_logging(verbose)
    from meshpose.demo import run_demo

    try:
        summary = run_demo(out, method=method or None, seed=seed)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(summary["errors"], indent=1))
    typer.echo(f"wrote {summary['poses_path']} and {summary['overlay_path']}")
