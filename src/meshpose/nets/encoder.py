"""Residual CNN encoders that bring a crop to 1/8 resolution (RAFT-style, sized for a CPU).

Example:
    >>> import torch
    >>> enc = FeatureEncoder(in_channels=5, out_dim=64)
    >>> enc(torch.zeros(2, 5, 128, 128)).shape
    torch.Size([2, 64, 16, 16])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = ["FeatureEncoder", "ResidualBlock", "make_norm"]

Norm = Literal["instance", "group", "batch", "none"]


def make_norm(kind: Norm, channels: int) -> nn.Module:
    """A normalisation layer by name (``instance`` for matching features as in RAFT, ``group`` for context)."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with a skip connection (strided: a 1×1 projection on the skip).

    Args:
        in_dim: input channels.
        out_dim: output channels.
        stride: 1 or 2.
        norm: normalisation after each convolution.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int = 1, norm: Norm = "instance") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        self.norm1 = make_norm(norm, out_dim)
        self.norm2 = make_norm(norm, out_dim)
        self.relu = nn.ReLU(inplace=True)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_dim != out_dim:
            self.skip = nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, stride=stride), make_norm(norm, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        return self.relu(self.skip(x) + y)


class FeatureEncoder(nn.Module):
    """``(B, C, H, W)`` image → ``(B, out_dim, H/8, W/8)`` features.

    A light RAFT-style encoder for a CPU: a 5×5 stride-2 stem (1/2), a strided 3×3 convolution and residual blocks
    at 1/4, a strided residual block and residual blocks at 1/8, then a 1×1 projection. Nothing runs at full
    resolution but the stem, which is where most of the cost of a larger encoder goes.

    Args:
        in_channels: input channels (e.g. RGB + normalised depth + validity).
        out_dim: output channels.
        dims: widths at 1/2, 1/4 and 1/8 resolution.
        norm: normalisation (``instance`` for matching features, ``group`` for context).
        blocks: residual blocks at 1/4 and at 1/8 resolution (after the strided one).
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        dims: Sequence[int] = (24, 32, 48),
        norm: Norm = "instance",
        blocks: int = 1,
    ) -> None:
        super().__init__()
        if len(dims) != 3:
            raise ValueError(f"dims must hold 3 widths (1/2, 1/4, 1/8 resolution), got {tuple(dims)}")
        d0, d1, d2 = (int(d) for d in dims)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, d0, 5, stride=2, padding=2),
            make_norm(norm, d0),
            nn.ReLU(inplace=True),
            nn.Conv2d(d0, d1, 3, stride=2, padding=1),
            make_norm(norm, d1),
            nn.ReLU(inplace=True),
        ]
        layers += [ResidualBlock(d1, d1, norm=norm) for _ in range(blocks)]
        layers += [ResidualBlock(d1, d2, stride=2, norm=norm)]
        layers += [ResidualBlock(d2, d2, norm=norm) for _ in range(blocks)]
        self.layers = nn.Sequential(*layers)
        self.head = nn.Conv2d(d2, out_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, out_dim, ⌈H/8⌉, ⌈W/8⌉)``."""
        return self.head(self.layers(x))
