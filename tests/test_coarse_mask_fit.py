"""Fitting a coarse pose's silhouette to its detection mask (:mod:`meshpose.coarse.mask_fit`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from meshpose.coarse import make_estimator
from meshpose.coarse.gt_detections import mask_bbox
from meshpose.coarse.mask_fit import MaskFitConfig, fit_many_to_mask, fit_to_mask, occluder_masks, silhouette_area
from meshpose.render.gl import get_default_renderer
from meshpose.types import Camera, Detection, Pose
from support.scenes import (
    add_error,
    make_camera,
    overlapping_pair_case,
    perturb,
    render_observation,
    single_object_cases,
)


def _depth_and_shift(pose: Pose, k: float, shift_m: float) -> Pose:
    R, t = pose.numpy()
    return Pose(R, k * t + np.array([shift_m, 0.0, 0.0]))


@pytest.mark.parametrize(("case", "faces"), [(0, 3000), (1, 3000), (2, 3000), (0, 400), (2, 0)])
def test_a_wrong_distance_shift_and_rotation_come_back_to_the_mask(case: int, faces: int) -> None:
    """The silhouette alone tells the distance: a pose 8 % too far, shifted 1 cm and turned 4° ends much nearer the
    truth, and its IoU rises — also with the silhouettes drawn from a mesh decimated far below its faces (cases 0
    and 2 have 4166 and 6656), and from the mesh as it is."""
    cam = make_camera()
    obj, gt, _, seed = single_object_cases(3, seed=3, camera=cam)[case]
    obs = render_observation([obj], gt.reshape(1), cam, seed=seed)
    sil = get_default_renderer().render([obj], gt.reshape(1, 1), cam).mask[0]
    box = mask_bbox(sil)
    assert box is not None
    det = Detection(obj.obj_id, box, sil)
    start = perturb(_depth_and_shift(gt, 1.08, 0.01), 4.0, 0.0, obj.diameter, seed)
    res = fit_to_mask(obs, obj, det, start, config=MaskFitConfig(render_faces=faces))
    e0, e1 = add_error(obj, start, gt), add_error(obj, res.pose, gt)
    assert res.iou > res.iou_start + 0.05
    assert e1 < 0.5 * e0, (e0, e1)
    assert 1 < res.renders <= MaskFitConfig().max_iterations


def test_other_detections_count_as_possible_occluders() -> None:
    """The far object of an overlapping pair is partly hidden; its modal mask is smaller than its silhouette. Started
    at the truth, the fit with the near object's mask as occluder stays there (IoU' = 1 at the truth); started off,
    it comes nearer the truth than a fit that takes the modal mask as the whole object."""
    cam = make_camera()
    (far, near), gt, _, seed = overlapping_pair_case(1, camera=cam)
    obs = render_observation([far, near], gt, cam, seed=seed)
    inst = get_default_renderer().render([far, near], gt.reshape(1, 2), cam).instance[0]
    masks = [inst == 1, inst == 2]
    assert masks[0].sum() > 100 and masks[1].sum() > 100
    alone = get_default_renderer().render([far], gt[0].reshape(1, 1), cam).mask[0]
    assert masks[0].sum() < 0.95 * alone.sum(), "the far object must be partly hidden"
    dets = [Detection(o.obj_id, mask_bbox(m), m) for o, m in zip((far, near), masks, strict=True)]  # type: ignore[arg-type]
    occ = occluder_masks(dets)
    assert occ[0] is not None and np.array_equal(occ[0], masks[1]) and np.array_equal(occ[1], masks[0])

    at_truth = fit_to_mask(obs, far, dets[0], gt[0], occluders=occ[0])
    assert at_truth.iou_start > 0.98
    assert add_error(far, at_truth.pose, gt[0]) < 0.02 * far.diameter

    start = _depth_and_shift(gt[0], 1.07, 0.0)
    aware = fit_to_mask(obs, far, dets[0], start, occluders=occ[0])
    blind = fit_to_mask(obs, far, dets[0], start)
    e_aware, e_blind = add_error(far, aware.pose, gt[0]), add_error(far, blind.pose, gt[0])
    assert e_aware < 0.5 * add_error(far, start, gt[0])
    assert e_aware < e_blind, (e_aware, e_blind)


def test_coverage_is_the_share_of_the_mask_the_silhouette_holds() -> None:
    """A partly hidden object whose occluder no detection outlines: at the truth its silhouette holds its whole
    modal mask (coverage ≈ 1) though the IoU' is well under 1; a diameter aside, it holds little of it."""
    cam = make_camera()
    (far, near), gt, _, seed = overlapping_pair_case(1, camera=cam)
    obs = render_observation([far, near], gt, cam, seed=seed)
    inst = get_default_renderer().render([far, near], gt.reshape(1, 2), cam).instance[0]
    det = Detection(far.obj_id, mask_bbox(inst == 1), inst == 1)  # type: ignore[arg-type]
    look = MaskFitConfig(max_iterations=1)  # the start pose's values only
    (here, aside) = fit_many_to_mask(obs, far, det, [gt[0], _depth_and_shift(gt[0], 1.0, far.diameter)], config=look)
    assert here.renders == aside.renders == 1 and here.iou == here.iou_start
    assert here.coverage > 0.98 and here.iou < 0.95
    assert aside.coverage < 0.3


@pytest.mark.parametrize("case", [0, 1, 2])
def test_the_silhouette_area_is_that_of_a_full_image_render(case: int) -> None:
    """The whole silhouette's area from a small crop of the projected box agrees with the pixels of a render of the
    whole image to a few percent, also where the object reaches out of the image (it is not clipped)."""
    cam = make_camera()
    obj, gt, _, _ = single_object_cases(3, camera=cam)[case]
    full = int(get_default_renderer().render([obj], gt.reshape(1, 1), cam).mask.sum())
    assert abs(silhouette_area(cam, obj, gt) - full) < 0.04 * full
    R, t = gt.numpy()
    edge = Pose(R, t + np.array([t[2] * (cam.width - cam.cx) / cam.K[0, 0], 0.0, 0.0]))  # centre on the right edge
    wide = Camera.from_fxfycxcy(cam.K[0, 0], cam.K[1, 1], cam.cx, cam.cy, width=2 * cam.width, height=cam.height)
    whole = int(get_default_renderer().render([obj], edge.reshape(1, 1), wide).mask.sum())  # nothing cut off
    inside = int(get_default_renderer().render([obj], edge.reshape(1, 1), cam).mask.sum())
    assert inside < 0.8 * whole and abs(silhouette_area(cam, obj, edge) - whole) < 0.04 * whole


def test_bad_inputs_name_the_problem() -> None:
    cam = make_camera()
    obj, gt, _, seed = single_object_cases(1, camera=cam)[0]
    obs = render_observation([obj], gt.reshape(1), cam, seed=seed)
    box = np.array([10.0, 10.0, 40.0, 40.0])
    with pytest.raises(ValueError, match="needs a mask"):
        fit_to_mask(obs, obj, Detection(obj.obj_id, box), gt)
    mask = np.zeros((cam.height, cam.width), bool)
    mask[10:50, 10:50] = True
    det = Detection(obj.obj_id, box, mask)
    with pytest.raises(ValueError, match="occluders"):
        fit_to_mask(obs, obj, det, gt, occluders=np.zeros((5, 5), bool))
    R, t = gt.numpy()
    with pytest.raises(ValueError, match="behind the camera"):
        fit_to_mask(obs, obj, det, Pose(R, -t))
    with pytest.raises(ValueError, match="start pose 1 .* behind the camera"):
        fit_many_to_mask(obs, obj, det, [gt, Pose(R, -t)])
    assert fit_many_to_mask(obs, obj, det, []) == []
    with pytest.raises(ValueError, match="positive"):
        MaskFitConfig(shift_px=0.0)
    with pytest.raises(ValueError, match="render_faces"):
        MaskFitConfig(render_faces=2)
    assert occluder_masks([det]) == [None]


def test_picopose_options_of_the_fit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    est = make_estimator("picopose", cache_dir=str(tmp_path), mask_fit=2, mask_fit_config={"max_iterations": 5})
    assert est.config.mask_fit == 2 and est.config.mask_fit_config.max_iterations == 5
    assert dataclasses.replace(est.config, mask_fit=0).mask_fit == 0
    with pytest.raises(ValueError, match="mask_fit"):
        make_estimator("picopose", cache_dir=str(tmp_path), mask_fit=-1)


def test_a_measured_distance_is_kept() -> None:
    """``fit_distance=False`` (picopose with an observed depth): the shift and rotation are fitted, the distance
    stays."""
    cam = make_camera()
    obj, gt, _, seed = single_object_cases(1, seed=4, camera=cam)[0]
    obs = render_observation([obj], gt.reshape(1), cam, seed=seed)
    sil = get_default_renderer().render([obj], gt.reshape(1, 1), cam).mask[0]
    det = Detection(obj.obj_id, mask_bbox(sil), sil)  # type: ignore[arg-type]
    start = perturb(_depth_and_shift(gt, 1.05, 0.01), 4.0, 0.0, obj.diameter, seed)
    res = fit_to_mask(obs, obj, det, start, config=MaskFitConfig(fit_distance=False))
    assert res.iou > res.iou_start
    assert float(res.pose.numpy()[1][2]) == pytest.approx(float(start.numpy()[1][2]), abs=1e-12)


def test_several_start_poses_are_fitted_side_by_side_as_each_would_be_alone() -> None:
    """``fit_many_to_mask`` runs the searches in lock-step (one batched render per step for all of them); each ends
    where its own ``fit_to_mask`` ends, with the same IoU and number of renders, whatever the others do."""
    cam = make_camera()
    obj, gt, _, seed = single_object_cases(1, seed=5, camera=cam)[0]
    obs = render_observation([obj], gt.reshape(1), cam, seed=seed)
    sil = get_default_renderer().render([obj], gt.reshape(1, 1), cam).mask[0]
    det = Detection(obj.obj_id, mask_bbox(sil), sil)  # type: ignore[arg-type]
    starts = [
        gt,
        perturb(_depth_and_shift(gt, 1.08, 0.01), 4.0, 0.0, obj.diameter, seed),
        perturb(_depth_and_shift(gt, 0.95, -0.005), 8.0, 0.0, obj.diameter, seed + 1),
    ]
    together = fit_many_to_mask(obs, obj, det, starts)
    assert len(together) == 3
    for start, res in zip(starts, together, strict=True):
        alone = fit_to_mask(obs, obj, det, start)
        assert res.renders == alone.renders and res.iou == pytest.approx(alone.iou, abs=1e-9)
        assert res.iou_start == pytest.approx(alone.iou_start, abs=1e-9)
        assert add_error(obj, res.pose, alone.pose) < 1e-6 * obj.diameter
    assert together[0].renders < together[1].renders or together[0].renders < together[2].renders  # they stop apart
