"""Training and validation data of ``genflow``: items cut from synthetic scenes drawn on the fly.

Every visible instance of a synthetic image becomes a training item (:func:`make_items`): its ground-truth pose
perturbed (a *coarse* regime — wide crop, large errors — or a *fine* one — tight crop, small errors), the observed
crop around that initial pose (colour, noisy depth, and for supervision the instance map and clean depth), and the
object rendered alone at the initial pose into the crop camera with a random light. :class:`ItemStream` draws them
endlessly (one stream per data worker and rank), :func:`collate_items` stacks them into a
:class:`~meshpose.nets.batch.CropBatch` plus supervision, :func:`make_validation_set` draws held-out images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import torch
import torch.utils.data

from meshpose.geometry.crop import crop_box_around_object, crop_image
from meshpose.geometry.lie import perturb_pose
from meshpose.nets.batch import make_crop_batch
from meshpose.render.base import Lighting, render_alone
from meshpose.synth import SceneConfig, SceneSampler, SyntheticSample, default_distractors, resolve_objects
from meshpose.train.common import scene_items
from meshpose.train.genflow_config import GenFlowTrainConfig, training_scene_config
from meshpose.types import Camera, Pose

__all__ = [
    "ItemStream",
    "appearance_gap",
    "collate_items",
    "make_items",
    "make_validation_set",
    "pad_symmetries",
    "random_lighting",
]


def random_lighting(rng: np.random.Generator) -> Lighting:
    """A random light for the renderings of the items (ambient, diffuse and specular shares, a direction around the
    viewing direction)."""
    d = rng.normal(0.0, 0.6, 3) + np.array([0.0, 0.0, -1.0])
    return Lighting(
        ambient=float(rng.uniform(0.3, 0.75)),
        diffuse=float(rng.uniform(0.2, 0.7)),
        direction=(float(d[0]), float(d[1]), float(d[2])),
        specular=float(rng.uniform(0.0, 0.2)),
    )


def pad_symmetries(items: list[dict[str, Any]]) -> np.ndarray:
    """``(B, S_max, 4, 4)`` float32: the items' ``symmetries`` stacked, each padded with the identity."""
    s_max = max(len(it["symmetries"]) for it in items)
    sym = np.tile(np.eye(4, dtype=np.float32), (len(items), s_max, 1, 1))
    for k, it in enumerate(items):
        sym[k, : len(it["symmetries"])] = it["symmetries"]
    return sym


def appearance_gap(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random appearance change of a rendered crop, inside its mask only.

    Imitates how a mesh's colours differ from the photographed object (scanned vertex colours, another white
    balance, missing texture detail): per-channel gains, gamma, saturation, a smooth multiplicative colour field
    over the crop and a Gaussian blur that does not bleed the background in.

    Args:
        rgb: ``(H, W, 3)`` float32 colours in [0, 1].
        mask: ``(H, W)`` bool, the rendered object.
        rng: the random source.

    Returns:
        ``(H, W, 3)`` float32 in [0, 1]; pixels outside ``mask`` are unchanged.
    """
    h, w = mask.shape
    out = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    out = out ** np.float32(rng.uniform(0.7, 1.4))
    grey = out.mean(axis=2, keepdims=True)
    out = grey + np.float32(rng.uniform(0.5, 1.3)) * (out - grey)
    out = out * rng.uniform(0.75, 1.25, 3).astype(np.float32)
    field = rng.uniform(0.8, 1.2, (4, 4, 3)).astype(np.float32)
    out = out * cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    sigma = float(rng.uniform(0.0, 1.5))
    m = mask.astype(np.float32)
    if sigma > 0.3:
        num = cv2.GaussianBlur(out * m[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(m, (0, 0), sigma)[..., None]
        out = num / np.maximum(den, 1e-3)
    return np.where(mask[..., None], np.clip(out, 0.0, 1.0), rgb).astype(np.float32)


def _sym_subset(sym: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if len(sym) <= k:
        return sym
    idx = np.concatenate([[0], np.sort(rng.choice(np.arange(1, len(sym)), size=k - 1, replace=False))])
    return sym[idx]


def make_items(
    sample: SyntheticSample,
    rng: np.random.Generator,
    cfg: GenFlowTrainConfig,
    renderer: Any = None,
    *,
    n_points: int = 256,
    max_symmetries: int = 32,
) -> list[dict[str, Any]]:
    """Training items (dicts of numpy arrays) from the visible instances of one synthetic image."""
    if renderer is None:
        from meshpose.render.gl import get_default_renderer

        renderer = get_default_renderer()
    cand = [i for i in range(len(sample.objects)) if sample.visib_fract[i] >= cfg.min_visib]
    rng.shuffle(cand)
    cand = cand[: cfg.max_items_per_image]
    if not cand:
        return []
    probs = np.array([r.probability for r in cfg.regimes])
    s = cfg.crop_size
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    keep, boxes, inits, cams = [], [], [], []
    for i in cand:
        obj = sample.objects[i]
        reg = cfg.regimes[int(rng.choice(len(probs), p=probs))]
        rot = math.radians(rng.uniform(*reg.rot_deg))
        trans = rng.uniform(*reg.trans_frac) * obj.diameter
        init = perturb_pose(sample.poses[i], rot, trans, gen)
        try:
            box = crop_box_around_object(sample.camera, init, obj.points, padding=rng.uniform(*reg.padding))
        except ValueError:
            continue
        keep.append(i)
        boxes.append(box)
        inits.append(init)
        cams.append(sample.camera.crop(box, s, s))
    if not keep:
        return []
    init_poses = Pose.stack(inits)
    rend = render_alone(renderer, [sample.objects[i] for i in keep], init_poses, cams, random_lighting(rng))
    items = []
    for k, i in enumerate(keep):
        obj = sample.objects[i]
        box = boxes[k]
        rgb, _ = crop_image(sample.rgb, sample.camera, box, s, s)
        depth = (
            crop_image(sample.depth, sample.camera, box, s, s, interpolation="nearest")[0]
            if sample.depth is not None and rng.random() < cfg.depth_probability
            else np.zeros((s, s), np.float32)
        )
        inst = crop_image(sample.instance == i + 1, sample.camera, box, s, s, interpolation="nearest")[0]
        dclean = crop_image(sample.depth_clean, sample.camera, box, s, s, interpolation="nearest")[0]
        pts = obj.points[rng.choice(len(obj.points), size=n_points, replace=len(obj.points) < n_points)]
        Rg, tg = sample.poses[i].numpy()
        Ri, ti = inits[k].numpy()
        ren_rgb = np.array(rend.rgb[k], np.float32)
        if cfg.render_gap > 0.0 and rng.random() < cfg.render_gap:
            ren_rgb = appearance_gap(ren_rgb, np.asarray(rend.mask[k], bool), rng)
        items.append(
            {
                "obs_rgb": rgb,
                "obs_depth": depth.astype(np.float32),
                "obs_instance": inst,
                "obs_depth_clean": dclean.astype(np.float32),
                "ren_rgb": ren_rgb,
                "ren_depth": np.array(rend.depth[k], np.float32),
                "ren_xyz": np.array(rend.xyz[k], np.float32),
                "ren_mask": np.array(rend.mask[k], bool),
                "K": cams[k].K.astype(np.float32),
                "R_init": Ri,
                "t_init": ti,
                "R_gt": Rg,
                "t_gt": tg,
                "points": pts.astype(np.float32),
                "symmetries": _sym_subset(obj.symmetries, max_symmetries, rng).astype(np.float32),
                "diameter": np.float32(obj.diameter),
            }
        )
    return items


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a :class:`~meshpose.nets.batch.CropBatch` plus supervision tensors (symmetries padded with
    the identity)."""
    sym = pad_symmetries(items)

    def st(key: str) -> np.ndarray:
        return np.stack([it[key] for it in items])

    rendered = SimpleNamespace(rgb=st("ren_rgb"), depth=st("ren_depth"), xyz=st("ren_xyz"), mask=st("ren_mask"))
    cams = [Camera(it["K"].astype(np.float64), it["obs_rgb"].shape[1], it["obs_rgb"].shape[0]) for it in items]
    batch = make_crop_batch(
        st("obs_rgb"),
        st("obs_depth"),
        rendered,
        cams,
        Pose(st("R_init"), st("t_init")),
        [float(it["diameter"]) for it in items],
    )
    return {
        "batch": batch,
        "gt": Pose(torch.from_numpy(st("R_gt")), torch.from_numpy(st("t_gt"))),
        "instance": torch.from_numpy(st("obs_instance"))[:, None],
        "depth_clean": torch.from_numpy(st("obs_depth_clean"))[:, None],
        "points": torch.from_numpy(st("points")),
        "symmetries": torch.from_numpy(sym),
    }


class ItemStream(torch.utils.data.IterableDataset):
    """An endless stream of training items drawn from synthetic scenes (one stream per worker and rank).

    Args:
        cfg: the run's configuration.
        rank: process rank (DDP), mixed into the seed.
        start_step: the step the run resumes at, mixed into the seed so a resumed run sees new data.
    """

    def __init__(self, cfg: GenFlowTrainConfig, rank: int = 0, start_step: int = 0) -> None:
        super().__init__()
        self.cfg, self.rank, self.start_step = cfg, rank, start_step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else int(info.id)
        rng = np.random.default_rng([cfg.seed, self.rank, worker, self.start_step, 0x6F])
        objects = resolve_objects(cfg.data, cfg.seed)
        for items in scene_items(cfg, objects, training_scene_config(cfg), rng, lambda smp: make_items(smp, rng, cfg)):
            yield from items


def make_validation_set(
    objects: str,
    n_images: int,
    *,
    seed: int = 1234,
    rot_deg: float = 15.0,
    trans_frac: float = 0.1,
    image_size: tuple[int, int] = (640, 480),
    max_per_image: int = 3,
    views: Callable[[np.random.Generator], Iterator[SyntheticSample]] | None = None,
) -> list[dict[str, Any]]:
    """Held-out images with perturbed initial poses (exact ``rot_deg`` / ``trans_frac``, like ``perturb``): GL
    scenes of ``objects`` drawn for it, or the views ``views`` yields from the set's generator (e.g.
    :func:`~meshpose.train.cached_scenes.cached_views` of a pre-rendered split; ``objects`` and ``image_size`` are
    not used then).

    Raises:
        RuntimeError: ``n_images`` images with a visible instance not found in ``20 · n_images`` views.
    """
    rng = np.random.default_rng(seed)
    if views is None:
        sampler = SceneSampler(
            resolve_objects(objects, seed),
            SceneConfig(width=image_size[0], height=image_size[1]),
            distractors=default_distractors(seed),
        )

        def views(r: np.random.Generator) -> Iterator[SyntheticSample]:
            while True:
                yield sampler.sample(r)

    drawn = views(rng)
    gen = torch.Generator().manual_seed(seed)
    out: list[dict[str, Any]] = []
    for _ in range(20 * n_images):
        if len(out) == n_images:
            break
        smp = next(drawn)
        idx = [i for i in range(len(smp.objects)) if smp.visib_fract[i] >= 0.3][:max_per_image]
        if not idx:
            continue
        gts = Pose.stack([smp.poses[i] for i in idx])
        diam = torch.tensor([smp.objects[i].diameter for i in idx], dtype=torch.float64)
        inits = []
        for k, _i in enumerate(idx):
            inits.append(perturb_pose(gts[k], math.radians(rot_deg), trans_frac * float(diam[k]), gen))
        out.append(
            {
                "rgb": smp.rgb,
                "depth": smp.depth,
                "K": smp.camera.K.copy(),
                "size": (smp.camera.width, smp.camera.height),
                "obj_ids": [int(smp.obj_ids[i]) for i in idx],
                "gt": gts.numpy(),
                "init": Pose.stack(inits).numpy(),
            }
        )
    if len(out) < n_images:
        raise RuntimeError(f"could not draw {n_images} validation images with a visible instance")
    return out
