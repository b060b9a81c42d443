"""BOP default-detections files: COCO RLE encoding/decoding, JSON round trips, filtering and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meshpose.errors import FormatError
from meshpose.io.detections import (
    DetectionsByImage,
    DetectionsFormatError,
    decode_rle,
    encode_rle,
    read_detections,
    write_detections,
)
from meshpose.types import Detection


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Plain COCO run lengths of a mask (column-major, starting with a run of zeros), written out by hand."""
    flat = [int(v) for v in mask.T.reshape(-1)]
    counts: list[int] = []
    value, run = 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [np.zeros((7, 5), bool), np.ones((7, 5), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    one = np.zeros((6, 9), bool)
    one[5, 8] = True
    masks.append(one)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        masks.append(rng.random((h, w)) < rng.uniform(0.02, 0.98))
        blob = np.zeros((h, w), bool)
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        blob[y0 : y0 + int(rng.integers(1, h + 1)), x0 : x0 + int(rng.integers(1, w + 1))] = True
        masks.append(blob)
    return masks


@pytest.mark.parametrize("index", range(len(random_masks())))
def test_rle_round_trip_compressed_and_uncompressed(index: int) -> None:
    mask = random_masks()[index]
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON-ready
    for form in (rle, {"size": rle["size"], "counts": rle["counts"].encode()}):
        out = decode_rle(form)
        assert out.dtype == bool and out.shape == mask.shape and out.flags.c_contiguous
        np.testing.assert_array_equal(out, mask)
    plain = {"size": list(mask.shape), "counts": uncompressed_counts(mask)}
    np.testing.assert_array_equal(decode_rle(plain), mask)


def test_encode_accepts_non_bool_and_non_contiguous() -> None:
    m = np.zeros((8, 10), np.uint8)
    m[2:5, 3:7] = 255
    view = np.zeros((10, 8), bool)
    view[3:7, 2:5] = True
    assert encode_rle(m) == encode_rle(view.T) == encode_rle(m > 0)
    with pytest.raises(ValueError, match="H, W"):
        encode_rle(np.zeros((2, 3, 3), bool))


def test_empty_image_rle() -> None:
    assert decode_rle({"size": [0, 4], "counts": [0]}).shape == (0, 4)


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ({"size": [3, 4], "counts": [7, 1]}, "add up to 8 pixels but size 3×4 has 12"),
        ({"size": [3, 4], "counts": [7, 1, 400]}, "add up to 408"),
        ({"size": [3, 4], "counts": [7, -1, 6]}, "non-negative integers"),
        ({"size": [3, 4], "counts": [7, 1.5, 3.5]}, "non-negative integers"),
        ({"size": [3, 4], "counts": "01;"[:2]}, "cover 1 pixels but size 3×4 has 12"),
        ({"size": [3, 4], "counts": "0`h9"}, "cover 10000 pixels"),
        ({"size": [3, 4], "counts": "ab~\x7f"}, "invalid character"),
        ({"size": [3, 4], "counts": "0a"}, "ends inside a number"),
        ({"size": [3, 4], "counts": 12}, "string or a list"),
        ({"size": [3], "counts": "01;"}, r"\[height, width\]"),
        ({"size": [3.5, 4], "counts": "01;"}, r"\[height, width\]"),
        ({"size": [3, 4]}, "needs 'size' and 'counts'"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], "polygon"),
    ],
)
def test_decode_rejects_malformed_rle(rle: object, match: str) -> None:
    with pytest.raises(DetectionsFormatError, match=match) as info:
        decode_rle(rle)  # type: ignore[arg-type]
    assert isinstance(info.value, FormatError) and isinstance(info.value, ValueError)


def _detections() -> list[Detection]:
    rng = np.random.default_rng(1)
    masks = [rng.random((12, 16)) < 0.3 for _ in range(3)]
    return [
        Detection(1, np.array([1.0, 2.0, 5.5, 6.25]), masks[0], score=0.9, scene_id=2, im_id=3),
        Detection(5, np.array([0.0, 0.0, 16.0, 12.0]), None, score=0.4, scene_id=2, im_id=3),
        Detection(1, np.array([3.0, 4.0, 2.0, 2.0]), masks[1], score=0.95, scene_id=2, im_id=3),
        Detection(1, np.array([7.0, 1.0, 3.0, 3.0]), masks[2], score=0.2, scene_id=2, im_id=8),
    ]


def test_json_round_trip(tmp_path: Path) -> None:
    dets = _detections()
    path = tmp_path / "dets" / "default.json"
    write_detections(path, dets, times={(2, 3): 0.25, (2, 8): 0.5})
    raw = json.loads(path.read_text())
    assert len(raw) == 4 and {"scene_id", "image_id", "category_id", "score", "bbox", "time"} <= set(raw[0])
    assert isinstance(raw[0]["segmentation"]["counts"], str) and "segmentation" not in raw[1]

    back = read_detections(path)
    assert isinstance(back, DetectionsByImage) and isinstance(back, dict)
    assert sorted(back) == [(2, 3), (2, 8)]
    assert back.times == {(2, 3): 0.25, (2, 8): 0.5} and back.time(2, 8) == 0.5 and back.time(9, 9) == -1.0
    # Sorted by decreasing score within an image.
    assert [d.score for d in back[(2, 3)]] == [0.95, 0.9, 0.4]
    by_score = {d.score: d for d in dets}
    for got in (*back[(2, 3)], *back[(2, 8)]):
        want = by_score[got.score]
        assert (got.obj_id, got.scene_id, got.im_id) == (want.obj_id, want.scene_id, want.im_id)
        np.testing.assert_array_equal(got.bbox, want.bbox)
        assert got.bbox.dtype == np.float64
        if want.mask is None:
            assert got.mask is None
        else:
            assert got.mask is not None and got.mask.dtype == bool
            np.testing.assert_array_equal(got.mask, want.mask)

    # A mapping as read is written back unchanged, times included.
    again = tmp_path / "again.json"
    write_detections(again, back)
    back2 = read_detections(again)
    assert back2.times == back.times
    assert [(d.obj_id, d.score) for d in back2[(2, 3)]] == [(d.obj_id, d.score) for d in back[(2, 3)]]


def test_filters(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    write_detections(path, _detections(), times={(2, 8): 0.5})
    kept = read_detections(path, min_score=0.3)
    assert sorted(kept) == [(2, 3)]
    assert kept.times[(2, 8)] == 0.5  # the detector's time on a filtered-out image still counts
    assert kept.times[(2, 3)] == -1.0
    top1 = read_detections(path, top_k_per_object=1)
    assert [(d.obj_id, d.score) for d in top1[(2, 3)]] == [(1, 0.95), (5, 0.4)]
    boxes = read_detections(path, with_masks=False)
    assert all(d.mask is None for dets in boxes.values() for d in dets)
    with pytest.raises(ValueError, match="top_k_per_object"):
        read_detections(path, top_k_per_object=0)


def test_reads_uncompressed_and_bytes_free_records(tmp_path: Path) -> None:
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    records = [
        {
            "scene_id": 1,
            "image_id": 0,
            "category_id": 3,
            "score": 1,
            "bbox": [2, 1, 2, 2],
            "time": 1,
            "segmentation": {"size": [4, 5], "counts": uncompressed_counts(mask)},
        },
        {"scene_id": 1, "image_id": 0, "category_id": 4, "bbox": [0, 0, 1, 1]},  # no score / time / mask
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    dets = read_detections(path)[(1, 0)]
    assert dets[0].mask is not None
    np.testing.assert_array_equal(dets[0].mask, mask)
    assert dets[1].score == 1.0 and dets[1].mask is None
    assert read_detections(path).times[(1, 0)] == 1.0


def test_write_needs_image_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scene_id/im_id"):
        write_detections(tmp_path / "d.json", [Detection(1, np.array([0.0, 0.0, 1.0, 1.0]))])


_GOOD = {"scene_id": 2, "image_id": 7, "category_id": 1, "score": 0.5, "bbox": [1, 2, 3, 4], "time": 0.1}


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({k: v for k, v in _GOOD.items() if k != "bbox"}, r"record 2 \(scene 2, image 7\): missing 'bbox'"),
        ({k: v for k, v in _GOOD.items() if k != "category_id"}, "record 2.*missing 'category_id'"),
        ({k: v for k, v in _GOOD.items() if k != "image_id"}, "record 2: missing 'image_id'"),
        ({**_GOOD, "bbox": [1, 2, 3]}, r"record 2.*'bbox' must be \[x, y, w, h\]"),
        ({**_GOOD, "bbox": [1, 2, -3, 4]}, "'bbox' must be"),
        ({**_GOOD, "bbox": "1 2 3 4"}, "'bbox' must be"),
        ({**_GOOD, "category_id": "one"}, "'category_id' must be an integer"),
        ({**_GOOD, "scene_id": 2.5}, "'scene_id' must be an integer"),
        ({**_GOOD, "score": None}, "'score' must be a finite number"),
        ({**_GOOD, "segmentation": {"size": [4, 5], "counts": [1, 2]}}, "record 2.*bad 'segmentation'.*add up to 3"),
        ({**_GOOD, "segmentation": [[0, 0, 1, 0, 1, 1]]}, "record 2.*polygon"),
        ([1, 2], "record 2: a record must be a JSON object"),
    ],
)
def test_malformed_record_names_file_and_index(tmp_path: Path, bad: object, match: str) -> None:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([_GOOD, _GOOD, bad]))
    with pytest.raises(DetectionsFormatError, match=match) as info:
        read_detections(path)
    assert info.value.record == 2 and info.value.path == str(path)
    assert str(path) in str(info.value)


def test_malformed_file(tmp_path: Path) -> None:
    path = tmp_path / "dets.json"
    path.write_text("[{")
    with pytest.raises(DetectionsFormatError, match="malformed JSON in detections file .*dets.json"):
        read_detections(path)
    path.write_text(json.dumps({"scene_id": 1}))
    with pytest.raises(DetectionsFormatError, match="must hold a JSON list of records, got dict"):
        read_detections(path)
    with pytest.raises(FileNotFoundError):
        read_detections(tmp_path / "missing.json")
