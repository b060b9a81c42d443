"""``jointloss`` data without labels: the RGB-D samples of detections (the loader never needs ``scene_gt.json``)
and the weak pose targets (multi-start robust registration of the model to the observed depth)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.support.unlabeled import make_unlabeled

from meshpose.geometry.lie import random_rotations
from meshpose.geometry.projection import unproject
from meshpose.io.bop import BopDataset
from meshpose.io.detections import DetectionsByImage, read_detections
from meshpose.mesh import example_object
from meshpose.render.gl import get_default_renderer
from meshpose.train import weak_labels as wl
from meshpose.train.jointloss_data import JointAugment, JointLossDataset, collate, keys_in_range
from meshpose.types import Camera, Detection, Pose

TINY = 12  # pixels of the fake tiny detection (below the 50-pixel minimum)


def _add_tiny(dets: dict[tuple[int, int], list[Detection]]) -> None:
    """One fake 12-pixel detection in the first image (below the 50-pixel minimum)."""
    first = next(iter(dets))
    tiny = np.zeros((150, 200), bool)
    tiny[5:8, 5:9] = True  # 12 pixels
    box = np.array([5.0, 5.0, 4.0, 3.0])
    dets[first].append(Detection(dets[first][0].obj_id, box, tiny, scene_id=first[0], im_id=first[1]))


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny RGB-D dataset from the synthetic engine, its detections (from its masks, plus one tiny fake one),
    and then its poses deleted: ``(root, detections.json)``."""
    u = make_unlabeled(tmp_path_factory.mktemp("jl"), objects="novel:3", images=3, split="test", seed=5, edit=_add_tiny)
    return u.root, u.dets


def _loader(unlabeled: tuple[Path, Path], **kw: object) -> tuple[JointLossDataset, DetectionsByImage]:
    root, path = unlabeled
    dets = read_detections(path)
    return JointLossDataset(BopDataset(root, "test"), dets, crop=64, points=100, **kw), dets  # type: ignore[arg-type]


def test_samples_without_poses(unlabeled: tuple[Path, Path]) -> None:
    jl, dets = _loader(unlabeled)
    assert not (unlabeled[0] / "test" / "000000" / "scene_gt.json").exists()
    assert len(jl) == sum(len(v) for v in dets.values()) - 1  # all but the tiny one
    s = jl[0]
    assert s.rgb.shape == (3, 64, 64) and s.rgb.dtype == np.float32 and 0.0 <= s.rgb.min() <= s.rgb.max() <= 1.0
    assert s.choose.shape == (100,) and s.choose.dtype == np.int64 and s.choose.max() < 64 * 64
    assert s.points.shape == (100, 3) and s.points.dtype == np.float32 and np.all(s.points[:, 2] > 0)
    assert s.mask.shape == (64, 64) and s.mask.dtype == np.uint8 and s.mask.any()
    assert s.depth.shape == (64, 64) and s.depth.dtype == np.float32
    assert s.K_crop.shape == (3, 3) and s.rgb_full_box.shape == (4,)
    assert s.key == jl.keys[0] and s.obj_id == dets[s.key[:2]][s.key[2]].obj_id
    b = collate([jl[0], jl[1]])
    assert b["rgb"].shape == (2, 3, 64, 64) and b["choose"].dtype == torch.int64
    assert b["points"].shape == (2, 100, 3) and b["key"].shape == (2, 3) and b["K_crop"].dtype == torch.float32
    # the same item is the same for one (seed, epoch), other pixels in another epoch
    assert np.array_equal(jl[0].choose, s.choose)
    jl.set_epoch(1)
    assert not np.array_equal(jl[0].choose, s.choose)


def test_points_back_project_onto_the_mask_and_the_crop_camera(unlabeled: tuple[Path, Path]) -> None:
    jl, dets = _loader(unlabeled)
    ds = BopDataset(unlabeled[0], "test")
    for i in range(len(jl)):
        s = jl[i]
        det = dets[s.key[:2]][s.key[2]]
        cam = ds.camera(*s.key[:2])
        # full camera: each point is the back-projection of a mask pixel (with its observed depth)
        uv = s.points.astype(np.float64) @ cam.K.T
        u = np.rint(uv[:, 0] / uv[:, 2]).astype(int)
        v = np.rint(uv[:, 1] / uv[:, 2]).astype(int)
        assert det.mask is not None and det.mask[v, u].all()
        depth = ds.observation(*s.key[:2]).depth
        assert depth is not None and np.allclose(depth[v, u], s.points[:, 2], atol=1e-5)
        # crop camera: a point projects within a pixel of its `choose` pixel, where the crops hold the mask
        p = s.points.astype(np.float64) @ s.K_crop.T
        cu, cv = s.choose % 64, s.choose // 64
        err = np.hypot(p[:, 0] / p[:, 2] - cu, p[:, 1] / p[:, 2] - cv)
        assert err.max() <= 1.0
        assert s.mask[cv, cu].mean() > 0.9
        assert np.mean(np.abs(s.depth[cv, cu] - s.points[:, 2]) < 0.01) > 0.9


def test_tiny_masks_are_skipped_with_a_reason(unlabeled: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="meshpose.train.jointloss_data"):
        jl, dets = _loader(unlabeled)
    (key, reason), *rest = jl.skipped
    assert not rest and key[2] == len(dets[key[:2]]) - 1 and f"(mask has {TINY})" in reason and "< 50" in reason
    assert key not in jl.keys and str(key) in caplog.text


def test_keys_objects_and_augmentation(unlabeled: tuple[Path, Path]) -> None:
    jl, _ = _loader(unlabeled, keys=keys_in_range([(0, 0), (0, 1), (0, 2)], 1, 3))
    assert {k[:2] for k in jl.keys} == {(0, 1), (0, 2)}
    oid = jl[0].obj_id
    only, _ = _loader(unlabeled, obj_ids=[oid])
    assert {only[i].obj_id for i in range(len(only))} == {oid}
    plain, _ = _loader(unlabeled)
    aug, _ = _loader(unlabeled, augment=JointAugment(depth_noise_m=0.002))
    a, p = aug[0], plain[0]
    assert np.array_equal(a.choose, p.choose) and a.rgb.shape == p.rgb.shape and not np.allclose(a.rgb, p.rgb)
    assert a.rgb.min() >= 0.0 and a.rgb.max() <= 1.0
    # depth noise moves each point along its viewing ray
    ray_a = a.points / np.linalg.norm(a.points, axis=1, keepdims=True)
    ray_p = p.points / np.linalg.norm(p.points, axis=1, keepdims=True)
    assert np.allclose(ray_a, ray_p, atol=1e-5) and not np.allclose(a.points, p.points)


def _rot_err_deg(R: np.ndarray, R_gt: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip((np.trace(R.T @ R_gt) - 1.0) / 2.0, -1.0, 1.0))))


def test_weak_pose_recovers_a_clean_asymmetric_object() -> None:
    obj = example_object(0)
    assert not obj.is_symmetric
    cam = Camera.from_fxfycxcy(300.0, 300.0, 158.0, 122.0, width=320, height=240)
    Rs = random_rotations(3, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    renderer = get_default_renderer()
    for k, R_gt in enumerate(Rs):
        t_gt = np.array([0.03 * (k - 1), -0.02, 0.5 + 0.05 * k])
        out = renderer.render([obj], Pose(R_gt[None], t_gt[None]), cam)
        depth = out.depth[0]
        ys, xs = np.nonzero(depth > 0)
        uv = np.stack([xs, ys], 1).astype(np.float64)
        pts = unproject(uv, depth[ys, xs].astype(np.float64), np.array(cam.K)).numpy()
        label = wl.weak_pose(pts, obj, cam, depth > 0, depth=depth, rng=np.random.default_rng(k))
        R, t = label.pose.numpy()
        assert _rot_err_deg(R, R_gt) < 10.0 and np.linalg.norm(t - t_gt) < 0.01, (k, _rot_err_deg(R, R_gt), t - t_gt)
        assert label.fitness > 0.8 and label.violation < 0.05 and label.score > 0.7
        # with only the points and the mask (no depth image), the same pose
        only = wl.weak_pose(pts, obj, cam, depth > 0, rng=np.random.default_rng(k))
        assert _rot_err_deg(only.pose.numpy()[0], R_gt) < 10.0


def test_weak_labels_cache_resumes_and_skips(
    unlabeled: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, path = unlabeled
    ds, dets = BopDataset(root, "test"), read_detections(path)
    first = sorted(dets)[0]
    cfg = wl.WeakPoseConfig(directions=8, inplane=2, top_k=2)
    cache = tmp_path / "weak.npz"
    out = wl.weak_labels(ds, dets, None, [first], cache, config=cfg, save_every=1)
    n = len(dets[first])
    assert len(out.labels) == n - 1 and list(out.failed) == [(*first, n - 1)]
    assert "pixels of mask with valid depth" in out.failed[(*first, n - 1)]
    assert cache.is_file()
    # a second run reads the cache and labels only what is new (here: nothing)
    monkeypatch.setattr(wl, "weak_pose", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = wl.weak_labels(ds, dets, None, [first], cache, config=cfg)
    assert again.failed == out.failed and set(again.labels) == set(out.labels)
    for k, lab in out.labels.items():
        assert np.allclose(again.labels[k].pose.matrix().numpy(), lab.pose.matrix().numpy())
        assert again.labels[k].score == pytest.approx(lab.score)
    # one failing item never loses the others
    second = sorted(dets)[1]
    more = wl.weak_labels(ds, dets, None, [first, second], cache, config=cfg)
    assert set(out.labels) <= set(more.labels) and all(k[:2] == second for k in more.failed if k[:2] != first)
    assert {k for k in more.failed if k[:2] == second} == {(*second, j) for j in range(len(dets[second]))}
    with pytest.raises(ValueError, match="other settings"):
        wl.weak_labels(ds, dets, None, [first], cache, config=wl.WeakPoseConfig(directions=4))
