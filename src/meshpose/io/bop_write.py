"""Writing BOP datasets: the models folder and scenes, so that bop_toolkit and :class:`BopDataset` read them.

Used by ``meshpose synth`` and by the tests' tiny generated datasets. Metres inside; millimetres in the files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.io.images import write_depth, write_mask, write_rgb
from meshpose.types import Camera, ObjectModel, Pose

__all__ = ["SceneWriter", "models_info_entry", "write_camera_json", "write_models"]


def models_info_entry(obj: ObjectModel, *, continuous: Sequence[tuple[Sequence[float], Sequence[float]]] = ()) -> dict:
    """A ``models_info.json`` entry (millimetres) for an object.

    Args:
        obj: the object (metres). Its non-identity ``symmetries`` are written as ``symmetries_discrete`` unless
            ``continuous`` describes them.
        continuous: ``(axis, offset_m)`` pairs written as ``symmetries_continuous`` (then the discrete list is
            left out, since the expanded transforms of a continuous symmetry are not discrete symmetries).
    """
    v = np.asarray(obj.mesh.vertices, dtype=np.float64) * 1e3
    lo, hi = v.min(0), v.max(0)
    entry: dict[str, Any] = {
        "diameter": obj.diameter * 1e3,
        "min_x": lo[0],
        "min_y": lo[1],
        "min_z": lo[2],
        "size_x": hi[0] - lo[0],
        "size_y": hi[1] - lo[1],
        "size_z": hi[2] - lo[2],
    }
    if continuous:
        entry["symmetries_continuous"] = [
            {"axis": [float(a) for a in axis], "offset": [float(o) * 1e3 for o in off]} for axis, off in continuous
        ]
    elif obj.is_symmetric:
        mats = []
        for S in obj.symmetries[1:]:
            M = np.array(S, dtype=np.float64)
            M[:3, 3] *= 1e3
            mats.append([float(x) for x in M.reshape(16)])
        entry["symmetries_discrete"] = mats
    return {k: (float(x) if isinstance(x, np.floating) else x) for k, x in entry.items()}


def write_models(
    root: str | Path,
    objects: Sequence[ObjectModel],
    *,
    continuous: dict[int, Sequence[tuple[Sequence[float], Sequence[float]]]] | None = None,
) -> None:
    """Write ``root/models/obj_XXXXXX.ply`` (millimetres, vertex colours baked from textures) and
    ``models_info.json``.

    Textured meshes are written as PLY with per-vertex colours sampled from the texture (PLY keeps no texture);
    pass a dense mesh if appearance matters.
    """
    models = Path(root) / "models"
    models.mkdir(parents=True, exist_ok=True)
    info = {}
    for obj in objects:
        mesh = obj.mesh.copy()
        if getattr(mesh.visual, "kind", None) == "texture":
            mesh.visual = mesh.visual.to_color()  # type: ignore[union-attr]
        mesh.apply_scale(1e3)
        mesh.export(models / f"obj_{obj.obj_id:06d}.ply")
        info[str(obj.obj_id)] = models_info_entry(obj, continuous=(continuous or {}).get(obj.obj_id, ()))
    with (models / "models_info.json").open("w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


def write_camera_json(root: str | Path, camera: Camera, *, depth_scale_mm: float = 0.1) -> None:
    """Write the dataset-level ``camera.json`` (intrinsics and image size of a typical image)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    data = {
        "fx": camera.fx,
        "fy": camera.fy,
        "cx": camera.cx,
        "cy": camera.cy,
        "width": camera.width,
        "height": camera.height,
        "depth_scale": float(depth_scale_mm),
    }
    with (Path(root) / "camera.json").open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def _gt_entry(obj_id: int, pose: Pose) -> dict[str, Any]:
    R, t = pose.numpy()
    return {
        "cam_R_m2c": [float(x) for x in R.reshape(9)],
        "cam_t_m2c": [float(x) for x in (t.reshape(3) * 1e3)],
        "obj_id": int(obj_id),
    }


@dataclass
class SceneWriter:
    """Accumulates the images of one scene and writes the scene's files.

    Args:
        root: dataset folder.
        split: split folder (``"test"``, ``"train_pbr"``…).
        scene_id: scene id.
        depth_scale_mm: millimetres per depth unit in the PNGs.
        rgb_ext: ``".png"`` or ``".jpg"``.
    """

    root: str | Path
    split: str
    scene_id: int
    depth_scale_mm: float = 0.1
    rgb_ext: str = ".png"
    _camera: dict[str, Any] = field(default_factory=dict, init=False)
    _gt: dict[str, Any] = field(default_factory=dict, init=False)
    _gt_info: dict[str, Any] = field(default_factory=dict, init=False)

    @property
    def path(self) -> Path:
        return Path(self.root) / self.split / f"{self.scene_id:06d}"

    def add_image(
        self,
        im_id: int,
        camera: Camera,
        rgb: np.ndarray,
        obj_ids: Sequence[int],
        poses: Pose,
        *,
        depth: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        masks_visib: np.ndarray | None = None,
    ) -> None:
        """Write one image and record its annotations.

        Args:
            im_id: image id.
            camera: the image's camera.
            rgb: ``(H, W, 3)`` uint8.
            obj_ids: the ``N`` annotated instances' object ids.
            poses: ``(N,)`` ``cam_from_obj`` poses.
            depth: optional ``(H, W)`` depth in metres.
            masks: optional ``(N, H, W)`` full silhouettes (``mask/``).
            masks_visib: optional ``(N, H, W)`` visible masks (``mask_visib/``); with ``masks`` they give
                ``visib_fract`` and the boxes of ``scene_gt_info.json``.
        """
        p = self.path
        write_rgb(p / "rgb" / f"{im_id:06d}{self.rgb_ext}", rgb)
        if depth is not None:
            write_depth(p / "depth" / f"{im_id:06d}.png", depth, self.depth_scale_mm)
        self._camera[str(im_id)] = {
            "cam_K": [float(x) for x in camera.K.reshape(9)],
            "depth_scale": float(self.depth_scale_mm),
        }
        self._gt[str(im_id)] = [_gt_entry(o, poses[i]) for i, o in enumerate(obj_ids)]
        infos = []
        for i in range(len(obj_ids)):
            info: dict[str, Any] = {}
            if masks is not None:
                write_mask(p / "mask" / f"{im_id:06d}_{i:06d}.png", masks[i])
                info["px_count_all"] = int(masks[i].sum())
                info["bbox_obj"] = _bbox(masks[i])
            if masks_visib is not None:
                write_mask(p / "mask_visib" / f"{im_id:06d}_{i:06d}.png", masks_visib[i])
                info["px_count_visib"] = int(masks_visib[i].sum())
                info["bbox_visib"] = _bbox(masks_visib[i])
                if depth is not None:
                    info["px_count_valid"] = int((masks_visib[i] & (depth > 0)).sum())
            if masks is not None and masks_visib is not None:
                n_all = info["px_count_all"]
                info["visib_fract"] = float(info["px_count_visib"] / n_all) if n_all > 0 else 0.0
            infos.append(info)
        if masks is not None or masks_visib is not None:
            self._gt_info[str(im_id)] = infos

    def close(self) -> None:
        """Write ``scene_camera.json``, ``scene_gt.json`` and (when masks were given) ``scene_gt_info.json``."""
        p = self.path
        p.mkdir(parents=True, exist_ok=True)
        for name, data in (("scene_camera.json", self._camera), ("scene_gt.json", self._gt)):
            with (p / name).open("w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
        if self._gt_info:
            with (p / "scene_gt_info.json").open("w", encoding="utf-8") as f:
                json.dump(self._gt_info, f, indent=1)


def _bbox(mask: np.ndarray) -> list[int]:
    """BOP box ``[x, y, w, h]`` of a mask (``[-1, -1, -1, -1]`` when empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [-1, -1, -1, -1]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
