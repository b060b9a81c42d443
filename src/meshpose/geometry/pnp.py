"""Perspective-n-Point: robust RANSAC PnP (poselib, OpenCV fallback) and a differentiable Gauss-Newton/LM PnP.

Both estimate ``cam_from_obj`` from 2D pixels (OpenCV camera, pixel centres at integers) matched to 3D
object-frame points (metres).

* :func:`pnp_ransac` is the classical robust estimator (numpy, float64) for flow/correspondence-based
  refiners. It never raises for a degenerate match set: it returns a :class:`PnPResult` with
  ``success=False`` and a reason.
* :func:`gauss_newton_pnp` is a few Levenberg-Marquardt steps in torch, differentiable w.r.t. the matches, the
  weights and the initial pose, for learned refiners (GenFlow-style weighted PnP layers).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import roma
import torch
from numpy.typing import ArrayLike

from meshpose.geometry.lie import skew
from meshpose.types import Camera, Pose, se3_exp

__all__ = ["PnPResult", "gauss_newton_pnp", "pnp_ransac", "poselib_available"]


# ----------------------------------------------------------------------------------------------------------
# RANSAC PnP
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PnPResult:
    """Outcome of :func:`pnp_ransac`. The type is the same whether it succeeded or not.

    Args:
        pose: the single ``cam_from_obj`` pose (float64), or ``None`` when no pose was found.
        inliers: ``(N,)`` bool, matches in front of the camera with reprojection error ≤ the threshold under
            ``pose`` (all ``False`` when ``pose`` is ``None``).
        num_inliers: ``inliers.sum()``.
        reprojection_error_px: mean reprojection error over the inliers, pixels (``nan`` without inliers).
        success: whether a pose with at least ``min_inliers`` inliers was found.
        reason: ``None`` on success, else a short human-readable reason (e.g. ``"fewer than 4 matches"``).
        backend: ``"poselib"`` or ``"opencv"`` (the estimator that ran; ``"none"`` if rejected before).
    """

    pose: Pose | None
    inliers: np.ndarray
    num_inliers: int
    reprojection_error_px: float
    success: bool
    reason: str | None
    backend: str = "none"


def poselib_available() -> bool:
    """Whether the ``poselib`` package can be imported (else :func:`pnp_ransac` uses OpenCV)."""
    return importlib.util.find_spec("poselib") is not None


def _as_np(x: ArrayLike | torch.Tensor, name: str, cols: int) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    try:
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array of numbers: {e}") from e
    if arr.ndim != 2 or arr.shape[1] != cols:
        raise ValueError(f"{name} must have shape (N, {cols}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf (at row {int(np.argwhere(~np.isfinite(arr))[0, 0])})")
    return arr


def _failure(n: int, reason: str, backend: str = "none", pose: Pose | None = None) -> PnPResult:
    return PnPResult(pose, np.zeros(n, dtype=bool), 0, float("nan"), False, reason, backend)


def _reprojection(R: np.ndarray, t: np.ndarray, p3: np.ndarray, p2: np.ndarray, K: np.ndarray) -> tuple:
    P = p3 @ R.T + t
    z = P[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (P @ K[:2].T) / z[:, None]
        err = np.linalg.norm(uv - p2, axis=1)
    return np.where(z > 0, err, np.inf), z


def _remove_skew(p2: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observations and intrinsics without skew (neither poselib's PINHOLE nor OpenCV models it).

    ``u' = u - s (v - cy) / fy`` is exact for the pose; it changes pixel distances by a shear that is
    negligible for real cameras (``s ≈ 0``).
    """
    if K[0, 1] == 0.0:
        return p2, K
    p2c = p2.copy()
    p2c[:, 0] -= K[0, 1] * (p2[:, 1] - K[1, 2]) / K[1, 1]
    K0 = K.copy()
    K0[0, 1] = 0.0
    return p2c, K0


def _run_poselib(
    p2: np.ndarray,
    p3: np.ndarray,
    K: np.ndarray,
    camera: Camera,
    thr: float,
    max_it: int,
    min_it: int,
    conf: float,
    seed: int,
    refine: bool,
) -> tuple[np.ndarray, np.ndarray]:
    import poselib

    cam = {
        "model": "PINHOLE",
        "width": camera.width,
        "height": camera.height,
        "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
    }
    ransac_opt = {
        "max_reproj_error": thr,
        "max_iterations": max_it,
        "min_iterations": min_it,
        "success_prob": conf,
        "seed": seed,
    }
    # The final non-linear refinement on the inliers (poselib's own choice: a Cauchy loss at half the
    # threshold).
    bundle_opt = {"loss_type": "CAUCHY", "loss_scale": 0.5 * thr, "max_iterations": 100 if refine else 0}
    pose, _info = poselib.estimate_absolute_pose(p2, p3, cam, ransac_opt, bundle_opt)
    return np.asarray(pose.R, dtype=np.float64), np.asarray(pose.t, dtype=np.float64).reshape(3)


def _run_opencv(
    p2: np.ndarray, p3: np.ndarray, K: np.ndarray, thr: float, max_it: int, conf: float, refine: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        p3,
        p2,
        K,
        None,
        iterationsCount=max_it,
        reprojectionError=thr,
        confidence=conf,
        flags=cv2.SOLVEPNP_AP3P,
    )
    if not ok or inl is None or len(inl) < 4:
        return None
    if refine:
        idx = inl.reshape(-1)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-12)
        rvec, tvec = cv2.solvePnPRefineLM(p3[idx], p2[idx], K, None, rvec, tvec, criteria=criteria)
    R, _ = cv2.Rodrigues(rvec)
    return np.asarray(R, dtype=np.float64), np.asarray(tvec, dtype=np.float64).reshape(3)


def pnp_ransac(
    points2d: ArrayLike | torch.Tensor,
    points3d: ArrayLike | torch.Tensor,
    camera: Camera,
    *,
    max_reprojection_error_px: float = 2.0,
    max_iterations: int = 10_000,
    min_iterations: int = 100,
    confidence: float = 0.9999,
    seed: int = 0,
    refine: bool = True,
    min_inliers: int = 4,
    backend: Literal["auto", "poselib", "opencv"] = "auto",
) -> PnPResult:
    """Robust PnP: RANSAC over minimal P3P samples, then a non-linear refinement on the inliers.

    The default backend is **poselib** (``poselib.estimate_absolute_pose``: LO-RANSAC with P3P, PINHOLE
    camera, then bundle adjustment with a Cauchy loss of scale ``threshold / 2``). When poselib is not
    installed (or with ``backend="opencv"``) it falls back to OpenCV: ``cv2.solvePnPRansac`` with
    ``SOLVEPNP_AP3P`` (which has no minimum iteration count and no seed: it is deterministic by
    itself), then ``cv2.solvePnPRefineLM`` on its inliers. Whatever the backend, the returned inliers
    and error are recomputed here with ``camera.K``.

    Args:
        points2d: ``(N, 2)`` observed pixels.
        points3d: ``(N, 3)`` matching object-frame points, metres.
        camera: the camera of ``points2d`` (skew is handled).
        max_reprojection_error_px: inlier threshold, pixels.
        max_iterations: RANSAC iteration cap.
        min_iterations: RANSAC iterations run at least (poselib only).
        confidence: RANSAC success probability used for early stopping.
        seed: RANSAC seed (poselib); the result is deterministic for a given seed.
        refine: run the final non-linear refinement on the inliers.
        min_inliers: a pose with fewer inliers is reported as a failure (the pose is still returned).
        backend: ``"auto"`` (poselib if importable, else OpenCV), ``"poselib"`` or ``"opencv"``.

    Returns:
        A :class:`PnPResult`. Degenerate input (fewer than 4 matches, coincident or collinear 3D points,
        coincident 2D points, no consensus) gives ``success=False`` with a ``reason``; it does not raise.

    Raises:
        ValueError: wrong shapes, NaN/inf in an input (naming it), or bad options.

    Example:
        >>> import numpy as np, torch
        >>> cam = Camera.from_fxfycxcy(500.0, 500.0, 320.0, 240.0, width=640, height=480)
        >>> X = np.random.default_rng(0).uniform(-0.1, 0.1, (20, 3))
        >>> gt = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 0.6], dtype=torch.float64))
        >>> P = gt.apply(X)
        >>> uv = (P @ torch.tensor(cam.K).T)[:, :2] / P[:, 2:]
        >>> res = pnp_ransac(uv.numpy(), X, cam)
        >>> res.success, res.num_inliers, bool(torch.allclose(res.pose.t, gt.t, atol=1e-8))
        (True, 20, True)
    """
    p2 = _as_np(points2d, "points2d", 2)
    p3 = _as_np(points3d, "points3d", 3)
    if len(p2) != len(p3):
        raise ValueError(f"points2d and points3d must have the same length, got {len(p2)} and {len(p3)}")
    thr = float(max_reprojection_error_px)
    if not (np.isfinite(thr) and thr > 0):
        raise ValueError(f"max_reprojection_error_px must be positive, got {max_reprojection_error_px}")
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if max_iterations < 1 or min_iterations < 0 or min_inliers < 0:
        raise ValueError(
            f"need max_iterations ≥ 1, min_iterations ≥ 0, min_inliers ≥ 0 (got {max_iterations}, "
            f"{min_iterations}, {min_inliers})"
        )
    if backend not in ("auto", "poselib", "opencv"):
        raise ValueError(f"backend must be 'auto', 'poselib' or 'opencv', got {backend!r}")
    if backend == "auto":
        backend = "poselib" if poselib_available() else "opencv"

    n = len(p2)
    if n < 4:
        return _failure(n, f"fewer than 4 matches (got {n})")
    s3 = np.linalg.svd(p3 - p3.mean(0), compute_uv=False)
    if s3[0] <= 1e-12 or s3[1] <= 1e-7 * s3[0]:
        return _failure(n, "3D points are coincident or collinear")
    s2 = np.linalg.svd(p2 - p2.mean(0), compute_uv=False)
    if s2[0] <= 1e-9:
        return _failure(n, "2D points are coincident")

    p2c, K0 = _remove_skew(p2, camera.K)
    try:
        if backend == "poselib":
            Rt = _run_poselib(
                p2c, p3, K0, camera, thr, int(max_iterations), int(min_iterations), confidence, seed, refine
            )
        else:
            Rt_or_none = _run_opencv(p2c, p3, K0, thr, int(max_iterations), confidence, refine)
            if Rt_or_none is None:
                return _failure(n, "RANSAC found no consensus", backend)
            Rt = Rt_or_none
    except (RuntimeError, cv2.error, ValueError) as e:  # a solver error on odd data is a failure, not a crash
        return _failure(n, f"{backend} failed: {e}", backend)
    R, t = Rt
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return _failure(n, "the solver returned a non-finite pose", backend)
    pose = Pose(torch.from_numpy(R.copy()), torch.from_numpy(t.copy()))
    err, _ = _reprojection(R, t, p3, p2, camera.K)
    inliers = err <= thr
    k = int(inliers.sum())
    mean_err = float(err[inliers].mean()) if k else float("nan")
    if k < max(min_inliers, 1):
        reason = f"only {k} inliers (fewer than min_inliers={min_inliers})" if k else "no inliers"
        return PnPResult(pose, inliers, k, mean_err, False, reason, backend)
    return PnPResult(pose, inliers, k, mean_err, True, None, backend)


# ----------------------------------------------------------------------------------------------------------
# Differentiable Gauss-Newton / Levenberg-Marquardt PnP
# ----------------------------------------------------------------------------------------------------------
def gauss_newton_pnp(
    points2d: torch.Tensor,
    points3d: torch.Tensor,
    weights: torch.Tensor,
    K: torch.Tensor,
    init: Pose,
    *,
    iterations: int = 5,
    damping: float = 1e-3,
    depth: torch.Tensor | None = None,
    depth_weight: float = 1.0,
    huber_px: float | None = None,
    min_depth: float = 1e-3,
    pivot: Literal["camera", "object"] = "camera",
    depth_prior: torch.Tensor | None = None,
    depth_prior_weight: float = 0.0,
) -> Pose:
    """Weighted PnP by a fixed number of Levenberg-Marquardt steps; differentiable end to end.

    Minimises over the pose ``E = Σᵢ wᵢ ρ(|π(K, R Xᵢ + t) - xᵢ|²) [+ depth_weight Σᵢ wᵢ (s_i (z_i - d_i))²]``.

    **Update.** The increment is left-multiplied, ``pose ← exp(δ) ∘ pose`` with ``δ = [v, ω]`` in the camera
    frame, so a camera-frame point moves as ``P ← P + v + ω × P`` to first order and ``∂P/∂δ = [I | -[P]×]``.
    With ``J = ∂π/∂P · ∂P/∂δ`` (analytic; ``∂π/∂P = (K[:2] - π e_zᵀ) / z``), each step solves the
    damped normal equations ``(H + λ·diag(H)) δ = -g`` with ``H = Σ wJᵀJ``, ``g = Σ wJᵀr``,
    ``λ = damping`` (Marquardt's scale-invariant damping: ``damping=0`` is plain Gauss-Newton) with
    ``torch.linalg.solve``. The step is always taken (fixed iteration count, no line search), so a run
    is a fixed computation graph.

    **Pivot.** With ``pivot="object"`` the rotation turns about the object's origin instead of the camera's:
    ``R ← exp(ω) R``, ``t ← t + v`` (so ``∂P/∂δ = [I | -[P - t]×]``). For an object far from the camera the
    camera-pivot coordinates couple rotation and translation strongly, the normal equations are badly
    conditioned and any damping slows convergence to a crawl; the object pivot decouples them (learned
    refiners use it with a little damping).

    **Depth residual** (RGB-D): where ``depth[b, i] > 0``, the residual ``(z_pred - d) · f̄ / d`` is
    added, with ``z_pred`` the predicted camera-frame depth, ``d`` the observed depth (metres) and
    ``f̄ = (fx + fy) / 2``. The factor ``f̄ / d`` converts metres along the ray into the pixels a lateral
    displacement of the same size would move, so ``depth_weight = 1`` weighs 1 mm of depth error like
    1 mm of lateral error.

    **Depth prior** (RGB): with ``depth_prior`` (``z₀``, metres, per batch item) and ``depth_prior_weight = λ > 0``,
    the residual ``(t_z - z₀) · f̄ / z₀`` (pixels: the depth change of the object origin expressed, like the depth
    residual, as the lateral motion of the same size) joins the objective with the weight ``λ · Σᵢ wᵢ``. From one
    image, the depth of a small or distant object is the worst-observed direction of the pose (it shows only as a
    change of scale: a match at lateral distance ``X`` from the origin constrains it ``X / z`` times less than a
    lateral motion), so a weak prior holds it near ``z₀`` unless the matches agree on a change of scale. ``λ`` is
    relative to that lateral information: ``λ = (X / z)²`` makes the prior as strong as the scale evidence of
    matches at lateral distance ``X``.

    **Robust loss.** With ``huber_px``, each match's weight is multiplied by the IRLS Huber factor
    ``min(1, huber_px / |r|)`` of its current 2D residual (recomputed every step).

    Points with predicted depth ``≤ min_depth`` get zero weight in a step (their depth is clamped to avoid a
    division by zero). Nothing calls ``.item()`` and nothing is modified in place, so gradients flow
    through every iteration (unrolled) to ``points2d``, ``points3d``, ``weights``, ``depth`` and the
    tensors of ``init``.

    Args:
        points2d: ``(B, N, 2)`` observed pixels.
        points3d: ``(B, N, 3)`` matching object-frame points, metres.
        weights: ``(B, N)`` non-negative confidences (``0`` = ignore the match).
        K: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics.
        init: ``(B,)`` initial ``cam_from_obj`` poses; its dtype (float32 or float64) and device are used
            throughout and the other inputs are cast to them.
        iterations: number of LM steps (``≥ 0``; 0 returns ``init``).
        damping: Marquardt damping ``λ ≥ 0`` on the diagonal of ``H``.
        depth: optional ``(B, N)`` observed depth at each match, metres (``0`` = none).
        depth_weight: weight of the depth residuals relative to the pixel ones.
        huber_px: Huber threshold in pixels, or ``None`` for plain least squares.
        min_depth: metres; see above.
        pivot: ``"camera"`` (default) or ``"object"``: the centre of the rotation increments (see above).
        depth_prior: optional ``(B,)`` prior depth ``z₀`` of the object origin (camera frame, metres, > 0).
        depth_prior_weight: ``λ ≥ 0``, the weight of the depth prior (see above; ``0`` = none).

    Returns:
        ``(B,)`` refined ``cam_from_obj`` poses.

    Raises:
        ValueError: wrong shapes, NaN/inf in an input, or negative weights (message names the input).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = (torch.rand(1, 30, 3, generator=g, dtype=torch.float64) - 0.5) * 0.2
        >>> gt = Pose.exp(torch.tensor([[0.01, -0.02, 0.5, 0.1, 0.2, -0.1]], dtype=torch.float64))
        >>> K = torch.tensor([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]], dtype=torch.float64)
        >>> P = gt.apply(X)
        >>> uv = (P @ K.T)[..., :2] / P[..., 2:]
        >>> init = Pose.exp(torch.tensor([[0.0, 0.0, 0.01, 0.05, 0.0, 0.0]], dtype=torch.float64)).compose(gt)
        >>> est = gauss_newton_pnp(uv, X, torch.ones(1, 30, dtype=torch.float64), K, init, iterations=8)
        >>> bool(torch.allclose(est.t, gt.t, atol=1e-9))
        True
    """
    if not isinstance(init, Pose) or init.R.ndim != 3:
        raise ValueError("init must be a Pose with batch shape (B,)")
    dtype, device = init.dtype, init.device
    B = init.R.shape[0]

    def cast(x: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
        return x.to(dtype=dtype, device=device)

    if not isinstance(points2d, torch.Tensor) or points2d.ndim != 3:
        raise ValueError(f"points2d must be a (B, N, 2) tensor, got {tuple(getattr(points2d, 'shape', ()))}")
    N = points2d.shape[1]
    x = cast(points2d, "points2d", (B, N, 2))
    X = cast(points3d, "points3d", (B, N, 3))
    w = cast(weights, "weights", (B, N))
    Kt = K if isinstance(K, torch.Tensor) else torch.as_tensor(np.asarray(K, dtype=np.float64))
    Kt = cast(Kt.expand(B, 3, 3) if Kt.shape == (3, 3) else Kt, "K", (B, 3, 3))
    d = cast(depth, "depth", (B, N)) if depth is not None else None
    if pivot not in ("camera", "object"):
        raise ValueError(f"pivot must be 'camera' or 'object', got {pivot!r}")
    if iterations < 0 or damping < 0 or (huber_px is not None and huber_px <= 0) or depth_weight < 0:
        raise ValueError(
            f"need iterations ≥ 0, damping ≥ 0, huber_px > 0, depth_weight ≥ 0 (got {iterations}, {damping}, "
            f"{huber_px}, {depth_weight})"
        )
    named = [
        ("points2d", x),
        ("points3d", X),
        ("weights", w),
        ("K", Kt),
        ("init.R", init.R),
        ("init.t", init.t),
    ]
    if d is not None:
        named.append(("depth", d))
    if depth_prior_weight < 0:
        raise ValueError(f"depth_prior_weight must be ≥ 0, got {depth_prior_weight}")
    z0 = cast(depth_prior, "depth_prior", (B,)) if depth_prior is not None and depth_prior_weight > 0 else None
    if z0 is not None:
        named.append(("depth_prior", z0))
    signs = [(w >= 0).all()] + ([(z0 > min_depth).all()] if z0 is not None else [])
    flags = torch.stack([torch.isfinite(v).all() for _, v in named] + signs).tolist()  # one host sync, before the loop
    finite, sign_ok = flags[: len(named)], flags[len(named) :]
    for (name, _), ok in zip(named, finite, strict=True):
        if not ok:
            raise ValueError(f"{name} contains NaN or inf")
    if not sign_ok[0]:
        raise ValueError("weights must be non-negative")
    if z0 is not None and not sign_ok[1]:
        raise ValueError(f"depth_prior must be > {min_depth} m (the object in front of the camera)")

    R, t = init.R, init.t
    e_z = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device)
    f_bar = 0.5 * (Kt[:, 0, 0] + Kt[:, 1, 1])  # (B,)
    if d is not None:
        has_d = d > 0
        d_safe = torch.where(has_d, d, torch.ones_like(d))
        s_depth = f_bar[:, None] / d_safe  # metres → pixels at the observed depth
        w_depth = w * has_d.to(dtype) * depth_weight
    for _ in range(iterations):
        P = X @ R.transpose(-1, -2) + t[:, None, :]  # (B, N, 3) camera frame
        z = P[..., 2]
        valid = (z > min_depth).to(dtype)
        zc = z.clamp_min(min_depth)
        uv = (P @ Kt[:, :2, :].transpose(-1, -2)) / zc[..., None]  # (B, N, 2)
        r = uv - x
        wi = w * valid
        if huber_px is not None:
            rn = torch.sqrt((r * r).sum(-1) + 1e-12)
            wi = wi * torch.clamp(huber_px / rn, max=1.0)
        # ∂π/∂P = (K[:2] - uv e_zᵀ) / z: (B, N, 2, 3); ∂P/∂δ = [I | -[P]×]: (B, N, 3, 6).
        J_proj = (Kt[:, None, :2, :] - uv[..., None] * e_z) / zc[..., None, None]
        arm = P if pivot == "camera" else P - t[:, None, :]  # rotation about the camera or the object origin
        J_pose = torch.cat([torch.eye(3, dtype=dtype, device=device).expand(*P.shape[:-1], 3, 3), -skew(arm)], -1)
        J = J_proj @ J_pose  # (B, N, 2, 6)
        H = torch.einsum("bnki,bn,bnkj->bij", J, wi, J)
        g = torch.einsum("bnki,bn,bnk->bi", J, wi, r)
        if d is not None:
            rz = (z - d_safe) * s_depth  # (B, N) pixels
            Jz = J_pose[..., 2, :] * s_depth[..., None]  # (B, N, 6)
            wz = w_depth * valid
            H = H + torch.einsum("bni,bn,bnj->bij", Jz, wz, Jz)
            g = g + torch.einsum("bni,bn,bn->bi", Jz, wz, rz)
        if z0 is not None:
            s_prior = f_bar / z0  # (B,) metres → pixels
            rp = (t[:, 2] - z0) * s_prior
            # ∂t_z/∂δ = [e_z | (t × e_z)ᵀ] for the camera pivot (t moves by ω × t too), [e_z | 0] for the object's.
            ez = e_z.expand(B, 3)
            Jp = torch.cat([ez, torch.cross(t, ez, dim=-1) if pivot == "camera" else torch.zeros_like(ez)], -1)
            Jp = Jp * s_prior[:, None]
            wp = depth_prior_weight * wi.sum(-1)  # (B,)
            H = H + wp[:, None, None] * Jp[:, :, None] * Jp[:, None, :]
            g = g + (wp * rp)[:, None] * Jp
        diag = torch.diagonal(H, dim1=-2, dim2=-1)
        # A tiny absolute term keeps the system solvable (δ = 0) when every weight is zero.
        tiny = 1e-12 * (diag.mean(-1, keepdim=True) + 1.0)
        A = H + torch.diag_embed(damping * diag + tiny)
        delta = -torch.linalg.solve(A, g[..., None])[..., 0]  # (B, 6) = [v, ω]
        if pivot == "camera":
            dR, dt = se3_exp(delta)
            R = dR @ R
            t = (dR @ t[..., None])[..., 0] + dt
        else:
            R = roma.rotvec_to_rotmat(delta[:, 3:]) @ R
            t = t + delta[:, :3]
    return Pose(R, t)
