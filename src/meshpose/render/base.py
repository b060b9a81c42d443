"""The renderer seam: what every renderer takes and returns.

A renderer draws a *scene* — several objects, each at its own ``cam_from_obj`` pose — into a camera, and returns
every per-pixel quantity a render-and-compare method needs, from one pass with correct mutual occlusion:
colour, depth, a mask, the object-frame coordinates of the visible surface (``xyz``), camera-frame normals and the
instance index. A *batch* of scenes (hypotheses) can be drawn in one call, each with its own camera (crops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["Lighting", "RenderOutput", "Renderer", "normalize_scene_batch"]


@dataclass(frozen=True)
class Lighting:
    """Simple shading: ambient + one directional light, Lambertian (and an optional Phong highlight).

    Args:
        ambient: ambient intensity in [0, 1].
        diffuse: directional light intensity.
        direction: ``(3,)`` direction *towards* the light, in the camera frame (default: from the camera).
        specular: Phong specular intensity (0 disables it).
        shininess: Phong exponent.
        color: ``(3,)`` light colour multiplier.

    ``Lighting(ambient=1, diffuse=0)`` returns the unshaded albedo (vertex colour or texture).
    """

    ambient: float = 0.45
    diffuse: float = 0.6
    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)
    specular: float = 0.0
    shininess: float = 20.0
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True, eq=False)
class RenderOutput:
    """Per-pixel outputs of one render call, batched over ``B`` scenes (``B = 1`` for a single scene).

    Args:
        rgb: ``(B, H, W, 3)`` float32 shaded colour in [0, 1]; 0 on the background.
        depth: ``(B, H, W)`` float32 z-depth in metres (camera frame); 0 on the background.
        mask: ``(B, H, W)`` bool, True where any object is visible.
        xyz: ``(B, H, W, 3)`` float32 object-frame coordinates (metres) of the visible surface point, in the frame
            of the object that is visible there; 0 on the background.
        normal: ``(B, H, W, 3)`` float32 unit surface normals in the camera frame; 0 on the background.
        instance: ``(B, H, W)`` int32: ``1 + index`` into the ``objects`` sequence of the visible object; 0 on
            the background.
    """

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    xyz: np.ndarray
    normal: np.ndarray
    instance: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, b: int | slice) -> RenderOutput:
        """Select scenes along the batch axis (an int keeps the batch axis with size 1)."""
        sl = slice(b, b + 1) if isinstance(b, int) else b
        return RenderOutput(
            self.rgb[sl], self.depth[sl], self.mask[sl], self.xyz[sl], self.normal[sl], self.instance[sl]
        )

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


@runtime_checkable
class Renderer(Protocol):
    """Anything that renders scenes of :class:`ObjectModel` at :class:`Pose` into a :class:`Camera`."""

    def render(
        self,
        objects: Sequence[ObjectModel],
        poses: Pose,
        camera: Camera | Sequence[Camera],
        *,
        lighting: Lighting | None = None,
    ) -> RenderOutput:
        """Render ``B`` scenes of the ``N`` ``objects``.

        Args:
            objects: the ``N`` objects of every scene (an object may appear twice: pass it twice).
            poses: ``cam_from_obj`` poses, batch shape ``(N,)`` for one scene or ``(B, N)`` for ``B`` scenes.
            camera: one camera for all scenes, or ``B`` cameras (e.g. one crop per hypothesis). All cameras of
                one call must have the same ``width`` and ``height``.
            lighting: shading; ``None`` uses the renderer's default.

        Returns:
            A :class:`RenderOutput` with batch size ``B`` (1 for poses of shape ``(N,)``).
        """
        ...


def normalize_scene_batch(
    objects: Sequence[ObjectModel], poses: Pose, camera: Camera | Sequence[Camera]
) -> tuple[Pose, list[Camera]]:
    """Check a render call's arguments and bring them to ``poses (B, N)`` and ``B`` cameras.

    Raises:
        ValueError: if the pose batch does not match the objects, the camera count does not match ``B``, or the
            cameras differ in size.
    """
    n = len(objects)
    if n == 0:
        raise ValueError("render needs at least one object")
    shape = tuple(poses.batch_shape)
    if len(shape) == 1:
        poses = poses.reshape(1, shape[0])
    elif len(shape) != 2:
        raise ValueError(f"render poses must have batch shape (N,) or (B, N), got {shape}")
    b, n_pose = (int(s) for s in poses.batch_shape)
    if n_pose != n:
        raise ValueError(f"render got {n} objects but poses for {n_pose}")
    cams = [camera] * b if isinstance(camera, Camera) else list(camera)
    if len(cams) != b:
        raise ValueError(f"render got {len(cams)} cameras for {b} scenes")
    if any((c.width, c.height) != (cams[0].width, cams[0].height) for c in cams):
        raise ValueError("all cameras of one render call must have the same width and height")
    return poses, cams
