"""``contour``: RGB pose refinement from silhouette/region statistics and colour, without learned features.

A render-and-compare optimiser in the spirit of abstract render-and-compare and of the region-based trackers
(PWP3D, RBOT, SRT3D):

* **Crops.** Each object is refined in a square crop camera around its current projection
  (:func:`~meshpose.geometry.crop_box_around_object`), coarse to fine (default 64 px, then 128 px).
* **One render per iteration** (non-differentiable GL; all crops of an iteration in one batched call, from
  render meshes decimated to a few thousand faces). Every object's crop shows the whole scene — the object and
  every other object that may reach into it — so the instance map says who owns each pixel: hidden parts of an
  object give it nothing, and a contour that is an occlusion boundary (another object in front) is not pulled.
* **Region term.** Local foreground/background colour histograms (RBOT-style: per cell of the crop, from the
  image inside the projected silhouette — or inside ``obs.mask`` when given — against a band around it) give a
  per-pixel foreground posterior. Along the normals of the rendered contour, a 1-D search finds where the
  posterior puts the contour (a distribution over offsets: SRT3D's correspondence lines with smoothed step
  functions); each line asks its contour pixel to move by the expected offset, weighted by the inverse variance
  and by a robust (Cauchy) weight of its agreement with the rigid motion that explains the other lines, which
  discounts occluded stretches of contour and background patches in the object's colours.
* **Colour term.** The rendered colour (CIE L*a*b*, blurred; a per-object gain on L* and offsets absorb lighting
  differences; L* weighted down because our shading is only roughly right) is compared with the observed colour
  inside the silhouette, Huber-robust. It pins down what the outline leaves open (rotations of textured objects,
  symmetric outlines, depth from texture scale).
* **Prior.** A Gaussian prior on the departure from the initial pose (MAP estimation). The outline says little
  about depth — a centimetre at a metre changes a 100-pixel silhouette by about a pixel, less than the bias of a
  colour posterior at a real edge — so without it depth wanders; with it, depth moves only as far as the image
  really says.
* **Screen-space gradients (OpenDR style).** Pixel motions ``Δu = J_u δ`` come from projecting the rasterised
  ``xyz`` (object coordinates) under a left-multiplied se(3) increment ``δ`` (centred on the object); the
  derivatives of the rendered quantities come from finite differences (the image gradient of the rendered colour,
  the contour normal from the blurred silhouette). A contour location moves with the owned pixel next to it: the
  background pixel just outside borrows its foreground neighbour's motion (the one-pixel dilation of abstract
  render-and-compare).
* **Optimiser: damped Gauss–Newton on se(3)** (Levenberg–Marquardt damping in the metric of the pixel motions,
  step clamps). Every iteration costs a render, so what matters is converging in a handful of iterations;
  Gauss–Newton steps on these residuals do, where the AdaGrad of the abstract render-and-compare paper takes tens
  to hundreds of steps and a step size per scene scale. Each iterate is ranked with a fixed energy (region energy
  of the silhouette against the posterior + colour energy + prior); a step that makes it clearly worse is taken
  back with more damping, and the pose returned is the best one found at the finest level — the initial pose
  included — never a diverged one.

Several objects of one image are refined jointly: all are rendered together at their current poses in every crop
and each takes its own step from its own crop (a pixel belongs to one object only, so the joint normal equations
are block diagonal).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import cv2
import numpy as np
import torch

from meshpose.geometry.crop import crop_box_around_object, crop_image, object_box
from meshpose.refine.base import LazyRenderer, RefinerError, StageTimer, check_refine_inputs, make_result
from meshpose.refine.contour_terms import (
    ColorModel,
    contour_lines,
    motion_jacobian,
    neighbourhood_min_distance,
    region_energy,
    rgb_to_lab,
)
from meshpose.render.base import Lighting, Renderer
from meshpose.types import Camera, ObjectModel, Observation, Pose, RefineResult, se3_exp

__all__ = ["ContourConfig", "ContourRefiner"]


@dataclass(frozen=True)
class ContourConfig:
    """Options of the ``contour`` refiner (defaults tuned for ≤ 300 ms per object on 2 CPU cores).

    Args:
        crop_sizes: crop side in pixels of each level, coarse to fine.
        iterations: iterations (renders) per level; ``refine(iterations=n)`` rescales them to ``n`` in total.
        line_length_px: half-length (crop pixels) of the correspondence lines searched for the contour, per
            level.
        color_blur_px: σ (crop pixels) of the blur of the rendered and observed colour, per level.
        padding: crop box size relative to the box that just fits the object (``≥ 1``).
        render_faces: the crops are rendered from copies of the render meshes decimated to at most this many
            faces (made once per object model and kept while the refiner and the model live; 0 keeps the
            render meshes). At 64–128 px, a few thousand faces draw the same silhouette several times faster.
        max_lines: at most this many correspondence lines per object and iteration.
        line_robust: width (in robust standard deviations) of the Cauchy weights that discount the lines no
            rigid motion explains together with the others (occluded contour, background patches in the object's
            colours); 0 disables them.
        step_slope: smoothing (pixels) of the step function of the contour model.
        step_alpha: certainty (< 1) of the step function: how much one pixel's posterior can say.
        region_weight: weight of the region term: the mean over the correspondence lines (and the mean region
            energy) count as this many independent observations.
        color_weight: weight of the colour term, likewise (0 disables it).
        prior_trans: standard deviation of the initial pose's error, translation of the object centre per axis,
            fraction of the diameter (the prior that keeps directions the image hardly constrains — depth,
            mostly — near the initial pose).
        prior_rot_deg: standard deviation of the initial pose's rotation error per axis, degrees.
        prior_weight: weight of that prior (0 disables it).
        color_scale: L*a*b* difference that counts as one unit of colour residual.
        lightness_weight: weight of the L* channel relative to a*, b* in the colour residual. Lightness carries
            the shading, which our renders get only roughly right (light direction, specular highlights), so it
            counts less than the chroma.
        huber: Huber threshold of the colour residual (in ``color_scale`` units).
        hist_bins: colour histogram bins per RGB channel (a power of two).
        hist_tiles: the crop is cut into ``hist_tiles²`` cells with their own (3 × 3-cell pooled) histograms.
        hist_prior_count: weight, in samples, of the global histograms in each local one.
        fg_erode_px: the foreground colour model uses the silhouette eroded by this many crop pixels.
        bg_band: ``(inner, outer)`` radii of the background band around the silhouette, fractions of the crop side.
        mask_weight: with ``obs.mask``, the posterior is ``(1 - w)·P + w·mask`` (and the colour models come from
            the mask).
        lighting: shading of the renders (the colour term fits a gain/offset on top of it).
        damping: Levenberg–Marquardt damping ``λ``: a step that moves the visible pixels by ``m`` pixels (RMS) is
            penalised by ``λ m²`` (in the units of the energies' normal equations).
        max_step_deg: largest rotation of one step, degrees.
        max_step_trans: largest translation of the object centre in one step, fraction of the diameter.
        worse_tolerance: a step whose energy exceeds the best one's by more than this (relative) is taken back.
        converged_deg: a step smaller than this (degrees) ...
        converged_trans: ... and than this (fraction of the diameter) counts as converged.
        max_color_pixels: the colour term uses at most this many (evenly sub-sampled) pixels.
        min_visible_px: fewer visible pixels than this in the crop makes the object a failure.
        score_window: neighbourhood radius (crop pixels) of the neighbourhood-min colour distance of the score.
        score_line_tol: a correspondence line whose contour offset is under this (crop pixels) counts as an
            inlier (score).
        score_color_tol: L*a*b* distance under which a pixel's colour counts as explained (score).
    """

    crop_sizes: tuple[int, ...] = (64, 128)
    iterations: tuple[int, ...] = (8, 8)
    line_length_px: tuple[int, ...] = (10, 10)
    color_blur_px: tuple[float, ...] = (2.0, 1.0)
    padding: float = 1.6
    render_faces: int = 3000
    max_lines: int = 200
    line_robust: float = 1.5
    step_slope: float = 2.0
    step_alpha: float = 0.3
    region_weight: float = 30.0
    color_weight: float = 30.0
    prior_trans: float = 0.07
    prior_rot_deg: float = 10.0
    prior_weight: float = 1.0
    color_scale: float = 10.0
    lightness_weight: float = 0.3
    huber: float = 1.0
    hist_bins: int = 16
    hist_tiles: int = 4
    hist_prior_count: float = 30.0
    fg_erode_px: int = 1
    bg_band: tuple[float, float] = (0.03, 0.2)
    mask_weight: float = 0.7
    lighting: Lighting = field(default_factory=Lighting)
    damping: float = 0.05
    max_step_deg: float = 10.0
    max_step_trans: float = 0.12
    worse_tolerance: float = 0.05
    converged_deg: float = 0.05
    converged_trans: float = 0.0005
    max_color_pixels: int = 3000
    min_visible_px: int = 20
    score_window: int = 1
    score_line_tol: float = 2.0
    score_color_tol: float = 15.0

    def __post_init__(self) -> None:
        n = len(self.crop_sizes)
        if n == 0:
            raise ValueError("ContourConfig.crop_sizes needs at least one level")
        for name in ("iterations", "line_length_px", "color_blur_px"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ContourConfig.{name} needs one value per level ({n}), got {getattr(self, name)}")
        if any(int(s) < 16 for s in self.crop_sizes):
            raise ValueError(f"ContourConfig.crop_sizes must be ≥ 16 px, got {self.crop_sizes}")
        if any(int(k) < 0 for k in self.iterations):
            raise ValueError(f"ContourConfig.iterations must be ≥ 0, got {self.iterations}")
        if any(int(k) < 1 for k in self.line_length_px):
            raise ValueError(f"ContourConfig.line_length_px must be ≥ 1, got {self.line_length_px}")
        if not self.padding >= 1.0:
            raise ValueError(f"ContourConfig.padding must be ≥ 1, got {self.padding}")
        if not (0.0 <= self.bg_band[0] < self.bg_band[1]):
            raise ValueError(f"ContourConfig.bg_band must be (inner, outer) with 0 ≤ inner < outer, got {self.bg_band}")
        if not (0.0 < self.step_alpha < 1.0):
            raise ValueError(f"ContourConfig.step_alpha must be in (0, 1), got {self.step_alpha}")


# ----------------------------------------------------------------------------------------------------------
# Per-object, per-level crop data
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _View:
    """One object's crop at one level: the observation cut out, and what the terms need of it."""

    index: int  # the object
    hidden: list[int]  # objects that cannot show in this crop: moved behind the camera for its render
    camera: Camera
    rgb: np.ndarray  # (s, s, 3) uint8 observed crop
    lab: np.ndarray  # (s, s, 3) float32 observed L*a*b*, blurred
    valid: np.ndarray  # (s, s) bool: inside the image
    mask: np.ndarray | None  # (s, s) bool observed instance mask, if given
    front_ids: list[int]  # instance ids (1 + index) of the objects in front of this one
    behind_ids: list[int]  # ... and of those behind it
    line_length: int
    color_sigma: float
    center_obj: np.ndarray  # (3,) object-frame centre of the increments
    posterior: np.ndarray | None = None  # (s, s) float32 foreground posterior (set on the first evaluation)


@dataclass
class _Eval:
    energy: float  # the fixed energy used to rank poses (lower is better)
    hessian: np.ndarray  # (6, 6) Gauss–Newton normal matrix
    metric: np.ndarray  # (6, 6) mean squared pixel motion of the visible surface (the damping metric)
    gradient: np.ndarray  # (6,) gradient (step: -(H + damping)⁻¹ g)
    score: float
    lines: int


class ContourRefiner(LazyRenderer):
    """The ``contour`` preset: region (contour) + colour render-and-compare, damped Gauss–Newton on se(3).

    Args:
        config: options (default ``ContourConfig()``).
        renderer: a :class:`~meshpose.render.base.Renderer` (default: the calling thread's GL renderer).

    ``refine`` returns per object the best pose found by the method's own energy at the finest level (the initial
    pose is one of the candidates), a score in [0, 1] — the geometric mean of three agreements at that pose: of
    the silhouette with the foreground posterior, the fraction of correspondence lines that find the contour
    where it is rendered, and the fraction of the object's pixels whose colour is explained (neighbourhood-min
    L*a*b* distance); 0 for a failure — and a failure reason where the object could not be refined (it projects
    outside the image, crosses the camera plane, or is hidden). ``history`` holds the iterates (the pose after
    each iteration's step), so ``pose`` may differ from ``history[-1]``.

    Example:
        >>> from meshpose.refine.base import make_refiner
        >>> refiner = make_refiner("contour", iterations=(3, 3))
        >>> refiner.name, refiner.modality
        ('contour', 'rgb')
    """

    Config = ContourConfig
    name: str = "contour"
    modality: Literal["rgb", "rgbd"] = "rgb"

    def __init__(self, config: ContourConfig | None = None, *, renderer: Renderer | None = None) -> None:
        self.config = config if config is not None else ContourConfig()
        self._renderer = renderer
        self._light_meshes: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def render_model(self, obj: ObjectModel) -> ObjectModel:
        """The model drawn in the crops: ``obj`` with its render mesh decimated to ``config.render_faces``.

        The decimated mesh is made once per render mesh (and kept while both the refiner and the mesh live), so
        object models that share a cached mesh share it too.
        """
        limit = int(self.config.render_faces)
        mesh = obj.render_mesh
        if limit <= 0 or len(mesh.faces) <= limit:
            return obj
        light = self._light_meshes.get(mesh)
        if light is None:
            from meshpose.mesh.simplify import simplify_mesh

            light = simplify_mesh(mesh, limit)
            self._light_meshes[mesh] = light
        return replace(obj, render_mesh=light)

    def schedule(self, iterations: int | None = None) -> list[tuple[int, int]]:
        """``(level, iterations)`` pairs, coarse to fine (levels without iterations left out).

        ``iterations=None`` gives the configured counts; a total ``n`` is shared out in the configured
        proportions, the rounding remainder going to the finest level.
        """
        base = [int(k) for k in self.config.iterations]
        if iterations is None:
            counts = base
        else:
            total = int(iterations)
            if total < 0:
                raise RefinerError(f"{self.name}: iterations must be ≥ 0, got {iterations}")
            s = max(1, sum(base))
            counts = [math.floor(b * total / s) for b in base]
            counts[-1] += total - sum(counts)
        return [(lv, c) for lv, c in enumerate(counts) if c > 0]

    def refine(
        self,
        obs: Observation,
        objects: Sequence[ObjectModel],
        init: Pose,
        *,
        iterations: int | None = None,
        callback: Callable[[int, Pose], None] | None = None,
    ) -> RefineResult:
        """Refine the ``N`` poses jointly (see :class:`~meshpose.refine.base.Refiner`).

        Args:
            obs: the image (depth is not used); ``obs.mask``, if given, fixes the foreground colour models.
            objects: the ``N`` object models.
            init: ``(N,)`` initial ``cam_from_obj`` poses.
            iterations: total iterations (renders); ``None`` for the configured schedule.
            callback: called as ``callback(iteration, poses)`` after each iteration with the ``(N,)`` iterates.

        Raises:
            RefinerError: bad inputs only (no objects, a pose count that does not match, NaN or non-rotation
                poses, a pose behind the camera, masks that do not match the objects, negative ``iterations``).
                A refinement that goes wrong is reported in ``info.failure`` and by a low score instead.
        """
        poses0 = check_refine_inputs(obs, objects, init, self.modality, self.name)
        plan = self.schedule(iterations)
        return _Run(self, obs, list(objects), poses0).execute(plan, callback)


# ----------------------------------------------------------------------------------------------------------
# One refinement call
# ----------------------------------------------------------------------------------------------------------
class _Run:
    def __init__(self, refiner: ContourRefiner, obs: Observation, objects: list[ObjectModel], init: Pose) -> None:
        self.cfg = refiner.config
        self.renderer = refiner.renderer
        self.obs = obs
        self.objects = objects
        self.n = len(objects)
        self.timer = StageTimer()
        with self.timer("prepare"):
            self.drawn = [refiner.render_model(o) for o in objects]
        R0, t0 = init.numpy()
        self.R0, self.t0 = R0.copy(), t0.copy()
        self.R_best, self.t_best = R0.copy(), t0.copy()  # best pose at the current level (per object)
        self.R_cur, self.t_cur = R0.copy(), t0.copy()  # the pose the next step starts from
        self.R_trial, self.t_trial = R0.copy(), t0.copy()  # the pose rendered next
        self.E_best = np.full(self.n, np.inf)
        self.eval_cur: list[_Eval | None] = [None] * self.n  # linearisation at the current pose
        self.eval_best: list[_Eval | None] = [None] * self.n
        self.score = np.zeros(self.n)
        self.lam = np.full(self.n, self.cfg.damping)
        self.converged = np.zeros(self.n, bool)
        self.failure: list[str | None] = [None] * self.n
        self.boxes = [
            (np.asarray(o.render_mesh.vertices).min(0), np.asarray(o.render_mesh.vertices).max(0)) for o in objects
        ]
        self.centers = [0.5 * (o.points.min(0) + o.points.max(0)) for o in objects]

        self.energy_log: list[list[float]] = []
        self._check_initial()

    # --- setup --------------------------------------------------------------------------------------------
    def _check_initial(self) -> None:
        cam = self.obs.camera
        for i, obj in enumerate(self.objects):
            try:
                x0, y0, x1, y1 = object_box(cam, _pose(self.R0[i], self.t0[i]), obj.points)
            except ValueError:
                self.failure[i] = "object crosses the camera plane at the initial pose"
                continue
            if x1 < -0.5 or y1 < -0.5 or x0 > cam.width - 0.5 or y0 > cam.height - 0.5:
                self.failure[i] = "object projects outside the image at the initial pose"

    def _active(self) -> list[int]:
        return [i for i in range(self.n) if self.failure[i] is None]

    def _make_view(self, i: int, level: int) -> _View | None:
        cfg = self.cfg
        size = int(cfg.crop_sizes[level])
        cam = self.obs.camera
        try:
            box = crop_box_around_object(
                cam, _pose(self.R_best[i], self.t_best[i]), self.objects[i].points, padding=cfg.padding
            )
        except ValueError:
            self.failure[i] = "object crosses the camera plane during refinement"
            return None
        crop_cam = cam.crop(box, size, size)
        rgb, _ = crop_image(self.obs.rgb, cam, box, size, size)
        A = cam.crop_affine(box, size, size)
        valid = _inside_image(A, cam, size)
        mask = None
        if self.obs.mask is not None:
            mask = crop_image(self.obs.mask[i], cam, box, size, size, interpolation="nearest")[0]
        lab = rgb_to_lab(rgb)
        csig = float(cfg.color_blur_px[level])
        if csig > 0:
            lab = cv2.GaussianBlur(lab, (0, 0), csig)
        # Objects that may show near this one (its projected box plus the reach of the lines and blurs) are
        # rendered with it: occluders and occluded.
        own_box = self._projected_box(i, crop_cam)
        reach = float(cfg.line_length_px[level]) + 3.0 * float(cfg.color_blur_px[level]) + 4.0
        region = (
            np.array([-0.5, -0.5, size - 0.5, size - 0.5])
            if own_box is None
            else own_box + np.array([-reach, -reach, reach, reach])
        )
        hidden: list[int] = []
        depth_i = self._center_depth(i)
        front_ids: list[int] = []
        behind_ids: list[int] = []
        for j in range(self.n):
            if j == i:
                continue
            if self._overlaps(j, crop_cam, region):
                (front_ids if self._center_depth(j) < depth_i else behind_ids).append(j + 1)
            else:
                hidden.append(j)
        return _View(
            index=i,
            hidden=hidden,
            camera=crop_cam,
            rgb=rgb,
            lab=lab,
            valid=valid,
            mask=mask,
            front_ids=front_ids,
            behind_ids=behind_ids,
            line_length=int(cfg.line_length_px[level]),
            color_sigma=csig,
            center_obj=self.centers[i],
        )

    def _center_depth(self, j: int) -> float:
        return float(self.R_trial[j, 2] @ self.centers[j] + self.t_trial[j, 2])

    def _projected_box(self, j: int, camera: Camera) -> np.ndarray | None:
        """Pixel box ``(x0, y0, x1, y1)`` of object ``j``'s bounding box at its trial pose; ``None`` if it reaches
        the camera plane (its projection is unbounded)."""
        lo, hi = self.boxes[j]
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        p = corners @ self.R_trial[j].T + self.t_trial[j]
        if np.any(p[:, 2] <= 1e-6):
            return None
        uv = p @ camera.K[:2].T / p[:, 2:3]
        return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])

    def _overlaps(self, j: int, camera: Camera, region: np.ndarray) -> bool:
        """Whether object ``j`` may show inside ``region`` (a pixel box of ``camera``)."""
        box = self._projected_box(j, camera)
        if box is None:
            return True  # reaches the camera plane: render it to be safe
        return bool(box[2] > region[0] and box[0] < region[2] and box[3] > region[1] and box[1] < region[3])

    # --- evaluation ---------------------------------------------------------------------------------------
    def _evaluate(self, view: _View, out: Any, b: int, R: np.ndarray, t: np.ndarray, with_score: bool) -> _Eval | None:
        """Ranking energy, Gauss–Newton normal equations and score of ``view.index`` in scene ``b`` of a render."""
        cfg = self.cfg
        inst_full = out.instance[b]
        own_full = inst_full == view.index + 1
        if int(np.count_nonzero(own_full & view.valid)) < cfg.min_visible_px:
            return None
        if view.posterior is None:  # first evaluation at this level: fit the colour models
            view.posterior = self._fit_posterior(view, own_full)
        # Work in a window around the silhouette, wide enough for the lines and the blurs.
        rows = np.flatnonzero(own_full.any(1))
        cols = np.flatnonzero(own_full.any(0))
        margin = view.line_length + math.ceil(3.0 * max(view.color_sigma, 0.5)) + 3
        h, w = own_full.shape
        r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, h)
        c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, w)
        win = np.s_[r0:r1, c0:c1]
        inst = inst_full[win]
        own = own_full[win]
        valid = view.valid[win]
        front_px = np.isin(inst, view.front_ids) if view.front_ids else np.zeros_like(own)
        known = valid & ~front_px
        post = np.where(known, view.posterior[win], np.float32(0.5))

        # Pixel motions: the object-frame xyz seen at a pixel → camera frame → Jacobian of the pixel position.
        xyz = out.xyz[b]
        K = view.camera.K
        center = R @ view.center_obj + t

        def jac_at(rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
            pc = xyz[rr + r0, cc + c0].astype(np.float64) @ R.T + t
            return motion_jacobian(pc, K, center)

        orr, occ = np.nonzero(own)
        step = max(1, len(orr) // 400)
        jm = jac_at(orr[::step], occ[::step])
        metric = np.einsum("nki,nkj->ij", jm, jm) / len(jm)

        # Contour (region) term: correspondence lines from the owned pixels whose contour can move — next to
        # the background or to an object behind, i.e. not an occlusion boundary.
        free = inst == 0
        if view.behind_ids:
            free |= np.isin(inst, view.behind_ids)
        movable = own & (cv2.dilate(free.astype(np.uint8), _CROSS) > 0)
        lines = contour_lines(
            own,
            movable,
            post,
            half_length=view.line_length,
            max_lines=cfg.max_lines,
            slope=cfg.step_slope,
            alpha=cfg.step_alpha,
        )
        H = np.zeros((6, 6))
        g = np.zeros(6)
        n_lines = len(lines.rows)
        if n_lines and cfg.region_weight > 0:
            Jn = np.einsum("lk,lkj->lj", lines.normals, jac_at(lines.rows, lines.cols))  # normal motion (L, 6)
            wl = cfg.region_weight / lines.variance / n_lines
            if cfg.line_robust > 0:
                wl = wl * _consensus_weights(Jn, lines.offset, lines.variance, 0.5 * metric, cfg.line_robust)
            Hl = (Jn * wl[:, None]).T @ Jn
            gl = -(Jn * wl[:, None]).T @ lines.offset
            H += Hl
            g += gl

        E_reg, agree = region_energy(own, known, post, float(view.line_length), cfg.step_slope)
        E = cfg.region_weight * E_reg  # the lines' term has no fixed energy: rank with the region energy
        color_frac = 1.0
        if cfg.color_weight > 0 or with_score:
            Ec, Hc, gc, color_frac = self._color_term(
                view.lab[win], out.rgb[b][win], own, valid, view.color_sigma, jac_at, with_score
            )
            E += cfg.color_weight * Ec
            H += cfg.color_weight * Hc
            g += cfg.color_weight * gc
        if cfg.prior_weight > 0:
            Ep, Hp, gp = self._prior(view.index, R, t)
            E += Ep
            H += Hp
            g += gp
        score = 0.0
        if with_score:
            # Three agreements in [0, 1]: the silhouette with the posterior, the contour lines that find the
            # contour where it is rendered, and the object's pixels whose colour is explained.
            region = float(np.clip(2.0 * agree - 1.0, 0.0, 1.0))
            inliers = float(np.mean(np.abs(lines.offset) < cfg.score_line_tol)) if n_lines else 0.0
            score = (region * inliers * max(color_frac, 0.0)) ** (1.0 / 3.0)
        return _Eval(energy=E, hessian=H, metric=metric, gradient=g, score=score, lines=n_lines)

    def _prior(self, i: int, R: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Gaussian prior on the pose's departure from the initial one, and its normal equations.

        The departure is the camera-frame displacement of the object's centre and the rotation vector of
        ``R R₀ᵀ``; a centred increment ``δ = [v, ω]`` changes them by ``v`` and (to first order) ``ω``.
        """
        cfg = self.cfg
        c = self.centers[i]
        dt = (R @ c + t) - (self.R0[i] @ c + self.t0[i])
        dw = _rotvec(R @ self.R0[i].T)
        st = cfg.prior_trans * self.objects[i].diameter
        sr = math.radians(cfg.prior_rot_deg)
        prec = cfg.prior_weight * np.concatenate([np.full(3, 1.0 / st**2), np.full(3, 1.0 / sr**2)])
        x = np.concatenate([dt, dw])
        return 0.5 * float(prec @ (x * x)), np.diag(prec), prec * x

    def _fit_posterior(self, view: _View, own: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        s = own.shape[0]
        valid = view.valid
        base = view.mask if view.mask is not None else own
        base_u8 = base.astype(np.uint8)
        fg = base
        if view.mask is None and cfg.fg_erode_px > 0:
            eroded = cv2.erode(base_u8, _disk(cfg.fg_erode_px)) > 0
            if np.count_nonzero(eroded & valid) >= 10:
                fg = eroded
        r_in = max(1, round(cfg.bg_band[0] * s))
        r_out = max(r_in + 2, round(cfg.bg_band[1] * s))
        bg = (cv2.dilate(base_u8, _disk(r_out)) > 0) & ~(cv2.dilate(base_u8, _disk(r_in)) > 0)
        model = ColorModel.fit(view.rgb, fg & valid, bg & valid, cfg.hist_bins, cfg.hist_tiles, cfg.hist_prior_count)
        post = model.posterior(view.rgb)
        if view.mask is not None:
            post = (1.0 - cfg.mask_weight) * post + cfg.mask_weight * view.mask.astype(np.float32)
        return post.astype(np.float32)

    def _color_term(
        self,
        lab_obs: np.ndarray,
        rgb_render: np.ndarray,
        own: np.ndarray,
        valid: np.ndarray,
        sigma: float,
        jac_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
        with_score: bool,
    ) -> tuple[float, np.ndarray, np.ndarray, float]:
        """Colour energy ``E = Σ W ρ(r) / Σ W`` over the object's pixels, its normal equations, explained fraction.

        ``r`` is the L*a*b* difference between the rendered colour (blurred by normalised convolution, with a
        gain on L and offsets fitted by weighted least squares) and the blurred observation ``lab_obs``, in
        ``color_scale`` units; ``ρ`` is the Huber cost and ``W`` the blurred silhouette (pixels near the contour,
        whose observed colour mixes in the background when the pose is off, count less). To first order the
        rendered colour at ``x`` changes by ``-∇C(x) · Δu(x)``, with ``∇C`` from central differences.
        """
        cfg = self.cfg
        zero = np.zeros((6, 6)), np.zeros(6)
        ownf = own.astype(np.float32)
        csig = max(sigma, 0.5)
        lab_r = rgb_to_lab(rgb_render)
        num = cv2.GaussianBlur(lab_r * ownf[..., None], (0, 0), csig)
        den = cv2.GaussianBlur(ownf, (0, 0), csig)
        lab_r = num / np.maximum(den, 1e-3)[..., None]
        W = den * ownf * valid
        rr, cc = np.nonzero(W > 0.05)
        n_sel = len(rr)
        if n_sel < 10:
            return 0.0, *zero, 0.0
        w = W[rr, cc].astype(np.float64)
        sw = float(w.sum())
        cr = lab_r[rr, cc].astype(np.float64)
        io = lab_obs[rr, cc].astype(np.float64)
        # Photometric normalisation (weighted least squares): a gain on L (light strength), offsets on all.
        gain = np.ones(3)
        mr = w @ cr / sw
        mo = w @ io / sw
        vr = float(w @ (cr[:, 0] - mr[0]) ** 2 / sw)
        if vr > 1e-6:
            cov = float(w @ ((cr[:, 0] - mr[0]) * (io[:, 0] - mo[0])) / sw)
            gain[0] = float(np.clip(cov / vr, 0.5, 2.0))
        offset = mo - gain * mr
        frac = 1.0
        if with_score:
            pred = (lab_r * gain + offset).astype(np.float32)
            d = neighbourhood_min_distance(pred, lab_obs, cfg.score_window)[rr, cc]
            frac = float(w @ (d < cfg.score_color_tol) / sw)
        chan = np.array([cfg.lightness_weight, 1.0, 1.0]) / cfg.color_scale
        res = (gain * cr + offset - io) * chan  # (n, 3)
        norm = np.linalg.norm(res, axis=1)
        k = cfg.huber
        psi = np.where(norm <= k, 1.0, k / np.maximum(norm, 1e-12))  # IRLS weight ρ'(|r|) / |r|
        rho = np.where(norm <= k, 0.5 * norm**2, k * (norm - 0.5 * k))
        E = float(w @ rho / sw)
        if cfg.color_weight <= 0:
            return E, *zero, frac
        pick = np.arange(n_sel)
        stride = 1
        if n_sel > cfg.max_color_pixels:
            stride = math.ceil(n_sel / cfg.max_color_pixels)
            pick = pick[::stride]
        rs, cs = rr[pick], cc[pick]
        # Central differences of the rendered colour at the chosen pixels (the window keeps a margin).
        hh, ww_ = lab_r.shape[:2]
        gx = 0.5 * (lab_r[rs, np.minimum(cs + 1, ww_ - 1)] - lab_r[rs, np.maximum(cs - 1, 0)])
        gy = 0.5 * (lab_r[np.minimum(rs + 1, hh - 1), cs] - lab_r[np.maximum(rs - 1, 0), cs])
        grad = np.stack([gx, gy], axis=-1).astype(np.float64)  # (m, 3, 2)
        Jc = -((gain * chan)[None, :, None] * (grad @ jac_at(rs, cs)))  # (m, 3, 6)
        wt = (w[pick] * psi[pick] * stride / sw)[:, None, None]
        Jw = Jc * wt
        H = np.einsum("nci,ncj->ij", Jw, Jc)
        g = np.einsum("nci,nc->i", Jw, res[pick])
        return E, H, g, frac

    # --- steps --------------------------------------------------------------------------------------------
    def _step(self, i: int) -> None:
        """A damped Gauss–Newton step from the current pose of object ``i`` → its next trial pose."""
        cfg = self.cfg
        ev = self.eval_cur[i]
        if ev is None:
            self.R_trial[i], self.t_trial[i] = self.R_cur[i].copy(), self.t_cur[i].copy()
            return
        H, g, M = ev.hessian, ev.gradient, ev.metric
        # Damping in the pixel-motion metric: a step that moves the visible pixels by m (RMS) costs λ m², so
        # directions the data hardly constrain (depth, turns that keep the outline) do not wander.
        A = H + self.lam[i] * M + 1e-9 * (np.trace(M) / 6.0 + 1e-12) * np.eye(6)
        try:
            delta = -np.linalg.solve(A, g)
        except np.linalg.LinAlgError:
            delta = np.zeros(6)
        if not np.all(np.isfinite(delta)):
            delta = np.zeros(6)
        diam = self.objects[i].diameter
        rot = float(np.linalg.norm(delta[3:]))
        trans = float(np.linalg.norm(delta[:3]))
        scale = min(
            1.0, math.radians(cfg.max_step_deg) / max(rot, 1e-12), cfg.max_step_trans * diam / max(trans, 1e-12)
        )
        delta *= scale
        self.converged[i] = rot * scale < math.radians(cfg.converged_deg) and trans * scale < cfg.converged_trans * diam
        c_cam = self.R_cur[i] @ self.centers[i] + self.t_cur[i]
        Rd, td = se3_exp(torch.as_tensor(delta, dtype=torch.float64))
        Rd_np, td_np = Rd.numpy(), td.numpy()
        R_new = Rd_np @ self.R_cur[i]
        t_new = Rd_np @ (self.t_cur[i] - c_cam) + td_np + c_cam
        if not (np.all(np.isfinite(R_new)) and np.all(np.isfinite(t_new))) or (R_new @ self.centers[i] + t_new)[2] <= 0:
            R_new, t_new = self.R_cur[i].copy(), self.t_cur[i].copy()
        self.R_trial[i], self.t_trial[i] = R_new, t_new

    def _render_scenes(self, scenes: list[tuple[_View, np.ndarray, np.ndarray]]) -> Any:
        """Render ``B`` crops in one call: each ``(view, R (N, 3, 3), t (N, 3))``, the view's hidden objects put
        behind the camera (where nothing draws them)."""
        Rs = np.stack([R for _, R, _ in scenes])
        ts = np.stack([t for _, _, t in scenes])
        for b, (view, _, _) in enumerate(scenes):
            if view.hidden:
                Rs[b, view.hidden] = np.eye(3)
                ts[b, view.hidden] = _HIDDEN
        with self.timer("render"):
            return self.renderer.render(
                self.drawn,
                Pose(torch.as_tensor(Rs), torch.as_tensor(ts)),
                [view.camera for view, _, _ in scenes],
                lighting=self.cfg.lighting,
            )

    def _safe_evaluate(self, view: _View, out: Any, b: int, R: np.ndarray, t: np.ndarray) -> _Eval | None:
        """:meth:`_evaluate`, with a numerical breakdown on a degenerate render turned into a failure reason of
        the object (a refinement never raises); ``None`` when the object is not visible or broke down."""
        try:
            return self._evaluate(view, out, b, R, t, False)
        except (cv2.error, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            self.failure[view.index] = f"numerical breakdown in the image terms: {exc}"
            return None

    def _score_round(self, views: dict[int, _View]) -> None:
        """Score every object at its best pose, the others at theirs."""
        todo = [view for i, view in views.items() if self.failure[i] is None]
        if not todo:
            return
        out = self._render_scenes([(view, self.R_best, self.t_best) for view in todo])
        with self.timer("terms"):
            for b, view in enumerate(todo):
                i = view.index
                try:
                    ev = self._evaluate(view, out, b, self.R_best[i], self.t_best[i], True)
                except (cv2.error, ValueError, FloatingPointError, np.linalg.LinAlgError):
                    ev = None
                self.score[i] = 0.0 if ev is None else ev.score

    def _round(
        self,
        views: dict[int, _View],
        extra: dict[int, list[tuple[np.ndarray, np.ndarray]]],
        settled: set[int] | frozenset[int] = frozenset(),
    ) -> None:
        """Render the crops of the active, unsettled objects at their trial poses — or at the candidate poses
        ``extra`` lists for them, the first of which fits the colour models at a new level — and update the
        state."""
        cfg = self.cfg
        scenes: list[tuple[_View, np.ndarray, np.ndarray]] = []
        owners: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, view in views.items():
            if self.failure[i] is not None or i in settled:
                continue
            for Rc, tc in extra.get(i, [(self.R_trial[i], self.t_trial[i])]):
                R, t = self.R_trial.copy(), self.t_trial.copy()
                R[i], t[i] = Rc, tc
                scenes.append((view, R, t))
                owners.append((i, Rc.copy(), tc.copy()))
        if not scenes:
            return
        out = self._render_scenes(scenes)
        with self.timer("terms"):
            evals = [
                self._safe_evaluate(view, out, b, R[view.index], t[view.index]) for b, (view, R, t) in enumerate(scenes)
            ]
        for i in views:
            if self.failure[i] is not None or i in settled:
                continue
            mine = [(ev, Rc, tc) for ev, (j, Rc, tc) in zip(evals, owners, strict=True) if j == i and ev is not None]
            if not mine:
                if not np.isfinite(self.E_best[i]):
                    self.failure[i] = "object not visible in its crop (outside the image or hidden by other objects)"
                else:  # the trial left the view: step again from the best pose, with more damping
                    self._restart_from_best(i)
                continue
            # Several candidates (level start): the best of them is where the level goes on from.
            ev, Rc, tc = min(mine, key=lambda m: m[0].energy)
            if ev.energy < self.E_best[i]:
                self.E_best[i] = ev.energy
                self.R_best[i], self.t_best[i] = Rc, tc
                self.eval_best[i] = ev
            if ev.energy <= self.E_best[i] + cfg.worse_tolerance * abs(self.E_best[i]):
                # Go on from here (Gauss–Newton from the newly rendered pose).
                self.R_cur[i], self.t_cur[i] = Rc, tc
                self.eval_cur[i] = ev
                self.lam[i] = max(self.lam[i] / 2.0, cfg.damping)
            else:  # clearly worse
                self._restart_from_best(i)

    def _restart_from_best(self, i: int) -> None:
        self.R_cur[i], self.t_cur[i] = self.R_best[i].copy(), self.t_best[i].copy()
        self.eval_cur[i] = self.eval_best[i]
        self.lam[i] = min(self.lam[i] * 4.0, 1e4)

    def execute(self, plan: list[tuple[int, int]], callback: Callable[[int, Pose], None] | None) -> RefineResult:
        cfg = self.cfg
        history = [_pose(self.R0, self.t0)]
        it = 0
        levels = plan if plan else [(len(cfg.crop_sizes) - 1, 0)]
        for li, (level, count) in enumerate(levels):
            last = li == len(levels) - 1
            with self.timer("crop"):
                views = {i: v for i in self._active() if (v := self._make_view(i, level)) is not None}
            # The energy changes with the level: rank the candidates afresh. The best pose of the previous level
            # (it comes first: the colour models are fitted at it) and, at the last level, the initial pose
            # compete with the pending trial.
            self.E_best[:] = np.inf
            extra: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
            for i in views:
                cands = [(self.R_best[i].copy(), self.t_best[i].copy())]
                if not (
                    np.array_equal(self.R_best[i], self.R_trial[i]) and np.array_equal(self.t_best[i], self.t_trial[i])
                ):
                    cands.append((self.R_trial[i].copy(), self.t_trial[i].copy()))
                if last and li > 0:
                    cands.append((self.R0[i].copy(), self.t0[i].copy()))
                extra[i] = cands
            settled: set[int] = set()  # converged at this level: no more renders of their crops
            for k in range(count):
                self._round(views, extra if k == 0 else {}, settled)
                with self.timer("solve"):
                    for i in views:
                        if self.failure[i] is None and i not in settled:
                            self._step(i)
                            if k > 0 and self.converged[i]:
                                settled.add(i)
                self.energy_log.append(self.E_best.tolist())
                it += 1
                current = _pose(self.R_trial, self.t_trial)
                history.append(current)
                if callback is not None:
                    callback(it, current)
                if k > 0 and all(self.converged[i] for i in views if self.failure[i] is None):
                    break
            if last:  # evaluate the last step (without iterations: the initial pose), then score the best poses
                self._round(views, extra if count == 0 else {})
                self._score_round(views)
        for i in range(self.n):
            if self.failure[i] is not None:
                self.score[i] = 0.0
                self.converged[i] = False
                if not np.isfinite(self.E_best[i]):
                    self.R_best[i], self.t_best[i] = self.R0[i], self.t0[i]
        return make_result(
            history,
            self.score,
            timer=self.timer,
            converged=self.converged,
            failure=self.failure,
            extra={"energy": np.array(self.energy_log), "levels": [lv for lv, _ in plan]},
            pose=_pose(self.R_best, self.t_best),
        )


# ----------------------------------------------------------------------------------------------------------
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_HIDDEN = np.array([0.0, 0.0, -1000.0])  # a translation that puts an object behind the camera


def _pose(R: np.ndarray, t: np.ndarray) -> Pose:
    return Pose(torch.as_tensor(np.array(R, dtype=np.float64)), torch.as_tensor(np.array(t, dtype=np.float64)))


def _consensus_weights(
    J: np.ndarray, offset: np.ndarray, variance: np.ndarray, damping: np.ndarray, c: float, rounds: int = 3
) -> np.ndarray:
    """Cauchy weights of correspondence lines by their agreement with the rigid motion that best explains them.

    Lines that no rigid motion explains together with the others — an occluded stretch of contour, a patch of
    background with the object's colours — get small weights (iteratively reweighted least squares with a
    robust, MAD-based scale).

    Args:
        J: ``(L, 6)`` normal motion of each line's contour point per unit increment.
        offset: ``(L,)`` observed offsets, pixels.
        variance: ``(L,)`` their variances, pixels².
        damping: ``(6, 6)`` regulariser of the motion fit.
        c: Cauchy width in robust standard deviations.
        rounds: reweighting rounds.

    Returns:
        ``(L,)`` weights in (0, 1].
    """
    w = np.ones(len(offset))
    inv = 1.0 / variance
    for _ in range(rounds):
        wi = w * inv
        A = (J * wi[:, None]).T @ J + damping
        try:
            delta = np.linalg.solve(A, (J * wi[:, None]).T @ offset)
        except np.linalg.LinAlgError:
            break
        e = (J @ delta - offset) * np.sqrt(inv)
        scale = max(1.4826 * float(np.median(np.abs(e))), 1.0)
        w = 1.0 / (1.0 + (e / (c * scale)) ** 2)
    return w


def _rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation matrix (radians)."""
    return cv2.Rodrigues(np.asarray(R, dtype=np.float64))[0].reshape(3)


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _inside_image(A: np.ndarray, camera: Camera, size: int) -> np.ndarray:
    """``(size, size)`` bool: crop pixels whose centre maps inside the source image (``A`` source → crop)."""
    M, b = A[:, :2], A[:, 2]
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="xy"), -1).reshape(-1, 2).astype(np.float64)
    src = (grid - b) @ np.linalg.inv(M).T
    ok = (
        (src[:, 0] >= -0.5)
        & (src[:, 0] <= camera.width - 0.5)
        & (src[:, 1] >= -0.5)
        & (src[:, 1] <= camera.height - 0.5)
    )
    return ok.reshape(size, size)
