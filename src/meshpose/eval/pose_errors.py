"""Pose errors (ADD, ADD-S, MSSD, MSPD, rotation and translation error) as pure, batched numpy functions.

Conventions as in :mod:`meshpose.eval.metrics`: metres, pixels, degrees; poses ``cam_from_obj`` as ``(R, t)``
with broadcasting batch dimensions; ``points`` ``(P, 3)`` in the object frame; ``symmetries`` ``(S, 4, 4)``
``obj_from_obj`` (identity first), ``None`` for the identity alone. The definitions follow bop_toolkit's
``pose_error.py``; where this module departs from it, the docstring says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

__all__ = ["add", "add_or_adds", "adds", "mspd", "mssd", "re", "te"]

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
