"""An EfficientNet-style backbone in plain torch: MBConv blocks (depthwise convolution, squeeze-excitation, swish),
scaled as a whole by one compound coefficient ``φ``.

EfficientNet (Tan & Le, 2019) scales a baseline network's depth, width and input resolution together:
``depth × α^φ``, ``width × β^φ``, ``resolution × γ^φ`` with ``α = 1.2, β = 1.1, γ = 1.15``. The baseline here is
EfficientNet-B0's stage layout thinned by :attr:`EfficientNetConfig.base_width` and
:attr:`EfficientNetConfig.base_depth`, so that ``φ = 0`` runs a refinement iteration in a few milliseconds on one
CPU core; ``φ = 1, 2, …`` grow it like B1, B2, … grow B0.

Used by :mod:`meshpose.nets.deeprm` (six-channel input: observed and rendered crops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ALPHA", "B0_STAGES", "BETA", "GAMMA", "EfficientNet", "EfficientNetConfig", "MBConv", "SqueezeExcite"]

#: compound-scaling bases of depth, width and resolution (EfficientNet's grid search)
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15

#: EfficientNet-B0's stages: (expansion, output channels, repeats, stride, kernel)
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
)


def round_channels(channels: float, divisor: int = 8) -> int:
    """``channels`` rounded to a multiple of ``divisor`` (never below 90 % of it), as EfficientNet rounds widths.

    Example:
        >>> round_channels(16 * 0.5), round_channels(40 * 1.1)
        (8, 48)
    """
    out = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if out < 0.9 * channels:
        out += divisor
    return out


@dataclass(frozen=True)
class EfficientNetConfig:
    """Size of an :class:`EfficientNet`.

    Args:
        in_channels: input channels (6: observed and rendered RGB).
        phi: the compound coefficient ``φ`` (0: the baseline).
        base_width: width multiplier of the baseline (B0 has 1.0).
        base_depth: depth multiplier of the baseline (B0 has 1.0); repeats are rounded up.
        base_resolution: input side of the baseline in pixels (scaled by ``γ^φ``, rounded to a multiple of 32).
        head_channels: channels of the final 1×1 convolution at ``φ = 0`` (scaled with the width).
        se_ratio: squeeze-excitation bottleneck as a share of a block's input channels.
        start_stage: first B0 stage to build (0: the whole network from pixels). With ``start_stage > 0`` the
            network continues from an input that is already at that stage's input stride (e.g. ``3`` on a
            stride-8 feature map): a 1×1 stem to ``stem_base · width`` channels replaces the strided 3×3 one.
        stem_base: stem channels at width 1 (B0: 32).
    """

    in_channels: int = 6
    phi: int = 0
    base_width: float = 0.5
    base_depth: float = 0.5
    base_resolution: int = 96
    head_channels: int = 256
    se_ratio: float = 0.25
    start_stage: int = 0
    stem_base: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.start_stage < len(B0_STAGES):
            raise ValueError(f"start_stage must be in [0, {len(B0_STAGES)}), got {self.start_stage}")

    @property
    def width(self) -> float:
        """Width multiplier ``base_width · β^φ``."""
        return self.base_width * BETA**self.phi

    @property
    def depth(self) -> float:
        """Depth multiplier ``base_depth · α^φ``."""
        return self.base_depth * ALPHA**self.phi

    @property
    def resolution(self) -> int:
        """Input side ``base_resolution · γ^φ`` rounded to a multiple of 16, pixels (96, 112, 128 at φ = 0, 1, 2)."""
        return max(32, round(self.base_resolution * GAMMA**self.phi / 16.0) * 16)

    def stages(self) -> list[tuple[int, int, int, int, int]]:
        """The scaled stages: (expansion, channels, repeats, stride, kernel)."""
        stages = B0_STAGES[self.start_stage :]
        return [(e, round_channels(c * self.width), math.ceil(r * self.depth), s, k) for e, c, r, s, k in stages]

    @property
    def stem_channels(self) -> int:
        return round_channels(self.stem_base * self.width)

    @property
    def out_channels(self) -> int:
        """Channels of the final feature map."""
        return round_channels(self.head_channels * BETA**self.phi)


class SqueezeExcite(nn.Module):
    """Channel attention: global average → 1×1 reduce → swish → 1×1 expand → sigmoid gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1×1 expand → depthwise k×k (stride) → squeeze-excitation → 1×1 project; a
    residual connection when the shape is kept. Batch norm and swish after each convolution but the last."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, se_ratio: float) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.SiLU(),
            SqueezeExcite(mid, max(1, int(cin * se_ratio))),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class EfficientNet(nn.Module):
    """The backbone: stem (3×3, stride 2) → seven MBConv stages → 1×1 head convolution; total stride 32.

    ``forward`` returns the feature maps at strides 2, 4, 8, 16 and 32 (the last after the head convolution), so
    that a decoder can use the intermediate scales (:class:`~meshpose.nets.deeprm.FlowDecoder`). Built from a
    later stage (``config.start_stage``), it returns the scales it reaches (e.g. strides 16 and 32 of the input's
    resolution × 8 from stage 3).

    Args:
        config: sizes.

    Example:
        >>> net = EfficientNet(EfficientNetConfig())
        >>> [tuple(f.shape[1:]) for f in net(torch.zeros(1, 6, 96, 96))]
        [(8, 48, 48), (16, 24, 24), (24, 12, 12), (56, 6, 6), (256, 3, 3)]
    """

    def __init__(self, config: EfficientNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or EfficientNetConfig()
        c = cfg.stem_channels
        kernel, stride = (3, 2) if cfg.start_stage == 0 else (1, 1)
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, c, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c), nn.SiLU()
        )
        stages = []
        #: channels of the feature maps ``forward`` returns
        self.feature_channels: list[int] = []
        layout = cfg.stages()
        # a returned scale: the last stage before a strided one (B0: strides 2, 4, 8, 16); the head is the last
        taps = {i for i in range(len(layout) - 1) if layout[i + 1][3] == 2}
        for i, (e, cout, r, s, k) in enumerate(layout):
            blocks = [MBConv(c if j == 0 else cout, cout, e, k, s if j == 0 else 1, cfg.se_ratio) for j in range(r)]
            stages.append(nn.Sequential(*blocks))
            c = cout
            if i in taps:
                self.feature_channels.append(c)
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(
            nn.Conv2d(c, cfg.out_channels, 1, bias=False), nn.BatchNorm2d(cfg.out_channels), nn.SiLU()
        )
        self.feature_channels.append(cfg.out_channels)
        self._taps = taps
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C_in, S, S)`` → five feature maps ``(B, C_i, S / 2^i, S / 2^i)``, ``i = 1 … 5`` (from pixels)."""
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._taps:
                feats.append(x)
        feats.append(self.head(x))
        return feats
