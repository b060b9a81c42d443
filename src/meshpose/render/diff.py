"""Differentiable rendering in torch: a soft rasteriser with gradients to the pose (and the vertex colours).

This is the one differentiable renderer of meshpose, shared by every method that needs pose gradients through an
image (the self-supervised joint loss, ``meshpose adapt``, and later the abstract/contour refiners).

**Why hand-written.** The usual libraries (pytorch3d, nvdiffrast, kaolin) need compiled CUDA/C++ extensions that do
not install on the CPU-only machines this project runs its tests and training on, and the GL renderer
(:mod:`meshpose.render.gl`) has no gradients. The soft rasteriser below is plain torch (any device, float32 or
float64), so autograd gives exact gradients of what it renders; it never builds a dense pixels × faces tensor
(memory grows with the number of (pixel, face) pairs within the cut-off). Measured on one CPU thread, forward +
backward, ``sigma = 1``: a 64×64 crop with a 1000-face sphere covering half of it ≈ 80–100 ms (≈ 90k pairs);
128×128 with 2000 faces ≈ 220–260 ms; 8 crops of 64×64 ≈ 8 × one crop. Smaller ``sigma`` means fewer pairs.

**Formulation** (SoftRas, Liu et al. 2019, "Soft Rasterizer: A Differentiable Renderer for Image-based 3D
Reasoning"). For pixel ``p`` and projected triangle ``f_j``, with ``d_j`` the Euclidean distance (pixels) from the
pixel centre to the triangle and ``δ_j = +1`` inside, ``-1`` outside:

* probability map ``D_j(p) = sigmoid(δ_j d_j² / σ)``;
* silhouette ``A(p) = 1 − Π_j (1 − D_j(p))`` (accumulated as a sum of ``log(1 − D_j)``);
* foreground colour and depth: a softmax over the faces,
  ``w_j = D_j exp(z̃_j / γ) / Σ_k D_k exp(z̃_k / γ)``, with ``z̃_j`` the *normalised inverse depth* of the point of
  ``f_j`` under ``p``: ``(1/z − 1/z_max) / (1/z_min − 1/z_max)`` where ``z_min``, ``z_max`` are the depth range of
  the scene's vertices in that image. Nearer surfaces win; ``γ → 0`` is a z-buffer.
  The depth and colour of the point are interpolated perspective-correctly with the pixel's barycentrics, clamped
  to ``≥ 0`` and renormalised outside the triangle (a point of the triangle, as SoftRas does);
* background term: SoftRas puts the background into the softmax with a small fixed weight. Here the background
  enters by compositing the soft foreground over it with the silhouette as alpha,
  ``colour = A · Σ_j w_j C_j + (1 − A) · background``, which keeps the colour continuous at the cut-off and
  consistent with the silhouette (a pixel that is 30 % foreground shows 70 % background).

Choices and limits:

* **Culling.** Only faces whose pixel box (expanded by ``cutoff``) meets the image are visited; per face only the
  pixels of that box. Back-facing faces are *kept*: dropping them is only exact for closed meshes, and the depth
  softmax puts them behind the front faces anyway (they matter at the soft edge and in the silhouette).
* **Edges inside a surface.** As in SoftRas, a pixel on an edge shared by two faces is "half outside" both, so
  the silhouette dips below 1 along such edges where few layers overlap (a box face seen head-on: ≈ 0.997 on its
  diagonal with ``sigma = 0.5``, 0.75 for a single open quad). Dense meshes and back faces fill it in.
* **Cut-off.** Pairs farther than ``cutoff`` are dropped, so the image jumps by ``< 1e-4`` when a face's box
  gains or loses a pixel; gradients are exact between such events (they agree with central differences to
  ``1e-10`` in float64).
* **Near plane.** Faces with a vertex nearer than ``znear`` are dropped (no clipping), so a mesh that crosses the
  near plane shows a hole. An object entirely behind the camera in some image renders empty there; only a call in
  which *no* face of any object in any image is in front of ``znear`` raises (almost surely a convention error:
  ``obj_from_cam`` given for ``cam_from_obj``, or millimetres for metres).
* **Depth output** is the expected depth of the soft foreground (``Σ_j w_j z_j``), not multiplied by the
  silhouette, so weight a depth loss by the silhouette (it is 0 only where no face is within the cut-off).
* Textured meshes are rendered with colours sampled at the vertices (:meth:`DiffMesh.from_object`); texture detail
  finer than the decimated mesh is lost.
* Faces with a projected area under ``1e-6`` px² (seen edge-on) are skipped: their barycentrics are undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from meshpose.errors import MeshError
from meshpose.mesh.simplify import simplify_mesh
from meshpose.render.base import surface_data
from meshpose.types import ObjectModel

__all__ = ["DiffMesh", "SoftRasterSettings", "SoftRender", "render_soft"]

_CUTOFF_PROBABILITY = 1e-4  # D_j below this is treated as 0: the pixel does not see the face
_MIN_AREA2 = 1e-6  # twice the smallest projected face area (px²) that is rasterised


@dataclass(frozen=True)
class SoftRasterSettings:
    """How soft the rasteriser is.

    Args:
        sigma: edge softness in pixels² of the (crop) image: ``D_j = sigmoid(±d²/sigma)``. Around ``1`` for
            optimisation from a few pixels off; ``0.1`` or less approaches a hard rasteriser.
        gamma: temperature of the depth softmax, on normalised inverse depth in ``[0, 1]`` (0 = the farthest
            vertex of the image's scene, 1 = the nearest). Smaller is closer to a z-buffer.
        znear: metres; faces with a vertex nearer than this are dropped.
        cutoff: pixels; a pixel farther than this outside a triangle does not see it. ``None`` (default) derives
            it from ``sigma`` so that the dropped probabilities are below ``1e-4``:
            ``sqrt(sigma · ln((1 − 1e-4) / 1e-4))`` (≈ ``3.03 · sqrt(sigma)``).

    Raises:
        ValueError: a non-positive or non-finite value.
    """

    sigma: float = 1.0
    gamma: float = 1e-2
    znear: float = 0.01
    cutoff: float | None = None

    def __post_init__(self) -> None:
        for name in ("sigma", "gamma", "znear"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SoftRasterSettings.{name} must be finite and positive, got {value}")
        if self.cutoff is None:
            p = _CUTOFF_PROBABILITY
            object.__setattr__(self, "cutoff", math.sqrt(self.sigma * math.log((1.0 - p) / p)))
        elif not (math.isfinite(float(self.cutoff)) and self.cutoff >= 0):
            raise ValueError(f"SoftRasterSettings.cutoff must be finite and non-negative, got {self.cutoff}")

    @property
    def cutoff_px(self) -> float:
        """The cut-off distance in pixels (``cutoff``, resolved)."""
        return float(self.cutoff) if self.cutoff is not None else 0.0


@dataclass(frozen=True, eq=False)
class DiffMesh:
    """A triangle mesh ready for :func:`render_soft`.

    Args:
        vertices: ``(V, 3)`` float vertex positions in the object frame, metres.
        faces: ``(F, 3)`` int64 vertex indices (other integer dtypes are converted).
        colors: ``(V, 3)`` float vertex colours (albedo) in ``[0, 1]``; may require grad.

    Raises:
        ValueError: wrong shapes, non-finite vertices or colours, no faces, or a face index out of range.
    """

    vertices: Tensor
    faces: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        v, f, c = self.vertices, self.faces, self.colors
        if not isinstance(v, Tensor) or v.ndim != 2 or v.shape[1] != 3 or not v.is_floating_point():
            raise ValueError(f"DiffMesh vertices must be a float tensor of shape (V, 3), got {_describe(v)}")
        if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[1] != 3 or f.is_floating_point() or len(f) == 0:
            raise ValueError(f"DiffMesh faces must be a non-empty integer tensor of shape (F, 3), got {_describe(f)}")
        if not isinstance(c, Tensor) or c.shape != v.shape or not c.is_floating_point():
            raise ValueError(f"DiffMesh colors must be a float tensor of shape {tuple(v.shape)}, got {_describe(c)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("DiffMesh vertices contain NaN or inf")
        if not bool(torch.isfinite(c.detach()).all()):
            raise ValueError("DiffMesh colors contain NaN or inf")
        lo, hi = int(f.min()), int(f.max())
        if lo < 0 or hi >= len(v):
            raise ValueError(f"DiffMesh faces index vertices {lo}..{hi}, but there are {len(v)} vertices")
        if f.dtype != torch.int64:
            object.__setattr__(self, "faces", f.to(torch.int64))

    @classmethod
    def from_object(cls, obj: ObjectModel, max_faces: int = 2000) -> DiffMesh:
        """The render mesh of ``obj``, decimated to at most ``max_faces`` faces, with vertex colours.

        Decimation uses :func:`meshpose.mesh.simplify.simplify_mesh` (which transfers vertex colours, face colours
        and textures to the new surface). Vertices are split where face colours differ (via
        :func:`meshpose.render.base.surface_data`, so the albedo is the GL renderer's); a textured mesh gets its
        texture sampled bilinearly (wrapped) at the vertex uvs, times the material tint. Nothing is cached.

        Args:
            obj: the object model (its ``render_mesh`` is used).
            max_faces: face budget, ``≥ 4`` (a budget the decimator cannot reach is doubled, up to 8×; beyond that the
                render mesh is used as it is).

        Returns:
            A float32 :class:`DiffMesh` on the CPU.
        """
        mesh = obj.render_mesh
        budget = max_faces
        while len(mesh.faces) > budget:
            try:
                mesh = simplify_mesh(mesh, budget)
            except MeshError:  # a budget the decimator cannot reach (creases kept): double it, up to 8×
                if budget >= 8 * max_faces:
                    break  # the render mesh as it is
                budget *= 2
        data = surface_data(mesh)
        colors = data.colors[:, :3].astype(np.float64) / 255.0
        if data.textured:
            assert data.uvs is not None and data.texture is not None
            colors = colors * _sample_texture(data.texture, data.uvs.astype(np.float64))
        return cls(
            torch.as_tensor(data.positions, dtype=torch.float32),
            torch.as_tensor(data.faces.astype(np.int64)),
            torch.as_tensor(colors, dtype=torch.float32),
        )

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


@dataclass
class SoftRender:
    """What :func:`render_soft` returns (all differentiable).

    Args:
        silhouette: ``(B, H, W)`` soft coverage in ``[0, 1]``.
        depth: ``(B, H, W)`` metres, the expected depth of the soft foreground; 0 where no face is within the
            cut-off (weight depth losses by ``silhouette``).
        color: ``(B, H, W, 3)`` in ``[0, 1]``: the foreground colour composited over the background with
            ``silhouette`` as alpha.
        instance: ``(B, H, W, N)`` soft ownership of each object: the share of the depth softmax of object ``n``
            times ``silhouette`` (sums to ``silhouette`` over ``N``).
    """

    silhouette: Tensor
    depth: Tensor
    color: Tensor
    instance: Tensor


def render_soft(
    meshes: Sequence[DiffMesh],
    R: Tensor,
    t: Tensor,
    K: Tensor,
    size: tuple[int, int],
    settings: SoftRasterSettings | None = None,
    background: Tensor | None = None,
) -> SoftRender:
    """Soft-rasterise ``N`` objects into ``B`` images (crops), differentiably in ``R``, ``t`` and vertex colours.

    Objects occlude each other through the soft z-order (the depth softmax). Computation follows the dtype and
    device of ``R`` (vertices and colours are cast to it); gradients flow to ``R``, ``t``, ``K`` and the meshes'
    ``colors``.

    Args:
        meshes: the ``N`` objects of every image.
        R: ``(B, N, 3, 3)`` rotations of ``cam_from_obj`` (``x_cam = R @ x_obj + t``).
        t: ``(B, N, 3)`` translations of ``cam_from_obj``, metres.
        K: ``(B, 3, 3)`` intrinsics of each image, OpenCV convention (pixel centres at integer coordinates).
        size: ``(H, W)`` image size in pixels.
        settings: softness (default :class:`SoftRasterSettings()`).
        background: background colour ``(3,)`` or ``(B, 3)``, or a background image ``(B, H, W, 3)``, in ``[0, 1]``
            (default black, as the GL renderer).

    Returns:
        The :class:`SoftRender`.

    Raises:
        ValueError: no meshes, shapes that do not match, NaN/inf in ``R``, ``t``, ``K`` or ``background``, a
            non-positive size, or no face of any object in front of ``znear`` in any image.

    Example:
        >>> import trimesh
        >>> box = trimesh.creation.box((0.1, 0.1, 0.1))
        >>> mesh = DiffMesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces),
        ...                 torch.full((8, 3), 0.5))
        >>> K = torch.tensor([[[100.0, 0.0, 15.5], [0.0, 100.0, 15.5], [0.0, 0.0, 1.0]]])
        >>> out = render_soft([mesh], torch.eye(3)[None, None], torch.tensor([[[0.0, 0.0, 0.5]]]), K, (32, 32))
        >>> round(float(out.silhouette[0, 8, 16]), 3), round(float(out.depth[0, 8, 16]), 3)
        (1.0, 0.45)
    """
    settings = settings if settings is not None else SoftRasterSettings()
    H, W = _check_size(size)
    B, N = _check_pose_inputs(meshes, R, t, K)
    dtype, device = R.dtype, R.device
    K = K.to(dtype)
    bg = _background(background, B, H, W, dtype, device)

    # Packed scene: every object's vertices in the camera frame of every image, faces with offsets.
    cam_vertices, faces, colors, face_obj = [], [], [], []
    offset = 0
    for n, mesh in enumerate(meshes):
        v = mesh.vertices.to(device=device, dtype=dtype)
        cam_vertices.append(torch.einsum("bij,vj->bvi", R[:, n], v) + t[:, n, None, :])
        faces.append(mesh.faces.to(device) + offset)
        colors.append(mesh.colors.to(device=device, dtype=dtype))
        face_obj.append(torch.full((mesh.num_faces,), n, dtype=torch.int64, device=device))
        offset += len(v)
    X = torch.cat(cam_vertices, 1)  # (B, V, 3)
    face_index = torch.cat(faces)  # (F, 3)
    vertex_color = torch.cat(colors)  # (V, 3)
    obj_of_face = torch.cat(face_obj)  # (F,)

    feat, keep, boxes, inv_lo, inv_scale = _face_setup(X, face_index, vertex_color, K, H, W, settings)
    n_faces = face_index.shape[0]
    pair_face, pair_xy = _enumerate_pairs(keep, boxes)
    image_of_pair = torch.div(pair_face, n_faces, rounding_mode="floor")
    pix = (image_of_pair * H + pair_xy[1]) * W + pair_xy[0]  # flat index into (B, H, W)
    obj_of_pair = obj_of_face[pair_face % n_faces]

    n_pix = B * H * W
    z_lo, z_scale = inv_lo[image_of_pair], inv_scale[image_of_pair] / settings.gamma

    log_d, log_1m_d, inv_z, col = _pair_terms(feat, pair_face, pair_xy, settings.sigma)
    logit = log_d + (inv_z - z_lo) * z_scale
    log_empty = torch.zeros(n_pix, dtype=dtype, device=device).index_add(0, pix, log_1m_d)
    silhouette = -torch.expm1(log_empty)
    with torch.no_grad():
        peak = torch.full((n_pix,), -torch.inf, dtype=dtype, device=device)
        peak = peak.scatter_reduce(0, pix, logit, reduce="amax", include_self=True)[pix]
    weight = torch.exp(logit - peak)  # ≤ 1, and = 1 for the best face of each covered pixel
    sums = torch.zeros(n_pix, 5, dtype=dtype, device=device).index_add(
        0, pix, torch.cat([weight[None], (weight / inv_z)[None], weight * col]).t()
    )
    owned = torch.zeros(n_pix * N, dtype=dtype, device=device).index_add(0, pix * N + obj_of_pair, weight)
    total = sums[:, 0]
    denom = torch.where(total > 0, total, torch.ones_like(total))[:, None]
    fg = sums[:, 1:] / denom  # depth, colour of the soft foreground
    alpha = silhouette[:, None]
    color = alpha * fg[:, 1:] + (1.0 - alpha) * bg.reshape(n_pix, 3)
    instance = owned.reshape(n_pix, N) / denom * alpha
    return SoftRender(
        silhouette=silhouette.reshape(B, H, W),
        depth=fg[:, 0].reshape(B, H, W),
        color=color.reshape(B, H, W, 3),
        instance=instance.reshape(B, H, W, N),
    )


# ----------------------------------------------------------------------------------------------------------
# Steps of render_soft
# ----------------------------------------------------------------------------------------------------------
# Columns of the per-face feature table gathered for every (pixel, face) pair. Vertex-indexed columns are stored
# "rolled": column k holds vertex (k + 2) % 3, the vertex opposite edge k (from vertex k to k + 1), so the
# barycentric of column k is edge k's edge function divided by twice the area.
_COLUMNS = [3, 3, 3, 3, 3, 1, 3, 9]  # vx, vy, ex, ey, 1/|e|², 1/(2·area), 1/z, colour/z (3 vertices × RGB)


def _face_setup(
    X: Tensor, faces: Tensor, vertex_color: Tensor, K: Tensor, H: int, W: int, settings: SoftRasterSettings
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Project the vertices; per (image, face) features, the faces to rasterise and their pixel boxes.

    Returns:
        ``feat (B·F, 28)`` (see the column slices), ``keep (B·F,)`` bool, ``boxes (B·F, 4)`` int64 inclusive pixel
        box ``x0, y0, x1, y1``, and per image the normalisation of inverse depth ``inv_lo (B,)``,
        ``inv_scale (B,)`` so that ``z̃ = (1/z − inv_lo) · inv_scale``.
    """
    B = X.shape[0]
    z = X[..., 2]
    front = z > settings.znear  # (B, V)
    if not bool(front[:, faces].all(-1).any()):
        raise ValueError(
            f"render_soft: every face of every object is behind the camera or nearer than znear={settings.znear} m "
            f"(vertex z from {float(z.min()):.4g} to {float(z.max()):.4g} m): are R, t cam_from_obj in metres?"
        )
    zc = torch.where(front, z, torch.full_like(z, settings.znear))
    x, y = X[..., 0] / zc, X[..., 1] / zc
    u = K[:, 0, 0, None] * x + K[:, 0, 1, None] * y + K[:, 0, 2, None]
    v = K[:, 1, 1, None] * y + K[:, 1, 2, None]

    fu, fv, fz = u[:, faces], v[:, faces], zc[:, faces]  # (B, F, 3)
    ex, ey = fu.roll(-1, -1) - fu, fv.roll(-1, -1) - fv  # edge k: vertex k → k + 1
    area2 = ex[..., 0] * ey[..., 1] - ey[..., 0] * ex[..., 1]  # (B, F), twice the signed area
    keep = front[:, faces].all(-1) & (area2.detach().abs() > _MIN_AREA2)
    safe_area2 = torch.where(keep, area2, torch.ones_like(area2))
    e2 = ex * ex + ey * ey
    inv_e2 = 1.0 / torch.where(e2 > 0, e2, torch.ones_like(e2))
    inv_z = 1.0 / fz
    color_z = vertex_color[faces] * inv_z[..., None]  # (B, F, 3, 3): colour / z per vertex
    feat = torch.cat(
        [fu, fv, ex, ey, inv_e2, (1.0 / safe_area2)[..., None], inv_z.roll(1, -1), color_z.roll(1, -2).flatten(-2)],
        -1,
    ).reshape(B * faces.shape[0], 28)
    feat = feat.t().contiguous()  # (28, B·F): gathered rows stay contiguous, which elementwise ops need to be fast

    with torch.no_grad():
        reach = settings.cutoff_px
        x0 = torch.ceil(fu.amin(-1) - reach).clamp(0, W)
        x1 = torch.floor(fu.amax(-1) + reach).clamp(-1, W - 1)
        y0 = torch.ceil(fv.amin(-1) - reach).clamp(0, H)
        y1 = torch.floor(fv.amax(-1) + reach).clamp(-1, H - 1)
        boxes = torch.stack([x0, y0, x1, y1], -1).to(torch.int64).reshape(-1, 4)
        keep = keep.reshape(-1) & (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    # normalised inverse depth per image, over the vertices in front of znear (differentiable, so the gradient is
    # that of the image rendered; the offset inv_lo cancels in the softmax, only the scale matters)
    inv = 1.0 / zc
    inv_hi = torch.where(front, inv, torch.full_like(inv, -torch.inf)).amax(1)
    inv_lo = torch.where(front, inv, torch.full_like(inv, torch.inf)).amin(1)
    inv_lo = torch.where(torch.isfinite(inv_lo), inv_lo, torch.zeros_like(inv_lo))
    inv_hi = torch.where(torch.isfinite(inv_hi), inv_hi, torch.ones_like(inv_hi))
    span = torch.maximum(inv_hi - inv_lo, 1e-3 * inv_hi.abs() + 1e-12)
    return feat, keep, boxes, inv_lo, 1.0 / span


def _enumerate_pairs(keep: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """All (pixel, face) pairs with the pixel inside the face's box, vectorised (no loop over faces).

    Returns:
        ``pair_face (P,)`` index into ``B·F`` and ``pair_xy (2, P)`` the pixel's integer coordinates (int64).
    """
    faces = torch.nonzero(keep).squeeze(1)  # (F',) indices into B·F
    box = boxes[faces]
    nx = box[:, 2] - box[:, 0] + 1
    ny = box[:, 3] - box[:, 1] + 1
    counts = nx * ny
    pair_face = torch.repeat_interleave(faces, counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(pair_face.shape[0], device=keep.device) - torch.repeat_interleave(starts, counts)
    nx_p = torch.repeat_interleave(nx, counts)
    box_p = torch.repeat_interleave(box[:, :2], counts, dim=0)
    px = box_p[:, 0] + local % nx_p
    py = box_p[:, 1] + torch.div(local, nx_p, rounding_mode="floor")
    return pair_face, torch.stack([px, py])


def _pair_terms(
    feat: Tensor, pair_face: Tensor, pair_xy: Tensor, sigma: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per (pixel, face) pair: ``log D``, ``log(1 − D)``, the inverse depth and the colour ``(3, P)`` there.

    The colour and depth are those of the point of the triangle with the pixel's barycentrics clamped to ``≥ 0``
    and renormalised (the pixel itself inside the triangle), interpolated perspective-correctly.
    """
    vx, vy, ex, ey, inv_e2, inv_area2, inv_zv, color_z = torch.split(feat[:, pair_face], _COLUMNS)
    p = pair_xy.to(feat.dtype)
    dx = p[:1] - vx  # (3, P): pixel minus vertex k
    dy = p[1:] - vy
    bary = (ex * dy - ey * dx) * inv_area2  # row k: barycentric of vertex (k + 2) % 3
    inside = (bary >= 0).all(0)
    along = ((dx * ex + dy * ey) * inv_e2).clamp(0.0, 1.0)
    rx, ry = dx - along * ex, dy - along * ey
    d2 = (rx * rx + ry * ry).amin(0)  # squared distance to the triangle's boundary
    x = torch.where(inside, d2, -d2) * (1.0 / sigma)
    weights = bary.clamp_min(0.0)
    weights = weights / weights.sum(0)  # the weights sum to 1, so one of them is > 0
    inv_z = (weights * inv_zv).sum(0)  # perspective-correct: 1/z is affine in screen space
    wz = weights / inv_z
    col = wz[:1] * color_z[0:3] + wz[1:2] * color_z[3:6] + wz[2:] * color_z[6:9]
    return F.logsigmoid(x), F.logsigmoid(-x), inv_z, col


# ----------------------------------------------------------------------------------------------------------
# Input checks and small helpers
# ----------------------------------------------------------------------------------------------------------
def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"render_soft size must be (H, W), got {size!r}") from e
    if H <= 0 or W <= 0 or tuple(size) != (H, W):
        raise ValueError(f"render_soft size must be two positive integers (H, W), got {size!r}")
    return H, W


def _check_pose_inputs(meshes: Sequence[DiffMesh], R: Tensor, t: Tensor, K: Tensor) -> tuple[int, int]:
    """``(B, N)`` after checking shapes and finiteness of the pose and camera inputs."""
    if len(meshes) == 0:
        raise ValueError("render_soft needs at least one mesh")
    if not all(isinstance(m, DiffMesh) for m in meshes):
        raise ValueError("render_soft meshes must be DiffMesh instances (see DiffMesh.from_object)")
    N = len(meshes)
    if not isinstance(R, Tensor) or not R.is_floating_point() or R.ndim != 4 or R.shape[1:] != (N, 3, 3):
        raise ValueError(f"render_soft R must be a float tensor of shape (B, {N}, 3, 3), got {_describe(R)}")
    B = R.shape[0]
    if not isinstance(t, Tensor) or t.shape != (B, N, 3):
        raise ValueError(f"render_soft t must have shape ({B}, {N}, 3) like R, got {_describe(t)}")
    if not isinstance(K, Tensor) or K.shape != (B, 3, 3):
        raise ValueError(f"render_soft K must have shape ({B}, 3, 3), got {_describe(K)}")
    for name, x in (("R", R), ("t", t), ("K", K)):
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError(f"render_soft {name} contains NaN or inf (a NaN pose?)")
    if B == 0:
        raise ValueError("render_soft got an empty batch (B = 0)")
    return B, N


def _background(background: Tensor | None, B: int, H: int, W: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The background as ``(B, H, W, 3)`` (a broadcast view)."""
    if background is None:
        return torch.zeros(1, 1, 1, 3, dtype=dtype, device=device).expand(B, H, W, 3)
    bg = background.to(device=device, dtype=dtype)
    if bg.shape == (3,):
        bg = bg[None, None, None]
    elif bg.shape == (B, 3):
        bg = bg[:, None, None]
    elif bg.shape != (B, H, W, 3):
        raise ValueError(f"render_soft background must be (3,), ({B}, 3) or ({B}, {H}, {W}, 3), got {_describe(bg)}")
    if not bool(torch.isfinite(bg.detach()).all()):
        raise ValueError("render_soft background contains NaN or inf")
    return bg.expand(B, H, W, 3)


def _sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear, wrapped sample of an ``(Ht, Wt, C)`` uint8 texture at trimesh uvs ``(M, 2)`` (v = 0 is the bottom
    row); ``(M, 3)`` float64 in ``[0, 1]``."""
    ht, wt = texture.shape[:2]
    x = uv[:, 0] * wt - 0.5
    y = (1.0 - uv[:, 1]) * ht - 0.5
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    ax, ay = (x - ix)[:, None], (y - iy)[:, None]
    tex = texture[..., :3].astype(np.float64) / 255.0

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return tex[np.mod(r, ht), np.mod(c, wt)]

    top = at(iy, ix) * (1.0 - ax) + at(iy, ix + 1) * ax
    bottom = at(iy + 1, ix) * (1.0 - ax) + at(iy + 1, ix + 1) * ax
    return top * (1.0 - ay) + bottom * ay
