"""Camera maths of the GL renderer: the projection matrix from ``K``, near/far planes, screen footprints."""

from __future__ import annotations

import numpy as np

from meshpose.types import Camera

__all__ = ["depth_range", "footprint", "opencv_projection"]


def opencv_projection(camera: Camera, near: float, far: float) -> np.ndarray:
    """The GL projection matrix of an OpenCV camera (clip coordinates from camera-frame points).

    The OpenCV pixel ``u = (fx x + s y + cx z) / z`` maps to ``x_ndc = (2 u + 1) / W - 1``, so the image edge
    ``u = -0.5`` is ``x_ndc = -1`` and pixel centres fall on GL fragment centres; likewise
    ``y_ndc = (2 v + 1) / H - 1`` — image row ``v`` is framebuffer row ``v``, and a read-back image needs no
    flip. (This mirrors the image, so the on-screen winding of every triangle flips: front faces are the
    clockwise ones.) ``z_ndc`` maps ``z = near`` to -1 and ``z = far`` to +1; ``w_clip = z``.

    Args:
        camera: the camera (``K`` in pixels, size).
        near: near clipping distance (camera z), metres, ``> 0``.
        far: far clipping distance, metres, ``> near``.

    Returns:
        ``(4, 4)`` float64 matrix ``P`` with ``clip = P @ [x, y, z, 1]`` for camera-frame ``(x, y, z)``.

    Example:
        >>> cam = Camera.from_fxfycxcy(100.0, 100.0, 15.5, 11.5, width=32, height=24)
        >>> clip = opencv_projection(cam, 0.1, 10.0) @ np.array([0.0, 0.0, 1.0, 1.0])
        >>> (clip[:2] / clip[3]).round(6).tolist()  # the principal point is the image centre here
        [0.0, 0.0]
    """
    if not (0 < near < far):
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    K = camera.K
    w, h = camera.width, camera.height
    P = np.zeros((4, 4))
    P[0, 0] = 2.0 * K[0, 0] / w
    P[0, 1] = 2.0 * K[0, 1] / w
    P[0, 2] = (2.0 * K[0, 2] + 1.0) / w - 1.0
    P[1, 1] = 2.0 * K[1, 1] / h
    P[1, 2] = (2.0 * K[1, 2] + 1.0) / h - 1.0
    P[2, 2] = (far + near) / (far - near)
    P[2, 3] = -2.0 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


def footprint(centers: np.ndarray, radii: np.ndarray, visible: np.ndarray, cams: list[Camera]) -> np.ndarray:
    """Pixel boxes that contain every fragment of the visible objects of each scene.

    Each object lies inside its bounding sphere, hence inside the sphere's axis-aligned cube in the camera frame;
    when the cube is in front of the camera its 8 projected corners bound the object's image. A cube reaching
    to ``z ≤ 0`` gives the whole image.

    Args:
        centers: ``(B, N, 3, 1)`` camera-frame bounding-sphere centres, metres.
        radii: ``(N,)`` radii, metres.
        visible: ``(B, N)`` which objects are drawn.
        cams: the ``B`` cameras (one size ``W × H``).

    Returns:
        ``(B, 4)`` int64 ``(x0, y0, x1, y1)``: columns ``x0 ≤ u < x1``, rows ``y0 ≤ v < y1`` (empty if none).
    """
    width, height = cams[0].width, cams[0].height
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    corners = centers[..., 0][:, :, None, :] + radii[None, :, None, None] * signs  # (B, N, 8, 3)
    K = np.stack([c.K for c in cams])  # (B, 3, 3)
    proj = np.einsum("bij,bnkj->bnki", K, corners)
    in_front = corners[..., 2].min(axis=2) > 1e-9  # (B, N)
    z = np.where(in_front[..., None], proj[..., 2], 1.0)
    u, v = proj[..., 0] / z, proj[..., 1] / z
    # Fragments sit at pixel centres inside the projection; one pixel of margin covers vertex snapping.
    box = np.stack(
        [
            np.floor(u.min(axis=2)) - 1,
            np.floor(v.min(axis=2)) - 1,
            np.ceil(u.max(axis=2)) + 2,
            np.ceil(v.max(axis=2)) + 2,
        ],
        axis=-1,
    )
    box = np.where(in_front[..., None], box, [0, 0, width, height])
    box = np.clip(box, 0, [width, height, width, height])
    box = np.where(visible[..., None], box, [width, height, 0, 0])  # empty
    out = np.stack([box[..., 0].min(1), box[..., 1].min(1), box[..., 2].max(1), box[..., 3].max(1)], axis=-1)
    return out.astype(np.int64)


def depth_range(z_min: np.ndarray, z_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-scene near/far planes that enclose every object's bounding sphere (with a small margin).

    Args:
        z_min: ``(B, N)`` nearest camera z of each object's bounding sphere, metres.
        z_max: ``(B, N)`` farthest camera z.

    Returns:
        ``near (B,)``, ``far (B,)``, with ``near ≥ far / 1000`` (an object reaching behind that is clipped).
    """
    ahead = z_max > 0
    far_z = np.max(np.where(ahead, z_max, 0.0), axis=1)
    far = np.maximum(far_z * (1 + 1e-3), 1e-6)
    near_z = np.min(np.where(ahead, z_min, np.inf), axis=1)
    near = np.maximum(near_z - 1e-3 * far, 1e-3 * far)
    empty = far_z <= 0  # nothing in front of the camera: any valid planes will do
    return np.where(empty, 0.1, near), np.where(empty, 1.0, far)
