"""Ground-truth detections: modal masks from rendering (no ``mask_visib/``, as LM-O) or from the dataset's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meshpose.coarse.gt_detections import all_gt_detections, detections_from_gt, iter_gt_detections, mask_bbox
from meshpose.io.bop import BopDataset, BopFormatError
from meshpose.io.bop_write import SceneWriter, write_camera_json, write_models
from meshpose.io.detections import read_detections, write_detections
from meshpose.render.gl import get_default_renderer
from meshpose.types import Pose
from support import scenes

WIDTH, HEIGHT = 320, 240  # the size overlapping_pair_case is laid out for


def _write_pair_dataset(root: Path, *, with_masks: bool) -> tuple[Path, np.ndarray, np.ndarray]:
    """One image of two objects, the near box partly hiding the far one, plus an object wholly out of view.

    Returns the root, the full silhouettes ``(3, H, W)`` and the visible masks ``(3, H, W)`` (both rendered).
    """
    (far, near), gt, _, _ = scenes.overlapping_pair_case(0, camera=scenes.make_camera(WIDTH, HEIGHT))
    camera = scenes.make_camera(WIDTH, HEIGHT)
    hidden = scenes.objects()[2]
    out_of_view = Pose(np.eye(3), np.array([5.0, 0.0, 0.5]))  # far to the side: no pixel
    objs = [far, near, hidden]
    poses = Pose.stack([gt[0], gt[1], out_of_view])
    write_models(root, objs)
    write_camera_json(root, camera)
    renderer = get_default_renderer()
    full = np.stack([renderer.render([o], poses[i : i + 1], camera).mask[0].copy() for i, o in enumerate(objs)])
    instance = renderer.render(objs, poses, camera).instance[0]
    visib = np.stack([instance == i + 1 for i in range(len(objs))])
    obs = scenes.render_observation(objs, poses, camera, seed=0)
    writer = SceneWriter(root, "test", 1)
    writer.add_image(
        0,
        camera,
        obs.rgb,
        [o.obj_id for o in objs],
        poses,
        masks=full if with_masks else None,
        masks_visib=visib if with_masks else None,
    )
    writer.close()
    return root, full, visib


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    return _write_pair_dataset(tmp_path_factory.mktemp("gt_pair"), with_masks=False)


def test_rendered_modal_masks(pair: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    root, full, visib = pair
    ds = BopDataset(root)
    assert "mask_visib" in ds.missing
    dets = detections_from_gt(ds, 1, 0)
    # The object out of view has no pixel: skipped.
    assert [d.obj_id for d in dets] == [scenes.objects()[0].obj_id, scenes.objects()[1].obj_id]
    far, near = dets
    assert far.mask is not None and near.mask is not None
    assert far.mask.shape == (HEIGHT, WIDTH) and far.mask.dtype == bool
    # The occluded instance: its visible mask is a strict part of its whole silhouette.
    assert far.mask.sum() < 0.95 * full[0].sum() and not np.any(far.mask & ~full[0])
    np.testing.assert_array_equal(far.mask, visib[0])
    # The occluder is whole.
    np.testing.assert_array_equal(near.mask, full[1])
    assert not np.any(far.mask & near.mask)
    for d in dets:
        assert d.score == 1.0 and (d.scene_id, d.im_id) == (1, 0) and d.mask is not None
        ys, xs = np.nonzero(d.mask)
        x0, y0, x1, y1 = d.box_xyxy()
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight, over pixel edges

    # JSON round trip.
    path = tmp_path / "gt_dets.json"
    write_detections(path, dets)
    back = read_detections(path)[(1, 0)]
    assert [d.obj_id for d in back] == [d.obj_id for d in dets]
    for a, b in zip(back, dets, strict=True):
        assert a.mask is not None and b.mask is not None
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.bbox, b.bbox)


def test_min_visib_px_skips_small_instances(pair: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, visib = pair
    ds = BopDataset(root)
    n_far = int(visib[0].sum())
    dets = detections_from_gt(ds, 1, 0, min_visib_px=n_far + 1)
    want = [scenes.objects()[1].obj_id] if int(visib[1].sum()) > n_far else []
    assert [d.obj_id for d in dets] == want  # the far instance, one pixel short, is skipped
    assert len(detections_from_gt(ds, 1, 0, min_visib_px=n_far)) == 2
    assert len(detections_from_gt(ds, 1, 0, min_visib_px=10**9)) == 0
    with pytest.raises(ValueError, match="min_visib_px"):
        detections_from_gt(ds, 1, 0, min_visib_px=-1)
    with pytest.raises(BopFormatError, match="no mask_visib file"):
        detections_from_gt(ds, 1, 0, source="mask_visib")


def test_mask_visib_files_are_used(tmp_path: Path) -> None:
    root, _, visib = _write_pair_dataset(tmp_path / "ds", with_masks=True)
    # Change one mask file: the detections must follow the file, not a rendering.
    from meshpose.io.images import write_mask

    edited = visib[0].copy()
    ys, xs = np.nonzero(edited)
    edited[ys[: len(ys) // 2], xs[: len(xs) // 2]] = False
    write_mask(root / "test" / "000001" / "mask_visib" / "000000_000000.png", edited)
    ds = BopDataset(root)
    from_files = detections_from_gt(ds, 1, 0)
    assert from_files[0].mask is not None
    np.testing.assert_array_equal(from_files[0].mask, edited)
    np.testing.assert_array_equal(from_files[0].bbox, mask_bbox(edited))
    rendered = detections_from_gt(ds, 1, 0, source="render")
    assert rendered[0].mask is not None
    np.testing.assert_array_equal(rendered[0].mask, visib[0])
    # The convenience forms give the same per image.
    every = all_gt_detections(ds)
    assert list(every) == [(1, 0)] and len(every[(1, 0)]) == len(from_files)
    assert [k for k, _ in iter_gt_detections(ds, [(1, 0)])] == [(1, 0)]


def test_mask_of_wrong_size_is_named(tmp_path: Path) -> None:
    from meshpose.errors import ImageError
    from meshpose.io.images import write_mask

    root, _, _ = _write_pair_dataset(tmp_path / "ds", with_masks=True)
    bad = root / "test" / "000001" / "mask_visib" / "000000_000001.png"
    write_mask(bad, np.ones((10, 12), bool))
    with pytest.raises(ImageError, match=r"000000_000001.png is 12×10 but its image is 320×240"):
        detections_from_gt(BopDataset(root), 1, 0)
