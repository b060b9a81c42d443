"""A classical dense descriptor for ``picopose``'s stage 1: LINE-2D-like gradient-orientation histograms.

After LINE-2D (Hinterstoisser et al., TPAMI 2012; OpenCV's ``linemod`` in opencv-contrib, which would replace the
project's OpenCV package, so it is written here in torch): per pixel of a lightly blurred image, the gradient of
the colour channel with the strongest gradient; its orientation, modulo 180° (a silhouette edge keeps its
orientation whatever the background's brightness), quantised into 8 bins of 22.5°, kept where the gradient
magnitude passes a threshold and where it is the majority orientation of the pixel's 3 × 3 neighbourhood; each
orientation spread over a ``spread × spread`` neighbourhood (LINE-2D's tolerance to small shifts). A patch's
descriptor (stride 8) is the four 8-bin orientation histograms of the 2 × 2 cells of 8 px around its centre (a
16 px window) plus a ``flat`` bin (the share of its pixels without an orientation, so that flat patches match flat
patches), L2-normalised: 33 dimensions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["GradientOrientationFeatures"]

#: Orientation bins over 180° (LINE-2D's).
BINS = 8


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class GradientOrientationFeatures:
    """LINE-2D-like dense descriptors at stride 8, unit length (see the module docstring); a
    :class:`~meshpose.coarse.picopose.features.DenseFeatures`.

    Args:
        magnitude_threshold: smallest Sobel gradient magnitude (of the 0-255 image) that gets an orientation.
        min_votes: a pixel keeps its orientation when at least this many pixels of its 3 × 3 neighbourhood share
            it (LINE-2D: 5 of 9 — here 4, since the crops are small).
        spread: side of the neighbourhood each orientation is spread over, pixels (odd).
        blur_sigma: Gaussian blur before the gradients, pixels.
        flat_weight: weight of the ``flat`` bin against the orientation histograms.

    Example:
        >>> f = GradientOrientationFeatures()
        >>> img = np.zeros((2, 64, 64, 3), np.uint8); img[:, 16:48, 16:48] = 200
        >>> out = f(img)
        >>> out.shape, bool(torch.allclose(out.norm(dim=1), torch.ones(2, 8, 8)))
        (torch.Size([2, 33, 8, 8]), True)
    """

    stride = 8

    def __init__(
        self,
        magnitude_threshold: float = 40.0,
        min_votes: int = 4,
        spread: int = 3,
        blur_sigma: float = 1.0,
        flat_weight: float = 0.5,
    ) -> None:
        if spread < 1 or spread % 2 == 0:
            raise ValueError(f"spread must be a positive odd number, got {spread}")
        self.magnitude_threshold = float(magnitude_threshold)
        self.min_votes = int(min_votes)
        self.spread = int(spread)
        self.flat_weight = float(flat_weight)
        self._blur = _gaussian_kernel(blur_sigma)
        sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self._sobel = torch.stack([sx, sx.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy

    def orientations(self, images: np.ndarray) -> torch.Tensor:
        """``(B, S, S, 3)`` uint8 → ``(B, 8, S, S)`` float one-hot quantised orientations (0 where none), before
        spreading."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        b, c, h, w = x.shape
        x = x.reshape(b * c, 1, h, w)
        k = self._blur
        r = len(k) // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self._sobel).reshape(b, c, 2, h, w)
        mag2 = (g**2).sum(2)  # (B, C, H, W)
        best = mag2.argmax(1, keepdim=True)  # the strongest channel
        gx = torch.gather(g[:, :, 0], 1, best)[:, 0]
        gy = torch.gather(g[:, :, 1], 1, best)[:, 0]
        strong = torch.gather(mag2, 1, best)[:, 0] >= self.magnitude_threshold**2
        ang = torch.remainder(torch.atan2(gy, gx), math.pi)  # [0, π)
        q = torch.clamp((ang / (math.pi / BINS)).long(), max=BINS - 1)
        onehot = F.one_hot(q, BINS).permute(0, 3, 1, 2).float() * strong[:, None].float()
        votes = F.avg_pool2d(onehot, 3, stride=1, padding=1, count_include_pad=False) * 9.0
        keep = (votes >= self.min_votes - 0.5) & (onehot > 0)
        return keep.float()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """``(B, S, S, 3)`` uint8 images (``S`` a multiple of 8) → ``(B, 33, S/8, S/8)`` unit descriptors."""
        ori = self.orientations(images)
        if self.spread > 1:
            ori = F.max_pool2d(ori, self.spread, stride=1, padding=self.spread // 2)
        flat = 1.0 - ori.amax(1, keepdim=True)
        cells = F.avg_pool2d(torch.cat([ori, flat], 1), 4)  # (B, 9, S/4, S/4), 4 px cells
        # 8 px blocks at 4 px offsets: block y covers 4 px cells y-1 and y
        blocks = F.avg_pool2d(F.pad(cells, (1, 1, 1, 1)), 2, stride=1)  # (B, 9, S/4 + 1, S/4 + 1)
        h, w = cells.shape[-2] // 2, cells.shape[-1] // 2  # patch i's window: blocks 2i (top) and 2i + 2 (bottom)
        parts = [blocks[:, :BINS, dy::2, dx::2][:, :, :h, :w] for dy in (0, 2) for dx in (0, 2)]
        flat_p = F.avg_pool2d(flat, self.stride) * self.flat_weight
        return F.normalize(torch.cat([*parts, flat_p], 1), dim=1)
