"""Coarse pose estimators: the :class:`~meshpose.coarse.base.Estimator` seam (a pose from a 2D detection and a
mesh, no initial pose), the template bank they share, and the named presets (:mod:`meshpose.coarse.registry`)."""

from meshpose.coarse.base import Estimator
from meshpose.coarse.registry import available_estimators, make_estimator

__all__ = ["Estimator", "available_estimators", "make_estimator"]
