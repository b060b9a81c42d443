"""The pose hypotheses side file of ``meshpose estimate --hypotheses-out FILE.jsonl``: one JSON object per line,
one line per detection.

A line holds the detection (``scene_id``, ``im_id``, ``obj_id``, ``detection``: its index among the image's
detections, ``instance``: its index among the image's detections of the same object, ``bbox`` ``[x, y, w, h]`` in
pixels, ``det_score``), ``failure`` (``{"code", "message"}`` or ``null``), ``chosen`` (the index of the hypothesis
written to the results, or ``null``) and ``hypotheses``, best first as the estimator ranked them, each::

    {"R": [9 numbers, row-major], "t": [3 numbers, mm], "score": s,
     "refined": {"R": [...], "t": [...], "score": s, "failure": {"code", "message"} | null} | null}

``score`` is the estimator's; a refined hypothesis' ``score`` is the render-and-compare score that chose among them,
and its ``coarse_score`` the same score of the unrefined pose (when the run compared them: a hypothesis then stands
for whichever of the two scores higher; ``chosen_refined`` says which pose of the chosen hypothesis was written).
Translations are millimetres in the file, as in BOP results files; metres inside (the conversion happens here).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.errors import FormatError

__all__ = [
    "DetectionHypotheses",
    "HypothesesFormatError",
    "Hypothesis",
    "format_hypotheses_line",
    "image_keys_of_lines",
    "parse_hypotheses_line",
    "read_hypotheses",
]


class HypothesesFormatError(FormatError):
    """A malformed line of a hypotheses file; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class Hypothesis:
    """One pose hypothesis of a detection (metres).

    Args:
        R: ``(3, 3)`` rotation ``cam_R_m2c``.
        t: ``(3,)`` translation in metres.
        score: the estimator's score.
        refined_R: ``(3, 3)`` rotation after refinement (``None`` without ``--refine``).
        refined_t: ``(3,)`` translation after refinement, metres.
        refined_score: render-and-compare score of the refined pose.
        refine_failure: ``{"code", "message"}`` when the refiner reported a failure for it.
        coarse_score: the same render-and-compare score of the unrefined pose (``None``: not compared).
    """

    R: np.ndarray
    t: np.ndarray
    score: float
    refined_R: np.ndarray | None = None
    refined_t: np.ndarray | None = None
    refined_score: float | None = None
    refine_failure: dict[str, str] | None = None
    coarse_score: float | None = None


@dataclass(frozen=True, eq=False)
class DetectionHypotheses:
    """The hypotheses of one detection (one line of the file).

    Args:
        scene_id, im_id, obj_id: the detection's image and object.
        detection: its index among the image's detections (the order the run used: by decreasing score).
        instance: its index among the image's detections of ``obj_id``.
        bbox: ``(4,)`` ``[x, y, w, h]`` pixels.
        det_score: the detector's score.
        hypotheses: best first.
        chosen: index of the hypothesis written to the results, ``None`` when none was (a failure).
        failure: ``{"code", "message"}`` when the detection failed.
        chosen_refined: whether the refined (``True``) or the coarse (``False``) pose of the chosen hypothesis was
            written; ``None`` without refinement.
    """

    scene_id: int
    im_id: int
    obj_id: int
    detection: int
    instance: int
    bbox: np.ndarray
    det_score: float
    hypotheses: tuple[Hypothesis, ...] = ()
    chosen: int | None = None
    failure: dict[str, str] | None = None
    chosen_refined: bool | None = None


def _pose_json(R: np.ndarray, t: np.ndarray) -> dict[str, list[float]]:
    return {
        "R": [float(f"{v:.9g}") for v in np.asarray(R, dtype=np.float64).reshape(9)],
        "t": [round(float(v), 6) for v in np.asarray(t, dtype=np.float64).reshape(3) * 1e3],
    }


def format_hypotheses_line(rec: DetectionHypotheses) -> str:
    """One detection's hypotheses as a JSON line (no newline), ``t`` in millimetres.

    Example:
        >>> h = Hypothesis(np.eye(3), np.array([0.0, 0.0, 0.5]), 0.8)
        >>> line = format_hypotheses_line(DetectionHypotheses(1, 2, 5, 0, 0, np.array([1.0, 2, 3, 4]), 0.9, (h,), 0))
        >>> json.loads(line)["hypotheses"][0]["t"]
        [0.0, 0.0, 500.0]
    """
    hyps = []
    for h in rec.hypotheses:
        item: dict[str, Any] = {**_pose_json(h.R, h.t), "score": float(h.score), "refined": None}
        if h.refined_R is not None and h.refined_t is not None:
            item["refined"] = {
                **_pose_json(h.refined_R, h.refined_t),
                "score": None if h.refined_score is None else float(h.refined_score),
                "failure": h.refine_failure,
                "coarse_score": h.coarse_score,
            }
        hyps.append(item)
    out = {
        "scene_id": int(rec.scene_id),
        "im_id": int(rec.im_id),
        "obj_id": int(rec.obj_id),
        "detection": int(rec.detection),
        "instance": int(rec.instance),
        "bbox": [float(v) for v in np.asarray(rec.bbox, dtype=np.float64).reshape(4)],
        "det_score": float(rec.det_score),
        "chosen": rec.chosen,
        "chosen_refined": rec.chosen_refined,
        "failure": rec.failure,
        "hypotheses": hyps,
    }
    return json.dumps(out)


def _pose_from(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    R = np.asarray(item["R"], dtype=np.float64).reshape(3, 3)
    t = np.asarray(item["t"], dtype=np.float64).reshape(3) * 1e-3
    return R, t


def parse_hypotheses_line(line: str, *, where: str = "hypotheses") -> DetectionHypotheses:
    """Parse one line written by :func:`format_hypotheses_line` (millimetres → metres).

    Raises:
        HypothesesFormatError: not JSON, or a missing or malformed field (the message starts with ``where``).
    """
    try:
        d = json.loads(line)
        hyps = []
        for h in d["hypotheses"]:
            R, t = _pose_from(h)
            ref = h.get("refined")
            if ref is not None:
                rR, rt = _pose_from(ref)
                score, c_score = ref.get("score"), ref.get("coarse_score")
                hyps.append(
                    Hypothesis(
                        R,
                        t,
                        float(h["score"]),
                        rR,
                        rt,
                        None if score is None else float(score),
                        ref["failure"],
                        None if c_score is None else float(c_score),
                    )
                )
            else:
                hyps.append(Hypothesis(R, t, float(h["score"])))
        return DetectionHypotheses(
            scene_id=int(d["scene_id"]),
            im_id=int(d["im_id"]),
            obj_id=int(d["obj_id"]),
            detection=int(d["detection"]),
            instance=int(d["instance"]),
            bbox=np.asarray(d["bbox"], dtype=np.float64).reshape(4),
            det_score=float(d["det_score"]),
            hypotheses=tuple(hyps),
            chosen=None if d["chosen"] is None else int(d["chosen"]),
            failure=d["failure"],
            chosen_refined=d.get("chosen_refined"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HypothesesFormatError(f"{where}: malformed hypotheses line ({type(exc).__name__}: {exc})") from exc


def read_hypotheses(path: str | Path) -> list[DetectionHypotheses]:
    """Read a hypotheses file (blank lines skipped).

    Raises:
        FileNotFoundError: no such file.
        HypothesesFormatError: a malformed line (``file:line`` in the message).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"hypotheses file not found: {p}")
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            out.append(parse_hypotheses_line(line, where=f"{p}:{i}"))
    return out


def image_keys_of_lines(lines: Iterable[str]) -> list[tuple[int, int] | None]:
    """``(scene_id, im_id)`` of each line (``None`` for a line that is not a JSON object with both, e.g. one torn
    by a crash), so a resumed run can keep the lines of its finished images only."""
    out: list[tuple[int, int] | None] = []
    for line in lines:
        try:
            d = json.loads(line)
            out.append((int(d["scene_id"]), int(d["im_id"])))
        except (ValueError, KeyError, TypeError):
            out.append(None)
    return out
