"""``deeprm``: the learned recurrent direct-regression refiner (DeepRM, "deep recurrent matching"), RGB.

For all object instances of a call at once:

1. cut one square crop of the observation per instance around its *initial* pose (centred on the projected object
   origin, ``padding`` × the object's projected extent, resampled to the network's resolution) — the crop stays
   fixed for the whole call, exactly as the network was trained (:mod:`meshpose.train.deeprm`);
2. each iteration renders every instance alone at its current pose into its crop camera (one batched GL call) and
   runs :class:`~meshpose.nets.deeprm.DeepRMNet` on the observed and rendered crops with the recurrent (LSTM)
   state of the previous iteration; the state starts at zero for every instance of every call (nothing carries
   over between objects or calls);
3. the network answers a rotation update (unit quaternion, about the object origin) and DeepIM's translation
   update (image-plane shift in crop sides, relative depth), applied by :func:`~meshpose.nets.deeprm.apply_update`
   behind the shared update guard (:func:`~meshpose.refine.guards.guard_update`): an instance whose update is
   rejected keeps its pose and stops.

``score`` is how settled the last update was: ``1 - min(1, step / (0.1 · diameter))`` with ``step`` the mean
displacement of the model points in the last iteration (1: the network no longer moves the object).

The default weights are ``package`` (``meshpose/weights/deeprm/model.pt``, novel-object weights trained by
``meshpose train deeprm`` on generated objects); ``package:lmo`` knows LM-O's eight objects (trained on synthetic
scenes of their meshes only). ``docs/deeprm.md`` says how both were trained and what they measure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from meshpose.geometry.crop import crop_box_around_object
from meshpose.nets.checkpoint import WeightsSpec
from meshpose.nets.deeprm import DeepRMNet, RecurrentState, apply_update, load_deeprm_model, make_input
from meshpose.refine.base import LazyRenderer, StageTimer, check_refine_inputs, make_result
from meshpose.refine.guards import check_step
from meshpose.refine.views import CropView, cut_crop
from meshpose.render.base import Lighting, Renderer, render_alone
from meshpose.types import Failure, FailureCode, ObjectModel, Observation, Pose, RefineResult

__all__ = ["DeepRMConfig", "DeepRMRefiner", "NoWeightsError"]


class NoWeightsError(FileNotFoundError):
    """``deeprm`` has no weights at the given spec (e.g. none shipped yet)."""


@dataclass(frozen=True)
class DeepRMConfig:
    """Options of the ``deeprm`` refiner.

    Args:
        weights: the network (:class:`~meshpose.nets.checkpoint.WeightsSpec`): ``"package"`` (the shipped novel-object
            weights), ``"package:NAME"`` (e.g. ``package:lmo``, known-object weights) or a file (``RUN/model.pt``).
        iterations: refinement iterations (the network was trained unrolled over 6; 6–12 are sensible).
        padding: crop box size over the object's projected extent at the initial pose (training drew 1.3–1.6).
        crop_size: crop side in pixels (``None``: the network's resolution, which it was trained at).
        lighting: shading of the renderings the network compares with the image.
        max_step_deg: an update turning the object more than this is rejected (the instance stops).
        max_step_frac: an update moving it more than this fraction of the diameter is rejected.
        min_in_image: an instance whose rendered silhouette lies less than this fraction inside the image is not
            updated (a failure: there is nothing to compare with).
        threads: torch CPU threads while refining (``None``: leave torch's setting).
        device: torch device of the network.
    """

    weights: str | None = "package"
    iterations: int = 6
    padding: float = 1.45
    crop_size: int | None = None
    lighting: Lighting = field(default_factory=lambda: Lighting(ambient=0.6, diffuse=0.5))
    max_step_deg: float = 45.0
    max_step_frac: float = 0.5
    min_in_image: float = 0.1
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.padding < 1.0:
            raise ValueError(f"deeprm needs iterations ≥ 0 and padding ≥ 1, got {self.iterations}, {self.padding}")
        if self.crop_size is not None and (self.crop_size < 32 or self.crop_size % 16):
            raise ValueError(f"deeprm crop_size must be a multiple of 16 and ≥ 32, got {self.crop_size}")


def _load(spec: str | None, device: str) -> DeepRMNet:
    try:
        return load_deeprm_model(spec, device)
    except FileNotFoundError as exc:
        ws = WeightsSpec.parse(spec)
        hint = (
            "deeprm has no shipped weights of this name yet: train some with "
            "`meshpose train deeprm --data novel:N --out RUN` (or `--objects MESHES`) and pass "
            '--config \'{"weights": "RUN/model.pt"}\''
            if ws.path is None
            else "no such file"
        )
        raise NoWeightsError(f"{exc}. {hint}") from exc


class DeepRMRefiner(LazyRenderer):
    """The ``deeprm`` preset (RGB). See the module docstring.

    Args:
        config: options.
        renderer: renderer of the crops (default: the shared GL renderer).
        model: a network to use instead of loading ``config.weights`` (tests, training).

    Raises:
        NoWeightsError: no weights at ``config.weights`` (or none shipped) and no ``model``.
    """

    name = "deeprm"
    modality: Literal["rgb", "rgbd"] = "rgb"
    Config = DeepRMConfig

    def __init__(
        self, config: DeepRMConfig | None = None, renderer: Renderer | None = None, model: DeepRMNet | None = None
    ) -> None:
        self.config = config or DeepRMConfig()
        self._renderer = renderer
        # loaded now, not at the first image, so that missing weights stop a batch run at once
        self.model = model if model is not None else _load(self.config.weights, self.config.device)
        self.model.eval()

    @property
    def crop_size(self) -> int:
        return self.config.crop_size or self.model.config.resolution

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
        n, size = len(objects), self.crop_size
        n_it = cfg.iterations if iterations is None else iterations
        current = Pose(poses0.R.clone(), poses0.t.clone())
        history = [poses0]
        failure: list[Failure | None] = [None] * n
        score = np.zeros(n)
        crops: dict[int, CropView] = {}
        with timer("crop"):
            for i in range(n):
                try:
                    box = crop_box_around_object(obs.camera, poses0[i], objects[i].points, padding=cfg.padding)
                except ValueError as exc:
                    failure[i] = Failure(FailureCode.BEHIND_CAMERA, f"cannot crop around the pose: {exc}")
                    continue
                crops[i] = cut_crop(obs, box, size, index=i, depth=False, mask=False)
        active = sorted(crops)
        device = torch.device(cfg.device)
        obs_all = (
            torch.from_numpy(np.stack([crops[i].rgb for i in active])).permute(0, 3, 1, 2).float().to(device) / 255.0
            if active
            else None
        )
        K_all = torch.from_numpy(np.stack([crops[i].camera.K for i in active])).to(torch.float64) if active else None
        rows = {i: r for r, i in enumerate(active)}  # row of each instance in the crop tensors
        state: RecurrentState | None = None  # zeros: every instance of every call starts afresh
        old_threads = torch.get_num_threads()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        try:
            for it in range(1, n_it + 1):
                if active:
                    assert obs_all is not None and K_all is not None
                    idx = torch.tensor(active)
                    sub = current[idx]
                    cams = [crops[i].camera for i in active]
                    with timer("render"):
                        rend = render_alone(self.renderer, [objects[i] for i in active], sub, cams, cfg.lighting)
                    sel = torch.tensor([rows[i] for i in active])
                    ren = torch.from_numpy(np.ascontiguousarray(rend.rgb)).permute(0, 3, 1, 2).float().to(device)
                    with timer("network"), torch.no_grad():
                        out = self.model(make_input(obs_all[sel.to(device)], ren), state)
                        new = apply_update(sub, out.quat.cpu().double(), out.trans.cpu().double(), K_all[sel], size)
                    R, t = current.R.clone(), current.t.clone()
                    keep = []
                    for k, i in enumerate(active):
                        failure[i] = check_step(
                            rend.mask[k],
                            crops[i].valid,
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
                        pts = torch.tensor(np.asarray(objects[i].points), dtype=torch.float64)
                        step = (pts @ (new.R[k] - R[i]).T + (new.t[k] - t[i])).norm(dim=-1).mean()
                        score[i] = 1.0 - min(1.0, float(step) / (0.1 * objects[i].diameter))
                        R[i], t[i] = new.R[k], new.t[k]
                        keep.append(k)
                    current = Pose(R, t)
                    # instances that failed stop; the others go on with their own state
                    state = out.state.select(torch.tensor(keep, dtype=torch.long, device=device)) if keep else None
                    active = [active[k] for k in keep]
                history.append(current)
                if callback is not None:
                    callback(it, current)
        finally:
            if cfg.threads is not None:
                torch.set_num_threads(old_threads)
        return make_result(
            history,
            score,
            timer=timer,
            converged=np.zeros(n, bool),
            failure=failure,
            extra={"crop_size": size},
        )
