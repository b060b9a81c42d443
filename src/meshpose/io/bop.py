"""Reading BOP datasets (the I/O boundary where BOP's millimetres become metres).

A BOP dataset folder holds ``models/`` (meshes in millimetres and ``models_info.json``), one folder per split
(``test/``, ``train_pbr/``…) with one folder per scene: ``rgb/`` (or ``gray/``), optional ``depth/``,
``mask_visib/``, ``scene_camera.json``, ``scene_gt.json`` and ``scene_gt_info.json``; optional ``camera.json`` and
``test_targets_bop19.json`` at the top. Everything is read lazily and cached per scene; :attr:`BopDataset.missing`
says which optional parts are absent (e.g. the LM-O sample under ``shared/data`` has no depth, masks or
visibility file), and nothing fails until a missing part is actually asked for.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from meshpose.errors import CameraError, FormatError, ImageError
from meshpose.io.images import image_size, read_depth, read_mask, read_rgb
from meshpose.io.models_info import ModelInfo, read_models_info
from meshpose.types import Camera, ObjectModel, Observation, Pose

if TYPE_CHECKING:
    from meshpose.mesh.load import Units

__all__ = ["BopDataset", "BopFormatError", "GtInstance", "Target"]

log = logging.getLogger(__name__)

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif")
_MESH_EXTS = (".ply", ".obj", ".glb", ".gltf", ".off", ".stl")


class BopFormatError(FormatError):
    """A BOP dataset that is missing a required part or has a malformed file; the message names it."""


@dataclass(frozen=True, eq=False)
class GtInstance:
    """One annotated object instance of an image.

    Args:
        obj_id: object id.
        gt_id: index of the instance in the image's ``scene_gt.json`` list (BOP ``gt_id``).
        pose: single ``cam_from_obj`` pose in metres.
        visib_fract: visible fraction from ``scene_gt_info.json``, or ``None`` when that file is absent.
        bbox_visib: ``(x, y, w, h)`` of the visible part in pixels (BOP convention), or ``None``.
    """

    obj_id: int
    gt_id: int
    pose: Pose
    visib_fract: float | None = None
    bbox_visib: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Target:
    """An evaluation target: ``inst_count`` instances of ``obj_id`` to find in image ``(scene_id, im_id)``."""

    scene_id: int
    im_id: int
    obj_id: int
    inst_count: int


def _read_json(path: Path) -> Any:
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BopFormatError(f"malformed JSON in {path}: {exc}") from exc


def _model_folders(root: Path) -> list[str]:
    """Names of the folders of ``root`` that hold ``obj_XXXXXX`` meshes (e.g. ``models``, ``models_eval``)."""
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and any(f.suffix.lower() in _MESH_EXTS for f in p.glob("obj_*.*")):
            out.append(p.name)
    return out


def _missing_split_message(root: Path, split: str) -> str:
    """The error for a split folder that is not there, naming the splits there are (folders of scene folders)."""
    models = set(_model_folders(root))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in models)
    splits = [p.name for p in folders if any(c.is_dir() and c.name.isdigit() for c in p.iterdir())]
    if len(splits) == 1:
        return f"BOP dataset {root} has no split '{split}'; its only split is '{splits[0]}' (pass --split {splits[0]})"
    if splits:
        return f"BOP dataset {root} has no split '{split}' (splits: {', '.join(splits)})"
    return f"BOP dataset {root} has no split '{split}' (folders: {', '.join(p.name for p in folders) or 'none'})"


class BopDataset:
    """A BOP dataset split, read lazily.

    Args:
        root: the dataset folder (contains ``models/`` and the split folder).
        split: split folder name, e.g. ``"test"`` or ``"train_pbr"``. A missing split is an error (never
            replaced silently by another one); when the dataset has exactly one split the message names it.
        models_dir: folder of the meshes inside ``root``: ``"models"`` (default), or the ``"models_eval"`` /
            ``"models_eval_lowres"`` that BOP datasets also ship.
        units: units of the mesh files: ``"mm"`` (default, BOP's), ``"m"``, or ``"auto"`` (millimetres when a
            mesh is larger than 5 units). An explicit value is always honoured; ``models_info.json`` is read
            in BOP's millimetres whatever ``units`` says.

    Raises:
        BopFormatError: ``root``, the models folder or the split folder is missing (the message lists the
            model folders or the splits the dataset has).
        ValueError: ``units`` is not ``"mm"``, ``"m"`` or ``"auto"``.

    Example:
        >>> ds = BopDataset("path/to/lmo")                         # doctest: +SKIP
        >>> obs = ds.observation(2, 3); gts = ds.gt(2, 3)           # doctest: +SKIP
    """

    def __init__(
        self, root: str | Path, split: str = "test", *, models_dir: str = "models", units: Units = "mm"
    ) -> None:
        if units not in ("mm", "m", "auto"):
            raise ValueError(f"units must be 'mm', 'm' or 'auto', got {units!r}")
        self.root = Path(root)
        self.split = split
        self.units: Units = units
        if not self.root.is_dir():
            raise BopFormatError(f"BOP dataset folder not found: {self.root}")
        self.models_path = self.root / models_dir
        if not self.models_path.is_dir():
            found = _model_folders(self.root)
            have = f"model folders found: {', '.join(found)}" if found else "no folder of obj_XXXXXX meshes found"
            raise BopFormatError(f"BOP dataset {self.root} has no {models_dir}/ folder ({have})")
        self.split_path = self.root / split
        if not self.split_path.is_dir():
            raise BopFormatError(_missing_split_message(self.root, split))
        self._scene_cache: dict[tuple[int, str], Any] = {}
        self._objects: dict[int, ObjectModel] = {}

    def __repr__(self) -> str:
        return f"BopDataset({str(self.root)!r}, split={self.split!r})"

    # --- models -------------------------------------------------------------------------------------------
    @cached_property
    def models_info(self) -> dict[int, ModelInfo]:
        """``models_info.json`` keyed by ``obj_id``, in metres (:class:`~meshpose.io.models_info.ModelInfo`)."""
        for p in (self.models_path / "models_info.json", self.root / "models_info.json"):
            if p.is_file():
                try:
                    return read_models_info(p)
                except ValueError as exc:
                    raise BopFormatError(str(exc)) from exc
        return {}

    @cached_property
    def object_ids(self) -> list[int]:
        """Ids of the objects that have a mesh file."""
        ids = set()
        for p in self.models_path.glob("obj_*.*"):
            if p.suffix.lower() in _MESH_EXTS:
                try:
                    ids.add(int(p.stem.split("_")[1]))
                except (IndexError, ValueError):
                    continue
        if not ids:
            raise BopFormatError(f"no obj_XXXXXX mesh files in {self.models_path}")
        return sorted(ids)

    def model_path(self, obj_id: int) -> Path:
        for ext in _MESH_EXTS:
            p = self.models_path / f"obj_{obj_id:06d}{ext}"
            if p.is_file():
                return p
        raise BopFormatError(f"no mesh for object {obj_id} in {self.models_path}")

    def object(self, obj_id: int) -> ObjectModel:
        """The :class:`ObjectModel` of ``obj_id`` (metres; symmetries from ``models_info.json``), cached."""
        if obj_id not in self._objects:
            from meshpose.mesh import load_object_model

            info = self.models_info.get(obj_id)
            symmetries = info.symmetry_transforms() if info is not None else None
            if info is None:
                log.warning("object %d has no models_info.json entry: treating it as asymmetric", obj_id)
            start = time.perf_counter()
            path = self.model_path(obj_id)
            model = load_object_model(path, obj_id, units=self.units, symmetries=symmetries, name=f"obj_{obj_id:06d}")
            log.info(
                "loaded object %d (%s): %d faces in %.2f s",
                obj_id,
                path.name,
                len(model.mesh.faces),
                time.perf_counter() - start,
            )
            self._objects[obj_id] = model
        return self._objects[obj_id]

    def objects(self, obj_ids: Sequence[int] | None = None) -> dict[int, ObjectModel]:
        """Object models by id (all objects with a mesh when ``obj_ids`` is None)."""
        return {i: self.object(i) for i in (self.object_ids if obj_ids is None else obj_ids)}

    def diameter(self, obj_id: int) -> float:
        """Object diameter in metres (from ``models_info.json`` when present, else from the mesh)."""
        info = self.models_info.get(obj_id)
        if info is not None and info.diameter is not None:
            return info.diameter
        return self.object(obj_id).diameter

    # --- scenes ---------------------------------------------------------------------------------------------
    @cached_property
    def scene_ids(self) -> list[int]:
        ids = []
        for p in self.split_path.iterdir():
            if p.is_dir() and p.name.isdigit():
                ids.append(int(p.name))
        return sorted(ids)

    def scene_path(self, scene_id: int) -> Path:
        p = self.split_path / f"{scene_id:06d}"
        if not p.is_dir():
            raise BopFormatError(f"scene {scene_id} not found in {self.split_path}")
        return p

    def _scene_json(self, scene_id: int, name: str, *, required: bool) -> dict[int, Any] | None:
        key = (scene_id, name)
        if key not in self._scene_cache:
            p = self.scene_path(scene_id) / name
            if not p.is_file():
                if required:
                    raise BopFormatError(f"scene {scene_id} of {self.root} has no {name}")
                self._scene_cache[key] = None
            else:
                self._scene_cache[key] = {int(k): v for k, v in _read_json(p).items()}
        return self._scene_cache[key]

    def image_ids(self, scene_id: int) -> list[int]:
        """Image ids of a scene (from ``scene_camera.json``)."""
        cams = self._scene_json(scene_id, "scene_camera.json", required=True)
        assert cams is not None
        return sorted(cams)

    def image_keys(self, scene_ids: Sequence[int] | None = None, *, targets_only: bool = True) -> list[tuple[int, int]]:
        """``(scene_id, im_id)`` of the images to process.

        With ``targets_only`` and a ``test_targets_bop19.json`` present, only the images it lists; else all images.
        """
        scenes = self.scene_ids if scene_ids is None else list(scene_ids)
        if targets_only and self.targets_file is not None:
            keys = sorted({(t.scene_id, t.im_id) for t in self.targets() if t.scene_id in scenes})
            return keys
        return [(s, i) for s in scenes for i in self.image_ids(s)]

    @cached_property
    def targets_file(self) -> Path | None:
        for name in ("test_targets_bop19.json", "test_targets_bop24.json"):
            p = self.root / name
            if p.is_file():
                return p
        return None

    def targets(self) -> list[Target]:
        """Evaluation targets: from ``test_targets_bop19.json`` when present, else every GT object of every image."""
        if self.targets_file is not None:
            raw = _read_json(self.targets_file)
            out = []
            for i, t in enumerate(raw):
                try:
                    out.append(Target(int(t["scene_id"]), int(t["im_id"]), int(t["obj_id"]), int(t["inst_count"])))
                except (KeyError, TypeError, ValueError) as exc:
                    raise BopFormatError(f"{self.targets_file}: entry {i} is malformed ({exc})") from exc
            return out
        out = []
        for s in self.scene_ids:
            gts = self._scene_json(s, "scene_gt.json", required=False)
            if gts is None:
                continue
            for im_id in sorted(gts):
                counts: dict[int, int] = {}
                for g in gts[im_id]:
                    counts[int(g["obj_id"])] = counts.get(int(g["obj_id"]), 0) + 1
                out.extend(Target(s, im_id, o, c) for o, c in sorted(counts.items()))
        return out

    # --- per image --------------------------------------------------------------------------------------------
    def _image_file(self, scene_id: int, im_id: int, folders: Sequence[str]) -> Path | None:
        sp = self.scene_path(scene_id)
        for folder in folders:
            for ext in _IMAGE_EXTS:
                p = sp / folder / f"{im_id:06d}{ext}"
                if p.is_file():
                    return p
        return None

    def rgb_path(self, scene_id: int, im_id: int) -> Path:
        p = self._image_file(scene_id, im_id, ("rgb", "gray"))
        if p is None:
            raise BopFormatError(f"no rgb/gray image for scene {scene_id} image {im_id} in {self.split_path}")
        return p

    def depth_path(self, scene_id: int, im_id: int) -> Path | None:
        return self._image_file(scene_id, im_id, ("depth",))

    def depth(self, scene_id: int, im_id: int) -> np.ndarray | None:
        """The depth map of an image in metres (``(H, W)`` float32, 0 where missing), ``None`` without one."""
        dp = self.depth_path(scene_id, im_id)
        return None if dp is None else read_depth(dp, self.depth_scale_mm(scene_id, im_id))

    @cached_property
    def _camera_json(self) -> dict[str, Any] | None:
        for name in ("camera.json", f"camera_{self.split}.json"):
            p = self.root / name
            if p.is_file():
                return dict(_read_json(p))
        return None

    def _scene_camera_entry(self, scene_id: int, im_id: int) -> dict[str, Any]:
        cams = self._scene_json(scene_id, "scene_camera.json", required=True)
        assert cams is not None
        if im_id not in cams:
            raise BopFormatError(f"scene {scene_id} has no scene_camera.json entry for image {im_id}")
        return dict(cams[im_id])

    def camera(self, scene_id: int, im_id: int) -> Camera:
        """The camera of an image: ``cam_K`` from ``scene_camera.json``, size from ``camera.json`` or the image.

        Raises:
            CameraError: intrinsics that are missing, malformed, NaN or with a non-positive focal length; the
                message names the file and the value.
        """
        entry = self._scene_camera_entry(scene_id, im_id)
        cam_json = self.root / "camera.json"
        what = f"scene {scene_id} image {im_id}"
        if "cam_K" in entry:
            source, value = self.scene_path(scene_id) / "scene_camera.json", entry["cam_K"]
        elif self._camera_json is not None:
            source, value = cam_json, {k: self._camera_json.get(k) for k in ("fx", "fy", "cx", "cy")}
        else:
            raise CameraError(f"no intrinsics for {what} (no cam_K in scene_camera.json, no camera.json)")
        try:
            if isinstance(value, dict):
                fx, fy, cx, cy = (float(value[k]) for k in ("fx", "fy", "cx", "cy"))
                K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
            else:
                K = np.asarray(value, dtype=np.float64).reshape(3, 3)
            Camera(K, 1, 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise CameraError(
                f"bad intrinsics for {what} in {source}: {exc} (value: {value!r})", path=source, value=value
            ) from exc
        if self._camera_json is not None and "width" in self._camera_json:
            size = (self._camera_json.get("width"), self._camera_json.get("height"))
            try:
                w, h = int(size[0]), int(size[1])  # type: ignore[arg-type]
                return Camera(K, w, h)
            except (TypeError, ValueError) as exc:
                raise CameraError(
                    f"bad image size in {cam_json}: {exc} (width, height = {size!r})", path=cam_json, value=size
                ) from exc
        w, h = image_size(self.rgb_path(scene_id, im_id))
        return Camera(K, w, h)

    def depth_scale_mm(self, scene_id: int, im_id: int) -> float:
        entry = self._scene_camera_entry(scene_id, im_id)
        if "depth_scale" in entry:
            return float(entry["depth_scale"])
        if self._camera_json is not None and "depth_scale" in self._camera_json:
            return float(self._camera_json["depth_scale"])
        return 1.0

    def observation(self, scene_id: int, im_id: int, *, with_depth: bool = True) -> Observation:
        """The image as an :class:`Observation` (depth in metres when the dataset has it and ``with_depth``)."""
        camera = self.camera(scene_id, im_id)
        rgb_path = self.rgb_path(scene_id, im_id)
        rgb = read_rgb(rgb_path)
        if rgb.shape[:2] != (camera.height, camera.width):
            raise ImageError(
                f"image {rgb_path} is {rgb.shape[1]}×{rgb.shape[0]} but its camera is {camera.width}×{camera.height} "
                "(width/height of camera.json): an image of another camera or resolution?",
                path=rgb_path,
                value=(rgb.shape[1], rgb.shape[0]),
                cause="size mismatch",
            )
        depth = None
        if with_depth:
            depth = self.depth(scene_id, im_id)
            if depth is not None and depth.shape != rgb.shape[:2]:
                dp = self.depth_path(scene_id, im_id)
                raise ImageError(
                    f"depth image {dp} is {depth.shape[1]}×{depth.shape[0]} but the colour image {rgb_path.name} "
                    f"is {rgb.shape[1]}×{rgb.shape[0]}: a depth map of another camera or resolution?",
                    path=dp,
                    value=(depth.shape[1], depth.shape[0]),
                    cause="size mismatch",
                )
        return Observation(rgb=rgb, camera=camera, depth=depth)

    def gt(self, scene_id: int, im_id: int) -> list[GtInstance]:
        """Ground-truth instances of an image (poses in metres); visibility when ``scene_gt_info.json`` exists."""
        gts = self._scene_json(scene_id, "scene_gt.json", required=True)
        assert gts is not None
        if im_id not in gts:
            return []
        infos = self._scene_json(scene_id, "scene_gt_info.json", required=False)
        info_list = infos.get(im_id) if infos is not None else None
        out = []
        for gt_id, g in enumerate(gts[im_id]):
            try:
                R = np.asarray(g["cam_R_m2c"], dtype=np.float64).reshape(3, 3)
                t = np.asarray(g["cam_t_m2c"], dtype=np.float64).reshape(3) * 1e-3
                obj_id = int(g["obj_id"])
            except (KeyError, ValueError, TypeError) as exc:
                raise BopFormatError(
                    f"scene {scene_id} image {im_id}: scene_gt entry {gt_id} malformed ({exc})"
                ) from exc
            visib: float | None = None
            bbox: tuple[int, int, int, int] | None = None
            if info_list is not None and gt_id < len(info_list):
                visib = float(info_list[gt_id].get("visib_fract", 0.0))
                bb = info_list[gt_id].get("bbox_visib")
                if bb is not None and len(bb) == 4:
                    bbox = (int(bb[0]), int(bb[1]), int(bb[2]), int(bb[3]))
            out.append(GtInstance(obj_id, gt_id, Pose(R, t), visib, bbox))
        return out

    def mask_visib(self, scene_id: int, im_id: int, gt_id: int) -> np.ndarray | None:
        """The visible mask of GT instance ``gt_id`` as ``(H, W)`` bool, or ``None`` if the dataset has none."""
        p = self.scene_path(scene_id) / "mask_visib" / f"{im_id:06d}_{gt_id:06d}.png"
        return read_mask(p) if p.is_file() else None

    def iter_images(self, keys: Sequence[tuple[int, int]] | None = None) -> Iterator[tuple[int, int]]:
        """Iterate over image keys (all target images by default)."""
        yield from (self.image_keys() if keys is None else keys)

    # --- what is there --------------------------------------------------------------------------------------
    @cached_property
    def missing(self) -> list[str]:
        """Optional parts the dataset lacks (checked on its first scene), e.g. ``["depth", "mask_visib"]``."""
        out = []
        if not self.models_info:
            out.append("models_info.json")
        if self._camera_json is None:
            out.append("camera.json")
        if self.targets_file is None:
            out.append("test_targets_bop19.json")
        if self.scene_ids:
            sp = self.scene_path(self.scene_ids[0])
            for folder in ("depth", "mask_visib"):
                if not (sp / folder).is_dir():
                    out.append(folder)
            for name in ("scene_gt.json", "scene_gt_info.json"):
                if not (sp / name).is_file():
                    out.append(name)
        return out

    @property
    def has_depth(self) -> bool:
        return "depth" not in self.missing

    def describe(self) -> str:
        """One paragraph on what the dataset holds and lacks."""
        n_img = sum(len(self.image_ids(s)) for s in self.scene_ids)
        miss = ", ".join(self.missing) if self.missing else "nothing"
        return (
            f"{self.root} [{self.split}]: {len(self.scene_ids)} scene(s), {n_img} image(s), "
            f"{len(self.object_ids)} object(s); missing: {miss}"
        )
