"""``models_info.json``: the one reader gives metres, round-trips what the writer wrote (millimetres in the file),
and a file extended object by object keeps its old entries as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from meshpose.io.bop import BopDataset, BopFormatError
from meshpose.io.bop_write import write_models
from meshpose.io.models_info import ModelInfo, ModelsInfoFile, expand_symmetries, read_models_info
from meshpose.mesh import make_object_model
from meshpose.types import ObjectModel

#: A half-turn about x followed by 12 mm along z (metres here), and a continuous symmetry about z through a point.
FLIP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.012], [0.0, 0.0, 0.0, 1.0]])
AXIS = ((0.0, 0.0, 1.0), (0.001, -0.002, 0.0))


def _objects() -> list[ObjectModel]:
    box = trimesh.creation.box((0.08, 0.05, 0.03))
    box.apply_translation((0.01, -0.02, 0.005))
    cylinder = trimesh.creation.cylinder(radius=0.03, height=0.1, sections=48)
    return [make_object_model(box, 3, num_points=64), make_object_model(cylinder, 7, num_points=64)]


def test_round_trip_in_metres(tmp_path: Path) -> None:
    box, cylinder = _objects()
    write_models(tmp_path, [box, cylinder], continuous={7: [AXIS]}, discrete={7: [FLIP]})
    raw = json.loads((tmp_path / "models" / "models_info.json").read_text())
    assert raw["7"]["diameter"] == pytest.approx(cylinder.diameter * 1e3)  # millimetres in the file

    info = read_models_info(tmp_path / "models" / "models_info.json")
    assert sorted(info) == [3, 7] and all(isinstance(v, ModelInfo) for v in info.values())
    for obj in (box, cylinder):
        got = info[obj.obj_id]
        v = np.asarray(obj.mesh.vertices)
        assert got.diameter == pytest.approx(obj.diameter, rel=1e-12)
        assert got.min_xyz is not None and got.size_xyz is not None
        np.testing.assert_allclose(got.min_xyz, v.min(0), atol=1e-12)
        np.testing.assert_allclose(got.size_xyz, v.max(0) - v.min(0), atol=1e-12)
    assert not info[3].is_symmetric and info[3].symmetry_transforms().shape == (1, 4, 4)
    sym = info[7]
    np.testing.assert_allclose(sym.symmetries_discrete, FLIP[None], atol=1e-15)
    assert len(sym.symmetries_continuous) == 1
    np.testing.assert_allclose(np.asarray(sym.symmetries_continuous[0]), np.asarray(AXIS), atol=1e-15)
    # The expansion from the file (millimetres) equals the one from the lists (metres) and from the raw entry.
    T = sym.symmetry_transforms(max_sym_disc_step=0.2)
    assert T.shape[0] == 2 * 16
    np.testing.assert_array_equal(T, expand_symmetries(raw["7"], max_sym_disc_step=0.2))


def test_bop_dataset_reads_through_the_one_reader(tmp_path: Path) -> None:
    box, cylinder = _objects()
    write_models(tmp_path, [box, cylinder], continuous={7: [AXIS]})
    (tmp_path / "test").mkdir()
    ds = BopDataset(tmp_path)
    assert isinstance(ds.models_info[7], ModelInfo)
    assert ds.diameter(7) == pytest.approx(cylinder.diameter, rel=1e-12)
    assert ds.object(7).is_symmetric and not ds.object(3).is_symmetric
    (tmp_path / "models" / "models_info.json").write_text("{not json")
    with pytest.raises(BopFormatError, match="malformed JSON"):
        _ = BopDataset(tmp_path).models_info


def test_malformed_entries_are_named(tmp_path: Path) -> None:
    path = tmp_path / "models_info.json"
    path.write_text(json.dumps({"5": {"diameter": 10.0, "symmetries_discrete": [[1, 0, 0]]}}))
    with pytest.raises(ValueError, match="object 5.*16"):
        read_models_info(path)
    with pytest.raises(ValueError, match="diameter"):
        ModelInfo.from_entry({}).symmetry_transforms()


def test_extending_a_file_keeps_old_entries(tmp_path: Path) -> None:
    cylinder = _objects()[1]
    path = tmp_path / "models_info.json"
    old = {"3": {"diameter": 123.456789, "min_x": 1, "note": "kept as is"}}
    path.write_text(json.dumps(old))
    f = ModelsInfoFile(path)
    assert 3 in f and 7 not in f and len(f) == 1
    f.add(cylinder, continuous=[AXIS])
    f.write()
    raw = json.loads(path.read_text())
    assert list(raw) == ["3", "7"] and raw["3"] == old["3"]
    assert read_models_info(path)[7].symmetries_continuous[0][0] == (0.0, 0.0, 1.0)
