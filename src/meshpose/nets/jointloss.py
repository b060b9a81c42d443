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
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import roma
import torch
import torch.nn.functional as F
from torch import nn

from meshpose.nets.checkpoint import WeightsSpec, load_model

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METHOD",
    "ColourEncoder",
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
    "quat_to_rotmat",
    "run_jointloss",
]

#: the method name of ``jointloss`` checkpoints
METHOD = "jointloss"

#: ImageNet channel means and standard deviations (RGB, colours in [0, 1]); applied inside the networks
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class JointLossNetConfig:
    """Sizes of the ``jointloss`` estimator and refiner.

    Args:
        num_objects: objects with their own heads (per-object heads as in DenseFusion; ≥ 1).
        image_size: side ``h = w`` of the colour crop, pixels (the nets accept any size; this is the default the
            data pipeline uses).
        num_points: ``N``, the sampled foreground pixels per crop (the nets accept any ``N``).
        colour_dim: ``di``, channels of the per-pixel colour embedding.
        cnn_width: channels of the colour U-Net at stride 1 (×2 at stride 2, ×4 at stride 4).
        geo_dims: channels of the two per-point fusion depths (the geometry MLP and the colour projection alike).
        global_dims: channels of the per-point layers before the global average pool (the last one is the global
            feature's size).
        head_dims: hidden channels of the estimator's per-point heads (and of the refiner's global MLP).
        attention_kernel: side of the spatial-attention convolution (odd).
        obj_ids: the BOP ``obj_id`` of each head, in head order (known-object weights; empty: heads by index only).
            Saved with the weights, so that inference maps an object to its head and refuses an unknown one.
    """

    num_objects: int = 1
    image_size: int = 80
    num_points: int = 500
    colour_dim: int = 32
    cnn_width: int = 32
    geo_dims: tuple[int, int] = (64, 128)
    global_dims: tuple[int, int] = (256, 256)
    head_dims: tuple[int, int] = (256, 128)
    attention_kernel: int = 7
    obj_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_objects < 1:
            raise ValueError(f"num_objects must be ≥ 1, got {self.num_objects}")
        if self.obj_ids and len(self.obj_ids) != self.num_objects:
            raise ValueError(f"obj_ids names {len(self.obj_ids)} objects for {self.num_objects} heads")
        if self.attention_kernel < 1 or self.attention_kernel % 2 == 0:
            raise ValueError(f"attention_kernel must be odd and ≥ 1, got {self.attention_kernel}")
        if min(self.colour_dim, self.cnn_width, *self.geo_dims, *self.global_dims, *self.head_dims) < 1:
            raise ValueError("every width must be ≥ 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JointLossNetConfig:
        kw: dict[str, Any] = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__
        }
        return cls(**kw)


@dataclass(frozen=True, eq=False)
class JointInput:
    """One batch of RGB-D crops for the ``jointloss`` networks.

    Args:
        rgb: ``(B, 3, h, w)`` float colour crop around the detection, in ``[0, 1]`` (not normalised: the networks
            apply the ImageNet normalisation; the background is kept, ``choose`` selects the object's pixels).
        choose: ``(B, N)`` int64 flat indices ``v · w + u`` into the crop of the sampled foreground pixels
            (repeats allowed, e.g. to pad a small mask to ``N``).
        points: ``(B, N, 3)`` the observed depth at those pixels back-projected, metres, camera frame.
        obj_index: ``(B,)`` int64 index of each item's object in ``[0, num_objects)``.
    """

    rgb: torch.Tensor
    choose: torch.Tensor
    points: torch.Tensor
    obj_index: torch.Tensor

    def __post_init__(self) -> None:
        if self.rgb.ndim != 4 or self.rgb.shape[1] != 3:
            raise ValueError(f"rgb must be (B, 3, h, w), got {tuple(self.rgb.shape)}")
        b, _, h, w = self.rgb.shape
        if self.choose.ndim != 2 or self.choose.shape[0] != b:
            raise ValueError(f"choose must be (B, N) with B = {b}, got {tuple(self.choose.shape)}")
        n = self.choose.shape[1]
        if tuple(self.points.shape) != (b, n, 3):
            raise ValueError(f"points must be (B, N, 3) = ({b}, {n}, 3), got {tuple(self.points.shape)}")
        if tuple(self.obj_index.shape) != (b,):
            raise ValueError(f"obj_index must be (B,) = ({b},), got {tuple(self.obj_index.shape)}")
        if self.choose.dtype != torch.int64 or self.obj_index.dtype != torch.int64:
            raise ValueError("choose and obj_index must be int64")
        if n > 0 and (int(self.choose.min()) < 0 or int(self.choose.max()) >= h * w):
            raise ValueError(f"choose must index the {h}×{w} crop (0 … {h * w - 1})")

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the crop."""
        return int(self.rgb.shape[2]), int(self.rgb.shape[3])

    def to(self, device: torch.device | str) -> JointInput:
        """The same batch on ``device``."""
        return JointInput(
            self.rgb.to(device), self.choose.to(device), self.points.to(device), self.obj_index.to(device)
        )


@dataclass(frozen=True, eq=False)
class JointOutput:
    """The estimator's per-point votes.

    Args:
        quat: ``(B, N, 4)`` unit quaternions, XYZW (``q`` and ``−q`` are the same rotation).
        R: ``(B, N, 3, 3)`` the same rotations as matrices (``cam_from_obj``).
        t: ``(B, N, 3)`` translations, metres, camera frame: ``tᵢ = pᵢ + Δᵢ``.
        offset: ``(B, N, 3)`` the offsets ``Δᵢ``, metres.
        c: ``(B, N)`` confidences in ``(0, 1)``.
        emb: ``(B, di, N)`` the gathered colour embeddings (before attention), to give the refiner.
    """

    quat: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    offset: torch.Tensor
    c: torch.Tensor
    emb: torch.Tensor


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` rotation matrices of (not necessarily unit) XYZW quaternions ``(..., 4)`` (normalised first)."""
    return roma.unitquat_to_rotmat(F.normalize(q, dim=-1, eps=1e-8))


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


def best_pose(out: JointOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """The most confident point's pose: ``(R (B, 3, 3), t (B, 3))``."""
    i = out.c.argmax(dim=1)
    b = torch.arange(out.c.shape[0], device=out.c.device)
    return out.R[b, i], out.t[b, i]


def _gather_points(feat: torch.Tensor, choose: torch.Tensor) -> torch.Tensor:
    """``(B, C, N)`` values of ``feat`` ``(B, C, h, w)`` at the flat pixel indices ``choose`` ``(B, N)``."""
    b, c = feat.shape[:2]
    idx = choose[:, None, :].expand(b, c, choose.shape[1])
    return feat.reshape(b, c, -1).gather(2, idx)


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class ColourEncoder(nn.Module):
    """A small U-Net on the colour crop: per-pixel embeddings at stride 1.

    Encoder ``w`` (stride 1) → ``2w`` (stride 2) → ``4w`` (stride 4), decoder back up by bilinear upsampling with
    additive skip connections, then a 1×1 conv to ``colour_dim`` channels. Receptive field ≈ 40 px.

    Args:
        colour_dim: output channels ``di``.
        width: channels ``w`` at stride 1.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, colour_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        w = width
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = _conv_block(3, w)
        self.down1 = nn.Sequential(_conv_block(w, 2 * w, 2), _conv_block(2 * w, 2 * w))
        self.down2 = nn.Sequential(_conv_block(2 * w, 4 * w, 2), _conv_block(4 * w, 4 * w))
        self.lat2 = nn.Conv2d(4 * w, 2 * w, 1)
        self.up1 = _conv_block(2 * w, 2 * w)
        self.lat1 = nn.Conv2d(2 * w, w, 1)
        self.up0 = _conv_block(w, w)
        self.out = nn.Conv2d(w, colour_dim, 1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(B, di, h, w)`` embeddings of ``rgb`` ``(B, 3, h, w)`` in ``[0, 1]`` (ImageNet-normalised here)."""
        x0 = self.stem((rgb - self.mean) / self.std)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        y1 = self.up1(F.interpolate(self.lat2(x2), size=x1.shape[-2:], mode="bilinear", align_corners=False) + x1)
        y0 = self.up0(F.interpolate(self.lat1(y1), size=x0.shape[-2:], mode="bilinear", align_corners=False) + x0)
        return self.out(y0)


class PointSpatialAttention(nn.Module):
    """CBAM's spatial attention for per-point features, on the pixel grid the points came from.

    For features ``(B, C, N)`` of the pixels ``choose``: the max and the mean over the channels (``(B, 2, N)``) are
    scattered to their pixels in an ``h × w`` grid with a third occupancy channel (1 where a sampled point lies,
    0 elsewhere, where the other two are 0), a ``k × k`` conv and a sigmoid give one weight per pixel, gathered back
    per point ``(B, 1, N)``.

    Args:
        kernel: side ``k`` of the convolution (odd).
    """

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, kernel, padding=kernel // 2)

    def forward(self, feat: torch.Tensor, choose: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Weights ``(B, 1, N)`` in ``(0, 1)`` of the features ``feat`` ``(B, C, N)`` at pixels ``choose``."""
        b, _, n = feat.shape
        h, w = size
        stats = torch.cat([feat.amax(1, keepdim=True), feat.mean(1, keepdim=True), torch.ones_like(feat[:, :1])], 1)
        grid = feat.new_zeros(b, 3, h * w).scatter(2, choose[:, None, :].expand(b, 3, n), stats)
        weights = torch.sigmoid(self.conv(grid.view(b, 3, h, w)))
        return _gather_points(weights, choose)


class _DenseFusion(nn.Module):
    """Attention-weighted two-depth dense fusion of colour and geometry features (shared by both networks).

    Returns the per-point features ``[c₁ ‖ g₁ ‖ c₂ ‖ g₂]`` ``(B, 2 (d₁ + d₂), N)`` and the global feature
    ``(B, d_global)`` (average over the points).
    """

    def __init__(self, cfg: JointLossNetConfig) -> None:
        super().__init__()
        d1, d2 = cfg.geo_dims
        g1, g2 = cfg.global_dims
        self.geo1 = nn.Conv1d(3, d1, 1)
        self.geo2 = nn.Conv1d(d1, d2, 1)
        self.col1 = nn.Conv1d(cfg.colour_dim, d1, 1)
        self.col2 = nn.Conv1d(d1, d2, 1)
        self.att_colour = PointSpatialAttention(cfg.attention_kernel)
        self.att_geometry = PointSpatialAttention(cfg.attention_kernel)
        self.glob1 = nn.Conv1d(2 * d2, g1, 1)
        self.glob2 = nn.Conv1d(g1, g2, 1)
        self.point_dim = 2 * (d1 + d2)
        self.global_dim = g2

    def forward(
        self, emb: torch.Tensor, points: torch.Tensor, choose: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``emb`` ``(B, di, N)``, ``points`` ``(B, N, 3)`` (already in the frame the net should see)."""
        g = torch.relu(self.geo1(points.transpose(1, 2)))
        c = torch.relu(self.col1(emb))
        g = g * self.att_geometry(g, choose, size)
        c = c * self.att_colour(c, choose, size)
        g2 = torch.relu(self.geo2(g))
        c2 = torch.relu(self.col2(c))
        pair2 = torch.cat([c2, g2], 1)
        x = torch.relu(self.glob2(torch.relu(self.glob1(pair2))))
        return torch.cat([c, g, pair2], 1), x.mean(2)


def _mlp1d(cin: int, hidden: tuple[int, ...], cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Conv1d(cin, h, 1), nn.ReLU(inplace=True)]
        cin = h
    layers.append(nn.Conv1d(cin, cout, 1))
    return nn.Sequential(*layers)


def _select_object(x: torch.Tensor, obj_index: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k, ...)`` the rows of object ``obj_index`` from per-object outputs ``(B, num_objects · k, ...)``."""
    b = x.shape[0]
    x = x.view(b, -1, k, *x.shape[2:])
    return x[torch.arange(b, device=x.device), obj_index]


class JointLossEstimator(nn.Module):
    """The per-point RGB-D pose estimator (see the module docstring).

    Args:
        cfg: sizes (``cfg.num_objects`` heads).
    """

    def __init__(self, cfg: JointLossNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or JointLossNetConfig()
        self.colour = ColourEncoder(cfg.colour_dim, cfg.cnn_width)
        self.fusion = _DenseFusion(cfg)
        cin = self.fusion.point_dim + self.fusion.global_dim
        k = cfg.num_objects
        self.rot_head = _mlp1d(cin, cfg.head_dims, 4 * k)
        self.trans_head = _mlp1d(cin, cfg.head_dims, 3 * k)
        self.conf_head = _mlp1d(cin, cfg.head_dims, k)
        with torch.no_grad():  # offsets start small (tᵢ ≈ pᵢ: the object's origin near its surface)
            last = self.trans_head[-1]
            assert isinstance(last, nn.Conv1d)
            last.weight.mul_(0.1)
            if last.bias is not None:
                last.bias.zero_()

    def colour_embedding(self, inputs: JointInput) -> torch.Tensor:
        """``(B, di, N)`` the colour branch's embeddings gathered at ``inputs.choose`` (what the refiner takes)."""
        return _gather_points(self.colour(inputs.rgb), inputs.choose)

    def forward(self, inputs: JointInput) -> JointOutput:
        """Per-point poses and confidences of the batch (shapes in :class:`JointOutput`)."""
        emb = self.colour_embedding(inputs)
        centre = inputs.points.mean(1, keepdim=True)  # (B, 1, 3)
        feat, glob = self.fusion(emb, inputs.points - centre, inputs.choose, inputs.size)
        n = feat.shape[2]
        x = torch.cat([feat, glob[:, :, None].expand(-1, -1, n)], 1)
        q = _select_object(self.rot_head(x), inputs.obj_index, 4).transpose(1, 2)  # (B, N, 4)
        q = F.normalize(q, dim=-1, eps=1e-8)
        offset = _select_object(self.trans_head(x), inputs.obj_index, 3).transpose(1, 2)
        c = torch.sigmoid(_select_object(self.conf_head(x), inputs.obj_index, 1)[:, 0])
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
        self.fusion = _DenseFusion(cfg)
        k = cfg.num_objects
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
        x_obj = (inputs.points - t[:, None]) @ R  # Rᵀ (x − t), row vectors
        _, glob = self.fusion(emb, x_obj, inputs.choose, inputs.size)
        q = F.normalize(_select_object(self.rot_head(glob), inputs.obj_index, 4), dim=-1, eps=1e-8)
        dt = _select_object(self.trans_head(glob), inputs.obj_index, 3)
        return q, roma.unitquat_to_rotmat(q), dt

    def refine(
        self,
        inputs: JointInput,
        R: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor,
        iterations: int = 2,
        detach: bool = True,
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

        Returns:
            The ``K`` iterates ``[(R₁, t₁), …, (R_K, t_K)]`` (not the start), each ``((B, 3, 3), (B, 3))``.
        """
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _ in range(iterations):
            if detach:
                R, t = R.detach(), t.detach()
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
    return load_model(path, METHOD, lambda c: JointLossNet(JointLossNetConfig.from_dict(c)), "cpu")


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
