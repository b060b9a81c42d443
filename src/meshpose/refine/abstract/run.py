"""One ``abstract`` refinement call: crops, the joint AdaGrad loop over all objects, the best poses and scores.

Per level (coarse to fine crop sizes): every active object gets a square crop around its current pose and the
network's descriptors of it (blurred). Every iteration renders all crops in one batched call with all objects at
their current poses (objects that cannot reach a crop are left out of it), evaluates LightDR on all of them at once
(:func:`~meshpose.refine.abstract.lightdr.crop_losses`) and sums the gradients every crop gives every object — the
total loss of the image's crops is minimised over all poses jointly. The step is AdaGrad's, per coordinate of the
centred increment ``[v / d, ω]`` (translation of the centre in object diameters ``d``, rotation in radians), with
a step size decayed each iteration. AdaGrad does not decrease the loss monotonically: the pose returned per
object is the best one (by its own crop's loss) at the finest level, the initial pose among the candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from meshpose.geometry.crop import crop_box_around_object
from meshpose.refine.abstract.config import AbstractConfig
from meshpose.refine.abstract.features import DescriptorExtractor
from meshpose.refine.abstract.field import DescriptorField, FieldSet
from meshpose.refine.abstract.lightdr import CropLoss, CropTarget, blur, crop_losses
from meshpose.refine.base import StageTimer, make_result
from meshpose.refine.contour.energy import PosePrior
from meshpose.refine.contour.level import HIDDEN_TRANSLATION, SceneBoxes
from meshpose.refine.guards import initial_pose_failure, usable_update
from meshpose.refine.views import CropView, cut_crop
from meshpose.render.base import Renderer, only_outputs
from meshpose.types import Failure, FailureCode, ObjectModel, Observation, Pose, RefineResult, se3_exp

__all__ = ["AbstractRun", "gate_descriptors"]


@dataclass
class _Crop:
    """One object's crop at one level: the observed crop, its blurred descriptors (``target``), who is left out of
    its render."""

    crop: CropView
    target: CropTarget
    hidden: list[int]


def gate_descriptors(desc: np.ndarray, fg: np.ndarray, full: float = 1.0) -> np.ndarray:
    """Observed descriptors gated by the foreground head: ``desc · min(fg / full, 1)``.

    Args:
        desc: ``(..., H, W, D)`` descriptors.
        fg: ``(..., H, W)`` foreground probabilities in [0, 1].
        full: the probability at and above which a pixel keeps its descriptor whole (``1``: ``desc · fg``).

    Returns:
        ``(..., H, W, D)`` float32: what the network calls background goes towards the background descriptor 0.
    """
    return np.asarray(desc * np.minimum(fg / float(full), 1.0)[..., None], dtype=np.float32)


class AbstractRun:
    """The state of one ``refine`` call of ``abstract`` and its loop.

    Args:
        cfg: the options.
        renderer: renders the crops.
        extractor: the descriptor network.
        fields: per object, its fused descriptors (or a :class:`~meshpose.refine.abstract.field.FieldSet` of them).
        obs: the observation.
        objects: the ``N`` object models.
        drawn: the models drawn in the crops (decimated render meshes).
        init: ``(N,)`` initial poses (checked).
    """

    def __init__(
        self,
        cfg: AbstractConfig,
        renderer: Renderer,
        extractor: DescriptorExtractor,
        fields: list[DescriptorField] | FieldSet,
        obs: Observation,
        objects: list[ObjectModel],
        drawn: list[ObjectModel],
        init: Pose,
        timer: StageTimer,
    ) -> None:
        self.cfg = cfg
        self.renderer = renderer
        self.extractor = extractor
        self.fields = fields if isinstance(fields, FieldSet) else FieldSet(fields)
        self.obs = obs
        self.objects = objects
        self.drawn = drawn
        self.n = len(objects)
        self.timer = timer
        R0, t0 = init.numpy()
        self.R0, self.t0 = R0.copy(), t0.copy()
        self.R, self.t = R0.copy(), t0.copy()  # current iterate
        self.R_best, self.t_best = R0.copy(), t0.copy()
        self.E_best = np.full(self.n, np.inf)
        self.score = np.zeros(self.n)
        self.failure: list[Failure | None] = [None] * self.n
        self.scene = SceneBoxes.of(objects)
        self.centers = np.stack(self.scene.centers)
        self.diam = np.array([o.diameter for o in objects])
        self.priors = [PosePrior(self.R0[i], self.t0[i], self.centers[i], o.diameter) for i, o in enumerate(objects)]
        self.loss_log: list[list[float]] = []
        # the renderer is asked for xyz, depth and instance only (decided once: it inspects the renderer's signature)
        self._render_kwargs = only_outputs(renderer, ("xyz", "depth", "instance"))
        self._check_initial()

    # --- setup --------------------------------------------------------------------------------------------
    def _check_initial(self) -> None:
        for i, obj in enumerate(self.objects):
            self.failure[i] = initial_pose_failure(self.obs.camera, _pose(self.R0[i], self.t0[i]), obj.points)

    def _active(self) -> list[int]:
        return [i for i in range(self.n) if self.failure[i] is None]

    def _make_crops(self, level: int) -> dict[int, _Crop]:
        """Every active object's crop at ``level`` around its current pose, with the observed descriptors."""
        size = int(self.cfg.crop_sizes[level])
        sigma = float(self.cfg.blur_px[level])
        crops: dict[int, CropView] = {}
        for i in self._active():
            try:
                box = crop_box_around_object(
                    self.obs.camera, _pose(self.R[i], self.t[i]), self.objects[i].points, padding=self.cfg.padding
                )
            except ValueError:
                self.failure[i] = Failure(
                    FailureCode.BEHIND_CAMERA, "object crosses the camera plane during refinement"
                )
                continue
            crops[i] = cut_crop(self.obs, box, size, size, index=i, depth=False, mask=False, valid="centres")
        if not crops:
            return {}
        with self.timer("descriptors"):
            desc, fg = self.extractor(np.stack([c.rgb for c in crops.values()]))
        if self.cfg.fg_gate:  # the background's descriptor is 0: gate the observation by the foreground head
            desc = gate_descriptors(desc, fg, self.cfg.fg_gate_full)
        out: dict[int, _Crop] = {}
        for (i, crop), d in zip(crops.items(), desc, strict=True):
            own_box = self.scene.projected_box(i, self.R, self.t, crop.camera)
            reach = 3.0 * sigma + 4.0 + 0.15 * size  # the objects may move during the level
            region = (
                np.array([-0.5, -0.5, size - 0.5, size - 0.5])
                if own_box is None
                else own_box + np.array([-reach, -reach, reach, reach])
            )
            hidden, _, _ = self.scene.neighbours(i, self.R, self.t, crop.camera, region)
            observed = blur(np.where(crop.valid[..., None], d, 0.0).astype(np.float32), sigma)
            up = size / max(float(crop.box[2] - crop.box[0]), 1e-6)  # crop pixels per image pixel
            render_sigma = math.sqrt(sigma**2 + (0.25 * up * up if up > 1.0 else 0.0))
            out[i] = _Crop(crop, CropTarget(observed, crop.valid, sigma, render_sigma, self.cfg.huber), hidden)
        return out

    # --- one evaluation of all crops ----------------------------------------------------------------------
    def _evaluate(
        self, crops: dict[int, _Crop], level: int, R: np.ndarray, t: np.ndarray, gradients: bool = True
    ) -> dict[int, CropLoss]:
        """Render every crop with all objects at ``(R, t)`` and evaluate LightDR on each (``gradients=False``:
        the losses, renderings and distances only, for the evaluations that take no step)."""
        order = list(crops)
        Rs = np.repeat(R[None], len(order), 0)
        ts = np.repeat(t[None], len(order), 0)
        for b, i in enumerate(order):
            gone = crops[i].hidden + [j for j in range(self.n) if self.failure[j] is not None and j != i]
            if gone:
                Rs[b, gone] = np.eye(3)
                ts[b, gone] = HIDDEN_TRANSLATION
        with self.timer("render"):
            out = self.renderer.render(
                self.drawn,
                Pose(torch.as_tensor(Rs), torch.as_tensor(ts)),
                [crops[i].crop.camera for i in order],
                **self._render_kwargs,
            )
        with self.timer("lightdr"):
            shown = [
                b
                for b, i in enumerate(order)
                if int(np.count_nonzero((out.instance[b] == i + 1) & crops[i].crop.valid)) >= self.cfg.min_visible_px
            ]
            losses = crop_losses(
                [out.xyz[b] for b in shown],
                [out.instance[b] for b in shown],
                [out.depth[b] for b in shown],
                [crops[order[b]].target for b in shown],
                [crops[order[b]].crop.camera.K for b in shown],
                self.fields,
                R,
                t,
                self.centers,
                gain=self.cfg.gain,
                want=set(self._active()) if gradients else set(),
            )
        return {order[b]: cl for b, cl in zip(shown, losses, strict=True)}

    def _record(self, crops: dict[int, _Crop], losses: dict[int, CropLoss], R: np.ndarray, t: np.ndarray) -> None:
        """Keep, per object, the poses whose own crop's loss is the lowest so far."""
        for i in crops:
            cl = losses.get(i)
            if cl is None:
                continue
            energy = cl.loss
            if self.cfg.prior_weight > 0:
                energy += self.priors[i].terms(self.cfg, R[i], t[i])[0]
            if energy < self.E_best[i]:
                self.E_best[i] = energy
                self.R_best[i], self.t_best[i] = R[i].copy(), t[i].copy()

    def _delta(self, i: int, g: np.ndarray, G: np.ndarray, lr: float) -> np.ndarray:
        """Object ``i``'s AdaGrad increment ``[v, ω]`` (centred) from its gradient ``g`` (``G``: its accumulated
        squared gradients, updated)."""
        cfg = self.cfg
        d = self.diam[i]
        if cfg.prior_weight > 0:
            g = g + self.priors[i].terms(cfg, self.R[i], self.t[i])[2]
        gs = np.concatenate([g[:3] * d, g[3:]])  # gradient w.r.t. [v / d, ω]
        if cfg.adagrad_blocks:
            G[:3] += float(gs[:3] @ gs[:3])
            G[3:] += float(gs[3:] @ gs[3:])
        else:
            G += gs * gs
        step = -lr * gs / (np.sqrt(G) + cfg.adagrad_eps)
        delta = np.concatenate([cfg.lr_trans * step[:3] * d, step[3:]])
        rot = float(np.linalg.norm(delta[3:]))
        trans = float(np.linalg.norm(delta[:3]))
        scale = min(1.0, math.radians(cfg.max_step_deg) / max(rot, 1e-12), cfg.max_step_trans * d / max(trans, 1e-12))
        return delta * scale

    def _step(self, ids: list[int], grads: np.ndarray, G: np.ndarray, lr: float) -> None:
        """One AdaGrad step of the objects ``ids`` from their current poses (``grads``, ``G``: ``(N, 6)``
        gradients and accumulated squared gradients). An update that is not finite or puts the object's centre
        behind the camera is dropped (:func:`~meshpose.refine.guards.usable_update`)."""
        if not ids:
            return
        deltas = np.stack([self._delta(i, grads[i], G[i], lr) for i in ids])
        Rd, td = (x.numpy() for x in se3_exp(torch.as_tensor(deltas, dtype=torch.float64)))
        for k, i in enumerate(ids):
            c_cam = self.R[i] @ self.centers[i] + self.t[i]
            R_new = Rd[k] @ self.R[i]
            t_new = Rd[k] @ (self.t[i] - c_cam) + td[k] + c_cam
            if usable_update(R_new, t_new, self.centers[i]):
                self.R[i], self.t[i] = R_new, t_new

    def _score(self, crops: dict[int, _Crop], losses: dict[int, CropLoss]) -> None:
        """Score in [0, 1]: the share of the object's pixels and of a ring around its silhouette whose descriptor
        difference is under ``score_tol`` (the rendering explains the observation there)."""
        for i, cl in losses.items():
            if i not in crops:
                continue
            own = np.linalg.norm(cl.rendered, axis=-1) > 0  # blurred: the silhouette and a thin ring
            ring = cv2.dilate(own.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            region = ring & crops[i].crop.valid
            if region.any():
                self.score[i] = float(np.mean(cl.distance[region] < self.cfg.score_tol))

    # --- the loop -----------------------------------------------------------------------------------------
    def execute(self, plan: list[tuple[int, int]], callback: Callable[[int, Pose], None] | None) -> RefineResult:
        cfg = self.cfg
        history = [_pose(self.R0, self.t0)]
        it = 0
        levels = plan if plan else [(len(cfg.crop_sizes) - 1, 0)]
        for li, (level, count) in enumerate(levels):
            last = li == len(levels) - 1
            if li > 0:  # go on from the best poses of the previous level
                self.R[:], self.t[:] = self.R_best, self.t_best
            with self.timer("crop"):
                crops = self._make_crops(level)
            if not crops:
                break
            self.E_best[:] = np.inf
            if last and li > 0:  # the initial poses compete at the finest level
                self._record(crops, self._evaluate(crops, level, self.R0, self.t0, False), self.R0, self.t0)
            G = np.zeros((self.n, 6))
            lr = cfg.level_lr(level)
            for _ in range(count):
                losses = self._evaluate(crops, level, self.R, self.t)
                self._record(crops, losses, self.R, self.t)
                grads = np.zeros((self.n, 6))
                for cl in losses.values():
                    for j, g in cl.grads.items():
                        grads[j] += g
                with self.timer("solve"):
                    self._step([i for i in crops if self.failure[i] is None and i in losses], grads, G, lr)
                lr *= cfg.lr_decay
                self.loss_log.append([losses[i].loss if i in losses else math.nan for i in range(self.n)])
                it += 1
                current = _pose(self.R, self.t)
                history.append(current)
                if callback is not None:
                    callback(it, current)
            final = self._evaluate(crops, level, self.R, self.t, False)  # the last step's pose competes too
            self._record(crops, final, self.R, self.t)
            for i in crops:
                if not np.isfinite(self.E_best[i]) and self.failure[i] is None:
                    msg = "object not visible in its crop (outside the image or hidden by other objects)"
                    self.failure[i] = Failure(FailureCode.NOT_VISIBLE, msg)
            if last:
                self._score(crops, self._evaluate(crops, level, self.R_best, self.t_best, False))
        for i in range(self.n):
            if self.failure[i] is not None:
                self.score[i] = 0.0
                self.R_best[i], self.t_best[i] = self.R0[i], self.t0[i]
        return make_result(
            history,
            self.score,
            timer=self.timer,
            converged=np.array([f is None for f in self.failure]),
            failure=self.failure,
            extra={"loss": np.array(self.loss_log), "levels": [lv for lv, _ in plan]},
            pose=_pose(self.R_best, self.t_best),
        )


def _pose(R: np.ndarray, t: np.ndarray) -> Pose:
    return Pose(torch.as_tensor(np.array(R, dtype=np.float64)), torch.as_tensor(np.array(t, dtype=np.float64)))
