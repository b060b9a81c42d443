"""Overlays: the rendered silhouette contour and the object axes drawn over an image, for eyes to check poses."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from meshpose.render.base import Renderer
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["draw_axes", "draw_contours", "draw_label", "draw_pose_overlay", "side_by_side"]


def draw_contours(
    image: np.ndarray,
    camera: Camera,
    objects: Sequence[ObjectModel],
    poses: Pose,
    *,
    color: tuple[int, int, int] = (0, 255, 0),
    thickness: int = 2,
    renderer: Renderer | None = None,
) -> np.ndarray:
    """Draw the outline of each object's rendered silhouette (as if alone in the image) onto a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image of ``camera``.
        camera: the image's camera.
        objects: ``N`` objects.
        poses: ``(N,)`` ``cam_from_obj`` poses.
        color: RGB line colour.
        thickness: line width in pixels.
        renderer: renderer to use (default: the process-wide GL renderer).

    Returns:
        ``(H, W, 3)`` uint8 copy with the contours drawn.
    """
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    out = np.ascontiguousarray(image.copy())
    poses = poses.reshape(-1)
    # Each object alone, so that its outline is whole even where another object hides it.
    for i, obj in enumerate(objects):
        r = renderer.render([obj], poses[i : i + 1], camera)
        mask = r.mask[0].astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, thickness, lineType=cv2.LINE_AA)
    return out


def draw_axes(
    image: np.ndarray,
    camera: Camera,
    poses: Pose,
    lengths_m: Sequence[float],
    *,
    thickness: int = 2,
    alpha: float = 1.0,
) -> np.ndarray:
    """Draw each pose's object axes (x red, y green, z blue) from the object origin, on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        camera: the image's camera.
        poses: ``(N,)`` ``cam_from_obj`` poses.
        lengths_m: axis length per pose, metres.
        thickness: line width in pixels.
        alpha: opacity of the axes (1 = opaque).
    """
    out = np.ascontiguousarray(image.copy())
    layer = out.copy()
    R, t = poses.numpy()
    R, t = R.reshape(-1, 3, 3), t.reshape(-1, 3)
    for i in range(len(R)):
        pts = np.vstack([np.zeros(3), np.eye(3) * float(lengths_m[i])])
        cam = pts @ R[i].T + t[i]
        if np.any(cam[:, 2] <= 1e-6):
            continue  # behind the camera: nothing sensible to draw
        uv = cam[:, :2] / cam[:, 2:3] * [camera.fx, camera.fy] + [camera.cx, camera.cy]
        o = tuple(round(v) for v in uv[0])
        for k, col in enumerate(((255, 0, 0), (0, 255, 0), (0, 80, 255))):
            e = tuple(round(v) for v in uv[k + 1])
            cv2.line(layer, o, e, col, thickness, lineType=cv2.LINE_AA)
    if alpha >= 1.0:
        return layer
    return cv2.addWeighted(layer, alpha, out, 1.0 - alpha, 0.0)


def draw_label(image: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int]) -> np.ndarray:
    """Write ``text`` at ``org`` (pixels, baseline-left) with a dark outline so it reads on any background."""
    out = np.ascontiguousarray(image.copy())
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return out


def draw_pose_overlay(
    image: np.ndarray,
    camera: Camera,
    objects: Sequence[ObjectModel],
    layers: Sequence[tuple[str, Pose, tuple[int, int, int]]],
    *,
    renderer: Renderer | None = None,
) -> np.ndarray:
    """Contours and axes of several sets of poses (e.g. initial, refined, ground truth), with a legend.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        camera: its camera.
        objects: the ``N`` objects.
        layers: ``(label, poses (N,), rgb colour)`` drawn in order (later layers on top).
        renderer: renderer for the silhouettes (default: the process-wide GL renderer).
    """
    out = image
    lengths = [0.5 * o.diameter for o in objects]
    for k, (label, poses, color) in enumerate(layers):
        out = draw_contours(out, camera, objects, poses, color=color, renderer=renderer)
        out = draw_axes(out, camera, poses, lengths, alpha=0.9 if k == len(layers) - 1 else 0.5)
        out = draw_label(out, label, (10, 22 + 20 * k), color)
    return out


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate equally tall ``(H, W_i, 3)`` uint8 images horizontally with a white gap."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        pad = np.zeros((h, im.shape[1], 3), np.uint8)
        pad[: im.shape[0]] = im
        parts.append(pad)
        if i + 1 < len(images):
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)
