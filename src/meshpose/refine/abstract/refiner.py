"""The ``abstract`` preset: render-and-compare in a learned descriptor space, all objects of an image jointly.

See :mod:`meshpose.refine.abstract` for the method.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

from meshpose.mesh.model import light_model
from meshpose.refine.abstract.config import AbstractConfig
from meshpose.refine.abstract.features import DescriptorExtractor, NetExtractor
from meshpose.refine.abstract.field import DescriptorField, FieldSet
from meshpose.refine.abstract.fusion import field_cache_key, load_field
from meshpose.refine.abstract.run import AbstractRun
from meshpose.refine.base import LazyRenderer, StageTimer, check_refine_inputs, level_schedule
from meshpose.render.base import Renderer
from meshpose.types import ObjectModel, Observation, Pose, RefineResult

__all__ = ["AbstractRefiner"]

#: Fused fields kept in memory per refiner (least recently used dropped).
MAX_FIELDS_IN_MEMORY = 64
#: Sets of fields (the objects of an image, in order) kept ready for sampling per refiner.
MAX_FIELD_SETS_IN_MEMORY = 2


class AbstractRefiner(LazyRenderer):
    """The ``abstract`` preset (abstract render-and-compare, RGB).

    Args:
        config: options (default ``AbstractConfig()``).
        renderer: a :class:`~meshpose.render.base.Renderer` (default: the calling thread's GL renderer).
        extractor: the descriptor network (default: :class:`~meshpose.refine.abstract.features.NetExtractor` of
            ``config.weights``, loaded at the first refinement).

    ``refine`` returns per object the best pose found (by its own crop's descriptor loss at the finest level; the
    initial pose is one of the candidates), a score in [0, 1] (the share of the object's pixels and of a ring
    around it whose rendered descriptors match the observed ones), and a failure reason where the object could not
    be refined. The first refinement of an object fuses its descriptors (≈ 1–2 s; cached on disk by mesh content
    and network). ``obs.mask`` is not used.

    Example:
        >>> from meshpose.refine.registry import make_refiner
        >>> refiner = make_refiner("abstract", iterations=(5, 5))
        >>> refiner.name, refiner.modality
        ('abstract', 'rgb')
    """

    Config = AbstractConfig
    name: str = "abstract"
    modality: Literal["rgb", "rgbd"] = "rgb"

    def __init__(
        self,
        config: AbstractConfig | None = None,
        *,
        renderer: Renderer | None = None,
        extractor: DescriptorExtractor | None = None,
    ) -> None:
        self.config = config if config is not None else AbstractConfig()
        self._renderer = renderer
        self._extractor = extractor
        self._fields: OrderedDict[str, DescriptorField] = OrderedDict()
        self._field_sets: OrderedDict[tuple[int, ...], tuple[list[DescriptorField], FieldSet]] = OrderedDict()

    @property
    def extractor(self) -> DescriptorExtractor:
        """The descriptor network (loaded on first use)."""
        if self._extractor is None:
            self._extractor = NetExtractor(self.config.weights)
        return self._extractor

    def field(self, obj: ObjectModel) -> DescriptorField:
        """``obj``'s fused descriptors (memory, then disk cache, else fused now)."""
        key = field_cache_key(obj, self.extractor, self.renderer, self.config)
        hit = self._fields.get(key)
        if hit is not None:
            self._fields.move_to_end(key)
            return hit
        fld = load_field(obj, self.extractor, self.renderer, self.config)
        self._fields[key] = fld
        while len(self._fields) > MAX_FIELDS_IN_MEMORY:
            self._fields.popitem(last=False)
        return fld

    def field_set(self, fields: list[DescriptorField]) -> FieldSet:
        """The fields of an image's objects, in order, ready for sampling (the last few sets are kept)."""
        key = tuple(id(f) for f in fields)  # valid while the entry holds the fields
        hit = self._field_sets.get(key)
        if hit is not None:
            self._field_sets.move_to_end(key)
            return hit[1]
        fset = FieldSet(fields)
        self._field_sets[key] = (list(fields), fset)
        while len(self._field_sets) > MAX_FIELD_SETS_IN_MEMORY:
            self._field_sets.popitem(last=False)
        return fset

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
            obs: the image (depth and masks are not used).
            objects: the ``N`` object models.
            init: ``(N,)`` initial ``cam_from_obj`` poses.
            iterations: total iterations (renders); ``None`` for the configured schedule.
            callback: called as ``callback(iteration, poses)`` after each iteration.

        Raises:
            RefinerError: bad inputs only (see :func:`~meshpose.refine.base.check_refine_inputs`), or no
                descriptor weights.
        """
        poses0 = check_refine_inputs(obs, objects, init, self.modality, self.name)
        plan = self.schedule(iterations)
        timer = StageTimer()
        with timer("fusion"):
            fields = self.field_set([self.field(o) for o in objects])
        drawn = [self.render_model(o) for o in objects]
        run = AbstractRun(self.config, self.renderer, self.extractor, fields, obs, list(objects), drawn, poses0, timer)
        return run.execute(plan, callback)
