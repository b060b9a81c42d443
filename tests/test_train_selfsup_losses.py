"""The self-supervised losses (colour LAB, mask IoU, geometry): smallest at the true pose of a rendered scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.support.scenes import make_camera, perturb, render_observation, single_object_cases

from meshpose.geometry.projection import depth_to_points
from meshpose.render.gl import get_default_renderer
from meshpose.train.selfsup_losses import (
    JointLossWeights,
    ab_channels,
    colour_loss,
    geometric_loss,
    joint_loss,
    mask_iou_loss,
)
from meshpose.types import Pose


def test_ab_channels_ignore_lightness() -> None:
    grey = torch.full((1, 2, 2, 3), 0.2)
    white = torch.full((1, 2, 2, 3), 0.9)
    assert torch.allclose(ab_channels(grey), ab_channels(white), atol=1e-2)  # greys have a = b ≈ 0
    red = torch.zeros(1, 2, 2, 3)
    red[..., 0] = 1.0
    assert ab_channels(red)[:, 0].mean() > 50  # a* of pure red is about 80


def test_colour_loss_tolerates_a_one_pixel_shift_but_not_a_wrong_layout() -> None:
    rng = np.random.default_rng(0)
    img = torch.tensor(rng.uniform(0, 1, (1, 24, 24, 3)), dtype=torch.float32)
    mask = torch.ones(1, 24, 24)
    shifted = torch.roll(img, 1, dims=2)
    inner = torch.zeros(1, 24, 24)
    inner[:, 2:-2, 2:-2] = 1
    near = colour_loss(shifted, img, inner, inner, window=3)
    far = colour_loss(torch.roll(img, 5, dims=2), img, inner, inner, window=3)
    assert float(colour_loss(img, img, mask, mask)) == pytest.approx(0.0, abs=1e-4)
    assert float(near) < 0.15 * float(far)  # only the rim of the window (no partner inside the mask) differs
    with pytest.raises(ValueError, match="odd"):
        colour_loss(img, img, mask, mask, window=2)


def test_mask_iou_loss_values() -> None:
    a = torch.zeros(2, 8, 8)
    b = torch.zeros(2, 8, 8)
    a[0, :4] = 1
    b[0, :4] = 1
    a[1, :4] = 1
    b[1, 2:6] = 1
    loss = mask_iou_loss(a, b)
    assert float(loss[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(loss[1]) == pytest.approx(1 - 16 / 48, abs=1e-6)


def test_geometric_loss_is_zero_on_the_model_and_its_gradient_points_back() -> None:
    rng = np.random.default_rng(1)
    pts = torch.tensor(rng.uniform(-0.05, 0.05, (1, 300, 3)), dtype=torch.float64)
    R = torch.eye(3, dtype=torch.float64)[None]
    t = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64)
    observed = pts[:, :120] @ R.transpose(1, 2) + t[:, None]
    assert float(geometric_loss(observed, pts, R, t)) == pytest.approx(0.0, abs=1e-12)
    t_off0 = t + torch.tensor([[0.01, -0.005, 0.008]], dtype=torch.float64)
    t_off = t_off0.clone().requires_grad_(True)
    loss = geometric_loss(observed, pts, R, t_off)
    (g,) = torch.autograd.grad(loss.sum(), t_off)
    assert float(torch.dot(-g[0], (t - t_off)[0].detach())) > 0  # descent moves t toward the truth
    valid = torch.zeros(1, 120, dtype=torch.bool)
    assert float(geometric_loss(observed, pts, R, t_off0, valid=valid)) == 0.0
    assert float(geometric_loss(observed, pts, R, t_off0, clip=1e-3)) <= 1e-3 + 1e-12


@pytest.mark.parametrize("case", [0, 1, 2])
def test_each_loss_is_smallest_at_the_true_pose_of_a_rendered_scene(case: int) -> None:
    """Render an RGB-D observation; render the object at the truth and at poses 4°–12° / 2–6 % off: every term,
    and the weighted total, is smallest at the truth."""
    cam = make_camera(160, 120)
    obj, gt, _, seed = single_object_cases(3, seed=5, camera=cam)[case]
    obs = render_observation([obj], gt.reshape(1), cam, seed=seed, with_depth=True, noise_std=2.0)
    renderer = get_default_renderer()
    truth = renderer.render([obj], gt.reshape(1), cam)
    obs_mask = torch.tensor(truth.mask[0][None])
    obs_rgb = torch.tensor(obs.rgb[None] / 255.0, dtype=torch.float32)
    depth = torch.tensor(obs.depth, dtype=torch.float64)
    pts = depth_to_points(depth, torch.tensor(cam.K))
    sel = obs_mask[0] & (depth > 0)
    observed_points = pts[sel][None].float()
    model_points = torch.tensor(obj.points[None], dtype=torch.float32)

    def terms(pose: Pose) -> tuple[float, float, float, float]:
        r = renderer.render([obj], pose.reshape(1), cam)
        p1 = pose.reshape(1)
        R, t = p1.R.float(), p1.t.float()
        out = joint_loss(
            torch.tensor(r.rgb, dtype=torch.float32),
            torch.tensor(r.mask[0][None], dtype=torch.float32),
            obs_rgb,
            obs_mask,
            JointLossWeights(),
            observed_points=observed_points,
            model_points=model_points,
            R=R,
            t=t,
        )
        return float(out.total), float(out.colour), float(out.iou), float(out.geometry)

    at_truth = terms(gt)
    for k, (deg, frac) in enumerate([(4.0, 0.02), (8.0, 0.04), (12.0, 0.06)]):
        off = terms(perturb(gt, deg, frac, obj.diameter, seed=100 + k))
        assert off[0] > at_truth[0]
        assert off[2] > at_truth[2]
        assert off[3] > at_truth[3]
    # colour: smallest at the truth against the farthest perturbation (near ones may tie within the 3x3 window)
    far = terms(perturb(gt, 12.0, 0.06, obj.diameter, seed=7))
    assert far[1] > at_truth[1]


def test_joint_loss_needs_the_pose_for_geometry() -> None:
    x = torch.zeros(1, 4, 4, 3)
    m = torch.ones(1, 4, 4)
    with pytest.raises(ValueError, match="model_points"):
        joint_loss(x, m, x, m, observed_points=torch.zeros(1, 3, 3))
    out = joint_loss(x, m, x, m, JointLossWeights(geometry=0.0), observed_points=torch.zeros(1, 3, 3))
    assert float(out.geometry) == 0.0 and float(out.total) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("case", [0, 1])
def test_the_joint_loss_gradient_through_the_differentiable_renderer_points_to_the_truth(case: int) -> None:
    """At a pose 6° / 3 % off, the gradient of every term w.r.t. a left pose increment (through ``render_soft``)
    is a descent direction toward the truth: ``−∇ · log(T_true T⁻¹) > 0``."""
    from meshpose.render.diff import DiffMesh, SoftRasterSettings, render_soft
    from meshpose.types import se3_exp

    cam = make_camera(160, 120)
    obj, gt, _, seed = single_object_cases(2, seed=9, camera=cam)[case]
    obs = render_observation([obj], gt.reshape(1), cam, seed=seed, with_depth=True, noise_std=1.0)
    truth = get_default_renderer().render([obj], gt.reshape(1), cam)
    obs_mask = torch.tensor(truth.mask[0][None])
    obs_rgb = torch.tensor(obs.rgb[None] / 255.0, dtype=torch.float64)
    depth = torch.tensor(obs.depth, dtype=torch.float64)
    pts = depth_to_points(depth, torch.tensor(cam.K))
    observed_points = pts[obs_mask[0] & (depth > 0)][None]
    mesh = DiffMesh.from_object(obj, max_faces=800)
    model_points = torch.tensor(obj.points[None], dtype=torch.float64)
    K = torch.tensor(cam.K, dtype=torch.float64)[None]
    start = perturb(gt, 6.0, 0.03, obj.diameter, seed=31 + case).reshape(1)
    R0, t0 = start.R.double(), start.t.double()

    def loss_at(xi: torch.Tensor, weights: JointLossWeights) -> torch.Tensor:
        dR, dt = se3_exp(xi)  # left increment: T = exp(ξ) T0
        R = dR @ R0[0]
        t = dR @ t0[0] + dt
        out = render_soft(
            [mesh], R[None, None], t[None, None], K, (cam.height, cam.width), SoftRasterSettings(sigma=1.0)
        )
        terms = joint_loss(
            out.color, out.silhouette, obs_rgb, obs_mask, weights,
            observed_points=observed_points, model_points=model_points, R=R[None], t=t[None],
        )  # fmt: skip
        return terms.total.sum()

    to_truth = (gt.reshape(1)[0] @ start[0].inverse()).log().double()  # ξ with exp(ξ) T0 = T_true
    for weights in (JointLossWeights(1.0, 0.0, 0.0), JointLossWeights(0.0, 1.0, 0.0), JointLossWeights(0.0, 0.0, 1.0)):
        xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(loss_at(xi, weights), xi)
        assert float(torch.dot(-g, to_truth)) > 0, weights  # (invariant to rescaling the 6 coordinates)
