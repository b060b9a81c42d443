"""Crop batches and network runs that ``genflow``'s training and inference share.

A :class:`CropBatch` holds ``B`` square crops, each of the observation around one instance's current pose and of
that instance rendered alone at that pose into the crop camera; :func:`make_crop_batch` assembles one from numpy
crops (a :class:`~meshpose.render.base.RenderOutput` or training items), :func:`run_network` runs a
:class:`~meshpose.nets.genflow.GenFlowNet` on it, and :func:`load_genflow_model` reads the network from a
checkpoint (:mod:`meshpose.nets.checkpoint`). The refiner (``meshpose.refine.genflow``) and the trainer
(``meshpose.train.genflow``) both build on these, so that the network sees the same inputs in both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from meshpose.nets.checkpoint import WeightsSpec, load_model
from meshpose.nets.genflow import GenFlowNet, GenFlowNetConfig, GenFlowOutput, make_input
from meshpose.types import Camera, Pose

__all__ = ["METHOD", "CropBatch", "RenderedCrops", "load_genflow_model", "make_crop_batch", "run_network"]

#: the method name of genflow checkpoints
METHOD = "genflow"


def load_genflow_model(
    spec: str | os.PathLike[str] | WeightsSpec | None = None, device: str | torch.device = "cpu"
) -> GenFlowNet:
    """Load a :class:`GenFlowNet` (eval mode) from a weights spec: ``None`` / ``"package"`` (the shipped
    ``model.pt``), ``"package:NAME"`` or a file — a ``model.pt`` or a training run's ``last.pt`` / ``best.pt``.

    Raises:
        FileNotFoundError: no such file, or no shipped weights of that name (the message lists them).
        ValueError: not a checkpoint, or one of another method.
    """
    return load_model(spec, METHOD, lambda c: GenFlowNet(GenFlowNetConfig.from_dict(c)), device)


@dataclass(frozen=True, eq=False)
class CropBatch:
    """Network-ready tensors of ``B`` crops (float32 unless said).

    Args:
        obs_rgb: ``(B, 3, S, S)`` observed colour in [0, 1].
        obs_depth: ``(B, 1, S, S)`` observed depth, metres (0 = none).
        ren_rgb: ``(B, 3, S, S)`` rendered colour.
        ren_depth: ``(B, 1, S, S)`` rendered depth, metres.
        ren_xyz: ``(B, 3, S, S)`` rendered object coordinates, metres.
        ren_mask: ``(B, 1, S, S)`` bool rendered mask.
        K: ``(B, 3, 3)`` crop intrinsics.
        pose: ``(B,)`` the rendered poses (float64).
        diameter: ``(B,)`` object diameters, metres.
    """

    obs_rgb: torch.Tensor
    obs_depth: torch.Tensor
    ren_rgb: torch.Tensor
    ren_depth: torch.Tensor
    ren_xyz: torch.Tensor
    ren_mask: torch.Tensor
    K: torch.Tensor
    pose: Pose
    diameter: torch.Tensor

    def to(self, device: torch.device | str) -> CropBatch:
        tensors = ("obs_rgb", "obs_depth", "ren_rgb", "ren_depth", "ren_xyz", "ren_mask", "K", "diameter")
        return dataclasses.replace(
            self, **{k: getattr(self, k).to(device) for k in tensors}, pose=self.pose.to(device=device)
        )


class RenderedCrops(Protocol):
    """What :func:`make_crop_batch` reads of a rendering: a :class:`RenderOutput` or training items' arrays."""

    @property
    def rgb(self) -> np.ndarray: ...  # (B, S, S, 3) float32 in [0, 1]
    @property
    def depth(self) -> np.ndarray: ...  # (B, S, S) float32 metres
    @property
    def xyz(self) -> np.ndarray: ...  # (B, S, S, 3) float32 object coordinates, metres
    @property
    def mask(self) -> np.ndarray: ...  # (B, S, S) bool


def make_crop_batch(
    rgb: np.ndarray,
    depth: np.ndarray | None,
    render: RenderedCrops,
    cameras: Sequence[Camera],
    poses: Pose,
    diameters: Sequence[float],
) -> CropBatch:
    """Assemble a :class:`CropBatch` from numpy crops.

    Args:
        rgb: ``(B, S, S, 3)`` uint8 observed crops.
        depth: ``(B, S, S)`` float32 observed depth crops (metres, 0 = none), or ``None``.
        render: the rendering of each crop (:func:`~meshpose.render.base.render_alone`).
        cameras: the ``B`` crop cameras.
        poses: ``(B,)`` rendered poses.
        diameters: object diameters, metres.
    """
    b, s = rgb.shape[0], rgb.shape[1]

    def chw(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)

    obs_depth = (
        torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[:, None]
        if depth is not None
        else torch.zeros(b, 1, s, s)
    )
    return CropBatch(
        obs_rgb=chw(rgb).float() / 255.0,
        obs_depth=obs_depth,
        ren_rgb=chw(render.rgb).float(),
        ren_depth=torch.from_numpy(np.ascontiguousarray(render.depth))[:, None].float(),
        ren_xyz=chw(render.xyz).float(),
        ren_mask=torch.from_numpy(np.ascontiguousarray(render.mask))[:, None],
        K=torch.from_numpy(np.stack([c.K for c in cameras])).float(),
        pose=poses.to(torch.float64),
        diameter=torch.tensor(list(diameters), dtype=torch.float32),
    )


def run_network(
    net: GenFlowNet | torch.nn.Module,
    batch: CropBatch,
    iterations: int,
    *,
    use_depth: bool = True,
    depth_prior: torch.Tensor | None = None,
    depth_prior_weight: float = 0.0,
) -> GenFlowOutput:
    """Run ``net`` (a :class:`GenFlowNet`, possibly DDP-wrapped) on a :class:`CropBatch`; observed depth is zeroed
    out when ``use_depth`` is false; ``depth_prior`` (``(B,)`` metres) and its weight go to the PnP layer."""
    z_ref = batch.pose.t[:, 2].to(torch.float32)
    obs_depth = batch.obs_depth if use_depth else torch.zeros_like(batch.obs_depth)
    has_depth = bool((obs_depth > 0).any())
    observed = make_input(batch.obs_rgb, obs_depth, None, z_ref, batch.diameter)
    rendered = make_input(batch.ren_rgb, batch.ren_depth, batch.ren_mask, z_ref, batch.diameter)
    return net(
        rendered,
        observed,
        batch.ren_xyz,
        batch.ren_mask,
        batch.K,
        batch.pose.to(torch.float32),
        iterations=iterations,
        observed_depth=obs_depth if has_depth else None,
        depth_prior=depth_prior,
        depth_prior_weight=depth_prior_weight,
    )
