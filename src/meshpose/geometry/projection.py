"""Pinhole projection and back-projection (OpenCV camera: x right, y down, z forward; metres and pixels).

Pixel ``(u, v)`` with integer coordinates is the centre of a pixel (see :class:`meshpose.types.Camera`). All
functions are differentiable torch functions; numpy inputs are accepted and become float64 tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from meshpose.types import Pose

__all__ = ["depth_to_points", "pixel_grid", "project", "project_object_points", "unproject", "valid_depth"]


def _tensor(x: ArrayLike | torch.Tensor, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a tensor or an array of numbers: {e}") from e
    if like is not None:
        t = t.to(dtype=like.dtype, device=like.device)
    elif not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _check_K(K: torch.Tensor) -> None:
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"K must have shape (..., 3, 3), got {tuple(K.shape)}")


def project(
    points_cam: torch.Tensor | ArrayLike, K: torch.Tensor | ArrayLike, *, min_depth: float | None = None
) -> torch.Tensor:
    """Project camera-frame points to pixels: ``[u, v] = (K p)[:2] / p_z``.

    Args:
        points_cam: ``(..., N, 3)`` points in the camera frame, metres.
        K: ``(..., 3, 3)`` intrinsics (pixels); its batch shape broadcasts with the points' (without ``N``).
            Cast to the points' dtype and device.
        min_depth: if given, depths are clamped to at least this many metres before dividing, so points at or
            behind the camera give large but finite pixels (useful inside optimisation loops). By default no
            clamping: ``z = 0`` gives inf/NaN and points behind the camera project mirrored.

    Returns:
        ``(..., N, 2)`` pixel coordinates ``(u, v)``; differentiable w.r.t. both inputs.

    Raises:
        ValueError: on wrong shapes.

    Example:
        >>> import torch
        >>> K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
        >>> project(torch.tensor([[0.1, -0.05, 1.0]]), K)
        tensor([[370., 215.]])
    """
    p = _tensor(points_cam, "points_cam")
    Kt = _tensor(K, "K", like=p)
    if p.shape[-1:] != (3,) or p.ndim < 2:
        raise ValueError(f"points_cam must have shape (..., N, 3), got {tuple(p.shape)}")
    _check_K(Kt)
    z = p[..., 2:3]
    if min_depth is not None:
        z = z.clamp_min(float(min_depth))
    # The last row of an intrinsics matrix is [0, 0, 1]: (K p)_z = p_z, so only the first two rows are needed.
    uvw = p @ Kt[..., :2, :].transpose(-1, -2)
    return uvw / z


def project_object_points(
    pose: Pose,
    points_obj: torch.Tensor | ArrayLike,
    K: torch.Tensor | ArrayLike,
    *,
    min_depth: float | None = None,
) -> torch.Tensor:
    """Project object-frame points seen at ``pose`` (``cam_from_obj``) to pixels.

    Args:
        pose: ``cam_from_obj`` with batch shape ``(...)``.
        points_obj: ``(N, 3)`` or ``(..., N, 3)`` object-frame points, metres (cast to the pose's dtype).
        K: ``(3, 3)`` or ``(..., 3, 3)`` intrinsics.
        min_depth: see :func:`project`.

    Returns:
        ``(..., N, 2)`` pixel coordinates.

    Example:
        >>> import torch
        >>> pose = Pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        >>> K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], dtype=torch.float64)
        >>> project_object_points(pose, [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]], K)
        tensor([[320., 240.],
                [370., 240.]], dtype=torch.float64)
    """
    p = _tensor(points_obj, "points_obj", like=pose.R)
    if p.shape[-1:] != (3,) or p.ndim < 2:
        raise ValueError(f"points_obj must have shape (N, 3) or (..., N, 3), got {tuple(p.shape)}")
    return project(pose.apply(p), K, min_depth=min_depth)


def unproject(uv: torch.Tensor | ArrayLike, z: torch.Tensor | ArrayLike, K: torch.Tensor | ArrayLike) -> torch.Tensor:
    """Back-project pixels with known depth to camera-frame points (inverse of :func:`project`).

    Args:
        uv: ``(..., N, 2)`` pixel coordinates.
        z: ``(..., N)`` depth along the optical axis, metres.
        K: ``(..., 3, 3)`` intrinsics (skew allowed); batch shape broadcasts with the points'.

    Returns:
        ``(..., N, 3)`` points ``z · K⁻¹ [u, v, 1]`` in the camera frame, metres.

    Example:
        >>> import torch
        >>> K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
        >>> unproject(torch.tensor([[370.0, 215.0]]), torch.tensor([2.0]), K)
        tensor([[ 0.2000, -0.1000,  2.0000]])
    """
    uv_t = _tensor(uv, "uv")
    z_t = _tensor(z, "z", like=uv_t)
    Kt = _tensor(K, "K", like=uv_t)
    if uv_t.shape[-1:] != (2,) or uv_t.ndim < 2:
        raise ValueError(f"uv must have shape (..., N, 2), got {tuple(uv_t.shape)}")
    if z_t.shape != uv_t.shape[:-1]:
        raise ValueError(f"z must have shape {tuple(uv_t.shape[:-1])} to match uv, got {tuple(z_t.shape)}")
    _check_K(Kt)
    fx, s, cx = Kt[..., 0, 0, None], Kt[..., 0, 1, None], Kt[..., 0, 2, None]
    fy, cy = Kt[..., 1, 1, None], Kt[..., 1, 2, None]
    y = (uv_t[..., 1] - cy) / fy
    x = (uv_t[..., 0] - cx - s * y) / fx
    return torch.stack([x * z_t, y * z_t, z_t.expand_as(x)], dim=-1)


def pixel_grid(
    height: int, width: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Pixel-centre coordinates ``(height, width, 2)`` holding ``(u, v) = (column, row)``."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def depth_to_points(depth: torch.Tensor | ArrayLike, K: torch.Tensor | ArrayLike) -> torch.Tensor:
    """Camera-frame 3D point of every pixel of a depth map.

    Args:
        depth: ``(H, W)`` or ``(B, H, W)`` depth along the optical axis, metres; ``0`` (or NaN/inf) = missing.
            Numpy input becomes float64; integer input is rejected (convert to metres first).
        K: ``(3, 3)`` or ``(B, 3, 3)`` intrinsics of the depth map's camera.

    Returns:
        ``(H, W, 3)`` or ``(B, H, W, 3)`` points ``depth[v, u] · K⁻¹ [u, v, 1]``, zeros where depth is
        missing.

    Example:
        >>> import torch
        >>> K = torch.tensor([[2.0, 0, 0.5], [0, 2, 0.5], [0, 0, 1]])
        >>> depth_to_points(torch.tensor([[1.0, 0.0], [2.0, 1.0]]), K)[1, 0]
        tensor([-0.5000,  0.5000,  2.0000])
    """
    d = depth if isinstance(depth, torch.Tensor) else torch.as_tensor(np.asarray(depth))
    if not d.is_floating_point():
        raise ValueError(f"depth must be floating point metres, got dtype {d.dtype}")
    if not isinstance(depth, torch.Tensor):
        d = d.to(torch.float64)
    if d.ndim not in (2, 3):
        raise ValueError(f"depth must have shape (H, W) or (B, H, W), got {tuple(d.shape)}")
    Kt = _tensor(K, "K", like=d)
    _check_K(Kt)
    if d.ndim == 2 and Kt.ndim != 2:
        raise ValueError(f"K must be (3, 3) for a (H, W) depth map, got {tuple(Kt.shape)}")
    if d.ndim == 3 and Kt.ndim == 3 and Kt.shape[0] != d.shape[0]:
        raise ValueError(f"K batch {Kt.shape[0]} does not match depth batch {d.shape[0]}")
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    H, W = d.shape[-2:]
    uv = pixel_grid(H, W, dtype=d.dtype, device=d.device).reshape(H * W, 2)
    if d.ndim == 3:
        Kb = Kt if Kt.ndim == 3 else Kt.expand(d.shape[0], 3, 3)
        pts = unproject(uv.expand(d.shape[0], H * W, 2), d.reshape(d.shape[0], H * W), Kb)
    else:
        pts = unproject(uv, d.reshape(H * W), Kt)
    return pts.reshape(*d.shape, 3)


def valid_depth(depth: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: finite, positive depth (0 and non-finite values mean missing)."""
    return np.isfinite(depth) & (depth > 0)
