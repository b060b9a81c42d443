"""``deeprm``'s network: an EfficientNet-style backbone on the observed and rendered crops, three fully connected
recurrent layers whose state carries across refinement iterations, and DeepIM's pose-update heads (DeepRM, "deep
recurrent matching").

One refinement iteration of one object (:meth:`DeepRMNet.forward`):

1. input ``(B, 6, S, S)``: the observed crop and the object rendered at the current pose into the same crop
   camera, each normalised as ``(rgb - 0.5) / 0.25`` (:func:`make_input`);
2. :class:`~meshpose.nets.efficientnet.EfficientNet` (scaled by ``φ``) to a stride-32 feature map, average-pooled
   to ``pool × pool`` cells and flattened. Two ways in (``fusion``):

   * ``"early"`` (DeepRM): the six channels enter the whole backbone from pixels;
   * ``"correlation"`` (FlowNetC-style, the CPU default): one feature encoder — ``genflow``'s matching encoder
     (:class:`~meshpose.nets.encoder.FeatureEncoder`, instance-normalised, stride 8), whose trained weights a
     new run starts from — encodes each crop; a local correlation of the rendered features with the observed
     ones (:class:`~meshpose.nets.corr.CorrPyramid` around each rendered cell, two levels) joins both feature
     maps, and the backbone continues from its stride-8 stage. DeepRM starts its backbone from ImageNet weights;
     none can be installed here, and the early-fusion network trained from scratch on two CPU cores had not
     started to compare the crops after ~20k items (docs/deeprm.md), while the correlation makes the
     comparison explicit and the encoder arrives trained;
3. three stacked recurrent cells (``torch.nn.LSTMCell`` by default; ``GRUCell`` or plain fully connected layers for
   the ablation) whose hidden (and cell) states come in and go out as a :class:`RecurrentState` — the caller keeps
   it from one iteration to the next and starts every object with ``None`` (zeros);
4. heads: a unit quaternion ``(x, y, z, w)`` (roma's order) of the rotation update, initialised at the identity,
   and DeepIM's translation update ``(vx, vy, vz)`` (:func:`apply_update`).

During training an auxiliary FlowNetS-style decoder (:class:`FlowDecoder`) predicts, from the backbone's feature
maps at strides 32 … 4, the flow that carries each rendered pixel to where the object point it shows lies in the
observation; inference never runs it (``flow=False``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import roma
import torch
import torch.nn.functional as F
from torch import nn

from meshpose.nets.checkpoint import WeightsSpec, load_model
from meshpose.nets.corr import CorrPyramid, coords_grid
from meshpose.nets.efficientnet import BETA, EfficientNet, EfficientNetConfig
from meshpose.nets.encoder import FeatureEncoder
from meshpose.types import Pose

__all__ = [
    "METHOD",
    "DeepRMNet",
    "DeepRMNetConfig",
    "DeepRMOutput",
    "FlowDecoder",
    "RecurrentState",
    "apply_update",
    "load_deeprm_model",
    "make_input",
    "origin_uv",
]

CellKind = Literal["lstm", "gru", "fc"]
Fusion = Literal["early", "correlation"]

#: stride of the correlation front's feature maps (``genflow``'s encoder)
FRONT_STRIDE = 8
#: the B0 stage the backbone continues from behind the correlation front (its input is at stride 8)
FRONT_STAGE = 3

#: the method name of deeprm checkpoints
METHOD = "deeprm"


@dataclass(frozen=True)
class DeepRMNetConfig:
    """Sizes of a :class:`DeepRMNet`; ``phi`` scales the backbone and the recurrent layers together.

    Args:
        phi: compound coefficient ``φ`` (0: the CPU default).
        base_width: backbone width multiplier at ``φ = 0``.
        base_depth: backbone depth multiplier at ``φ = 0``.
        base_resolution: crop side at ``φ = 0`` (pixels; scaled by ``1.15^φ``).
        head_channels: backbone output channels at ``φ = 0``.
        hidden: size of each recurrent layer at ``φ = 0`` (scaled by ``1.1^φ`` like the widths).
        pool: the final feature map is average-pooled to ``pool × pool`` cells before flattening.
        cell: ``"lstm"`` (DeepRM), ``"gru"`` or ``"fc"`` (no state; the ablation baseline).
        layers: recurrent layers (three in DeepRM).
        flow_head: build the auxiliary flow decoder (used only by training).
        flow_channels: channels of the flow decoder's coarsest level (halved at each finer one).
        fusion: ``"correlation"`` (encoder + correlation front; the default) or ``"early"`` (six channels into the
            backbone, as DeepRM; a saved config without this key is one of those).
        feature_dim: correlation front: encoder output channels (``genflow``'s: 48).
        encoder_dims: correlation front: encoder widths at strides 2, 4, 8 (``genflow``'s).
        corr_levels: correlation front: pyramid levels of the lookup.
        corr_radius: correlation front: lookup radius in cells of each level.
        front_width: correlation front: channels (at width 1) of the 1×1 stem that takes the joined maps into the
            backbone.
    """

    phi: int = 0
    base_width: float = 0.5
    base_depth: float = 0.5
    base_resolution: int = 96
    head_channels: int = 256
    hidden: int = 256
    pool: int = 3
    cell: CellKind = "lstm"
    layers: int = 3
    flow_head: bool = True
    flow_channels: int = 64
    fusion: Fusion = "correlation"
    feature_dim: int = 48
    encoder_dims: tuple[int, int, int] = (24, 32, 48)
    corr_levels: int = 2
    corr_radius: int = 3
    front_width: int = 128

    def __post_init__(self) -> None:
        if self.cell not in ("lstm", "gru", "fc"):
            raise ValueError(f"cell must be 'lstm', 'gru' or 'fc', got {self.cell!r}")
        if self.fusion not in ("early", "correlation"):
            raise ValueError(f"fusion must be 'early' or 'correlation', got {self.fusion!r}")
        if self.phi < 0 or self.layers < 1 or self.pool < 1:
            raise ValueError("need phi ≥ 0, layers ≥ 1, pool ≥ 1")

    @property
    def flow_scales(self) -> int:
        """Flow predictions of the decoder: 4 for early fusion (strides 32 … 4), 3 behind the correlation front
        (strides 32 … 8)."""
        return 4 if self.fusion == "early" else 3

    @property
    def corr_channels(self) -> int:
        """Channels of the correlation lookup, ``levels · (2r + 1)²``."""
        return self.corr_levels * (2 * self.corr_radius + 1) ** 2

    @property
    def backbone(self) -> EfficientNetConfig:
        early = self.fusion == "early"
        return EfficientNetConfig(
            in_channels=6 if early else self.corr_channels + 2 * self.feature_dim,
            phi=self.phi,
            base_width=self.base_width,
            base_depth=self.base_depth,
            base_resolution=self.base_resolution,
            head_channels=self.head_channels,
            start_stage=0 if early else FRONT_STAGE,
            stem_base=32 if early else self.front_width,
        )

    @property
    def resolution(self) -> int:
        """The crop side the network is made for, pixels."""
        return self.backbone.resolution

    @property
    def hidden_size(self) -> int:
        """Recurrent layer size ``hidden · 1.1^φ`` (rounded to a multiple of 8)."""
        return round(self.hidden * BETA**self.phi / 8.0) * 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeepRMNetConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d.setdefault("fusion", "early")  # a config without it predates the correlation front
        if "encoder_dims" in d:
            d["encoder_dims"] = tuple(d["encoder_dims"])
        return cls(**d)


@dataclass(frozen=True, eq=False)
class RecurrentState:
    """The recurrent layers' state between two refinement iterations of a batch of objects.

    Args:
        h: one ``(B, H)`` hidden state per layer.
        c: one ``(B, H)`` cell state per layer (LSTM only; empty otherwise).
    """

    h: tuple[torch.Tensor, ...]
    c: tuple[torch.Tensor, ...] = ()

    def detach(self) -> RecurrentState:
        """The same state cut from the autograd graph (truncated back-propagation)."""
        return RecurrentState(tuple(x.detach() for x in self.h), tuple(x.detach() for x in self.c))

    def select(self, index: torch.Tensor) -> RecurrentState:
        """The state of the items ``index`` (e.g. the instances still refined)."""
        return RecurrentState(tuple(x[index] for x in self.h), tuple(x[index] for x in self.c))


@dataclass(frozen=True, eq=False)
class DeepRMOutput:
    """One iteration's answer.

    Args:
        quat: ``(B, 4)`` unit quaternion ``(x, y, z, w)`` of the rotation update (camera frame, about the object
            origin: ``R_new = ΔR · R``).
        trans: ``(B, 3)`` translation update ``(vx, vy, vz)`` (:func:`apply_update`).
        state: the recurrent state to give the next iteration.
        flows: the flow decoder's predictions, coarse to fine, ``(B, 2, S/2^k, S/2^k)`` in crop pixels divided by
            ``S`` (empty when not asked for).
    """

    quat: torch.Tensor
    trans: torch.Tensor
    state: RecurrentState
    flows: list[torch.Tensor] = field(default_factory=list)


def make_input(obs_rgb: torch.Tensor, ren_rgb: torch.Tensor) -> torch.Tensor:
    """Network input ``(B, 6, S, S)``: ``(rgb - 0.5) / 0.25`` of the observed then the rendered crop (in [0, 1])."""
    return torch.cat([(obs_rgb - 0.5) / 0.25, (ren_rgb - 0.5) / 0.25], 1)


def origin_uv(t: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` pixel of the object origin ``t`` ``(B, 3)`` (metres, camera frame) under ``K`` ``(B, 3, 3)``."""
    p = (K @ t[..., None])[..., 0]
    return p[:, :2] / p[:, 2:3].clamp_min(1e-6)


def apply_update(pose: Pose, quat: torch.Tensor, trans: torch.Tensor, K: torch.Tensor, size: int) -> Pose:
    """DeepIM's pose update in a crop: rotation about the object origin, image-plane shift and relative depth.

    With the current pose ``(R, t)``, its origin's pixel ``(u, v)`` in the crop and depth ``z = t_z``::

        R' = ΔR(quat) · R
        u' = u + vx · S,   v' = v + vy · S             # S: crop side in pixels (the crop spans ~ the object)
        z' = z · exp(-vz)                               # vz = log(z / z')
        t' = z' · K⁻¹ [u', v', 1]ᵀ

    The rotation does not move the origin, so the rotation and translation parts are independent; ``(vx, vy, vz)``
    do not depend on the object's size or distance (DeepIM's "untangled" parameterisation).

    Args:
        pose: ``(B,)`` current ``cam_from_obj`` poses.
        quat: ``(B, 4)`` unit quaternions ``(x, y, z, w)``.
        trans: ``(B, 3)`` ``(vx, vy, vz)``.
        K: ``(B, 3, 3)`` crop intrinsics.
        size: crop side ``S`` in pixels.

    Returns:
        ``(B,)`` new poses (dtype of ``pose``; differentiable in ``quat`` and ``trans``).

    Example:
        >>> K = torch.tensor([[[100.0, 0, 48], [0, 100.0, 48], [0, 0, 1]]])
        >>> p = Pose(torch.eye(3)[None], torch.tensor([[0.0, 0.0, 0.5]]))
        >>> q = apply_update(p, torch.tensor([[0.0, 0, 0, 1]]), torch.tensor([[0.1, 0.0, 0.0]]), K, 96)
        >>> [round(float(x), 4) for x in q.t[0]]
        [0.048, 0.0, 0.5]
    """
    dt = pose.R.dtype
    dR = roma.unitquat_to_rotmat(F.normalize(quat.to(dt), dim=-1))  # re-normalised in the pose's precision
    Kd = K.to(dt)
    uv = origin_uv(pose.t, Kd) + trans[:, :2].to(dt) * float(size)
    z = pose.t[:, 2] * torch.exp(-trans[:, 2].to(dt))
    ray = torch.linalg.solve(Kd, torch.cat([uv, torch.ones_like(uv[:, :1])], 1)[..., None])[..., 0]
    return Pose(dR @ pose.R, ray * (z / ray[:, 2])[:, None])


class FlowDecoder(nn.Module):
    """FlowNetS-style decoder: from the coarsest feature map, predict flow, up-convolve, join the next finer
    feature map and the up-sampled flow, predict again — down to stride 4.

    Args:
        feature_channels: channels of the feature maps, fine to coarse, each at half the previous resolution
            (early fusion: strides 4, 8, 16, 32; behind the correlation front: 8, 16, 32).
        channels: channels of the first up-convolution (halved at each finer level, at least 16).
    """

    def __init__(self, feature_channels: list[int], channels: int = 64) -> None:
        super().__init__()
        fine_to_coarse = list(feature_channels)
        coarse = fine_to_coarse[-1]
        self.predict = nn.ModuleList([nn.Conv2d(coarse, 2, 3, 1, 1)])
        self.upconv = nn.ModuleList()
        self.upflow = nn.ModuleList()
        cin = coarse
        c = channels
        for skip in reversed(fine_to_coarse[:-1]):
            self.upconv.append(nn.Sequential(nn.ConvTranspose2d(cin, c, 4, 2, 1), nn.LeakyReLU(0.1)))
            self.upflow.append(nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=False))
            cin = c + skip + 2
            self.predict.append(nn.Conv2d(cin, 2, 3, 1, 1))
            c = max(16, c // 2)

        for conv in self.predict:
            assert isinstance(conv, nn.Conv2d)
            nn.init.normal_(conv.weight, std=1e-3)  # start near zero flow (the targets are a few % of the crop)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``feats`` fine to coarse (e.g. strides 4 … 32) → one flow per map, coarse to fine (strides 32 … 4)."""
        x = feats[-1]
        flow = self.predict[0](x)
        flows = [flow]
        for k, skip in enumerate(reversed(feats[:-1])):
            up, fl = self.upconv[k](x), self.upflow[k](flow)
            if up.shape[-2:] != skip.shape[-2:]:  # an odd map size on the way down (e.g. 7 → 4 at 112 px)
                up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                fl = F.interpolate(fl, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([up, skip, fl], 1)
            flow = self.predict[k + 1](x)
            flows.append(flow)
        return flows


class DeepRMNet(nn.Module):
    """The ``deeprm`` network (see the module docstring).

    Args:
        config: sizes.

    Example:
        >>> net = DeepRMNet(DeepRMNetConfig()).eval()
        >>> x = torch.zeros(2, 6, 96, 96)
        >>> out = net(x)
        >>> tuple(out.quat.shape), tuple(out.trans.shape), len(out.state.h), len(out.state.c)
        ((2, 4), (2, 3), 3, 3)
        >>> out2 = net(x, out.state)  # the next iteration continues from the state
    """

    def __init__(self, config: DeepRMNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DeepRMNetConfig()
        #: the correlation front's encoder (``genflow``'s ``fnet`` layout; ``None`` for early fusion)
        self.encoder = (
            FeatureEncoder(5, cfg.feature_dim, cfg.encoder_dims, norm="instance")
            if cfg.fusion == "correlation"
            else None
        )
        self.backbone = EfficientNet(cfg.backbone)
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool)
        flat = cfg.backbone.out_channels * cfg.pool * cfg.pool
        hid = cfg.hidden_size
        cells: list[nn.Module] = []
        for i in range(cfg.layers):
            cin = flat if i == 0 else hid
            if cfg.cell == "lstm":
                cells.append(nn.LSTMCell(cin, hid))
            elif cfg.cell == "gru":
                cells.append(nn.GRUCell(cin, hid))
            else:
                cells.append(nn.Sequential(nn.Linear(cin, hid), nn.ReLU()))
        self.cells = nn.ModuleList(cells)
        self.rot_head = nn.Linear(hid, 4)
        self.trans_head = nn.Linear(hid, 3)
        for head in (self.rot_head, self.trans_head):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.rot_head.bias[3] = 1.0  # the identity quaternion (x, y, z, w) = (0, 0, 0, 1)
        # the flow decoder reads the maps ``features`` returns: strides 4 … 32 (early) or 8 … 32 (the front's joined
        # map, then the backbone's)
        if self.encoder is None:
            scales = self.backbone.feature_channels[1:]
        else:
            scales = [cfg.backbone.in_channels, *self.backbone.feature_channels]
        assert len(scales) == cfg.flow_scales
        self.flow = FlowDecoder(scales, cfg.flow_channels) if cfg.flow_head else None

    @property
    def flow_scales(self) -> int:
        """Flow predictions of the decoder (:attr:`DeepRMNetConfig.flow_scales`)."""
        return self.config.flow_scales

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps, fine to coarse, that the pose and flow heads read (the last at stride 32)."""
        if self.encoder is None:
            return self.backbone(x)[1:]
        b, _, h, w = x.shape
        zeros = x.new_zeros(2 * b, 2, h, w)  # genflow's depth and validity channels: RGB only
        crops = torch.cat([torch.cat([x[:, 3:], x[:, :3]], 0), zeros], 1)  # rendered, then observed
        f_ren, f_obs = self.encoder(crops).split(b, 0)
        if f_ren.shape[-1] * FRONT_STRIDE != w or f_ren.shape[-2] * FRONT_STRIDE != h:
            raise ValueError(f"crop size must be a multiple of {FRONT_STRIDE}, got {h}×{w}")
        corr = CorrPyramid(f_ren, f_obs, self.config.corr_levels, self.config.corr_radius)
        grid = coords_grid(b, f_ren.shape[-2], f_ren.shape[-1], dtype=x.dtype, device=x.device)
        joined = torch.cat([corr.lookup(grid), f_ren, f_obs], 1)
        return [joined, *self.backbone(joined)]

    def initial_state(self, batch: int, device: torch.device | None = None) -> RecurrentState:
        """Zero state of ``batch`` objects (an object's first iteration)."""
        hid, n = self.config.hidden_size, self.config.layers
        z = tuple(torch.zeros(batch, hid, device=device) for _ in range(n))
        if self.config.cell == "lstm":
            return RecurrentState(z, tuple(torch.zeros(batch, hid, device=device) for _ in range(n)))
        if self.config.cell == "gru":
            return RecurrentState(z)
        return RecurrentState(())

    def forward(self, x: torch.Tensor, state: RecurrentState | None = None, *, flow: bool = False) -> DeepRMOutput:
        """One refinement iteration.

        Args:
            x: ``(B, 6, S, S)`` input (:func:`make_input`).
            state: the previous iteration's state, or ``None`` (zeros: a new object).
            flow: also run the flow decoder (training).

        Returns:
            The rotation and translation updates, the new state and (if asked) the flows.
        """
        b = x.shape[0]
        feats = self.features(x)
        y = self.pool(feats[-1]).flatten(1)
        if state is None:
            state = self.initial_state(b, x.device)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if self.config.cell == "lstm":
                h, c = cell(y, (state.h[i], state.c[i]))
                cs.append(c)
            elif self.config.cell == "gru":
                h = cell(y, state.h[i])
            else:
                h = cell(y)
            if self.config.cell != "fc":
                hs.append(h)
            y = h
        quat = F.normalize(self.rot_head(y), dim=-1)
        trans = self.trans_head(y)
        flows: list[torch.Tensor] = []
        if flow:
            if self.flow is None:
                raise ValueError("this network was built without a flow head (flow_head=False)")
            flows = self.flow(feats)
        return DeepRMOutput(quat, trans, RecurrentState(tuple(hs), tuple(cs)), flows)


def load_deeprm_model(
    spec: str | os.PathLike[str] | WeightsSpec | None = None, device: str | torch.device = "cpu"
) -> DeepRMNet:
    """Load a :class:`DeepRMNet` (eval mode) from a weights spec: ``None`` / ``"package"`` (the shipped
    ``model.pt``), ``"package:NAME"`` or a file (a ``model.pt`` or a run's ``last.pt`` / ``best.pt``).

    Raises:
        FileNotFoundError: no such file, or no shipped weights of that name (the message lists them).
        ValueError: not a checkpoint, or one of another method.
    """
    return load_model(spec, METHOD, lambda c: DeepRMNet(DeepRMNetConfig.from_dict(c)), device)
