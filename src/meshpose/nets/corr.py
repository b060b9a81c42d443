"""All-pairs correlation pyramid and its windowed lookup (RAFT).

The volume correlates every source (rendered) feature with every target (observed) feature,
``C[b, i, j] = <f1[b, :, i], f2[b, :, j]> / sqrt(D)``; the pyramid average-pools the *target* dimensions, so a
lookup at level ``l`` sees a ``(2r+1)²`` window of a ``2^l`` times coarser target grid around the current match.

Example:
    >>> import torch
    >>> f1, f2 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    >>> corr = CorrPyramid(f1, f2, levels=3, radius=2)
    >>> corr.lookup(coords_grid(2, 8, 8)).shape
    torch.Size([2, 75, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CorrPyramid", "coords_grid"]


def coords_grid(
    batch: int, height: int, width: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(B, 2, H, W)`` pixel coordinates ``(x, y)`` of a feature grid (integers at pixel centres)."""
    y, x = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([x, y], 0)[None].expand(batch, 2, height, width)


class CorrPyramid:
    """Correlation pyramid of two feature maps of equal size.

    Args:
        f1: ``(B, D, H, W)`` source features.
        f2: ``(B, D, H, W)`` target features.
        levels: pyramid levels (level ``l`` pools the target grid by ``2^l``).
        radius: lookup window radius in cells of each level.
    """

    def __init__(self, f1: torch.Tensor, f2: torch.Tensor, levels: int = 4, radius: int = 3) -> None:
        if f1.shape != f2.shape or f1.ndim != 4:
            raise ValueError(f"feature maps must be equal (B, D, H, W), got {tuple(f1.shape)} and {tuple(f2.shape)}")
        b, d, h, w = f1.shape
        self.levels, self.radius = int(levels), int(radius)
        self.shape = (b, h, w)
        corr = torch.einsum("bdi,bdj->bij", f1.reshape(b, d, h * w), f2.reshape(b, d, h * w)) / d**0.5
        vol = corr.reshape(b * h * w, 1, h, w)
        self.pyramid = [vol]
        for _ in range(1, self.levels):
            vol = F.avg_pool2d(vol, 2, stride=2, ceil_mode=True)
            self.pyramid.append(vol)
        r = torch.arange(-self.radius, self.radius + 1, dtype=f1.dtype, device=f1.device)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self._delta = torch.stack([dx, dy], -1).reshape(1, -1, 2)  # (1, (2r+1)², 2) as (x, y)

    @property
    def channels(self) -> int:
        """Channels of a lookup: ``levels · (2r+1)²``."""
        return self.levels * (2 * self.radius + 1) ** 2

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Correlations around ``coords``.

        Args:
            coords: ``(B, 2, H, W)`` target positions ``(x, y)`` of each source cell, in level-0 cells.

        Returns:
            ``(B, levels·(2r+1)², H, W)``; zero where the window leaves the grid. Differentiable w.r.t. the
            features (not through ``coords``, which callers detach).
        """
        b, h, w = self.shape
        c = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 2)
        out = []
        for lvl, vol in enumerate(self.pyramid):
            hl, wl = vol.shape[-2:]
            # A cell of level l pools 2^l level-0 cells: its centre is at level-0 coordinate 2^l (k + ½) - ½.
            pts = (c + 0.5) / 2**lvl - 0.5 + self._delta  # (BHW, K, 2) cell coordinates at this level
            # grid_sample with align_corners=True maps -1/+1 to the centres of the first/last cells.
            scale = torch.tensor([2.0 / max(wl - 1, 1), 2.0 / max(hl - 1, 1)], dtype=pts.dtype, device=pts.device)
            grid = (pts * scale - 1.0)[:, None]  # (BHW, 1, K, 2)
            out.append(F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True))
        corr = torch.cat(out, -1)  # (BHW, 1, 1, levels·K)
        return corr.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
