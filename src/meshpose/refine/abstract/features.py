"""Dense descriptors of images: the seam between the ``abstract`` refiner and the network that computes them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from meshpose.refine.base import RefinerError

__all__ = ["DescriptorExtractor", "NetExtractor"]


@runtime_checkable
class DescriptorExtractor(Protocol):
    """Maps images to dense descriptors; the background (and what the net calls background) maps to ``0``.

    ``dim`` is the descriptor size ``D``; ``digest`` names the mapping (e.g. a hash of the weights), so that
    descriptors fused onto meshes with it are cached under a key of their own.
    """

    @property
    def dim(self) -> int: ...

    @property
    def digest(self) -> str: ...

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, H, W, 3)`` uint8 images → ``(B, H, W, D)`` float32 descriptors and ``(B, H, W)`` float32
        foreground probabilities."""
        ...


class NetExtractor:
    """A :class:`DescriptorExtractor` over a trained :class:`~meshpose.nets.descriptor.DescriptorNet`.

    Args:
        weights: a weights spec: a file (``model.pt`` of ``meshpose train abstract``), ``None`` / ``"package"``
            (the weights shipped with meshpose) or ``"package:NAME"``.
        batch: images per forward pass.

    Raises:
        RefinerError: no weights given and none shipped, or a file that cannot be read.
    """

    def __init__(self, weights: str | Path | None = None, batch: int = 16) -> None:
        from meshpose.nets.checkpoint import resolve_weights
        from meshpose.nets.descriptor import METHOD, load_descriptor_net

        try:
            path = resolve_weights(weights, METHOD)
        except ValueError as exc:
            raise RefinerError(f"abstract: {exc}") from exc
        if not path.is_file():
            if weights is None:
                raise RefinerError(
                    "abstract: no descriptor network weights are shipped; train them with `meshpose train abstract` "
                    "and pass weights=PATH/model.pt"
                )
            raise RefinerError(f"abstract: descriptor weights {weights} ({path}) do not exist")
        try:
            self.net = load_descriptor_net(path)
        except Exception as exc:  # any unreadable file is a clear input error
            raise RefinerError(f"abstract: cannot load descriptor weights {path}: {exc}") from exc
        self.net.eval()
        self.path = path
        self.batch = int(batch)
        self._digest = hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()
        self._dim = int(self.net.config.dim)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def digest(self) -> str:
        return self._digest

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        imgs = np.asarray(rgb)
        if imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(f"NetExtractor: expected (B, H, W, 3) images, got {imgs.shape}")
        descs, fgs = [], []
        for s in range(0, len(imgs), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(imgs[s : s + self.batch])).permute(0, 3, 1, 2).float() / 255.0
            d, logit = self.net(x)
            descs.append(d.permute(0, 2, 3, 1).numpy())
            fgs.append(torch.sigmoid(logit[:, 0]).numpy())
        return np.concatenate(descs).astype(np.float32), np.concatenate(fgs).astype(np.float32)
