"""An endless stream of synthetic samples for a ``torch.utils.data.DataLoader`` (nothing written)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.utils.data

from meshpose.synth.config import SceneConfig
from meshpose.synth.sampler import SceneSampler, SyntheticSample
from meshpose.synth.sources import default_distractors, resolve_objects
from meshpose.types import ObjectModel

__all__ = ["SyntheticStream"]


class SyntheticStream(torch.utils.data.IterableDataset):
    """An endless stream of :class:`SyntheticSample` for a ``torch.utils.data.DataLoader`` (nothing written).

    Each worker process draws its own stream, seeded by ``(seed, worker id)``, with its own GL context; pass
    ``collate_fn=list`` (or your own) since samples are dataclasses of numpy arrays. Use
    ``multiprocessing_context="spawn"`` when the main process has rendered with GL before: a forked child of a
    process with a live EGL context (llvmpipe threads) can hang.

    Args:
        objects: an object spec for :func:`~meshpose.synth.sources.resolve_objects` or a sequence of object models.
        config: scene settings.
        seed: base seed.
        views_per_scene: views drawn from each scene before a new one is laid out.
        distractors: distractor source (a spec, a sequence of models, or ``None`` for the default set).

    Example:
        >>> from torch.utils.data import DataLoader                                          # doctest: +SKIP
        >>> loader = DataLoader(SyntheticStream("novel:1000"), batch_size=8, num_workers=2,  # doctest: +SKIP
        ...                     collate_fn=list, multiprocessing_context="spawn")
    """

    def __init__(
        self,
        objects: str | Sequence[ObjectModel],
        config: SceneConfig | None = None,
        *,
        seed: int = 0,
        views_per_scene: int = 4,
        distractors: str | Sequence[ObjectModel] | None = None,
    ) -> None:
        super().__init__()
        self.objects = objects
        self.config = config or SceneConfig()
        self.seed = int(seed)
        self.views_per_scene = int(views_per_scene)
        self.distractors = distractors

    def __iter__(self) -> Iterator[SyntheticSample]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else int(info.id)
        objs = resolve_objects(self.objects, self.seed) if isinstance(self.objects, str) else self.objects
        if self.distractors is None:
            distractors: Sequence[ObjectModel] | None = default_distractors(self.seed)
        elif isinstance(self.distractors, str):
            distractors = resolve_objects(self.distractors, self.seed + 1)
        else:
            distractors = self.distractors
        sampler = SceneSampler(objs, self.config, distractors=distractors)
        seed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, worker, 0x57]).generate_state(1)[0])
        yield from sampler.samples(seed, views_per_scene=self.views_per_scene)
