"""Training and validation data of ``deeprm``: ``genflow``'s synthetic items, kept with their objects.

The items are :func:`meshpose.train.genflow_data.make_items`' (the same synthetic scenes, perturbations, crops and
first rendering; the function is used as it is, through a :class:`~meshpose.train.genflow_config.GenFlowTrainConfig`
made from the ``deeprm`` options by :func:`item_config`). ``deeprm`` trains over several *unrolled* iterations that
each render the object at the pose the network has reached, so every item here also keeps its
:class:`~meshpose.types.ObjectModel` (found by its ground-truth pose among the sample's instances), its crop
camera and a renderer brightness gain. The data are therefore drawn in the training process (no data workers: an
``ObjectModel`` holds its meshes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from meshpose.render.base import Lighting
from meshpose.synth import SyntheticSample, resolve_objects
from meshpose.train.common import draw_held_out, scene_items
from meshpose.train.deeprm_config import DeepRMTrainConfig
from meshpose.train.genflow_config import GenFlowTrainConfig, PerturbRegime, training_scene_config
from meshpose.train.genflow_data import make_items, pad_symmetries, random_lighting
from meshpose.train.pseudo_views import PseudoViews, mixed_items
from meshpose.types import Camera, Pose

__all__ = [
    "CONTINUOUS_MIN_SYMMETRIES",
    "batches",
    "collate",
    "deeprm_items",
    "item_config",
    "random_lighting",
    "validation_items",
]

#: an object with more symmetry transforms than this has a continuous symmetry (its finite set samples it: the
#: expansion of a continuous symmetry has hundreds; discrete sets of real objects have a handful)
CONTINUOUS_MIN_SYMMETRIES = 24


def item_config(cfg: DeepRMTrainConfig, regimes: tuple[PerturbRegime, ...] | None = None) -> GenFlowTrainConfig:
    """The :class:`GenFlowTrainConfig` that makes ``deeprm``'s items: its crops, regimes and scenes, no depth."""
    return GenFlowTrainConfig(
        data=cfg.data,
        seed=cfg.seed,
        crop_size=cfg.net.resolution,
        depth_probability=0.0,
        render_gap=cfg.render_gap,
        regimes=regimes or cfg.regimes,
        min_visib=cfg.min_visib,
        max_items_per_image=cfg.max_items_per_image,
        views_per_scene=cfg.views_per_scene,
        object_pool=cfg.object_pool,
        pool_scenes=cfg.pool_scenes,
        image_size=cfg.image_size,
        scene=dict(cfg.scene),
    )


def deeprm_items(
    sample: SyntheticSample,
    rng: np.random.Generator,
    cfg: DeepRMTrainConfig,
    item_cfg: GenFlowTrainConfig,
    renderer: Any = None,
) -> list[dict[str, Any]]:
    """:func:`make_items` of one synthetic image (``cfg.perturbations`` draws of it: new initial poses, crops and
    renderings of the same view), each with ``model`` (its ObjectModel), ``obj_id``, ``nearest`` (a continuous
    symmetry) and ``gain`` (the brightness of its renderings)."""
    items = [it for _ in range(cfg.perturbations) for it in make_items(sample, rng, item_cfg, renderer)]
    t_all = sample.poses.t.reshape(-1, 3).numpy()
    for it in items:
        i = int(np.argmin(np.abs(t_all - it["t_gt"][None]).sum(-1)))  # the instance with this (exact) pose
        model = sample.objects[i]
        it["model"] = model
        it["obj_id"] = int(sample.obj_ids[i])
        it["nearest"] = len(model.symmetries) > CONTINUOUS_MIN_SYMMETRIES
        it["gain"] = float(rng.uniform(*cfg.brightness))
    return items


def collate(items: list[dict[str, Any]], lighting: Lighting | None = None) -> dict[str, Any]:
    """Stack items into tensors (symmetries padded with the identity) plus the models and crop cameras.

    Returns:
        ``obs_rgb`` ``(B, 3, S, S)`` in [0, 1]; ``ren_rgb``, ``ren_xyz`` ``(B, 3, S, S)`` and ``ren_mask``
        ``(B, 1, S, S)`` of the first rendering (brightness gain applied); ``instance`` ``(B, 1, S, S)`` the
        observed instance map; ``K`` ``(B, 3, 3)``; ``init``, ``gt`` float64 poses; ``points`` ``(B, P, 3)``;
        ``symmetries`` ``(B, S_max, 4, 4)``; ``diameter``, ``gain`` ``(B,)``; ``nearest`` ``(B,)`` bool;
        ``models``, ``cameras``, ``obj_ids`` lists; ``lighting`` of the later renderings.
    """
    sym = pad_symmetries(items)

    def st(key: str) -> np.ndarray:
        return np.stack([it[key] for it in items])

    def chw(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()

    gain = torch.tensor([it["gain"] for it in items], dtype=torch.float32)
    size = items[0]["obs_rgb"].shape[0]
    return {
        "obs_rgb": chw(st("obs_rgb")) / 255.0,
        "ren_rgb": (chw(st("ren_rgb")) * gain[:, None, None, None]).clamp(0.0, 1.0),
        "ren_xyz": chw(st("ren_xyz")),
        "ren_mask": torch.from_numpy(st("ren_mask"))[:, None],
        "instance": torch.from_numpy(st("obs_instance"))[:, None],
        "K": torch.from_numpy(st("K")).float(),
        "init": Pose(torch.from_numpy(st("R_init")).double(), torch.from_numpy(st("t_init")).double()),
        "gt": Pose(torch.from_numpy(st("R_gt")).double(), torch.from_numpy(st("t_gt")).double()),
        "points": torch.from_numpy(st("points")),
        "symmetries": torch.from_numpy(sym),
        "diameter": torch.from_numpy(st("diameter")).float(),
        "gain": gain,
        "nearest": torch.tensor([bool(it["nearest"]) for it in items]),
        "models": [it["model"] for it in items],
        "cameras": [Camera(it["K"].astype(np.float64), size, size) for it in items],
        "obj_ids": [int(it["obj_id"]) for it in items],
        "lighting": lighting or Lighting(ambient=0.6, diffuse=0.5),
    }


def batches(
    cfg: DeepRMTrainConfig, rank: int = 0, start_step: int = 0, views: PseudoViews | None = None
) -> Iterator[dict[str, Any]]:
    """Endless :func:`collate` batches of ``cfg.batch_size`` items from synthetic scenes of ``cfg.data`` (and, for a
    share ``cfg.cached_share`` of the views, from the pre-rendered split ``cfg.cached``) — or, given the user's
    ``views`` (``meshpose adapt deeprm``), from them and synthetic scenes mixed (:func:`~meshpose.train.pseudo_views.
    mixed_items`).

    The stream depends only on ``(cfg.seed, rank, start_step)``: a resumed run draws new data.
    """
    torch.set_num_threads(max(1, cfg.threads))
    rng = np.random.default_rng([cfg.seed, rank, start_step, 0xDE])
    icfg = item_config(cfg)
    pending: list[dict[str, Any]] = []
    hold = max(cfg.batch_size, cfg.mix_items)
    make = lambda s: deeprm_items(s, rng, cfg, icfg)  # noqa: E731
    if views is None:
        draws = scene_items(cfg, resolve_objects(cfg.data, cfg.seed), training_scene_config(icfg), rng, make)
    else:
        draws = mixed_items(cfg, views, rng, make)
    for items in draws:
        pending.extend(items)
        while len(pending) >= hold:
            # shuffle across the images in hand so that a batch mixes scenes
            order = rng.permutation(len(pending))
            pending = [pending[int(k)] for k in order]
            batch, pending = pending[: cfg.batch_size], pending[cfg.batch_size :]
            yield collate(batch, random_lighting(rng))


def validation_items(cfg: DeepRMTrainConfig, views: PseudoViews | None = None) -> list[dict[str, Any]]:
    """Held-out items (``cfg.val_items`` of them) of ``cfg.val_objects`` at exactly ``cfg.val_rot_deg`` /
    ``cfg.val_trans_frac``, crop padding ``cfg.val_padding``, a fixed light and no brightness change; the same
    for every call with one config (drawn with seed ``cfg.seed + 1``), from GL scenes drawn for it or from the
    pre-rendered split ``cfg.val_cached`` — or, given the user's ``views``, from their held-out images."""
    pad = (cfg.val_padding, cfg.val_padding)
    regime = PerturbRegime(1.0, (cfg.val_rot_deg, cfg.val_rot_deg), (cfg.val_trans_frac, cfg.val_trans_frac), pad)
    data = cfg.val_objects if views is None else cfg.data
    vcfg = DeepRMTrainConfig.from_dict({**cfg.to_dict(), "data": data, "brightness": [1.0, 1.0]})
    icfg = item_config(vcfg, (regime,))
    if views is not None:
        rng = np.random.default_rng([cfg.seed + 1, 0xDE, 2])
        return views.held_out_items(lambda view: deeprm_items(view, rng, vcfg, icfg), cfg.val_items)
    # with cfg.val_cached: held-out pre-rendered scenes (e.g. photoreal ones of the training objects)
    return draw_held_out(
        cfg, cfg.val_items, training_scene_config(icfg), lambda smp, rng: deeprm_items(smp, rng, vcfg, icfg)
    )
