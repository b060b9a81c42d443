"""Overlays: the rendered silhouette contour and the object axes drawn over an image, for eyes to check poses."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from meshpose.io.bop import BopDataset, GtInstance
from meshpose.io.images import write_rgb
from meshpose.io.results import ResultRow, group_by_image
from meshpose.render.base import Renderer
from meshpose.types import Camera, ObjectModel, Pose

__all__ = [
    "OverlaySummary",
    "draw_axes",
    "draw_contours",
    "draw_label",
    "draw_pose_overlay",
    "overlay_results",
    "side_by_side",
]

log = logging.getLogger(__name__)

#: Colours (RGB) of :func:`overlay_results`: the results, and the ground truth under them.
RESULT_COLOR = (0, 255, 0)
GT_COLOR = (255, 0, 255)


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


@dataclass
class OverlaySummary:
    """What :func:`overlay_results` drew.

    Args:
        written: the PNG files, one per image.
        failed: ``((scene_id, im_id), reason)`` of the images that could not be drawn.
        skipped_rows: result rows left out (object without a usable mesh).
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[tuple[int, int], str]] = field(default_factory=list)
    skipped_rows: int = 0


def overlay_results(
    dataset: BopDataset,
    rows: Sequence[ResultRow],
    out_dir: str | Path,
    *,
    max_images: int | None = None,
    with_gt: bool = True,
    renderer: Renderer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> OverlaySummary:
    """Draw each result's silhouette outline and axes (green) on its image, over the ground truth (magenta) when
    the dataset has it; one PNG per image, ``OUT/SCENE_IMAGE.png`` (``meshpose overlay``).

    A row whose object has no usable mesh is left out (logged); an image that cannot be read is reported in the
    summary and the others are drawn.

    Args:
        dataset: the dataset the results are of.
        rows: result rows (e.g. :func:`~meshpose.io.results.read_results`).
        out_dir: the folder of the PNGs (created).
        max_images: draw at most this many images (in the results' order).
        with_gt: draw the ground truth too, where the dataset has ``scene_gt.json``.
        renderer: renderer of the silhouettes (default: the process-wide GL renderer).
        progress: called as ``progress(done, total)`` after each image.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = OverlaySummary()
    images = list(group_by_image(rows).items())[:max_images]
    bad_objects: dict[int, str] = {}

    def objects_of(obj_ids: Sequence[int]) -> list[ObjectModel | None]:
        models: list[ObjectModel | None] = []
        for obj_id in obj_ids:
            model = None
            if obj_id not in bad_objects:
                try:
                    model = dataset.object(obj_id)
                except (ValueError, OSError) as exc:
                    bad_objects[obj_id] = str(exc)
                    log.warning("object %d is left out of the overlays: %s", obj_id, exc)
            models.append(model)
        return models

    for n, ((scene_id, im_id), image_rows) in enumerate(images, start=1):
        try:
            obs = dataset.observation(scene_id, im_id, with_depth=False)
            image = obs.rgb
            layers: list[tuple[str, list[int], Pose, tuple[int, int, int]]] = []
            if with_gt:
                gts = _ground_truth(dataset, scene_id, im_id)
                if gts:
                    gt_poses = Pose.stack([g.pose for g in gts])
                    layers.append(("ground truth", [g.obj_id for g in gts], gt_poses, GT_COLOR))
            layers.append(
                ("result", [r.obj_id for r in image_rows], Pose.stack([r.pose for r in image_rows]), RESULT_COLOR)
            )
            for k, (label, obj_ids, poses, color) in enumerate(layers):
                models = objects_of(obj_ids)
                keep = [i for i, m in enumerate(models) if m is not None]
                if label == "result":
                    summary.skipped_rows += len(models) - len(keep)
                if keep:
                    objs = [m for m in models if m is not None]
                    sel = poses.reshape(-1)[torch.as_tensor(keep)]
                    image = draw_contours(image, obs.camera, objs, sel, color=color, renderer=renderer)
                    image = draw_axes(image, obs.camera, sel, [0.5 * o.diameter for o in objs], alpha=0.7)
                image = draw_label(image, f"{label} ({len(keep)})", (10, 22 + 20 * k), color)
            path = out / f"{scene_id:06d}_{im_id:06d}.png"
            write_rgb(path, image)
            summary.written.append(path)
        except (ValueError, OSError, RuntimeError) as exc:
            log.warning("scene %d image %d: no overlay: %s", scene_id, im_id, exc)
            summary.failed.append(((scene_id, im_id), str(exc)))
        if progress is not None:
            progress(n, len(images))
    return summary


def _ground_truth(dataset: BopDataset, scene_id: int, im_id: int) -> list[GtInstance]:
    """The image's ground truth, or none when its scene has no ``scene_gt.json``."""
    if not (dataset.scene_path(scene_id) / "scene_gt.json").is_file():
        return []
    return dataset.gt(scene_id, im_id)
