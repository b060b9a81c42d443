"""What the commands share: the typer app, logging set-up, one-line errors, output checks, common options, the
progress display of batch runs, and JSON option parsing.

Logging and progress bars are configured here and only here.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.progress import Progress

    from meshpose.run.runner import RunSummary

__all__ = [
    "Address",
    "ExecutorName",
    "ModelsDir",
    "Restart",
    "Threads",
    "Verbose",
    "Workers",
    "app",
    "check_output_dir",
    "check_output_file",
    "exit_on_failures",
    "fail",
    "json_object",
    "log",
    "progress_bar",
    "run_with_progress",
    "set_threads",
    "setup_logging",
]

app = typer.Typer(
    name="meshpose",
    help="6D pose estimation and refinement of novel rigid objects by render-and-compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("meshpose")

T = TypeVar("T")


@app.callback()
def _main() -> None:
    """meshpose: find and refine the 6D pose of objects from their mesh and the camera intrinsics."""


def setup_logging(verbose: bool) -> None:
    """Log to stderr through rich (``DEBUG`` with ``verbose``, else ``INFO``)."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, show_time=False, rich_tracebacks=False)],
        force=True,
    )


def fail(message: str) -> typer.Exit:
    """Print a one-line error (no traceback) and return the exit to raise (code 2: bad usage)."""
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


def check_output_file(path: Path, option: str) -> None:
    """Refuse an output file path that is a folder or whose folder cannot be written, before any work is done."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file path such as {path / 'report.json'}")
    _probe_folder(path.parent, f"{option} {path}")


def check_output_dir(path: Path, option: str) -> None:
    """Refuse an output folder that is a file or cannot be written, before any work is done."""
    _probe_folder(path, option)


def json_object(text: str | None, option: str, what: str) -> dict[str, Any]:
    """Parse a JSON-object option (``--config``); ``None`` or empty gives ``{}``.

    Raises:
        ValueError: not JSON, or not an object (the message names ``option`` and ``what`` it should hold).
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object of {what}")
    return value


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` unless ``None``."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def progress_bar(description: str) -> Progress:
    """A rich progress bar with count, ETA and the current item (``item`` field)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}"),
        transient=False,
    )


def run_with_progress(label: str, run: Callable[[Callable[[int, int, tuple[int, int]], None]], T]) -> T:
    """Call ``run(progress)`` with a per-image progress callback: a bar on a terminal, else log lines with rate and
    ETA (:class:`~meshpose.run.RateLogger`)."""
    if sys.stderr.isatty():
        with progress_bar(label) as bar:
            task = bar.add_task(label, total=None, item="")

            def on_image(done: int, total: int, key: tuple[int, int]) -> None:
                bar.update(task, completed=done, total=total, item=f"scene {key[0]} image {key[1]}")

            return run(on_image)
    from meshpose.run import RateLogger

    return run(RateLogger(label))


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")]
ModelsDir = Annotated[
    str,
    typer.Option(
        "--models-dir", help="Folder of the meshes inside DATASET (BOP ships models, models_eval, models_eval_lowres)."
    ),
]
Restart = Annotated[
    bool, typer.Option("--restart", help="Start the results file over (its rows are deleted) instead of resuming.")
]
Threads = Annotated[
    int | None, typer.Option(min=1, help="torch CPU threads per worker (default: torch's; 1 per Ray worker).")
]
ExecutorName = Annotated[
    str, typer.Option(help="Where images run: serial (this process) or ray (Ray actors, --workers of them).")
]
Workers = Annotated[int | None, typer.Option(min=1, help="Ray actors (--executor ray; default: the CPU count).")]
Address = Annotated[
    str | None,
    typer.Option(help="Join this Ray cluster (HEAD:6379, or auto) instead of starting a local one."),
]


def exit_on_failures(summary: RunSummary) -> None:
    """Print where the failed items of a dataset run are logged and exit with the run's code (3) when there are any.

    Args:
        summary: a ``refine`` or ``estimate`` run's :class:`~meshpose.run.runner.RunSummary`.

    Raises:
        typer.Exit: with ``summary.exit_code`` when some items failed.
    """
    if summary.failed_items:
        earlier = f", {summary.earlier_failures} logged by earlier runs" if summary.earlier_failures else ""
        typer.echo(
            f"{summary.failed_items} failed item(s){earlier}: images {summary.images_done} done, "
            f"{summary.images_failed} failed, {summary.images_skipped} skipped; failure reasons: "
            f"{summary.failures_path}"
        )
        raise typer.Exit(code=summary.exit_code)
