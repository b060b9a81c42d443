"""``genflow``: the learned recurrent-flow refiner with shape-constrained updates (GenFlow family), RGB and RGB-D.

One outer iteration, for all object instances of the call at once:

1. cut a square crop of the observation around each instance's current pose (centred on the projected object
   origin) and render that instance alone into the crop camera (colour, depth, object coordinates, mask) — one
   batched GL call;
2. run :class:`~meshpose.nets.genflow.GenFlowNet`: shared feature encoder + context encoder at 1/8 resolution,
   all-pairs correlation pyramid, then a GRU whose every step predicts a flow update and confidence weights,
   solves a weighted differentiable PnP on the flow matches (plus a depth residual when the observation has depth)
   and restarts from the flow *induced by that pose*;
3. take the pose of the last recurrent step, unless the update is implausibly large.

**Depth from one image.** Without observed depth, the distance of the object along the viewing ray shows only as
a change of scale of the flow, the worst-observed direction of the pose, and the network's estimate of it is the
noisiest part of its answer: on LM-O's real images the free estimate made the depth error of the inits 4× worse
(median |Δz| 7.5 → 28 mm) while it halved the lateral error. In RGB the PnP layer therefore carries a weak prior
that holds the depth of the object origin at its initial value unless the flow agrees on a change of scale
(``depth_prior_weight``, :func:`~meshpose.geometry.pnp.gauss_newton_pnp`). Its weight ``3e-4`` was chosen on
held-out generated objects (``novel:4500-4540``, two validation sets of 90 and 209 instances,
``benchmarks/tune_genflow.py``), where it took RGB ADD(-S)@0.1d of the shipped weights from 0.68 to 0.83–0.85 at
15°/10 % and from 0.52–0.57 to 0.62–0.66 at 30°/20 %; stronger priors do better at 15° and worse at 30° (they keep
a wrong initial depth). With observed depth the prior is off.

Outer iterations run as a cascade of stages: a wide 128 px crop first (large errors), then a tight 192 px crop.
The network was trained on 128 px crops only, but it is fully convolutional and its correlation is all-pairs, so
it runs at other sizes; at the same padding the larger crop puts 2.25× more feature cells (1/8 resolution) on the
object, i.e. more and finer 2D-3D matches for the PnP layer. Chosen on the same validation sets as the prior: RGB
ADD(-S) at 15°/10 % and 30°/20 % 0.83/0.66 → 0.90/0.80 (val-1) and 0.85/0.62 → 0.90/0.68 (val-2), RGB-D level
(val-2 0.97/0.91 both); a 256 px fine crop or a third fine iteration were within ±0.02 of it at 1.3–1.6× the
time, a 192 px coarse stage was worse at 30°. One forward pass costs 36 ms at 192 px against 24 ms at 128 px
(2 cores). The weights ship with the package (``meshpose/weights/genflow``) and were trained by ``meshpose train
genflow`` on generated objects only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from meshpose.geometry.crop import crop_box_around_object
from meshpose.nets.batch import load_genflow_model, make_crop_batch, run_network
from meshpose.nets.genflow import GenFlowNet
from meshpose.refine.base import LazyRenderer, StageTimer, check_refine_inputs, make_result, stage_schedule
from meshpose.refine.guards import check_step
from meshpose.refine.select import EdgeJudge, pick_by_edges
from meshpose.refine.views import cut_crop
from meshpose.render.base import Lighting, Renderer, render_alone
from meshpose.types import Failure, FailureCode, ObjectModel, Observation, Pose, RefineResult

__all__ = ["GenFlowConfig", "GenFlowRefiner", "GenFlowStage"]


@dataclass(frozen=True)
class GenFlowStage:
    """One level of the cascade.

    Args:
        size: crop side in pixels (a multiple of 8).
        padding: crop box size over the object's projected extent.
        iterations: outer iterations (render → network → pose) at this level.
        inner: recurrent iterations of the network per outer iteration.
        depth_prior: RGB only: the weight of the depth prior at this level, or ``None`` for the refiner's
            ``depth_prior_weight``.
        weights: the network of this level: a ``model.pt``, ``"package:NAME"`` for ``NAME.pt`` shipped with
            meshpose (:func:`default_weights_path`), or ``None`` for the refiner's network (``config.weights``).
    """

    size: int = 128
    padding: float = 1.6
    iterations: int = 1
    inner: int = 4
    depth_prior: float | None = None
    weights: str | None = None


@dataclass(frozen=True)
class GenFlowConfig:
    """Options of the ``genflow`` refiner.

    Args:
        stages: the coarse-to-fine cascade.
        weights: a ``model.pt`` to load (``None``: the weights shipped in the package; see :func:`resolve_weights`).
        use_depth: use the observed depth when there is some (encoder input + PnP depth residual).
        lighting: shading of the renderings the network compares with the image.
        max_step_deg: an outer update turning the object more than this is rejected.
        max_step_frac: an outer update moving it more than this fraction of the diameter is rejected.
        min_in_image: an instance whose rendered silhouette lies less than this fraction inside the image is not
            updated (a failure: there is nothing to compare with).
        select_by_edges: at the end, score every visited pose of an instance by how well its outline lies on the
            image edges (:func:`~meshpose.refine.select.edge_alignment_score`, in one fixed crop around the initial
            pose, all poses rendered in one call) and return the best one when it beats the last pose by more than
            ``select_margin`` — a guard, shared with ``flow-pnp``, against a network that walks away from a good
            initial pose.
        select_margin: edge-score margin (the score is in [0, 1]) a better-fitting earlier pose needs.
        depth_prior_weight: RGB only (no observed depth): weight ``λ`` of a prior in the PnP layer that holds the
            depth of the object origin at its initial value unless the flow agrees on a change of scale
            (:func:`~meshpose.geometry.pnp.gauss_newton_pnp`); ``0`` lets the flow alone decide it. See the
            module docstring for why and what it measured.
        threads: torch CPU threads while refining (``None``: leave torch's setting).
        device: torch device of the network.
    """

    stages: tuple[GenFlowStage, ...] = (GenFlowStage(128, 1.6, 2, 4), GenFlowStage(192, 1.25, 2, 4))
    weights: str | None = None
    use_depth: bool = True
    lighting: Lighting = field(default_factory=lambda: Lighting(ambient=0.6, diffuse=0.5))
    max_step_deg: float = 60.0
    max_step_frac: float = 0.6
    min_in_image: float = 0.1
    select_by_edges: bool = False
    select_margin: float = 0.05
    depth_prior_weight: float = 3e-4
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("genflow needs at least one stage")
        # Stages given as JSON (``meshpose refine --config``): dicts of GenFlowStage fields or [size, padding, …].
        stages = tuple(
            s if isinstance(s, GenFlowStage) else GenFlowStage(**s) if isinstance(s, dict) else GenFlowStage(*s)
            for s in self.stages
        )
        object.__setattr__(self, "stages", stages)
        for s in self.stages:
            if s.size < 32 or s.size % 8 or s.padding < 1.0 or s.iterations < 0 or s.inner < 1:
                raise ValueError(f"bad genflow stage {s}: need size ≥ 32 and a multiple of 8, padding ≥ 1, inner ≥ 1")
            if s.depth_prior is not None and not s.depth_prior >= 0.0:
                raise ValueError(f"bad genflow stage {s}: depth_prior must be ≥ 0 (or None)")
        if not self.depth_prior_weight >= 0.0:
            raise ValueError(f"genflow depth_prior_weight must be ≥ 0, got {self.depth_prior_weight}")


class GenFlowRefiner(LazyRenderer):
    """The ``genflow`` preset (RGB; uses depth when the observation has it). See the module docstring.

    Args:
        config: options.
        renderer: renderer of the crops (default: the shared GL renderer).
        model: a network to use instead of loading ``config.weights`` (e.g. during training).

    Raises:
        FileNotFoundError: no weights at ``config.weights`` (or none shipped) and no ``model``.
    """

    name = "genflow"
    modality: Literal["rgb", "rgbd"] = "rgb"
    Config = GenFlowConfig

    def __init__(
        self, config: GenFlowConfig | None = None, renderer: Renderer | None = None, model: GenFlowNet | None = None
    ) -> None:
        self.config = config or GenFlowConfig()
        self._renderer = renderer
        # Loaded now, not at the first image, so that missing or broken weights stop a batch run at once.
        self.model = model if model is not None else load_genflow_model(self.config.weights, self.config.device)
        #: the networks of stages with their own ``weights``, by spec (each loaded once)
        self.stage_models: dict[str, GenFlowNet] = {
            w: load_genflow_model(w, self.config.device) for w in {s.weights for s in self.config.stages} if w
        }

    def _schedule(self, iterations: int | None) -> list[GenFlowStage]:
        return stage_schedule(self.config.stages, iterations, lambda s: s.iterations)

    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        """Refine ``(N,)`` poses; see :class:`meshpose.refine.base.Refiner`."""
        cfg = self.config
        poses0 = check_refine_inputs(obs, objects, init, self.modality, self.name)
        timer = StageTimer()
        n = len(objects)
        current = Pose(poses0.R.clone(), poses0.t.clone())
        history = [poses0]
        failure: list[Failure | None] = [None] * n
        dropped = np.zeros(n, bool)  # no crop around the pose: the instance is left as it is
        score = np.zeros(n)
        use_depth = cfg.use_depth and obs.depth is not None

        def prior_weight(stage: GenFlowStage) -> float:  # RGB only: with depth, the depth residual decides
            if use_depth:
                return 0.0
            return cfg.depth_prior_weight if stage.depth_prior is None else stage.depth_prior

        old_threads = torch.get_num_threads()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        try:
            for it, stage in enumerate(self._schedule(iterations), start=1):
                active, boxes = [], []
                for i in range(n):
                    if dropped[i]:
                        continue
                    try:
                        boxes.append(
                            crop_box_around_object(obs.camera, current[i], objects[i].points, padding=stage.padding)
                        )
                        active.append(i)
                    except ValueError as exc:
                        failure[i] = Failure(FailureCode.BEHIND_CAMERA, f"cannot crop around the pose: {exc}")
                        dropped[i] = True
                if active:
                    with timer("crop"):
                        crops = [
                            cut_crop(obs, box, stage.size, index=i, depth=use_depth, mask=False)
                            for i, box in zip(active, boxes, strict=True)
                        ]
                        cams = [c.camera for c in crops]
                    idx = torch.tensor(active)
                    sub = current[idx]
                    with timer("render"):
                        rend = render_alone(self.renderer, [objects[i] for i in active], sub, cams, cfg.lighting)
                    batch = make_crop_batch(
                        np.stack([c.rgb for c in crops]),
                        np.stack([c.depth for c in crops if c.depth is not None]) if use_depth else None,
                        rend,
                        cams,
                        sub,
                        [objects[i].diameter for i in active],
                    ).to(cfg.device)
                    with timer("network"), torch.no_grad():
                        out = run_network(
                            self.stage_models[stage.weights] if stage.weights else self.model,
                            batch,
                            stage.inner,
                            use_depth=use_depth,
                            depth_prior=poses0.t[idx, 2],  # the depth the refine call started from
                            depth_prior_weight=prior_weight(stage),
                        )
                    last = out.steps[-1]
                    new = last.pose.to(torch.float64, "cpu")
                    w = last.weights.flatten(1).cpu().numpy()
                    valid = out.valid.cpu().numpy()
                    R, t = current.R.clone(), current.t.clone()
                    for k, i in enumerate(active):
                        failure[i] = check_step(
                            rend.mask[k],
                            crops[k].valid,
                            cfg.min_in_image,
                            current.R[i],
                            current.t[i],
                            new.R[k],
                            new.t[k],
                            diameter=objects[i].diameter,
                            max_rot_deg=cfg.max_step_deg,
                            max_trans_frac=cfg.max_step_frac,
                        )
                        if failure[i] is not None:
                            continue
                        R[i], t[i] = new.R[k], new.t[k]
                        score[i] = float(w[k][valid[k]].mean()) if valid[k].any() else 0.0
                    current = Pose(R, t)
                history.append(current)
                if callback is not None:
                    callback(it, current)
        finally:
            if cfg.threads is not None:
                torch.set_num_threads(old_threads)
        final, edge = history[-1], np.full(n, np.nan)
        if cfg.select_by_edges and len(history) > 1:
            with timer("score"):
                final, edge = self._select_by_edges(obs, objects, history, cfg.select_margin)
        return make_result(
            history,
            score,
            timer=timer,
            converged=np.zeros(n, bool),
            failure=failure,
            extra={"mean_confidence": score.copy(), "edge_score": edge},
            pose=final,
        )

    def _select_by_edges(
        self, obs: Observation, objects: Sequence[ObjectModel], history: list[Pose], margin: float
    ) -> tuple[Pose, np.ndarray]:
        """The visited pose of each instance whose outline fits the image edges best (see ``select_by_edges``)."""
        n, m = len(objects), len(history)
        R, t = history[-1].R.clone(), history[-1].t.clone()
        chosen = np.full(n, np.nan)
        for i in range(n):
            try:
                judge = EdgeJudge.around(obs, history[0][i], objects[i].points)
            except ValueError:
                continue
            visited = Pose.stack([h[i] for h in history])
            masks = render_alone(self.renderer, [objects[i]] * m, visited, [judge.crop.camera] * m, None).mask
            scores = [judge.score(mask) for mask in masks]
            pick = pick_by_edges(scores, margin)
            R[i], t[i] = visited.R[pick], visited.t[pick]
            chosen[i] = scores[pick]
        return Pose(R, t), chosen
