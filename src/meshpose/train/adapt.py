"""Self-supervised adaptation of the ``genflow`` network to a user's unlabeled images (``meshpose adapt genflow``).

No ground-truth pose is read anywhere: the images come from :meth:`~meshpose.io.bop.BopDataset.observation` (colour,
depth and ``scene_camera.json`` only), the objects from their meshes, and the training targets are replaced by
*pseudo poses* (:class:`~meshpose.train.adapt_config.PseudoPose`): the poses the refiner itself gave each detection
at the starting weights (estimate + refine; :mod:`meshpose.run.adapt` computes them, this module is handed them).

**An item** is one detection: its pseudo pose perturbed by a random rotation and translation (``rot_deg``,
``trans_frac``; as ``genflow`` training perturbs ground truth) is the *start pose*; the observed crop around the
start pose (``crop_size``, random ``padding``) and the object rendered alone there (GL, the refiner's lighting) make
the network's :class:`~meshpose.nets.batch.CropBatch`, exactly as the refiner builds it at inference.

**The loss.** The network and its differentiable PnP give a pose after each recurrent iteration
(:func:`~meshpose.nets.batch.run_network`, as in :func:`~meshpose.train.genflow.genflow_losses`). Each of those
poses is soft-rendered (:func:`~meshpose.render.diff.render_soft`) into the same crop box at ``loss_size`` pixels and
compared with the observation by the self-supervised joint loss (:func:`~meshpose.train.selfsup_losses.joint_loss`):
colour in LAB without lightness, ``1 − IoU`` of the rendered silhouette with the **detection's mask**, and — when the
images have depth — the mean distance of the observed depth points (inside the mask) to the model at that pose.
The iterations' losses are gamma-weighted as ``genflow``'s sequence loss (:func:`~meshpose.train.losses.
sequence_loss`). The gradient reaches the network through the rendered poses; the pseudo pose only places the crop.

**The pseudo-label term** (``pseudo_weight`` > 0): ``genflow``'s own supervised loss
(:func:`~meshpose.train.genflow.supervised_terms`) with the pseudo pose in place of the truth — the flow of each
rendered point to where the pseudo pose projects it (counted inside the detection's mask) and the point-matching
loss of every iteration's pose. Self-training on the refiner's own poses, as self-supervised 6D pose work does
(e.g. Self6D's teacher poses); a stronger teacher than the network (``pseudo_refine``, e.g. ``genflow+contour``)
gives it something to learn. *Why beside the joint loss:* on LM-O the joint loss alone barely moved (0.0354 →
0.0353) and did not track the pose error: rendered-vs-observed colour and mask at 64 px say little about rotation,
while a dense flow target says something about every visible point.

**Confident items first.** The training items are ranked by the pseudo pose's render-and-compare score; step ``s``
draws its batch from the best ``share(s)`` of them, ``share`` growing linearly from ``curriculum_start`` to 1 over the
first ``curriculum_widen`` of the run.

**Held out, and best.pt.** A fixed share (``val_share``) of the user's *images* — not detections, so no image is
both trained on and measured — is kept out of training. Validation runs the network on a fixed set of items of those
images (fixed start poses) and reports ``val_loss``: the mean self-supervised loss of the pose after the last
iteration (lower is better; ``val_loss_start`` is that of the start poses, ``val_iou`` the mask term). ``best.pt``
is the run's lowest ``val_loss``; ``model.pt`` is exported from it (a ``genflow`` checkpoint: ``meshpose refine
--method genflow --config '{"weights": "RUN/model.pt"}'``). The run folder is the one resumable loop's
(:mod:`meshpose.train.loop`): ``last.pt``, ``best.pt``, ``model.pt``, ``config.json``, ``train_log.jsonl``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshpose.geometry.crop import crop_box_around_object, crop_image
from meshpose.geometry.lie import perturb_pose
from meshpose.io.bop import BopDataset
from meshpose.io.detections import DetectionsByImage, read_detections
from meshpose.nets.batch import METHOD, CropBatch, load_genflow_model, make_crop_batch, run_network
from meshpose.nets.genflow import GenFlowNet, GenFlowOutput
from meshpose.nets.jointloss_batch import mask_points, valid_depth
from meshpose.render.base import Lighting, Renderer, render_alone
from meshpose.train.adapt_config import AdaptConfig, PseudoPose, check_pseudo_detections
from meshpose.train.common import (
    batch_to_device,
    initial_weights,
    lazy_validation,
    loop_config,
    method_task,
    resume_config,
    training_process,
    with_weights,
)
from meshpose.train.genflow import supervised_terms
from meshpose.train.jointloss import ObjectTensors, render_crops
from meshpose.train.loop import LoopResult, train_loop
from meshpose.train.losses import sequence_loss
from meshpose.train.selfsup_losses import JointLossTerms, JointLossWeights, joint_loss
from meshpose.types import Observation, Pose

__all__ = [
    "AdaptConfig",
    "AdaptData",
    "PseudoPose",
    "adapt_losses",
    "curriculum_share",
    "selfsup_terms",
    "split_images",
    "train_adapt",
    "validate_adapt",
]

log = logging.getLogger(__name__)

#: the lighting of the crops the network compares with the image: the ``genflow`` refiner's default
LIGHTING = Lighting(ambient=0.6, diffuse=0.5)
_SALT = 0xADA7  # the data stream's own random stream


def split_images(images: Sequence[tuple[int, int]], share: float, seed: int) -> set[tuple[int, int]]:
    """The held-out images: a fixed random ``share`` of ``images`` (at least one and never all of them when
    ``share > 0`` and there are two or more), the same for one ``seed``."""
    keys = sorted(set(images))
    n = len(keys)
    if share <= 0.0 or n < 2:
        return set()
    k = min(n - 1, max(1, round(share * n)))
    order = np.random.default_rng([seed, _SALT, 1]).permutation(n)
    return {keys[int(i)] for i in order[:k]}


def curriculum_share(step: int, cfg: AdaptConfig) -> float:
    """Share of the training items (best pseudo-pose scores first) that step ``step`` draws from."""
    widen = cfg.curriculum_widen * cfg.steps
    if widen <= 0:
        return 1.0
    return min(1.0, cfg.curriculum_start + (1.0 - cfg.curriculum_start) * step / widen)


class AdaptData:
    """The user's images, detections, objects and pseudo poses, and the items cut from them.

    Args:
        cfg: the run's options (``data``, ``split``, ``detections``, ...).
        pseudo: the pseudo poses (those under ``min_score`` are dropped).
        renderer: the GL renderer of the network's rendered crops (default: this thread's).

    Raises:
        ValueError: no pseudo pose left to train on, or one naming a detection the file does not hold.
    """

    def __init__(self, cfg: AdaptConfig, pseudo: Sequence[PseudoPose], renderer: Renderer | None = None) -> None:
        self.cfg = cfg
        self.bop = BopDataset(cfg.data, split=cfg.split)
        self.dets: DetectionsByImage = read_detections(cfg.detections)
        usable = [p for p in pseudo if p.score >= cfg.min_score]
        check_pseudo_detections(usable, self.dets, cfg.detections)
        held_out = split_images([p.image for p in usable], cfg.val_share, cfg.seed)
        self.val = [p for p in usable if p.image in held_out]
        train = [p for p in usable if p.image not in held_out]
        if not train:
            raise ValueError(
                f"no pseudo pose to train on ({len(pseudo)} given, {len(usable)} scored ≥ min_score "
                f"{cfg.min_score}, {len(self.val)} on held-out images)"
            )
        #: the training items, best pseudo-pose score first (the curriculum's order)
        self.train = sorted(train, key=lambda p: (-p.score, p.scene_id, p.im_id, p.det_index))
        self.held_out_images = sorted(held_out)
        self.objects = self.bop.objects(sorted({p.obj_id for p in usable}))
        self.tensors = ObjectTensors.of(self.objects, cfg.model_points, cfg.render_faces, cfg.seed)
        self.with_depth = bool(cfg.use_depth and self.bop.has_depth)
        self._renderer = renderer
        self._cache: OrderedDict[tuple[int, int], Observation] = OrderedDict()
        log.info(
            "adapt: %d training items, %d held-out items on %d held-out image(s), %s",
            len(self.train),
            len(self.val),
            len(held_out),
            "RGB-D" if self.with_depth else "RGB",
        )

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            from meshpose.render.gl import get_default_renderer

            self._renderer = get_default_renderer()
        return self._renderer

    def observation(self, key: tuple[int, int]) -> Observation:
        """The image (with depth when used), kept in a small cache."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        obs = self.bop.observation(*key, with_depth=self.with_depth)
        self._cache[key] = obs
        if len(self._cache) > 64:
            self._cache.popitem(last=False)
        return obs

    def make_batch(self, chosen: Sequence[PseudoPose], rng: np.random.Generator) -> dict[str, Any] | None:
        """The batch of items cut around perturbed pseudo poses (``None`` when no item could be cut)."""
        cfg = self.cfg
        s, size = cfg.crop_size, cfg.loss_size
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        rows: list[dict[str, Any]] = []
        for p in chosen:
            obs = self.observation(p.image)
            obj = self.objects[p.obj_id]
            det_mask = self.dets[p.image][p.det_index].mask
            assert det_mask is not None
            mask = np.asarray(det_mask, bool)
            rot = math.radians(float(rng.uniform(*cfg.rot_deg)))
            trans = float(rng.uniform(*cfg.trans_frac)) * obj.diameter
            start = perturb_pose(Pose(p.R, p.t), rot, trans, gen)
            try:
                box = crop_box_around_object(obs.camera, start, obj.points, padding=float(rng.uniform(*cfg.padding)))
            except ValueError as exc:
                log.debug("item %s skipped: %s", (p.scene_id, p.im_id, p.det_index), exc)
                continue
            rgb, cam = crop_image(obs.rgb, obs.camera, box, s, s)
            depth = np.zeros((s, s), np.float32)  # an image of an RGB-D set without its depth map: none
            if self.with_depth and obs.depth is not None:
                depth = crop_image(obs.depth, obs.camera, box, s, s, interpolation="nearest")[0].astype(np.float32)
            rgb_l, cam_l = crop_image(obs.rgb, obs.camera, box, size, size)
            mask_s = crop_image(mask, obs.camera, box, s, s, interpolation="nearest")[0]
            mask_l = crop_image(mask, obs.camera, box, size, size, interpolation="nearest")[0]
            pts, valid = self._observed_points(obs, mask, rng)
            rows.append(
                dict(
                    rgb=rgb, depth=depth, cam=cam, start=start, obj=obj, index=self.tensors.obj_ids.index(p.obj_id),
                    rgb_l=rgb_l, mask_l=mask_l, K_l=cam_l.K, points=pts, valid=valid,
                    target=Pose(p.R, p.t), mask_s=mask_s,
                )
            )  # fmt: skip
        if not rows:
            return None
        starts = Pose.stack([r["start"] for r in rows])
        cams = [r["cam"] for r in rows]
        rend = render_alone(self.renderer, [r["obj"] for r in rows], starts, cams, LIGHTING)
        batch = make_crop_batch(
            np.stack([r["rgb"] for r in rows]),
            np.stack([r["depth"] for r in rows]) if self.with_depth else None,
            rend,
            cams,
            starts,
            [r["obj"].diameter for r in rows],
        )
        return {
            "batch": batch,
            "obj_index": torch.tensor([r["index"] for r in rows], dtype=torch.int64),
            "obs_rgb": torch.from_numpy(np.stack([r["rgb_l"] for r in rows])).float() / 255.0,
            "obs_mask": torch.from_numpy(np.stack([r["mask_l"] for r in rows])),
            "K_loss": torch.tensor(np.stack([r["K_l"] for r in rows]), dtype=torch.float32),
            "points": torch.from_numpy(np.stack([r["points"] for r in rows])),
            "points_valid": torch.from_numpy(np.stack([r["valid"] for r in rows])),
            "has_depth": self.with_depth,
            "target": Pose.stack([r["target"] for r in rows]),
            "mask_s": torch.from_numpy(np.stack([r["mask_s"] for r in rows])).float()[:, None],
        }

    def _observed_points(
        self, obs: Observation, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``observed_points`` back-projected depth pixels of the mask ``(P, 3)`` float32 and which are valid."""
        n = self.cfg.observed_points
        if obs.depth is None or not self.with_depth:
            return np.zeros((n, 3), np.float32), np.zeros(n, bool)
        if not np.any(mask & valid_depth(obs.depth)):
            return np.zeros((n, 3), np.float32), np.zeros(n, bool)
        pts, _ = mask_points(mask, obs.depth, obs.camera.K, n, rng)
        return pts.astype(np.float32), np.ones(n, bool)

    def batches(self, start_step: int, rank: int) -> Iterator[dict[str, Any]]:
        """The training batches from ``start_step`` on; each step's items and perturbations depend on
        ``(seed, rank, step)`` alone, so a resumed run draws what the uninterrupted one would have."""
        step = start_step
        cfg = self.cfg
        while True:
            rng = np.random.default_rng([cfg.seed, rank, step, _SALT])
            pool = max(1, math.ceil(curriculum_share(step, cfg) * len(self.train)))
            data = None
            for _ in range(10):
                pick = rng.choice(pool, cfg.batch_size, replace=pool < cfg.batch_size)
                data = self.make_batch([self.train[int(i)] for i in pick], rng)
                if data is not None:
                    break
            if data is None:
                raise RuntimeError(f"step {step}: no item could be cut around its start pose in 10 draws")
            data["pool"] = pool
            yield data
            step += 1

    def validation_batches(self) -> list[dict[str, Any]]:
        """The held-out items (the first ``val_items`` of the held-out images, fixed start poses), in batches."""
        cfg = self.cfg
        items = sorted(self.val, key=lambda p: (p.scene_id, p.im_id, p.det_index))[: cfg.val_items]
        rng = np.random.default_rng([cfg.seed + 1, _SALT, 2])
        out = []
        for a in range(0, len(items), cfg.batch_size):
            data = self.make_batch(items[a : a + cfg.batch_size], rng)
            if data is not None:
                out.append(data)
        log.info("validation: %d held-out item(s)", sum(len(d["obj_index"]) for d in out))
        return out


def selfsup_terms(data: dict[str, Any], pose: Pose, cfg: AdaptConfig, objects: ObjectTensors) -> JointLossTerms:
    """The self-supervised joint loss of poses ``(B,)`` against a batch's observed crops (each term ``(B,)``).

    Raises:
        ValueError: no object in front of the camera in any crop (from :func:`~meshpose.render.diff.render_soft`).
    """
    R = pose.R.to(torch.float32)
    t = pose.t.to(torch.float32)
    idx = data["obj_index"]
    colour, sil, _ = render_crops(objects, idx, R, t, data["K_loss"], cfg.loss_size, cfg.render_sigma)
    weights = JointLossWeights(colour=cfg.colour_weight, iou=cfg.iou_weight, geometry=cfg.geometry_weight)
    depth = bool(data["has_depth"])
    return joint_loss(
        colour,
        sil,
        data["obs_rgb"],
        data["obs_mask"],
        weights,
        observed_points=data["points"] if depth else None,
        model_points=objects.points.to(R.device)[idx] if depth else None,
        R=R,
        t=t,
        points_valid=data["points_valid"] if depth else None,
        clip=cfg.geometry_clip,
    )


def _network(net: GenFlowNet | torch.nn.Module, data: dict[str, Any], cfg: AdaptConfig) -> GenFlowOutput:
    batch: CropBatch = data["batch"]
    depth = bool(data["has_depth"])
    return run_network(
        net,
        batch,
        cfg.iterations,
        use_depth=depth,
        depth_prior=None if depth else batch.pose.t[:, 2].to(torch.float32),
        depth_prior_weight=0.0 if depth else cfg.depth_prior_weight,
    )


def adapt_losses(
    net: GenFlowNet | torch.nn.Module, data: dict[str, Any], cfg: AdaptConfig, objects: ObjectTensors
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (module docstring) and scalars to log: ``loss``, the last iteration's ``colour`` /
    ``iou`` / ``geometry`` terms (unweighted), ``loss_start`` / ``loss_last`` (the joint loss of the start poses and
    of the last iteration's), ``pool`` (items the curriculum drew from)."""
    out = _network(net, data, cfg)
    poses = [s.pose for s in out.steps]
    try:
        terms = [selfsup_terms(data, p, cfg, objects) for p in poses]
    except ValueError as exc:  # a pose behind the camera in every crop: skip the step (a non-finite loss)
        log.warning("adapt step skipped: %s", exc)
        return torch.tensor(float("nan")), {"behind_camera": 1.0}
    loss = sequence_loss([x.total.mean() for x in terms], cfg.gamma)
    pseudo: dict[str, float] = {}
    if cfg.pseudo_weight > 0:
        idx = data["obj_index"]
        flow_loss, pose_loss, _, vis = supervised_terms(
            out,
            data["batch"],
            data["target"],
            data["mask_s"],
            objects.points[idx],
            objects.symmetries.to(objects.points.device)[idx],
            cfg.gamma,
        )
        loss = loss + cfg.pseudo_weight * (flow_loss + cfg.pose_weight * pose_loss.to(loss.dtype))
        pseudo = {"pseudo_flow": float(flow_loss.detach()), "pseudo_pose": float(pose_loss.detach())}
        pseudo["pseudo_visible"] = float(vis.mean())
    with torch.no_grad():
        start = selfsup_terms(data, data["batch"].pose, cfg, objects)
    last = terms[-1]
    stats = {
        "loss": float(loss.detach()),
        "loss_start": float(start.total.mean()),
        "loss_last": float(last.total.detach().mean()),
        "colour": float(last.colour.detach().mean()),
        "iou": float(last.iou.detach().mean()),
        "geometry": float(last.geometry.detach().mean()),
        "pool": float(data.get("pool", 0)),
        **pseudo,
    }
    return loss, stats


def validate_adapt(
    net: GenFlowNet | torch.nn.Module, batches: list[dict[str, Any]], cfg: AdaptConfig, objects: ObjectTensors
) -> dict[str, Any]:
    """``val_loss`` (lower is better: the mean self-supervised loss of the last iteration's poses on the held-out
    items), ``val_loss_start`` (of their start poses), ``val_iou`` and ``val_colour`` (last iteration)."""
    t0 = time.perf_counter()
    device = next(net.parameters()).device
    total, start, iou, colour, n = 0.0, 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for data in batches:
            data = batch_to_device(data, device)
            last = selfsup_terms(data, _network(net, data, cfg).steps[-1].pose, cfg, objects)
            first = selfsup_terms(data, data["batch"].pose, cfg, objects)
            total += float(last.total.sum())
            start += float(first.total.sum())
            iou += float(last.iou.sum())
            colour += float(last.colour.sum())
            n += len(last.total)
    m = max(n, 1)
    return {
        "val_loss": total / m if n else float("nan"),
        "val_loss_start": start / m,
        "val_iou": iou / m,
        "val_colour": colour / m,
        "items": n,
        "seconds": time.perf_counter() - t0,
    }


def train_adapt(
    cfg: AdaptConfig,
    run_dir: str | Path,
    pseudo: Sequence[PseudoPose],
    *,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    renderer: Renderer | None = None,
) -> LoopResult:
    """Adapt (or resume adapting) a ``genflow`` network to unlabeled images; see the module docstring.

    Args:
        cfg: the run's options (on resume, the saved ones are used but for ``workers`` and ``threads``).
        run_dir: the run folder.
        pseudo: the pseudo poses of the detections (:mod:`meshpose.run.adapt` computes and caches them).
        resume: continue from ``run_dir/last.pt``.
        steps: the run's total length, overriding ``cfg.steps``.
        max_steps: stop after this many steps in this call.
        progress: called as ``progress(step, stats)`` at each log line.
        renderer: the GL renderer of the network's crops (default: this thread's).

    Returns:
        The step reached, the last log line and validation, the best (lowest) ``val_loss``.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
        ValueError: nothing to train on (see :class:`AdaptData`).
    """
    run = Path(run_dir)
    cfg, ck = resume_config(cfg, run, METHOD, resume=resume, steps=steps)
    cfg, start = initial_weights(cfg, ck, load_genflow_model)
    data = AdaptData(cfg, pseudo, renderer)
    objects = data.tensors
    with training_process(cfg, run) as ctx:
        net = with_weights(GenFlowNet(cfg.net), start)
        objects = ObjectTensors(
            objects.obj_ids,
            objects.points.to(ctx.device),
            objects.symmetries,
            objects.diameters,
            objects.meshes,
        )
        validate: Callable[[torch.nn.Module, int], dict[str, Any]] | None = None
        if data.val:
            validate = lazy_validation(data.validation_batches, lambda m, b: validate_adapt(m, b, cfg, objects))
        elif cfg.val_every:
            log.warning("no held-out image (val_share %.2f): best.pt is not written", cfg.val_share)
        task = method_task(
            cfg,
            METHOD,
            net,
            cfg.net.to_dict(),
            data=data.batches,
            loss=lambda m, batch: adapt_losses(m, batch, cfg, objects),
            to_device=batch_to_device,
            validate=validate,
        )
        loop = loop_config(cfg, val_metric="val_loss", higher_is_better=False)
        return train_loop(task, loop, run, resume_from=ck, max_steps=max_steps, progress=progress, ctx=ctx)
