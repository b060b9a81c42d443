"""BOP dataset reading: a generated dataset reads back exactly; missing parts are stated; bad input is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from meshpose.io.bop import BopDataset, BopFormatError
from meshpose.io.images import ImageError, read_depth, read_rgb, write_depth
from meshpose.render.gl import get_default_renderer
from support import scenes


def test_reads_generated_dataset(tiny_bop: Path) -> None:
    ds = BopDataset(tiny_bop)
    assert ds.scene_ids == [1]
    assert ds.image_ids(1) == [0, 1, 2]
    assert ds.object_ids == [1, 2]
    assert ds.missing == ["test_targets_bop19.json"]
    assert "3 image(s)" in ds.describe()
    cam = ds.camera(1, 0)
    assert (cam.width, cam.height) == (200, 150)
    np.testing.assert_allclose(cam.K, scenes.make_camera(200, 150).K, atol=1e-9)
    obs = ds.observation(1, 0)
    assert obs.rgb.shape == (150, 200, 3) and obs.depth is not None
    gts = ds.gt(1, 0)
    assert [g.obj_id for g in gts] == [1, 2]
    assert all(g.visib_fract is not None and 0.0 < g.visib_fract <= 1.0 for g in gts)
    # Millimetres in the files, metres inside: the model diameter and the GT depth agree with the sources.
    obj = ds.object(1)
    assert obj.diameter == pytest.approx(scenes.objects()[0].diameter, rel=1e-4)
    assert 0.4 < float(gts[0].pose.t[2]) < 0.8


def test_gt_pose_rerenders_onto_the_stored_mask_and_depth(tiny_bop: Path) -> None:
    ds = BopDataset(tiny_bop)
    obs = ds.observation(1, 1)
    for g in ds.gt(1, 1):
        obj = ds.object(g.obj_id)
        r = get_default_renderer().render([obj], g.pose.reshape(1), obs.camera)
        mask_visib = ds.mask_visib(1, 1, g.gt_id)
        assert mask_visib is not None
        # The visible mask is inside the re-rendered silhouette (the ply re-export keeps the geometry).
        inside = (mask_visib & r.mask[0]).sum() / mask_visib.sum()
        assert inside > 0.98
        both = mask_visib & r.mask[0] & (obs.depth > 0)
        err = np.abs(obs.depth[both] - r.depth[0][both])
        assert np.median(err) < 0.003  # scene depth noise is 1 mm; 0.1 mm quantisation


def test_targets_file_limits_images(tiny_bop: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    (root / "test_targets_bop19.json").write_text(
        json.dumps([{"scene_id": 1, "im_id": 2, "obj_id": 1, "inst_count": 1}])
    )
    ds = BopDataset(root)
    assert ds.image_keys() == [(1, 2)]
    assert ds.image_keys(targets_only=False) == [(1, 0), (1, 1), (1, 2)]
    assert "test_targets_bop19.json" not in ds.missing


def test_missing_parts_are_named(tmp_path: Path) -> None:
    with pytest.raises(BopFormatError, match="not found"):
        BopDataset(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(BopFormatError, match="no models/"):
        BopDataset(tmp_path / "a")
    (tmp_path / "a" / "models").mkdir()
    (tmp_path / "a" / "train").mkdir()
    with pytest.raises(BopFormatError, match="no split 'test'.*train"):
        BopDataset(tmp_path / "a")


def test_corrupt_files_are_named(tiny_bop: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    rgb = root / "test" / "000001" / "rgb" / "000001.png"
    rgb.write_bytes(b"not a png at all")
    ds = BopDataset(root)
    with pytest.raises(ImageError, match="000001.png"):
        ds.observation(1, 1)
    (root / "test" / "000001" / "scene_gt.json").write_text("{broken")
    with pytest.raises(BopFormatError, match="scene_gt.json"):
        BopDataset(root).gt(1, 0)


def test_depth_png_round_trip(tmp_path: Path) -> None:
    d = np.random.default_rng(0).uniform(0.3, 2.0, (12, 16)).astype(np.float32)
    d[0, 0] = 0.0
    write_depth(tmp_path / "d.png", d, depth_scale_mm=0.1)
    back = read_depth(tmp_path / "d.png", depth_scale_mm=0.1)
    np.testing.assert_allclose(back, d, atol=0.5e-4 + 1e-7)
    assert back[0, 0] == 0.0
    with pytest.raises(ImageError, match="one channel"):
        from PIL import Image

        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "c.png")
        read_depth(tmp_path / "c.png")
    with pytest.raises(ImageError, match="not found"):
        read_rgb(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------------------
# Issue 16: model folders, splits, units, progress while meshes load
# ------------------------------------------------------------------------------------------------------
def test_models_dir_option_and_the_model_folders_named(tiny_bop: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    shutil.copytree(root / "models", root / "models_eval")
    ds = BopDataset(root, models_dir="models_eval")
    assert ds.models_path == root / "models_eval"
    assert ds.object_ids == [1, 2]
    found = r"no models_eval_lowres/ folder \(model folders found: models, models_eval\)"
    with pytest.raises(BopFormatError, match=found):
        BopDataset(root, models_dir="models_eval_lowres")


def test_a_missing_split_names_the_only_split(tiny_bop: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    (root / "test").rename(root / "val")
    with pytest.raises(BopFormatError, match=r"no split 'test'; its only split is 'val' \(pass --split val\)"):
        BopDataset(root)
    assert BopDataset(root, "val").scene_ids == [1]  # never taken silently: asked for explicitly
    shutil.copytree(root / "val", root / "train_pbr")
    with pytest.raises(BopFormatError, match=r"no split 'test' \(splits: train_pbr, val\)"):
        BopDataset(root)


def test_explicit_units_are_honoured(tiny_bop: Path, tmp_path: Path) -> None:
    import trimesh

    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    for path in (root / "models").glob("obj_*.ply"):  # the same meshes, written in metres
        mesh = trimesh.load(path, process=False)
        mesh.apply_scale(1e-3)
        mesh.export(path)
    in_mm = BopDataset(tiny_bop).object(1).diameter
    assert BopDataset(root, units="m").object(1).diameter == pytest.approx(in_mm, rel=1e-6)
    assert BopDataset(root, units="auto").object(1).diameter == pytest.approx(in_mm, rel=1e-6)
    with pytest.raises(ValueError, match="units"):
        BopDataset(root, units="cm")  # type: ignore[arg-type]


def test_loading_an_object_logs_name_faces_and_time(tiny_bop: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="meshpose.io.bop"):
        obj = BopDataset(tiny_bop).object(2)
    lines = [r.getMessage() for r in caplog.records if r.name == "meshpose.io.bop"]
    assert any(
        "loaded object 2 (obj_000002.ply)" in m and f"{len(obj.mesh.faces)} faces" in m and " s" in m for m in lines
    ), lines
