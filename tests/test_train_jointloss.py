"""``meshpose train jointloss``: trained on a handful of unlabeled rendered RGB-D frames, the estimator's pose error
drops, although no pose label exists anywhere the trainer could read one (the fixture deletes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.support.unlabeled import make_unlabeled

from meshpose.eval.pose_errors import adds
from meshpose.io.bop import BopDataset
from meshpose.io.detections import read_detections
from meshpose.nets.checkpoint import Checkpoint, Provenance, save_checkpoint
from meshpose.nets.jointloss import JointLossNet, JointLossNetConfig, best_pose, load_jointloss_net, surface_samples
from meshpose.train.jointloss import JointLossTrainConfig, ObjectTensors, joint_input, train_jointloss
from meshpose.train.jointloss_data import JointLossDataset, collate

Truth = dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Truth]:
    """Four RGB-D frames of two generated objects, their detections (from the modal masks), the true poses kept
    aside *for the test's measurement only*, and then the dataset's pose files deleted."""
    u = make_unlabeled(
        tmp_path_factory.mktemp("jlt"), objects="novel:2", images=4, split="train_pbr", seed=11,
        objects_per_scene=(2, 2), distractors=(0, 0),
    )  # fmt: skip
    truth: Truth = {(s, i, j): pose.numpy() for (s, i), items in u.truth.items() for j, (_, pose) in enumerate(items)}
    return u.root, u.dets, truth


def _config(root: Path, dets: Path, **kw: object) -> JointLossTrainConfig:
    base: dict[str, object] = dict(
        data=str(root),
        split="train_pbr",
        detections=str(dets),
        steps=200,
        weak_steps=140,
        batch_size=4,
        lr=2e-3,
        warmup=5,
        crop=48,
        points=120,
        model_points=120,
        votes=8,
        render_faces=300,
        val_every=0,
        log_every=10,
        ckpt_every=10,
        augment=False,
        min_weak_score=0.0,
        net=JointLossNetConfig(
            cnn_width=8,
            colour_dim=16,
            geo_dims=(32, 64),
            global_dims=(64, 128),
            head_dims=(64, 32),
            refiner_kind="regress",
            refiner_scale=1.0,
        ),
    )
    base.update(kw)
    return JointLossTrainConfig(**base)  # type: ignore[arg-type]


def _mean_error_d(net: JointLossNet, root: Path, dets: Path, truth: Truth, cfg: JointLossTrainConfig) -> float:
    """The estimator's mean ADD-S over the detections, in diameters (the truth comes from the test's copy)."""
    bop = BopDataset(root, "train_pbr")
    objects = bop.objects()
    tensors = ObjectTensors.of(objects, 200, 300)
    ds = JointLossDataset(bop, read_detections(dets), crop=cfg.crop, points=cfg.points, seed=3)
    data = collate([ds[i] for i in range(len(ds))])
    data["obj_index"] = tensors.index(data["obj_id"])
    with torch.no_grad():
        R, t = best_pose(net.estimator(joint_input(data)))
    errs = []
    for i, key in enumerate(ds.keys):
        obj = objects[int(data["obj_id"][i])]
        gR, gt = truth[key]
        e = adds(R[i].double().numpy(), t[i].double().numpy(), gR, gt, obj.points)
        errs.append(e / obj.diameter)
    return float(np.mean(errs))


def test_training_without_labels_lowers_the_pose_error(unlabeled: tuple[Path, Path, Truth], tmp_path: Path) -> None:
    root, dets, truth = unlabeled
    assert not (root / "train_pbr" / "000000" / "scene_gt.json").exists()
    cfg = _config(root, dets)
    run = tmp_path / "run"
    torch.manual_seed(0)
    train_jointloss(cfg, run, max_steps=142)  # stage 1 and two steps of stage 2
    assert (run / "last.pt").is_file() and (run / "weak_labels.npz").is_file()
    res = train_jointloss(cfg, run, resume=True)  # continues to the end
    assert res.step == cfg.steps
    log = [line for line in (run / "train_log.jsonl").read_text().splitlines() if '"stage": 2.0' in line]
    assert log, "stage 2 (the joint loss through the differentiable renderer) never ran"
    trained = load_jointloss_net(run / "model.pt")
    assert trained.config.obj_ids == tuple(sorted(BopDataset(root, "train_pbr").objects()))
    torch.manual_seed(0)
    fresh = JointLossNet(trained.config).eval()
    before = _mean_error_d(fresh, root, dets, truth, cfg)
    after = _mean_error_d(trained, root, dets, truth, cfg)
    assert after < 0.5 * before, (before, after)


def test_a_run_needs_frames_and_detections(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="detections"):
        train_jointloss(JointLossTrainConfig(data=str(tmp_path)), tmp_path / "run")
    with pytest.raises(ValueError, match="val_detections"):
        JointLossTrainConfig(val_data=str(tmp_path))


def test_dense_refiner_run_and_a_run_started_from_its_weights(
    unlabeled: tuple[Path, Path, Truth], tmp_path: Path
) -> None:
    root, dets, _ = unlabeled
    dense = JointLossNetConfig(
        cnn_width=8, colour_dim=16, geo_dims=(32, 64), global_dims=(64, 128), head_dims=(64, 32),
        refiner_kind="dense", refiner_scale=10.0, refiner_surface_points=300,
    )  # fmt: skip
    first = tmp_path / "first"
    train_jointloss(_config(root, dets, steps=4, weak_steps=4, net=dense), first)
    net = load_jointloss_net(first / "model.pt")
    objects = BopDataset(root, "train_pbr").objects()
    # the dense refiner's surfaces are the training objects', in head order, and ship with the weights
    want = torch.stack([surface_samples(objects[o].mesh, 300, 0) for o in net.config.obj_ids])
    assert net.config.refiner_kind == "dense" and torch.equal(net.refiner.surface, want)
    # a new run starts from those weights (sizes and kind taken from them)
    second = tmp_path / "second"
    train_jointloss(_config(root, dets, steps=2, weak_steps=2, lr=1e-12, init_weights=str(first / "model.pt")), second)
    again = load_jointloss_net(second / "model.pt")
    assert again.config == net.config
    start, now = net.state_dict(), again.state_dict()
    assert start.keys() == now.keys() and all(torch.allclose(now[k], start[k], atol=1e-6) for k in start)
    # weights of other objects are refused
    other = JointLossNet(JointLossNetConfig(**{**net.config.to_dict(), "obj_ids": (901, 902)}))
    save_checkpoint(
        tmp_path / "other.pt", Checkpoint(other.state_dict(), other.config.to_dict(), Provenance.now("jointloss"))
    )
    with pytest.raises(ValueError, match="know objects"):
        train_jointloss(_config(root, dets, steps=2, init_weights=str(tmp_path / "other.pt")), tmp_path / "third")
