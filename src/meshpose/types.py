"""Core data types of meshpose: cameras, poses, object models, observations and results.

Conventions (see ``DESIGN.md``; they are fixed here and never re-decided elsewhere):

* Units are metres everywhere.
* Cameras are OpenCV pinholes (x right, y down, z forward). Pixel ``(u, v)`` with integer coordinates is the
  *centre* of a pixel, so an image of ``width`` pixels spans ``[-0.5, width - 0.5]``.
* A pose is ``cam_from_obj``: ``x_cam = R @ x_obj + t``.
* The se(3) tangent order is ``[v, ω]`` (translation part first, then the rotation vector), and
  ``Pose.exp(xi)`` is the true SE(3) exponential (``t = V(ω) v``).

The types are frozen dataclasses of arrays/tensors; none is an ``nn.Module`` and none does work at import time.
This module sits at the bottom of the import graph: it imports no other meshpose module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import trimesh

__all__ = [
    "Camera",
    "ObjectModel",
    "Observation",
    "Pose",
    "PoseEstimate",
    "RefineInfo",
    "RefineResult",
]


# ----------------------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Camera:
    """An OpenCV pinhole camera: intrinsics ``K`` (3×3, pixels) and the image size.

    Args:
        K: ``(3, 3)`` intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels (stored as float64).
        width: image width in pixels.
        height: image height in pixels.

    Raises:
        ValueError: if ``K`` is not a finite 3×3 upper-triangular matrix with positive focal lengths, or the size
            is not positive.

    Example:
        >>> cam = Camera.from_fxfycxcy(500.0, 500.0, 319.5, 239.5, width=640, height=480)
        >>> crop = cam.crop((160.0, 120.0, 480.0, 360.0), width=128, height=96)
        >>> round(crop.fx, 3), crop.width, crop.height
        (200.0, 128, 96)
    """

    K: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        K = np.array(self.K, dtype=np.float64, copy=True)
        if K.shape != (3, 3):
            raise ValueError(f"camera K must be 3×3, got shape {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError(f"camera K contains NaN or inf: {K.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"camera K has a non-positive focal length (fx={K[0, 0]}, fy={K[1, 1]})")
        if abs(K[1, 0]) > 1e-9 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9 or abs(K[2, 2] - 1.0) > 1e-9:
            raise ValueError(f"camera K must be upper triangular with K[2,2] = 1, got {K.tolist()}")
        width, height = int(self.width), int(self.height)
        if width != self.width or height != self.height or width <= 0 or height <= 0:
            raise ValueError(f"camera size must be positive integers, got width={self.width}, height={self.height}")
        K.flags.writeable = False
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)

    @classmethod
    def from_fxfycxcy(cls, fx: float, fy: float, cx: float, cy: float, *, width: int, height: int) -> Camera:
        """Build a camera from focal lengths and principal point (pixels)."""
        return cls(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), width, height)

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    def crop_affine(self, box: ArrayLike, width: int, height: int | None = None) -> np.ndarray:
        """The 2×3 affine map from this camera's pixels to the crop's pixels (for ``cv2.warpAffine``).

        Args:
            box: ``(x0, y0, x1, y1)`` in this camera's continuous pixel coordinates (the full image is
                ``(-0.5, -0.5, width - 0.5, height - 0.5)``); ``x1 > x0``, ``y1 > y0``.
            width: crop width in pixels.
            height: crop height in pixels (default: ``width``).

        Returns:
            ``(2, 3)`` float64 matrix ``A`` with ``[u', v'] = A @ [u, v, 1]``. Pass it to ``cv2.warpAffine``
            (which samples at pixel centres, as this convention does) to cut the image that matches
            :meth:`crop`.
        """
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
        height = width if height is None else height
        if not (x1 > x0 and y1 > y0) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"crop box must be finite with x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)}")
        if width <= 0 or height <= 0:
            raise ValueError(f"crop size must be positive, got width={width}, height={height}")
        sx = width / (x1 - x0)
        sy = height / (y1 - y0)
        # The box edge x0 maps to the crop's left pixel edge -0.5 and x1 to width - 0.5: u' = (u - x0) sx - 0.5.
        return np.array([[sx, 0.0, -x0 * sx - 0.5], [0.0, sy, -y0 * sy - 0.5]])

    def crop(self, box: ArrayLike, width: int, height: int | None = None) -> Camera:
        """The camera that sees the region ``box`` of this camera's image, resampled to ``width × height``.

        A crop is an ordinary :class:`Camera` (shifted and scaled ``K``); rendering with it gives the image that
        ``cv2.warpAffine(image, self.crop_affine(box, width, height), (width, height))`` cuts.

        Args:
            box: ``(x0, y0, x1, y1)`` in continuous pixel coordinates of this camera (see :meth:`crop_affine`).
                It may extend beyond the image.
            width: crop width in pixels.
            height: crop height in pixels (default: ``width``).
        """
        height = width if height is None else height
        A = self.crop_affine(box, width, height)
        K = np.eye(3)
        K[:2] = A @ self.K
        return Camera(K, width, height)

    def scaled(self, factor: float) -> Camera:
        """This camera with the image resampled by ``factor`` (e.g. 0.5 halves both sides)."""
        w = max(1, round(self.width * factor))
        h = max(1, round(self.height * factor))
        return self.crop((-0.5, -0.5, self.width - 0.5, self.height - 0.5), w, h)

    def K_tensor(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """``K`` as a ``(3, 3)`` tensor."""
        return torch.tensor(self.K, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return (
            f"Camera(fx={self.fx:.3f}, fy={self.fy:.3f}, cx={self.cx:.3f}, cy={self.cy:.3f}, "
            f"width={self.width}, height={self.height})"
        )


# ----------------------------------------------------------------------------------------------------------
# SE(3) maths used by Pose. They live here (not in geometry/) because types.py is the bottom of the import
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
    def check(self, name: str = "pose", *, in_front: bool = False, atol: float = 1e-4) -> Pose:
        """Reject bad poses with a message naming ``name``; returns ``self`` for chaining.

        Args:
            name: how the error message names this input (e.g. ``"init pose of object 5"``).
            in_front: also require the object origin to lie in front of the camera (``t_z > 0``).
            atol: tolerance on ``RᵀR = I`` and ``det R = 1``.

        Raises:
            ValueError: NaN/inf values, a non-rotation ``R``, or (with ``in_front``) ``t_z ≤ 0``.
        """
        R, t = self.numpy()
        bad = ~np.isfinite(R).all(axis=(-1, -2)) | ~np.isfinite(t).all(axis=-1)
        if np.any(bad):
            raise ValueError(f"{name} contains NaN or inf (at batch index {_first_index(bad)})")
        err = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max(axis=(-1, -2))
        det = np.linalg.det(R)
        nonrot = (err > atol) | (np.abs(det - 1.0) > atol)
        if np.any(nonrot):
            i = _first_index(nonrot)
            raise ValueError(
                f"{name} has a rotation that is not orthonormal with det +1 (at batch index {i}: "
                f"|RRᵀ - I| = {np.asarray(err)[i] if np.ndim(err) else err:.2e}, "
                f"det = {np.asarray(det)[i] if np.ndim(det) else det:.4f})"
            )
        if in_front:
            behind = t[..., 2] <= 0
            if np.any(behind):
                i = _first_index(behind)
                z = np.asarray(t[..., 2])[i] if np.ndim(behind) else t[2]
                raise ValueError(f"{name} puts the object behind the camera (t_z = {z:.4f} m at batch index {i})")
        return self

    def __repr__(self) -> str:
        if len(self.batch_shape) == 0:
            R, t = self.numpy()
            return f"Pose(R={np.round(R, 4).tolist()}, t={np.round(t, 4).tolist()})"
        return f"Pose(batch_shape={tuple(self.batch_shape)}, dtype={self.dtype})"


def _first_index(mask: np.ndarray) -> Any:
    mask = np.asarray(mask)
    if mask.ndim == 0:
        return ()
    return tuple(int(i) for i in np.argwhere(mask)[0])


# ----------------------------------------------------------------------------------------------------------
# Objects and observations
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ObjectModel:
    """A rigid object: its mesh and what metrics and losses need.

    Build it with ``meshpose.mesh.load_object_model`` (from a file) or ``make_object_model`` (from a mesh).

    Args:
        obj_id: integer id (BOP ``obj_id``).
        mesh: full-resolution ``trimesh.Trimesh`` in metres, in the object frame, with vertex colours or a
            texture when the source has them.
        render_mesh: simplified copy (≤ 20k faces) used by renderers.
        diameter: largest distance between two vertices, metres.
        symmetries: ``(S, 4, 4)`` float64 transforms ``obj_from_obj`` under which the object looks the same;
            the identity comes first and is always present (``S ≥ 1``).
        points: ``(P, 3)`` float64 fixed sample of surface points (metres) for metrics and losses.
        name: free-form name (e.g. the file stem).
    """

    obj_id: int
    mesh: trimesh.Trimesh
    render_mesh: trimesh.Trimesh
    diameter: float
    symmetries: np.ndarray
    points: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        sym = np.asarray(self.symmetries, dtype=np.float64)
        if sym.ndim != 3 or sym.shape[1:] != (4, 4) or sym.shape[0] < 1:
            raise ValueError(f"object {self.obj_id}: symmetries must have shape (S, 4, 4), got {sym.shape}")
        if not np.allclose(sym[0], np.eye(4), atol=1e-9):
            raise ValueError(f"object {self.obj_id}: the first symmetry must be the identity")
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ValueError(f"object {self.obj_id}: points must have shape (P, 3), got {pts.shape}")
        if not (math.isfinite(self.diameter) and self.diameter > 0):
            raise ValueError(f"object {self.obj_id}: diameter must be positive, got {self.diameter}")
        object.__setattr__(self, "symmetries", sym)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "diameter", float(self.diameter))

    @property
    def is_symmetric(self) -> bool:
        return len(self.symmetries) > 1

    def __repr__(self) -> str:
        return (
            f"ObjectModel(obj_id={self.obj_id}, name={self.name!r}, faces={len(self.mesh.faces)}, "
            f"render_faces={len(self.render_mesh.faces)}, diameter={self.diameter:.4f} m, "
            f"symmetries={len(self.symmetries)})"
        )


@dataclass(frozen=True, eq=False)
class Observation:
    """One image to refine poses in.

    Args:
        rgb: ``(H, W, 3)`` uint8 colour image.
        camera: the camera that took it; ``camera.width == W`` and ``camera.height == H``.
        depth: optional ``(H, W)`` float32 depth in metres (z along the optical axis); ``0`` = missing. NaN and
            inf values are read as missing.
        mask: optional ``(N, H, W)`` bool masks, one per object instance of the refinement call (a ``(H, W)``
            mask is taken as ``N = 1``); a method may use them to ignore clutter.

    Raises:
        ValueError: shapes or dtypes that do not match, negative depth, or an empty mask.
    """

    rgb: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        rgb = np.asarray(self.rgb)
        h, w = self.camera.height, self.camera.width
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"observation rgb must have shape (H, W, 3), got {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"observation rgb must be uint8, got {rgb.dtype}")
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"observation rgb is {rgb.shape[1]}×{rgb.shape[0]} but the camera is {w}×{h}")
        if self.depth is not None:
            depth = np.asarray(self.depth, dtype=np.float32)
            if depth.shape != (h, w):
                raise ValueError(f"observation depth must have shape {(h, w)}, got {depth.shape}")
            depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
            if np.any(depth < 0):
                raise ValueError(f"observation depth has negative values (min {depth.min():.4f} m)")
            object.__setattr__(self, "depth", depth)
        if self.mask is not None:
            mask = np.asarray(self.mask).astype(bool)
            if mask.ndim == 2:
                mask = mask[None]
            if mask.ndim != 3 or mask.shape[1:] != (h, w):
                raise ValueError(f"observation mask must have shape (N, {h}, {w}), got {np.shape(self.mask)}")
            empty = ~mask.reshape(len(mask), -1).any(1)
            if np.any(empty):
                raise ValueError(f"observation mask {int(np.argmax(empty))} is empty")
            object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "rgb", rgb)

    @property
    def has_depth(self) -> bool:
        return self.depth is not None


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PoseEstimate:
    """One pose hypothesis for one object instance (what ``estimate`` produces and results files hold).

    Args:
        obj_id: object id.
        pose: a single (unbatched) ``cam_from_obj`` :class:`Pose`.
        score: confidence, higher is better (method-specific scale).
        time_s: wall time spent on the image this estimate belongs to, seconds.
        info: method-specific extras.
    """

    obj_id: int
    pose: Pose
    score: float
    time_s: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RefineInfo:
    """Diagnostics of a refinement call (one entry per object instance where it says so).

    Args:
        timings: wall time per stage in seconds, e.g. ``{"render": 0.02, "flow": 0.01, "total": 0.05}``.
        converged: ``(N,)`` bool, whether each instance met the method's convergence test.
        failure: ``N`` entries: ``None`` where the instance refined normally, else a short reason (the returned
            pose of a failed instance is its input pose, or the best pose found before the failure).
        iterations: outer iterations that ran.
        extra: method-specific values (per-iteration scores, inlier counts, …).
    """

    timings: dict[str, float]
    converged: np.ndarray
    failure: list[str | None]
    iterations: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RefineResult:
    """The outcome of ``Refiner.refine``.

    Args:
        pose: ``(N,)`` refined ``cam_from_obj`` poses, one per object instance, in the order of the input. A
            method that keeps the best pose it visited returns that one, which may differ from ``history[-1]``.
        score: ``(N,)`` float64 quality score per instance, higher is better (method-specific scale; 0 for a
            failure).
        history: the ``(N,)`` poses after each outer iteration, ``history[0]`` being the initial poses.
        info: timings, convergence and failure reasons.
    """

    pose: Pose
    score: np.ndarray
    history: list[Pose]
    info: RefineInfo
