"""The Open3D side of ``icp``: robust point-to-plane (generalized) ICP, coloured ICP and the helpers around them.

Open3D is imported on first use (it takes ~2 s). Clouds are ``(M, 3)`` float64 camera-frame points in metres,
centred on the rendered centroid (see :mod:`meshpose.refine.icp`); ``T`` is a ``(4, 4)`` rigid transform with
``T · observed ≈ rendered``.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from meshpose.refine.icp.config import ICPConfig

__all__ = [
    "color_icp",
    "geometric_icp",
    "normalized_intensity",
    "open3d",
    "plane_fit",
    "rotation_angle_deg",
    "scale_motion",
]


def open3d() -> Any:
    import open3d as o3d  # imported on first use: it takes ~2 s

    return o3d


def robust_kernel(reg: Any, cfg: ICPConfig, max_corr: float) -> Any:
    k = cfg.kernel_scale * max_corr
    if cfg.kernel == "tukey":
        return reg.TukeyLoss(k=k)
    if cfg.kernel == "huber":
        return reg.HuberLoss(k=k)
    return reg.L2Loss()


def plane_fit(
    src: np.ndarray, tgt: np.ndarray, normals: np.ndarray, T: np.ndarray, max_corr: float
) -> tuple[float, float]:
    """Share of ``T · src`` with a ``tgt`` neighbour within ``max_corr``, and their point-to-plane RMSE."""
    o3d = open3d()
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(tgt))
    corr = np.asarray(o3d.pipelines.registration.evaluate_registration(source, target, max_corr, T).correspondence_set)
    if len(corr) == 0:
        return 0.0, math.inf
    p = src[corr[:, 0]] @ T[:3, :3].T + T[:3, 3]
    res = np.einsum("ij,ij->i", p - tgt[corr[:, 1]], normals[corr[:, 1]])
    return len(corr) / len(src), float(np.sqrt(np.mean(res**2)))


def normalized_intensity(gray: np.ndarray) -> np.ndarray | None:
    """Intensities mapped to mean 0.5 and spread 0.2 (drops gain and offset); ``None`` for an untextured patch."""
    std = float(gray.std())
    if std < 0.02:
        return None
    return 0.5 + 0.2 * (gray - gray.mean()) / std


def scale_motion(T: np.ndarray, basis: np.ndarray, factors: np.ndarray, radius: float) -> np.ndarray:
    """``T`` with its components along the orthonormal ``basis`` ``(6, 6)`` (columns, in ``[radius · ω, v]``
    coordinates, ``ω`` the rotation vector) multiplied by ``factors`` ``(6,)``."""
    x = np.concatenate([cv2.Rodrigues(np.ascontiguousarray(T[:3, :3]))[0][:, 0] * radius, T[:3, 3]])
    x = basis @ (factors * (basis.T @ x))
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(x[:3] / radius)[0]
    out[:3, 3] = x[3:]
    return out


def rotation_angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(R)) - 1.0) / 2.0))))


def geometric_icp(
    src: np.ndarray, tgt: np.ndarray, normals: np.ndarray, max_corr: float, cfg: ICPConfig
) -> tuple[np.ndarray, float, float]:
    """Robust point-to-plane ICP, observed ``src`` → rendered ``tgt`` (with normals); ``(T, fitness, rmse)``."""
    o3d = open3d()
    reg = o3d.pipelines.registration
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(tgt))
    kernel = robust_kernel(reg, cfg, max_corr)
    criteria = reg.ICPConvergenceCriteria(relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=cfg.inner_iterations)
    if cfg.tangent_weight > 0:
        # Point-to-plane plus a weak point-to-point term (see the module docstring).
        nn = normals[:, :, None] * normals[:, None, :]
        cov = nn + (np.eye(3) - nn) / cfg.tangent_weight
        target.covariances = o3d.utility.Matrix3dVector(np.ascontiguousarray(cov))
        source.covariances = o3d.utility.Matrix3dVector(np.zeros((len(src), 3, 3)))
        estimation = reg.TransformationEstimationForGeneralizedICP(1e-3, kernel)
        result = reg.registration_generalized_icp(source, target, max_corr, np.eye(4), estimation, criteria)
    else:
        target.normals = o3d.utility.Vector3dVector(normals)
        estimation = reg.TransformationEstimationPointToPlane(kernel)
        result = reg.registration_icp(source, target, max_corr, np.eye(4), estimation, criteria)
    return np.asarray(result.transformation, dtype=np.float64), float(result.fitness), float(result.inlier_rmse)


def color_icp(
    src: np.ndarray,
    tgt: np.ndarray,
    normals: np.ndarray,
    src_gray: np.ndarray,
    tgt_gray: np.ndarray,
    init: np.ndarray,
    max_corr: float,
    cfg: ICPConfig,
) -> np.ndarray | None:
    """Open3D coloured ICP (Park et al. 2017) from ``init`` on normalised intensities; ``None`` if it fails."""
    o3d = open3d()
    reg = o3d.pipelines.registration
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
    source.colors = o3d.utility.Vector3dVector(np.repeat(src_gray[:, None], 3, 1))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(tgt))
    target.normals = o3d.utility.Vector3dVector(normals)
    target.colors = o3d.utility.Vector3dVector(np.repeat(tgt_gray[:, None], 3, 1))
    estimation = reg.TransformationEstimationForColoredICP(1.0 - cfg.color_weight, reg.L2Loss())
    criteria = reg.ICPConvergenceCriteria(relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=cfg.inner_iterations)
    try:
        result = reg.registration_colored_icp(source, target, max_corr, init, estimation, criteria)
    except RuntimeError:  # Open3D raises when no correspondence is left
        return None
    T = np.asarray(result.transformation, dtype=np.float64)
    return T if np.all(np.isfinite(T)) else None
