"""What every trainer (``genflow``, ``deeprm``, ``picopose``) shares: its options and its run set-up.

* :class:`TrainOptions`, the options of every ``meshpose train`` run (the objects, the optimiser, the synthetic
  scenes, the run's rhythm), with one docstring for them; a method's config subclasses it with its own options.
* The set-up of a run around :func:`~meshpose.train.loop.train_loop`: :func:`resume_config` (the saved options on
  ``--resume``, a new length), :func:`initial_weights` (a new run started from weights), :func:`training_process`
  (the process group, ``config.json``, threads and seed), :func:`adamw`, :func:`method_task`, :func:`loop_config`
  and :func:`lazy_validation`.
* The synthetic data both item streams and validation sets draw: :func:`scene_items` (scenes of random object pools,
  several views each) and :func:`draw_held_out` (a fixed held-out set).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch

from meshpose.nets.batch import CropBatch
from meshpose.nets.checkpoint import Checkpoint
from meshpose.synth import SceneConfig, SceneSampler, SyntheticSample, default_distractors, resolve_objects
from meshpose.train.cached_scenes import cached_views, open_cached
from meshpose.train.loop import (
    DistContext,
    LoopConfig,
    Schedule,
    TrainTask,
    open_run,
    setup_distributed,
    teardown_distributed,
)
from meshpose.types import ObjectModel, Pose

__all__ = [
    "HELD_OUT_FROM",
    "SceneStream",
    "TrainOptions",
    "adamw",
    "batch_to_device",
    "check_training_objects",
    "draw_held_out",
    "initial_weights",
    "lazy_validation",
    "loop_config",
    "method_task",
    "resume_config",
    "scene_items",
    "training_process",
    "with_weights",
]

log = logging.getLogger(__name__)

Opts = TypeVar("Opts", bound="TrainOptions")
M = TypeVar("M", bound=torch.nn.Module)
B = TypeVar("B")
I = TypeVar("I")  # noqa: E741

#: :func:`scene_items` gives up after this many draws in a row without an item
MAX_EMPTY_DRAWS = 200

#: generated objects with this id and above are the held-out test objects: never trained on
HELD_OUT_FROM = 5000

# the order of ``config.json``'s keys (the one runs have always written): the optimiser options, the method's own
# options, the scene options, the process options and ``val_objects``, the method's own ``val_*`` options, the rest
_HEAD = ("data", "seed", "steps", "batch_size", "lr", "weight_decay", "warmup", "grad_clip")
_SCENES = ("min_visib", "max_items_per_image", "views_per_scene", "object_pool", "pool_scenes", "image_size")
_PROCESS = ("workers", "threads", "val_objects")
_TAIL = ("val_every", "ckpt_every", "log_every", "net", "scene", "init_weights")


def check_training_objects(spec: str) -> None:
    """Refuse generated training objects that reach into the held-out test objects (ids ``≥ 5000``).

    Raises:
        ValueError: ``spec`` is ``novel:N`` (or ``novel:A-B``, ``novel:N@…``) with ``N`` (``B``) above 5000.

    Example:
        >>> check_training_objects("novel:4000")
        >>> check_training_objects("novel:5010")
        Traceback (most recent call last):
        ...
        ValueError: novel objects 5000 and above are held out for testing: train on novel:N, N ≤ 5000
    """
    m = spec.strip()
    if m.startswith("novel:"):
        hi = int(m.split(":", 1)[1].split("@")[0].split("-")[-1])
        if hi > HELD_OUT_FROM:
            raise ValueError("novel objects 5000 and above are held out for testing: train on novel:N, N ≤ 5000")


@dataclass(frozen=True)
class TrainOptions:
    """The options every ``meshpose train`` run has (a method's config adds its own and its defaults).

    Args:
        data: training objects: ``novel:N`` (generated, ids 1…N; never the test objects ≥ 5000) or a mesh folder /
            BOP dataset (known-object training: the scenes hold only these objects, plus distractors).
        seed: seed of the generated objects and of the data stream.
        steps: optimiser steps of the whole run (the learning-rate schedule spans them).
        batch_size: items per step (per process under DDP).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps.
        grad_clip: gradient norm clip.
        min_visib: instances less visible than this are not used.
        max_items_per_image: at most this many instances of one image.
        views_per_scene: images drawn per synthetic scene.
        object_pool: objects kept in memory at a time (a new random pool every ``pool_scenes`` scenes).
        pool_scenes: scenes per object pool.
        image_size: ``(width, height)`` of the synthetic images.
        threads: torch CPU threads of the training process.
        val_objects: objects of validation (``novel``: disjoint from ``data`` and from the test objects;
            known-object training: the same objects, in held-out scenes).
        val_every: validate every this many steps (0: never).
        ckpt_every: checkpoint every this many steps.
        log_every: log every this many steps.
        scene: overrides of :class:`~meshpose.synth.SceneConfig` fields for the training scenes (JSON values; lists
            become ranges), e.g. ``{"blur_probability": 0.6, "blur_sigma_px": [0.5, 2.2]}`` for blurrier photos;
            the size comes from ``image_size``.
        cached: a split of pre-rendered synthetic scenes of the training objects, ``ROOT[:SPLIT]`` (a BOP-format
            folder that ``meshpose synth`` wrote, e.g. photoreal renderings; :mod:`meshpose.train.cached_scenes`),
            whose views are mixed with the scenes drawn on the fly (:func:`scene_items`); ``None``: none.
        cached_share: share of the training views taken from ``cached`` (a draw is ``views_per_scene`` views
            either way).
        val_cached: validate on this pre-rendered split (``ROOT[:SPLIT]``, held out from ``cached``) instead of on
            scenes drawn of ``val_objects``.

    A subclass writes ``config.json`` (:meth:`to_dict`) in the key order runs have always had: these options
    around the method's own (its ``val_*`` options after ``val_objects``), whatever the field order.
    """

    data: str = "novel:4000"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    grad_clip: float = 1.0
    min_visib: float = 0.3
    max_items_per_image: int = 4
    views_per_scene: int = 3
    object_pool: int = 40
    pool_scenes: int = 30
    image_size: tuple[int, int] = (640, 480)
    threads: int = 1
    val_objects: str = "novel:4500-4540"
    val_every: int = 500
    ckpt_every: int = 100
    log_every: int = 10
    scene: dict[str, Any] = field(default_factory=dict)
    cached: str | None = None
    cached_share: float = 0.5
    val_cached: str | None = None

    #: the method's name when it trains on frames the user gives, not on synthetic scenes (``cached`` and
    #: ``val_cached`` are refused then)
    given_frames: ClassVar[str | None] = None
    #: options read back as tuples from JSON lists
    tuple_options: ClassVar[tuple[str, ...]] = ("image_size",)

    def __post_init__(self) -> None:
        allowed = {f.name for f in dataclasses.fields(SceneConfig)} - {"width", "height"}
        unknown = sorted(set(self.scene) - allowed)
        if unknown:
            raise ValueError(f"unknown scene option(s) {unknown}: use SceneConfig fields except width/height")
        if not 0.0 <= self.cached_share <= 1.0:
            raise ValueError(f"cached_share must be in [0, 1], got {self.cached_share}")
        if self.given_frames is not None and (self.cached is not None or self.val_cached is not None):
            raise ValueError(
                f"cached / val_cached (pre-rendered synthetic scenes) do not apply to {self.given_frames}: "
                "it trains on the given frames"
            )
        self.check()
        check_training_objects(self.data)

    def check(self) -> None:
        """The method's own checks (after the scene option names, before the training objects).

        Raises:
            ValueError: an option is out of its range.
        """

    def scene_config(self) -> SceneConfig:
        """The :class:`SceneConfig` of the training scenes: the defaults, ``image_size`` and ``scene``."""
        over: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in self.scene.items()}
        return dataclasses.replace(SceneConfig(width=self.image_size[0], height=self.image_size[1]), **over)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (``config.json``, checkpoints), in the order runs have always written."""
        d = dataclasses.asdict(self)
        fixed = {*_HEAD, *_SCENES, *_PROCESS, *_TAIL}
        own = [k for k in d if k not in fixed]
        order = [*_HEAD, *(k for k in own if not k.startswith("val_")), *_SCENES, *_PROCESS]
        order += [*(k for k in own if k.startswith("val_")), *_TAIL]
        return {k: d[k] for k in order if k in d}

    @classmethod
    def from_dict(cls: type[Opts], d: dict[str, Any]) -> Opts:
        """Options from :meth:`to_dict`'s data (JSON lists become tuples, ``net`` its config; unknown keys are
        ignored, missing ones take the defaults)."""
        d = cls.convert(dict(d))
        for key in cls.tuple_options:
            if key in d:
                d[key] = tuple(d[key])
        net = cls.__dataclass_fields__.get("net")
        if net is not None and isinstance(d.get("net"), dict):
            net_class: Any = net.default_factory  # the method's network config class
            d["net"] = net_class.from_dict(d["net"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        """The method's own conversions of :meth:`from_dict`'s data (a copy it may change)."""
        return d


# ----------------------------------------------------------------------------------------------------------
# Run set-up
# ----------------------------------------------------------------------------------------------------------
#: options a resumed run takes from the caller, not from its saved config (where the method has them)
PROCESS_OPTIONS = ("workers", "threads")


def resume_config(
    cfg: Opts, run: Path, method: str, *, resume: bool, steps: int | None
) -> tuple[Opts, Checkpoint | None]:
    """The options of a run and its ``last.pt`` to resume from (:func:`~meshpose.train.loop.open_run`).

    Args:
        cfg: the caller's options.
        run: the run folder.
        method: the method name in its checkpoints.
        resume: continue from ``run/last.pt``; the saved options are then used but for ``workers`` and ``threads``,
            taken from ``cfg``.
        steps: the run's total length, overriding the options' (on resume too: the schedule then spans it).

    Raises:
        FileExistsError: ``run`` holds a run and ``resume`` is false.
    """
    ck = open_run(run, resume, method)
    if ck is not None:
        assert ck.training is not None
        saved = type(cfg).from_dict(ck.training["config"])
        cfg = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in PROCESS_OPTIONS if hasattr(cfg, k)})
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    return cfg, ck


def initial_weights(cfg: Opts, ck: Checkpoint | None, load: Callable[[str], M]) -> tuple[Opts, M | None]:
    """The network a new run starts from when its options name ``init_weights`` (a resumed run: none).

    Args:
        cfg: the run's options (with ``init_weights`` and ``net``).
        ck: the checkpoint the run resumes from, or ``None``.
        load: reads a weights spec into a network with a ``config``.

    Returns:
        The options with the network sizes of the weights, and the network (``None``: a random initialisation).
    """
    spec = getattr(cfg, "init_weights", None)
    if ck is not None or spec is None:
        return cfg, None
    start = load(spec)
    return dataclasses.replace(cfg, net=start.config), start  # type: ignore[call-arg]


def with_weights(net: M, start: torch.nn.Module | None) -> M:
    """``net`` with the weights of ``start`` (when given)."""
    if start is not None:
        net.load_state_dict(start.state_dict())
    return net


@contextlib.contextmanager
def training_process(cfg: TrainOptions, run: Path) -> Iterator[DistContext]:
    """This process's part of a run (:func:`~meshpose.train.loop.setup_distributed`, ended on leaving): rank 0
    writes ``run/config.json``; torch gets ``cfg.threads`` threads and the seed ``cfg.seed + rank`` (build the
    network inside, after it).

    Raises:
        BopFormatError: ``cfg.cached`` or ``cfg.val_cached`` names no dataset or split — here, before anything
            starts, not later in a data worker or at the first validation.
    """
    for spec in (cfg.cached, cfg.val_cached):
        if spec is not None:
            open_cached(spec)
    ctx = setup_distributed()
    try:
        if ctx.rank == 0:
            run.mkdir(parents=True, exist_ok=True)
            (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        torch.set_num_threads(max(1, cfg.threads))
        torch.manual_seed(cfg.seed + ctx.rank)
        yield ctx
    finally:
        teardown_distributed(ctx)


def adamw(cfg: TrainOptions, *, decay_groups: bool = False) -> Callable[[torch.nn.Module], torch.optim.Optimizer]:
    """The optimiser factory of a run: AdamW at ``cfg.lr`` with ``cfg.weight_decay``.

    Args:
        cfg: the run's options.
        decay_groups: decay only the weight matrices and kernels (parameters of two or more dimensions), not the
            biases, norms and scalars.
    """

    def make(m: torch.nn.Module) -> torch.optim.Optimizer:
        if not decay_groups:
            return torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        decay = [p for _, p in m.named_parameters() if p.ndim > 1]
        rest = [p for _, p in m.named_parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.lr)

    return make


def method_task(
    cfg: TrainOptions,
    method: str,
    net: torch.nn.Module,
    net_config: dict[str, Any],
    *,
    data: Callable[[int, int], Iterator[B]],
    loss: Callable[[torch.nn.Module, B], tuple[torch.Tensor, dict[str, float]]],
    to_device: Callable[[B, torch.device], B],
    validate: Callable[[torch.nn.Module, int], dict[str, Any]] | None,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
) -> TrainTask[B]:
    """The :class:`~meshpose.train.loop.TrainTask` of a run with options ``cfg``: ``net`` (its config as a dict
    ``net_config``), the data spec and the options are saved with the weights; ``validate`` (``None``: nothing to
    validate on) runs when ``cfg.val_every``; the optimiser is :func:`adamw`'s unless ``make_optimizer`` is given."""
    return TrainTask(
        method=method,
        model=net,
        net_config=net_config,
        make_optimizer=make_optimizer or adamw(cfg),
        data=data,
        loss=loss,
        to_device=to_device,
        validate=validate if cfg.val_every and validate is not None else None,
        data_spec=cfg.data,
        run_config=cfg.to_dict(),
    )


def loop_config(
    cfg: TrainOptions,
    *,
    val_metric: str,
    higher_is_better: bool = True,
    floor: float = 0.1,
    kind: Literal["cosine", "one-cycle", "constant"] = "cosine",
) -> LoopConfig:
    """How :func:`~meshpose.train.loop.train_loop` runs a run with options ``cfg``: the schedule (warm-up over
    ``cfg.warmup`` steps, then ``kind`` decay to ``floor · cfg.lr`` at ``cfg.steps``), clipping, rhythm and seed.

    Example:
        >>> loop_config(TrainOptions(lr=1e-3, steps=50), val_metric="acc").schedule
        Schedule(lr=0.001, steps=50, warmup=100, kind='cosine', floor=0.1)
    """
    return LoopConfig(
        schedule=Schedule(lr=cfg.lr, steps=cfg.steps, warmup=cfg.warmup, kind=kind, floor=floor),
        grad_clip=cfg.grad_clip,
        log_every=cfg.log_every,
        val_every=cfg.val_every,
        ckpt_every=cfg.ckpt_every,
        items_per_step=cfg.batch_size,
        val_metric=val_metric,
        higher_is_better=higher_is_better,
        seed=cfg.seed,
    )


def lazy_validation(
    draw: Callable[[], Sequence[I]], measure: Callable[[torch.nn.Module, list[I]], dict[str, Any]]
) -> Callable[[torch.nn.Module, int], dict[str, Any]]:
    """A ``validate(model, step)`` hook that draws its held-out set once, at the first validation."""
    held_out: list[I] = []

    def validate(model: torch.nn.Module, step: int) -> dict[str, Any]:
        if not held_out:
            held_out.extend(draw())
        return measure(model, held_out)

    return validate


def batch_to_device(data: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch dict on ``device``: its tensors, poses and crop batches moved, anything else (models, cameras,
    lights) as is."""
    out = dict(data)
    for k, v in data.items():
        if isinstance(v, torch.Tensor | CropBatch):
            out[k] = v.to(device)
        elif isinstance(v, Pose):
            out[k] = v.to(device=device)
    return out


# ----------------------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------------------
def scene_items(
    cfg: TrainOptions,
    objects: Sequence[ObjectModel],
    scene: SceneConfig,
    rng: np.random.Generator,
    make: Callable[[SyntheticSample], Sequence[I]],
) -> Iterator[list[I]]:
    """Endless synthetic scenes of ``objects``: a random pool of ``cfg.object_pool`` of them every
    ``cfg.pool_scenes`` scenes (with the default distractors of ``cfg.seed``), ``cfg.views_per_scene`` views of
    each; yields the items ``make`` draws from the views of one scene (a scene that cannot be drawn ends early:
    the items of its earlier views). With ``cfg.cached``, a share ``cfg.cached_share`` of the draws are
    ``cfg.views_per_scene`` views of that pre-rendered split instead (so that share of the views)."""
    distractors = default_distractors(cfg.seed)
    cached = cached_views(cfg.cached, rng) if cfg.cached is not None and cfg.cached_share > 0 else None
    empty = 0  # draws in a row that gave no item
    while True:
        pool_idx = rng.choice(len(objects), size=min(cfg.object_pool, len(objects)), replace=False)
        sampler = SceneSampler([objects[int(i)] for i in pool_idx], scene, distractors=distractors)
        drawn = 0
        while drawn < cfg.pool_scenes:
            items: list[I] = []
            if cached is not None and rng.random() < cfg.cached_share:
                for _ in range(cfg.views_per_scene):  # a malformed split's errors are its own: not skipped
                    items.extend(make(next(cached)))
            else:
                drawn += 1
                try:
                    layout = sampler.layout(rng)
                    for _ in range(cfg.views_per_scene):
                        items.extend(make(sampler.view(layout, rng)))
                except (RuntimeError, ValueError) as exc:  # a scene that cannot be drawn: draw another
                    log.debug("skipped a scene: %s", exc)
            empty = 0 if items else empty + 1
            if empty >= MAX_EMPTY_DRAWS:  # a stream that can give nothing must not leave its trainer waiting
                raise RuntimeError(
                    f"no training item in {empty} draws in a row from {cfg.data}"
                    + (f" and {cfg.cached}" if cached is not None else "")
                    + f": are the objects visible enough (min_visib {cfg.min_visib}) and the meshes usable?"
                )
            yield items


class SceneStream(torch.utils.data.IterableDataset):
    """An endless stream of training items drawn from synthetic scenes of ``cfg.data`` by :func:`scene_items`
    (one stream per worker and rank; it depends only on ``(cfg.seed, rank, worker, start_step, SALT)``, so a
    resumed run draws new data). A subclass sets :attr:`SALT` (its own random stream) and :meth:`make`.

    Args:
        cfg: the run's configuration.
        rank: process rank (DDP), mixed into the seed.
        start_step: the step the run resumes at, mixed into the seed.
    """

    SALT: ClassVar[int] = 0

    def __init__(self, cfg: Any, rank: int = 0, start_step: int = 0) -> None:
        super().__init__()
        self.cfg, self.rank, self.start_step = cfg, rank, start_step

    def make(self, sample: SyntheticSample, rng: np.random.Generator) -> Sequence[Any]:
        """The items drawn from one synthetic view."""
        raise NotImplementedError

    def stream_rng(self) -> np.random.Generator:
        """This worker's random stream (a data worker gets one torch thread)."""
        info = torch.utils.data.get_worker_info()
        if info is not None:
            torch.set_num_threads(1)
        worker = 0 if info is None else int(info.id)
        return np.random.default_rng([self.cfg.seed, self.rank, worker, self.start_step, self.SALT])

    def __iter__(self) -> Iterator[Any]:
        cfg = self.cfg
        rng = self.stream_rng()
        objects = resolve_objects(cfg.data, cfg.seed)
        for items in scene_items(cfg, objects, cfg.scene_config(), rng, lambda sample: self.make(sample, rng)):
            yield from items


def draw_held_out(
    cfg: TrainOptions,
    count: int,
    scene: SceneConfig,
    make: Callable[[SyntheticSample, np.random.Generator], Sequence[I]],
    what: str = "items",
) -> list[I]:
    """``count`` held-out items of ``cfg.val_objects``, the same for every call with one config: scenes of all of
    them (seed ``cfg.seed + 1``, its default distractors), ``make`` drawing the items of each — or, with
    ``cfg.val_cached``, the views of that pre-rendered split (in the order of that seed's generator).

    Raises:
        RuntimeError: ``count`` items not drawn in ``20 · count`` scenes (views).
    """
    rng = np.random.default_rng([cfg.seed + 1, 0x7A1])
    source = cfg.val_cached
    drawn = cached_views(source, rng) if source is not None else None
    sampler = None
    if drawn is None:
        objects = resolve_objects(cfg.val_objects, cfg.seed)
        sampler = SceneSampler(list(objects), scene, distractors=default_distractors(cfg.seed + 1))
    out: list[I] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 20 * count:
            raise RuntimeError(f"could not draw {count} validation {what} of {source or cfg.val_objects}")
        if drawn is not None:  # a given source's errors are its own (e.g. a malformed split): not skipped
            out.extend(make(next(drawn), rng))
            continue
        assert sampler is not None
        try:
            out.extend(make(sampler.sample(rng), rng))
        except (RuntimeError, ValueError) as exc:
            log.debug("skipped a validation scene: %s", exc)
    return out[:count]
