"""SO(3)/SE(3) helpers: geodesic angles, axis-angle rotations, random rotations and pose perturbations.

The SE(3) exponential and logarithm live in :mod:`meshpose.types` (the bottom of the import graph) and are
re-exported here. Tangent order is ``[v, ω]`` (translation part first, then a rotation vector in radians).
Rotations are ``(..., 3, 3)`` matrices; quaternions, where they appear inside roma, are XYZW.

Randomness: every random function takes an optional :class:`torch.Generator` (CPU generator; samples
are drawn on the CPU and moved to ``device``), so a seeded generator gives the same numbers on any
machine and device.
"""

from __future__ import annotations

import math

import numpy as np
import roma
import torch
from numpy.typing import ArrayLike

from meshpose.types import Pose, se3_exp, se3_log, skew

__all__ = [
    "interpolate_pose",
    "perturb_pose",
    "random_rotations",
    "random_unit_vectors",
    "rotation_about_axis",
    "rotation_angle",
    "se3_exp",
    "se3_log",
    "skew",
]


def _to_tensor(x: ArrayLike | torch.Tensor, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor view of ``x`` (numpy and lists become float64 unless ``dtype`` is given)."""
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a tensor or an array of numbers: {e}") from e
    return torch.as_tensor(arr, dtype=dtype or torch.float64)


def rotation_angle(R_a: torch.Tensor | ArrayLike, R_b: torch.Tensor | ArrayLike) -> torch.Tensor:
    """Geodesic distance between rotations: the angle of ``R_aᵀ R_b``, in radians, in ``[0, π]``.

    The angle is computed from the unit quaternion ``q`` of ``R_aᵀ R_b`` (roma's Markley/Shepperd
    conversion) as ``2·atan2(|q_xyz|, |q_w|)``, which keeps full precision near ``0`` *and* near ``π``
    (unlike ``acos`` of the trace, or the ``asin`` of the chord distance, which lose half the digits at
    one end).

    Args:
        R_a: ``(..., 3, 3)`` rotation matrices (numpy input becomes float64).
        R_b: ``(..., 3, 3)`` rotation matrices; batch shape broadcasts with ``R_a``'s.

    Returns:
        ``(...)`` angles in radians, same dtype as the inputs. Usable as a loss: where the two rotations are
        exactly equal (a kink of the distance) the gradient is set to 0 instead of NaN.

    Raises:
        ValueError: if an input is not ``(..., 3, 3)``.

    Example:
        >>> import math, torch
        >>> z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        >>> R = rotation_about_axis(z, math.pi - 1e-7)
        >>> abs(float(rotation_angle(torch.eye(3, dtype=torch.float64), R)) - (math.pi - 1e-7)) < 1e-15
        True
    """
    Ra = _to_tensor(R_a, "R_a")
    Rb = _to_tensor(R_b, "R_b", Ra.dtype).to(Ra.device)
    for name, R in (("R_a", Ra), ("R_b", Rb)):
        if R.shape[-2:] != (3, 3):
            raise ValueError(f"{name} must have shape (..., 3, 3), got {tuple(R.shape)}")
    rel = Ra.transpose(-1, -2) @ Rb
    q = roma.rotmat_to_unitquat(rel)
    n2 = (q[..., :3] * q[..., :3]).sum(-1)
    pos = n2 > 0
    # sqrt through a where-guard: exact value everywhere, zero (not NaN) gradient at n2 = 0
    sin_half = torch.where(pos, torch.sqrt(torch.where(pos, n2, torch.ones_like(n2))), torch.zeros_like(n2))
    return 2.0 * torch.atan2(sin_half, q[..., 3].abs())


def rotation_about_axis(axis: torch.Tensor | ArrayLike, angle: torch.Tensor | float) -> torch.Tensor:
    """Rotation matrices by ``angle`` radians about ``axis`` (right-handed).

    Args:
        axis: ``(..., 3)`` rotation axes (normalised here; need not be unit length, must be non-zero).
        angle: ``(...)`` angles in radians, or a float; broadcasts with the axis batch shape.

    Returns:
        ``(..., 3, 3)`` rotation matrices, dtype of ``axis`` (float64 for numpy input).

    Raises:
        ValueError: if ``axis`` is not ``(..., 3)`` or has a zero-length or non-finite entry.

    Example:
        >>> import math, torch
        >>> R = rotation_about_axis(torch.tensor([0.0, 0.0, 2.0]), math.pi / 2)
        >>> torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
        True
    """
    a = _to_tensor(axis, "axis")
    if not a.is_floating_point():
        a = a.to(torch.float64)
    if a.shape[-1:] != (3,):
        raise ValueError(f"axis must have shape (..., 3), got {tuple(a.shape)}")
    norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    if not bool(torch.all(torch.isfinite(norm) & (norm > 0))):
        raise ValueError("axis must be finite and non-zero")
    ang = torch.as_tensor(angle, dtype=a.dtype, device=a.device)
    return roma.rotvec_to_rotmat((a / norm) * ang[..., None])


def random_unit_vectors(
    shape: int | tuple[int, ...],
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Directions drawn uniformly on the unit sphere ``S²``.

    Args:
        shape: batch shape (an int ``n`` means ``(n,)``).
        generator: optional CPU :class:`torch.Generator` for reproducibility.
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        ``(*shape, 3)`` unit vectors.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    while True:
        g = torch.randn(*shape, 3, generator=generator, dtype=torch.float64)
        n = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        if bool(torch.all(n > 1e-12)):  # a zero draw has probability ~0; redraw rather than divide by it
            return (g / n).to(dtype=dtype, device=device)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotations drawn uniformly (Haar measure) on SO(3).

    Args:
        n: number of rotations (``n ≥ 0``).
        generator: optional CPU :class:`torch.Generator` for reproducibility.
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        ``(n, 3, 3)`` rotation matrices.

    Example:
        >>> import torch
        >>> R = random_rotations(4, torch.Generator().manual_seed(0))
        >>> R.shape, bool(torch.allclose(torch.linalg.det(R), torch.ones(4, dtype=torch.float64)))
        (torch.Size([4, 3, 3]), True)
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n}")
    # A normalised 4-D Gaussian is uniform on S³, i.e. a Haar-uniform unit quaternion (XYZW for roma).
    q = torch.randn(int(n), 4, generator=generator, dtype=torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-300)
    return roma.unitquat_to_rotmat(q).to(dtype=dtype, device=device)


def perturb_pose(
    pose: Pose,
    rot_rad: float,
    trans_m: float,
    generator: torch.Generator | None = None,
) -> Pose:
    """Perturb poses by a rotation of exactly ``rot_rad`` and a translation of exactly ``trans_m``.

    For each pose of the batch, draw a uniformly random axis ``a`` and a uniformly random direction
    ``d`` (both on ``S²``) and return::

        R' = ΔR @ R,   ΔR = rot(a, rot_rad)     # rotation about the object's origin, axis in the camera frame
        t' = t + trans_m · d                     # the rotation does not move the origin

    so ``rotation_angle(R, R') == rot_rad`` and ``|t' - t| == trans_m`` (up to rounding).

    Args:
        pose: ``cam_from_obj`` poses of any batch shape.
        rot_rad: rotation angle in radians, ``0 ≤ rot_rad ≤ π``.
        trans_m: translation magnitude in metres, ``≥ 0``.
        generator: optional CPU :class:`torch.Generator`; the same seed gives the same perturbation. Axis and
            direction draws are made in float64 on the CPU, then cast to the pose's dtype and device.

    Returns:
        The perturbed poses (same batch shape, dtype and device as ``pose``).

    Raises:
        ValueError: for a negative or non-finite magnitude, or ``rot_rad > π``.

    Example:
        >>> import torch
        >>> p = Pose.identity((3,))
        >>> q = perturb_pose(p, 0.1, 0.02, torch.Generator().manual_seed(0))
        >>> torch.allclose(rotation_angle(p.R, q.R), torch.full((3,), 0.1, dtype=torch.float64))
        True
        >>> torch.allclose((q.t - p.t).norm(dim=-1), torch.full((3,), 0.02, dtype=torch.float64))
        True
    """
    rot_rad, trans_m = float(rot_rad), float(trans_m)
    if not (math.isfinite(rot_rad) and 0.0 <= rot_rad <= math.pi):
        raise ValueError(f"rot_rad must be in [0, π] radians, got {rot_rad}")
    if not (math.isfinite(trans_m) and trans_m >= 0.0):
        raise ValueError(f"trans_m must be a non-negative number of metres, got {trans_m}")
    shape = tuple(pose.batch_shape)
    axis = random_unit_vectors(shape, generator)
    direction = random_unit_vectors(shape, generator)
    dR = roma.rotvec_to_rotmat(axis * rot_rad).to(dtype=pose.dtype, device=pose.device)
    dt = (direction * trans_m).to(dtype=pose.dtype, device=pose.device)
    return Pose(dR @ pose.R, pose.t + dt)


def interpolate_pose(a: Pose, b: Pose, weight: float) -> Pose:
    """The pose ``weight`` of the way from ``a`` to ``b``: rotation along the geodesic (slerp), translation on the
    straight line — each component separately, so an object's centre moves on a line (not the screw motion of
    se(3) interpolation, which swings the centre around when the rotation is large).

    Args:
        a: ``(...)`` poses (``weight`` 0).
        b: poses of the same batch shape (``weight`` 1).
        weight: in ``[0, 1]``.

    Returns:
        The interpolated poses, ``a``'s dtype.

    Example:
        >>> z = Pose.identity(dtype=torch.float64)
        >>> b = Pose(rotation_about_axis([0.0, 0.0, 1.0], math.pi / 2), torch.tensor([0.2, 0.0, 0.0]))
        >>> m = interpolate_pose(z, b, 0.5)
        >>> round(math.degrees(float(rotation_angle(z.R, m.R))), 6), [round(float(v), 6) for v in m.t]
        (45.0, [0.1, 0.0, 0.0])
    """
    rel = roma.rotmat_to_rotvec(a.R.transpose(-1, -2) @ b.R.to(a.R.dtype))
    R = a.R @ roma.rotvec_to_rotmat(weight * rel)
    return Pose(R, (1.0 - weight) * a.t + weight * b.t.to(a.t.dtype))
