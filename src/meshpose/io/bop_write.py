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
import trimesh
from numpy.typing import ArrayLike

from meshpose.geometry.crop import mask_bbox
from meshpose.io.images import write_depth, write_mask, write_rgb
from meshpose.io.jsonfile import write_json_atomic
from meshpose.io.models_info import models_info_entry
from meshpose.types import Camera, ObjectModel, Pose

__all__ = [
    "SceneWriter",
    "write_camera_json",
    "write_model_ply",
    "write_models",
]


def write_models(
    root: str | Path,
    objects: Sequence[ObjectModel],
    *,
    continuous: dict[int, Sequence[tuple[Sequence[float], Sequence[float]]]] | None = None,
    discrete: dict[int, Sequence[ArrayLike]] | None = None,
    keep_textures: bool = False,
) -> None:
    """Write ``root/models/obj_XXXXXX.ply`` (millimetres) and ``models_info.json``.

    By default textured meshes are written as PLY with per-vertex colours sampled from the texture (pass a
    dense mesh if appearance matters); with ``keep_textures`` they keep their texture the BOP way (see
    :func:`write_model_ply`). ``continuous`` and ``discrete`` give per-object symmetry lists for
    :func:`models_info_entry`.
    """
    models = Path(root) / "models"
    models.mkdir(parents=True, exist_ok=True)
    info = {}
    for obj in objects:
        write_model_ply(models / f"obj_{obj.obj_id:06d}.ply", obj.mesh, keep_texture=keep_textures)
        info[str(obj.obj_id)] = models_info_entry(
            obj,
            continuous=(continuous or {}).get(obj.obj_id, ()),
            discrete=(discrete or {}).get(obj.obj_id),
        )
    write_json_atomic(models / "models_info.json", info)


def write_model_ply(path: str | Path, mesh: trimesh.Trimesh, *, keep_texture: bool = False) -> None:
    """Write one mesh (metres) as a BOP model PLY in millimetres.

    A textured mesh with ``keep_texture`` is written with per-vertex ``texture_u``/``texture_v`` and a
    ``comment TextureFile <name>.png`` header line, the texture image saved next to it as ``<name>.png`` (the
    layout of BOP's textured models, which bop_toolkit and trimesh read back); otherwise textures are baked
    into vertex colours. Vertex colours are kept. Files are written under a temporary name and renamed, so a
    reader never sees half a model.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    visual = getattr(mesh, "visual", None)
    textured = getattr(visual, "kind", None) == "texture"
    image = None
    if textured and keep_texture:
        material = getattr(visual, "material", None)
        image = getattr(material, "image", None)
        if image is None:
            image = getattr(material, "baseColorTexture", None)
    uv = getattr(visual, "uv", None) if image is not None else None
    if image is not None and uv is not None and len(uv) == len(mesh.vertices):
        from PIL import Image

        tex_name = p.with_suffix(".png").name
        tex_tmp = p.with_name(tex_name + ".tmp")
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        img.convert("RGB").save(tex_tmp, format="PNG")
        tex_tmp.replace(p.with_name(tex_name))
        vertices = np.zeros(len(mesh.vertices), dtype=[("xyz", "<f4", 3), ("uv", "<f4", 2)])
        vertices["xyz"] = np.asarray(mesh.vertices, dtype=np.float64) * 1e3
        vertices["uv"] = np.asarray(uv, dtype=np.float64)
        faces = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<i4", 3)])
        faces["n"] = 3
        faces["idx"] = np.asarray(mesh.faces)
        header = (
            "ply\nformat binary_little_endian 1.0\n"
            f"comment TextureFile {tex_name}\n"
            f"element vertex {len(vertices)}\n"
            "property float x\nproperty float y\nproperty float z\n"
            "property float texture_u\nproperty float texture_v\n"
            f"element face {len(faces)}\n"
            "property list uchar int vertex_indices\nend_header\n"
        )
        with tmp.open("wb") as f:
            f.write(header.encode("ascii"))
            f.write(vertices.tobytes())
            f.write(faces.tobytes())
    else:
        out = mesh.copy()
        if textured:
            out.visual = out.visual.to_color()  # type: ignore[union-attr]
        out.apply_scale(1e3)
        tmp.write_bytes(trimesh.exchange.ply.export_ply(out))
    tmp.replace(p)


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
        png_compress_level: zlib level (0–9) of the PNGs (colour, depth, masks); ``None`` keeps Pillow's
            default (6). Level 1 writes noisy 16-bit depth about 3× faster for files ~20 % larger.
    """

    root: str | Path
    split: str
    scene_id: int
    depth_scale_mm: float = 0.1
    rgb_ext: str = ".png"
    png_compress_level: int | None = None
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
        cam_from_world: Pose | None = None,
        camera_extra: dict[str, Any] | None = None,
        gt_info_extra: Sequence[dict[str, Any]] | None = None,
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
            cam_from_world: optional single camera pose in the scene's world frame (metres), written as BOP's
                ``cam_R_w2c`` and ``cam_t_w2c`` (millimetres).
            camera_extra: extra ``scene_camera.json`` fields of this image.
            gt_info_extra: per instance, ``scene_gt_info.json`` fields that replace the computed ones (e.g.
                ``px_count_all`` and ``bbox_obj`` of the silhouette beyond the image border, as bop_toolkit
                computes them, and the ``visib_fract`` that follows).
        """
        p = self.path
        level = self.png_compress_level
        if level is None or self.rgb_ext != ".png":
            write_rgb(p / "rgb" / f"{im_id:06d}{self.rgb_ext}", rgb)
        else:
            _save_png(p / "rgb" / f"{im_id:06d}.png", np.asarray(rgb, dtype=np.uint8), level)
        if depth is not None:
            if level is None:
                write_depth(p / "depth" / f"{im_id:06d}.png", depth, self.depth_scale_mm)
            else:
                _save_png(p / "depth" / f"{im_id:06d}.png", _depth_units(depth, self.depth_scale_mm), level)
        world: dict[str, Any] = {}
        if cam_from_world is not None:
            R_cw, t_cw = cam_from_world.numpy()
            world["cam_R_w2c"] = [float(x) for x in R_cw.reshape(9)]
            world["cam_t_w2c"] = [float(x) * 1e3 for x in t_cw.reshape(3)]
        self._camera[str(im_id)] = {
            "cam_K": [float(x) for x in camera.K.reshape(9)],
            "depth_scale": float(self.depth_scale_mm),
            **world,
            **(camera_extra or {}),
        }
        if gt_info_extra is not None and len(gt_info_extra) != len(obj_ids):
            raise ValueError(f"gt_info_extra has {len(gt_info_extra)} entries for {len(obj_ids)} instances")
        self._gt[str(im_id)] = [_gt_entry(o, poses[i]) for i, o in enumerate(obj_ids)]
        infos = []
        for i in range(len(obj_ids)):
            info: dict[str, Any] = {}
            if masks is not None:
                self._mask(p / "mask" / f"{im_id:06d}_{i:06d}.png", masks[i])
                info["px_count_all"] = int(masks[i].sum())
                info["bbox_obj"] = _bbox(masks[i])
            if masks_visib is not None:
                self._mask(p / "mask_visib" / f"{im_id:06d}_{i:06d}.png", masks_visib[i])
                info["px_count_visib"] = int(masks_visib[i].sum())
                info["bbox_visib"] = _bbox(masks_visib[i])
                if depth is not None:
                    info["px_count_valid"] = int((masks_visib[i] & (depth > 0)).sum())
            if masks is not None and masks_visib is not None:
                n_all = info["px_count_all"]
                info["visib_fract"] = float(info["px_count_visib"] / n_all) if n_all > 0 else 0.0
            if gt_info_extra is not None:
                info.update(gt_info_extra[i])
            infos.append(info)
        if masks is not None or masks_visib is not None:
            self._gt_info[str(im_id)] = infos

    def _mask(self, path: Path, mask: np.ndarray) -> None:
        if self.png_compress_level is None:
            write_mask(path, mask)
        else:
            _save_png(path, np.asarray(mask, dtype=bool).astype(np.uint8) * 255, self.png_compress_level)

    def close(self) -> None:
        """Write ``scene_camera.json``, ``scene_gt.json`` and (when masks were given) ``scene_gt_info.json``."""
        p = self.path
        p.mkdir(parents=True, exist_ok=True)
        for name, data in (("scene_camera.json", self._camera), ("scene_gt.json", self._gt)):
            write_json_atomic(p / name, _by_image_id(data))
        if self._gt_info:
            write_json_atomic(p / "scene_gt_info.json", _by_image_id(self._gt_info))


def _save_png(path: Path, array: np.ndarray, level: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=int(level))


def _depth_units(depth_m: np.ndarray, depth_scale_mm: float) -> np.ndarray:
    """Depth in metres as 16-bit BOP units (as :func:`~meshpose.io.images.write_depth` stores them)."""
    d = np.asarray(depth_m, dtype=np.float64)
    units = np.round(np.where(np.isfinite(d), d, 0.0) * 1e3 / float(depth_scale_mm))
    if units.max(initial=0) > 65535 or units.min(initial=0) < 0:
        raise ValueError(f"depth exceeds the 16-bit range at depth_scale={depth_scale_mm} mm")
    return units.astype(np.uint16)


def _by_image_id(data: dict[str, Any]) -> dict[str, Any]:
    """The entries ordered by numeric image id (images may be added in any order, e.g. by writer threads)."""
    return {k: data[k] for k in sorted(data, key=int)}


def _bbox(mask: np.ndarray) -> list[int]:
    """BOP box ``[x, y, w, h]`` of a mask, in whole pixels (``[-1, -1, -1, -1]`` when empty)."""
    box = mask_bbox(mask)
    return [-1, -1, -1, -1] if box is None else [int(v) for v in box]
