"""``picopose``'s learned stage 2: the similarity parametrisation, the training targets (a pair's true map puts the
template's surface points onto the same points of the query), a network that overfits a few pairs, the CLI run,
and the estimator with ``stage2="learned"``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meshpose.cli import app
from meshpose.coarse.picopose import PicoPoseConfig, PicoPoseEstimator
from meshpose.nets.checkpoint import load_checkpoint
from meshpose.nets.simnet import SimilarityNet, SimilarityNetConfig, load_simnet, similarity_matrices
from meshpose.train.picopose_data import PairStream, similarity_between
from meshpose.train.picopose_similarity import (
    SimilarityTrainConfig,
    collate_similarity,
    similarity_losses,
    validate_similarity,
)

runner = CliRunner()

TINY = SimilarityNetConfig(widths=(16, 16, 8), hidden=32)
#: a run that draws few small scenes, with the cheap classical features
SMALL: dict = {
    "batch_size": 4,
    "image_size": [320, 240],
    "object_pool": 4,
    "pool_scenes": 2,
    "views_per_scene": 2,
    "val_items": 4,
    "val_objects": "novel:4500-4503",
    "log_every": 1,
    "features": "classical",
    "net": TINY.to_dict(),
}


@pytest.mark.parametrize(("log_s", "deg"), [(0.0, 0.0), (0.2, 15.0), (-0.1, -30.0)])
def test_similarity_matrices_turn_as_opencv_does(log_s: float, deg: float) -> None:
    A = similarity_matrices(torch.tensor([[log_s, np.radians(deg), 0.0, 0.0]], dtype=torch.float64), 128)[0]
    ref = cv2.getRotationMatrix2D((63.5, 63.5), deg, float(np.exp(log_s)))
    np.testing.assert_allclose(A.numpy(), ref, atol=1e-9)
    shifted = similarity_matrices(torch.tensor([[log_s, 0.3, 0.5, -0.25]]), 128)[0]
    unshifted = similarity_matrices(torch.tensor([[log_s, 0.3, 0.0, 0.0]]), 128)[0]
    np.testing.assert_allclose((shifted - unshifted)[:, 2].numpy(), [16.0, -8.0], atol=1e-5)  # quarters of 128 px


def test_similarity_between_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 128, (50, 2))
    A = cv2.getRotationMatrix2D((60.0, 70.0), 23.0, 1.15)
    A[:, 2] += [4.0, -3.0]
    b = a @ A[:, :2].T + A[:, 2]
    np.testing.assert_allclose(similarity_between(a, b), A, atol=1e-6)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_between(np.zeros((5, 2)), np.zeros((5, 2)))


def test_an_untrained_network_is_the_identity_and_checks_its_grid() -> None:
    net = SimilarityNet(TINY).eval()
    f = torch.nn.functional.normalize(torch.randn(3, 8, 16, 16), dim=1)
    fg = torch.rand(3, 16, 16) > 0.3
    assert torch.equal(net(f, fg, f, fg), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="16×16"):
        net(f[..., :8, :8], fg[..., :8, :8], f[..., :8, :8], fg[..., :8, :8])


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    cfg = SimilarityTrainConfig.from_dict({**SMALL, "data": "novel:8"})
    it = iter(PairStream(cfg))
    return [next(it) for _ in range(6)]


def test_a_pairs_true_map_puts_template_points_on_the_same_query_points(pairs: list[dict]) -> None:
    """The target of stage 2: template pixel → query pixel by ``sim``; the query's object point there is the
    template's (up to the template's view being up to 11° off the query's, a similarity being no projection)."""
    medians = []
    for p in pairs:
        vv, uu = np.nonzero(p["t_mask"][::2, ::2])
        vv, uu = 2 * vv, 2 * uu
        q = np.rint(np.stack([uu, vv, np.ones_like(uu)], 1) @ p["sim"].astype(np.float64).T).astype(int)
        inside = (q >= 0).all(1) & (q < 128).all(1)
        seen = np.zeros_like(inside)
        seen[inside] = p["q_valid"][q[inside, 1], q[inside, 0]]
        d = np.linalg.norm(p["q_xyz"][q[seen, 1], q[seen, 0]] - p["t_xyz"][vv[seen], uu[seen]], axis=1)
        medians.append(np.median(d) / p["diameter"])
    # a wrong map (e.g. the query's turn undone the wrong way) puts points a third of the diameter apart
    assert np.median(medians) < 0.06, medians


def test_network_overfits_a_few_pairs_and_validates_beside_ransac(pairs: list[dict]) -> None:
    cfg = SimilarityTrainConfig.from_dict({**SMALL, "data": "novel:8"})
    data = collate_similarity(pairs, cfg)
    torch.manual_seed(0)
    net = SimilarityNet(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, stats = similarity_losses(net, data, cfg)
        first = first if first is not None else stats["err_px"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(stats["err0_px"])  # it starts at the identity
    assert stats["err_px"] < 0.3 * first, (first, stats)
    val = validate_similarity(net.eval(), pairs, cfg)
    assert {"val_err_px", "ok4", "ransac_err_px", "ransac_ok4", "identity_err_px"} <= set(val)
    assert val["val_err_px"] < val["identity_err_px"]


def test_cli_trains_and_the_estimator_takes_its_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = json.dumps({k: v for k, v in SMALL.items() if k != "batch_size"} | {"val_every": 2, "ckpt_every": 2})
    args = ["train", "picopose-similarity", "--data", "novel:8", "--out", str(run), "--steps", "2"]
    res = runner.invoke(app, [*args, "--batch-size", "4", "--config", cfg])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ck = load_checkpoint(run / "last.pt", "picopose_similarity")
    assert ck.training is not None and ck.training["step"] == 2
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "val" and "ransac_err_px" in r for r in log)
    assert load_simnet(run / "model.pt").config == TINY

    # The estimator takes the run's weights as its stage 2; an unknown stage 2 is refused by name.
    est = PicoPoseEstimator(
        PicoPoseConfig(features="classical", stage2="learned", stage2_weights=str(run / "model.pt"))
    )
    assert est.simnet is not None and est.simnet.config == TINY
    with pytest.raises(ValueError, match="stage2"):
        PicoPoseConfig(stage2="magic")  # type: ignore[arg-type]
