"""Building blocks of the ``jointloss`` networks (:mod:`meshpose.nets.jointloss`): the sizes
(:class:`JointLossNetConfig`), the input and output records, the colour encoder, the spatial attention and the
attention-weighted dense fusion both networks share. See :mod:`meshpose.nets.jointloss` for the method."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import roma
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ColourEncoder",
    "DenseFusion",
    "JointInput",
    "JointLossNetConfig",
    "JointOutput",
    "PointSpatialAttention",
    "conv_block",
    "count_parameters",
    "gather_points",
    "mlp1d",
    "quat_to_rotmat",
    "select_object",
]

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
        refiner_scale: the refiner sees its points (current object frame) multiplied by this, and its translation
            residual is divided by it (1: metres). The residuals a refiner must see are millimetres; in metres the
            first layer's response to them is buried under its biases, so the default is 10 (decimetres: LM-O-sized
            objects span about ±1). Weights saved without this key are read with 1 (:func:`load_jointloss_net`).
        refiner_kind: ``"dense"`` (the default: learned correspondences on the model surface solved for the
            residual; :mod:`meshpose.nets.jointloss`) or ``"regress"`` (the seed's: the residual regressed from the
            global feature; weights saved without this key are read as ``"regress"``).
        refiner_surface_points: the dense refiner's surface samples per object (with normals).
        refiner_robust: ``τ`` of the dense refiner's Cauchy weight on the point-to-plane residual, metres.
        refiner_solver: how the dense refiner turns its correspondences into a residual: ``"gauss_newton"`` (one
            point-to-plane step) or ``"kabsch"`` (the least-squares rigid fit).
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
    refiner_scale: float = 10.0
    refiner_kind: str = "dense"
    refiner_surface_points: int = 2048
    refiner_robust: float = 0.01
    refiner_solver: str = "gauss_newton"

    def __post_init__(self) -> None:
        if self.num_objects < 1:
            raise ValueError(f"num_objects must be ≥ 1, got {self.num_objects}")
        if self.obj_ids and len(self.obj_ids) != self.num_objects:
            raise ValueError(f"obj_ids names {len(self.obj_ids)} objects for {self.num_objects} heads")
        if self.attention_kernel < 1 or self.attention_kernel % 2 == 0:
            raise ValueError(f"attention_kernel must be odd and ≥ 1, got {self.attention_kernel}")
        if min(self.colour_dim, self.cnn_width, *self.geo_dims, *self.global_dims, *self.head_dims) < 1:
            raise ValueError("every width must be ≥ 1")
        if not self.refiner_scale > 0:
            raise ValueError(f"refiner_scale must be > 0, got {self.refiner_scale}")
        if self.refiner_solver not in ("gauss_newton", "kabsch"):
            raise ValueError(f"refiner_solver must be 'gauss_newton' or 'kabsch', got {self.refiner_solver!r}")
        if self.refiner_kind not in ("regress", "dense"):
            raise ValueError(f"refiner_kind must be 'regress' or 'dense', got {self.refiner_kind!r}")

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


def gather_points(feat: torch.Tensor, choose: torch.Tensor) -> torch.Tensor:
    """``(B, C, N)`` values of ``feat`` ``(B, C, h, w)`` at the flat pixel indices ``choose`` ``(B, N)``."""
    b, c = feat.shape[:2]
    idx = choose[:, None, :].expand(b, c, choose.shape[1])
    return feat.reshape(b, c, -1).gather(2, idx)


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
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
        self.stem = conv_block(3, w)
        self.down1 = nn.Sequential(conv_block(w, 2 * w, 2), conv_block(2 * w, 2 * w))
        self.down2 = nn.Sequential(conv_block(2 * w, 4 * w, 2), conv_block(4 * w, 4 * w))
        self.lat2 = nn.Conv2d(4 * w, 2 * w, 1)
        self.up1 = conv_block(2 * w, 2 * w)
        self.lat1 = nn.Conv2d(2 * w, w, 1)
        self.up0 = conv_block(w, w)
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
        return gather_points(weights, choose)


class DenseFusion(nn.Module):
    """Attention-weighted two-depth dense fusion of colour and geometry features (shared by both networks).

    Returns the per-point features ``[c₁ ‖ g₁ ‖ c₂ ‖ g₂]`` ``(B, 2 (d₁ + d₂), N)`` and the global feature
    ``(B, d_global)`` (average over the points).
    """

    def __init__(self, cfg: JointLossNetConfig, geo_in: int = 3) -> None:
        super().__init__()
        d1, d2 = cfg.geo_dims
        g1, g2 = cfg.global_dims
        self.geo1 = nn.Conv1d(geo_in, d1, 1)
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


def mlp1d(cin: int, hidden: tuple[int, ...], cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Conv1d(cin, h, 1), nn.ReLU(inplace=True)]
        cin = h
    layers.append(nn.Conv1d(cin, cout, 1))
    return nn.Sequential(*layers)


def select_object(x: torch.Tensor, obj_index: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k, ...)`` the rows of object ``obj_index`` from per-object outputs ``(B, num_objects · k, ...)``."""
    b = x.shape[0]
    x = x.view(b, -1, k, *x.shape[2:])
    return x[torch.arange(b, device=x.device), obj_index]
