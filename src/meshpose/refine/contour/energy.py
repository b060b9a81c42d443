"""The image terms of ``contour`` on one rendering: energies, Gauss–Newton normal equations and the score.

Increments are centred left increments ``δ = [v, ω]`` (metres, radians) about the object's centre (see
:mod:`meshpose.refine.contour.terms`); pixels are crop pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from meshpose.refine.contour.config import ContourConfig
from meshpose.refine.contour.level import LevelView
from meshpose.refine.contour.terms import (
    ColorModel,
    contour_lines,
    motion_jacobian,
    neighbourhood_min_distance,
    region_energy,
    rgb_to_lab,
)

__all__ = ["Evaluation", "PosePrior", "PriorOptions", "color_term", "consensus_weights", "evaluate", "fit_posterior"]

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass
class Evaluation:
    """One object's image terms at one rendered pose.

    Args:
        energy: the fixed energy used to rank poses (lower is better).
        hessian: ``(6, 6)`` Gauss–Newton normal matrix.
        metric: ``(6, 6)`` mean squared pixel motion of the visible surface (the damping metric).
        gradient: ``(6,)`` gradient (step: ``-(H + damping)⁻¹ g``).
        score: the score in [0, 1] (0 unless asked for).
        lines: correspondence lines used.
    """

    energy: float
    hessian: np.ndarray
    metric: np.ndarray
    gradient: np.ndarray
    score: float
    lines: int


class PriorOptions(Protocol):
    """The prior's options (fields of :class:`ContourConfig` and of ``abstract``'s config)."""

    @property
    def prior_trans(self) -> float: ...

    @property
    def prior_rot_deg(self) -> float: ...

    @property
    def prior_weight(self) -> float: ...


@dataclass(frozen=True, eq=False)
class PosePrior:
    """The Gaussian prior on an object's departure from its initial pose (MAP estimation).

    Args:
        R0: ``(3, 3)`` initial rotation.
        t0: ``(3,)`` initial translation, metres.
        center: ``(3,)`` object-frame centre whose displacement is measured, metres.
        diameter: the object's diameter, metres.
    """

    R0: np.ndarray
    t0: np.ndarray
    center: np.ndarray
    diameter: float

    def terms(self, cfg: PriorOptions, R: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """The prior's energy at ``(R, t)`` and its normal equations ``(E, H (6, 6), g (6,))``.

        The departure is the camera-frame displacement of the object's centre and the rotation vector of
        ``R R₀ᵀ``; a centred increment ``δ = [v, ω]`` changes them by ``v`` and (to first order) ``ω``.
        """
        c = self.center
        dt = (R @ c + t) - (self.R0 @ c + self.t0)
        dw = rotvec(R @ self.R0.T)
        st = cfg.prior_trans * self.diameter
        sr = math.radians(cfg.prior_rot_deg)
        prec = cfg.prior_weight * np.concatenate([np.full(3, 1.0 / st**2), np.full(3, 1.0 / sr**2)])
        x = np.concatenate([dt, dw])
        return 0.5 * float(prec @ (x * x)), np.diag(prec), prec * x


def evaluate(
    cfg: ContourConfig,
    view: LevelView,
    out: Any,
    b: int,
    R: np.ndarray,
    t: np.ndarray,
    prior: PosePrior,
    with_score: bool,
) -> Evaluation | None:
    """Ranking energy, Gauss–Newton normal equations and score of ``view.index`` in scene ``b`` of a render.

    Args:
        cfg: the options.
        view: the object's crop at this level (its colour posterior is fitted on the first evaluation).
        out: the batched rendering (``rgb``, ``xyz``, ``instance`` of ``(B, s, s, …)``).
        b: which scene of ``out``.
        R: ``(3, 3)`` rotation of the object's rendered pose.
        t: ``(3,)`` translation of it, metres.
        prior: the prior on the departure from the initial pose.
        with_score: also compute the score in [0, 1].

    Returns:
        The evaluation, or ``None`` when the object has fewer than ``min_visible_px`` visible pixels.
    """
    inst_full = out.instance[b]
    own_full = inst_full == view.index + 1
    if int(np.count_nonzero(own_full & view.valid)) < cfg.min_visible_px:
        return None
    if view.posterior is None:  # first evaluation at this level: fit the colour models
        view.posterior = fit_posterior(cfg, view, own_full)
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
            wl = wl * consensus_weights(Jn, lines.offset, lines.variance, 0.5 * metric, cfg.line_robust)
        Hl = (Jn * wl[:, None]).T @ Jn
        gl = -(Jn * wl[:, None]).T @ lines.offset
        H += Hl
        g += gl

    E_reg, agree = region_energy(own, known, post, float(view.line_length), cfg.step_slope)
    E = cfg.region_weight * E_reg  # the lines' term has no fixed energy: rank with the region energy
    color_frac = 1.0
    if cfg.color_weight > 0 or with_score:
        Ec, Hc, gc, color_frac = color_term(
            cfg, view.lab[win], out.rgb[b][win], own, valid, view.color_sigma, jac_at, with_score
        )
        E += cfg.color_weight * Ec
        H += cfg.color_weight * Hc
        g += cfg.color_weight * gc
    if cfg.prior_weight > 0:
        Ep, Hp, gp = prior.terms(cfg, R, t)
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
    return Evaluation(energy=E, hessian=H, metric=metric, gradient=g, score=score, lines=n_lines)


def fit_posterior(cfg: ContourConfig, view: LevelView, own: np.ndarray) -> np.ndarray:
    """``(s, s)`` float32 foreground posterior of the crop from colour histograms of the silhouette (or the
    observed mask) against a band around it; blended with the mask when there is one."""
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


def color_term(
    cfg: ContourConfig,
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


def consensus_weights(
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


def rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation matrix (radians)."""
    return cv2.Rodrigues(np.asarray(R, dtype=np.float64))[0].reshape(3)


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
