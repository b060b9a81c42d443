"""LightDR's fast path against a plain reference: the batched, vectorised :func:`crop_losses` (one sparse trilinear
gather for every crop's descriptors, owners by shifted slices, the pixel motions pulled back without forming
Jacobians) must give the numbers of the straightforward per-object, per-crop computation written out below
(``grid_sample`` per object, owners by clipped neighbour indices, ``motion_jacobian`` per pixel), up to float32
rounding, on rendered scenes of several objects with occlusions and crops that leave the image.

The torch ``grid_sample`` here is the independent reference of the fields' trilinear interpolation: ``src`` has a
single one (:class:`FieldSet`'s sparse gather, which :meth:`DescriptorField.sample` uses too).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_f
import trimesh
from scipy.spatial.transform import Rotation
from tests.support.scenes import make_camera, objects

from meshpose.mesh import make_object_model
from meshpose.refine.abstract.field import DescriptorField, FieldSet, fuse_samples
from meshpose.refine.abstract.lightdr import (
    CropTarget,
    _central_difference,
    _image_gradient,
    _pull_back,
    blur,
    crop_loss,
    crop_losses,
    pixel_owners,
    render_descriptors,
)
from meshpose.refine.contour.terms import motion_jacobian
from meshpose.render.gl import get_default_renderer
from meshpose.types import Pose

D = 8


def _field(mesh: trimesh.Trimesh, seed: int) -> DescriptorField:
    pts, _ = trimesh.sample.sample_surface(mesh, 20000, seed=seed)
    w = np.random.default_rng(seed).normal(size=(3, D)) * 40.0
    return fuse_samples(pts, np.sin(pts @ w).astype(np.float32), mesh.vertices, voxels=3000)


# --- the reference: the per-object computation, written out plainly ---------------------------------------------
def _ref_sample(f: DescriptorField, xyz: np.ndarray) -> np.ndarray:
    """``(M, D)`` descriptors at ``(M, 3)`` object-frame points (metres): torch's trilinear ``grid_sample`` of the
    node grid (``align_corners=True``: -1 at node 0, +1 at the last node; padding ``"border"``)."""
    pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros((0, f.dim), np.float32)
    _, nz, ny, nx = f.grid.shape
    size = np.array([nx, ny, nz], dtype=np.float32)
    g = 2.0 * (pts - f.origin.astype(np.float32)) / (np.float32(f.edge) * np.maximum(size - 1, 1)) - 1.0
    grid = torch.from_numpy(np.ascontiguousarray(f.grid, dtype=np.float32))[None]  # (1, D, nz, ny, nx)
    coords = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32)).view(1, 1, 1, -1, 3)
    out = torch_f.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(f.dim, -1).T.contiguous().numpy()


def _ref_render(xyz: np.ndarray, inst: np.ndarray, fields, dim: int) -> np.ndarray:
    """``(H, W, D)`` descriptor image: :func:`_ref_sample` on each object's pixels, 0 elsewhere."""
    out = np.zeros((*inst.shape, dim), np.float32)
    for k in np.unique(inst):
        if k > 0 and fields[k - 1] is not None:
            out[inst == k] = _ref_sample(fields[k - 1], xyz[inst == k])
    return out


def _ref_owners(instance: np.ndarray, depth: np.ndarray, aware: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = instance.shape
    lab = instance.astype(np.int64)
    z = np.where(lab > 0, depth.astype(np.float64), np.inf)
    rows, cols = np.indices((h, w))
    owner, best, src_r, src_c = lab.copy(), z.copy(), rows.copy(), cols.copy()
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ry, cx = np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)
        nl, nz = lab[ry, cx], z[ry, cx]
        cand = (nl > 0) & (nl != lab) & (nz < best)
        if not aware:
            cand &= lab == 0
        owner, best = np.where(cand, nl, owner), np.where(cand, nz, best)
        src_r, src_c = np.where(cand, ry, src_r), np.where(cand, cx, src_c)
    return owner.astype(np.int32), src_r, src_c


def _ref_gradient(img: np.ndarray) -> np.ndarray:
    g = np.zeros((*img.shape, 2), np.float32)
    g[:, 1:-1, :, 0] = 0.5 * (img[:, 2:] - img[:, :-2])
    g[:, 0, :, 0], g[:, -1, :, 0] = img[:, 1] - img[:, 0], img[:, -1] - img[:, -2]
    g[1:-1, :, :, 1] = 0.5 * (img[2:] - img[:-2])
    g[0, :, :, 1], g[-1, :, :, 1] = img[1] - img[0], img[-1] - img[-2]
    return g


def _ref_rho(d: np.ndarray, huber: float) -> np.ndarray:
    if np.isfinite(huber):
        return np.where(d <= huber, 0.5 * d**2, huber * (d - 0.5 * huber))
    return 0.5 * d**2


def _ref_crop_loss(xyz, inst, depth, fields, R, t, centers, K, obs, valid, sigma, rs, huber, gain, aware=True):
    """``(loss, grads, rendered, distance)`` of one crop, the plain way (the module doc of ``lightdr``)."""
    n = max(float(valid.sum()), 1.0)
    vobs = np.linalg.norm(obs, axis=-1) * valid
    rows, cols = np.flatnonzero((inst > 0).any(1)), np.flatnonzero((inst > 0).any(0))
    if len(rows) == 0:
        return float(_ref_rho(vobs, huber).sum() / n), {}, np.zeros_like(obs), vobs
    h, w = inst.shape
    m = math.ceil(3.0 * max(rs, sigma)) + 3
    win = np.s_[max(rows[0] - m, 0) : min(rows[-1] + m + 1, h), max(cols[0] - m, 0) : min(cols[-1] + m + 1, w)]
    outside = _ref_rho(vobs, huber)
    outside_sum = float(outside.sum() - outside[win].sum())
    xyz, inst, depth, obs, valid = xyz[win], inst[win], depth[win], obs[win], valid[win]
    F = _ref_render(xyz, inst, fields, obs.shape[-1])
    Fb = blur(F, rs)
    g = 1.0
    if gain is not None:
        on = (np.abs(Fb).sum(-1) > 0) & valid
        ff = float(np.einsum("nd,nd->", Fb[on], Fb[on]))
        if ff > 1e-12:
            g = float(np.clip(np.einsum("nd,nd->", Fb[on], obs[on]) / ff, gain[0], gain[1]))
    Fb = g * Fb
    r = (Fb - obs) * valid[..., None].astype(np.float32)
    dist = np.linalg.norm(r, axis=-1)
    psi = np.where(dist <= huber, 1.0, huber / np.maximum(dist, 1e-12)).astype(np.float32)
    loss = float(_ref_rho(dist, huber).sum()) + outside_sum
    a = np.einsum("hwd,hwdk->hwk", g * blur(r * psi[..., None], rs), _ref_gradient(F))
    owner, src_r, src_c = _ref_owners(inst, depth, aware)
    active = (owner > 0) & (np.abs(a).sum(-1) > 0)
    grads = {}
    for k in np.unique(owner[active]):
        j = int(k) - 1
        rr, cc = np.nonzero(active & (owner == k))
        P = xyz[src_r[rr, cc], src_c[rr, cc]].astype(np.float64) @ R[j].T + t[j]
        J = motion_jacobian(P, K, R[j] @ centers[j] + t[j])
        grads[j] = -np.einsum("mk,mkj->j", a[rr, cc].astype(np.float64), J) / n
    rendered = np.zeros((h, w, obs.shape[-1]), np.float32)
    rendered[win] = Fb
    distance = vobs.astype(np.float32)
    distance[win] = dist
    return loss / n, grads, rendered, distance


# --- a rendered scene: three objects overlapping, crops around each ----------------------------------------------
@pytest.fixture(scope="module")
def scene():
    objs = [*objects(), make_object_model(trimesh.creation.box((0.25, 0.25, 0.02)), 9, name="plate")]
    fields = [_field(o.render_mesh, k) for k, o in enumerate(objs)]
    centers = np.stack([0.5 * (o.points.min(0) + o.points.max(0)) for o in objs])
    R = np.stack(
        [Rotation.from_rotvec(v).as_matrix() for v in ([0.3, 0.2, 0.1], [-0.5, 0.4, 0.2], [1.0, 0, 0.3], [0, 0, 0])]
    )
    t = np.array([[0.0, 0.0, 0.5], [0.05, 0.03, 0.55], [-0.04, 0.04, 0.52], [0.0, 0.0, 0.6]])
    cams = [make_camera(96, 96, f=f) for f in (160.0, 220.0)]
    # the second crop looks off-centre: part of it is outside the "image" (valid False there)
    cams[1] = cams[1].__class__(cams[1].K + np.array([[0, 0, 25.0], [0, 0, -10.0], [0, 0, 0]]), 96, 96)
    poses = Pose(torch.as_tensor(np.stack([R, R])), torch.as_tensor(np.stack([t, t])))
    out = get_default_renderer().render(objs, poses, cams)
    # observation: the same objects moved a little, its descriptors blurred
    Ro, to = R.copy(), t + np.array([[0.004, -0.002, 0.003], [-0.003, 0.002, 0.0], [0.0, 0.003, -0.004], [0, 0, 0]])
    obs_out = get_default_renderer().render(
        objs, Pose(torch.as_tensor(np.stack([Ro, Ro])), torch.as_tensor(np.stack([to, to]))), cams
    )
    valid = [np.ones((96, 96), bool), np.ones((96, 96), bool)]
    valid[1][:, :12] = False
    valid[1][80:] = False
    return objs, fields, centers, R, t, cams, out, obs_out, valid


@pytest.mark.parametrize("gain", [(0.5, 2.0), None])
@pytest.mark.parametrize("huber", [0.25, float("inf")])
def test_batched_crops_match_the_plain_per_object_computation(scene, gain, huber) -> None:
    _, fields, centers, R, t, cams, out, obs_out, valid = scene
    sig, rsig = 1.5, [1.5, 1.9]
    targets = []
    for b in range(2):
        observed = blur(render_descriptors(obs_out.xyz[b], obs_out.instance[b], fields, D) * valid[b][..., None], sig)
        targets.append(CropTarget(observed, valid[b], sig, rsig[b], huber))
    fast = crop_losses(
        list(out.xyz), list(out.instance), list(out.depth), targets, [c.K for c in cams], FieldSet(fields), R, t,
        centers, gain=gain,
    )  # fmt: skip
    for b in range(2):
        ref = _ref_crop_loss(
            out.xyz[b], out.instance[b], out.depth[b], fields, R, t, centers, cams[b].K, targets[b].observed,
            valid[b], sig, rsig[b], huber, gain,
        )  # fmt: skip
        assert fast[b].loss == pytest.approx(ref[0], rel=1e-5)
        assert set(fast[b].grads) == set(ref[1]) and len(ref[1]) >= 3  # occluded and occluding objects show
        for j, gj in ref[1].items():
            np.testing.assert_allclose(fast[b].grads[j], gj, rtol=1e-4, atol=1e-6 * np.abs(gj).max())
        np.testing.assert_allclose(fast[b].rendered, ref[2], atol=1e-5)
        np.testing.assert_allclose(fast[b].distance, ref[3], atol=1e-5)
        # the single-crop entry point is the same computation
        one = crop_loss(
            out.xyz[b], out.instance[b], out.depth[b], fields, R, t, centers, cams[b].K, targets[b].observed,
            valid[b], sigma=sig, render_sigma=rsig[b], huber=huber, gain=gain,
        )  # fmt: skip
        assert one.loss == fast[b].loss and all(np.array_equal(one.grads[j], fast[b].grads[j]) for j in one.grads)


def test_losses_only_equal_the_full_evaluation(scene) -> None:
    """``want=set()`` (the evaluations that take no step) skips the gradients and nothing else."""
    _, fields, centers, R, t, cams, out, obs_out, valid = scene
    targets = [
        CropTarget(blur(render_descriptors(obs_out.xyz[b], obs_out.instance[b], fields, D), 1.5), valid[b], 1.5)
        for b in range(2)
    ]
    args = (list(out.xyz), list(out.instance), list(out.depth), targets, [c.K for c in cams], FieldSet(fields))
    full = crop_losses(*args, R, t, centers)
    bare = crop_losses(*args, R, t, centers, want=set())
    for a, b in zip(full, bare, strict=True):
        assert b.grads == {} and a.grads and a.loss == b.loss
        np.testing.assert_array_equal(a.rendered, b.rendered)
        np.testing.assert_array_equal(a.distance, b.distance)


def test_empty_crop_and_objects_without_fields(scene) -> None:
    _, fields, centers, R, t, cams, out, _, valid = scene
    observed = np.full((96, 96, D), 0.3, np.float32)
    tg = CropTarget(observed, valid[1], 1.0, huber=0.25)
    empty = np.zeros((96, 96), np.int32)
    (res,) = crop_losses([out.xyz[0]], [empty], [out.depth[0]], [tg], [cams[0].K], FieldSet(fields), R, t, centers)
    ref = _ref_crop_loss(
        out.xyz[0],
        empty,
        out.depth[0],
        fields,
        R,
        t,
        centers,
        cams[0].K,
        observed,
        valid[1],
        1.0,
        1.0,
        0.25,
        (0.5, 2.0),
    )
    assert res.grads == {} and res.loss == pytest.approx(ref[0], rel=1e-6)
    np.testing.assert_array_equal(res.distance, ref[3])
    # an object without a field is drawn as the background (0) but its pixels still move with it
    some = [fields[0], None, fields[2], None]
    (res,) = crop_losses(
        [out.xyz[0]], [out.instance[0]], [out.depth[0]], [tg], [cams[0].K], FieldSet(some, D), R, t, centers
    )
    ref = _ref_crop_loss(
        out.xyz[0],
        out.instance[0],
        out.depth[0],
        some,
        R,
        t,
        centers,
        cams[0].K,
        observed,
        valid[1],
        1.0,
        1.0,
        0.25,
        (0.5, 2.0),
    )
    assert res.loss == pytest.approx(ref[0], rel=1e-5) and set(res.grads) == set(ref[1])


def _inside_and_out(f: DescriptorField, rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3)`` points inside ``f``'s node grid, on its border and outside it (up to 20 % of its span)."""
    span = f.edge * np.maximum(np.array(f.grid.shape[:0:-1]) - 1, 1)
    return f.origin + rng.uniform(-0.2, 1.2, (n, 3)) * span


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal to float32 rounding: 1e-5 relative (and 1e-6 of the values' scale near 0)."""
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(float(np.abs(want).max(initial=0.0)), 1.0))


def test_field_set_samples_like_grid_sample(scene) -> None:
    fields = scene[1]
    rng = np.random.default_rng(0)
    pts = [_inside_and_out(f, rng, 500) for f in fields]
    idx = [np.full(500, k) for k in range(len(fields))]
    p, which = np.concatenate(pts), np.concatenate(idx)
    perm = rng.permutation(len(which))
    want = np.concatenate([_ref_sample(f, q) for f, q in zip(fields, pts, strict=True)])
    # several objects in one call, points of different objects interleaved
    _assert_close(FieldSet(fields).sample(p[perm], which[perm]), want[perm])
    # one object at a time (DescriptorField.sample: a one-object FieldSet)
    for f, q in zip(fields, pts, strict=True):
        _assert_close(f.sample(q), _ref_sample(f, q))
    nofield = FieldSet([fields[0], None]).sample(p[:10], np.array([1] * 5 + [0] * 5))
    assert np.all(nofield[:5] == 0)
    _assert_close(nofield[5:], _ref_sample(fields[0], p[5:10]))
    assert FieldSet([None], dim=3).sample(p[:4], np.zeros(4, int)).shape == (4, 3)
    with pytest.raises(ValueError):
        FieldSet([None])


def test_field_sampling_equals_grid_sample_on_synthetic_grids() -> None:
    """Random node grids of several shapes (axes of 1 and 2 nodes included), origins and edges, sampled together
    and one by one, inside the grids and outside them (border clamping), against ``grid_sample``."""
    rng = np.random.default_rng(3)
    dim = 5
    shapes = [(4, 6, 5), (1, 3, 7), (2, 1, 1), (1, 1, 1), (9, 2, 3)]  # (nz, ny, nx)
    fields = []
    for shape in shapes:
        grid = rng.normal(size=(dim, *shape)).astype(np.float32)
        origin = rng.normal(size=3) * 0.1
        no = np.zeros((0, dim), np.float32)
        fields.append(
            DescriptorField(np.zeros((0, 3), np.float32), no, no, origin, float(rng.uniform(0.002, 0.02)), grid)
        )
    pts = [_inside_and_out(f, rng, 400) for f in fields]
    pts[0][:6] = fields[0].origin  # exactly on nodes and on the far corner, too
    pts[0][6:12] = fields[0].origin + fields[0].edge * (np.array(shapes[0][::-1]) - 1)
    want = [_ref_sample(f, q) for f, q in zip(fields, pts, strict=True)]
    for f, q, w in zip(fields, pts, want, strict=True):
        _assert_close(f.sample(q), w)
        _assert_close(f.sample(q), f.sample(q))  # the cached set gives the same numbers again
    assert fields[0].sample(np.zeros((0, 3))).shape == (0, dim)
    # every object at once (one without a field among them), interleaved, written to chosen output rows
    objs = [*fields[:2], None, *fields[2:]]
    p = np.concatenate(pts)
    which = np.concatenate([np.full(len(q), k + (k >= 2)) for k, q in enumerate(pts)])
    p = np.concatenate([p, p[:50]])
    which = np.concatenate([which, np.full(50, 2)])  # points of the object without a field: 0
    ref = np.concatenate([*want, np.zeros((50, dim), np.float32)])
    perm = rng.permutation(len(which))
    fset = FieldSet(objs)
    _assert_close(fset.sample(p[perm], which[perm]), ref[perm])
    rows = np.sort(rng.choice(3 * len(which), len(which), replace=False))
    full = np.zeros((3 * len(which) + 7, dim), np.float32)
    full[rows] = ref[perm]
    _assert_close(fset.sample(p[perm], which[perm], rows, len(full)), full)
    # the descriptor image of a rendering, object by object
    inst = rng.integers(0, len(objs) + 1, (12, 17)).astype(np.int32)
    xyz = np.zeros((12, 17, 3), np.float32)
    for k, f in enumerate(objs):
        on = inst == k + 1
        src = fields[0] if f is None else f
        xyz[on] = _inside_and_out(src, rng, int(on.sum()))
    _assert_close(render_descriptors(xyz, inst, objs, dim), _ref_render(xyz, inst, objs, dim))


@pytest.mark.parametrize("aware", [True, False])
def test_pixel_owners_equal_the_plain_rule(aware: bool) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        inst = rng.integers(0, 4, (13, 17)).astype(np.int32)
        inst[rng.random((13, 17)) < 0.4] = 0
        depth = np.where(inst > 0, rng.choice([0.5, 0.6, 0.7], (13, 17)), 0.0).astype(np.float32)  # ties included
        got, want = pixel_owners(inst, depth, aware), _ref_owners(inst, depth, aware)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_central_differences_and_pull_back_equal_the_plain_forms() -> None:
    rng = np.random.default_rng(2)
    for shape in [(9, 11, 5), (2, 2, 1), (3, 7, 16)]:
        img = rng.normal(size=shape).astype(np.float32)
        g = _ref_gradient(img)
        np.testing.assert_array_equal(_central_difference(img, 1), g[..., 0])
        np.testing.assert_array_equal(_central_difference(img, 0), g[..., 1])
    K = np.array([[300.0, 1.5, 40.0], [0.0, 310.0, 30.0], [0.0, 0.0, 1.0]])
    R = Rotation.from_rotvec(rng.normal(size=(3, 3)) * 0.5).as_matrix()
    t = np.array([[0.01, 0.02, 0.5], [-0.03, 0.0, 0.6], [0.0, 0.01, 0.7]])
    centers = rng.normal(size=(3, 3)) * 0.01
    X = (rng.normal(size=(200, 3)) * 0.03).astype(np.float32)
    obj = rng.integers(0, 2, 200)  # object 2 has no pixel
    au, av = rng.normal(size=200).astype(np.float32), rng.normal(size=200).astype(np.float32)
    got = _pull_back(au, av, X, obj, R, t, centers, K)
    order = np.argsort(obj, kind="stable")  # the pixels in one run per object (the order crop_losses gives)
    np.testing.assert_allclose(
        _pull_back(au[order], av[order], X[order], obj[order], R, t, centers, K), got, rtol=1e-12, atol=1e-15
    )
    for j in range(3):
        s = obj == j
        P = X[s].astype(np.float64) @ R[j].T + t[j]
        J = motion_jacobian(P, K, R[j] @ centers[j] + t[j])
        want = np.einsum("mk,mkj->j", np.stack([au[s], av[s]], 1).astype(np.float64), J)
        np.testing.assert_allclose(got[j], want, rtol=1e-10, atol=1e-12)


def test_image_gradient_at_some_pixels_equals_the_full_images() -> None:
    """:func:`_image_gradient` (central differences at the owner pixels only) gives the very numbers of the
    whole-image central differences read at those pixels, edges and one-pixel-wide images included."""
    rng = np.random.default_rng(3)
    for shape in [(9, 11, 16), (1, 5, 3), (5, 1, 3), (2, 2, 1), (40, 37, 16)]:
        F = rng.normal(size=shape).astype(np.float32)
        adj = rng.normal(size=shape).astype(np.float32)
        pix = np.flatnonzero(rng.random(shape[:2]) < 0.6)
        au, av = _image_gradient(F, adj, pix)
        for axis, got in ((1, au), (0, av)):
            want = np.einsum("hwd,hwd->hw", adj, _central_difference(F, axis)).reshape(-1)[pix]
            np.testing.assert_array_equal(got, want)
