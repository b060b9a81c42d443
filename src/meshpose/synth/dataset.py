"""Writing synthetic BOP datasets (``meshpose synth``): resumable, and a pure function of the seed and the
settings (scene ``s`` depends only on ``(seed, s)``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshpose.io.bop_write import SceneWriter, write_model_ply
from meshpose.io.jsonfile import write_json_atomic
from meshpose.io.models_info import ModelsInfoFile
from meshpose.synth.config import SynthConfig
from meshpose.synth.sampler import SceneSampler, SyntheticSample
from meshpose.synth.sources import default_distractors, resolve_objects
from meshpose.types import ObjectModel

__all__ = ["SynthResult", "synthesize", "write_targets"]

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` did.

    Args:
        out: the dataset folder.
        split: the split written.
        images_written: images rendered and written by this call.
        images_skipped: images of scenes that were already complete (resumed).
        scenes_written: scenes written by this call.
        objects_written: object models written by this call.
        seconds: wall time.
        images_per_second: rendering + writing throughput of this call.
    """

    out: Path
    split: str
    images_written: int
    images_skipped: int
    scenes_written: int
    objects_written: int
    seconds: float
    images_per_second: float


def _objects_key(config: SynthConfig) -> dict[str, Any]:
    """The settings that decide the objects (and so ``models/``): equal for every split of one dataset."""
    spec = config.objects.strip()
    pinned = "@" in spec or not spec.startswith("novel")
    return _jsonable(
        {
            "objects": spec,
            "seed": None if pinned else int(config.seed),
            "units": config.units,
            "novel": dataclasses.asdict(config.novel) if spec.startswith("novel") else None,
        }
    )


def _split_key(config: SynthConfig) -> dict[str, Any]:
    """The settings that decide a split's images (``scenes`` and ``first_scene_id`` may grow on resume)."""
    data = dataclasses.asdict(config)
    for k in ("out", "overwrite", "writer_threads", "scenes", "first_scene_id", "novel", "objects", "units"):
        data.pop(k, None)
    data["rgb_ext"] = config.image_ext
    return _jsonable(data)


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _check_and_record_config(root: Path, config: SynthConfig) -> None:
    """Refuse to mix objects or image settings in one dataset folder; record the settings of this run."""
    path = root / "synth_config.json"
    record: dict[str, Any] = {"format": _FORMAT_VERSION, "objects": _objects_key(config), "splits": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old.get("objects") not in (None, record["objects"]):
            raise ValueError(f"{root} holds synthetic data of other objects ({old.get('objects')}); use another folder")
        record["splits"] = dict(old.get("splits", {}))
        previous = record["splits"].get(config.split)
        if previous is not None and previous != _split_key(config) and not config.overwrite:
            raise ValueError(
                f"{root}/{config.split} was made with other settings; use another split or folder, or overwrite=True"
            )
    record["splits"][config.split] = _split_key(config)
    write_json_atomic(path, record)


def _scene_complete(path: Path, n_images: int) -> bool:
    try:
        gt = json.loads((path / "scene_gt.json").read_text(encoding="utf-8"))
        cam = json.loads((path / "scene_camera.json").read_text(encoding="utf-8"))
        info = json.loads((path / "scene_gt_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return len(gt) == len(cam) == len(info) == n_images


def synthesize(config: SynthConfig, progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write (or resume) a synthetic BOP dataset.

    Layout of ``config.out``: ``models/obj_XXXXXX.ply`` (millimetres; textured objects keep their texture as
    ``obj_XXXXXX.png`` with ``texture_u/texture_v``) and ``models/models_info.json`` (diameter, extent and
    symmetries), ``camera.json`` (nominal intrinsics and the image size), ``<split>/<scene_id:06d>/`` with
    ``rgb/``, ``depth/`` (16-bit PNG, ``depth_scale`` mm), ``mask/``, ``mask_visib/``, ``scene_camera.json``
    (``cam_K``, ``depth_scale``, ``cam_R_w2c``, ``cam_t_w2c``), ``scene_gt.json``, ``scene_gt_info.json``
    (``bbox_obj``, ``bbox_visib``, ``px_count_all``, ``px_count_valid``, ``px_count_visib``, ``visib_fract``),
    ``test_targets_bop19.json`` for test splits, and ``synth_config.json`` (the settings; a resumed run must
    use the same ones).

    Scene ``s`` depends only on ``(config.seed, s)`` and the settings, so a re-run skips the complete scenes
    and redoes an interrupted one identically.

    Args:
        config: what to write.
        progress: called as ``progress(images_done, images_total)`` after every image (skipped ones included).

    Returns:
        A :class:`SynthResult`.

    Raises:
        ValueError: the folder holds a dataset made with other settings (pass ``overwrite=True`` to replace
            its scenes anyway).
    """
    t_start = time.perf_counter()
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    _check_and_record_config(root, config)

    objects = resolve_objects(config.objects, config.seed, units=config.units, novel=config.novel)
    if config.distractors is None:
        distractors: Sequence[ObjectModel] | None = default_distractors(config.seed)
    elif config.distractors == "none":
        distractors = None
    else:
        distractors = resolve_objects(config.distractors, config.seed + 1, units=config.units, novel=config.novel)
    sampler = SceneSampler(objects, config.scene, renderer=config.renderer, distractors=distractors)

    scfg = config.scene
    fov_mid = math.radians(0.5 * (scfg.fov_deg[0] + scfg.fov_deg[1]))
    f_nom = scfg.width / 2.0 / math.tan(fov_mid / 2.0)
    cam_nominal = {
        "fx": f_nom,
        "fy": f_nom,
        "cx": (scfg.width - 1) / 2.0,
        "cy": (scfg.height - 1) / 2.0,
        "width": scfg.width,
        "height": scfg.height,
        "depth_scale": float(config.depth_scale_mm),
    }
    write_json_atomic(root / "camera.json", cam_nominal)

    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    models_info = ModelsInfoFile(models_dir / "models_info.json")
    objects_written = 0

    def ensure_models(obj_ids: Sequence[int]) -> None:
        nonlocal objects_written
        changed = False
        for oid in sorted(set(int(o) for o in obj_ids)):
            ply = models_dir / f"obj_{oid:06d}.ply"
            if oid in models_info and ply.is_file():
                continue
            model = objects.by_id(oid)
            write_model_ply(ply, model.mesh, keep_texture=True)
            discrete, continuous = objects.symmetry_lists(oid)
            models_info.add(model, continuous=continuous, discrete=list(discrete))
            objects_written += 1
            changed = True
        if changed or not models_info.path.is_file():
            models_info.write()

    write_all = config.write_all_models if config.write_all_models is not None else len(objects) <= 100
    if write_all:
        ensure_models(objects.obj_ids)

    total = config.scenes * config.images_per_scene
    done = written = skipped = scenes_written = 0
    pool = ThreadPoolExecutor(max_workers=max(1, config.writer_threads), thread_name_prefix="synth-writer")
    try:
        for s in range(config.first_scene_id, config.first_scene_id + config.scenes):
            writer = SceneWriter(
                root,
                config.split,
                s,
                depth_scale_mm=config.depth_scale_mm,
                rgb_ext=config.image_ext,
                png_compress_level=1,
            )
            if not config.overwrite and _scene_complete(writer.path, config.images_per_scene):
                done += config.images_per_scene
                skipped += config.images_per_scene
                if progress is not None:
                    progress(done, total)
                continue
            scene_rng = np.random.default_rng(np.random.SeedSequence([int(config.seed) & 0xFFFFFFFF, s, 0x5C]))
            layout = sampler.layout(scene_rng)
            ensure_models([o.obj_id for o in layout.objects[: layout.n_targets]])
            pending: list[Future[None]] = []
            for im_id in range(config.images_per_scene):
                im_rng = np.random.default_rng(np.random.SeedSequence([int(config.seed) & 0xFFFFFFFF, s, im_id, 0x1A]))
                sample = sampler.view(layout, im_rng)
                pending.append(pool.submit(_write_sample, writer, im_id, sample))
                # Keep at most a few images in flight (memory), and surface writer errors early.
                while len(pending) > 2 * max(1, config.writer_threads):
                    pending.pop(0).result()
                done += 1
                written += 1
                if progress is not None:
                    progress(done, total)
            for fut in pending:
                fut.result()
            writer.close()
            scenes_written += 1
    finally:
        pool.shutdown(wait=True)
    if config.targets:
        write_targets(root, config.split, min_visib=config.min_target_visib)
    seconds = time.perf_counter() - t_start
    return SynthResult(
        out=root,
        split=config.split,
        images_written=written,
        images_skipped=skipped,
        scenes_written=scenes_written,
        objects_written=objects_written,
        seconds=seconds,
        images_per_second=written / seconds if seconds > 0 else 0.0,
    )


def _write_sample(writer: SceneWriter, im_id: int, sample: SyntheticSample) -> None:
    n = len(sample.obj_ids)
    extra = []
    for i in range(n):
        valid = int((sample.masks[i] & (sample.depth > 0)).sum()) if sample.depth is not None else 0
        entry: dict[str, Any] = {
            "px_count_all": int(sample.px_count_all[i]),
            "bbox_obj": [int(x) for x in sample.bbox_obj[i]],
            "visib_fract": float(sample.visib_fract[i]),
        }
        if sample.depth is not None:
            entry["px_count_valid"] = valid
        extra.append(entry)
    writer.add_image(
        im_id,
        sample.camera,
        sample.rgb,
        [int(o) for o in sample.obj_ids],
        sample.poses,
        depth=sample.depth,
        masks=sample.masks,
        masks_visib=sample.masks_visib,
        cam_from_world=sample.cam_from_world,
        gt_info_extra=extra,
    )


def write_targets(root: str | os.PathLike[str], split: str, *, min_visib: float = 0.1) -> Path:
    """Write ``test_targets_bop19.json`` listing, per image and object, the instances with
    ``visib_fract ≥ min_visib`` of every scene of ``split`` (as the BOP test sets do)."""
    root = Path(root)
    targets: list[dict[str, int]] = []
    for scene in sorted(p for p in (root / split).iterdir() if p.is_dir() and p.name.isdigit()):
        try:
            gt = json.loads((scene / "scene_gt.json").read_text(encoding="utf-8"))
            info = json.loads((scene / "scene_gt_info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for im_key in sorted(gt, key=int):
            counts: dict[int, int] = {}
            for g, inf in zip(gt[im_key], info.get(im_key, []), strict=False):
                if float(inf.get("visib_fract", 0.0)) >= min_visib:
                    counts[int(g["obj_id"])] = counts.get(int(g["obj_id"]), 0) + 1
            targets.extend(
                {"im_id": int(im_key), "inst_count": c, "obj_id": o, "scene_id": int(scene.name)}
                for o, c in sorted(counts.items())
            )
    path = root / "test_targets_bop19.json"
    write_json_atomic(path, targets, indent=None)
    return path
