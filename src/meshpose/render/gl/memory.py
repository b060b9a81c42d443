"""Recycled memory for the renderer's returned images (first-touch page faults cost more than the read-back)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["OutputPool", "carve", "carve_size"]


class OutputPool:
    """Recycles the memory of returned images once the caller no longer holds any of them.

    Writing a fresh 640×480 set of outputs (~14 MB) costs more in first-touch page faults than the whole
    read-back. So outputs are views into pooled byte *slabs*; every live view (or view of a view, or tensor
    made with ``torch.from_numpy``) holds a reference to its slab, and a slab is reused only when its reference
    count is back to what the pool alone holds (measured on a fresh slab, not assumed). Anything still in use
    is never overwritten; at worst the pool allocates new memory.
    """

    def __init__(self, max_slabs: int = 4, max_slab_bytes: int = 64 << 20) -> None:
        self.max_slabs = max_slabs
        self.max_slab_bytes = max_slab_bytes
        self._slabs: list[np.ndarray] = []
        probe = [np.empty(1, np.uint8)]
        self._idle_refs = self._refcounts(probe)[0]

    @staticmethod
    def _refcounts(slabs: list[np.ndarray]) -> list[int]:
        return [sys.getrefcount(slab) for slab in slabs]

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 slab of at least ``nbytes`` bytes that nothing outside the pool references."""
        if nbytes > self.max_slab_bytes:  # big batches: plain memory, not kept afterwards
            return np.empty(nbytes, np.uint8)
        counts = self._refcounts(self._slabs)
        free = [i for i, c in enumerate(counts) if c == self._idle_refs and self._slabs[i].nbytes >= nbytes]
        if free:
            best = min(free, key=lambda i: self._slabs[i].nbytes)
            return self._slabs[best]
        slab = np.empty(nbytes, np.uint8)
        if len(self._slabs) >= self.max_slabs:
            idle = [i for i, c in enumerate(counts) if c == self._idle_refs]
            self._slabs.pop(idle[0] if idle else 0)  # a slab still in use lives on with its user
        self._slabs.append(slab)
        return slab

    def clear(self) -> None:
        self._slabs.clear()

    @property
    def nbytes(self) -> int:
        return sum(slab.nbytes for slab in self._slabs)


def carve(slab: np.ndarray, specs: Sequence[tuple[tuple[int, ...], Any]]) -> list[np.ndarray]:
    """Consecutive arrays of the given shapes and dtypes, 64-byte aligned, viewing ``slab``."""
    out, offset = [], 0
    for shape, dtype in specs:
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        out.append(slab[offset : offset + n].view(dt).reshape(shape))
        offset += (n + 63) // 64 * 64
    return out


def carve_size(specs: Sequence[tuple[tuple[int, ...], Any]]) -> int:
    return sum((int(np.prod(shape)) * np.dtype(dt).itemsize + 63) // 64 * 64 for shape, dt in specs)
