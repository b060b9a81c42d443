"""The input-validation layer (issue 16): every bad input is a typed error naming the file, line or id, the value
and the likely cause; in a batch run it fails its own items only, and the rest is refined. Ends with a property
test that feeds random corruptions of a valid inits file and of a mesh to ``meshpose refine``."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.errors import CameraError, FormatError, ImageError, InputError, MeshError, PoseError
from meshpose.eval.perturb import perturb_dataset
from meshpose.io.bop import BopDataset, BopFormatError
from meshpose.io.results import (
    ResultRow,
    ResultsFormatError,
    check_init_row,
    read_inits,
    read_results,
    write_results,
)
from meshpose.run import JobSpec, plan_tasks, refine_dataset
from meshpose.run.writer import failures_path_for

runner = CliRunner()
FAST = ["--method", "flow-pnp", "--iterations", "1"]
HEADER = "scene_id,im_id,obj_id,score,R,t,time"
EYE = "1 0 0 0 1 0 0 0 1"


def _records(out: Path) -> list[dict]:
    p = failures_path_for(out)
    return [json.loads(s) for s in p.read_text().splitlines()] if p.is_file() else []


@pytest.fixture(scope="module")
def inits(tiny_bop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inits") / "inits.csv"
    write_results(path, perturb_dataset(BopDataset(tiny_bop), rot_deg=10, trans_frac=0.05, seed=1))
    return path


@pytest.fixture(scope="module")
def good_lines(inits: Path) -> list[str]:
    return inits.read_text().splitlines()[1:]


# --- the error hierarchy ---------------------------------------------------------------------------------------


def test_every_input_error_is_a_value_error_and_survives_pickling() -> None:
    for cls in (FormatError, PoseError, CameraError, ImageError, MeshError, ResultsFormatError, BopFormatError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)
    err = ResultsFormatError("a.csv:3: R must have 9 numbers", path="a.csv", line=3, value="1 0", cause="columns")
    back = pickle.loads(pickle.dumps(err))  # Ray ships errors between processes
    assert type(back) is ResultsFormatError and str(back) == str(err)
    assert (back.path, back.line, back.value, back.cause, back.where) == ("a.csv", 3, "1 0", "columns", "a.csv:3")


# --- inits / results rows --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message", "ids"),
    [
        (f"1,0,1,1,{EYE},0 0 500", "expected 7 comma-separated fields", (1, 0, 1)),
        (f"1,0,1,1,{EYE},0 0 500,0,7", "got 8", (1, 0, 1)),
        (f"1,0,x,1,{EYE},0 0 500,0", "bad id", (1, 0, None)),
        (f"1,0,1,1,{EYE},0 0 nan,0", "NaN or inf", (1, 0, 1)),
        (f"1,0,1,1,{EYE},0 inf 500,0", "NaN or inf", (1, 0, 1)),
        ("1,0,1,1,1 0 0 0 1 0 0 0,0 0 500,0", "R must have 9 numbers", (1, 0, 1)),
        ("1,0,1,1,1 0 0 0 1 0 0 0 -1,0 0 500,0", "det R = -1.0000", (1, 0, 1)),
        ("1,0,1,1,1 0 0 0 1 0 0 0 2,0 0 500,0", "not a rotation", (1, 0, 1)),
        ("1,0,1,1,1 0 0 0 1 0 0 0 1,0 0 five,0", "t is not numeric", (1, 0, 1)),
    ],
)
def test_a_malformed_row_is_a_per_row_problem_with_its_line(
    tmp_path: Path, good_lines: list[str], row: str, message: str, ids: tuple
) -> None:
    p = tmp_path / "inits.csv"
    p.write_text("\n".join([HEADER, good_lines[0], row, good_lines[1]]) + "\n")
    got = read_inits(p)
    assert len(got.rows) == 2 and got.lines == (2, 4)
    (problem,) = got.problems
    assert isinstance(problem, ResultsFormatError) and problem.line == 3 and problem.path == str(p)
    assert str(problem).startswith(f"{p}:3: ") and message in str(problem)
    assert (problem.scene_id, problem.im_id, problem.obj_id) == ids
    with pytest.raises(ResultsFormatError, match=f"{p}:3"):  # the strict reader of results files still refuses
        read_results(p)


def test_a_reflection_is_reported_by_its_determinant(tmp_path: Path) -> None:
    p = tmp_path / "inits.csv"
    p.write_text(f"{HEADER}\n1,0,1,1,{EYE},0 0 500,0\n1,0,2,1,0 1 0 1 0 0 0 0 1,0 0 500,0\n")
    (problem,) = read_inits(p).problems
    assert "reflection" in str(problem) and "det R = -1.0000" in str(problem) and problem.cause == "reflection"
    assert "RRᵀ" not in str(problem)


def test_bom_crlf_blank_lines_and_comments_are_read(tmp_path: Path, good_lines: list[str]) -> None:
    p = tmp_path / "inits.csv"
    text = "\ufeff" + HEADER + "\r\n\r\n# a comment\r\n" + "\r\n".join(good_lines) + "\r\n"
    p.write_bytes(text.encode("utf-8"))
    got = read_inits(p)
    assert len(got.rows) == len(good_lines) and not got.problems
    bare = tmp_path / "bare.csv"  # no header, a BOM on the first data row
    bare.write_bytes(("\ufeff" + "\n".join(good_lines)).encode("utf-8"))
    assert len(read_inits(bare).rows) == len(good_lines)


def test_a_file_without_any_valid_row_is_refused_naming_the_first_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "inits.csv"
    p.write_text(f"{HEADER}\n1,0,1,1,1 0 0,0 0 500,0\n1,0,2\n")
    with pytest.raises(ResultsFormatError, match=r"no valid initial pose: 2 malformed row\(s\), the first: .*:2"):
        read_inits(p)
    p.write_text(HEADER + "\n")
    with pytest.raises(ResultsFormatError, match="no initial poses"):
        read_inits(p)


def test_a_rotation_off_so3_by_1e2_is_repaired_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # LM-O annotations hold rotations like this one: |RRᵀ - I| ≈ 1.5e-2
    R = np.eye(3) + 0.006
    p = tmp_path / "inits.csv"
    p.write_text(f"{HEADER}\n1,0,1,1,{' '.join(f'{v:.9g}' for v in R.reshape(9))},0 0 500,0\n")
    with caplog.at_level(logging.WARNING):
        got = read_inits(p)
    assert not got.problems
    fixed = got.rows[0].R
    np.testing.assert_allclose(fixed @ fixed.T, np.eye(3), atol=1e-12)
    assert np.abs(fixed - R).max() < 0.02
    assert "replaced by the nearest rotation" in caplog.text and f"{p}:2" in caplog.text


@pytest.mark.parametrize(
    ("t_mm", "message", "cause"),
    [
        ((0.0, 0.0, -500.0), "behind the camera (t_z = -500 mm", "behind the camera"),
        ((0.0, 0.0, 0.0), "behind the camera", "behind the camera"),
        (
            (0.01, -0.02, 0.55),
            "is t in metres? BOP files hold millimetres",
            "t in metres where millimetres are expected",
        ),
        ((10.0, 20.0, 550000.0), "550 m from the camera", "t in the wrong units"),
    ],
)
def test_implausible_translations_name_the_units(t_mm: tuple[float, float, float], message: str, cause: str) -> None:
    row = ResultRow(1, 0, 5, 1.0, np.eye(3), np.array(t_mm) * 1e-3)
    with pytest.raises(PoseError, match="inits.csv:7: the initial pose of object 5") as exc:
        check_init_row(row, "inits.csv:7", path="inits.csv", line=7)
    assert message in str(exc.value) and exc.value.cause == cause and exc.value.line == 7


# --- images, cameras, meshes -----------------------------------------------------------------------------------


def _copy(tiny_bop: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(tiny_bop, root)
    return root


def _break_images(root: Path) -> None:
    """Image 0: depth of the wrong size; image 1: a NaN and a negative focal length; image 2: no rgb file."""
    from PIL import Image

    scene = root / "test" / "000001"
    Image.new("I;16", (100, 75)).save(scene / "depth" / "000000.png")
    cams = json.loads((scene / "scene_camera.json").read_text())
    cams["1"]["cam_K"] = [-500.0, 0.0, float("nan"), 0.0, 500.0, 75.0, 0.0, 0.0, 1.0]
    (scene / "scene_camera.json").write_text(json.dumps(cams))
    next((scene / "rgb").glob("000002.*")).unlink()


def test_bad_images_and_cameras_are_clear_errors_naming_the_file(tiny_bop: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bop, tmp_path)
    _break_images(root)
    ds = BopDataset(root)
    with pytest.raises(ImageError, match=r"depth image .*000000\.png is 100×75 but the colour image .* is 200×150"):
        ds.observation(1, 0)
    assert ds.observation(1, 0, with_depth=False).depth is None  # an RGB method can still use the image
    with pytest.raises(CameraError, match=r"bad intrinsics for scene 1 image 1 in .*scene_camera\.json: .*NaN"):
        ds.camera(1, 1)
    with pytest.raises(BopFormatError, match="no rgb/gray image for scene 1 image 2"):
        ds.observation(1, 2)
    cams = json.loads((root / "test" / "000001" / "scene_camera.json").read_text())
    cams["1"]["cam_K"] = [0.0, 0.0, 100.0, 0.0, 500.0, 75.0, 0.0, 0.0, 1.0]
    cams["0"]["cam_K"] = None
    (root / "test" / "000001" / "scene_camera.json").write_text(json.dumps(cams))
    ds = BopDataset(root)
    with pytest.raises(CameraError, match="non-positive focal length"):
        ds.camera(1, 1)
    with pytest.raises(CameraError, match=r"scene_camera\.json.*value: None"):
        ds.camera(1, 0)


def test_bad_images_fail_their_image_only_and_the_run_says_so(tiny_bop: Path, inits: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bop, tmp_path)
    _break_images(root)
    out = tmp_path / "res.csv"
    res = runner.invoke(app, ["refine", str(root), "--inits", str(inits), *FAST, "--out", str(out)])
    assert res.exit_code == 3, res.output  # every image failed: never exit 0
    assert "refined 0 image(s)" in res.output and "3 failed" in res.output and "Traceback" not in res.output
    msgs = {r["im_id"]: r["message"] for r in _records(out) if r["code"] == "image_failed"}
    assert "depth image" in msgs[0] and "000000.png" in msgs[0]
    assert "scene_camera.json" in msgs[1] and "NaN" in msgs[1]
    assert "no rgb/gray image for scene 1 image 2" in msgs[2]
    assert read_results(out) == []


def _write_nan_mesh(path: Path) -> None:
    mesh = trimesh.load(path, process=False)
    assert isinstance(mesh, trimesh.Trimesh)
    v = np.array(mesh.vertices)
    v[3] = np.nan
    trimesh.Trimesh(v, mesh.faces, process=False).export(path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "nan"])
def test_a_broken_mesh_fails_every_instance_of_its_object_only(
    tiny_bop: Path, inits: Path, tmp_path: Path, damage: str
) -> None:
    root = _copy(tiny_bop, tmp_path)
    mesh = root / "models" / "obj_000002.ply"
    if damage == "truncated":
        mesh.write_bytes(mesh.read_bytes()[:400])
    elif damage == "empty":
        mesh.write_bytes(b"")
    else:
        _write_nan_mesh(mesh)
    out = tmp_path / "res.csv"
    res = runner.invoke(app, ["refine", str(root), "--inits", str(inits), *FAST, "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert "refined 3 image(s)" in res.output and "Traceback" not in res.output
    assert sorted((r.im_id, r.obj_id) for r in read_results(out)) == [(0, 1), (1, 1), (2, 1)]
    recs = [r for r in _records(out) if r["code"] == "mesh_unreadable"]
    assert sorted((r["im_id"], r["obj_id"]) for r in recs) == [(0, 2), (1, 2), (2, 2)]
    assert all("obj_000002.ply" in r["message"] for r in recs)
    # a re-run resumes exactly: the three images are finished (their broken instances are not retried)
    res = runner.invoke(app, ["refine", str(root), "--inits", str(inits), *FAST, "--out", str(out)])
    assert res.exit_code == 3 and "3 already done" in res.output
    assert len([r for r in _records(out) if r["code"] == "mesh_unreadable"]) == 3


# --- a run over bad rows ---------------------------------------------------------------------------------------


def test_bad_rows_fail_alone_and_the_valid_rows_are_refined_once(
    tiny_bop: Path, inits: Path, good_lines: list[str], tmp_path: Path
) -> None:
    g = good_lines  # images 0, 1, 2 with objects 1 and 2 each
    fields = g[3].split(",")
    R = np.array([float(v) for v in fields[4].split()]).reshape(3, 3) + 0.005  # off SO(3) by ~1.5e-2 (LM-O)
    off = ",".join([*fields[:4], " ".join(f"{v:.9g}" for v in R.reshape(9)), *fields[5:]])
    lines = [
        HEADER,
        g[0],
        "1,0,1,1,1 0 0,0 0 500,0",  # 3: R of 3 numbers
        g[1],
        "garbage",  # 5: no ids at all
        g[2],
        off,  # 7: repaired, refined
        g[4],
        g[4],  # 9: an exact duplicate of line 8
        "1,2,99,1,1 0 0 0 1 0 0 0 1,0 0 500,0",  # 10: unknown object
        "1,2,1,1,1 0 0 0 1 0 0 0 1,0 0 0.5,0",  # 11: t in metres
        g[5],
    ]
    bad = tmp_path / "inits.csv"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "res.csv"
    args = ["refine", str(tiny_bop), "--inits", str(bad), *FAST, "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 3, res.output
    assert "refined 3 image(s)" in res.output and "Traceback" not in res.output
    assert Counter((r.im_id, r.obj_id) for r in read_results(out)) == Counter(
        {(0, 1): 1, (0, 2): 1, (1, 1): 1, (1, 2): 1, (2, 1): 1, (2, 2): 1}
    )
    recs = _records(out)
    by_line = {}
    for r in recs:
        if r["row_written"]:
            continue  # the refiner's own per-instance failures (its best pose is written)
        line = int(r["message"].split(":")[1]) if r["message"].startswith(str(bad)) else None
        by_line[line] = r
    assert set(by_line) == {3, 5, 9, 10, 11}
    assert (
        by_line[3]["code"] == "malformed_row" and by_line[3]["obj_id"] == 1 and "R must have 9" in by_line[3]["message"]
    )
    assert by_line[5]["code"] == "malformed_row" and by_line[5]["scene_id"] is None
    assert by_line[9]["code"] == "duplicate_init" and f"{bad}:8" in by_line[9]["message"]
    assert by_line[10]["code"] == "unknown_object" and "ids there: 1, 2" in by_line[10]["message"]
    assert by_line[11]["code"] == "bad_init" and "is t in metres" in by_line[11]["message"]
    # a re-run: nothing to do, the same failures (logged once), still exit 3
    res = runner.invoke(app, args)
    assert res.exit_code == 3 and "3 already done" in res.output
    assert len([r for r in _records(out) if not r["row_written"]]) == len(by_line)


def test_a_duplicated_init_row_is_refined_once_like_the_single_row(tiny_bop: Path, inits: Path, tmp_path: Path) -> None:
    rows = read_results(inits)
    spec = JobSpec(str(tiny_bop), method="flow-pnp", iterations=2)
    ref = tmp_path / "ref.csv"
    refine_dataset(spec, rows, ref)
    dup = [*rows[:2], rows[1], *rows[2:]]  # object 2 of image 0 twice
    tasks, failures = plan_tasks(BopDataset(tiny_bop), dup)
    assert [len(t.rows) for t in tasks] == [2, 2, 2]
    assert [(f.obj_id, f.instance, f.code) for f in failures] == [(2, 1, "duplicate_init")]
    out = tmp_path / "dup.csv"
    s = refine_dataset(spec, dup, out)
    assert s.exit_code == 3 and s.instance_failures == 1
    a, b = read_results(ref), read_results(out)
    assert len(b) == len(a) == 6
    for x, y in zip(a, b, strict=True):  # the first copy's result is not degraded by the second
        assert (x.im_id, x.obj_id) == (y.im_id, y.obj_id)
        np.testing.assert_allclose(y.R, x.R, atol=1e-6)
        np.testing.assert_allclose(y.t, x.t, atol=1e-6)


def test_a_row_off_so3_by_1e2_given_as_a_library_row_is_repaired_and_refined(tiny_bop: Path) -> None:
    R = np.eye(3) + 0.006  # |RRᵀ - I| = 1.2e-2, det R = 1.018
    row = ResultRow(1, 0, 1, 1.0, R, np.array([0.0, 0.0, 0.55]))
    tasks, failures = plan_tasks(BopDataset(tiny_bop), [row], check_meshes=False)
    assert not failures
    fixed = tasks[0].rows[0].R
    np.testing.assert_allclose(fixed @ fixed.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(fixed) == pytest.approx(1.0)


# --- the property test -----------------------------------------------------------------------------------------

#: Corruptions of one row: name → (does the row still parse, is it still a valid initial pose).
ROW_KINDS: dict[str, tuple[bool, bool]] = {
    "ok": (True, True),
    "spaces": (True, True),
    "drop_row": (True, False),  # not in the file at all
    "duplicate": (True, True),  # the copy is dropped (and logged); the row itself is refined once
    "drop_field": (False, False),
    "extra_column": (False, False),
    "garble": (False, False),
    "nan": (False, False),
    "inf": (False, False),
    "short_R": (False, False),
    "reflection": (False, False),
    "far_off_so3": (False, False),
    "off_so3_1e2": (True, True),
    "t_in_metres": (True, False),
    "t_times_1000": (True, False),
    "behind": (True, False),
    "unknown_id": (True, False),
}


def _corrupt(line: str, kind: str, k: int) -> list[str]:
    f = line.split(",")
    R = np.array([float(v) for v in f[4].split()]).reshape(3, 3)
    t = np.array([float(v) for v in f[5].split()])

    def with_(i: int, value: str) -> str:
        return ",".join([*f[:i], value, *f[i + 1 :]])

    def num(a: np.ndarray) -> str:
        return " ".join(f"{v:.9g}" for v in a.reshape(-1))

    if kind in ("ok", "spaces"):
        return [line if kind == "ok" else " , ".join(f)]
    if kind == "drop_row":
        return []
    if kind == "duplicate":
        return [line, line]
    if kind == "drop_field":
        return [",".join(f[: k % 7] + f[k % 7 + 1 :])]
    if kind == "extra_column":
        return [line + ",1"]
    if kind == "garble":
        return [with_(k % 7, "x!")]
    if kind in ("nan", "inf"):
        i = 4 + k % 2
        vals = f[i].split()
        vals[k % len(vals)] = kind
        return [with_(i, " ".join(vals))]
    if kind == "short_R":
        return [with_(4, " ".join(f[4].split()[:8]))]
    if kind == "reflection":
        return [with_(4, num(-R))]
    if kind == "far_off_so3":
        return [with_(4, num(R * 1.5))]
    if kind == "off_so3_1e2":
        return [with_(4, num(R + 0.005))]
    if kind == "t_in_metres":
        return [with_(5, num(t * 1e-3))]
    if kind == "t_times_1000":
        return [with_(5, num(t * 1e3))]
    if kind == "behind":
        return [with_(5, num(-t))]
    if kind == "unknown_id":
        return [with_(2, "77")]
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def fuzz_dataset(tiny_bop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset with three model folders: ``models`` (good), ``models_trunc`` (object 2's PLY cut short)
    and ``models_nan`` (a NaN vertex in object 2)."""
    root = tmp_path_factory.mktemp("fuzz") / "ds"
    shutil.copytree(tiny_bop, root)
    for name in ("models_trunc", "models_nan"):
        shutil.copytree(root / "models", root / name)
    bad = root / "models_trunc" / "obj_000002.ply"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    _write_nan_mesh(root / "models_nan" / "obj_000002.ply")
    return root


def _fuzz_once(root: Path, good_lines: list[str], kinds: list[str], ks: list[int], style: dict, models: str) -> None:
    lines: list[str] = []
    expected: Counter[tuple[int, int, int]] = Counter()
    parses = invalid = 0
    broken_obj = None if models == "models" else 2
    for line, kind, k in zip(good_lines, kinds, ks, strict=True):
        new = _corrupt(line, kind, k)
        lines += new
        ok_parse, ok = ROW_KINDS[kind]
        f = line.split(",")
        ids = (int(f[0]), int(f[1]), int(f[2]))
        if new and ok_parse:
            parses += 1
        if ok and ids[2] == broken_obj:
            ok = False
        if ok:
            expected[ids] += 1
        elif new:
            invalid += 1
        if kind == "duplicate":
            invalid += 1  # the dropped copy is a failed item
    if style["blank_lines"]:
        lines = [x for pair in zip(lines, [""] * len(lines), strict=True) for x in pair]
    if style["comment"]:
        lines.insert(0, "# made by a fuzzer")
    if style["header"]:
        lines.insert(0, HEADER)
    eol = "\r\n" if style["crlf"] else "\n"
    text = ("\ufeff" if style["bom"] else "") + eol.join(lines) + eol
    with tempfile.TemporaryDirectory() as d:
        inits = Path(d) / "inits.csv"
        inits.write_bytes(text.encode("utf-8"))
        out = Path(d) / "res.csv"
        args = ["refine", str(root), "--inits", str(inits), "--models-dir", models, *FAST, "--out", str(out)]
        res = runner.invoke(app, args)
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert "Traceback" not in res.output
        if parses == 0:  # nothing in the file reads as a row: bad usage
            assert res.exit_code == 2, res.output
            assert not out.exists()
            return
        assert res.exit_code in (0, 3), res.output
        recs = _records(out)
        assert (res.exit_code == 0) == (not recs), res.output  # 0 if and only if no item failed
        input_failures = [r for r in recs if not r.get("row_written")]
        assert len(input_failures) == invalid, (kinds, models, recs)
        got = Counter((r.scene_id, r.im_id, r.obj_id) for r in read_results(out))
        assert got == expected, (kinds, models)


FUZZ_ARGS = {
    "kinds": st.lists(st.sampled_from(sorted(ROW_KINDS)), min_size=6, max_size=6),
    "ks": st.lists(st.integers(0, 20), min_size=6, max_size=6),
    "style": st.fixed_dictionaries({k: st.booleans() for k in ("header", "bom", "crlf", "blank_lines", "comment")}),
    "models": st.sampled_from(["models", "models", "models_trunc", "models_nan"]),
}
FUZZ_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.timeout(300)
@settings(FUZZ_SETTINGS, max_examples=25)
@given(**FUZZ_ARGS)
def test_refine_survives_random_corruptions_of_inits_and_meshes(
    fuzz_dataset: Path, good_lines: list[str], kinds: list[str], ks: list[int], style: dict, models: str
) -> None:
    _fuzz_once(fuzz_dataset, good_lines, kinds, ks, style, models)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@settings(FUZZ_SETTINGS, max_examples=300)
@given(**FUZZ_ARGS)
def test_refine_survives_many_random_corruptions(
    fuzz_dataset: Path, good_lines: list[str], kinds: list[str], ks: list[int], style: dict, models: str
) -> None:
    _fuzz_once(fuzz_dataset, good_lines, kinds, ks, style, models)
