"""Object-centred views for matching: the templates cut around their object, and the query cut around its
detection, both at one scale (the object's box spans ``1 / padding`` of the side), so that the right template
matches the query up to an in-plane rotation, a small scale change and a shift (what stage 2 recovers)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from meshpose.geometry.crop import crop_image, square_crop_box
from meshpose.types import Camera, Detection, Observation, Pose

__all__ = ["QueryView", "TemplateViews", "cut_query", "cut_templates", "rotate_about_centre"]


@dataclass(frozen=True, eq=False)
class TemplateViews:
    """The templates of one object, each cut square around its object and resampled to ``S × S``.

    Args:
        obj_id: the object.
        rgb: ``(N, S, S, 3)`` uint8 colour (black background).
        mask: ``(N, S, S)`` bool silhouette.
        xyz: ``(N, S, S, 3)`` float32 object-frame coordinates of the visible surface, metres (0 off the object).
        cameras: ``N`` crop cameras (the template camera cut to each box).
        poses: ``(N,)`` batched ``cam_from_obj`` template poses.
    """

    obj_id: int
    rgb: np.ndarray
    mask: np.ndarray
    xyz: np.ndarray
    cameras: list[Camera]
    poses: Pose

    def __len__(self) -> int:
        return len(self.rgb)


@dataclass(frozen=True, eq=False)
class QueryView:
    """A detection cut square around its box and resampled to ``S × S``.

    Args:
        rgb: ``(S, S, 3)`` uint8 colour; outside the detection mask set to 0 when there is a mask.
        mask: ``(S, S)`` bool region of the object: the detection mask, or its box when it has none.
        camera: the crop camera (the observation's camera cut to the box).
        depth: ``(S, S)`` float32 metres (0 missing), or ``None``.
    """

    rgb: np.ndarray
    mask: np.ndarray
    camera: Camera
    depth: np.ndarray | None


def _square(x0: float, y0: float, x1: float, y1: float, padding: float) -> np.ndarray:
    """The square box ``padding`` × the longer side of ``(x0, y0, x1, y1)``, on its centre."""
    return square_crop_box((0.5 * (x0 + x1), 0.5 * (y0 + y1)), padding * max(x1 - x0, y1 - y0, 1.0))


def cut_templates(
    obj_id: int,
    rgb: np.ndarray,
    mask: np.ndarray,
    xyz: np.ndarray,
    camera: Camera,
    poses: Pose,
    size: int,
    padding: float,
) -> TemplateViews:
    """Cut every rendered template square around its silhouette's box (``padding`` × its longer side).

    Args:
        obj_id: the object.
        rgb, mask, xyz: ``(N, H, W, 3)``, ``(N, H, W)``, ``(N, H, W, 3)`` full templates (one camera).
        camera: their camera.
        poses: ``(N,)`` their ``cam_from_obj`` poses.
        size: output side ``S``, pixels.
        padding: box padding.
    """
    n = len(rgb)
    out_rgb = np.zeros((n, size, size, 3), np.uint8)
    out_mask = np.zeros((n, size, size), bool)
    out_xyz = np.zeros((n, size, size, 3), np.float32)
    cams = []
    for i in range(n):
        ys, xs = np.nonzero(mask[i])
        if len(xs) == 0:  # an object seen from nowhere (cannot happen for a mesh with area): an empty view
            box = np.array([-0.5, -0.5, camera.width - 0.5, camera.height - 0.5])
        else:
            box = _square(xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5, padding)
        out_rgb[i], cam = crop_image(rgb[i], camera, box, size, size)
        out_mask[i] = crop_image(mask[i], camera, box, size, size, interpolation="nearest")[0]
        out_xyz[i] = crop_image(xyz[i], camera, box, size, size, interpolation="nearest")[0]
        cams.append(cam)
    out_xyz[~out_mask] = 0
    return TemplateViews(obj_id, out_rgb, out_mask, out_xyz, cams, poses)


def cut_query(obs: Observation, det: Detection, size: int, padding: float) -> QueryView:
    """Cut a detection square around its box (``padding`` × its longer side), ``size × size``."""
    x0, y0, x1, y1 = det.box_xyxy() - 0.5  # pixel-edge box → centre-at-integer coordinates
    box = _square(x0, y0, x1, y1, padding)
    rgb, cam = crop_image(obs.rgb, obs.camera, box, size, size)
    if det.mask is not None:
        mask = np.asarray(crop_image(det.mask, obs.camera, box, size, size, interpolation="nearest")[0], bool)
        rgb = np.where(mask[..., None], rgb, 0).astype(np.uint8)
    else:
        A = cam.K[:2] @ np.linalg.inv(obs.camera.K)
        u0, v0 = A @ np.array([x0, y0, 1.0])
        u1, v1 = A @ np.array([x1, y1, 1.0])
        uu, vv = np.meshgrid(np.arange(size), np.arange(size))
        mask = (uu >= u0) & (uu <= u1) & (vv >= v0) & (vv <= v1)
    depth = None
    if obs.depth is not None:
        depth = crop_image(obs.depth, obs.camera, box, size, size, interpolation="nearest")[0]
    return QueryView(np.asarray(rgb), mask, cam, depth)


def rotate_about_centre(image: np.ndarray, angle_deg: float, *, nearest: bool = False) -> np.ndarray:
    """Rotate an ``S × S`` image by ``angle_deg`` (counter-clockwise as seen, OpenCV's sense) about its centre."""
    s = image.shape[0]
    M = cv2.getRotationMatrix2D(((s - 1) / 2.0, (s - 1) / 2.0), angle_deg, 1.0)
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = image.astype(np.uint8) if image.dtype == bool else image
    out = cv2.warpAffine(src, M, (s, s), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool) if image.dtype == bool else out
