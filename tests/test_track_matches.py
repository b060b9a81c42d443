"""The tracker's prediction from feature matches (``TrackerConfig(prediction="matches")``): a static scene seen by a
camera that jumps 20–40° and about a diameter between frames (where the velocity prediction is useless), the clean
fallback to the velocity prediction, and an object that moves in a static scene keeping its own prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meshpose.mesh import make_object_model, textured_box
from meshpose.refine.registry import make_refiner
from meshpose.synth.sequence import SequenceConfig, SyntheticSequence, render_sequence
from meshpose.track import (
    ConstantVelocity,
    MatchConfig,
    MotionConfig,
    Tracker,
    TrackerConfig,
    detect_features,
    predict_from_matches,
)
from meshpose.types import ObjectModel, Pose
from support import scenes


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _err(obj: ObjectModel, est: Pose, gt: Pose) -> float:
    return scenes.add_error(obj, est, gt) / obj.diameter


@pytest.fixture(scope="module")
def jumping() -> SyntheticSequence:
    """Three textured objects standing still; the camera turns 20–40° about them between frames (320×240)."""
    cfg = SequenceConfig(
        width=320, height=240, frames=8, blur_samples=1, camera_jump_deg=(20.0, 40.0), size_frac=(0.7, 0.9), seed=4
    )
    return render_sequence(list(scenes.objects()), cfg)


def test_static_scene_sequence_moves_the_camera_a_lot(jumping: SyntheticSequence) -> None:
    angles, shifts = [], []
    for i in range(1, len(jumping)):
        for j, obj in enumerate(jumping.objects):
            rel = jumping.gt[i][j] @ jumping.gt[i - 1][j].inverse()
            angles.append(math.degrees(float(rel.log()[3:].norm())))
            shifts.append(float((jumping.gt[i][j].t - jumping.gt[i - 1][j].t).norm()) / obj.diameter)
        # the same camera motion for every object: a static scene
        motions = [(jumping.gt[i][j] @ jumping.gt[i - 1][j].inverse()).R for j in range(len(jumping.objects))]
        assert all(torch.allclose(m, motions[0], atol=1e-9) for m in motions)
    # (the roll and the wandering look-at point add to the turn of the view direction)
    assert min(angles) > 19.0 and 25.0 < float(np.median(angles)) < 45.0, angles
    assert 0.5 < float(np.median(shifts)) < 2.0, shifts


def test_still_scene_objects_can_be_moved_between_frames() -> None:
    """``SequenceConfig.relocate``: an object moved between frames changes its place relative to the others (and is
    rendered there: its visible mask follows); without it the scene is rigid, and a bad probability is refused."""
    objs = list(scenes.objects())

    def rel(seq: SyntheticSequence, i: int, j: int) -> torch.Tensor:
        return (seq.gt[i][0].inverse() @ seq.gt[i][j]).t

    base = {"width": 160, "height": 120, "frames": 4, "blur_samples": 1, "camera_jump_deg": (15.0, 25.0), "seed": 6}
    still = render_sequence(objs, SequenceConfig(**base))  # type: ignore[arg-type]
    moved = render_sequence(objs, SequenceConfig(**base, relocate=1.0))  # type: ignore[arg-type]
    for i in range(1, 4):
        for j in (1, 2):
            assert float((rel(still, i, j) - rel(still, 0, j)).norm()) < 1e-6
            assert float((rel(moved, i, j) - rel(moved, i - 1, j)).norm()) > 0.01
    # the camera is the same: object 0's first pose, and the masks follow the moved poses
    assert float((still.gt[0][0].t - moved.gt[0][0].t).norm()) < 1e-9
    assert not np.array_equal(still.masks_visib[3], moved.masks_visib[3])
    with pytest.raises(ValueError, match="relocate"):
        SequenceConfig(relocate=1.5)


def test_still_scene_distractors_are_rendered_but_not_annotated() -> None:
    """``SequenceConfig.distractors``: unannotated objects among the annotated ones — drawn (the image changes), not
    in the ground truth, and the annotated objects' visible masks lose what they hide."""
    objs = list(scenes.objects())
    base = {"width": 160, "height": 120, "frames": 3, "blur_samples": 1, "camera_jump_deg": (15.0, 25.0), "seed": 6}
    plain = render_sequence(objs, SequenceConfig(**base))  # type: ignore[arg-type]
    clutter = render_sequence(objs, SequenceConfig(**base, distractors=4))  # type: ignore[arg-type]
    assert tuple(clutter.gt.batch_shape) == (3, len(objs))
    assert float((clutter.gt.t - plain.gt.t).abs().max()) < 1e-9  # the same camera and objects
    assert not np.array_equal(clutter.rgb[0], plain.rgb[0])
    assert np.array_equal(clutter.masks, plain.masks)  # full silhouettes: the objects alone
    assert (clutter.masks_visib <= plain.masks_visib).all()
    with pytest.raises(ValueError, match="distractors"):
        SequenceConfig(distractors=-1)


def test_match_prediction_where_velocity_fails_and_tracking_succeeds(jumping: SyntheticSequence) -> None:
    objs, gt = jumping.objects, jumping.gt
    feats = [detect_features(jumping.rgb[i]) for i in range(len(jumping))]
    better = velocity_bad = 0
    for i in range(2, len(jumping)):
        pred = predict_from_matches(feats[i - 1], feats[i], jumping.camera, objs, gt[i - 1], scene_rigid=True)
        for j, obj in enumerate(objs):
            cv = ConstantVelocity(MotionConfig(damping=1.0))
            cv.update(gt[i - 2][j], i - 2)
            cv.update(gt[i - 1][j], i - 1)
            if _err(obj, cv.predict(i), gt[i][j]) >= 0.1:
                velocity_bad += 1
                p = pred.poses[j]
                better += p is not None and _err(obj, p, gt[i][j]) < 0.1
    assert velocity_bad >= 12 and better >= 0.8 * velocity_bad, (better, velocity_bad)

    tracker = Tracker(make_refiner("contour"), config=TrackerConfig(prediction="matches", scene_rigid=True))
    tracker.start(objs, gt[0], frame=0, obs=jumping.observation(0))
    ok = total = 0
    for i in range(1, len(jumping)):
        for j, r in enumerate(tracker.step(jumping.observation(i), frame=i)):
            ok += r.ok and _err(objs[j], r.pose, gt[i][j]) < 0.1
            total += 1
            assert r.info["prediction"] in ("scene", "own", "velocity") and r.info["match_s"] > 0
    assert ok >= 0.85 * total, (ok, total)


def test_too_few_matches_fall_back_to_the_velocity_prediction() -> None:
    obj = scenes.objects()[0]
    seq = render_sequence([obj], SequenceConfig(width=240, height=180, frames=5, frame_step=2, seed=1))
    blank = detect_features(np.full((180, 240, 3), 128, np.uint8))
    assert len(blank) == 0
    pred = predict_from_matches(detect_features(seq.rgb[0]), blank, seq.camera, [obj], seq.gt[0])
    assert pred.poses == [None] and pred.source == ["none"]

    never = TrackerConfig(prediction="matches", matches=MatchConfig(min_inliers=100_000))  # matching never suffices
    runs = {}
    for name, cfg in (("velocity", TrackerConfig()), ("matches", never)):
        tracker = Tracker(make_refiner("contour"), config=cfg)
        tracker.start([obj], seq.gt[0], frame=0, obs=seq.observation(0))
        runs[name] = [tracker.step(seq.observation(i), frame=i)[0] for i in range(1, len(seq))]
    for a, b in zip(runs["velocity"], runs["matches"], strict=True):
        assert b.info["prediction"] == "velocity" and b.status == a.status == "tracking"
        assert torch.allclose(a.pose.matrix(), b.pose.matrix(), atol=1e-9)

    # After reset (a resumed run) there is no previous image: the first frame is predicted by velocity.
    tracker = Tracker(make_refiner("contour"), config=TrackerConfig(prediction="matches"))
    tracker.start([obj], seq.gt[0], frame=0, obs=seq.observation(0))
    tracker.reset()
    tracker.start([obj], seq.gt[1], frame=1)
    (r,) = tracker.step(seq.observation(2), frame=2)
    assert r.info["prediction"] == "velocity"
    (r,) = tracker.step(seq.observation(3), frame=3)
    assert r.info["prediction"] == "own" and _err(obj, r.pose, seq.gt[3][0]) < 0.1


def test_a_moving_object_in_a_static_scene_keeps_its_own_prediction() -> None:
    box = make_object_model(textured_box((0.07, 0.06, 0.05), seed=11, texture="noise"), 7, name="box2")
    objs = [scenes.objects()[0], scenes.objects()[1], box]
    cfg = SequenceConfig(
        width=480, height=360, frames=2, blur_samples=1, camera_jump_deg=(25.0, 25.0), size_frac=(0.8, 0.8), seed=2
    )
    seq = render_sequence(objs, cfg)
    # The box moves in the scene too: 30° about its own centre and 0.4 diameters sideways.
    own = Pose.exp(torch.tensor([0.4 * box.diameter, 0.0, 0.0, 0.0, math.radians(30.0), 0.0], dtype=torch.float64))
    moved = seq.gt[1][2]
    moved = Pose(moved.R @ own.R, moved.t + own.t)
    now = Pose.stack([seq.gt[1][0], seq.gt[1][1], moved])
    obs0 = scenes.render_observation(objs, seq.gt[0], seq.camera, seed=1)
    obs1 = scenes.render_observation(objs, now, seq.camera, seed=1)
    pred = predict_from_matches(
        detect_features(obs0.rgb), detect_features(obs1.rgb), seq.camera, objs, seq.gt[0], scene_rigid=True
    )
    assert pred.scene_motion is not None
    assert pred.source == ["scene", "scene", "own"], (pred.source, pred.matches, pred.inliers)
    for j, obj in enumerate(objs):
        p = pred.poses[j]
        assert p is not None and _err(obj, p, now[j]) < 0.1, j
