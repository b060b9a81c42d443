"""``jointloss``'s networks: a DenseFusion-style RGB-D pose estimator with spatial attention, and its refiner.

Joint-loss (issue 20) estimates the pose of an object from one RGB-D crop: per-pixel colour features and
per-point geometry features of the ``N`` sampled foreground pixels are weighted by a spatial-attention module,
fused per point, and every point votes for a pose with a confidence; the most confident vote wins. A refiner then
applies ``K`` residual corrections. Both are trained with labels (``meshpose.train.jointloss_losses``) or, later,
without them.

**Input** (:class:`JointInput`): the crop ``rgb`` ``(B, 3, h, w)`` in ``[0, 1]`` (the background is *not* zeroed:
``choose`` selects the pixels; the ImageNet normalisation is done *inside* the network, so every caller feeds plain
``[0, 1]`` colours), the flat indices ``choose`` ``(B, N)`` of the sampled pixels in ``h · w``, their back-projected
depth ``points`` ``(B, N, 3)`` (metres, OpenCV camera frame) and the object index ``obj_index`` ``(B,)``.

**Estimator** (:class:`JointLossEstimator`):

1. colour branch: a small U-Net (:class:`ColourEncoder`, strides 1 → 4 → 1) gives a ``colour_dim``-channel
   embedding per pixel, gathered at ``choose`` → ``(B, di, N)``;
2. geometry branch: a PointNet-style shared MLP (1×1 ``conv1d``) on the points *centred* by their mean (the mean is
   added back to the translations) → ``(B, dg, N)``;
3. spatial attention (:class:`PointSpatialAttention`, CBAM's spatial module): the max and mean over the channels of
   each branch's per-point features are scattered back to the points' pixels in an ``h × w`` grid (with an
   occupancy channel), a ``k × k`` conv + sigmoid gives a weight per pixel, gathered back per point; each branch's
   features are multiplied by their weights before fusion. *Why on the pixel grid and not a 1D conv over the point
   sequence:* the ``N`` points are an unordered random sample, so neighbours in the sequence are not neighbours in
   the image and a 1D kernel wider than one would mix unrelated points; scattering to the pixels gives the kernel
   true image neighbours, for both branches alike, and it works from gathered features only, so the refiner
   (which is given the gathered colour embeddings) uses the same module;
4. dense fusion (DenseFusion): per-point features at two depths ``[c₁ ‖ g₁]``, ``[c₂ ‖ g₂]``, a global feature
   (average-pooled over the points, broadcast back) → three per-point heads with one output per object: a
   quaternion (XYZW, roma's order, normalised; ``q`` and ``−q`` are the same rotation, every loss goes through the
   matrices so the sign never matters), a translation *offset* ``Δᵢ`` with ``tᵢ = pᵢ + Δᵢ`` (``pᵢ`` the observed
   point, camera frame) and a confidence ``cᵢ = sigmoid(·)``.

**Refiner** (:class:`JointLossRefiner`): input the estimator's gathered colour embeddings and the observed points
moved into the current estimate's object frame ``x_obj = Rᵀ (x − t)``; the same attention + fusion, then the
global feature alone → one residual ``(ΔR, Δt)`` per item, the pose of the object *in the current object frame*
(``x_obj ≈ ΔR m + Δt`` for model points ``m``). Composition, as DenseFusion's evaluation does it
(``my_mat_final = my_mat @ my_mat_2``)::

    x = R x_obj + t = R (ΔR m + Δt) + t   ⇒   R' = R ΔR,   t' = R Δt + t

(:func:`compose_residual`). The refiner's heads start at the identity residual.

``refiner_kind="dense"`` (the default; the seed's global regression is ``"regress"``): a learned-correspondence step.
Each observed point ``x_objᵢ`` is first paired with the foot of its nearest model surface sample's tangent plane,
``fᵢ`` (the model's surface samples and normals are a buffer of the weights: the refiner is object-specific, as
the heads are); the same attention + fusion sees ``[x_obj ‖ f − x_obj]``, and per-point heads (point features ‖
global feature, as the estimator's) give a correction ``δᵢ`` and a confidence: ``yᵢ = fᵢ + δᵢ`` is where the point
lies on the model, weighted by ``cᵢ = sigmoid(·) / (1 + (|fᵢ − x_objᵢ| / τ)²)`` (a Cauchy kernel on the
point-to-plane residual). The residual ``x_obj ≈ ΔR y + Δt`` is solved from them, differentiably: by default one
weighted Gauss–Newton step of the point-to-plane distance with a small point-to-point term
(:func:`point_to_plane_step`; ``refiner_solver="kabsch"``: the least-squares rigid fit :func:`rigid_fit`, which
converges more slowly — measured on held-out crops: ADD-S AUC 0.868 vs 0.875 at K = 2 with the same weights), and
composed as above. Untrained (``δ ≈ 0``) one step is one robust point-to-plane ICP step; training teaches the
corrections (colour can tell where closest points are wrong) and the confidences. *Why:* the regressed residual
of the global average-pooled feature did not learn in our CPU budget (2,650 steps of stage 1: its iterates were no
better than the identity from 5°–30° starts on held-out crops; a per-point coordinate head without the surface
pairing did not either in 400 steps), and a refiner that starts as robust ICP is useful from its first step.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import roma
import torch
import torch.nn.functional as F
import trimesh
from torch import nn

from meshpose.nets.checkpoint import WeightsSpec, load_model
from meshpose.nets.jointloss_blocks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColourEncoder,
    DenseFusion,
    JointInput,
    JointLossNetConfig,
    JointOutput,
    PointSpatialAttention,
    count_parameters,
    gather_points,
    mlp1d,
    quat_to_rotmat,
    select_object,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METHOD",
    "ColourEncoder",
    "Correspondences",
    "JointInput",
    "JointLossEstimator",
    "JointLossNet",
    "JointLossNetConfig",
    "JointLossRefiner",
    "JointOutput",
    "PointSpatialAttention",
    "best_pose",
    "compose_residual",
    "count_parameters",
    "load_jointloss_net",
    "point_to_plane_step",
    "quat_to_rotmat",
    "rigid_fit",
    "run_jointloss",
    "surface_samples",
]

#: how weights saved before ``refiner_kind`` existed are read (the seed's regressed refiner, metres)
_LEGACY = {"refiner_kind": "regress", "refiner_scale": 1.0}

#: the method name of ``jointloss`` checkpoints
METHOD = "jointloss"


def compose_residual(
    R: torch.Tensor, t: torch.Tensor, dR: torch.Tensor, dt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a residual expressed in the current object frame: ``R' = R ΔR``, ``t' = R Δt + t`` (DenseFusion).

    Args:
        R: ``(..., 3, 3)`` current rotations (``cam_from_obj``).
        t: ``(..., 3)`` current translations, metres.
        dR: ``(..., 3, 3)`` residual rotations (the object's pose in the current object frame).
        dt: ``(..., 3)`` residual translations, metres, current object frame.

    Returns:
        ``(R', t')`` the composed pose ``[R | t] · [ΔR | Δt]``.

    Example:
        >>> R = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, 1.5708]))
        >>> R2, t2 = compose_residual(R, torch.tensor([0.0, 0.0, 1.0]), torch.eye(3), torch.tensor([0.1, 0.0, 0.0]))
        >>> [round(float(x), 3) + 0.0 for x in t2]
        [0.0, 0.1, 1.0]
    """
    return R @ dR, (R @ dt[..., None])[..., 0] + t


def rigid_fit(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted least-squares rigid transform with ``dst ≈ R src + t`` (Kabsch, through
    :func:`roma.rigid_points_registration`; solved in float64 for a stable SVD gradient).

    Args:
        src: ``(B, N, 3)``; dst: ``(B, N, 3)`` corresponding points, metres.
        weights: ``(B, N)`` non-negative weights (not all zero).

    Returns:
        ``(R (B, 3, 3), t (B, 3))`` in the dtype of ``src``.

    Example:
        >>> src = torch.randn(1, 10, 3, dtype=torch.float64)
        >>> R_true = roma.rotvec_to_rotmat(torch.tensor([[0.1, 0.2, -0.3]], dtype=torch.float64))
        >>> R, t = rigid_fit(src, src @ R_true.transpose(1, 2) + 0.5, torch.ones(1, 10))
        >>> bool(torch.allclose(R, R_true)) and bool(torch.allclose(t, torch.full((1, 3), 0.5, dtype=torch.float64)))
        True
    """
    w = weights.double() + 1e-9
    R, t = roma.rigid_points_registration(src.double(), dst.double(), weights=w)
    return R.to(src.dtype), t.to(src.dtype)


class Correspondences(NamedTuple):
    """The dense refiner's per-point prediction (:meth:`JointLossRefiner.correspondences`).

    Args:
        x_obj: ``(B, N, 3)`` the observed points in the current object frame, metres.
        y: ``(B, N, 3)`` where the network puts them on the model (object frame), metres.
        normal: ``(B, N, 3)`` unit model normals there.
        c: ``(B, N)`` weights in ``(0, 1)``.
    """

    x_obj: torch.Tensor
    y: torch.Tensor
    normal: torch.Tensor
    c: torch.Tensor


def point_to_plane_step(
    x: torch.Tensor, y: torch.Tensor, normal: torch.Tensor, weights: torch.Tensor, point_weight: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One weighted Gauss–Newton step for the rigid motion with ``x ≈ ΔR y + Δt``: point-to-plane residuals
    ``nᵢ · (yᵢ − xᵢ)`` plus ``point_weight`` × the point-to-point ones (they keep the step defined where the planes
    alone leave a direction free), linearised at the identity (``ΔR ≈ I + [ω]×``), solved in float64 and
    differentiable.

    Args:
        x: ``(B, N, 3)`` observed points; y: ``(B, N, 3)`` their model points; normal: ``(B, N, 3)`` unit normals at
            ``y`` (metres, one frame).
        weights: ``(B, N)`` non-negative weights.
        point_weight: weight of the point-to-point residuals.

    Returns:
        ``(ΔR (B, 3, 3), Δt (B, 3))`` in the dtype of ``x``.

    Example:
        >>> y = torch.randn(1, 50, 3, dtype=torch.float64)
        >>> n = torch.nn.functional.normalize(torch.randn(1, 50, 3, dtype=torch.float64), dim=-1)
        >>> R, t = point_to_plane_step(y + 0.01, y, n, torch.ones(1, 50))
        >>> bool(torch.allclose(R, torch.eye(3, dtype=torch.float64), atol=1e-9)), [round(float(v), 6) for v in t[0]]
        (True, [0.01, 0.01, 0.01])
    """
    xd, yd, nd, w = x.double(), y.double(), normal.double(), weights.double()
    r_plane = ((yd - xd) * nd).sum(-1)  # (B, N)
    j_plane = torch.cat([torch.cross(yd, nd, dim=-1), nd], -1)  # d r / d (ω, v): (B, N, 6)
    A = torch.einsum("bn,bni,bnj->bij", w, j_plane, j_plane)
    g = torch.einsum("bn,bni,bn->bi", w, j_plane, r_plane)
    if point_weight > 0:
        zero = torch.zeros_like(yd[..., 0])
        skew = torch.stack(  # −[y]×: d (ω × y) / d ω
            [
                torch.stack([zero, yd[..., 2], -yd[..., 1]], -1),
                torch.stack([-yd[..., 2], zero, yd[..., 0]], -1),
                torch.stack([yd[..., 1], -yd[..., 0], zero], -1),
            ],
            -2,
        )
        j_point = torch.cat([skew, torch.eye(3, dtype=yd.dtype, device=yd.device).expand_as(skew)], -1)  # (B,N,3,6)
        A = A + point_weight * torch.einsum("bn,bnki,bnkj->bij", w, j_point, j_point)
        g = g + point_weight * torch.einsum("bn,bnki,bnk->bi", w, j_point, yd - xd)
    total = w.sum(1).clamp_min(1e-12)[:, None]
    A = A / total[..., None] + 1e-9 * torch.eye(6, dtype=A.dtype, device=A.device)
    xi = -torch.linalg.solve(A, g / total)
    return roma.rotvec_to_rotmat(xi[:, :3]).to(x.dtype), xi[:, 3:].to(x.dtype)


def surface_samples(mesh: trimesh.Trimesh, count: int, seed: int = 0) -> torch.Tensor:
    """``(count, 6)`` points on ``mesh``'s surface (area-uniform) and the unit normals of their faces, float32
    (the dense refiner's model, :meth:`JointLossRefiner.set_surfaces`)."""
    pts, face = trimesh.sample.sample_surface(mesh, count, seed=seed)
    nrm = np.asarray(mesh.face_normals)[face]
    return torch.tensor(np.concatenate([pts, nrm], 1), dtype=torch.float32)


def best_pose(out: JointOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """The most confident point's pose: ``(R (B, 3, 3), t (B, 3))``."""
    i = out.c.argmax(dim=1)
    b = torch.arange(out.c.shape[0], device=out.c.device)
    return out.R[b, i], out.t[b, i]


class JointLossEstimator(nn.Module):
    """The per-point RGB-D pose estimator (see the module docstring).

    Args:
        cfg: sizes (``cfg.num_objects`` heads).
    """

    def __init__(self, cfg: JointLossNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or JointLossNetConfig()
        self.colour = ColourEncoder(cfg.colour_dim, cfg.cnn_width)
        self.fusion = DenseFusion(cfg)
        cin = self.fusion.point_dim + self.fusion.global_dim
        k = cfg.num_objects
        self.rot_head = mlp1d(cin, cfg.head_dims, 4 * k)
        self.trans_head = mlp1d(cin, cfg.head_dims, 3 * k)
        self.conf_head = mlp1d(cin, cfg.head_dims, k)
        with torch.no_grad():  # offsets start small (tᵢ ≈ pᵢ: the object's origin near its surface)
            last = self.trans_head[-1]
            assert isinstance(last, nn.Conv1d)
            last.weight.mul_(0.1)
            if last.bias is not None:
                last.bias.zero_()

    def colour_embedding(self, inputs: JointInput) -> torch.Tensor:
        """``(B, di, N)`` the colour branch's embeddings gathered at ``inputs.choose`` (what the refiner takes)."""
        return gather_points(self.colour(inputs.rgb), inputs.choose)

    def forward(self, inputs: JointInput) -> JointOutput:
        """Per-point poses and confidences of the batch (shapes in :class:`JointOutput`)."""
        emb = self.colour_embedding(inputs)
        centre = inputs.points.mean(1, keepdim=True)  # (B, 1, 3)
        feat, glob = self.fusion(emb, inputs.points - centre, inputs.choose, inputs.size)
        n = feat.shape[2]
        x = torch.cat([feat, glob[:, :, None].expand(-1, -1, n)], 1)
        q = select_object(self.rot_head(x), inputs.obj_index, 4).transpose(1, 2)  # (B, N, 4)
        q = F.normalize(q, dim=-1, eps=1e-8)
        offset = select_object(self.trans_head(x), inputs.obj_index, 3).transpose(1, 2)
        c = torch.sigmoid(select_object(self.conf_head(x), inputs.obj_index, 1)[:, 0])
        return JointOutput(quat=q, R=roma.unitquat_to_rotmat(q), t=inputs.points + offset, offset=offset, c=c, emb=emb)

    @staticmethod
    def best_pose(out: JointOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """The most confident point's pose ``(R (B, 3, 3), t (B, 3))`` (:func:`best_pose`)."""
        return best_pose(out)


class JointLossRefiner(nn.Module):
    """The residual pose refiner (see the module docstring for the composition).

    Args:
        cfg: sizes (``cfg.num_objects`` heads; ``colour_dim`` must match the estimator's).
    """

    def __init__(self, cfg: JointLossNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or JointLossNetConfig()
        k = cfg.num_objects
        self.fusion = DenseFusion(cfg, geo_in=6 if cfg.refiner_kind == "dense" else 3)
        if cfg.refiner_kind == "dense":
            #: (K, P, 6) per object: surface samples and their unit normals, object frame, metres (set_surfaces)
            self.surface: torch.Tensor
            self.register_buffer("surface", torch.zeros(k, cfg.refiner_surface_points, 6))
            cin = self.fusion.point_dim + self.fusion.global_dim
            self.coord_head = mlp1d(cin, cfg.head_dims, 3 * k)
            self.conf_head = mlp1d(cin, cfg.head_dims, k)
            with torch.no_grad():  # δ starts near 0: y ≈ x_obj, the identity residual
                last = self.coord_head[-1]
                assert isinstance(last, nn.Conv1d)
                last.weight.mul_(0.01)
                if last.bias is not None:
                    last.bias.zero_()
            return
        h1, h2 = cfg.head_dims
        self.rot_head = nn.Sequential(
            nn.Linear(self.fusion.global_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 4 * k)
        )
        self.trans_head = nn.Sequential(
            nn.Linear(self.fusion.global_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 3 * k)
        )
        with torch.no_grad():  # start at the identity residual (quaternion (0, 0, 0, 1), Δt = 0)
            for head, bias in ((self.rot_head, (0.0, 0.0, 0.0, 1.0)), (self.trans_head, (0.0, 0.0, 0.0))):
                last = head[-1]
                assert isinstance(last, nn.Linear)
                last.weight.mul_(0.01)
                last.bias.copy_(torch.tensor(bias).repeat(k))

    def forward(
        self, inputs: JointInput, emb: torch.Tensor, R: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One residual step from the pose ``(R, t)``.

        Args:
            inputs: the batch (its ``points`` in the camera frame).
            emb: ``(B, di, N)`` colour embeddings (:meth:`JointLossEstimator.colour_embedding`).
            R: ``(B, 3, 3)`` current rotations; t: ``(B, 3)`` current translations, metres.

        Returns:
            ``(quat (B, 4) XYZW, ΔR (B, 3, 3), Δt (B, 3))``: the residual, in the current object frame.
        """
        if self.cfg.refiner_kind == "dense":
            dR, dt = self.solve(self.correspondences(inputs, emb, R, t))
            return roma.rotmat_to_unitquat(dR), dR, dt
        scale = self.cfg.refiner_scale
        x_obj = (inputs.points - t[:, None]) @ R  # Rᵀ (x − t), row vectors
        _, glob = self.fusion(emb, x_obj * scale, inputs.choose, inputs.size)
        q = F.normalize(select_object(self.rot_head(glob), inputs.obj_index, 4), dim=-1, eps=1e-8)
        dt = select_object(self.trans_head(glob), inputs.obj_index, 3) / scale
        return q, roma.unitquat_to_rotmat(q), dt

    def set_surfaces(self, surface: torch.Tensor) -> None:
        """Give the dense refiner its objects' surface samples and normals ``(K, P, 6)`` (object frame, metres;
        unit normals), in head order (:func:`surface_samples`)."""
        if self.cfg.refiner_kind != "dense":
            raise ValueError("set_surfaces() belongs to the dense refiner (refiner_kind='dense')")
        if surface.shape != self.surface.shape:
            raise ValueError(f"surface must have shape {tuple(self.surface.shape)}, got {tuple(surface.shape)}")
        self.surface.copy_(surface.to(self.surface))

    def solve(self, corr: Correspondences) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual ``(ΔR (B, 3, 3), Δt (B, 3))`` with ``x_obj ≈ ΔR y + Δt`` from the dense refiner's
        correspondences, by ``refiner_solver``."""
        if self.cfg.refiner_solver == "kabsch":
            return rigid_fit(corr.y, corr.x_obj, corr.c)
        return point_to_plane_step(corr.x_obj, corr.y, corr.normal, corr.c)

    def correspondences(
        self, inputs: JointInput, emb: torch.Tensor, R: torch.Tensor, t: torch.Tensor
    ) -> Correspondences:
        """The dense refiner's per-point prediction from the pose ``(R, t)`` (``refiner_kind="dense"`` only).

        Returns:
            :class:`Correspondences`: the observed points in the current object frame, where the network puts them
            on the model (object frame, metres), the model normals there and the points' weights.
        """
        if self.cfg.refiner_kind != "dense":
            raise ValueError("correspondences() belongs to the dense refiner (refiner_kind='dense')")
        scale = self.cfg.refiner_scale
        x_obj = (inputs.points - t[:, None]) @ R  # Rᵀ (x − t), row vectors
        surf = self.surface[inputs.obj_index]  # (B, P, 6)
        with torch.no_grad():
            nearest = torch.cdist(x_obj.detach(), surf[..., :3]).argmin(-1)  # (B, N)
        pn = surf.gather(1, nearest[..., None].expand(-1, -1, 6))
        p, nrm = pn[..., :3], pn[..., 3:]
        foot = x_obj - ((x_obj - p) * nrm).sum(-1, keepdim=True) * nrm  # onto the nearest tangent plane
        res = foot - x_obj
        fine = 10.0 * scale  # the residuals and corrections are millimetres: a finer unit (cm at scale 10)
        geo = torch.cat([x_obj * scale, res * fine], -1)
        feat, glob = self.fusion(emb, geo, inputs.choose, inputs.size)
        n = feat.shape[2]
        x = torch.cat([feat, glob[:, :, None].expand(-1, -1, n)], 1)
        delta = select_object(self.coord_head(x), inputs.obj_index, 3).transpose(1, 2) / fine
        robust = 1.0 / (1.0 + (res.norm(dim=-1) / self.cfg.refiner_robust) ** 2)
        c = torch.sigmoid(select_object(self.conf_head(x), inputs.obj_index, 1)[:, 0]) * robust
        return Correspondences(x_obj, foot + delta, nrm, c)

    def refine(
        self,
        inputs: JointInput,
        R: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor,
        iterations: int = 2,
        detach: bool = True,
        trace: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``iterations`` residual steps, each composed as ``R' = R ΔR``, ``t' = R Δt + t``.

        Args:
            inputs: the batch.
            R: ``(B, 3, 3)`` starting rotations; t: ``(B, 3)`` starting translations (e.g. :func:`best_pose`).
            emb: ``(B, di, N)`` the estimator's colour embeddings (detach them to train the refiner alone).
            iterations: ``K`` (2 in the paper).
            detach: cut the gradient at each step's incoming pose (DenseFusion: each iterate's loss trains only
                its own step and the estimator is not trained through the refiner); ``False`` back-propagates
                through the whole chain, down to ``R, t``.
            trace: the dense refiner appends each step's ``(y (B, N, 3), c (B, N))`` here (its per-point object
                coordinates and confidences, :meth:`correspondences`), for their own loss in training.

        Returns:
            The ``K`` iterates ``[(R₁, t₁), …, (R_K, t_K)]`` (not the start), each ``((B, 3, 3), (B, 3))``.
        """
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _ in range(iterations):
            if detach:
                R, t = R.detach(), t.detach()
            if trace is not None and self.cfg.refiner_kind == "dense":
                corr = self.correspondences(inputs, emb, R, t)
                dR, dt = self.solve(corr)
                trace.append((corr.y, corr.c))
            else:
                _, dR, dt = self(inputs, emb, R, t)
            R, t = compose_residual(R, t, dR, dt)
            out.append((R, t))
        return out


class JointLossNet(nn.Module):
    """The estimator and the refiner of one ``jointloss`` network (they train and ship together).

    Args:
        cfg: sizes and the objects of the heads.
    """

    def __init__(self, cfg: JointLossNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg or JointLossNetConfig()
        self.estimator = JointLossEstimator(cfg)
        self.refiner = JointLossRefiner(cfg)

    def head_of(self, obj_id: int) -> int | None:
        """The head index of BOP object ``obj_id`` (``None``: the weights do not know it; a config without
        ``obj_ids`` and one head takes every object)."""
        ids = self.config.obj_ids
        if not ids:
            return 0 if self.config.num_objects == 1 else None
        return ids.index(obj_id) if obj_id in ids else None

    def forward(
        self, inputs: JointInput, iterations: int = 2
    ) -> tuple[JointOutput, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The estimator's votes and the refiner's ``iterations`` iterates from the most confident vote."""
        out = self.estimator(inputs)
        R, t = best_pose(out)
        return out, self.refiner.refine(inputs, R, t, out.emb, iterations=iterations)


def load_jointloss_net(path: str | os.PathLike[str] | WeightsSpec | None = None) -> JointLossNet:
    """Load a :class:`JointLossNet` (eval mode, CPU, float32) from a checkpoint file, ``"package"`` / ``None``
    (the shipped ``meshpose/weights/jointloss/model.pt``) or ``"package:NAME"`` (e.g. ``package:lmo``).

    Raises:
        FileNotFoundError: no such file, or no shipped weights of that name.
        ValueError: not a checkpoint, or one of another method.
    """
    return load_model(path, METHOD, lambda c: JointLossNet(JointLossNetConfig.from_dict({**_LEGACY, **c})), "cpu")


def run_jointloss(
    net: JointLossNet,
    data: dict[str, Any],
    head: torch.Tensor,
    iterations: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The estimator's votes (``None`` when ``init`` is given) and the refiner's iterates from the most confident
    vote or from ``init`` (``(R (B, 3, 3), t (B, 3))``), without gradients.

    Args:
        net: the network.
        data: a :func:`~meshpose.nets.jointloss_batch.collate` batch.
        head: ``(B,)`` head index of each item.
        iterations: refiner steps.
        init: start poses for the refiner alone.
    """
    inputs = JointInput(rgb=data["rgb"], choose=data["choose"], points=data["points"], obj_index=head)
    with torch.no_grad():
        if init is None:
            out = net.estimator(inputs)
            R, t = net.estimator.best_pose(out)
            emb = out.emb
        else:
            out = None
            R, t = init
            emb = net.estimator.colour_embedding(inputs)
        its = net.refiner.refine(inputs, R, t, emb, iterations=iterations) if iterations > 0 else []
    return out, its
