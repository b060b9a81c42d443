"""The soft differentiable rasteriser: agreement with the GL renderer, pose gradients, occlusion, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from meshpose.render import Lighting, get_default_renderer
from meshpose.render.diff import DiffMesh, SoftRasterSettings, render_soft
from meshpose.types import Camera, Pose, se3_exp
from support.render_fixtures import face_colored_box, make_object, vertex_colored_sphere

ALBEDO = Lighting(ambient=1.0, diffuse=0.0)


def crop_camera(size: int = 64) -> Camera:
    """A square crop of a 640×480 camera around the image point (330, 250)."""
    full = Camera.from_fxfycxcy(600.0, 590.0, 322.0, 236.0, width=640, height=480)
    return full.crop((280.0, 200.0, 380.0, 300.0), size, size)


def ray_through(cam: Camera, u: float, v: float, depth: float) -> np.ndarray:
    return np.linalg.solve(cam.K, [u, v, 1.0]) * depth


def rot(rotvec: tuple[float, float, float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    import roma

    return roma.rotvec_to_rotmat(torch.tensor(rotvec, dtype=dtype))


def simple_box(extents: tuple[float, float, float], color: tuple[float, float, float]) -> DiffMesh:
    box = trimesh.creation.box(extents)
    v = torch.tensor(box.vertices, dtype=torch.float32)
    return DiffMesh(v, torch.tensor(box.faces), torch.tensor(color).expand(len(v), 3).clone())


def test_agrees_with_gl_renderer() -> None:
    cam = crop_camera(64)
    sphere = make_object(vertex_colored_sphere(radius=0.03, subdivisions=3), 1)
    box = make_object(face_colored_box((0.05, 0.04, 0.03)), 2)
    R0 = rot((0.3, -0.5, 0.2)).numpy()
    t0 = ray_through(cam, 31.5, 31.5, 0.4)
    for obj in (sphere, box):
        gl = get_default_renderer().render([obj], Pose(R0[None], t0[None]), cam, lighting=ALBEDO)
        mesh = DiffMesh.from_object(obj)
        out = render_soft(
            [mesh],
            torch.tensor(R0)[None, None],
            torch.tensor(t0)[None, None],
            torch.tensor(cam.K)[None],
            (cam.height, cam.width),
            SoftRasterSettings(sigma=0.05),
        )
        sil = out.silhouette[0].detach().numpy() > 0.5
        mask = gl.mask[0]
        iou = (sil & mask).sum() / (sil | mask).sum()
        assert iou > 0.95, (obj.obj_id, iou)
        # depth and colour away from the contour (the GL mask eroded by 2 px)
        inner = mask.copy()
        for axis in (0, 1):
            for shift in (-2, -1, 1, 2):
                inner &= np.roll(mask, shift, axis=axis)
        depth = out.depth[0].detach().numpy()
        assert np.abs(depth - gl.depth[0])[inner].max() < 2e-3
        color_err = np.abs(out.color[0].detach().numpy() - gl.rgb[0]).max(-1)[inner]
        assert np.median(color_err) < 0.03, (obj.obj_id, np.median(color_err))
        if obj is box:  # flat face colours: the same almost everywhere, except along the box edges
            assert np.quantile(color_err, 0.8) < 0.05


def xi_loss(mesh: DiffMesh, K: torch.Tensor, R0: torch.Tensor, t0: torch.Tensor, target: torch.Tensor):
    def loss(xi: torch.Tensor) -> torch.Tensor:
        dR, dt = se3_exp(xi)
        R = dR @ R0
        t = (dR @ t0[..., None])[..., 0] + dt
        out = render_soft([mesh], R[None, None], t[None, None], K, (32, 32), SoftRasterSettings(sigma=1.0))
        return (
            ((out.silhouette - target[0]) ** 2).sum()
            + (out.silhouette * (out.depth - 0.4) ** 2).sum() * 1e2
            + ((out.color - target[1:].permute(1, 2, 0)[None]) ** 2).sum()
        )

    return loss


def test_pose_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    sphere = vertex_colored_sphere(radius=0.03, subdivisions=2)
    mesh = DiffMesh.from_object(make_object(sphere))
    mesh = DiffMesh(mesh.vertices.double(), mesh.faces, mesh.colors.double())
    cam = crop_camera(32)
    K = torch.tensor(cam.K)[None]
    R0, t0 = rot((0.2, 0.4, -0.1)), torch.tensor(ray_through(cam, 16.0, 15.0, 0.4))
    with torch.no_grad():  # the target: the rendering at another pose
        R1, t1 = rot((0.25, 0.35, -0.05)), t0 + torch.tensor([0.003, -0.002, 0.005], dtype=torch.float64)
        ref = render_soft([mesh], R1[None, None], t1[None, None], K, (32, 32))
        target = torch.cat([ref.silhouette, ref.color[0].permute(2, 0, 1)])
    loss = xi_loss(mesh, K, R0, t0, target)
    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(xi), xi)
    h = 1e-7
    fd = torch.stack([(loss(h * e) - loss(-h * e)) / (2 * h) for e in torch.eye(6, dtype=torch.float64)])
    rel = (grad - fd).norm() / fd.norm()
    assert fd.norm() > 0 and rel < 1e-5, (grad, fd, rel)


def test_gradient_descent_on_silhouette_lowers_pose_error() -> None:
    cam = crop_camera(48)
    K = torch.tensor(cam.K, dtype=torch.float32)[None]
    mesh = DiffMesh.from_object(make_object(face_colored_box((0.05, 0.035, 0.025))))
    R_gt, t_gt = rot((0.4, -0.3, 0.5), torch.float32), torch.tensor(ray_through(cam, 24, 24, 0.4), dtype=torch.float32)
    settings = SoftRasterSettings(sigma=1.0)
    with torch.no_grad():
        target = render_soft([mesh], R_gt[None, None], t_gt[None, None], K, (48, 48), settings).silhouette
    dR0, dt0 = se3_exp(torch.tensor([0.004, -0.003, 0.006, 0.08, -0.06, 0.1]))
    R0, t0 = dR0 @ R_gt, (dR0 @ t_gt[:, None])[:, 0] + dt0

    def errors(R: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(R.T @ R_gt)) - 1) / 2))))
        return angle, float((t - t_gt).norm())

    xi = torch.zeros(6, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.01)
    for _ in range(50):
        dR, dt = se3_exp(xi)
        R, t = dR @ R0, (dR @ t0[:, None])[:, 0] + dt
        sil = render_soft([mesh], R[None, None], t[None, None], K, (48, 48), settings).silhouette
        loss = 1 - (sil * target).sum() / (sil + target - sil * target).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    angle0, dist0 = errors(R0, t0)
    angle1, dist1 = errors(R.detach(), t.detach())
    assert angle0 > 7 and angle1 < 0.5 * angle0, (angle0, angle1)
    assert dist1 < 0.5 * dist0, (dist0, dist1)


def test_front_object_hides_the_back_one() -> None:
    cam = crop_camera(32)
    K = torch.tensor(cam.K)[None]
    front, back = simple_box((0.03, 0.03, 0.02), (1.0, 0.0, 0.0)), simple_box((0.02, 0.02, 0.02), (0.0, 0.0, 1.0))
    centre = torch.tensor(ray_through(cam, 15.5, 15.5, 1.0))
    R = torch.eye(3, dtype=torch.float64).expand(1, 2, 3, 3)

    def render(back_depth: float, back_shift: float = 0.0):
        t = torch.stack([centre * 0.35, centre * back_depth + torch.tensor([back_shift, 0.0, 0.0])])[None]
        return render_soft([front, back], R, t, K, (32, 32), SoftRasterSettings(sigma=0.5))

    a, b = render(0.45), render(0.5, 0.002)
    inner = (slice(12, 20), slice(12, 20))  # inside the front box's projection, and the back box's
    red, blue = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # the foreground colour (over black); the silhouette itself dips slightly (< 1 %) along the front box's face
    # diagonal, the SoftRas artefact at edges inside a surface
    assert torch.all(a.silhouette[0][inner] > 0.99)
    assert torch.allclose(a.color[0][inner] / a.silhouette[0][inner][..., None], red, atol=1e-6)
    assert torch.all(a.instance[0][inner][..., 1] < 1e-6)
    fg_a, fg_b = (x.color[0][inner] / x.silhouette[0][inner][..., None] for x in (a, b))
    assert torch.allclose(fg_a, fg_b, atol=1e-9)  # moving the hidden box changes nothing there
    assert torch.allclose(a.silhouette[0][inner], b.silhouette[0][inner], atol=1e-2)
    assert torch.allclose(a.depth[0][inner], b.depth[0][inner], atol=1e-9)
    assert torch.allclose(a.instance.sum(-1), a.silhouette, atol=1e-9)
    # in front instead: now the blue box shows
    c = render(0.3)
    assert torch.allclose(c.color[0][14:18, 14:18] / c.silhouette[0][14:18, 14:18][..., None], blue, atol=1e-6)


def test_bad_input_raises() -> None:
    v = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="faces"):
        DiffMesh(v, torch.tensor([[0, 1, 4]]), torch.zeros(4, 3))
    mesh = simple_box((0.05, 0.05, 0.05), (0.5, 0.5, 0.5))
    K = torch.tensor([[[50.0, 0.0, 15.5], [0.0, 50.0, 15.5], [0.0, 0.0, 1.0]]])
    R, t = torch.eye(3)[None, None], torch.tensor([[[0.0, 0.0, 0.4]]])
    with pytest.raises(ValueError, match=r"\bt\b.*NaN"):
        render_soft([mesh], R, torch.full_like(t, math.nan), K, (32, 32))
    with pytest.raises(ValueError, match=r"\bR\b"):
        render_soft([mesh], R[0], t, K, (32, 32))
    with pytest.raises(ValueError, match="behind the camera"):
        render_soft([mesh], R, -t, K, (32, 32))
    # one object behind the camera, one in front: the one behind renders empty, no error
    two = render_soft([mesh, mesh], R.expand(1, 2, 3, 3), torch.cat([t, -t], 1), K, (32, 32))
    assert float(two.instance[..., 1].max()) == 0.0 and float(two.silhouette.max()) > 0.99


def test_batch_and_colour_gradients() -> None:
    mesh = simple_box((0.05, 0.05, 0.05), (0.5, 0.5, 0.5))
    colors = mesh.colors.clone().requires_grad_(True)
    mesh = DiffMesh(mesh.vertices, mesh.faces, colors)
    K = torch.tensor([[50.0, 0.0, 15.5], [0.0, 50.0, 15.5], [0.0, 0.0, 1.0]]).expand(3, 3, 3)
    R = torch.stack(
        [rot((0.0, 0.0, 0.0), torch.float32), rot((0.3, 0.2, 0.0), torch.float32), rot((0, 1.0, 0), torch.float32)]
    )
    t = torch.tensor([[0.0, 0.0, 0.4], [0.01, 0.0, 0.5], [0.0, -0.01, 0.3]])
    out = render_soft([mesh], R[:, None], t[:, None], K, (32, 32), background=torch.tensor([0.0, 1.0, 0.0]))
    single = render_soft([mesh], R[1:2, None], t[1:2, None], K[1:2], (32, 32), background=torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(out.color[1], single.color[0], atol=1e-6)
    assert torch.allclose(out.color[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))  # the corner shows the background
    out.color.sum().backward()
    assert colors.grad is not None and float(colors.grad.abs().sum()) > 0
