"""VSD (visible surface discrepancy) and bop_toolkit's sphere-overlap shortcut, as pure numpy functions.

Depths in metres (``0`` = missing), intrinsics ``K`` in pixels, pixel ``(u, v)`` with integer coordinates at
the pixel centre, as in bop_toolkit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from meshpose.eval.pose_errors import _translations
from meshpose.eval.scores import BOP_VSD_DELTA, BOP_VSD_TAUS

__all__ = ["depth_to_distance", "sphere_projections_overlap", "vsd"]


def depth_to_distance(depth: ArrayLike, K: ArrayLike) -> np.ndarray:
    """Convert a depth image (z along the optical axis) into a distance image (distance to the camera centre).

    Pixel ``(u, v)`` (integer = pixel centre) at depth ``z`` is the point
    ``z [(u - cx) / fx, (v - cy) / fy, 1]`` (as bop_toolkit's ``depth_im_to_dist_im_fast``, which ignores the
    skew ``K[0, 1]``); missing depth (``0``) stays ``0``.

    Args:
        depth: ``(H, W)`` depth in metres, ``0`` = no measurement.
        K: ``(3, 3)`` intrinsics in pixels.

    Returns:
        ``(H, W)`` float64 distances in metres.
    """
    d = np.asarray(depth, dtype=np.float64)
    Kf = np.asarray(K, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {d.shape}")
    if Kf.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {Kf.shape}")
    h, w = d.shape
    x = (np.arange(w, dtype=np.float64) - Kf[0, 2]) / Kf[0, 0]
    y = (np.arange(h, dtype=np.float64) - Kf[1, 2]) / Kf[1, 1]
    return np.asarray(d * np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + 1.0), dtype=np.float64)


def _depth_image(depth: ArrayLike, name: str) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W), got {d.shape}")
    d = np.where(np.isfinite(d), d, 0.0)
    if np.any(d < 0):
        raise ValueError(f"{name} has negative values (min {d.min():.4f} m)")
    return d


def vsd(
    depth_est: ArrayLike,
    depth_gt: ArrayLike,
    depth_test: ArrayLike,
    K: ArrayLike,
    *,
    delta: float = BOP_VSD_DELTA,
    taus: Sequence[float] | ArrayLike = BOP_VSD_TAUS,
    normalized_by_diameter: bool = True,
    diameter: float | None = None,
    cost_type: Literal["step", "tlinear"] = "step",
) -> np.ndarray:
    """VSD: visible surface discrepancy (Hodaň et al., ECCVW 2016 / ECCV 2018; BOP19 variant).

    The caller renders the object's depth in the estimated and in the ground-truth pose (same camera as the
    test image). As in bop_toolkit ``pose_error.vsd``:

    1. All three depth images become distance images (:func:`depth_to_distance`); differences and ``delta``
       are compared as distances along the viewing ray.
    2. ``visib_gt = d_gt > 0 and (d_gt - d_test <= delta or d_test == 0)`` — visibility mode ``"bop19"``:
       where the sensor has no depth, the object counts as visible (this lets VSD score shiny objects).
    3. ``visib_est = (d_est > 0 and (d_est - d_test <= delta or d_test == 0)) or (visib_gt and d_est > 0)``
       — the estimate's visibility is extended by the ground-truth's (eq. 14 of the ECCVW'16 paper): an
       estimate lying behind the true surface is not hidden by the object itself.
    4. On the intersection, ``dist = |d_gt - d_est|`` (divided by ``diameter`` if ``normalized_by_diameter``);
       the per-pixel cost is ``dist >= tau`` (``"step"``, BOP19) or ``min(1, dist / tau)`` (``"tlinear"``);
       pixels in exactly one of the masks cost 1.
    5. ``e = (sum(cost) + |union| - |intersection|) / |union|``, and ``e = 1`` for every tau when the union is
       empty.

    Non-finite depths are read as missing (``0``). The computation is float64 throughout (bop_toolkit casts
    to float32 for the visibility test, which can flip a pixel lying within float32 rounding of ``delta``).

    Args:
        depth_est: ``(H, W)`` rendered depth of the model in the estimated pose, metres, ``0`` = background.
        depth_gt: ``(H, W)`` rendered depth of the model in the ground-truth pose, metres, ``0`` = background.
        depth_test: ``(H, W)`` depth image of the test scene, metres, ``0`` = missing.
        K: ``(3, 3)`` intrinsics of the three images, pixels.
        delta: visibility tolerance, metres (:data:`BOP_VSD_DELTA`; BOP uses 5 mm for ITODD).
        taus: ``(T,)`` misalignment tolerances: fractions of the diameter when ``normalized_by_diameter``,
            otherwise metres (:data:`BOP_VSD_TAUS`).
        normalized_by_diameter: divide the per-pixel distances by ``diameter`` (BOP19: ``True``).
        diameter: object diameter in metres; required when ``normalized_by_diameter``.
        cost_type: ``"step"`` (BOP19) or ``"tlinear"`` (ECCVW'16).

    Returns:
        ``(T,)`` float64 errors in ``[0, 1]``, one per tau.

    Example:
        >>> K = np.array([[100.0, 0.0, 1.5], [0.0, 100.0, 1.5], [0.0, 0.0, 1.0]])
        >>> gt = np.zeros((4, 4)); gt[:, :2] = 1.0
        >>> est = np.zeros((4, 4)); est[:, 1:3] = 1.0
        >>> vsd(est, gt, gt, K, taus=[0.1], diameter=0.2).tolist()  # 4 shared of 12 union pixels agree
        [0.6666666666666666]
    """
    d_est = _depth_image(depth_est, "depth_est")
    d_gt = _depth_image(depth_gt, "depth_gt")
    d_test = _depth_image(depth_test, "depth_test")
    if not (d_est.shape == d_gt.shape == d_test.shape):
        raise ValueError(f"depth images differ in shape: est {d_est.shape}, gt {d_gt.shape}, test {d_test.shape}")
    taus_arr = np.asarray(taus, dtype=np.float64).reshape(-1)
    if np.any(~(taus_arr > 0)):
        raise ValueError(f"taus must be positive, got {taus_arr.tolist()}")
    scale = 1.0
    if normalized_by_diameter:
        if diameter is None or not (np.isfinite(diameter) and diameter > 0):
            raise ValueError(f"normalized_by_diameter needs a positive diameter, got {diameter}")
        scale = float(diameter)
    if cost_type not in ("step", "tlinear"):
        raise ValueError(f"cost_type must be 'step' or 'tlinear', got {cost_type!r}")

    dist_est = depth_to_distance(d_est, K)
    dist_gt = depth_to_distance(d_gt, K)
    dist_test = depth_to_distance(d_test, K)
    test_missing = dist_test == 0
    visib_gt = (dist_gt > 0) & ((dist_gt - dist_test <= delta) | test_missing)
    visib_est = (dist_est > 0) & ((dist_est - dist_test <= delta) | test_missing | visib_gt)

    inter = visib_gt & visib_est
    union_count = int(np.count_nonzero(visib_gt | visib_est))
    if union_count == 0:
        return np.ones(len(taus_arr), dtype=np.float64)
    only_one = union_count - int(np.count_nonzero(inter))
    dists = np.abs(dist_gt[inter] - dist_est[inter]) / scale
    if cost_type == "step":
        costs = (dists[None, :] >= taus_arr[:, None]).sum(axis=1).astype(np.float64)
    else:
        costs = np.minimum(dists[None, :] / taus_arr[:, None], 1.0).sum(axis=1)
    return np.asarray((costs + only_one) / float(union_count), dtype=np.float64)


def sphere_projections_overlap(t_est: ArrayLike, t_gt: ArrayLike, radius: float | ArrayLike) -> np.ndarray:
    """bop_toolkit's cheap test of whether the object can overlap itself in the two poses' images.

    bop_toolkit skips rendering and sets VSD to 1 (for every tau) when this is false. It compares the
    distance between the normalised image projections of the two origins with ``radius (1/z_est + 1/z_gt)``
    and is false when either ``z`` is 0. Use it to reproduce BOP's numbers exactly and to save renders.

    Args:
        t_est: ``(..., 3)`` estimated translations, metres.
        t_gt: ``(..., 3)`` ground-truth translations, metres.
        radius: half the object diameter, metres (scalar or broadcastable ``(...,)``).

    Returns:
        ``(...,)`` bool.
    """
    a = _translations(t_est, "t_est")
    b = _translations(t_gt, "t_gt")
    za, zb = a[..., 2], b[..., 2]
    valid = (za != 0) & (zb != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.linalg.norm(a[..., :2] / za[..., None] - b[..., :2] / zb[..., None], axis=-1)
        out = valid & (dist < np.asarray(radius, dtype=np.float64) * (1.0 / za + 1.0 / zb))
    return np.asarray(out, dtype=bool)
