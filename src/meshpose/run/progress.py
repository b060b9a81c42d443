"""Progress of a batch run as log lines, for output that is not a terminal (a file, CI, ``nohup``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLogger", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"1h02m"``, ``"3m05s"`` or ``"42s"``.

    Example:
        >>> format_duration(3725), format_duration(185), format_duration(4.2)
        ('1h02m', '3m05s', '4s')
    """
    s = round(max(seconds, 0.0))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class RateLogger:
    """A ``progress(done, total, key)`` callback that logs a line every ``every`` images, at least every
    ``max_interval_s`` seconds, and at the last image: count, percentage, images/s and ETA.

    Args:
        label: what the line starts with (e.g. ``"refine [contour]"``).
        every: images between lines (``None``: about 20 lines per run, at least every 50 images).
        max_interval_s: a line at the next image after this long without one.
        emit: where lines go (default: ``logging.getLogger("meshpose").info``).
    """

    def __init__(
        self,
        label: str,
        *,
        every: int | None = None,
        max_interval_s: float = 60.0,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.label = label
        self.every = every
        self.max_interval_s = max_interval_s
        self.emit = emit or logging.getLogger("meshpose").info
        self._t0 = time.perf_counter()
        self._last = self._t0
        self._t_first: float | None = None

    def __call__(self, done: int, total: int, key: tuple[int, int]) -> None:
        every = self.every or max(1, min(50, total // 20))
        now = time.perf_counter()
        if done == 1:
            self._t_first = now
        if done < total and done % every and now - self._last < self.max_interval_s:
            return
        self._last = now
        elapsed = now - self._t0
        if self._t_first is None:
            self._t_first = now
        # The rate from the first finished image on: start-up (workers, meshes) is not a per-image cost.
        rate = (done - 1) / (now - self._t_first) if done > 1 and now > self._t_first else done / max(elapsed, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        pct = 100.0 * done / total if total else 100.0
        eta_s = format_duration(eta) if eta != float("inf") else "?"
        self.emit(
            f"{self.label}: {done}/{total} images ({pct:.0f}%), {rate:.2f} images/s, "
            f"elapsed {format_duration(elapsed)}, ETA {eta_s} (last: scene {key[0]} image {key[1]})"
        )
