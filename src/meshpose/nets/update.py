"""The recurrent update block: motion encoder, convolutional GRU, flow-update and confidence heads.

Example:
    >>> import torch
    >>> blk = UpdateBlock(corr_channels=196, context_dim=64, hidden_dim=64)
    >>> h = torch.zeros(2, 64, 16, 16)
    >>> h, dflow, conf = blk(h, torch.zeros(2, 64, 16, 16), torch.zeros(2, 196, 16, 16), torch.zeros(2, 2, 16, 16))
    >>> dflow.shape, conf.shape, bool((conf > 0).all() and (conf < 1).all())
    (torch.Size([2, 2, 16, 16]), torch.Size([2, 1, 16, 16]), True)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvGRU", "MotionEncoder", "UpdateBlock"]


class MotionEncoder(nn.Module):
    """Encodes the looked-up correlations and the current flow into motion features (RAFT's small variant).

    Args:
        corr_channels: channels of a correlation lookup.
        out_dim: output channels (the flow itself is appended, so the output has ``out_dim`` channels in all).
    """

    def __init__(self, corr_channels: int, out_dim: int = 64) -> None:
        super().__init__()
        self.convc = nn.Conv2d(corr_channels, 48, 1)
        self.convf1 = nn.Conv2d(2, 32, 7, padding=3)
        self.convf2 = nn.Conv2d(32, 16, 3, padding=1)
        self.conv = nn.Conv2d(48 + 16, out_dim - 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, corr: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        c = self.relu(self.convc(corr))
        f = self.relu(self.convf2(self.relu(self.convf1(flow))))
        return torch.cat([self.relu(self.conv(torch.cat([c, f], 1))), flow], 1)


class ConvGRU(nn.Module):
    """A GRU cell whose gates are 3×3 convolutions over ``[h, x]``."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        self.convzr = nn.Conv2d(hidden_dim + input_dim, 2 * hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.convzr(torch.cat([h, x], 1))).chunk(2, 1)
        q = torch.tanh(self.convq(torch.cat([r * h, x], 1)))
        return (1 - z) * h + z * q


class UpdateBlock(nn.Module):
    """One recurrent step: ``(h, context, corr, flow) → (h', Δflow, confidence)``.

    Args:
        corr_channels: channels of a correlation lookup.
        context_dim: channels of the context features.
        hidden_dim: GRU hidden channels.
        motion_dim: motion-encoder output channels.
    """

    def __init__(self, corr_channels: int, context_dim: int = 64, hidden_dim: int = 64, motion_dim: int = 64) -> None:
        super().__init__()
        self.motion = MotionEncoder(corr_channels, motion_dim)
        self.gru = ConvGRU(hidden_dim, context_dim + motion_dim)
        self.flow_head = nn.Sequential(
            nn.Conv2d(hidden_dim, 48, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(48, 2, 3, padding=1)
        )
        self.conf_head = nn.Sequential(
            nn.Conv2d(hidden_dim, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 3, padding=1)
        )

    def forward(
        self,
        h: torch.Tensor,
        context: torch.Tensor,
        corr: torch.Tensor,
        flow: torch.Tensor,
        *,
        detach_confidence: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the new hidden state, the flow update (cells) and the per-cell confidence in ``(0, 1)``.

        With ``detach_confidence`` the confidence head reads a detached hidden state: a loss on the confidence
        trains that head only.
        """
        x = torch.cat([context, self.motion(corr, flow)], 1)
        h = self.gru(h, x)
        return h, self.flow_head(h), torch.sigmoid(self.conf_head(h.detach() if detach_confidence else h))
