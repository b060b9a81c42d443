"""Choosing among the poses a refinement visited by how well their outlines lie on the image edges.

A learned refiner can walk away from a good initial pose, and a classical one can wander; both ``flow-pnp`` (by
default) and ``genflow`` (``select_by_edges``) therefore compare the poses an instance visited in one fixed crop
around its initial pose (an :class:`EdgeJudge`) by :func:`edge_alignment_score` — a measure that needs no
appearance model, so it compares poses of real objects whose rendering looks unlike the photo — and return the
best one when it beats the last by a margin (:func:`pick_by_edges`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from meshpose.geometry.crop import crop_box_around_object
from meshpose.refine.views import CropView, cut_crop
from meshpose.types import Observation, Pose

__all__ = ["EdgeJudge", "edge_alignment_score", "observed_gradients", "pick_by_edges"]

#: The fixed crop of an :class:`EdgeJudge`: side (pixels) and padding over the object's projected extent.
JUDGE_SIZE = 128
JUDGE_PADDING = 1.6


@dataclass(frozen=True, eq=False)
class EdgeJudge:
    """One fixed crop of the observation in which the visited poses of one instance are scored.

    Args:
        crop: the crop (``S × S``, around the instance's initial pose).
        grad: ``(S, S, 2)`` float32 image gradients of the crop (:func:`observed_gradients`).
    """

    crop: CropView
    grad: np.ndarray

    @classmethod
    def around(
        cls, obs: Observation, pose: Pose, points: np.ndarray, *, size: int = JUDGE_SIZE, padding: float = JUDGE_PADDING
    ) -> EdgeJudge:
        """The judge of an instance at ``pose`` (single) with surface ``points`` ``(P, 3)`` (object frame, metres).

        Raises:
            ValueError: no box around the pose (the object reaches to or behind the camera plane).
        """
        box = crop_box_around_object(obs.camera, pose, points, padding=padding)
        crop = cut_crop(obs, box, size, size, depth=False, mask=False)
        return cls(crop, observed_gradients(crop.rgb))

    def score(self, silhouette: np.ndarray) -> float:
        """:func:`edge_alignment_score` of a ``(S, S)`` bool silhouette rendered into :attr:`crop`'s camera."""
        return edge_alignment_score(self.grad, silhouette)


def pick_by_edges(scores: Sequence[float] | np.ndarray, margin: float) -> int:
    """Which visited pose to return: the best-scoring one (the first of equals) if its edge score beats the last
    pose's by more than ``margin``, else the last one.

    Args:
        scores: the edge scores of the visited poses, in the order visited (at least one).
        margin: the margin (scores are in [0, 1]) an earlier pose needs over the last one.

    Example:
        >>> pick_by_edges([0.5, 0.8, 0.6], 0.05), pick_by_edges([0.5, 0.62, 0.6], 0.05)
        (1, 2)
    """
    s = np.asarray(scores, dtype=np.float64)
    best = int(np.argmax(s))
    return best if s[best] > s[-1] + margin else len(s) - 1


def observed_gradients(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Colour image gradients for edge scoring: ``(H, W, 2)`` float32, the per-pixel strongest channel gradient.

    Uses the colour channel with the largest gradient magnitude at each pixel, so that an edge between two
    colours of equal brightness (a yellow duck on a green mat) still counts.
    """
    img = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = gx * gx + gy * gy
    best = np.argmax(mag, axis=2)[..., None]
    return np.concatenate([np.take_along_axis(gx, best, 2), np.take_along_axis(gy, best, 2)], axis=2)


def edge_alignment_score(grad: np.ndarray, silhouette: np.ndarray, *, search_px: int = 1) -> float:
    """How well a silhouette's outline lies on image edges of the right orientation, in [0, 1].

    For every outline pixel of ``silhouette`` the image gradient projected on the outline normal is taken (the
    best within ``±search_px`` along the normal), divided by a robust scale of the crop's gradients (their 90th
    percentile) and clipped to 1; the score is the mean. It needs no appearance model, so it compares poses of
    real objects whose rendering looks unlike the photo.

    Args:
        grad: ``(H, W, 2)`` image gradients (:func:`observed_gradients`).
        silhouette: ``(H, W)`` bool rendered silhouette.
        search_px: tolerance along the normal, pixels.

    Returns:
        The score; 0 for an empty silhouette.
    """
    m = silhouette.astype(np.uint8)
    if m.sum() < 4:
        return 0.0
    outline = (m > 0) & (cv2.erode(m, np.ones((3, 3), np.uint8)) == 0)
    ys, xs = np.nonzero(outline)
    sm = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.5)
    nx = cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3)[ys, xs]
    ny = cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3)[ys, xs]
    norm = np.sqrt(nx * nx + ny * ny) + 1e-9
    nx, ny = nx / norm, ny / norm
    h, w = m.shape
    best = np.zeros(len(xs), np.float32)
    for d in range(-search_px, search_px + 1):
        u = np.clip(np.round(xs + d * nx).astype(int), 0, w - 1)
        v = np.clip(np.round(ys + d * ny).astype(int), 0, h - 1)
        g = np.abs(grad[v, u, 0] * nx + grad[v, u, 1] * ny)
        best = np.maximum(best, g)
    mag = np.sqrt((grad**2).sum(-1))
    scale = float(np.percentile(mag, 90)) + 1e-3
    return float(np.clip(best / scale, 0.0, 1.0).mean())
