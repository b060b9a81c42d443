"""A BOP-layout validator for the tests: every id, file and field present and consistent, masks and depth that
agree with the ground-truth poses re-rendered from the dataset's own models.

``validate_bop(root, split)`` returns a list of problems (empty when the dataset is valid); ``assert_valid``
raises with them. It reads the files directly (not through meshpose's reader) so that it checks the layout
bop_toolkit expects, then also opens the dataset with :class:`meshpose.io.BopDataset`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meshpose.types import Camera, Pose

GT_INFO_KEYS = ("bbox_obj", "bbox_visib", "px_count_all", "px_count_valid", "px_count_visib", "visib_fract")
CAMERA_KEYS = ("fx", "fy", "cx", "cy", "width", "height", "depth_scale")
INFO_KEYS = ("diameter", "min_x", "min_y", "min_z", "size_x", "size_y", "size_z")


def _load(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"missing file {path}")
    except ValueError as exc:
        problems.append(f"malformed JSON {path}: {exc}")
    return None


def _is_rotation(values: Any, tol: float = 1e-5) -> bool:
    R = np.asarray(values, dtype=np.float64)
    if R.size != 9 or not np.all(np.isfinite(R)):
        return False
    R = R.reshape(3, 3)
    return bool(np.abs(R @ R.T - np.eye(3)).max() < tol and abs(np.linalg.det(R) - 1.0) < tol)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [-1, -1, -1, -1]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _read_mask(path: Path) -> np.ndarray:
    arr = np.asarray(Image.open(path))
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0


def validate_models(root: Path, problems: list[str]) -> dict[int, dict[str, Any]]:
    """``models/`` and ``models_info.json``: entries, files, diameters, extents and symmetries."""
    from meshpose.mesh import load_mesh, mesh_diameter

    models = root / "models"
    if not models.is_dir():
        problems.append(f"{root} has no models/ folder")
        return {}
    raw = _load(models / "models_info.json", problems)
    if not isinstance(raw, dict):
        return {}
    info: dict[int, dict[str, Any]] = {}
    for key, entry in raw.items():
        if not re.fullmatch(r"\d+", key):
            problems.append(f"models_info.json key {key!r} is not an object id")
            continue
        oid = int(key)
        info[oid] = entry
        missing = [k for k in INFO_KEYS if k not in entry]
        if missing:
            problems.append(f"models_info.json[{oid}] lacks {missing}")
            continue
        ply = models / f"obj_{oid:06d}.ply"
        if not ply.is_file():
            problems.append(f"missing model file {ply}")
            continue
        header = ply.read_bytes()[:2000].split(b"end_header")[0].decode("ascii", "replace")
        tex = re.search(r"comment TextureFile (\S+)", header)
        if tex and not (models / tex.group(1)).is_file():
            problems.append(f"{ply} names the texture {tex.group(1)}, which is missing")
        if tex and "texture_u" not in header:
            problems.append(f"{ply} has a texture but no texture_u/texture_v vertex properties")
        try:
            mesh = load_mesh(ply, units="mm")
        except Exception as exc:
            problems.append(f"{ply} cannot be loaded: {exc}")
            continue
        d_mm = mesh_diameter(mesh) * 1e3
        if abs(d_mm - float(entry["diameter"])) > 1e-3 * d_mm + 1e-3:
            problems.append(f"models_info.json[{oid}] diameter {entry['diameter']} ≠ mesh diameter {d_mm:.4f} mm")
        v = np.asarray(mesh.vertices) * 1e3
        lo, size = v.min(0), v.max(0) - v.min(0)
        got = np.array([entry[k] for k in INFO_KEYS[1:]], dtype=np.float64)
        if np.abs(got - np.concatenate([lo, size])).max() > 1e-2:
            problems.append(f"models_info.json[{oid}] min/size do not match the mesh")
        for i, M in enumerate(entry.get("symmetries_discrete", []) or []):
            A = np.asarray(M, dtype=np.float64)
            if A.size != 16 or not _is_rotation(A.reshape(4, 4)[:3, :3], 1e-4):
                problems.append(f"models_info.json[{oid}] symmetries_discrete[{i}] is not a rigid transform")
            elif not np.allclose(A.reshape(4, 4)[3], [0, 0, 0, 1]):
                problems.append(f"models_info.json[{oid}] symmetries_discrete[{i}] has a bad last row")
        for i, c in enumerate(entry.get("symmetries_continuous", []) or []):
            if not isinstance(c, dict) or len(c.get("axis", ())) != 3 or len(c.get("offset", ())) != 3:
                problems.append(f"models_info.json[{oid}] symmetries_continuous[{i}] needs axis[3] and offset[3]")
    return info


def validate_bop(
    root: str | Path,
    split: str = "test",
    *,
    rerender: bool = True,
    max_rerender_images: int | None = None,
    min_iou: float = 0.97,
    depth_check: bool = True,
) -> list[str]:
    """Check a BOP dataset split; return the list of problems (empty = valid).

    Args:
        root: dataset folder.
        split: split folder.
        rerender: re-render every GT instance from the dataset's models at its GT pose and compare with
            ``mask/`` (IoU ≥ ``min_iou``), ``mask_visib/`` (inside the re-rendered silhouette) and ``depth/``
            (on visible pixels with a measurement: median error ≤ 3 mm + 0.5 %·z and 95 % of pixels within
            6 mm + 1.5 %·z).
        max_rerender_images: re-render at most this many images (all by default).
        min_iou: IoU threshold of ``mask/`` against the re-rendered silhouette.
        depth_check: compare depth (when the dataset has depth).
    """
    root = Path(root)
    problems: list[str] = []
    info = validate_models(root, problems)
    cam = _load(root / "camera.json", problems)
    width = height = None
    if isinstance(cam, dict):
        missing = [k for k in CAMERA_KEYS if k not in cam]
        if missing:
            problems.append(f"camera.json lacks {missing}")
        width, height = cam.get("width"), cam.get("height")
    split_dir = root / split
    if not split_dir.is_dir():
        problems.append(f"{root} has no split folder {split}/")
        return problems
    leftovers = [str(p) for p in root.rglob("*.tmp")]
    if leftovers:
        problems.append(f"temporary files left behind: {leftovers[:5]}")
    scenes = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not scenes:
        problems.append(f"{split_dir} holds no scenes")
    rerendered = 0
    renderer = None
    if rerender:
        from meshpose.render import GLRenderer, Lighting

        renderer = GLRenderer(lighting=Lighting(ambient=1.0, diffuse=0.0))
    from meshpose.io.bop import BopDataset

    try:
        dataset = BopDataset(root, split)
    except Exception as exc:  # the reader must open what we write
        problems.append(f"BopDataset cannot open {root} [{split}]: {exc}")
        return problems
    for scene in scenes:
        if not re.fullmatch(r"\d{6}", scene.name):
            problems.append(f"scene folder {scene} is not named by a 6-digit id")
            continue
        scene_cam = _load(scene / "scene_camera.json", problems)
        scene_gt = _load(scene / "scene_gt.json", problems)
        scene_info = _load(scene / "scene_gt_info.json", problems)
        if not (isinstance(scene_cam, dict) and isinstance(scene_gt, dict) and isinstance(scene_info, dict)):
            continue
        if not (set(scene_cam) == set(scene_gt) == set(scene_info)):
            problems.append(f"{scene}: scene_camera/scene_gt/scene_gt_info list different images")
            continue
        has_depth = (scene / "depth").is_dir()
        world_poses: dict[int, list[np.ndarray]] = {}
        for key in sorted(scene_cam, key=lambda k: int(k) if k.isdigit() else -1):
            where = f"{scene.name}/{key}"
            if not key.isdigit():
                problems.append(f"{scene}: image key {key!r} is not an id")
                continue
            im_id = int(key)
            c = scene_cam[key]
            K = np.asarray(c.get("cam_K", []), dtype=np.float64)
            if K.size != 9:
                problems.append(f"{where}: cam_K must have 9 values")
                continue
            if not (K[0] > 0 and K[4] > 0 and abs(K[3]) < 1e-9 and abs(K[6]) < 1e-9 and abs(K[8] - 1) < 1e-9):
                problems.append(f"{where}: cam_K is not a pinhole matrix")
            if float(c.get("depth_scale", 0)) <= 0:
                problems.append(f"{where}: depth_scale missing or not positive")
            rgb = [p for ext in (".png", ".jpg") if (p := scene / "rgb" / f"{im_id:06d}{ext}").is_file()]
            if not rgb:
                problems.append(f"{where}: no rgb image")
                continue
            with Image.open(rgb[0]) as im:
                size = im.size
                if im.mode != "RGB":
                    problems.append(f"{where}: rgb image mode {im.mode}, expected RGB")
            if width is not None and size != (width, height):
                problems.append(f"{where}: rgb is {size}, camera.json says {(width, height)}")
            depth = None
            if has_depth:
                dpath = scene / "depth" / f"{im_id:06d}.png"
                if not dpath.is_file():
                    problems.append(f"{where}: no depth image")
                else:
                    raw = np.asarray(Image.open(dpath))
                    if raw.ndim != 2 or raw.shape[::-1] != size or raw.dtype not in (np.uint16, np.int32, np.uint8):
                        problems.append(f"{where}: depth image must be single-channel 16-bit of the rgb size")
                    depth = raw.astype(np.float64) * float(c.get("depth_scale", 1.0)) * 1e-3
            cam_from_world = None
            if "cam_R_w2c" in c or "cam_t_w2c" in c:
                if not _is_rotation(c.get("cam_R_w2c")) or len(c.get("cam_t_w2c", [])) != 3:
                    problems.append(f"{where}: cam_R_w2c/cam_t_w2c malformed")
                else:
                    cam_from_world = np.eye(4)
                    cam_from_world[:3, :3] = np.asarray(c["cam_R_w2c"]).reshape(3, 3)
                    cam_from_world[:3, 3] = np.asarray(c["cam_t_w2c"]) * 1e-3
            gts, infos = scene_gt[key], scene_info[key]
            if len(gts) != len(infos):
                problems.append(f"{where}: {len(gts)} GT instances but {len(infos)} gt_info entries")
                continue
            instances = []
            for gt_id, (g, inf) in enumerate(zip(gts, infos, strict=True)):
                w = f"{where} gt {gt_id}"
                if int(g.get("obj_id", -1)) not in info:
                    problems.append(f"{w}: obj_id {g.get('obj_id')} has no models_info.json entry")
                    continue
                if not _is_rotation(g.get("cam_R_m2c")):
                    problems.append(f"{w}: cam_R_m2c is not a rotation")
                    continue
                t = np.asarray(g.get("cam_t_m2c", []), dtype=np.float64)
                if t.size != 3 or not t[2] > 0:
                    problems.append(f"{w}: cam_t_m2c must be 3 values with z > 0")
                    continue
                missing = [k for k in GT_INFO_KEYS if k not in inf and not (k == "px_count_valid" and not has_depth)]
                if missing:
                    problems.append(f"{w}: scene_gt_info lacks {missing}")
                    continue
                mpath = scene / "mask" / f"{im_id:06d}_{gt_id:06d}.png"
                vpath = scene / "mask_visib" / f"{im_id:06d}_{gt_id:06d}.png"
                if not mpath.is_file() or not vpath.is_file():
                    problems.append(f"{w}: missing mask or mask_visib file")
                    continue
                mask, visib = _read_mask(mpath), _read_mask(vpath)
                if mask.shape[::-1] != size or visib.shape[::-1] != size:
                    problems.append(f"{w}: mask size differs from the image")
                    continue
                if np.any(visib & ~mask):
                    problems.append(f"{w}: mask_visib is not inside mask ({int((visib & ~mask).sum())} px)")
                if int(inf["px_count_visib"]) != int(visib.sum()):
                    problems.append(f"{w}: px_count_visib {inf['px_count_visib']} ≠ mask_visib {int(visib.sum())}")
                if list(inf["bbox_visib"]) != _bbox(visib):
                    problems.append(f"{w}: bbox_visib {inf['bbox_visib']} ≠ {_bbox(visib)}")
                if int(inf["px_count_all"]) < int(mask.sum()):
                    problems.append(f"{w}: px_count_all {inf['px_count_all']} < mask pixels {int(mask.sum())}")
                n_all = int(inf["px_count_all"])
                vf = int(visib.sum()) / n_all if n_all > 0 else 0.0
                if abs(float(inf["visib_fract"]) - vf) > 1e-6 or not 0.0 <= float(inf["visib_fract"]) <= 1.0:
                    problems.append(f"{w}: visib_fract {inf['visib_fract']} ≠ {vf}")
                if mask.any():
                    bx, by, bw, bh = (int(x) for x in inf["bbox_obj"])
                    mx, my, mw, mh = _bbox(mask)
                    if not (bx <= mx and by <= my and bx + bw >= mx + mw and by + bh >= my + mh):
                        problems.append(f"{w}: bbox_obj {inf['bbox_obj']} does not hold the mask {_bbox(mask)}")
                if depth is not None and int(inf["px_count_valid"]) != int((mask & (depth > 0)).sum()):
                    problems.append(f"{w}: px_count_valid {inf['px_count_valid']} ≠ {int((mask & (depth > 0)).sum())}")
                R = np.asarray(g["cam_R_m2c"], dtype=np.float64).reshape(3, 3)
                cam_from_obj = np.eye(4)
                cam_from_obj[:3, :3], cam_from_obj[:3, 3] = R, t * 1e-3
                if cam_from_world is not None:
                    world_poses.setdefault(gt_id, []).append(np.linalg.inv(cam_from_world) @ cam_from_obj)
                instances.append((gt_id, int(g["obj_id"]), cam_from_obj, mask, visib))
            # BopDataset must read the image as we do.
            try:
                obs = dataset.observation(int(scene.name), im_id)
                gts_read = dataset.gt(int(scene.name), im_id)
                if len(gts_read) != len(gts) or (obs.camera.width, obs.camera.height) != size:
                    problems.append(f"{where}: BopDataset reads it differently")
            except Exception as exc:
                problems.append(f"{where}: BopDataset fails on it: {exc}")
            if renderer is None or (max_rerender_images is not None and rerendered >= max_rerender_images):
                continue
            rerendered += 1
            camera = Camera(K.reshape(3, 3), size[0], size[1])
            for gt_id, oid, cam_from_obj, mask, visib in instances:
                w = f"{where} gt {gt_id}"
                obj = dataset.object(oid)
                out = renderer.render([obj], Pose(cam_from_obj[:3, :3][None], cam_from_obj[:3, 3][None]), camera)
                sil = out.mask[0]
                union = int((sil | mask).sum())
                iou = int((sil & mask).sum()) / union if union else 1.0
                if union and iou < min_iou and int((sil ^ mask).sum()) > 4:
                    problems.append(f"{w}: mask/ differs from the re-rendered silhouette (IoU {iou:.3f})")
                outside = int((visib & ~sil).sum())
                if outside > max(2, 0.01 * visib.sum()):
                    problems.append(f"{w}: {outside} mask_visib pixels lie outside the re-rendered silhouette")
                if depth is not None and depth_check:
                    sel = visib & sil & (depth > 0)
                    if sel.sum() >= 10:
                        z = out.depth[0][sel].astype(np.float64)
                        err = np.abs(depth[sel] - z)
                        if np.median(err) > 0.003 + 0.005 * np.median(z):
                            problems.append(
                                f"{w}: depth differs from the re-rendered depth (median {np.median(err):.4f} m)"
                            )
                        if np.mean(err <= 0.006 + 0.015 * z) < 0.95:
                            problems.append(f"{w}: depth differs from the re-rendered depth on > 5 % of the pixels")
        for gt_id, mats in world_poses.items():
            ref = mats[0]
            for M in mats[1:]:
                if np.abs(M[:3, :3] - ref[:3, :3]).max() > 1e-4 or np.abs(M[:3, 3] - ref[:3, 3]).max() > 1e-4:
                    problems.append(f"{scene.name} gt {gt_id}: the object moves between images of a static scene")
                    break
    targets = root / "test_targets_bop19.json"
    if targets.is_file():
        data = _load(targets, problems)
        for i, t in enumerate(data or []):
            if not all(k in t for k in ("scene_id", "im_id", "obj_id", "inst_count")):
                problems.append(f"test_targets_bop19.json entry {i} is malformed")
                break
            sc = split_dir / f"{int(t['scene_id']):06d}" / "scene_gt.json"
            if not sc.is_file():
                problems.append(f"test_targets_bop19.json entry {i} names a missing scene")
                break
    return problems


def assert_valid(root: str | Path, split: str = "test", **kwargs: Any) -> None:
    """Raise ``AssertionError`` listing the problems :func:`validate_bop` finds."""
    problems = validate_bop(root, split, **kwargs)
    if problems:
        shown = "\n  ".join(problems[:25])
        more = f"\n  … and {len(problems) - 25} more" if len(problems) > 25 else ""
        raise AssertionError(f"{len(problems)} BOP layout problem(s) in {root} [{split}]:\n  {shown}{more}")
