"""Refiners: the :class:`~meshpose.refine.base.Refiner` seam, the named presets and chains of them.

``make_refiner("contour")``, ``make_refiner("genflow+icp")``; each preset's module is imported only when first used
(:mod:`meshpose.refine.registry`).
"""

from meshpose.refine.base import Refiner
from meshpose.refine.registry import available_methods, make_refiner

__all__ = ["Refiner", "available_methods", "make_refiner"]
