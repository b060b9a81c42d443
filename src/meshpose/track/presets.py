"""The ``--fast`` tracking configuration: refiner options for speed when the previous frame's pose is close.

Tracking starts every frame from the motion model's prediction, a few pixels from the truth at camera rate, so a
refiner needs neither its coarse level nor many iterations. :data:`FAST_CONTOUR` is ``contour`` with one level
of 64 px crops, 2 iterations, short correspondence lines, fewer lines and a lighter render mesh.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAST_CONTOUR", "FAST_TRACKER", "fast_refiner_options", "fast_tracker_options"]

#: ``ContourConfig`` overrides of ``--fast`` (measured on synthetic sequences: see ``benchmarks/bench_track.py``).
FAST_CONTOUR: dict[str, Any] = {
    "crop_sizes": (64,),
    "iterations": (2,),
    "line_length_px": (6,),
    "color_blur_px": (1.5,),
    "max_lines": 80,
    "render_faces": 1000,
    "max_color_pixels": 1000,
}

#: ``TrackerConfig`` overrides of ``--fast``: a lost track's recovery stops after 25 ms per frame (one or two
#: refinements of its hypotheses, nearest first) — without it the frames with a recovery search (7 refinements)
#: made the *mean* frame time 10–20× the median; and no re-estimate when a fit falls below the track's running fit
#: (``detection_mask_drop``: no gain in ``--fast`` for the re-estimations it costs).
FAST_TRACKER: dict[str, Any] = {"recover_budget_s": 0.025, "detection_mask_drop": 0.0}

#: Presets that have a fast configuration.
FAST_PRESETS: dict[str, dict[str, Any]] = {"contour": FAST_CONTOUR}


def fast_refiner_options(method: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The refiner options of ``--fast`` for ``method`` (a preset or a chain), the user's ``overrides`` on top.

    For a chain (``genflow+contour``) the fast options go to its members that have them.

    Raises:
        ValueError: no member of ``method`` has a fast configuration.

    Example:
        >>> fast_refiner_options("contour", {"max_lines": 50})["max_lines"]
        50
        >>> sorted(fast_refiner_options("genflow+contour"))
        ['contour']
    """
    overrides = dict(overrides or {})
    parts = method.split("+")
    fast = [p for p in parts if p in FAST_PRESETS]
    if not fast:
        raise ValueError(f"--fast has a configuration for {', '.join(sorted(FAST_PRESETS))} only, not '{method}'")
    if len(parts) == 1:
        return {**FAST_PRESETS[method], **overrides}
    for p in fast:
        mine = overrides.get(p, {})
        if not isinstance(mine, dict):
            raise ValueError(f"options of chain member '{p}' must be a dict")
        overrides[p] = {**FAST_PRESETS[p], **mine}
    return overrides


def fast_tracker_options(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tracker options of ``--fast`` (:data:`FAST_TRACKER`), the user's ``overrides`` on top.

    Example:
        >>> fast_tracker_options({"lost_after": 3})
        {'recover_budget_s': 0.025, 'detection_mask_drop': 0.0, 'lost_after': 3}
    """
    return {**FAST_TRACKER, **(overrides or {})}
