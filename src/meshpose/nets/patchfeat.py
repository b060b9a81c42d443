"""``PatchFeatNet``: a small CNN of dense unit patch features at stride 8, for ``picopose``'s template matching.

Trained (``meshpose train picopose``, :mod:`meshpose.train.picopose`) on generated objects so that a patch of a
query crop (the object in a cluttered scene) and the patch of a template rendering (the object alone on black) that
shows the same surface point have similar features. Four stages of 3×3 convolutions (strides 2, 2, 2, 2; batch
norm, ReLU), the stride-16 stage upsampled and added to the stride-8 one (context of ~70 px at stride 8), a 1×1
projection to ``dim`` channels, L2-normalised. The default has ≈ 0.76 M parameters.

The network also holds the learned temperature of its contrastive training loss (``log_scale``; unused when
extracting features).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meshpose.nets.checkpoint import WeightsSpec, load_model
from meshpose.nets.layers import SizesConfig, conv_bn_relu

__all__ = ["METHOD", "PatchFeatConfig", "PatchFeatNet", "load_patchfeat"]

#: the method name of ``picopose`` feature checkpoints
METHOD = "picopose"

#: per-channel mean and std the input colours are normalised with (colours in [0, 1])
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class PatchFeatConfig(SizesConfig):
    """Sizes of a :class:`PatchFeatNet`.

    Args:
        widths: channels of the four stages (strides 2, 4, 8, 16).
        dim: output feature channels.
        init_temperature: initial temperature of the contrastive loss (learned).
    """

    widths: tuple[int, int, int, int] = (32, 64, 128, 128)
    dim: int = 64
    init_temperature: float = 0.1


class PatchFeatNet(nn.Module):
    """Dense unit features at stride 8 (see the module docstring).

    Args:
        config: sizes (default :class:`PatchFeatConfig`).

    Example:
        >>> net = PatchFeatNet().eval()
        >>> net(torch.rand(2, 3, 128, 128)).shape
        torch.Size([2, 64, 16, 16])
    """

    stride = 8
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: PatchFeatConfig | None = None) -> None:
        super().__init__()
        self.config = config or PatchFeatConfig()
        w1, w2, w3, w4 = self.config.widths
        self.s2 = nn.Sequential(conv_bn_relu(3, w1, 2), conv_bn_relu(w1, w1))
        self.s4 = nn.Sequential(conv_bn_relu(w1, w2, 2), conv_bn_relu(w2, w2))
        self.s8 = nn.Sequential(conv_bn_relu(w2, w3, 2), conv_bn_relu(w3, w3))
        self.s16 = nn.Sequential(conv_bn_relu(w3, w4, 2), conv_bn_relu(w4, w4))
        self.lateral = nn.Conv2d(w4, w3, 1)
        self.head = nn.Sequential(conv_bn_relu(w3, w3), nn.Conv2d(w3, self.config.dim, 1))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.log_scale = nn.Parameter(torch.tensor(-float(torch.log(torch.tensor(self.config.init_temperature)))))

    @property
    def temperature(self) -> torch.Tensor:
        """The contrastive loss's temperature, ``exp(-log_scale)`` clamped to [0.01, 1]."""
        return torch.exp(-self.log_scale).clamp(0.01, 1.0)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` colours in [0, 1] (``H``, ``W`` multiples of 16) → ``(B, dim, H/8, W/8)`` unit features."""
        x = (rgb - self.mean) / self.std
        x8 = self.s8(self.s4(self.s2(x)))
        x16 = self.s16(x8)
        x8 = x8 + F.interpolate(self.lateral(x16), size=x8.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(self.head(x8), dim=1)


def load_patchfeat(
    spec: str | os.PathLike[str] | WeightsSpec | None = None, device: str | torch.device = "cpu"
) -> PatchFeatNet:
    """Load a :class:`PatchFeatNet` (eval mode) from a weights spec: ``None`` / ``"package"`` (the shipped
    ``meshpose/weights/picopose/model.pt``), ``"package:NAME"`` or a file (a run's ``model.pt`` / ``best.pt``).

    Raises:
        FileNotFoundError: no such file, or no shipped weights of that name.
        ValueError: not a checkpoint, or one of another method.
    """
    return load_model(spec, METHOD, lambda c: PatchFeatNet(PatchFeatConfig.from_dict(c)), device)
