"""BOP default-detections files (2D detections as JSON, masks as COCO run-length encoding).

A detections file is a JSON list of records, one per detection::

    {"scene_id": 2, "image_id": 3, "category_id": 5, "score": 0.93, "bbox": [x, y, w, h], "time": 0.21,
     "segmentation": {"size": [h, w], "counts": "..."}}

``bbox`` is in pixels, ``(x, y)`` the top-left corner and ``w, h`` the size over pixel edges (COCO/BOP, as
:class:`~meshpose.types.Detection`); ``category_id`` is the object id; ``time`` the seconds the detector spent on
the whole *image* (BOP adds it to the pose estimator's time; the same on every record of an image). The optional
``segmentation`` is the modal (visible) mask as COCO RLE: column-major run lengths, starting with a run of zeros,
either *compressed* (``counts`` a string, what this module writes) or *uncompressed* (``counts`` a list of ints).
Encoding and decoding go through ``pycocotools.mask``.

There are no millimetres here (everything is in pixels), so nothing is converted.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from meshpose.errors import FormatError
from meshpose.io.jsonfile import write_json_atomic
from meshpose.types import Detection

__all__ = [
    "DetectionsByImage",
    "DetectionsFormatError",
    "decode_rle",
    "encode_rle",
    "read_detections",
    "write_detections",
]

ImageKey = tuple[int, int]
"""``(scene_id, im_id)``."""


class DetectionsFormatError(FormatError):
    """A malformed detections file or record; the message names the file and the record's index.

    Attributes:
        record: 0-based index of the record in the file's list, or ``None`` for a problem with the whole file
            (or with an RLE outside a file, see :func:`decode_rle`).
    """

    record: int | None = None


class DetectionsByImage(dict[ImageKey, list[Detection]]):
    """Detections keyed by ``(scene_id, im_id)`` (a plain ``dict``) with the detector's time per image.

    Attributes:
        times: seconds the detector spent on each image, by ``(scene_id, im_id)`` (the largest ``time`` of the
            image's records; ``-1`` = unknown). It also has the images whose detections were all filtered out,
            since their detection time was spent all the same.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times: dict[ImageKey, float] = {}

    def time(self, scene_id: int, im_id: int) -> float:
        """The detector's seconds on image ``(scene_id, im_id)``, ``-1`` when unknown."""
        return self.times.get((scene_id, im_id), -1.0)


# ----------------------------------------------------------------------------------------------------------
# COCO run-length encoding
# ----------------------------------------------------------------------------------------------------------
def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a mask as compressed COCO RLE.

    Args:
        mask: ``(H, W)`` mask; non-zero (True) is the object.

    Returns:
        ``{"size": [H, W], "counts": str}`` (JSON-ready: the counts are text, not bytes).

    Raises:
        ValueError: if ``mask`` is not 2-D.

    Example:
        >>> m = np.zeros((3, 4), bool); m[1, 2] = True
        >>> encode_rle(m)
        {'size': [3, 4], 'counts': '714'}
        >>> bool((decode_rle(encode_rle(m)) == m).all())
        True
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode_rle needs an (H, W) mask, got shape {m.shape}")
    rle = coco_mask.encode(np.asfortranarray(m != 0, dtype=np.uint8))
    counts = rle["counts"]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts.decode("ascii")}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO RLE mask, compressed (``counts`` a string or bytes) or uncompressed (a list of ints).

    Args:
        rle: ``{"size": [H, W], "counts": ...}``.

    Returns:
        ``(H, W)`` bool mask (C-ordered).

    Raises:
        DetectionsFormatError: a missing or malformed ``size`` or ``counts``, a polygon instead of an RLE, or run
            lengths that do not add up to ``H × W`` (the message says which).

    Example:
        >>> decode_rle({"size": [2, 3], "counts": [1, 2, 3]}).astype(int).tolist()   # column-major runs
        [[0, 1, 0], [1, 0, 0]]
    """
    if not isinstance(rle, Mapping):
        kind = "a polygon list (not supported: use RLE)" if isinstance(rle, list) else type(rle).__name__
        raise DetectionsFormatError(f"segmentation must be an RLE dict {{'size', 'counts'}}, got {kind}")
    if "size" not in rle or "counts" not in rle:
        raise DetectionsFormatError(f"RLE needs 'size' and 'counts', got keys {sorted(rle)}")
    size = rle["size"]
    try:
        h, w = (int(s) for s in size)
        if h != size[0] or w != size[1] or h < 0 or w < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise DetectionsFormatError(f"RLE size must be [height, width] (non-negative ints), got {size!r}") from None
    counts = rle["counts"]
    if isinstance(counts, list):
        runs = _checked_runs(counts, h, w)
        coded = coco_mask.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    elif isinstance(counts, str | bytes):
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        total = _compressed_total(raw)
        if total != h * w:
            raise DetectionsFormatError(
                f"RLE counts cover {total} pixels but size {h}×{w} has {h * w}", value=counts, cause="bad RLE"
            )
        coded = {"size": [h, w], "counts": raw}
    else:
        raise DetectionsFormatError(f"RLE counts must be a string or a list of ints, got {type(counts).__name__}")
    if h * w == 0:
        return np.zeros((h, w), dtype=bool)
    try:
        with warnings.catch_warnings():
            # pycocotools ≤ 2.0.11 hands numpy an object whose __array__ lacks numpy 2's `copy` keyword.
            warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
            decoded = coco_mask.decode(coded)
    except (ValueError, OverflowError) as exc:  # pycocotools' own checks; ours above should catch these first
        raise DetectionsFormatError(f"invalid RLE ({exc})", value=counts, cause="bad RLE") from exc
    return np.ascontiguousarray(decoded, dtype=bool)


def _is_integral(value: Any) -> bool:
    """Whether a JSON value is an integer (``3`` or ``3.0``; not a bool, NaN or inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def _checked_runs(counts: list[Any], h: int, w: int) -> list[int]:
    """Uncompressed run lengths as ints, checked: non-negative integers adding up to ``h × w``."""
    runs = []
    for c in counts:
        if not _is_integral(c) or c < 0:
            raise DetectionsFormatError(f"RLE counts must be non-negative integers, got {c!r}", cause="bad RLE")
        runs.append(int(c))
    if sum(runs) != h * w:
        raise DetectionsFormatError(
            f"RLE counts add up to {sum(runs)} pixels but size {h}×{w} has {h * w}", cause="bad RLE"
        )
    return runs


def _compressed_total(raw: bytes) -> int:
    """Number of pixels a compressed COCO RLE string covers (the sum of its run lengths).

    The string holds each run length as 5-bit groups offset by 48 (bit 0x20: another group follows; bit 0x10 of
    the last group: negative); from the fourth run on, each holds the difference to the run two places before.
    pycocotools pads a string that covers too few pixels with zeros silently, so the reader checks the total.
    """
    runs: list[int] = []
    p = 0
    while p < len(raw):
        x, k, more = 0, 0, True
        while more:
            if p >= len(raw):
                raise DetectionsFormatError("RLE counts string ends inside a number", cause="bad RLE")
            c = raw[p] - 48
            if not 0 <= c < 64:
                raise DetectionsFormatError(f"RLE counts string has an invalid character {chr(raw[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise DetectionsFormatError("RLE counts string decodes to a negative run length", cause="bad RLE")
        runs.append(x)
    return sum(runs)


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
def _record_error(path: Path, index: int, record: Any, what: str, value: Any = None) -> DetectionsFormatError:
    where = f"{path}: record {index}"
    if isinstance(record, dict) and "scene_id" in record and "image_id" in record:
        where += f" (scene {record['scene_id']}, image {record['image_id']})"
    err = DetectionsFormatError(f"{where}: {what}", path=path, value=value)
    err.record = index
    return err


def _int_field(path: Path, index: int, record: dict[str, Any], key: str) -> int:
    if key not in record:
        raise _record_error(path, index, record, f"missing '{key}'")
    value = record[key]
    if not _is_integral(value):
        raise _record_error(path, index, record, f"'{key}' must be an integer, got {value!r}", value)
    return int(value)


def _float_field(path: Path, index: int, record: dict[str, Any], key: str, default: float) -> float:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _record_error(path, index, record, f"'{key}' must be a finite number, got {value!r}", value)
    return float(value)


def _parse_record(path: Path, index: int, record: Any) -> tuple[int, int, int, float, np.ndarray, float]:
    """``(scene_id, im_id, obj_id, score, bbox (4,), time)`` of one record, checked."""
    if not isinstance(record, dict):
        raise _record_error(path, index, record, f"a record must be a JSON object, got {type(record).__name__}")
    scene_id = _int_field(path, index, record, "scene_id")
    im_id = _int_field(path, index, record, "image_id")
    obj_id = _int_field(path, index, record, "category_id")
    if "bbox" not in record:
        raise _record_error(path, index, record, "missing 'bbox'")
    try:
        bbox = np.asarray(record["bbox"], dtype=np.float64)
    except (TypeError, ValueError):
        bbox = np.zeros(0)
    if bbox.shape != (4,) or not np.all(np.isfinite(bbox)) or bbox[2] < 0 or bbox[3] < 0:
        raise _record_error(
            path, index, record, f"'bbox' must be [x, y, w, h] (4 finite numbers, w, h ≥ 0), got {record['bbox']!r}"
        )
    score = _float_field(path, index, record, "score", 1.0)
    time_s = _float_field(path, index, record, "time", -1.0)
    return scene_id, im_id, obj_id, score, bbox, time_s


def read_detections(
    path: str | Path,
    *,
    min_score: float = 0.0,
    top_k_per_object: int | None = None,
    with_masks: bool = True,
) -> DetectionsByImage:
    """Read a BOP default-detections JSON file.

    Records are checked and filtered first, and only the masks of the detections kept are decoded (a file of
    low-score detections with masks can be gigabytes once decoded).

    Args:
        path: the ``.json`` file.
        min_score: keep detections with ``score >= min_score``.
        top_k_per_object: keep at most this many detections (the highest scores) of each object per image;
            ``None`` keeps all.
        with_masks: decode ``segmentation`` into :attr:`Detection.mask`; ``False`` gives box-only detections
            (the RLEs are still checked).

    Returns:
        A :class:`DetectionsByImage`: ``{(scene_id, im_id): [Detection, ...]}`` with each image's detections
        sorted by decreasing score (ties keep the file's order), ``scene_id``/``im_id`` set on every
        detection, masks ``(H, W)`` bool (``None`` for a record without ``segmentation``), and the detector's
        time per image in ``.times``. A mask's size is not compared with the image here (the caller knows
        the image).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DetectionsFormatError: invalid JSON, not a list, or a record that is not an object, lacks
            ``scene_id``/``image_id``/``category_id``/``bbox``, has a malformed value or RLE; the message names
            the file and the record's index (``record`` attribute).
        ValueError: ``top_k_per_object < 1``.
    """
    if top_k_per_object is not None and top_k_per_object < 1:
        raise ValueError(f"top_k_per_object must be ≥ 1 or None, got {top_k_per_object}")
    p = Path(path)
    try:
        with p.open("r", encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectionsFormatError(f"malformed JSON in detections file {p}: {exc}", path=p) from exc
    if not isinstance(raw, list):
        raise DetectionsFormatError(
            f"detections file {p} must hold a JSON list of records, got {type(raw).__name__}", path=p
        )

    out = DetectionsByImage()
    kept: dict[ImageKey, list[tuple[float, int, int, np.ndarray]]] = {}  # (score, index, obj_id, bbox)
    for index, record in enumerate(raw):
        scene_id, im_id, obj_id, score, bbox, time_s = _parse_record(p, index, record)
        key = (scene_id, im_id)
        out.times[key] = max(out.times.get(key, -1.0), time_s)
        if score >= min_score:
            kept.setdefault(key, []).append((score, index, obj_id, bbox))
    for key in sorted(kept):
        ranked = sorted(kept[key], key=lambda d: (-d[0], d[1]))
        if top_k_per_object is not None:
            per_obj: dict[int, int] = {}
            chosen = []
            for d in ranked:
                per_obj[d[2]] = per_obj.get(d[2], 0) + 1
                if per_obj[d[2]] <= top_k_per_object:
                    chosen.append(d)
            ranked = chosen
        dets = []
        for score, index, obj_id, bbox in ranked:
            seg = raw[index].get("segmentation")
            mask = None
            if seg is not None:
                try:
                    mask = decode_rle(seg)
                except DetectionsFormatError as exc:
                    raise _record_error(p, index, raw[index], f"bad 'segmentation': {exc}", seg) from exc
            dets.append(
                Detection(
                    obj_id=obj_id,
                    bbox=bbox,
                    mask=mask if with_masks else None,
                    score=score,
                    scene_id=key[0],
                    im_id=key[1],
                )
            )
        out[key] = dets
    return out


def write_detections(
    path: str | Path,
    detections: Iterable[Detection] | Mapping[ImageKey, Sequence[Detection]],
    *,
    times: Mapping[ImageKey, float] | None = None,
) -> None:
    """Write detections as a BOP default-detections JSON file (masks as compressed RLE), atomically.

    Args:
        path: the ``.json`` file to write (its folder is created).
        detections: detections (each with its ``scene_id`` and ``im_id``), or a mapping of them by image such
            as :func:`read_detections` returns.
        times: the detector's seconds per ``(scene_id, im_id)``, written as each record's ``time``; ``None``
            takes ``detections.times`` when it is a :class:`DetectionsByImage`, else every time is ``-1``
            (unknown).

    Raises:
        ValueError: a detection without ``scene_id``/``im_id`` (``-1``), or a ``bbox`` that is not 4 numbers.
    """
    if isinstance(detections, Mapping):
        if times is None and isinstance(detections, DetectionsByImage):
            times = detections.times
        items: Iterable[Detection] = (d for dets in detections.values() for d in dets)
    else:
        items = detections
    times = times or {}
    records = []
    for d in items:
        if d.scene_id < 0 or d.im_id < 0:
            raise ValueError(f"detection of object {d.obj_id} has no scene_id/im_id: a BOP file needs both")
        bbox = np.asarray(d.bbox, dtype=np.float64).reshape(-1)
        if bbox.shape != (4,):
            raise ValueError(f"detection bbox must be [x, y, w, h], got {d.bbox!r}")
        record: dict[str, Any] = {
            "scene_id": int(d.scene_id),
            "image_id": int(d.im_id),
            "category_id": int(d.obj_id),
            "score": float(d.score),
            "bbox": [float(v) for v in bbox],
            "time": float(times.get((d.scene_id, d.im_id), -1.0)),
        }
        if d.mask is not None:
            record["segmentation"] = encode_rle(d.mask)
        records.append(record)
    write_json_atomic(path, records, indent=None)
