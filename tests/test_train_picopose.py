"""Training of ``picopose``'s patch features: correspondence targets, the loss falls on a fixed batch, the CLI trains
and resumes, and its weights load as features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.coarse.picopose.features import make_features
from meshpose.coarse.picopose.views import cut_templates, rotate_about_centre
from meshpose.coarse.templates import TemplateConfig
from meshpose.nets.checkpoint import load_checkpoint
from meshpose.nets.patchfeat import PatchFeatConfig, PatchFeatNet, load_patchfeat
from meshpose.render.gl import get_default_renderer
from meshpose.synth.novel import novel_object
from meshpose.train.picopose import picopose_losses, train_picopose
from meshpose.train.picopose_config import PicoPoseTrainConfig
from meshpose.train.picopose_data import (
    PairStream,
    collate_pairs,
    inplane_angle,
    patch_xyz,
    positive_pairs,
    template_pose,
)
from support.fine_tune import check_fine_tune_from_weights

runner = CliRunner()

TINY = PatchFeatConfig(widths=(8, 16, 16, 16), dim=16)
#: a run that draws few small scenes
SMALL: dict = {
    "batch_size": 4,
    "image_size": [320, 240],
    "object_pool": 4,
    "pool_scenes": 2,
    "views_per_scene": 2,
    "val_items": 4,
    "val_objects": "novel:4500-4503",
    "log_every": 1,
    "net": TINY.to_dict(),
}


def _view(roll_deg: float = 0.0, size: int = 128):
    """Held-out object 7001 rendered as a template, optionally with the camera rolled about its optical axis."""
    obj, _ = novel_object(7001, obj_id=1)
    tcfg = TemplateConfig(size=192)
    used = np.asarray(obj.render_mesh.vertices)[np.unique(np.asarray(obj.render_mesh.faces))]
    center = 0.5 * (used.min(0) + used.max(0))
    radius = float(np.linalg.norm(used - center, axis=1).max())
    pose = template_pose(np.array([0.3, -0.5, 0.8]), center, tcfg.distance(radius))
    R, t = pose.numpy()
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    from meshpose.types import Pose

    pose = Pose(Rz @ R, Rz @ t)
    out = get_default_renderer().render([obj], pose.reshape(1, 1), tcfg.camera())
    rgb = np.rint(np.clip(out.rgb, 0, 1) * 255).astype(np.uint8)
    mask = np.asarray(out.mask, bool)
    xyz = np.where(mask[..., None], out.xyz, 0).astype(np.float32)
    return obj, pose, cut_templates(1, rgb, mask, xyz, tcfg.camera(), pose, size, 1.2)


def test_correspondences_of_a_rendering_and_its_in_plane_rotation() -> None:
    """Turned by 90° about the crop centre, template patch (r, c) is query patch (15 - c, r): the nearest template
    patch by object point of nearly every query patch on the object is that one, and always a positive."""
    obj, _, v = _view()
    q_xyz = rotate_about_centre(v.xyz[0], 90.0, nearest=True)
    q_mask = rotate_about_centre(v.mask[0], 90.0, nearest=True)
    q_pts, q_ok = patch_xyz(torch.from_numpy(q_xyz[None]), torch.from_numpy(q_mask[None]), 8, 0.5)
    t_pts, t_ok = patch_xyz(torch.from_numpy(v.xyz), torch.from_numpy(v.mask), 8, 0.5)
    pos, nearest = positive_pairs(q_pts, q_ok, t_pts, t_ok, torch.tensor([obj.diameter]), 0.1)
    assert int(q_ok.sum()) > 40
    assert bool((nearest[0][q_ok[0]] >= 0).all())
    rows, cols = np.divmod(np.arange(256), 16)
    expected = torch.from_numpy((15 - cols) * 16 + rows)  # template patch p → query patch expected[p]
    t_of_q = torch.empty(256, dtype=torch.long)
    t_of_q[expected] = torch.arange(256)
    ok = q_ok[0]
    assert float((nearest[0][ok] == t_of_q[ok]).float().mean()) > 0.9
    assert bool(pos[0][ok, t_of_q[ok]].all())
    assert not bool(pos[0][~ok].any())


def test_inplane_angle_turns_a_rolled_view_onto_the_unrolled_one() -> None:
    obj, pose_t, v = _view()
    _, pose_q, vq = _view(roll_deg=40.0)
    angle = inplane_angle(obj.points[:200], pose_q, vq.cameras[0], pose_t, v.cameras[0])
    assert abs(abs(angle) - 40.0) < 2.0
    turned = rotate_about_centre(vq.mask[0], angle, nearest=True)
    iou = (turned & v.mask[0]).sum() / (turned | v.mask[0]).sum()
    assert iou > 0.9, iou


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    cfg = PicoPoseTrainConfig.from_dict({**SMALL, "data": "novel:8"})
    it = iter(PairStream(cfg))
    items = [next(it) for _ in range(4)]
    for x in items:
        assert x["q_rgb"].shape == (128, 128, 3) and x["t_xyz"].shape == (128, 128, 3)
        assert x["view_deg"] <= cfg.view_jitter_deg + 1e-6
    return collate_pairs(items, cfg)


def test_loss_falls_on_a_fixed_batch(batch: dict[str, torch.Tensor]) -> None:
    assert int(batch["pos"].any(2).sum()) > 100  # query patches with a corresponding template patch
    cfg = PicoPoseTrainConfig.from_dict({**SMALL, "data": "novel:8"})
    torch.manual_seed(0)
    net = PatchFeatNet(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, stats = picopose_losses(net, batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert losses[-1] < 0.75 * losses[0], losses


def test_cli_trains_resumes_and_its_weights_are_features(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "picopose", "--data", "novel:8", "--out", str(run), "--steps", "4", "--batch-size", "4"]
    cfg = json.dumps({k: v for k, v in SMALL.items() if k != "batch_size"} | {"val_every": 2, "ckpt_every": 2})
    res = runner.invoke(app, [*args, "--max-steps", "2", "--config", cfg])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert load_checkpoint(run / "last.pt", "picopose").training["step"] == 2  # type: ignore[index]
    # --resume takes the run's saved options: the training objects need not be given again.
    res = runner.invoke(app, ["train", "picopose", "--out", str(run), "--steps", "4", "--resume"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ck = load_checkpoint(run / "last.pt", "picopose")
    assert ck.training is not None and ck.training["step"] == 4
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if r.get("event") in ("start", "resume")] == ["start", "resume"]
    assert any(r.get("event") == "val" and "patch_acc" in r for r in log)
    # Without objects, --resume of a folder with no run is refused rather than starting one on default objects.
    res = runner.invoke(app, ["train", "picopose", "--out", str(tmp_path / "empty"), "--resume"])
    assert res.exit_code == 2 and "no last.pt to resume" in res.output
    feats = make_features("trained", str(run / "model.pt"))
    out = feats(np.zeros((2, 64, 64, 3), np.uint8))
    assert out.shape == (2, 16, 8, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 8, 8), atol=1e-5)


def test_known_object_fine_tuning_from_weights_on_pre_rendered_queries(tiny_bop: Path, tmp_path: Path) -> None:
    """A run on known objects can start from trained features (``init_weights``; the sizes come from them) and
    take its queries from a pre-rendered split (``cached``, photoreal renderings in practice), validating on it."""
    check_fine_tune_from_weights(train_picopose, PicoPoseTrainConfig, load_patchfeat, SMALL, tiny_bop, tmp_path)
    assert load_patchfeat(tmp_path / "tune" / "last.pt").config == TINY
