"""Pose-error metrics and recall scores as pure, batched numpy functions.

Every function takes and returns float64 numpy arrays; nothing here renders, reads files or keeps state.

Conventions (see ``DESIGN.md``):

* Units are metres; image-space errors are pixels; angles are degrees.
* A pose is ``cam_from_obj`` given as ``(R, t)`` with ``R`` of shape ``(..., 3, 3)`` and ``t`` of shape
  ``(..., 3)``: ``x_cam = R @ x_obj + t``. The batch dimensions of the estimated and the ground-truth poses
  broadcast against each other, and every per-pose metric returns one value per pose, shape ``(...,)``.
* ``points`` are ``(P, 3)`` model points in the object frame (metres).
* ``symmetries`` are ``(S, 4, 4)`` transforms ``obj_from_obj`` (metres) under which the object looks the
  same, identity first (``ObjectModel.symmetries``). ``None`` means the identity alone.
* Pixel ``(u, v)`` with integer coordinates is the centre of a pixel (as in :mod:`meshpose.types` and in
  bop_toolkit).

The definitions follow the BOP benchmark (Hodaň et al., ECCV 2018 and the BOP Challenge 2019 rules) as
implemented in ``bop_toolkit_lib/pose_error.py``; the ADD-S AUC follows PoseCNN (Xiang et al., RSS 2018,
YCB-Video toolbox). Where this module departs from the reference code (float64 instead of float32, the
formula used for the rotation angle), the docstring says so.

Threshold conventions (BOP19, ``eval_calc_scores.py``): a pose is correct when its error is *strictly*
below the threshold. MSSD errors are compared as ``mssd / diameter < th`` for ``th`` in
:data:`BOP_MSSD_THRESHOLDS`, MSPD errors as ``mspd * 640 / image_width < th`` for ``th`` in
:data:`BOP_MSPD_THRESHOLDS`, and VSD errors (already unitless) against :data:`BOP_VSD_THRESHOLDS` for each
``tau`` in :data:`BOP_VSD_TAUS`. :func:`mssd_thresholds` and :func:`mspd_thresholds` give the same
thresholds in metres and pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

__all__ = [
    "ADDS_AUC_MAX_THRESHOLD",
    "BOP_MSPD_REFERENCE_WIDTH",
    "BOP_MSPD_THRESHOLDS",
    "BOP_MSSD_THRESHOLDS",
    "BOP_VSD_DELTA",
    "BOP_VSD_TAUS",
    "BOP_VSD_THRESHOLDS",
    "add",
    "add_or_adds",
    "add_s_recall",
    "adds",
    "adds_auc",
    "average_recall",
    "bop_average_recall",
    "depth_to_distance",
    "mspd",
    "mspd_thresholds",
    "mssd",
    "mssd_thresholds",
    "re",
    "recall",
    "sphere_projections_overlap",
    "te",
    "vsd",
]

# ----------------------------------------------------------------------------------------------------------
# BOP19 constants
# ----------------------------------------------------------------------------------------------------------
#: MSSD correctness thresholds, as fractions of the object diameter (BOP19: 0.05, 0.10, ..., 0.50).
BOP_MSSD_THRESHOLDS: Final[tuple[float, ...]] = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
#: MSPD correctness thresholds in pixels for a 640-pixel-wide image (BOP19: 5, 10, ..., 50); scale them by
#: ``image_width / 640`` (see :func:`mspd_thresholds`).
BOP_MSPD_THRESHOLDS: Final[tuple[float, ...]] = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0)
#: The image width the MSPD thresholds refer to, pixels.
BOP_MSPD_REFERENCE_WIDTH: Final[int] = 640
#: VSD misalignment tolerances, as fractions of the object diameter (BOP19: 0.05, 0.10, ..., 0.50).
BOP_VSD_TAUS: Final[tuple[float, ...]] = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
#: VSD correctness thresholds on the (unitless) VSD error (BOP19: 0.05, 0.10, ..., 0.50).
BOP_VSD_THRESHOLDS: Final[tuple[float, ...]] = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
#: VSD visibility tolerance in metres (BOP19: 15 mm for every dataset except ITODD, which uses 5 mm).
BOP_VSD_DELTA: Final[float] = 0.015
#: Upper end of the PoseCNN ADD-S accuracy curve, metres.
ADDS_AUC_MAX_THRESHOLD: Final[float] = 0.10

# Elements per temporary array in the chunked batch loops (about 64 MiB of float64).
_CHUNK_ELEMENTS: Final[int] = 1 << 23


# ----------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------
def _rotations(R: ArrayLike, name: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape (..., 3, 3), got {R.shape}")
    return R


def _translations(t: ArrayLike, name: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.ndim < 1 or t.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3), got {t.shape}")
    return t


def _poses(
    R_est: ArrayLike, t_est: ArrayLike, R_gt: ArrayLike, t_gt: ArrayLike
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate two batches of poses; return the broadcast batch shape and the four arrays, flattened."""
    Re, te_ = _rotations(R_est, "R_est"), _translations(t_est, "t_est")
    Rg, tg = _rotations(R_gt, "R_gt"), _translations(t_gt, "t_gt")
    try:
        batch = np.broadcast_shapes(Re.shape[:-2], te_.shape[:-1], Rg.shape[:-2], tg.shape[:-1])
    except ValueError as exc:
        raise ValueError(
            f"pose batch shapes do not broadcast: R_est {Re.shape}, t_est {te_.shape}, R_gt {Rg.shape}, t_gt {tg.shape}"
        ) from exc
    n = int(np.prod(batch, dtype=np.int64))
    return (
        batch,
        np.broadcast_to(Re, (*batch, 3, 3)).reshape(n, 3, 3),
        np.broadcast_to(te_, (*batch, 3)).reshape(n, 3),
        np.broadcast_to(Rg, (*batch, 3, 3)).reshape(n, 3, 3),
        np.broadcast_to(tg, (*batch, 3)).reshape(n, 3),
    )


def _points(points: ArrayLike) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"points must have shape (P, 3) with P >= 1, got {pts.shape}")
    return pts


def _symmetries(symmetries: ArrayLike | None) -> np.ndarray:
    if symmetries is None:
        return np.eye(4)[None]
    sym = np.asarray(symmetries, dtype=np.float64)
    if sym.ndim != 3 or sym.shape[1:] != (4, 4) or len(sym) == 0:
        raise ValueError(f"symmetries must have shape (S, 4, 4) with S >= 1, got {sym.shape}")
    return sym


def _chunked(n: int, per_item: int, fn: Callable[[slice], np.ndarray]) -> np.ndarray:
    """Evaluate ``fn`` on slices of ``range(n)`` that keep temporaries near ``_CHUNK_ELEMENTS`` elements."""
    step = max(1, _CHUNK_ELEMENTS // max(1, per_item))
    if n <= step:
        return fn(slice(0, n))
    return np.concatenate([fn(slice(i, min(n, i + step))) for i in range(0, n, step)])


def _transform(R: np.ndarray, t: np.ndarray, pts_T: np.ndarray) -> np.ndarray:
    """Apply affine maps ``R (..., 3, 3)``, ``t (..., 3)`` to points ``(3, P)``; returns ``(..., 3, P)``.

    Coordinates come first so that the product is a single GEMM and later reductions read contiguous rows.
    """
    lead = R.shape[:-2]
    out = (np.ascontiguousarray(R).reshape(-1, 3) @ pts_T).reshape(*lead, 3, pts_T.shape[1])
    return np.asarray(out + t[..., :, None], dtype=np.float64)


def _sq_norm(d: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm over the coordinate axis ``-2`` of a ``(..., C, P)`` array: ``(..., P)``."""
    return np.asarray(np.einsum("...cp,...cp->...p", d, d), dtype=np.float64)


def _sym_gt_poses(Rg: np.ndarray, tg: np.ndarray, sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth poses times each symmetry: ``R (N, S, 3, 3)``, ``t (N, S, 3)``."""
    R_s = Rg[:, None] @ sym[None, :, :3, :3]
    t_s = (Rg[:, None] @ sym[None, :, :3, 3:4])[..., 0] + tg[:, None, :]
    return R_s, t_s


# ----------------------------------------------------------------------------------------------------------
# Pose errors
# ----------------------------------------------------------------------------------------------------------
def add(R_est: ArrayLike, t_est: ArrayLike, R_gt: ArrayLike, t_gt: ArrayLike, points: ArrayLike) -> np.ndarray:
    """ADD: mean distance between the model points moved by the estimated and by the true pose.

    ``ADD = mean_i || (R_est p_i + t_est) - (R_gt p_i + t_gt) ||`` (Hinterstoisser et al., ACCV 2012;
    bop_toolkit ``add``).

    Args:
        R_est: ``(..., 3, 3)`` estimated rotations.
        t_est: ``(..., 3)`` estimated translations, metres.
        R_gt: ``(..., 3, 3)`` ground-truth rotations (batch broadcasts with the estimate's).
        t_gt: ``(..., 3)`` ground-truth translations, metres.
        points: ``(P, 3)`` model points in the object frame, metres.

    Returns:
        ``(...,)`` float64 errors in metres.

    Example:
        >>> pts = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
        >>> float(add(np.eye(3), [0.0, 0.0, 1.0], np.eye(3), [0.03, 0.04, 1.0], pts))
        0.05
    """
    batch, Re, te_, Rg, tg = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(points)
    pts_T = np.ascontiguousarray(pts.T)
    # (R_est p + t_est) - (R_gt p + t_gt) = (R_est - R_gt) p + (t_est - t_gt)
    dR = Re - Rg
    dt = te_ - tg

    def run(s: slice) -> np.ndarray:
        return np.sqrt(_sq_norm(_transform(dR[s], dt[s], pts_T))).mean(axis=-1)

    return _chunked(len(Re), 3 * len(pts), run).reshape(batch)


def adds(
    R_est: ArrayLike,
    t_est: ArrayLike,
    R_gt: ArrayLike,
    t_gt: ArrayLike,
    points: ArrayLike,
    *,
    workers: int = 1,
) -> np.ndarray:
    """ADD-S (ADI): mean distance from each model point in the true pose to the closest one in the estimate.

    ``ADD-S = mean_i min_j || (R_gt p_i + t_gt) - (R_est p_j + t_est) ||`` with an exact nearest-neighbour
    search, in the same direction as bop_toolkit ``adi`` (ground-truth points query the estimated ones). The
    search runs in the estimate's object frame (both point sets moved by the inverse estimated pose, which
    keeps every distance), so a single k-d tree of ``points`` serves the whole batch.

    Args:
        R_est: ``(..., 3, 3)`` estimated rotations.
        t_est: ``(..., 3)`` estimated translations, metres.
        R_gt: ``(..., 3, 3)`` ground-truth rotations (batch broadcasts with the estimate's).
        t_gt: ``(..., 3)`` ground-truth translations, metres.
        points: ``(P, 3)`` model points in the object frame, metres.
        workers: threads for the nearest-neighbour queries (``-1``: all cores).

    Returns:
        ``(...,)`` float64 errors in metres.

    Example:
        >>> square = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]) * 0.05
        >>> quarter_turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> t = [0.0, 0.0, 0.5]
        >>> float(adds(quarter_turn, t, np.eye(3), t, square)) < 1e-12
        True
    """
    batch, Re, te_, Rg, tg = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(points)
    tree = cKDTree(pts)
    # Ground-truth points in the estimate's object frame: R_estᵀ (R_gt p + t_gt - t_est).
    Re_T = np.swapaxes(Re, -1, -2)
    Rq = Re_T @ Rg
    tq = (Re_T @ (tg - te_)[:, :, None])[:, :, 0]
    pts_T = np.ascontiguousarray(pts.T)

    def run(s: slice) -> np.ndarray:
        q = np.swapaxes(_transform(Rq[s], tq[s], pts_T), -1, -2)  # (n, P, 3)
        dist, _ = tree.query(q.reshape(-1, 3), k=1, workers=workers)
        return np.asarray(dist, dtype=np.float64).reshape(-1, len(pts)).mean(axis=-1)

    return _chunked(len(Re), 3 * len(pts), run).reshape(batch)


def add_or_adds(
    R_est: ArrayLike,
    t_est: ArrayLike,
    R_gt: ArrayLike,
    t_gt: ArrayLike,
    points: ArrayLike,
    *,
    symmetric: bool,
) -> np.ndarray:
    """ADD(-S): :func:`adds` for a symmetric object, :func:`add` otherwise (BOP's ``ad`` error).

    Args:
        R_est: ``(..., 3, 3)`` estimated rotations.
        t_est: ``(..., 3)`` estimated translations, metres.
        R_gt: ``(..., 3, 3)`` ground-truth rotations.
        t_gt: ``(..., 3)`` ground-truth translations, metres.
        points: ``(P, 3)`` model points, metres.
        symmetric: whether the object has symmetries (e.g. ``ObjectModel.is_symmetric``).

    Returns:
        ``(...,)`` float64 errors in metres.
    """
    fn = adds if symmetric else add
    return fn(R_est, t_est, R_gt, t_gt, points)


def mssd(
    R_est: ArrayLike,
    t_est: ArrayLike,
    R_gt: ArrayLike,
    t_gt: ArrayLike,
    points: ArrayLike,
    symmetries: ArrayLike | None = None,
) -> np.ndarray:
    """MSSD: maximum symmetry-aware surface distance (BOP19).

    ``MSSD = min_{S in symmetries} max_i || (R_est p_i + t_est) - (cam_from_obj_gt ∘ S)(p_i) ||``.

    Args:
        R_est: ``(..., 3, 3)`` estimated rotations.
        t_est: ``(..., 3)`` estimated translations, metres.
        R_gt: ``(..., 3, 3)`` ground-truth rotations (batch broadcasts with the estimate's).
        t_gt: ``(..., 3)`` ground-truth translations, metres.
        points: ``(P, 3)`` model points, metres.
        symmetries: ``(S, 4, 4)`` ``obj_from_obj`` symmetry transforms in metres (identity included);
            ``None`` for the identity alone.

    Returns:
        ``(...,)`` float64 errors in metres. Compare ``mssd / diameter`` with :data:`BOP_MSSD_THRESHOLDS`.

    Example:
        >>> pts = np.array([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0]])
        >>> half_turn = np.diag([-1.0, -1.0, 1.0])
        >>> sym = np.stack([np.eye(4), np.block([[half_turn, np.zeros((3, 1))], [np.zeros((1, 3)), 1.0]])])
        >>> t = [0.0, 0.0, 1.0]
        >>> float(mssd(half_turn, t, np.eye(3), t, pts, sym))
        0.0
        >>> round(float(mssd(half_turn, t, np.eye(3), t, pts)), 12)  # without the symmetry
        0.2
    """
    batch, Re, te_, Rg, tg = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(points)
    sym = _symmetries(symmetries)
    R_s, t_s = _sym_gt_poses(Rg, tg, sym)
    pts_T = np.ascontiguousarray(pts.T)
    # (R_est p + t_est) - (R_s p + t_s) = (R_est - R_s) p + (t_est - t_s), for every symmetry s
    A = Re[:, None] - R_s  # (N, S, 3, 3)
    c = te_[:, None] - t_s  # (N, S, 3)

    def run(s: slice) -> np.ndarray:
        # max over points of the squared distance, then min over symmetries; sqrt is monotone
        return np.sqrt(_sq_norm(_transform(A[s], c[s], pts_T)).max(axis=-1).min(axis=-1))

    return _chunked(len(Re), 3 * len(sym) * len(pts), run).reshape(batch)


def mspd(
    R_est: ArrayLike,
    t_est: ArrayLike,
    R_gt: ArrayLike,
    t_gt: ArrayLike,
    K: ArrayLike,
    points: ArrayLike,
    symmetries: ArrayLike | None = None,
) -> np.ndarray:
    """MSPD: maximum symmetry-aware projection distance (BOP19).

    ``MSPD = min_{S in symmetries} max_i || proj(R_est p_i + t_est) - proj((cam_from_obj_gt ∘ S)(p_i)) ||``
    where ``proj`` is the pinhole projection (no special case for points behind the camera, as in
    bop_toolkit).

    Args:
        R_est: ``(..., 3, 3)`` estimated rotations.
        t_est: ``(..., 3)`` estimated translations, metres.
        R_gt: ``(..., 3, 3)`` ground-truth rotations (batch broadcasts with the estimate's).
        t_gt: ``(..., 3)`` ground-truth translations, metres.
        K: ``(3, 3)`` or ``(..., 3, 3)`` intrinsics in pixels (batch broadcasts with the poses').
        points: ``(P, 3)`` model points, metres.
        symmetries: ``(S, 4, 4)`` symmetry transforms (identity included); ``None`` for the identity alone.

    Returns:
        ``(...,)`` float64 errors in pixels. Compare ``mspd * 640 / image_width`` with
        :data:`BOP_MSPD_THRESHOLDS` (or ``mspd`` with :func:`mspd_thresholds`).

    Example:
        >>> K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
        >>> pts = np.array([[0.1, 0.0, 0.0]])
        >>> # the point projects 50 px right of the centre at 1 m and 25 px right at 2 m
        >>> float(mspd(np.eye(3), [0.0, 0.0, 2.0], np.eye(3), [0.0, 0.0, 1.0], K, pts))
        25.0
    """
    batch, Re, te_, Rg, tg = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(points)
    sym = _symmetries(symmetries)
    Kf = np.asarray(K, dtype=np.float64)
    if Kf.ndim < 2 or Kf.shape[-2:] != (3, 3):
        raise ValueError(f"K must have shape (3, 3) or (..., 3, 3), got {Kf.shape}")
    try:
        full = np.broadcast_shapes(batch, Kf.shape[:-2])
    except ValueError as exc:
        raise ValueError(f"K batch shape {Kf.shape[:-2]} does not broadcast with the poses' {batch}") from exc
    if full != batch:
        # K adds batch dimensions: broadcast the poses to them.
        return mspd(
            np.broadcast_to(Re.reshape(*batch, 3, 3), (*full, 3, 3)),
            np.broadcast_to(te_.reshape(*batch, 3), (*full, 3)),
            np.broadcast_to(Rg.reshape(*batch, 3, 3), (*full, 3, 3)),
            np.broadcast_to(tg.reshape(*batch, 3), (*full, 3)),
            Kf,
            pts,
            sym,
        )
    n = len(Re)
    Kn = np.broadcast_to(Kf, (*batch, 3, 3)).reshape(n, 3, 3)
    R_s, t_s = _sym_gt_poses(Rg, tg, sym)
    pts_T = np.ascontiguousarray(pts.T)
    # Homogeneous pixels K (R p + t) = (K R) p + K t: fold K into the poses.
    KR_est, Kt_est = Kn @ Re, (Kn @ te_[:, :, None])[:, :, 0]
    KR_gt, Kt_gt = Kn[:, None] @ R_s, (Kn[:, None] @ t_s[..., None])[..., 0]

    def run(s: slice) -> np.ndarray:
        h_est = _transform(KR_est[s], Kt_est[s], pts_T)  # (n, 3, P)
        h_gt = _transform(KR_gt[s], Kt_gt[s], pts_T)  # (n, S, 3, P)
        with np.errstate(divide="ignore", invalid="ignore"):  # a point at z = 0 gives inf/NaN, as in BOP
            uv_est = h_est[:, :2] / h_est[:, 2:3]
            uv_gt = h_gt[:, :, :2] / h_gt[:, :, 2:3]
            return np.sqrt(_sq_norm(uv_est[:, None] - uv_gt).max(axis=-1).min(axis=-1))

    return _chunked(n, 6 * len(sym) * len(pts), run).reshape(batch)


def re(R_est: ArrayLike, R_gt: ArrayLike) -> np.ndarray:
    """Rotation error: the angle of ``R_est R_gtᵀ``, degrees in ``[0, 180]``.

    bop_toolkit computes ``acos((tr(R_est R_gt⁻¹) - 1) / 2)``; this uses the equivalent
    ``atan2(|vee(M - Mᵀ)|, tr(M) - 1)`` with ``M = R_est R_gtᵀ``, which agrees for rotation matrices and
    stays accurate for small angles (where ``acos`` loses half the digits).

    Args:
        R_est: ``(..., 3, 3)`` estimated rotations.
        R_gt: ``(..., 3, 3)`` ground-truth rotations (broadcasts with ``R_est``).

    Returns:
        ``(...,)`` float64 angles in degrees.

    Example:
        >>> Rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> float(re(Rz90, np.eye(3)))
        90.0
    """
    Re = _rotations(R_est, "R_est")
    Rg = _rotations(R_gt, "R_gt")
    M = Re @ np.swapaxes(Rg, -1, -2)
    cos2 = np.trace(M, axis1=-2, axis2=-1) - 1.0
    sin2 = np.linalg.norm(
        np.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1),
        axis=-1,
    )
    return np.asarray(np.degrees(np.arctan2(sin2, cos2)), dtype=np.float64)


def te(t_est: ArrayLike, t_gt: ArrayLike) -> np.ndarray:
    """Translation error ``||t_est - t_gt||``, metres.

    Args:
        t_est: ``(..., 3)`` estimated translations, metres.
        t_gt: ``(..., 3)`` ground-truth translations, metres (broadcasts with ``t_est``).

    Returns:
        ``(...,)`` float64 distances in metres.

    Example:
        >>> float(te([0.0, 0.03, 1.0], [0.04, 0.0, 1.0]))
        0.05
    """
    a = _translations(t_est, "t_est")
    b = _translations(t_gt, "t_gt")
    return np.asarray(np.linalg.norm(a - b, axis=-1), dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------
# VSD
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# Thresholds, recall and AUC
# ----------------------------------------------------------------------------------------------------------
def mssd_thresholds(diameter: float, fractions: Sequence[float] | ArrayLike = BOP_MSSD_THRESHOLDS) -> np.ndarray:
    """MSSD thresholds in metres for an object: ``fractions * diameter``.

    Args:
        diameter: object diameter, metres.
        fractions: ``(T,)`` thresholds as fractions of the diameter.

    Returns:
        ``(T,)`` float64 thresholds in metres.
    """
    return np.asarray(fractions, dtype=np.float64).reshape(-1) * float(diameter)


def mspd_thresholds(image_width: int, pixels_at_640: Sequence[float] | ArrayLike = BOP_MSPD_THRESHOLDS) -> np.ndarray:
    """MSPD thresholds in pixels for an image width: ``pixels_at_640 * image_width / 640``.

    Args:
        image_width: width of the test image, pixels.
        pixels_at_640: ``(T,)`` thresholds for a 640-pixel-wide image.

    Returns:
        ``(T,)`` float64 thresholds in pixels.
    """
    return np.asarray(pixels_at_640, dtype=np.float64).reshape(-1) * (image_width / BOP_MSPD_REFERENCE_WIDTH)


def recall(errors: ArrayLike, thresholds: Sequence[float] | ArrayLike) -> np.ndarray:
    """Fraction of ground-truth instances whose error is strictly below each threshold.

    ``errors`` holds one error per ground-truth instance: that of its matched estimate, ``inf`` (or NaN)
    where nothing was matched, so missing estimates count as failures. With several estimates and several
    instances of one object in an image, BOP matches separately at each threshold (see
    :func:`meshpose.eval.matching.match_per_threshold`); this function is then exact when each instance
    has one candidate estimate.

    Args:
        errors: ``(G, ...)`` errors per ground-truth instance (trailing dimensions, e.g. the VSD taus, are
            kept).
        thresholds: ``(T,)`` thresholds in the errors' unit.

    Returns:
        ``(T, ...)`` float64 recalls in ``[0, 1]``; zeros when ``G == 0`` (BOP's convention for no targets).

    Example:
        >>> recall([0.01, 0.03, np.inf, 0.05], [0.02, 0.05, 0.06]).tolist()
        [0.25, 0.5, 0.75]
    """
    e = np.asarray(errors, dtype=np.float64)
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if e.ndim == 0:
        raise ValueError("errors must have shape (G, ...)")
    th_b = th.reshape(-1, *([1] * e.ndim))
    if e.shape[0] == 0:
        return np.zeros((len(th), *e.shape[1:]), dtype=np.float64)
    return np.asarray((e[None] < th_b).mean(axis=1), dtype=np.float64)


def average_recall(errors: ArrayLike, thresholds: Sequence[float] | ArrayLike) -> float:
    """Mean of :func:`recall` over the thresholds (and over any trailing dimension, e.g. the VSD taus).

    ``average_recall(mssd / diameter, BOP_MSSD_THRESHOLDS)`` is AR_MSSD;
    ``average_recall(vsd_errors (G, 10), BOP_VSD_THRESHOLDS)`` is AR_VSD (the mean over the 10 × 10 pairs).

    Args:
        errors: ``(G, ...)`` errors per ground-truth instance (``inf`` where missing).
        thresholds: ``(T,)`` thresholds.

    Returns:
        The average recall in ``[0, 1]``.

    Example:
        >>> average_recall([0.01, 0.03, np.inf, 0.05], [0.02, 0.05, 0.06])
        0.5
    """
    return float(np.mean(recall(errors, thresholds)))


def bop_average_recall(ar_vsd: float, ar_mssd: float, ar_mspd: float) -> float:
    """BOP19 score: ``AR = (AR_VSD + AR_MSSD + AR_MSPD) / 3``."""
    return float((ar_vsd + ar_mssd + ar_mspd) / 3.0)


def add_s_recall(errors: ArrayLike, diameters: float | ArrayLike, frac: float = 0.1) -> float:
    """ADD(-S) recall: fraction of instances with error strictly below ``frac`` × diameter.

    Args:
        errors: ``(G,)`` ADD or ADD-S errors in metres (``inf`` for missing estimates).
        diameters: object diameter(s) in metres, scalar or ``(G,)``.
        frac: threshold as a fraction of the diameter (0.1 is the usual "ADD(-S) 0.1d").

    Returns:
        The recall in ``[0, 1]``; ``0.0`` when ``G == 0``.

    Example:
        >>> add_s_recall([0.005, 0.02, np.inf], 0.1)
        0.3333333333333333
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if len(e) == 0:
        return 0.0
    d = np.broadcast_to(np.asarray(diameters, dtype=np.float64), e.shape)
    return float(np.mean(e < frac * d))


def adds_auc(
    errors_m: ArrayLike,
    max_threshold_m: float = ADDS_AUC_MAX_THRESHOLD,
    *,
    method: Literal["posecnn", "exact"] = "posecnn",
) -> float:
    """Area under the accuracy–threshold curve of ADD(-S) errors from 0 to ``max_threshold_m``, in ``[0, 1]``.

    The accuracy at threshold ``x`` is the fraction of instances with error ``<= x``; missing estimates
    (``inf`` or NaN) never count. The area is divided by ``max_threshold_m``.

    ``method="posecnn"`` reproduces the YCB-Video toolbox (``VOCap``) that PoseCNN, DenseFusion and their
    successors report: errors above ``max_threshold_m`` are dropped, the ``k``-th smallest error ``d_k`` of
    ``n`` carries accuracy ``k / n`` over the interval ``(d_{k-1}, d_k]`` (a right-endpoint rule; repeated
    errors take the accuracy of their first occurrence), and the last accuracy extends to
    ``max_threshold_m``. ``method="exact"`` integrates the true step curve, which equals
    ``mean(max(0, 1 - e / max_threshold_m))``; it is lower than the PoseCNN figure by about
    ``max(d) / (n · max_threshold_m)``.

    Args:
        errors_m: ``(G,)`` errors in metres, ``inf`` where an estimate is missing.
        max_threshold_m: upper end of the curve, metres (PoseCNN: 0.10).
        method: ``"posecnn"`` (default, comparable with published numbers) or ``"exact"``.

    Returns:
        The normalised area in ``[0, 1]``; ``0.0`` when ``G == 0``.

    Example:
        >>> # 0.02·1/4 + 0.03·2/4 + 0.05·2/4 = 0.045, divided by 0.1
        >>> round(adds_auc([0.02, 0.05, np.inf, 0.2]), 12)
        0.45
        >>> round(adds_auc([0.02, 0.05, np.inf, 0.2], method="exact"), 12)  # (0.8 + 0.5) / 4
        0.325
    """
    e = np.asarray(errors_m, dtype=np.float64).reshape(-1)
    if not (np.isfinite(max_threshold_m) and max_threshold_m > 0):
        raise ValueError(f"max_threshold_m must be positive, got {max_threshold_m}")
    n = len(e)
    if n == 0:
        return 0.0
    e = np.where(np.isnan(e), np.inf, e)
    if method == "exact":
        return float(np.mean(np.clip(1.0 - e / max_threshold_m, 0.0, 1.0)))
    if method != "posecnn":
        raise ValueError(f"method must be 'posecnn' or 'exact', got {method!r}")
    d = np.sort(e[e <= max_threshold_m])
    if len(d) == 0:
        return 0.0
    acc = np.arange(1, len(d) + 1, dtype=np.float64) / n
    # Curve abscissae [0, d_1..d_m, max]; ordinates [0, acc_1..acc_m, acc_m] (already non-decreasing).
    x = np.concatenate([[0.0], d, [max_threshold_m]])
    y = np.concatenate([[0.0], acc, [acc[-1]]])
    step = np.nonzero(x[1:] != x[:-1])[0] + 1
    area = float(np.sum((x[step] - x[step - 1]) * y[step]))
    return area / max_threshold_m
