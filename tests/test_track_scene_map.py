"""The still scene's camera motion and its map (:mod:`meshpose.track.scene_map`): triangulation, the objects'
consensus, the scale from object centres, the length search, and the map giving a metric camera motion when the
objects themselves have no texture (LM-O's case)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meshpose.eval.metrics import add_or_adds
from meshpose.geometry.lie import rotation_angle
from meshpose.mesh import make_object_model, vertex_colored_mesh
from meshpose.refine.registry import make_refiner
from meshpose.synth.sequence import SequenceConfig, render_sequence
from meshpose.track import FrameFeatures, Tracker, TrackerConfig, predict_from_matches
from meshpose.track.scene_map import (
    best_motion,
    camera_motion_consensus,
    carry_points,
    essential_motion,
    length_grid,
    motion_from_centres,
    search_length,
    triangulate,
)
from meshpose.types import ObjectModel, Observation, Pose, RefineInfo, RefineResult
from support import scenes


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _motion(rot_deg: float, axis: tuple[float, float, float], t: tuple[float, float, float]) -> Pose:
    a = torch.tensor(axis, dtype=torch.float64)
    xi = torch.cat([torch.tensor(t, dtype=torch.float64), math.radians(rot_deg) * a / a.norm()])
    return Pose.exp(xi)


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = points @ K.T
    return p[:, :2] / p[:, 2:]


def _background(n: int, seed: int) -> np.ndarray:
    """``(n, 3)`` points of a textured table 0.6–1.0 m in front of the camera, on the image's left half."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.6, 1.0, n)
    return np.stack([rng.uniform(-0.45, -0.02, n) * z, rng.uniform(-0.35, 0.35, n) * z, z], 1)


def test_triangulate_recovers_points_and_rejects_those_without_parallax() -> None:
    cam = scenes.make_camera(640, 480)
    K = np.asarray(cam.K, np.float64)
    X = _background(200, 0)
    M = _motion(20.0, (0.2, 1.0, 0.1), (0.15, 0.02, 0.03))
    R, t = M.numpy()
    Xc = X @ R.T + t
    pts, ok = triangulate(_project(X, K), _project(Xc, K), M, cam)
    assert ok.all()
    assert np.abs(pts - Xc).max() < 1e-6
    # A pure rotation gives no parallax: nothing is triangulated.
    Mr = _motion(10.0, (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))
    Rr, tr = Mr.numpy()
    _, ok = triangulate(_project(X, K), _project(X @ Rr.T + tr, K), Mr, cam)
    assert not ok.any()
    # A wrong match (reprojection error) is dropped.
    uv = _project(Xc, K)
    uv[:10] += 15.0
    _, ok = triangulate(_project(X, K), uv, M, cam)
    assert not ok[:10].any() and ok[10:].all()


def test_carry_points_keeps_old_points_where_nothing_new_was_triangulated() -> None:
    M = _motion(5.0, (0.0, 1.0, 0.0), (0.05, 0.0, 0.0))
    prev = np.full((4, 3), np.nan)
    prev[1] = [0.1, 0.0, 1.0]
    fresh = np.array([[0.0, 0.0, 2.0], [9.0, 9.0, 9.0], [0.0, 0.0, 3.0]])
    ok = np.array([True, False, False])
    out = carry_points(5, np.array([0, 1, 2]), np.array([4, 2, 0]), prev, M, fresh, ok)
    R, t = M.numpy()
    assert np.allclose(out[4], [0.0, 0.0, 2.0])  # fresh
    assert np.allclose(out[2], R @ prev[1] + t)  # carried from the old keyframe
    assert np.isnan(out[[0, 1, 3]]).all()  # no old point, not triangulated; never matched


def test_consensus_outvotes_an_object_that_moved() -> None:
    M = _motion(25.0, (0.3, 1.0, 0.0), (0.2, -0.05, 0.04))
    rng = np.random.default_rng(1)
    before = {
        k: Pose.exp(torch.tensor(rng.normal(0, 0.3, 6)))
        @ Pose.exp(torch.tensor([0, 0, 0.8, 0, 0, 0.0], dtype=torch.float64))
        for k in range(4)
    }
    after = {k: M @ p for k, p in before.items()}
    after[3] = _motion(30.0, (1.0, 0.0, 0.0), (0.1, 0.0, 0.0)) @ after[3]  # it moved in the scene
    found, n = camera_motion_consensus(before, after)
    assert found is not None and n == 3
    assert float(rotation_angle(found.R, M.R)) < 1e-9 and float((found.t - M.t).norm()) < 1e-9
    # Two objects that disagree: no consensus.
    assert camera_motion_consensus({0: before[0], 3: before[3]}, {0: after[0], 3: after[3]})[0] is None


def test_motion_from_centres_scales_the_essential_direction_despite_rotation_errors() -> None:
    M = _motion(30.0, (0.0, 1.0, 0.2), (0.25, 0.0, 0.05))
    R, t = M.numpy()
    essential = (R, t / np.linalg.norm(t), 300)
    before = {
        k: Pose.exp(torch.tensor([0.1 * k - 0.1, 0.05, 0.7, 0.3 * k, 0.1, 0.0], dtype=torch.float64)) for k in range(3)
    }
    # The refined poses are 10° off in rotation each (about their own centres), 3 mm off in position.
    after = {
        k: Pose((M @ p).R @ _motion(10.0, (1.0, k, 0.0), (0, 0, 0)).R, (M @ p).t + 0.003) for k, p in before.items()
    }
    found, n = motion_from_centres(essential, before, after)
    assert found is not None and n == 3
    assert abs(float(found.t.norm()) - float(np.linalg.norm(t))) < 0.01
    assert camera_motion_consensus(before, after)[0] is None  # the objects' own motions disagree by ~20°


def test_length_grid() -> None:
    g = length_grid(0.02, 1.5, 1.15)
    assert g[0] == 0.02 and g[-1] <= 1.5 and g[-1] * 1.15 > 1.5
    assert np.allclose(np.diff(np.log(g)), math.log(1.15))
    with pytest.raises(ValueError):
        length_grid(0.5, 0.1, 1.2)


class _DistanceRefiner:
    """A stand-in refiner that does not move poses and scores them by their distance to the truth."""

    name = "distance"

    def __init__(self, truth: dict[int, Pose], ids: dict[int, int]) -> None:
        self.truth, self.ids, self.calls = truth, ids, 0

    def refine(
        self, obs: Observation, objects: list[ObjectModel], init: Pose, iterations: int | None = None
    ) -> RefineResult:
        self.calls += 1
        init = init.reshape(-1)
        err = [float((init[i].t - self.truth[self.ids[id(o)]].t).norm()) for i, o in enumerate(objects)]
        n = len(objects)
        info = RefineInfo({}, np.zeros(n, bool), [None] * n, 0)
        return RefineResult(init, np.exp(-np.asarray(err) / 0.02), [init], info)


def test_search_length_picks_the_travel_that_scores_best() -> None:
    objs = list(scenes.objects())
    M = _motion(25.0, (0.0, 1.0, 0.0), (0.31, 0.0, 0.04))
    R, t = M.numpy()
    essential = (R, t / np.linalg.norm(t), 200)
    before = {
        k: Pose.exp(torch.tensor([0.05 * k, 0.0, 0.6 + 0.05 * k, 0.0, 0.2 * k, 0.0], dtype=torch.float64))
        for k in range(3)
    }
    truth = {k: M @ p for k, p in before.items()}
    models = dict(enumerate(objs))
    fake = _DistanceRefiner(truth, {id(o): k for k, o in models.items()})
    obs = Observation(np.zeros((480, 640, 3), np.uint8), scenes.make_camera(640, 480))
    lengths = length_grid(0.02, 1.5, 1.15)
    pred = search_length(fake, obs, models, [essential], before, lengths, objects=2)
    assert fake.calls == len(lengths) and set(pred) == {0, 1, 2}
    # the nearest grid length, then polished by the (here unmoved) centres: within a grid step of the truth
    for k in range(3):
        assert float((pred[k].t - truth[k].t).norm()) < 0.15 * float(np.linalg.norm(t))


def _plain(kind: str, i: int, size: float, colour: tuple[int, int, int]) -> ObjectModel:
    """A primitive of one flat colour: no texture to match on (LM-O's objects nearly so)."""
    mesh = vertex_colored_mesh(kind, seed=i, size_m=size)  # type: ignore[arg-type]
    mesh.visual.vertex_colors = np.tile(np.array([*colour, 255], np.uint8), (len(mesh.vertices), 1))
    return make_object_model(mesh, i + 1, name=f"plain{i}")


def test_the_map_gives_the_camera_motion_its_scale_when_the_objects_have_no_texture() -> None:
    cam = scenes.make_camera(640, 480)
    K = np.asarray(cam.K, np.float64)
    obj = _plain("box", 0, 0.08, (200, 60, 40))
    pose = Pose.exp(torch.tensor([0.12, 0.0, 0.7, 0.3, 0.4, 0.0], dtype=torch.float64))  # right half of the image
    X = _background(300, 3)  # table points, left half: the only keypoints
    M = _motion(20.0, (0.1, 1.0, 0.0), (0.12, 0.01, 0.02))
    R, t = M.numpy()
    desc = np.random.default_rng(5).random((len(X), 128)).astype(np.float32)
    prev = FrameFeatures(_project(X, K), desc, "sift")
    cur = FrameFeatures(_project(X @ R.T + t, K), desc, "sift")

    alone = predict_from_matches(prev, cur, cam, [obj], pose.reshape(1), scene_rigid=True)
    assert alone.poses == [None] and alone.scene_motion is None  # a direction, no length
    assert alone.essentials and min(float(rotation_angle(torch.from_numpy(e[0]), M.R)) for e in alone.essentials) < 1e-3

    mapped = predict_from_matches(prev, cur, cam, [obj], pose.reshape(1), scene_rigid=True, prev_points=X)
    assert mapped.scene_motion is not None and mapped.source == ["scene"]
    assert float(rotation_angle(mapped.scene_motion.R, M.R)) < 1e-3
    assert float((mapped.scene_motion.t - M.t).norm()) < 1e-3
    p = mapped.poses[0]
    assert p is not None and float(((M @ pose).t - p.t).norm()) < 1e-3


def test_tracking_textureless_objects_in_a_still_scene_through_large_camera_jumps() -> None:
    """The camera turns 20–35° between frames over plain-coloured objects on a textured table: the velocity
    prediction is useless, the objects give no matches, and the table's matches with the map track them."""
    objs = [
        _plain("cylinder", 0, 0.09, (200, 60, 40)),
        _plain("box", 1, 0.06, (230, 220, 60)),
        _plain("cone", 2, 0.1, (60, 160, 70)),
    ]
    cfg = SequenceConfig(
        width=480,
        height=360,
        frames=6,
        blur_samples=1,
        camera_jump_deg=(20.0, 35.0),
        size_frac=(0.5, 0.6),
        table_m=0.6,
        seed=3,
    )
    seq = render_sequence(objs, cfg)
    opts = TrackerConfig(prediction="matches", scene_rigid=True, scale_objects=2, scale_ratio=1.15)
    tracker = Tracker(make_refiner("contour"), config=opts)
    tracker.start(objs, seq.gt[0], frame=0, obs=seq.observation(0))
    ok = total = 0
    sources = []
    for i in range(1, len(seq)):
        for j, r in enumerate(tracker.step(seq.observation(i), frame=i)):
            # ADD-S: plain cylinders, cones and cubes look the same turned about their axes
            Re, te = r.pose.numpy()
            Rg, tg = seq.gt[i][j].numpy()
            err = float(add_or_adds(Re, te, Rg, tg, objs[j].points, symmetric=True))
            ok += r.ok and err < 0.1 * objs[j].diameter
            total += 1
            sources.append(r.info["prediction"])
    assert ok >= 0.85 * total, (ok, total, sources)
    assert set(sources) == {"scene"}
    assert tracker._matcher is not None
    key = tracker._matcher._keys[max(tracker._matcher.keyframes)]
    assert key.points is not None and np.isfinite(key.points).all(1).sum() >= 50  # the table is in the map


def test_a_plane_s_two_motions_are_both_candidates() -> None:
    """Matches on one plane (a table) fit two camera motions; the right one is always among the candidates."""
    cam = scenes.make_camera(640, 480)
    K = np.asarray(cam.K, np.float64)
    rng = np.random.default_rng(7)
    n = 400
    uv = np.stack([rng.uniform(20, 620, n), rng.uniform(20, 460, n)], 1)
    rays = np.column_stack([(uv - K[:2, 2]) / np.diag(K)[:2], np.ones(n)])
    normal, d = np.array([0.0, -0.6, -0.8]), -0.7  # a table seen from above: n·X = d
    X = rays * (d / (rays @ normal))[:, None]
    for seed in range(4):
        g = np.random.default_rng(seed)
        M = _motion(float(g.uniform(15, 35)), tuple(g.normal(size=3)), tuple(g.normal(0, 0.15, 3)))
        R, t = M.numpy()
        cands = essential_motion(_project(X, K), _project(X @ R.T + t, K), cam, 1.0, 30)
        errs = [math.degrees(float(rotation_angle(torch.from_numpy(c[0]), M.R))) for c in cands]
        assert min(errs) < 0.5, errs


def test_best_motion_takes_the_one_the_object_centres_agree_with() -> None:
    M = _motion(25.0, (0.0, 1.0, 0.0), (0.3, 0.0, 0.05))
    R, t = M.numpy()
    before = {k: Pose.exp(torch.tensor([0.05 * k, 0.0, 0.6, 0.0, 0.1 * k, 0.0], dtype=torch.float64)) for k in range(3)}
    after = {k: M @ p for k, p in before.items()}
    wrong = _motion(25.0, (0.0, 1.0, 0.0), (0.1, 0.0, 0.05))  # a prediction 20 cm off
    found = best_motion(wrong, [(R, t / np.linalg.norm(t), 100)], before, after)
    assert found is not None and float((found.t - M.t).norm()) < 1e-6
    assert best_motion(wrong, [], before, after) is not None  # (the objects' own consensus)
    scattered = {k: _motion(10.0 * k, (1.0, 0.0, 0.0), (0.1 * k, 0.0, 0.0)) @ p for k, p in after.items()}
    assert best_motion(wrong, [], before, scattered) is None  # nothing explains the centres: no map from it


def test_scene_fusion_moves_part_way_and_ignores_outliers() -> None:
    from meshpose.track import TrackResult

    obj = scenes.objects()[0]
    tracker = Tracker(make_refiner("contour"), config=TrackerConfig(prediction="matches", scene_rigid=True))
    pred = Pose.exp(torch.tensor([0.0, 0.0, 0.6, 0.0, 0.0, 0.0], dtype=torch.float64))
    (k,) = tracker.start([obj], pred.reshape(1), frame=0)
    d = obj.diameter
    near = Pose(pred.R, pred.t + torch.tensor([0.1 * d, 0.0, 0.0], dtype=torch.float64))
    far = Pose(pred.R, pred.t + torch.tensor([0.5 * d, 0.0, 0.0], dtype=torch.float64))
    for refined, expect_x, gated in ((near, 0.3 * 0.1 * d, False), (far, 0.0, True)):
        results = {k: TrackResult(k, obj.obj_id, refined, 0.8, "tracking")}
        tracker._fuse(results, {k: (pred, "scene")})
        assert results[k].info["gated"] is gated
        assert abs(float(results[k].pose.t[0]) - expect_x) < 1e-9  # scene_gain 0.3 of the way, or none of it
    # a track predicted by its own velocity is not fused
    results = {k: TrackResult(k, obj.obj_id, near, 0.8, "tracking")}
    tracker._fuse(results, {k: (pred, "velocity")})
    assert results[k].pose is near


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"scene_gain": 0.0}, "scene_gain"),
        ({"scene_gate": [0.3, -1]}, "scene_gate"),
        ({"detection_iou": 1.5}, "detection_iou"),
        ({"detection_mask_iou": -0.1}, "detection_mask_iou"),
        ({"detection_mask_cover": 2}, "detection_mask_cover"),
        ({"recover_budget_s": -0.01}, "recover_budget_s"),
        ({"recover_max_tries": 0}, "recover_max_tries"),
        ({"reestimate_min_visible": 1.5}, "reestimate_min_visible"),
        ({"scale_range_m": [1.0, 0.5]}, "scale_range_m"),
    ],
)
def test_bad_tracker_options_are_refused_by_name(opts: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrackerConfig.from_dict(opts)
