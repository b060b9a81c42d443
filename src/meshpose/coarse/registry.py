"""The named coarse-estimator presets (``meshpose estimate --method``).

A preset's module is imported only when it is first asked for.

Example:
    >>> "picopose" in ESTIMATORS
    True
"""

from __future__ import annotations

import importlib.util
from typing import Any

from meshpose.coarse.base import Estimator
from meshpose.refine.registry import build_preset

__all__ = ["ESTIMATORS", "available_estimators", "make_estimator"]

#: Preset name → (module, class); the class is built as ``cls(config)`` with its own ``Config`` dataclass.
ESTIMATORS: dict[str, tuple[str, str]] = {
    "picopose": ("meshpose.coarse.picopose", "PicoPoseEstimator"),
    "jointloss": ("meshpose.coarse.jointloss", "JointLossEstimator"),
    "register": ("meshpose.coarse.register", "RegisterEstimator"),
}


def available_estimators() -> list[str]:
    """Names of the estimator presets whose modules are present."""
    return [n for n, (m, _) in ESTIMATORS.items() if importlib.util.find_spec(m) is not None]


def make_estimator(name: str, config: Any = None, **overrides: Any) -> Estimator:
    """Build a coarse estimator preset by name (``make_estimator("picopose", hypotheses_per_template=…)``).

    Raises:
        ValueError: unknown preset, or an override that is not a field of its config.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{name}'; choose from {', '.join(sorted(ESTIMATORS))}")
    est: Estimator = build_preset(ESTIMATORS[name], name, config, overrides, kind="estimator")
    return est
