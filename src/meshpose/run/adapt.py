"""``meshpose adapt``: self-supervised adaptation of a learned refiner to the user's unlabeled images.

What a run does (:func:`adapt`), for ``genflow`` (:mod:`meshpose.train.adapt`), ``abstract``
(:mod:`meshpose.train.adapt_abstract`) and ``deeprm`` (:func:`meshpose.train.deeprm.train_deeprm` on the user's
images, :mod:`meshpose.train.pseudo_views`):

1. open the user's BOP dataset (``--images``) and refuse it when its split holds no images; read the detections
   (``--detections``) and keep those with a mask of an object the dataset has a mesh of — a file with none is refused;
   ``images_range`` keeps the images with ``im_id`` in ``[A, B)``;
2. compute the **pseudo poses** once: per image, the ``picopose`` estimate of each detection refined by the teacher
   ``pseudo_refine`` (default ``genflow+contour``; a member that is the adapted method runs at the *starting*
   weights, the others at their defaults) and scored by the
   render-and-compare score (the ``meshpose estimate --refine …`` per-image job,
   :func:`~meshpose.run.estimate_job.process_estimate`). They are cached in ``RUN/pseudo_poses.json``
   after every image, so a stopped run goes on where it was;
3. adapt the network (:func:`meshpose.train.adapt.train_adapt`,
   :func:`meshpose.train.adapt_abstract.train_adapt_abstract`, :func:`meshpose.train.deeprm.train_deeprm`) —
   resumable with ``resume``.

Nothing reads a ground-truth pose: the dataset is read through its cameras, images and meshes only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meshpose.coarse.base import Estimator
from meshpose.io.bop import BopDataset
from meshpose.io.detections import DetectionsByImage, read_detections
from meshpose.io.jsonfile import write_json_atomic
from meshpose.refine.base import Refiner
from meshpose.run.estimate_job import (
    EstimateSpec,
    EstimateTask,
    EstimateWorkerState,
    PackedDetection,
    process_estimate,
)
from meshpose.train.abstract_config import AbstractAdaptConfig
from meshpose.train.adapt_config import AdaptConfig, PseudoPose
from meshpose.train.deeprm_config import DeepRMAdaptConfig
from meshpose.train.loop import LoopResult

__all__ = [
    "PSEUDO_FILE",
    "SUPPORTED",
    "adapt",
    "adapt_config",
    "check_images",
    "compute_pseudo_poses",
    "teacher_config",
    "usable_detections",
]

log = logging.getLogger(__name__)

#: methods ``meshpose adapt`` can adapt, and the options class of their runs
CONFIGS: dict[str, type[AdaptConfig] | type[AbstractAdaptConfig] | type[DeepRMAdaptConfig]] = {
    "genflow": AdaptConfig,
    "abstract": AbstractAdaptConfig,
    "deeprm": DeepRMAdaptConfig,
}
SUPPORTED = tuple(CONFIGS)
AnyAdaptConfig = AdaptConfig | AbstractAdaptConfig | DeepRMAdaptConfig
#: the pseudo-pose cache of a run folder
PSEUDO_FILE = "pseudo_poses.json"

ImageKey = tuple[int, int]


def check_images(ds: BopDataset, images_range: tuple[int, int] | None = None) -> list[ImageKey]:
    """The images of ``ds`` (in ``images_range`` when given) that have a colour image.

    Raises:
        ValueError: none (the message names the dataset and split).
    """
    where = f"{ds.root} [split {ds.split}]"
    keys = ds.image_keys(targets_only=False)
    if images_range is not None:
        keys = [k for k in keys if images_range[0] <= k[1] < images_range[1]]
    found = []
    for key in keys:
        try:
            ds.rgb_path(*key)
        except ValueError:
            continue
        found.append(key)
    if not found:
        span = f" with im_id in [{images_range[0]}, {images_range[1]})" if images_range is not None else ""
        raise ValueError(
            f"{where} has no images{span} (no rgb/ or gray/ image files next to scene_camera.json): "
            "adapt learns from the user's own images"
        )
    return found


def usable_detections(
    ds: BopDataset, dets: DetectionsByImage, keys: Sequence[ImageKey], path: str
) -> dict[ImageKey, list[int]]:
    """Per image of ``keys``, the indices of its detections with a mask of an object ``ds`` has a mesh of.

    Raises:
        ValueError: there is none (the message says what the file lacks).
    """
    objects = set(ds.object_ids)
    out: dict[ImageKey, list[int]] = {}
    n_all = n_mask = 0
    for key in keys:
        found = dets.get(key, [])
        n_all += len(found)
        n_mask += sum(d.mask is not None for d in found)
        keep = [i for i, d in enumerate(found) if d.mask is not None and d.obj_id in objects]
        if keep:
            out[key] = keep
    if not out:
        if n_all == 0:
            why = "no detection of these images"
        elif n_mask == 0:
            why = f"{n_all} detection(s) of these images but no mask (adapt compares with the detections' masks)"
        else:
            why = f"{n_mask} detection(s) with masks, but none of an object with a mesh in {ds.models_path}"
        raise ValueError(f"detections file {path}: {why}")
    skipped = n_all - sum(len(v) for v in out.values())
    if skipped:
        log.info("adapt: %d detection(s) without a mask or of an unknown object are not used", skipped)
    return out


def teacher_config(method: str, pseudo_refine: str, init_weights: str | None) -> dict[str, Any]:
    """The ``--config`` of the teacher ``pseudo_refine`` (a preset or chain): the member that is the adapted
    ``method`` runs ``init_weights`` (``None`` or ``"package"``: its default weights), the others their defaults.

    Example:
        >>> teacher_config("genflow", "genflow+contour", "runs/gf/model.pt")
        {'genflow': {'weights': 'runs/gf/model.pt'}}
        >>> teacher_config("abstract", "genflow+contour", "package:lmo")
        {}
    """
    members = pseudo_refine.split("+")
    if method not in members or init_weights in (None, "package"):
        return {}
    weights = {"weights": init_weights}
    return weights if len(members) == 1 else {method: weights}


def _pseudo_settings(method: str, cfg: AnyAdaptConfig, estimator_config: dict[str, Any]) -> dict[str, Any]:
    """What the pseudo poses depend on (a cache made with other settings is refused)."""
    teacher_weights = cfg.init_weights if method in cfg.pseudo_refine.split("+") else None
    return {
        "dataset": str(Path(cfg.data).resolve()),
        "split": cfg.split,
        "detections": str(Path(cfg.detections).resolve()),
        "init_weights": teacher_weights,
        "use_depth": cfg.use_depth,
        "estimator": "picopose",
        "estimator_config": estimator_config,
        "refiner": cfg.pseudo_refine,
    }


def compute_pseudo_poses(
    cfg: AnyAdaptConfig,
    run: Path,
    todo: dict[ImageKey, list[int]],
    *,
    estimator: Estimator | None = None,
    refiner: Refiner | None = None,
    estimator_config: dict[str, Any] | None = None,
    progress: Callable[[int, int, ImageKey], None] | None = None,
    method: str = "genflow",
) -> list[PseudoPose]:
    """The pseudo poses of the detections ``todo`` (image → detection indices), cached in ``run/pseudo_poses.json``.

    Each detection's ``picopose`` estimate is refined by ``cfg.pseudo_refine`` (a member that is the adapted
    ``method`` with ``cfg.init_weights``: :func:`teacher_config`) and scored by the
    render-and-compare score; a detection that gives no pose is left out (logged). Images already in the cache are
    not recomputed.

    Args:
        cfg: the run's options (dataset, split, detections, starting weights, depth).
        run: the run folder.
        todo: the detections to use, by image.
        estimator: a ready coarse estimator instead of ``picopose`` (tests).
        refiner: a ready refiner instead of ``cfg.pseudo_refine`` (tests).
        estimator_config: ``picopose`` options.
        progress: called as ``progress(done, total, key)`` after each image.
        method: the adapted method (``"genflow"``, ``"abstract"`` or ``"deeprm"``).

    Raises:
        ValueError: the cache was made with other settings.
    """
    est_cfg = dict(estimator_config or {})
    settings = _pseudo_settings(method, cfg, est_cfg)
    path = run / PSEUDO_FILE
    poses: list[PseudoPose] = []
    done: set[ImageKey] = set()
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("settings") != settings:
            raise ValueError(
                f"{path} holds pseudo poses made with other settings ({cached.get('settings')}); use a new run folder"
            )
        poses = [PseudoPose.from_dict(p) for p in cached["poses"]]
        done = {(int(s), int(i)) for s, i in cached["images"]}
    keys = sorted(todo)
    left = [k for k in keys if k not in done]
    if left:
        run.mkdir(parents=True, exist_ok=True)
        ref_cfg = teacher_config(method, cfg.pseudo_refine, cfg.init_weights)
        spec = EstimateSpec(
            dataset=cfg.data,
            split=cfg.split,
            method="picopose",
            config=est_cfg,
            hypotheses=1,
            refine=cfg.pseudo_refine,
            refine_config=ref_cfg,
            use_depth=cfg.use_depth,
        )
        state = EstimateWorkerState(spec, refiner, estimator)
        dets = read_detections(cfg.detections)
        log.info("pseudo poses: %d image(s) to estimate and refine (%d cached)", len(left), len(done))
        for n, key in enumerate(left, start=1):
            found = dets.get(key, [])
            idx = todo[key]
            task = EstimateTask(key, tuple(PackedDetection.pack(found[i]) for i in idx))
            outcome = process_estimate(state, task)
            for f in outcome.failures:
                log.info("pseudo poses: scene %d image %d: %s", key[0], key[1], f.message)
            for rec in outcome.hypotheses:
                if rec.chosen is None:
                    continue
                h = rec.hypotheses[rec.chosen]
                refined = h.refined_R is not None and h.refined_t is not None
                R, t = (h.refined_R, h.refined_t) if refined else (h.R, h.t)
                assert R is not None and t is not None
                score = h.refined_score if h.refined_score is not None else h.score
                poses.append(PseudoPose(key[0], key[1], idx[rec.detection], rec.obj_id, R, t, float(score)))
            if not outcome.failures or any(f.obj_id is not None for f in outcome.failures):
                done.add(key)  # an image that failed as a whole is retried by the next call
            write_json_atomic(
                path,
                {"settings": settings, "images": sorted(done), "poses": [p.to_dict() for p in poses]},
                indent=None,
            )
            if progress is not None:
                progress(n, len(left), key)
    keep = set(keys)
    return [p for p in poses if p.image in keep]


def adapt_config(
    images: str | Path,
    detections: str | Path,
    *,
    split: str = "test",
    options: dict[str, Any] | None = None,
    images_range: tuple[int, int] | None = None,
    method: str = "genflow",
) -> AnyAdaptConfig:
    """The options of a new run of ``method``: the defaults, ``options`` (``--config`` JSON: fields of
    :class:`~meshpose.train.adapt_config.AdaptConfig` or
    :class:`~meshpose.train.abstract_config.AbstractAdaptConfig` or
    :class:`~meshpose.train.deeprm_config.DeepRMAdaptConfig`, ``net`` excepted) and the command's arguments.

    Raises:
        ValueError: unknown options.
    """
    config_class = CONFIGS[method]
    opts = dict(options or {})
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(opts) - fields) + (["net"] if "net" in opts else [])
    if unknown:
        raise ValueError(f"unknown adapt option(s) {unknown} (the network's sizes come from its weights)")
    base = config_class().to_dict()
    base.update(opts)
    base.update(data=str(Path(images).resolve()), detections=str(Path(detections).resolve()), split=split)
    if images_range is not None:
        base["images_range"] = list(images_range)
    return config_class.from_dict(base)


def adapt(
    method: str,
    images: str | Path,
    detections: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    options: dict[str, Any] | None = None,
    steps: int | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    images_range: tuple[int, int] | None = None,
    estimator_config: dict[str, Any] | None = None,
    estimator: Estimator | None = None,
    refiner: Refiner | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    pseudo_progress: Callable[[int, int, ImageKey], None] | None = None,
) -> LoopResult:
    """Adapt ``method``'s network to the images of a BOP dataset from their detections, without labels.

    Args:
        method: the learned preset (``"genflow"``, ``"abstract"`` or ``"deeprm"``).
        images: the user's BOP dataset (images, cameras, meshes; ground truth is never read).
        detections: a BOP default-detections JSON with masks.
        out: the run folder (``pseudo_poses.json``, ``last.pt``, ``best.pt``, ``model.pt``, ``config.json``,
            ``train_log.jsonl``).
        split: the dataset's split.
        options: :class:`~meshpose.train.adapt_config.AdaptConfig` (``abstract``:
            :class:`~meshpose.train.abstract_config.AbstractAdaptConfig`; ``deeprm``:
            :class:`~meshpose.train.deeprm_config.DeepRMAdaptConfig`) fields (a new run only).
        steps: the run's total length (overrides ``options``; on resume, a new length).
        max_steps: stop after this many steps in this call.
        resume: continue the run in ``out`` (its saved options are used; ``images``, ``detections`` and
            ``options`` must name the same data).
        images_range: use only images with ``im_id`` in ``[A, B)``.
        estimator_config: ``picopose`` options of the pseudo poses.
        estimator: a ready coarse estimator (tests).
        refiner: a ready refiner for the pseudo poses (tests).
        progress: training progress, ``progress(step, stats)``.
        pseudo_progress: pseudo-pose progress, ``pseudo_progress(done, total, key)``.

    Raises:
        ValueError: an unsupported method, a dataset without images, detections without masks of its objects,
            or bad options.
        FileExistsError: ``out`` holds a run and ``resume`` is false.
    """
    if method not in SUPPORTED:
        raise ValueError(f"adapt: method '{method}' cannot be adapted (supported: {', '.join(SUPPORTED)})")
    run = Path(out)
    saved = run / "config.json"
    if (run / "last.pt").is_file() and not resume:
        raise FileExistsError(f"{run} already holds a run: pass --resume to continue it or use a new folder")
    cfg: AnyAdaptConfig
    if resume and saved.is_file():
        cfg = CONFIGS[method].from_dict(json.loads(saved.read_text()))
        if Path(cfg.data).resolve() != Path(images).resolve():
            raise ValueError(f"--resume: {run} adapts to {cfg.data}, not {images}")
        if Path(cfg.detections).resolve() != Path(detections).resolve():
            raise ValueError(f"--resume: {run} uses the detections {cfg.detections}, not {detections}")
    else:
        cfg = adapt_config(images, detections, split=split, options=options, images_range=images_range, method=method)
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    ds = BopDataset(cfg.data, cfg.split)
    keys = check_images(ds, cfg.images_range)
    dets_path = Path(cfg.detections)
    if not dets_path.is_file():
        raise ValueError(f"detections file {dets_path} not found")
    todo = usable_detections(ds, read_detections(dets_path), keys, str(dets_path))
    pseudo = compute_pseudo_poses(
        cfg,
        run,
        todo,
        estimator=estimator,
        refiner=refiner,
        estimator_config=estimator_config,
        progress=pseudo_progress,
        method=method,
    )
    if not pseudo:
        raise ValueError(f"no detection of {cfg.data} gave a pseudo pose: nothing to adapt to")
    if isinstance(cfg, DeepRMAdaptConfig):
        from meshpose.train.deeprm import train_deeprm

        return train_deeprm(cfg, run, resume=resume, steps=steps, max_steps=max_steps, progress=progress, pseudo=pseudo)
    if isinstance(cfg, AbstractAdaptConfig):
        from meshpose.train.adapt_abstract import train_adapt_abstract

        return train_adapt_abstract(
            cfg, run, pseudo, resume=resume, steps=steps, max_steps=max_steps, progress=progress
        )
    from meshpose.train.adapt import train_adapt

    return train_adapt(cfg, run, pseudo, resume=resume, steps=steps, max_steps=max_steps, progress=progress)
