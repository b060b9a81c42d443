"""JSON files written atomically (a crash or Ctrl-C never leaves a truncated file behind)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic"]


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 1) -> None:
    """Write JSON to a temporary file and rename it over ``path`` (a crash never leaves a truncated file).

    Args:
        path: the file to write (its folder is created).
        data: anything :func:`json.dump` takes.
        indent: JSON indentation (``None``: one line).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)
    tmp.replace(p)
