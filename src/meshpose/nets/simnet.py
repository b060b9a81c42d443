"""``SimilarityNet``: ``picopose``'s learned stage 2, the 2D similarity from a template to the query regressed from
their patch-feature correlation.

Stage 1 hands over a (template, in-plane rotation) pair: the query crop turned by the stage-1 rotation looks like
the template up to a residual rotation (within half a rotation step), a scale change (the detection box is not the
silhouette's box: occlusion, box noise) and a shift. The network regresses that residual similarity
``p_q = c + s·R(θ)·(p_t − c) + τ`` (template pixel ``p_t`` → turned-query pixel ``p_q``, ``c`` the crop centre)
from the dense correlation of the two feature maps, in the manner of Rocco et al.'s geometric-matching CNN (CVPR
2017), which PicoPose's stage 2 follows:

1. the correlation of every template patch with every query patch, ``(B, h·w, h, w)`` (channels: query patches,
   row-major; space: template patches), rectified and L2-normalised over the query patches, with the query
   patches outside the query's region and the template patches off the object zeroed, plus the template's
   foreground as a channel;
2. three 3×3 convolution stages (the last two of stride 2), a two-layer MLP → ``(log s, θ, τ_u, τ_v)`` with the
   shift in quarters of the crop side. The last layer starts at zero: an untrained network returns the identity,
   which is the training-free fallback of stage 2.

Units: pixels of the ``S × S`` crops (pixel centres at integers), radians. Default ≈ 0.8 M parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meshpose.nets.checkpoint import Checkpoint, WeightsSpec, load_checkpoint, model_from_checkpoint
from meshpose.nets.layers import SizesConfig, conv_bn_relu

__all__ = [
    "METHOD",
    "SimilarityNet",
    "SimilarityNetConfig",
    "load_simnet",
    "similarity_matrices",
    "simnet_from_checkpoint",
]

#: the method name of stage-2 checkpoints (shipped under ``meshpose/weights/picopose_similarity``)
METHOD = "picopose_similarity"


@dataclass(frozen=True)
class SimilarityNetConfig(SizesConfig):
    """Sizes of a :class:`SimilarityNet`.

    Args:
        grid: side ``h = w`` of the feature maps it takes (crop side / feature stride: 128 / 8 = 16).
        widths: channels of the three convolution stages.
        hidden: width of the MLP's hidden layer.
    """

    grid: int = 16
    widths: tuple[int, int, int] = (128, 128, 64)
    hidden: int = 256


def similarity_matrices(params: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 4)`` network outputs ``(log s, θ, τ_u / (S/4), τ_v / (S/4))`` → ``(B, 2, 3)`` maps ``p_q = A @ [p_t, 1]``.

    ``θ`` turns counter-clockwise as seen (image ``v`` points down), as :func:`cv2.getRotationMatrix2D` does.

    Example:
        >>> similarity_matrices(torch.zeros(1, 4), 128)[0].tolist()  # the identity
        [[1.0, 0.0, 0.0], [-0.0, 1.0, 0.0]]
    """
    s = torch.exp(params[:, 0])
    c, sn = torch.cos(params[:, 1]) * s, torch.sin(params[:, 1]) * s
    ctr = (size - 1) / 2.0
    shift = params[:, 2:4] * (size / 4.0)
    # p_q = ctr + [[c, sn], [-sn, c]] (p_t - ctr) + shift   (counter-clockwise as seen, y down)
    row0 = torch.stack([c, sn, ctr - c * ctr - sn * ctr + shift[:, 0]], 1)
    row1 = torch.stack([-sn, c, ctr + sn * ctr - c * ctr + shift[:, 1]], 1)
    return torch.stack([row0, row1], 1)


class SimilarityNet(nn.Module):
    """Regress the residual template → turned-query similarity from feature correlation (module docstring).

    Args:
        config: sizes (default :class:`SimilarityNetConfig`).

    Example:
        >>> net = SimilarityNet().eval()
        >>> f = F.normalize(torch.randn(2, 64, 16, 16), dim=1)
        >>> fg = torch.ones(2, 16, 16, dtype=torch.bool)
        >>> net(f, fg, f, fg).shape
        torch.Size([2, 4])
    """

    def __init__(self, config: SimilarityNetConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SimilarityNetConfig()
        n = cfg.grid * cfg.grid
        w1, w2, w3 = cfg.widths
        self.convs = nn.Sequential(conv_bn_relu(n + 1, w1), conv_bn_relu(w1, w2, 2), conv_bn_relu(w2, w3, 2))
        side = (cfg.grid + 3) // 4
        self.mlp = nn.Sequential(
            nn.Linear(w3 * side * side, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 4)
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(
        self, query_feat: torch.Tensor, query_fg: torch.Tensor, tmpl_feat: torch.Tensor, tmpl_fg: torch.Tensor
    ) -> torch.Tensor:
        """The residual similarity's parameters.

        Args:
            query_feat: ``(B, C, h, w)`` unit features of the query crop, turned by the stage-1 rotation.
            query_fg: ``(B, h, w)`` bool, its patches in the detection's region.
            tmpl_feat: ``(B, C, h, w)`` the template's unit features.
            tmpl_fg: ``(B, h, w)`` bool, the template's patches on the object.

        Returns:
            ``(B, 4)``: ``(log s, θ [rad], τ_u, τ_v [quarters of the crop side])`` (:func:`similarity_matrices`).
        """
        b, _, h, w = tmpl_feat.shape
        if h != self.config.grid or w != self.config.grid:
            raise ValueError(f"SimilarityNet takes {self.config.grid}×{self.config.grid} feature maps, got {h}×{w}")
        q = query_feat.flatten(2) * query_fg.flatten(1)[:, None, :].to(query_feat.dtype)  # (B, C, P)
        t = tmpl_feat.flatten(2)  # (B, C, P)
        corr = F.relu(torch.einsum("bcq,bct->bqt", q, t))  # (B, P_q, P_t)
        corr = F.normalize(corr, dim=1) * tmpl_fg.flatten(1)[:, None, :].to(corr.dtype)
        x = torch.cat([corr.view(b, h * w, h, w), tmpl_fg[:, None].to(corr.dtype)], 1)
        return self.mlp(self.convs(x).flatten(1))


def load_simnet(
    spec: str | os.PathLike[str] | WeightsSpec | None = None, device: str | torch.device = "cpu"
) -> SimilarityNet:
    """Load a :class:`SimilarityNet` (eval mode): ``None`` / ``"package"`` (the shipped
    ``meshpose/weights/picopose_similarity/model.pt``), ``"package:NAME"`` or a file (a run's ``model.pt``).

    Raises:
        FileNotFoundError: no such file, or no shipped weights of that name.
        ValueError: not a checkpoint, or one of another method.
    """
    return simnet_from_checkpoint(load_checkpoint(spec, METHOD), device)


def simnet_from_checkpoint(ck: Checkpoint, device: str | torch.device = "cpu") -> SimilarityNet:
    """:func:`load_simnet` on a checkpoint already read (its provenance says which features it was trained on)."""
    return model_from_checkpoint(ck, lambda c: SimilarityNet(SimilarityNetConfig.from_dict(c)), device)
