"""The ``abstract`` refiner: fusion, LightDR gradients (incl. occlusion boundaries), the joint AdaGrad loop.

The descriptor network is replaced by fixed extractors here (its training has its own tests): a smooth
analytic descriptor field for the gradient checks, and colour (CIE L*a*b*, zero on black) on renders over a black
background for the loop — the contract the network is trained to meet (background → 0).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation
from tests.support import scenes
from tests.support.real_data import LMO
from tests.support.scenes import add_error, make_camera, objects, overlapping_pair_case, single_object_cases

from meshpose.geometry.lie import rotation_angle
from meshpose.mesh import make_object_model
from meshpose.nets.checkpoint import package_weights_path
from meshpose.refine.abstract import AbstractConfig, AbstractRefiner
from meshpose.refine.abstract.field import fuse_samples
from meshpose.refine.abstract.fusion import field_cache_key, fuse_object, load_field, view_rotations
from meshpose.refine.abstract.lightdr import blur, crop_loss, pixel_owners, render_descriptors
from meshpose.refine.base import RefinerError
from meshpose.refine.registry import available_methods, make_refiner
from meshpose.render.base import Lighting
from meshpose.render.gl import get_default_renderer
from meshpose.types import FailureCode, Observation, Pose, se3_exp

D = 8


def _smooth_desc(p: np.ndarray) -> np.ndarray:
    w = np.random.default_rng(0).normal(size=(3, D)) * 40.0
    return np.sin(p @ w).astype(np.float32)


def _field(mesh: trimesh.Trimesh, scale: float = 1.0):  # type: ignore[no-untyped-def]
    pts, _ = trimesh.sample.sample_surface(mesh, 30000, seed=1)
    return fuse_samples(pts, scale * _smooth_desc(pts), mesh.vertices, voxels=4000)


class LabExtractor:
    """Colour as a 3-D descriptor (L*a*b* / 60), zero on pure black (a render's background)."""

    dim = 3
    digest = "lab-float-test"

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab = np.stack([cv2.cvtColor(im.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab) / 60.0 for im in rgb])
        pass
        return lab, (rgb.sum(-1) > 0).astype(np.float32)


class ConstantExtractor:
    dim = 4
    digest = "constant-test"

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.broadcast_to(np.array([0.5, -1.0, 2.0, 0.25], np.float32), (*rgb.shape[:3], 4))
        return out.copy(), np.ones(rgb.shape[:3], np.float32)


def _black_observation(objs, poses: Pose, cam) -> Observation:  # type: ignore[no-untyped-def]
    r = get_default_renderer().render(list(objs), poses.reshape(-1), cam, lighting=Lighting())
    return Observation(rgb=np.rint(r.rgb[0] * 255).astype(np.uint8), camera=cam)


# --- fusion -----------------------------------------------------------------------------------------------
def test_fusing_a_constant_gives_it_everywhere() -> None:
    mesh = trimesh.creation.box((0.1, 0.06, 0.04))
    pts, _ = trimesh.sample.sample_surface(mesh, 5000, seed=0)
    c = np.array([0.3, -2.0, 1.5], np.float32)
    fld = fuse_samples(pts, np.tile(c, (len(pts), 1)), mesh.vertices, voxels=500)
    assert np.allclose(fld.vertex_desc, c, atol=1e-5)
    assert np.allclose(fld.grid, c[:, None, None, None], atol=1e-5)
    assert np.allclose(fld.sample(pts[:100] + 0.003), c, atol=1e-5)
    # about the asked number of voxels
    assert 250 <= len(fld.voxel_points) <= 1000


def test_fusion_through_rendered_views_of_a_constant_extractor(tmp_path: Path) -> None:
    obj = objects()[1]
    cfg = AbstractConfig(fusion_views=12, cache_dir=str(tmp_path))
    fld = fuse_object(obj, ConstantExtractor(), get_default_renderer(), cfg)
    assert np.allclose(fld.vertex_desc, [0.5, -1.0, 2.0, 0.25], atol=1e-5)
    assert fld.vertex_desc.shape == (len(obj.render_mesh.vertices), 4)


def test_field_reproduces_a_smooth_descriptor() -> None:
    obj = objects()[0]
    fld = _field(obj.render_mesh)
    pts, _ = trimesh.sample.sample_surface(obj.render_mesh, 2000, seed=5)
    err = np.linalg.norm(fld.sample(pts) - _smooth_desc(pts), axis=1)
    assert np.median(err) < 0.25 * np.sqrt(D)  # a voxel-scale blur of a field with ~2 cm wavelength


def test_views_cover_the_sphere() -> None:
    R = view_rotations(50)
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    dirs = -R[:, 2]
    probe = np.random.default_rng(0).normal(size=(2000, 3))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    gap = np.degrees(np.arccos(np.clip((probe @ dirs.T).max(1), -1, 1))).max()
    assert gap < 25.0


def test_field_cache_hit_key_and_corruption(tmp_path: Path) -> None:
    obj = objects()[1]
    ren = get_default_renderer()
    cfg = AbstractConfig(fusion_views=6, cache_dir=str(tmp_path))
    ext = ConstantExtractor()
    a = load_field(obj, ext, ren, cfg)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = load_field(obj, ext, ren, cfg)
    assert np.array_equal(a.grid, b.grid) and a.edge == b.edge
    moved = make_object_model(obj.render_mesh.copy().apply_translation([0.001, 0, 0]), obj.obj_id)
    assert field_cache_key(moved, ext, ren, cfg) != field_cache_key(obj, ext, ren, cfg)
    files[0].write_bytes(b"not a cache file")
    c = load_field(obj, ext, ren, cfg)  # rebuilt, with a warning
    assert np.allclose(c.vertex_desc, a.vertex_desc)


# --- LightDR ----------------------------------------------------------------------------------------------
def _plate_scene():  # type: ignore[no-untyped-def]
    """A textured object in front of a large plate: its whole outline is an occlusion boundary."""
    front = objects()[0]
    plate_mesh = trimesh.creation.box((0.25, 0.25, 0.02))
    plate = make_object_model(plate_mesh, 9, name="plate")
    objs = [front, plate]
    fields = [_field(front.render_mesh), _field(plate_mesh, 0.5)]
    centers = np.stack([0.5 * (o.points.min(0) + o.points.max(0)) for o in objs])
    R = np.stack([Rotation.from_rotvec([0.3, 0.2, 0.1]).as_matrix(), np.eye(3)])
    t = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.6]])
    return objs, fields, centers, R, t


def _apply(R: np.ndarray, t: np.ndarray, centers: np.ndarray, j: int, delta: np.ndarray):  # type: ignore[no-untyped-def]
    R, t = R.copy(), t.copy()
    c = R[j] @ centers[j] + t[j]
    Rd, td = (x.numpy() for x in se3_exp(torch.as_tensor(delta)))
    R[j], t[j] = Rd @ R[j], Rd @ (t[j] - c) + td + c
    return R, t


@pytest.mark.parametrize("front_only", [True, False])
def test_lightdr_gradient_matches_finite_differences(front_only: bool) -> None:
    objs, fields, centers, R, t = _plate_scene()
    cam = make_camera(128, 128, f=200.0)
    ren = get_default_renderer()
    sig = 1.5

    def render(R: np.ndarray, t: np.ndarray):  # type: ignore[no-untyped-def]
        out = ren.render(objs, Pose(torch.as_tensor(R[None]), torch.as_tensor(t[None])), [cam])
        return out.xyz[0].copy(), out.instance[0].copy(), out.depth[0].copy()

    Ro, to = R.copy(), t.copy()
    to[0, 0] += 0.006
    if not front_only:
        Ro, to = _apply(Ro, to, centers, 1, np.array([0.004, -0.003, 0.0, 0.0, 0.0, 0.08]))
    xo, io, _ = render(Ro, to)
    obs = blur(render_descriptors(xo, io, fields, D), sig)
    valid = np.ones((128, 128), bool)

    def loss(R: np.ndarray, t: np.ndarray) -> float:
        return crop_loss(*render(R, t), fields, R, t, centers, cam.K, obs, valid, sigma=sig).loss

    fd = np.zeros(12)
    for j in (0, 1):
        for a in range(6):
            e = np.zeros(6)
            e[a] = 0.002 if a < 3 else 0.01
            fd[6 * j + a] = (loss(*_apply(R, t, centers, j, e)) - loss(*_apply(R, t, centers, j, -e))) / (2 * e[a])
    errs = {}
    for aware in (True, False):
        g = crop_loss(*render(R, t), fields, R, t, centers, cam.K, obs, valid, sigma=sig, occlusion_aware=aware).grads
        an = np.concatenate([g.get(0, np.zeros(6)), g.get(1, np.zeros(6))])
        errs[aware] = np.linalg.norm(an - fd)
        if aware:
            assert an @ fd / (np.linalg.norm(an) * np.linalg.norm(fd)) > 0.98
    # the z-buffer's owner of an occlusion boundary (the front object) is what makes the gradient right
    assert errs[True] < 0.5 * errs[False]


def test_pixel_owners_give_occlusion_boundaries_to_the_front_object() -> None:
    inst = np.zeros((5, 6), np.int32)
    inst[:, :3] = 2  # back object on the left
    inst[:, 3:5] = 1  # front object in the middle
    depth = np.where(inst == 2, 1.0, np.where(inst == 1, 0.5, 0.0))
    owner, _, sc = pixel_owners(inst, depth)
    assert (owner[:, 2] == 1).all() and (sc[:, 2] == 3).all()  # back pixels at the boundary follow the front one
    assert (owner[:, 3] == 1).all() and (sc[:, 3] == 3).all()
    assert (owner[:, 5] == 1).all() and (sc[:, 5] == 4).all()  # background next to the front object
    assert (owner[:, 0] == 2).all()
    naive, _, _ = pixel_owners(inst, depth, occlusion_aware=False)
    assert (naive[:, 2] == 2).all()


# --- the refiner ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def refiner(tmp_path_factory: pytest.TempPathFactory) -> AbstractRefiner:
    cfg = AbstractConfig(cache_dir=str(tmp_path_factory.mktemp("abstract_cache")))
    return AbstractRefiner(cfg, extractor=LabExtractor())


def test_preset_is_registered() -> None:
    assert "abstract" in available_methods()
    r = make_refiner("abstract", iterations=(3, 3))
    assert r.name == "abstract" and r.modality == "rgb"


def test_single_objects_improve(refiner: AbstractRefiner) -> None:
    cam = make_camera()
    before, after = [], []
    for obj, gt, init, _ in single_object_cases(6, rot_deg=15, trans_frac=0.1):
        res = refiner.refine(_black_observation([obj], gt, cam), [obj], init.reshape(-1))
        assert res.info.failure[0] is None and 0.0 < res.score[0] <= 1.0
        before.append(add_error(obj, init, gt) / obj.diameter)
        after.append(add_error(obj, res.pose[0], gt) / obj.diameter)
    assert np.mean(after) < 0.6 * np.mean(before)
    assert np.mean(np.array(after) < 0.1) >= 0.8


def test_two_overlapping_objects_both_improve(refiner: AbstractRefiner) -> None:
    objs, gt, init, _ = overlapping_pair_case(0, rot_deg=10, trans_frac=0.08)
    cam = make_camera()
    res = refiner.refine(_black_observation(objs, gt, cam), list(objs), init)
    for i, obj in enumerate(objs):
        e0 = add_error(obj, init[i], gt[i])
        e1 = add_error(obj, res.pose[i], gt[i])
        assert e1 < 0.7 * e0, (i, e0, e1)


def test_failures_and_bad_inputs(refiner: AbstractRefiner) -> None:
    obj, gt, init, _ = single_object_cases(1)[0]
    cam = make_camera()
    obs = _black_observation([obj], gt, cam)
    R, t = init.reshape(-1).numpy()
    off = Pose(torch.as_tensor(R), torch.as_tensor(t + np.array([[5.0, 0.0, 0.0]])))  # far outside the image
    res = refiner.refine(obs, [obj], off)
    assert res.info.failure[0] is not None and res.info.failure[0].code == FailureCode.OUTSIDE_IMAGE
    assert res.score[0] == 0.0
    with pytest.raises(RefinerError):
        refiner.refine(obs, [obj], Pose(torch.as_tensor(R), torch.as_tensor(np.full((1, 3), np.nan))))


def test_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    r = AbstractRefiner(AbstractConfig(weights=str(tmp_path / "nope.pt")))
    with pytest.raises(RefinerError, match="nope.pt"):
        _ = r.extractor
    with pytest.raises(RefinerError, match="package:nope"):
        _ = AbstractRefiner(AbstractConfig(weights="package:nope")).extractor


def test_weights_specs_name_the_shipped_network() -> None:
    """``"package"`` is the shipped network, as for the other learned presets (not a file called ``package``)."""
    shipped = AbstractRefiner(AbstractConfig()).extractor
    named = AbstractRefiner(AbstractConfig(weights="package")).extractor
    assert named.digest == shipped.digest


def test_foreground_gate() -> None:
    from meshpose.refine.abstract.run import gate_descriptors

    desc = np.ones((1, 2, 2, 3), np.float32)
    fg = np.array([[[0.0, 0.25], [0.5, 1.0]]], np.float32)
    assert np.allclose(gate_descriptors(desc, fg)[..., 0], fg)  # the plain product
    assert np.allclose(gate_descriptors(desc, fg, 0.5)[..., 0], [[[0.0, 0.5], [1.0, 1.0]]])
    with pytest.raises(ValueError, match="fg_gate_full"):
        AbstractConfig(fg_gate_full=0.0)


def test_step_size_per_level(tmp_path: Path) -> None:
    """``lr`` may give each crop level its own first AdaGrad step: the first step of a level turns the object by
    exactly that level's ``lr`` (radians; block-wise AdaGrad normalises the first gradient), unless clamped."""
    assert AbstractConfig(lr=0.03).level_lr(1) == 0.03
    assert AbstractConfig(lr=(0.08, 0.02)).level_lr(0) == 0.08
    with pytest.raises(ValueError, match="one per level"):
        AbstractConfig(lr=(0.08, 0.02, 0.01))
    with pytest.raises(ValueError, match="lr must be > 0"):
        AbstractConfig(lr=(0.08, 0.0))
    obj, gt, init, _ = single_object_cases(1, rot_deg=15, trans_frac=0.1)[0]
    obs = _black_observation([obj], gt, make_camera())
    for iterations, expected in (((1, 0), 0.01), ((0, 1), 0.03)):
        cfg = AbstractConfig(lr=(0.01, 0.03), iterations=iterations, cache_dir=str(tmp_path))
        res = AbstractRefiner(cfg, extractor=LabExtractor()).refine(obs, [obj], init.reshape(-1))
        angle = float(rotation_angle(res.history[0].R[0], res.history[1].R[0]))
        assert angle == pytest.approx(expected, rel=1e-3), iterations


@pytest.mark.skipif(
    not package_weights_path("abstract", "lmo").is_file() or not (LMO / "models").is_dir(),
    reason="no abstract package:lmo weights, or no LM-O meshes at MESHPOSE_LMO / ../shared/data/lmo",
)
def test_known_object_weights_refine_rendered_scenes_of_their_objects(tmp_path: Path) -> None:
    """``package:lmo`` (descriptors of LM-O's objects) loads and, from 15° / 10 % d, refines rendered LM-O objects:
    most end closer, the median error halves."""
    assert package_weights_path("abstract", "lmo").stat().st_size < 50e6
    ref = make_refiner("abstract", weights="package:lmo", cache_dir=str(tmp_path))
    before, after = [], []
    for obj, gt, init, obs in scenes.rendered_cases(str(LMO), 6, seed=3):
        res = ref.refine(obs, [obj], init.reshape(1))
        before.append(add_error(obj, init, gt) / obj.diameter)
        after.append(add_error(obj, res.pose[0], gt) / obj.diameter)
    before_a, after_a = np.array(before), np.array(after)
    assert np.mean(after_a < before_a) >= 5 / 6, (before, after)
    assert np.median(after_a) < 0.5 * np.median(before_a), (before, after)
