"""Weak pose targets of ``jointloss`` stage 1: rough poses from the observed depth and the model, without labels.

The per-detection pose search (multi-start robust registration: :func:`weak_pose`, :class:`WeakPoseConfig`,
:class:`WeakLabel`, :func:`score_pose`, …) lives in :mod:`meshpose.geometry.registration` and is re-exported
here. This module is the batch layer over it: :func:`weak_labels` computes the labels of every detection of a list
of images of a BOP dataset, with a resumable cache.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshpose.geometry.registration import (
    WeakLabel,
    WeakPoseConfig,
    detection_points,
    free_space_depth,
    model_cloud,
    register_hypotheses,
    score_pose,
    start_rotations,
    weak_pose,
)
from meshpose.io.bop import BopDataset
from meshpose.nets.jointloss_batch import SampleKey, skip_reason
from meshpose.render.content import read_cache_npz, write_cache_npz
from meshpose.types import Camera, Detection, ObjectModel, Pose

log = logging.getLogger(__name__)

__all__ = [
    "WeakLabel",
    "WeakLabelSet",
    "WeakPoseConfig",
    "free_space_depth",
    "model_cloud",
    "register_hypotheses",
    "score_pose",
    "start_rotations",
    "weak_labels",
    "weak_pose",
]


@dataclass
class WeakLabelSet:
    """The weak labels of many detections.

    Args:
        labels: by ``(scene_id, im_id, det_index)``.
        failed: why a detection has no label, by the same key.
    """

    labels: dict[SampleKey, WeakLabel] = field(default_factory=dict)
    failed: dict[SampleKey, str] = field(default_factory=dict)


_CACHE_VERSION = 1
_CACHE_ARRAYS = ("keys", "obj_id", "R", "t", "stats")


def _save(path: Path, key: str, done: WeakLabelSet, obj_ids: dict[SampleKey, int]) -> None:
    ks = sorted(done.labels)
    labels = [done.labels[k] for k in ks]
    arrays = {
        "keys": np.array(ks, np.int64).reshape(-1, 3),
        "obj_id": np.array([obj_ids[k] for k in ks], np.int64),
        "R": np.array([lab.pose.numpy()[0] for lab in labels], np.float64).reshape(-1, 3, 3),
        "t": np.array([lab.pose.numpy()[1] for lab in labels], np.float64).reshape(-1, 3),
        "stats": np.array(
            [[lab.fitness, lab.rmse, lab.score, lab.violation, lab.time_s] for lab in labels], np.float64
        ).reshape(-1, 5),
    }
    failed = [[*k, obj_ids[k], reason] for k, reason in sorted(done.failed.items())]
    write_cache_npz(path, {"version": _CACHE_VERSION, "key": key, "failed": failed}, arrays, compressed=False)


def _load(path: Path, key: str) -> tuple[WeakLabelSet, dict[SampleKey, int]]:
    try:
        meta, arrays = read_cache_npz(path, _CACHE_VERSION, key, _CACHE_ARRAYS)
    except ValueError as exc:
        raise ValueError(
            f"weak-label cache {path} was made with other settings or another dataset; delete it or pass another "
            "cache path"
        ) from exc
    out, obj_ids = WeakLabelSet(), {}
    for k, o, R, t, st in zip(arrays["keys"], arrays["obj_id"], arrays["R"], arrays["t"], arrays["stats"], strict=True):
        sk = (int(k[0]), int(k[1]), int(k[2]))
        out.labels[sk] = WeakLabel(Pose(R, t), float(st[0]), float(st[1]), float(st[2]), float(st[3]), float(st[4]))
        obj_ids[sk] = int(o)
    for s, i, j, o, reason in meta.get("failed", []):
        out.failed[(int(s), int(i), int(j))] = str(reason)
        obj_ids[(int(s), int(i), int(j))] = int(o)
    return out, obj_ids


def weak_labels(
    dataset: BopDataset,
    detections: Mapping[tuple[int, int], Sequence[Detection]],
    objects: Mapping[int, ObjectModel] | None,
    keys: Sequence[tuple[int, int]] | None,
    cache_path: str | Path | None,
    *,
    config: WeakPoseConfig | None = None,
    min_points: int = 50,
    max_points: int = 1000,
    seed: int = 0,
    save_every: int = 20,
) -> WeakLabelSet:
    """Weak labels (:func:`weak_pose`) of every detection of the images ``keys``, with a resumable cache.

    Reads the images' depth and cameras only (never ``scene_gt.json``). Each detection's observed points are up
    to ``max_points`` pixels of its mask ∩ valid depth. A detection that cannot be labelled (no mask, fewer than
    ``min_points`` valid pixels, an error) is recorded in :attr:`WeakLabelSet.failed` with the reason and logged;
    the others go on. The cache (an ``.npz`` written atomically every ``save_every`` new results, at the end and on
    any interruption) holds the finished and the failed detections; a later call with the same settings only
    computes the missing ones (an entry whose detection now has another object id is recomputed).

    Args:
        dataset: the BOP dataset (depth needed).
        detections: detections by ``(scene_id, im_id)``; the list index is the ``det_index`` of a key.
        objects: models by object id, only these objects are labelled (``None``: every detected object, models
            from ``dataset``).
        keys: images ``(scene_id, im_id)`` (``None``: every image with detections).
        cache_path: the ``.npz`` cache (``None``: no cache).
        config: :func:`weak_pose` settings.
        min_points: fewest valid pixels of a detection.
        max_points: most observed points per detection.
        seed: seed of the point sampling and the start rotations.
        save_every: the cache is written after this many new results.

    Raises:
        ValueError: the cache was made with other settings.
    """
    cfg = config if config is not None else WeakPoseConfig()
    cache = Path(cache_path) if cache_path is not None else None
    ident = {"config": cfg.to_dict(), "seed": seed, "min_points": min_points, "max_points": max_points}
    key = json.dumps({**ident, "root": str(Path(dataset.root).resolve()), "split": dataset.split}, sort_keys=True)
    done, obj_ids = _load(cache, key) if cache is not None and cache.is_file() else (WeakLabelSet(), {})
    if done.labels or done.failed:
        log.info("weak labels: %d done, %d failed in %s", len(done.labels), len(done.failed), cache)
    images = sorted(detections) if keys is None else sorted({(int(s), int(i)) for s, i in keys})
    todo = [
        (s, i, j, d)
        for s, i in images
        for j, d in enumerate(detections.get((s, i), []))
        if (objects is None or int(d.obj_id) in objects) and obj_ids.get((s, i, j)) != int(d.obj_id)
    ]
    for k in [(s, i, j) for s, i, j, _ in todo]:
        done.labels.pop(k, None)
        done.failed.pop(k, None)
    log.info("weak labels: %d detections to label", len(todo))
    new, start = 0, time.perf_counter()
    depth_of: tuple[tuple[int, int], np.ndarray, Camera] | None = None
    try:
        for n, (s, i, j, det) in enumerate(todo):
            k, oid = (s, i, j), int(det.obj_id)
            obj_ids[k] = oid
            try:
                if depth_of is None or depth_of[0] != (s, i):
                    image_depth = dataset.depth(s, i)
                    if image_depth is None:
                        raise ValueError(f"no depth image for scene {s} image {i}")
                    depth_of = ((s, i), image_depth, dataset.camera(s, i))
                _, depth, camera = depth_of
                reason = skip_reason(det, depth, min_points)
                if reason is not None:
                    raise ValueError(reason)
                assert det.mask is not None
                rng = np.random.default_rng([seed, s, i, j])
                pts = detection_points(det.mask, depth, camera.K, max_points, rng)
                obj = objects[oid] if objects is not None else dataset.object(oid)
                done.labels[k] = weak_pose(pts, obj, camera, det.mask, depth=depth, config=cfg, rng=rng)
            except Exception as exc:  # one bad detection never stops the others
                done.failed[k] = f"{type(exc).__name__}: {exc}"
                log.warning("weak label of detection %s (object %d) skipped: %s", k, oid, done.failed[k])
            new += 1
            if cache is not None and new % max(1, save_every) == 0:
                _save(cache, key, done, obj_ids)
            if (n + 1) % 50 == 0:
                log.info(
                    "weak labels: %d / %d (%.2f s each)", n + 1, len(todo), (time.perf_counter() - start) / (n + 1)
                )
    finally:
        if cache is not None and new:
            _save(cache, key, done, obj_ids)
    log.info("weak labels: %d labelled, %d failed", len(done.labels), len(done.failed))
    return done
