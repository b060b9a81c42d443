"""The crops ``contour`` works in: one per object and level, showing the object and its neighbours.

Every object's crop shows the whole scene that may reach into it — the object and every other object whose
projection comes near — so the instance map of the rendering says who owns each pixel: hidden parts of an object
give it nothing, and a contour that is an occlusion boundary (another object in front) is not pulled. Objects
that cannot show in the crop are left out of its render (put behind the camera).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from meshpose.geometry.crop import crop_box_around_object
from meshpose.refine.contour.config import ContourConfig
from meshpose.refine.contour.terms import rgb_to_lab
from meshpose.refine.views import CropView, cut_crop
from meshpose.types import Camera, ObjectModel, Observation, Pose

__all__ = ["HIDDEN_TRANSLATION", "LevelView", "SceneBoxes", "make_level_view"]

#: A translation that puts an object behind the camera, where the renderer skips it (objects left out of a crop).
HIDDEN_TRANSLATION = np.array([0.0, 0.0, -1000.0])


@dataclass
class LevelView:
    """One object's crop at one level, and what the image terms need of it.

    Args:
        crop: the observed crop (``s × s``; no depth; ``valid`` by the exact pixel-centre test).
        hidden: objects that cannot show in this crop (moved behind the camera for its render).
        lab: ``(s, s, 3)`` float32 observed CIE L*a*b*, blurred by ``color_sigma``.
        front_ids: instance ids (``1 + index``) of the objects in front of this one that may show in the crop …
        behind_ids: … and of those behind it.
        line_length: half-length of the correspondence lines, crop pixels.
        color_sigma: σ of the colour blur, crop pixels.
        center_obj: ``(3,)`` object-frame centre of the increments, metres.
        posterior: ``(s, s)`` float32 foreground posterior, fitted at the first evaluation of the level.
    """

    crop: CropView
    hidden: list[int]
    lab: np.ndarray
    front_ids: list[int]
    behind_ids: list[int]
    line_length: int
    color_sigma: float
    center_obj: np.ndarray
    posterior: np.ndarray | None = None

    @property
    def index(self) -> int:
        return self.crop.index

    @property
    def camera(self) -> Camera:
        return self.crop.camera

    @property
    def rgb(self) -> np.ndarray:
        return self.crop.rgb

    @property
    def valid(self) -> np.ndarray:
        return self.crop.valid

    @property
    def mask(self) -> np.ndarray | None:
        return self.crop.mask


@dataclass(frozen=True, eq=False)
class SceneBoxes:
    """The objects' extents for deciding who may show in a crop.

    Args:
        boxes: per object, ``(lo (3,), hi (3,))`` object-frame bounding box of its render mesh, metres.
        centers: per object, ``(3,)`` object-frame centre, metres.
    """

    boxes: list[tuple[np.ndarray, np.ndarray]]
    centers: list[np.ndarray]

    @classmethod
    def of(cls, objects: Sequence[ObjectModel]) -> SceneBoxes:
        """The boxes of the objects' render meshes; centres of the boxes of their surface points (the centres of
        the refiners' increments)."""
        verts = [np.asarray(o.render_mesh.vertices) for o in objects]
        centers = [0.5 * (o.points.min(0) + o.points.max(0)) for o in objects]
        return cls([(v.min(0), v.max(0)) for v in verts], centers)

    def center_depth(self, j: int, R: np.ndarray, t: np.ndarray) -> float:
        """Camera-frame depth of object ``j``'s centre at poses ``R (N, 3, 3)``, ``t (N, 3)``."""
        return float(R[j, 2] @ self.centers[j] + t[j, 2])

    def projected_box(self, j: int, R: np.ndarray, t: np.ndarray, camera: Camera) -> np.ndarray | None:
        """Pixel box ``(x0, y0, x1, y1)`` of object ``j``'s bounding box at poses ``(R, t)``; ``None`` if it reaches
        the camera plane (its projection is unbounded)."""
        lo, hi = self.boxes[j]
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        p = corners @ R[j].T + t[j]
        if np.any(p[:, 2] <= 1e-6):
            return None
        uv = p @ camera.K[:2].T / p[:, 2:3]
        return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])

    def overlaps(self, j: int, R: np.ndarray, t: np.ndarray, camera: Camera, region: np.ndarray) -> bool:
        """Whether object ``j`` may show inside ``region`` (a pixel box of ``camera``)."""
        box = self.projected_box(j, R, t, camera)
        if box is None:
            return True  # reaches the camera plane: render it to be safe
        return bool(box[2] > region[0] and box[0] < region[2] and box[3] > region[1] and box[1] < region[3])

    def neighbours(
        self, i: int, R: np.ndarray, t: np.ndarray, camera: Camera, region: np.ndarray
    ) -> tuple[list[int], list[int], list[int]]:
        """Who may show in object ``i``'s crop: ``(hidden, front_ids, behind_ids)`` — the indices of the objects
        that cannot show inside ``region`` (a pixel box of ``camera``), and the instance ids (``1 + index``) of
        those that may, in front of ``i`` and behind it (by the depth of their centres) at poses ``(R, t)``."""
        hidden: list[int] = []
        front_ids: list[int] = []
        behind_ids: list[int] = []
        depth_i = self.center_depth(i, R, t)
        for j in range(len(R)):
            if j == i:
                continue
            if self.overlaps(j, R, t, camera, region):
                (front_ids if self.center_depth(j, R, t) < depth_i else behind_ids).append(j + 1)
            else:
                hidden.append(j)
        return hidden, front_ids, behind_ids


def make_level_view(
    cfg: ContourConfig,
    obs: Observation,
    scene: SceneBoxes,
    points: np.ndarray,
    i: int,
    level: int,
    around: Pose,
    R_trial: np.ndarray,
    t_trial: np.ndarray,
) -> LevelView:
    """Cut object ``i``'s crop at ``level`` around the pose ``around`` and find its neighbours at the trial poses.

    Args:
        cfg: the options.
        obs: the observation.
        scene: the objects' extents.
        points: ``(P, 3)`` object ``i``'s surface points (object frame, metres).
        i: the object.
        level: the level (index into ``cfg.crop_sizes``).
        around: the (single) pose the crop is centred on.
        R_trial: ``(N, 3, 3)`` the objects' trial rotations (what will be rendered next).
        t_trial: ``(N, 3)`` their translations, metres.

    Raises:
        ValueError: no box around ``around`` (the object crosses the camera plane).
    """
    size = int(cfg.crop_sizes[level])
    box = crop_box_around_object(obs.camera, around, points, padding=cfg.padding)
    crop = cut_crop(obs, box, size, size, index=i, depth=False, valid="centres")
    lab = rgb_to_lab(crop.rgb)
    csig = float(cfg.color_blur_px[level])
    if csig > 0:
        lab = cv2.GaussianBlur(lab, (0, 0), csig)
    # Objects that may show near this one (its projected box plus the reach of the lines and blurs) are
    # rendered with it: occluders and occluded.
    own_box = scene.projected_box(i, R_trial, t_trial, crop.camera)
    reach = float(cfg.line_length_px[level]) + 3.0 * float(cfg.color_blur_px[level]) + 4.0
    region = (
        np.array([-0.5, -0.5, size - 0.5, size - 0.5])
        if own_box is None
        else own_box + np.array([-reach, -reach, reach, reach])
    )
    hidden, front_ids, behind_ids = scene.neighbours(i, R_trial, t_trial, crop.camera, region)
    return LevelView(
        crop=crop,
        hidden=hidden,
        lab=lab,
        front_ids=front_ids,
        behind_ids=behind_ids,
        line_length=int(cfg.line_length_px[level]),
        color_sigma=csig,
        center_obj=scene.centers[i],
    )
