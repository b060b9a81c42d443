"""The per-image job of ``meshpose estimate``: what to run (:class:`EstimateSpec`), one image's detections
(:class:`EstimateTask`), what came out (:class:`EstimateOutcome`), and the worker state that turns one into the
other (:class:`EstimateWorkerState`).

Per image: load the observation, run the coarse estimator on all the image's detections (``hypotheses`` poses
each), and with ``refine`` refine every hypothesis alone and keep the one with the best render-and-compare score
(:func:`~meshpose.coarse.score.score_hypotheses`). Every finished detection gives one results row; a failed one
gives an :class:`~meshpose.run.job.ItemFailure` and no row. Like the ``refine`` job, everything here is picklable
and runs the same in the calling process and on Ray actors.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshpose.coarse.base import Estimator
from meshpose.coarse.registry import make_estimator
from meshpose.coarse.score import score_hypotheses
from meshpose.io.bop import BopDataset
from meshpose.io.detections import decode_rle, encode_rle
from meshpose.io.hypotheses import DetectionHypotheses, Hypothesis
from meshpose.io.results import ResultRow
from meshpose.refine.base import Refiner
from meshpose.refine.registry import make_refiner
from meshpose.run.job import (
    IMAGE_FAILED,
    MESH_UNREADABLE,
    UNKNOWN_OBJECT,
    ImageKey,
    ImageOutcome,
    ItemFailure,
    failure_code_and_message,
)
from meshpose.types import Detection, EstimateResult, ObjectModel, Observation, Pose, PoseEstimate

__all__ = [
    "EstimateOutcome",
    "EstimateSpec",
    "EstimateTask",
    "EstimateWorkerState",
    "PackedDetection",
    "process_estimate",
]

log = logging.getLogger(__name__)

#: Failure code of a refinement that raised (the coarse pose is kept for that hypothesis).
REFINE_ERROR = "refiner_failure"


@dataclass(frozen=True)
class EstimateSpec:
    """What an ``estimate`` run does to every image; small and picklable (it travels to every worker).

    Args:
        dataset: BOP dataset folder (every worker opens it itself).
        split: dataset split.
        method: coarse estimator preset (``meshpose estimate --method``).
        config: estimator option overrides (``--config``), as :func:`~meshpose.coarse.registry.make_estimator`
            takes them.
        hypotheses: pose hypotheses asked of the estimator per detection (``--hypotheses``).
        refine: refiner preset or chain (``--refine``); ``None``: the coarse poses as they are.
        refine_config: refiner option overrides (``--refine-config``).
        iterations: outer iterations of the refiner (``None``: its default).
        use_depth: give depth to RGB methods when the dataset has it (an ``rgbd`` method always gets it).
        threads: torch CPU threads of each worker (``None``: leave torch's setting).
        models_dir: the folder of the meshes inside ``dataset``.
        keep_unrefined: with ``refine``, a hypothesis keeps its coarse pose where its refined pose scores lower
            by the render-and-compare score (:func:`~meshpose.coarse.score.score_hypotheses`, both scored the
            same way), so that refinement never makes the written pose worse by the pipeline's own measure;
            ``False``: the refined poses always (``--always-refined``). Chosen on held-out RGB synthetic sets
            (docs/picopose.md): ``contour`` after ``picopose`` lowered the AR of photoreal scenes of unseen objects
            0.895 → 0.885, with the rule 0.894; on GL scenes 0.866 → 0.867 / 0.867.
    """

    dataset: str
    split: str = "test"
    method: str = "picopose"
    config: dict[str, Any] = field(default_factory=dict)
    hypotheses: int = 1
    refine: str | None = None
    refine_config: dict[str, Any] = field(default_factory=dict)
    iterations: int | None = None
    use_depth: bool = True
    threads: int | None = None
    models_dir: str = "models"
    keep_unrefined: bool = True

    def __post_init__(self) -> None:
        if self.hypotheses < 1:
            raise ValueError(f"hypotheses must be >= 1, got {self.hypotheses}")
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def make_state(self, refiner: Refiner | None = None) -> EstimateWorkerState:
        """The worker state of this job (``refiner``: a ready one instead of building :attr:`refine`)."""
        return EstimateWorkerState(self, refiner)


@dataclass(frozen=True)
class PackedDetection:
    """A :class:`~meshpose.types.Detection` made small for shipping to workers: its mask as COCO RLE.

    Example:
        >>> m = np.zeros((6, 8), bool); m[1:4, 2:5] = True
        >>> d = PackedDetection.pack(Detection(3, np.array([2.0, 1, 3, 3]), m, 0.5)).unpack(1, 2)
        >>> d.obj_id, d.score, bool((d.mask == m).all()), (d.scene_id, d.im_id)
        (3, 0.5, True, (1, 2))
    """

    obj_id: int
    bbox: tuple[float, float, float, float]
    score: float
    mask_rle: dict[str, Any] | None = None

    @classmethod
    def pack(cls, det: Detection) -> PackedDetection:
        box = np.asarray(det.bbox, dtype=np.float64).reshape(-1)
        bbox = tuple(float(v) for v in box) if box.shape == (4,) else (float("nan"),) * 4
        rle = encode_rle(det.mask) if det.mask is not None and np.asarray(det.mask).ndim == 2 else None
        return cls(int(det.obj_id), bbox, float(det.score), rle)  # type: ignore[arg-type]

    def unpack(self, scene_id: int, im_id: int) -> Detection:
        mask = decode_rle(self.mask_rle) if self.mask_rle is not None else None
        return Detection(self.obj_id, np.array(self.bbox, dtype=np.float64), mask, self.score, scene_id, im_id)


@dataclass(frozen=True)
class EstimateTask:
    """The detections of one image.

    Args:
        key: ``(scene_id, im_id)``.
        detections: the image's detections in the order they are numbered (by decreasing score for a file).
        detection_time_s: the detector's seconds on the image (added to the rows' ``time``; ``-1``: unknown).
    """

    key: ImageKey
    detections: tuple[PackedDetection, ...]
    detection_time_s: float = -1.0

    @property
    def instances(self) -> list[int]:
        """``instance`` of each detection: its index among the image's detections of the same object."""
        seen: dict[int, int] = {}
        out = []
        for d in self.detections:
            k = seen.get(d.obj_id, 0)
            seen[d.obj_id] = k + 1
            out.append(k)
        return out

    @property
    def obj_ids(self) -> list[int]:
        """The objects of the task (sorted, each once)."""
        return sorted({d.obj_id for d in self.detections})


@dataclass(frozen=True)
class EstimateOutcome(ImageOutcome):
    """What one image gave: :class:`~meshpose.run.job.ImageOutcome` (rows, failures, seconds) and the
    hypotheses of every detection, for the ``--hypotheses-out`` file.

    Args:
        hypotheses: one record per detection of the task (none when the whole image failed).
    """

    hypotheses: tuple[DetectionHypotheses, ...] = ()


class EstimateWorkerState:
    """What a worker loads once and keeps: the dataset, its object models, the estimator and the refiner.

    Args:
        spec: the job.
        refiner: a ready refiner to use instead of building ``spec.refine`` (in-process runs only).
        estimator: a ready estimator to use instead of building ``spec.method`` (in-process runs only).
    """

    def __init__(self, spec: EstimateSpec, refiner: Refiner | None = None, estimator: Estimator | None = None) -> None:
        self.spec = spec
        if spec.threads is not None:
            import torch

            torch.set_num_threads(spec.threads)
        self.dataset = BopDataset(spec.dataset, spec.split, models_dir=spec.models_dir)
        self.estimator = estimator if estimator is not None else make_estimator(spec.method, **spec.config)
        self.refiner = refiner
        if refiner is None and spec.refine:
            self.refiner = make_refiner(spec.refine, **spec.refine_config)

    @property
    def want_depth(self) -> bool:
        """Whether observations are loaded with depth (when the dataset has it)."""
        rgbd = self.estimator.modality == "rgbd" or (self.refiner is not None and self.refiner.modality == "rgbd")
        return rgbd or self.spec.use_depth

    def preload(self, obj_ids: Iterable[int]) -> None:
        """Load the object models of ``obj_ids`` now; a mesh that cannot be read is left for
        :func:`process_estimate` to report."""
        for obj_id in sorted(set(obj_ids)):
            try:
                self.dataset.object(obj_id)
            except (ValueError, OSError) as exc:
                log.warning("object %d: cannot load its mesh: %s", obj_id, exc)

    def process(self, task: EstimateTask) -> EstimateOutcome:
        """:func:`process_estimate` with this state."""
        return process_estimate(self, task)


def _load_objects(
    dataset: BopDataset, obj_ids: Sequence[int]
) -> tuple[dict[int, ObjectModel], dict[int, tuple[str, str]]]:
    """The models of ``obj_ids`` that load, and ``(code, message)`` of those that do not."""
    models: dict[int, ObjectModel] = {}
    problems: dict[int, tuple[str, str]] = {}
    for obj_id in obj_ids:
        try:
            models[obj_id] = dataset.object(obj_id)
        except (ValueError, OSError) as exc:
            try:
                known = obj_id in dataset.object_ids
            except (ValueError, OSError):
                known = False
            problems[obj_id] = (MESH_UNREADABLE, str(exc)) if known else (UNKNOWN_OBJECT, str(exc))
    return models, problems


def _refine_hypotheses(
    state: EstimateWorkerState, obs: Observation, model: ObjectModel, det: Detection, hyps: Sequence[PoseEstimate]
) -> tuple[list[Pose], list[tuple[str, str] | None], np.ndarray, np.ndarray | None]:
    """Refine each hypothesis alone (hypotheses of one object refined jointly would hide each other) and score
    the refined poses — and, with ``keep_unrefined``, the coarse ones the same way; a refinement that raises keeps
    its coarse pose with a failure. Returns the refined poses, their failures, their scores and the coarse
    poses' scores (``None`` without ``keep_unrefined``).

    The detection's modal mask, when it has one, goes to the refiner as ``obs.mask``: the refiners use it to tell
    the object's pixels from those of occluders and background (``contour``'s colour models, ``icp``'s and
    ``flow-pnp``'s match regions).
    """
    assert state.refiner is not None
    if det.mask is not None and det.mask.shape == obs.rgb.shape[:2]:
        obs = dataclasses.replace(obs, mask=det.mask[None])
    poses: list[Pose] = []
    fails: list[tuple[str, str] | None] = []
    for h in hyps:
        try:
            res = state.refiner.refine(obs, [model], Pose.stack([h.pose]), iterations=state.spec.iterations)
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
            log.warning("refining a hypothesis of object %d failed: %s", det.obj_id, exc)
            poses.append(h.pose)
            fails.append((REFINE_ERROR, f"{type(exc).__name__}: {exc}"))
            continue
        poses.append(res.pose[0])
        reason = res.info.failure[0]
        fails.append(None if reason is None else failure_code_and_message(reason))
    # One scoring call for the refined and (to compare) the coarse poses: the crop, its gradients, one render batch.
    compared = [h.pose for h in hyps] if state.spec.keep_unrefined else []
    scores = score_hypotheses(obs, model, det, poses + compared)
    n = len(poses)
    return poses, fails, scores[:n], scores[n:] if compared else None


def _record(
    det: Detection,
    index: int,
    instance: int,
    hypotheses: tuple[Hypothesis, ...] = (),
    chosen: int | None = None,
    failure: dict[str, str] | None = None,
    *,
    refined: bool | None = None,
) -> DetectionHypotheses:
    box = np.asarray(det.bbox, dtype=np.float64)
    return DetectionHypotheses(
        det.scene_id,
        det.im_id,
        det.obj_id,
        index,
        instance,
        box,
        float(det.score),
        hypotheses,
        chosen,
        failure,
        chosen_refined=refined,
    )


def _failed(
    det: Detection, index: int, instance: int, code: str, message: str
) -> tuple[ItemFailure, DetectionHypotheses]:
    """The failure (no row) and hypotheses record of a detection that gave no pose."""
    fail = ItemFailure(det.scene_id, det.im_id, det.obj_id, instance, code, f"detection {index}: {message}")
    return fail, _record(det, index, instance, failure={"code": code, "message": message})


def _one_detection(
    state: EstimateWorkerState,
    obs: Observation,
    model: ObjectModel,
    det: Detection,
    result: EstimateResult,
    index: int,
    instance: int,
) -> tuple[ResultRow | None, ItemFailure | None, DetectionHypotheses]:
    """The row (``time`` not yet set), failure and hypotheses record of one detection."""
    scene_id, im_id = det.scene_id, det.im_id
    if not result.ok:
        code, message = ("no_hypothesis", "the estimator found no pose")
        if result.failure is not None:
            code, message = result.failure.code.value, result.failure.message
        return None, *_failed(det, index, instance, code, message)
    hyps = result.hypotheses
    coarse = [p.pose.numpy() for p in hyps]
    if state.refiner is None:
        records = tuple(
            Hypothesis(R.reshape(3, 3), t.reshape(3), float(h.score)) for (R, t), h in zip(coarse, hyps, strict=True)
        )
        row = ResultRow.from_pose(scene_id, im_id, det.obj_id, hyps[0].pose, float(hyps[0].score))
        return row, None, _record(det, index, instance, records, 0)
    poses, fails, scores, coarse_scores = _refine_hypotheses(state, obs, model, det, hyps)
    # Per hypothesis the pose it stands for: the refined one, or the coarse one where that scores higher.
    unrefined = np.zeros(len(hyps), bool) if coarse_scores is None else coarse_scores > scores
    taken = scores if coarse_scores is None else np.maximum(scores, coarse_scores)
    best = int(np.argmax(taken))
    records_r = []
    for i, ((R, t), h, p, f, s) in enumerate(zip(coarse, hyps, poses, fails, scores, strict=True)):
        rR, rt = p.numpy()
        failure = None if f is None else {"code": f[0], "message": f[1]}
        c_score = None if coarse_scores is None else float(coarse_scores[i])
        records_r.append(
            Hypothesis(
                R.reshape(3, 3),
                t.reshape(3),
                float(h.score),
                rR.reshape(3, 3),
                rt.reshape(3),
                float(s),
                failure,
                c_score,
            )
        )
    chosen_pose = hyps[best].pose if unrefined[best] else poses[best]
    row = ResultRow.from_pose(scene_id, im_id, det.obj_id, chosen_pose, float(taken[best]))
    item_fail = None
    best_fail = None if unrefined[best] else fails[best]
    if best_fail is not None:
        code, message = best_fail
        msg = f"detection {index}: refining its best hypothesis ({best}): {message}"
        item_fail = ItemFailure(scene_id, im_id, det.obj_id, instance, code, msg, row_written=True)
    return row, item_fail, _record(det, index, instance, tuple(records_r), best, refined=not bool(unrefined[best]))


def process_estimate(state: EstimateWorkerState, task: EstimateTask) -> EstimateOutcome:
    """Estimate (and with ``refine``, refine) the poses of all detections of one image.

    The rows come out in the task's detection order, one per detection that gave a pose, with ``time`` the wall
    time of the whole image (loading included) plus the detector's time. A detection that fails (bad box, unknown
    object, no pose found) gives a failure and no row; bad input that stops the whole image (an unreadable image)
    gives no rows and one image failure (a re-run retries it).

    Args:
        state: the worker's loaded dataset, estimator and refiner.
        task: the image.
    """
    t0 = time.perf_counter()
    scene_id, im_id = task.key
    spec = state.spec
    try:
        dets = [d.unpack(scene_id, im_id) for d in task.detections]
        models, problems = _load_objects(state.dataset, task.obj_ids)
        obs = state.dataset.observation(scene_id, im_id, with_depth=state.want_depth)
        usable = [i for i, d in enumerate(dets) if d.obj_id in models]
        found = state.estimator.estimate(
            obs, list(models.values()), [dets[i] for i in usable], hypotheses=spec.hypotheses
        )
        if len(found) != len(usable):
            raise RuntimeError(f"estimator '{spec.method}' gave {len(found)} results for {len(usable)} detections")
        results: dict[int, EstimateResult] = dict(zip(usable, found, strict=True))
        rows: list[ResultRow] = []
        failures: list[ItemFailure] = []
        records: list[DetectionHypotheses] = []
        for i, (det, inst) in enumerate(zip(dets, task.instances, strict=True)):
            row: ResultRow | None = None
            if i in results:
                row, fail, rec = _one_detection(state, obs, models[det.obj_id], det, results[i], i, inst)
            else:  # its mesh is missing or unreadable
                fail, rec = _failed(det, i, inst, *problems[det.obj_id])
            if row is not None:
                rows.append(row)
            if fail is not None:
                failures.append(fail)
            records.append(rec)
    except Exception as exc:  # one image's problem never stops the run (Ctrl-C, a BaseException, does)
        if isinstance(exc, ValueError | OSError | RuntimeError):
            log.warning("scene %d image %d failed: %s", scene_id, im_id, exc)
        else:  # not a bad input: a bug, whose traceback the log keeps
            log.error("scene %d image %d failed unexpectedly: %s", scene_id, im_id, exc, exc_info=True)
        fail = ItemFailure(scene_id, im_id, None, None, IMAGE_FAILED, f"{type(exc).__name__}: {exc}")
        return EstimateOutcome(task.key, (), (fail,), time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0 + max(task.detection_time_s, 0.0)
    timed = tuple(
        ResultRow(r.scene_id, r.im_id, r.obj_id, r.score, r.R, r.t, elapsed) for r in rows
    )  # BOP: the image's time on every row
    return EstimateOutcome(task.key, timed, tuple(failures), elapsed, tuple(records))
