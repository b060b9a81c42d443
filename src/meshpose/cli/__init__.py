"""The ``meshpose`` command line. Each command is thin: it builds a config, calls the library and writes files.

One module per concern holds the commands: :mod:`~meshpose.cli.demo` (``demo``), :mod:`~meshpose.cli.refine`
(``perturb``, ``refine``, ``eval``, ``overlay``), :mod:`~meshpose.cli.estimate` (``estimate``),
:mod:`~meshpose.cli.data` (``synth``), :mod:`~meshpose.cli.train` (``train``); :mod:`~meshpose.cli.common` holds the
typer :data:`app`, the logging set-up, one-line errors and the options the commands share. The commands are
registered here, in the order ``--help`` lists them. Logging and progress bars are configured by the CLI only.
"""

from __future__ import annotations

import sys

import typer

from meshpose.cli.adapt import adapt
from meshpose.cli.common import app
from meshpose.cli.data import synth
from meshpose.cli.demo import demo
from meshpose.cli.estimate import estimate
from meshpose.cli.refine import eval_cmd, overlay, perturb, refine
from meshpose.cli.track import track
from meshpose.cli.train import train

__all__ = ["app", "main"]

app.command()(demo)
app.command()(perturb)
app.command()(refine)
app.command()(estimate)
app.command()(track)
app.command("eval")(eval_cmd)
app.command()(overlay)
app.command()(synth)
app.command()(train)
app.command()(adapt)


def main() -> None:
    """Entry point of the ``meshpose`` script."""
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("interrupted: finished results are on disk; re-run to resume", err=True)
        sys.exit(130)
