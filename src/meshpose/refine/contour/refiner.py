"""The ``contour`` preset: region (contour) + colour render-and-compare, damped Gauss–Newton on se(3).

See :mod:`meshpose.refine.contour` for the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from meshpose.mesh.model import light_model
from meshpose.refine.base import LazyRenderer, check_refine_inputs, level_schedule
from meshpose.refine.contour.config import ContourConfig
from meshpose.refine.contour.run import ContourRun
from meshpose.render.base import Renderer
from meshpose.types import ObjectModel, Observation, Pose, RefineResult

__all__ = ["ContourRefiner"]


class ContourRefiner(LazyRenderer):
    """The ``contour`` preset: region (contour) + colour render-and-compare, damped Gauss–Newton on se(3).

    Args:
        config: options (default ``ContourConfig()``).
        renderer: a :class:`~meshpose.render.base.Renderer` (default: the calling thread's GL renderer).

    ``refine`` returns per object the best pose found by the method's own energy at the finest level (the initial
    pose is one of the candidates), a score in [0, 1] — the geometric mean of three agreements at that pose: of
    the silhouette with the foreground posterior, the fraction of correspondence lines that find the contour
    where it is rendered, and the fraction of the object's pixels whose colour is explained (neighbourhood-min
    L*a*b* distance); 0 for a failure — and a failure reason where the object could not be refined (it projects
    outside the image, crosses the camera plane, or is hidden). ``history`` holds the iterates (the pose after
    each iteration's step), so ``pose`` may differ from ``history[-1]``.

    Example:
        >>> from meshpose.refine.registry import make_refiner
        >>> refiner = make_refiner("contour", iterations=(3, 3))
        >>> refiner.name, refiner.modality
        ('contour', 'rgb')
    """

    Config = ContourConfig
    name: str = "contour"
    modality: Literal["rgb", "rgbd"] = "rgb"

    def __init__(self, config: ContourConfig | None = None, *, renderer: Renderer | None = None) -> None:
        self.config = config if config is not None else ContourConfig()
        self._renderer = renderer

    def render_model(self, obj: ObjectModel) -> ObjectModel:
        """The model drawn in the crops: ``obj`` with its render mesh decimated to ``config.render_faces``
        (:func:`~meshpose.mesh.model.light_model`: made once per render mesh and budget, shared by every method
        that draws it at that budget)."""
        return light_model(obj, int(self.config.render_faces))

    def schedule(self, iterations: int | None = None) -> list[tuple[int, int]]:
        """``(level, iterations)`` pairs, coarse to fine (see :func:`~meshpose.refine.base.level_schedule`)."""
        return level_schedule(self.config.iterations, iterations, self.name)

    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        """Refine the ``N`` poses jointly (see :class:`~meshpose.refine.base.Refiner`).

        Args:
            obs: the image (depth is not used); ``obs.mask``, if given, fixes the foreground colour models.
            objects: the ``N`` object models.
            init: ``(N,)`` initial ``cam_from_obj`` poses.
            iterations: total iterations (renders); ``None`` for the configured schedule.
            callback: called as ``callback(iteration, poses)`` after each iteration with the ``(N,)`` iterates.

        Raises:
            RefinerError: bad inputs only (no objects, a pose count that does not match, NaN or non-rotation
                poses, a pose behind the camera, masks that do not match the objects, negative ``iterations``).
                A refinement that goes wrong is reported in ``info.failure`` and by a low score instead.
        """
        poses0 = check_refine_inputs(obs, objects, init, self.modality, self.name)
        plan = self.schedule(iterations)
        run = ContourRun(self.config, self.renderer, obs, list(objects), poses0, self.render_model)
        return run.execute(plan, callback)
