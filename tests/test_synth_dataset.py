"""``synthesize``: a generated dataset passes the BOP validator, two runs with one seed are identical, an
interrupted run resumes to the same files, and the validator itself catches broken datasets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from meshpose.io.bop import BopDataset
from meshpose.synth import SceneConfig, SynthConfig, clear_caches, synthesize
from support.bop_validator import assert_valid, validate_bop

TINY_SCENE = SceneConfig(width=160, height=120, objects_per_scene=(2, 4), distractors_per_scene=(1, 2))


def tiny_config(out: Path, **kw: object) -> SynthConfig:
    base = SynthConfig(
        out=str(out),
        objects="novel:8",
        scenes=2,
        images_per_scene=2,
        split="test",
        seed=3,
        scene=TINY_SCENE,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    result = synthesize(tiny_config(root))
    assert result.images_written == 4 and result.scenes_written == 2
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_passes_the_bop_validator(dataset: Path) -> None:
    assert_valid(dataset, "test")


def test_layout_and_fields(dataset: Path) -> None:
    info = json.loads((dataset / "models" / "models_info.json").read_text())
    assert sorted(int(k) for k in info) == list(range(1, 9))  # ≤ 100 objects: all written
    cams = json.loads((dataset / "test" / "000000" / "scene_camera.json").read_text())
    assert {"cam_K", "depth_scale", "cam_R_w2c", "cam_t_w2c"} <= set(cams["0"])
    targets = json.loads((dataset / "test_targets_bop19.json").read_text())
    assert targets and all(t["inst_count"] >= 1 for t in targets)
    config = json.loads((dataset / "synth_config.json").read_text())
    assert "test" in config["splits"]
    ds = BopDataset(dataset, "test")
    assert ds.missing == []
    obs = ds.observation(0, 1)
    assert obs.rgb.shape == (120, 160, 3) and obs.depth is not None and (obs.depth > 0).mean() > 0.3
    gts = ds.gt(0, 1)
    assert len(gts) >= 2 and all(g.visib_fract is not None for g in gts)
    for g in gts:
        g.pose.check(in_front=True)
        assert ds.object(g.obj_id).diameter > 0.05


def test_symmetries_reach_models_info() -> None:
    from meshpose.io.models_info import expand_symmetries
    from meshpose.synth import NovelConfig, resolve_objects

    objs = resolve_objects("novel:2", 0, novel=NovelConfig(symmetric_fraction=1.0))
    for oid in objs.obj_ids:
        entry = objs.models_info(oid)
        assert "symmetries_discrete" in entry or "symmetries_continuous" in entry
        # What BOP readers expand from the entry (millimetres) is what the object model holds (metres).
        assert np.allclose(expand_symmetries(entry), objs.by_id(oid).symmetries, atol=1e-6)


def test_two_runs_with_one_seed_are_identical(dataset: Path, tmp_path: Path) -> None:
    clear_caches()  # rebuild the objects from scratch too
    again = tmp_path / "again"
    synthesize(tiny_config(again))
    a, b = files_of(dataset), files_of(again)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"files differ between two runs with one seed: {different[:5]}"


def test_interrupted_run_resumes_to_the_same_files(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    # Scene 1 "crashed" before closing: its JSON files are missing and one image too.
    for name in ("scene_gt.json", "scene_gt_info.json", "scene_camera.json"):
        (copy / "test" / "000001" / name).unlink()
    (copy / "test" / "000001" / "rgb" / "000001.png").unlink()
    result = synthesize(tiny_config(copy))
    assert result.images_skipped == 2 and result.images_written == 2
    assert files_of(copy) == files_of(dataset)


def test_other_settings_are_refused(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy2"
    shutil.copytree(dataset, copy)
    with pytest.raises(ValueError, match="other settings"):
        synthesize(tiny_config(copy, images_per_scene=3))
    with pytest.raises(ValueError, match="other objects"):
        synthesize(tiny_config(copy, objects="novel:9"))
    # Another split of the same objects is fine (here: an empty one).
    synthesize(tiny_config(copy, split="train_pbr", scenes=0))


def test_validator_catches_broken_datasets(dataset: Path, tmp_path: Path) -> None:
    def broken(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(dataset, root)
        return root

    scene = Path("test") / "000000"
    root = broken("missing_mask")
    (root / scene / "mask_visib" / "000001_000000.png").unlink()
    assert any("missing mask" in p for p in validate_bop(root, "test", rerender=False))

    root = broken("moved_pose")
    gt_path = root / scene / "scene_gt.json"
    gt = json.loads(gt_path.read_text())
    gt["1"][0]["cam_t_m2c"][0] += 25.0  # 25 mm sideways
    gt_path.write_text(json.dumps(gt))
    problems = validate_bop(root, "test")
    assert any("re-rendered silhouette" in p for p in problems)
    assert any("moves between images" in p for p in problems)

    root = broken("bad_counts")
    info_path = root / scene / "scene_gt_info.json"
    info = json.loads(info_path.read_text())
    info["0"][0]["px_count_visib"] += 1
    del info["0"][1]["bbox_obj"]
    info_path.write_text(json.dumps(info))
    problems = validate_bop(root, "test", rerender=False)
    assert any("px_count_visib" in p for p in problems) and any("lacks" in p for p in problems)

    root = broken("bad_depth")
    from PIL import Image

    depth_path = root / scene / "depth" / "000000.png"
    d = np.asarray(Image.open(depth_path)).astype(np.int64)
    Image.fromarray(np.clip(d + 300, 0, 65535).astype(np.uint16)).save(depth_path)  # +30 mm everywhere
    assert any("depth differs" in p for p in validate_bop(root, "test", max_rerender_images=1))
