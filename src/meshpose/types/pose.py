"""Rigid poses ``cam_from_obj`` (:class:`Pose`) and the SE(3) maths they use (:func:`se3_exp`, :func:`se3_log`).

A pose maps object-frame points into the camera frame: ``x_cam = R @ x_obj + t`` (metres). The se(3) tangent order
is ``[v, ω]`` (translation part first, then the rotation vector), and ``Pose.exp(xi)`` is the true SE(3)
exponential (``t = V(ω) v``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = ["MAX_ROTATION_REPAIR", "PLAUSIBLE_DEPTH_M", "Pose", "se3_exp", "se3_log", "skew"]

log = logging.getLogger(__name__)

#: Largest ``max(|RRᵀ - I|, |det R - 1|)`` that :meth:`Pose.check` repairs (to the nearest rotation, with a
#: warning) rather than rejects: real annotations are off by up to about 1e-2 (LM-O); 0.1 is no rotation.
MAX_ROTATION_REPAIR: Final[float] = 0.1
#: Object depths (camera ``t_z``, metres) that :meth:`Pose.check` with ``in_front`` accepts: 1 cm to 100 m.
#: A ``t`` in metres read as BOP millimetres lands below (0.6 m → 0.6 mm); millimetres read as metres beyond.
PLAUSIBLE_DEPTH_M: Final[tuple[float, float]] = (0.01, 100.0)


# ----------------------------------------------------------------------------------------------------------
# SE(3) maths used by Pose. They live here (not in geometry/) because meshpose.types is the bottom of the import
# graph; geometry re-exports them. SO(3) goes through roma; roma has no SE(3) exponential, so the left Jacobian
# V(ω) and its inverse are written out below, with Taylor expansions near ω = 0.
# ----------------------------------------------------------------------------------------------------------
def skew(w: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices: ``skew(w) @ x == torch.linalg.cross(w, x)``.

    Args:
        w: ``(..., 3)`` vectors.

    Returns:
        ``(..., 3, 3)`` skew-symmetric matrices ``[w]×``.

    Example:
        >>> skew(torch.tensor([1.0, 2.0, 3.0])) @ torch.tensor([0.0, 0.0, 1.0])
        tensor([ 2., -1.,  0.])
    """
    if w.shape[-1:] != (3,):
        raise ValueError(f"w must have shape (..., 3), got {tuple(w.shape)}")
    zero = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack(
        [
            torch.stack([zero, -wz, wy], -1),
            torch.stack([wz, zero, -wx], -1),
            torch.stack([-wy, wx, zero], -1),
        ],
        -2,
    )


def _left_jacobian_coeffs(theta2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients ``a, b`` of ``V = I + a [ω]× + b [ω]×²`` for ``θ² = |ω|²``, stable at 0."""
    small = theta2 < 1e-6
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    t = torch.sqrt(t2)
    a = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(t)) / t2)
    b = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (t - torch.sin(t)) / (t2 * t))
    return a, b


def se3_exp(xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SE(3) exponential of ``xi = [v, ω]`` ``(..., 6)`` → ``(R (..., 3, 3), t (..., 3))``."""
    import roma

    v, w = xi[..., :3], xi[..., 3:]
    R = roma.rotvec_to_rotmat(w)
    W = skew(w)
    a, b = _left_jacobian_coeffs((w * w).sum(-1))
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand(W.shape)
    V = eye + a[..., None, None] * W + b[..., None, None] * (W @ W)
    t = (V @ v[..., None])[..., 0]
    return R, t


def se3_log(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SE(3) logarithm: ``(R (..., 3, 3), t (..., 3))`` → ``xi = [v, ω]`` ``(..., 6)``; ``|ω| ≤ π``."""
    import roma

    w = roma.rotmat_to_rotvec(R)
    W = skew(w)
    theta2 = (w * w).sum(-1)
    small = theta2 < 1e-6
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    th = torch.sqrt(t2)
    # V^{-1} = I - ½[ω]× + c [ω]×² with c = (1 - θ sinθ / (2 (1 - cosθ))) / θ²; c → 1/12 as θ → 0.
    c = torch.where(small, 1.0 / 12.0 + theta2 / 720.0, (1.0 - th * torch.sin(th) / (2.0 * (1.0 - torch.cos(th)))) / t2)
    eye = torch.eye(3, dtype=R.dtype, device=R.device).expand(W.shape)
    Vinv = eye - 0.5 * W + c[..., None, None] * (W @ W)
    v = (Vinv @ t[..., None])[..., 0]
    return torch.cat([v, w], -1)


# ----------------------------------------------------------------------------------------------------------
# Pose
# ----------------------------------------------------------------------------------------------------------
def _as_tensor(x: ArrayLike | torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.float64)


@dataclass(frozen=True, eq=False, init=False)
class Pose:
    """A batch of rigid transforms ``cam_from_obj``: ``x_cam = R @ x_obj + t`` (metres).

    Args:
        R: ``(..., 3, 3)`` rotation matrices (torch tensor, or anything numpy reads: it becomes float64).
        t: ``(..., 3)`` translations in metres, same batch shape as ``R``.

    The batch shape ``(...)`` may be empty (one pose). Methods broadcast over it. Construction checks shapes only;
    call :meth:`check` at an API boundary to reject NaNs, non-rotations and poses behind the camera.

    Example:
        >>> import torch
        >>> xi = torch.tensor([0.1, 0.0, 0.0, 0.0, 0.0, 0.3], dtype=torch.float64)
        >>> p = Pose.exp(xi)
        >>> torch.allclose(p.log(), xi)
        True
        >>> torch.allclose(p.compose(p.inverse()).matrix(), torch.eye(4, dtype=torch.float64))
        True
    """

    R: torch.Tensor
    t: torch.Tensor

    def __init__(self, R: torch.Tensor | ArrayLike, t: torch.Tensor | ArrayLike) -> None:
        R = _as_tensor(R, None)
        t = _as_tensor(t, R.dtype)
        if R.shape[-2:] != (3, 3):
            raise ValueError(f"Pose R must have shape (..., 3, 3), got {tuple(R.shape)}")
        if t.shape[-1:] != (3,) or t.shape[:-1] != R.shape[:-2]:
            raise ValueError(f"Pose t must have shape {(*R.shape[:-2], 3)} to match R, got {tuple(t.shape)}")
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t.to(R.device))

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def identity(
        cls,
        batch_shape: Sequence[int] = (),
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Pose:
        """Identity transforms of the given batch shape."""
        R = torch.eye(3, dtype=dtype, device=device).expand(*batch_shape, 3, 3).clone()
        return cls(R, torch.zeros(*batch_shape, 3, dtype=dtype, device=device))

    @classmethod
    def from_matrix(cls, M: ArrayLike | torch.Tensor) -> Pose:
        """From homogeneous ``(..., 4, 4)`` matrices."""
        M = _as_tensor(M, None)
        if M.shape[-2:] != (4, 4):
            raise ValueError(f"Pose matrix must have shape (..., 4, 4), got {tuple(M.shape)}")
        return cls(M[..., :3, :3], M[..., :3, 3])

    @classmethod
    def exp(cls, xi: ArrayLike | torch.Tensor) -> Pose:
        """SE(3) exponential of twists ``xi = [v, ω]`` ``(..., 6)`` (``ω`` a rotation vector in radians)."""
        xi = _as_tensor(xi, None)
        if xi.shape[-1:] != (6,):
            raise ValueError(f"a twist must have shape (..., 6), got {tuple(xi.shape)}")
        return cls(*se3_exp(xi))

    @classmethod
    def stack(cls, poses: Sequence[Pose]) -> Pose:
        """Stack poses of equal batch shape along a new leading batch dimension."""
        if len(poses) == 0:
            raise ValueError("Pose.stack needs at least one pose")
        return cls(torch.stack([p.R for p in poses], 0), torch.stack([p.t for p in poses], 0))

    @classmethod
    def cat(cls, poses: Sequence[Pose]) -> Pose:
        """Concatenate 1-D batches of poses."""
        if len(poses) == 0:
            raise ValueError("Pose.cat needs at least one pose")
        return cls(torch.cat([p.R for p in poses], 0), torch.cat([p.t for p in poses], 0))

    # --- algebra ----------------------------------------------------------------------------------------
    def matrix(self) -> torch.Tensor:
        """Homogeneous ``(..., 4, 4)`` matrices."""
        M = torch.zeros(*self.batch_shape, 4, 4, dtype=self.R.dtype, device=self.R.device)
        M[..., :3, :3] = self.R
        M[..., :3, 3] = self.t
        M[..., 3, 3] = 1.0
        return M

    def compose(self, other: Pose) -> Pose:
        """``self ∘ other`` (apply ``other`` first): e.g. ``cam_from_obj = cam_from_world.compose(world_from_obj)``."""
        return Pose(self.R @ other.R, (self.R @ other.t[..., None])[..., 0] + self.t)

    def __matmul__(self, other: Pose) -> Pose:
        return self.compose(other)

    def inverse(self) -> Pose:
        """The inverse transform (``obj_from_cam`` from ``cam_from_obj``)."""
        Rt = self.R.transpose(-1, -2)
        return Pose(Rt, -(Rt @ self.t[..., None])[..., 0])

    def apply(self, points: torch.Tensor | ArrayLike) -> torch.Tensor:
        """Transform points ``(..., N, 3)`` (batch dims broadcast with the pose's) → ``(..., N, 3)``."""
        p = _as_tensor(points, self.R.dtype).to(self.R.device)
        return p @ self.R.transpose(-1, -2) + self.t[..., None, :]

    def log(self) -> torch.Tensor:
        """SE(3) logarithm ``[v, ω]`` ``(..., 6)``, inverse of :meth:`exp` for ``|ω| < π``."""
        return se3_log(self.R, self.t)

    # --- batch handling ---------------------------------------------------------------------------------
    @property
    def batch_shape(self) -> torch.Size:
        return self.R.shape[:-2]

    @property
    def dtype(self) -> torch.dtype:
        return self.R.dtype

    @property
    def device(self) -> torch.device:
        return self.R.device

    def __len__(self) -> int:
        if len(self.batch_shape) == 0:
            raise TypeError("len() of a single (unbatched) Pose")
        return int(self.batch_shape[0])

    def __getitem__(self, idx: Any) -> Pose:
        if len(self.batch_shape) == 0:
            raise IndexError("cannot index a single (unbatched) Pose")
        return Pose(self.R[idx], self.t[idx])

    def reshape(self, *shape: int) -> Pose:
        return Pose(self.R.reshape(*shape, 3, 3), self.t.reshape(*shape, 3))

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Pose:
        return Pose(self.R.to(device=device, dtype=dtype), self.t.to(device=device, dtype=dtype))

    def detach(self) -> Pose:
        return Pose(self.R.detach(), self.t.detach())

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(R, t)`` as float64 numpy arrays."""
        return (
            self.R.detach().cpu().to(torch.float64).numpy(),
            self.t.detach().cpu().to(torch.float64).numpy(),
        )

    # --- validation -------------------------------------------------------------------------------------
    def check(
        self,
        name: str = "pose",
        *,
        in_front: bool = False,
        atol: float = 1e-4,
        max_repair: float = MAX_ROTATION_REPAIR,
        depth_range: tuple[float, float] = PLAUSIBLE_DEPTH_M,
    ) -> Pose:
        """Reject bad poses with a message naming ``name``; repair rotations slightly off SO(3).

        Real annotations hold rotations orthonormal to about 1e-2 only (LM-O), so a rotation whose
        ``max |RRᵀ - I|`` (or ``|det R - 1|``) lies in ``(atol, max_repair]`` is replaced by the nearest rotation
        (SVD) with a logged warning; a larger deviation is an error naming the value, and a reflection
        (``det R < 0``) is reported as such, with its determinant.

        Args:
            name: how the messages name this input (e.g. ``"init pose of object 5"``).
            in_front: also require the object origin in front of the camera, at a plausible depth:
                ``depth_range[0] ≤ t_z ≤ depth_range[1]`` metres. The messages hint at units (a ``t`` in
                metres read as millimetres lands within millimetres of the camera, the reverse kilometres away).
            atol: deviation from SO(3) accepted as is.
            max_repair: largest deviation repaired (:data:`MAX_ROTATION_REPAIR`); above it, an error.
            depth_range: plausible ``(min, max)`` object depth in metres (:data:`PLAUSIBLE_DEPTH_M`).

        Returns:
            ``self``, or a new pose with the repaired rotations (same dtype and device).

        Raises:
            ValueError: NaN/inf values, a reflection, a rotation off SO(3) by more than ``max_repair``, or
                (with ``in_front``) ``t_z`` behind the camera or outside ``depth_range``.

        Example:
            >>> R = torch.eye(3, dtype=torch.float64) + 0.005  # off SO(3) by 1e-2, as in LM-O annotations
            >>> fixed = Pose(R, [0.0, 0.0, 0.6]).check("init pose")
            >>> bool(torch.allclose(fixed.R @ fixed.R.T, torch.eye(3, dtype=torch.float64)))
            True
        """
        R, t = self.numpy()
        bad = ~np.isfinite(R).all(axis=(-1, -2)) | ~np.isfinite(t).all(axis=-1)
        if np.any(bad):
            raise ValueError(f"{name} contains NaN or inf (at batch index {_first_index(bad)})")
        err = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max(axis=(-1, -2))
        det = np.linalg.det(R)
        reflection = det < 0
        if np.any(reflection):
            i = _first_index(reflection)
            raise ValueError(
                f"{name} is a reflection, not a rotation: det R = {_at(det, i):.4f} (at batch index {i}); "
                "a rotation has det +1 (a flipped axis or a left-handed frame?)"
            )
        off = np.maximum(err, np.abs(det - 1.0))
        if np.any(off > max_repair):
            i = _first_index(off > max_repair)
            raise ValueError(
                f"{name} has a rotation that is not orthonormal with det +1 (at batch index {i}: "
                f"|RRᵀ - I| = {_at(err, i):.2e}, det = {_at(det, i):.4f}; up to {max_repair:g} is repaired)"
            )
        out = self
        if np.any(off > atol):
            i = _first_index(off > atol)
            fixed = np.where((off > atol)[..., None, None], _nearest_rotation(R), R)
            log.warning(
                "%s: rotation off SO(3) by %.2e (|RRᵀ - I| = %.2e, det = %.6f at batch index %s; %d of %d): "
                "replaced by the nearest rotation",
                name,
                _at(off, i),
                _at(err, i),
                _at(det, i),
                i,
                int(np.count_nonzero(off > atol)),
                int(np.size(off)),
            )
            out = Pose(torch.as_tensor(fixed, dtype=self.R.dtype, device=self.R.device), self.t)
        if in_front:
            z = t[..., 2]
            behind = z <= 0
            if np.any(behind):
                i = _first_index(behind)
                raise ValueError(
                    f"{name} puts the object behind the camera (t_z = {_at(z, i):.4f} m at batch index {i}); "
                    "t is in metres here and in millimetres in BOP files: check the sign and the units of t"
                )
            near, far = depth_range
            if np.any(z < near):
                i = _first_index(z < near)
                raise ValueError(
                    f"{name} puts the object implausibly close to the camera (t_z = {_at(z, i):.6f} m at batch "
                    f"index {i}, below {near:g} m): is t in metres where millimetres are expected (BOP files)?"
                )
            if np.any(z > far):
                i = _first_index(z > far)
                raise ValueError(
                    f"{name} puts the object implausibly far from the camera (t_z = {_at(z, i):.1f} m at batch "
                    f"index {i}, beyond {far:g} m): is t in millimetres where metres are expected?"
                )
        return out

    def __repr__(self) -> str:
        if len(self.batch_shape) == 0:
            R, t = self.numpy()
            return f"Pose(R={np.round(R, 4).tolist()}, t={np.round(t, 4).tolist()})"
        return f"Pose(batch_shape={tuple(self.batch_shape)}, dtype={self.dtype})"


def _at(values: np.ndarray, index: Any) -> float:
    """``values[index]`` as a float (``index`` from :func:`_first_index`; ``()`` for an unbatched value)."""
    return float(np.asarray(values)[index])


def _nearest_rotation(R: np.ndarray) -> np.ndarray:
    """The rotations nearest (Frobenius) to ``(..., 3, 3)`` matrices with ``det > 0``: ``U diag(1, 1, d) Vᵀ``."""
    U, _, Vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(U @ Vt))
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return np.asarray(U @ Vt, dtype=np.float64)


def _first_index(mask: np.ndarray) -> Any:
    mask = np.asarray(mask)
    if mask.ndim == 0:
        return ()
    return tuple(int(i) for i in np.argwhere(mask)[0])
