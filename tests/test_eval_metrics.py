"""Tests of meshpose.eval.metrics: hand-computed cases and plain loop references on random inputs."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

from meshpose.eval import metrics as M
from meshpose.eval import pose_errors

# ----------------------------------------------------------------------------------------------------------
# Helpers and plain references (loops, written from the definitions)
# ----------------------------------------------------------------------------------------------------------
K_VGA = np.array([[500.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def homog(R: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    if t is not None:
        T[:3, 3] = t
    return T


def transform(R: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.array([R @ x + t for x in p])


def project(K: np.ndarray, x: np.ndarray) -> np.ndarray:
    h = K @ x
    return h[:2] / h[2]


def ref_add(Re, te, Rg, tg, pts) -> float:
    return float(np.mean([np.linalg.norm((Re @ p + te) - (Rg @ p + tg)) for p in pts]))


def ref_adds(Re, te, Rg, tg, pts) -> float:
    est = transform(Re, te, pts)
    total = 0.0
    for p in pts:
        g = Rg @ p + tg
        total += min(np.linalg.norm(g - e) for e in est)
    return total / len(pts)


def ref_mssd(Re, te, Rg, tg, pts, syms) -> float:
    best = math.inf
    for S in syms:
        R_s, t_s = Rg @ S[:3, :3], Rg @ S[:3, 3] + tg
        worst = max(np.linalg.norm((Re @ p + te) - (R_s @ p + t_s)) for p in pts)
        best = min(best, worst)
    return best


def ref_mspd(Re, te, Rg, tg, K, pts, syms) -> float:
    best = math.inf
    for S in syms:
        R_s, t_s = Rg @ S[:3, :3], Rg @ S[:3, 3] + tg
        worst = max(np.linalg.norm(project(K, Re @ p + te) - project(K, R_s @ p + t_s)) for p in pts)
        best = min(best, worst)
    return best


def ref_re(Re, Rg) -> float:
    c = 0.5 * (np.trace(Re @ np.linalg.inv(Rg)) - 1.0)
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def ref_vsd(d_est, d_gt, d_test, K, delta, taus, diameter, cost_type="step"):
    """Pixel loop of the BOP definition: bop19 visibility, the estimate's extended by the GT's."""
    h, w = d_gt.shape

    def dist(d, u, v):
        x = (u - K[0, 2]) / K[0, 0] * d
        y = (v - K[1, 2]) / K[1, 1] * d
        return math.sqrt(x * x + y * y + d * d)

    union = inter = 0
    dists = []
    for v in range(h):
        for u in range(w):
            g, e, s = dist(d_gt[v, u], u, v), dist(d_est[v, u], u, v), dist(d_test[v, u], u, v)
            vis_g = g > 0 and (g - s <= delta or s == 0)
            vis_e = e > 0 and (e - s <= delta or s == 0 or vis_g)
            if vis_g or vis_e:
                union += 1
            if vis_g and vis_e:
                inter += 1
                dists.append(abs(g - e) / diameter)
    if union == 0:
        return [1.0] * len(taus)
    out = []
    for tau in taus:
        if cost_type == "step":
            cost = sum(1.0 for d in dists if d >= tau)
        else:
            cost = sum(min(1.0, d / tau) for d in dists)
        out.append((cost + union - inter) / union)
    return out


def random_poses(rng: np.random.Generator, n: int, noise_deg: float = 20.0):
    Rg = Rotation.random(n, random_state=rng).as_matrix()
    tg = rng.uniform([-0.1, -0.1, 0.6], [0.1, 0.1, 1.2], size=(n, 3))
    dR = Rotation.from_rotvec(rng.normal(size=(n, 3)) * math.radians(noise_deg)).as_matrix()
    Re = dR @ Rg
    te = tg + rng.normal(size=(n, 3)) * 0.02
    return Re, te, Rg, tg


def random_symmetries(rng: np.random.Generator, s: int) -> np.ndarray:
    syms = [np.eye(4)]
    for _ in range(s - 1):
        syms.append(homog(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3) * 0.01))
    return np.stack(syms)


# ----------------------------------------------------------------------------------------------------------
# ADD / ADD-S
# ----------------------------------------------------------------------------------------------------------
def test_add_pure_translation_is_its_norm():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 3)) * 0.05
    R = Rotation.random(random_state=1).as_matrix()
    t = np.array([0.01, -0.02, 0.8])
    shift = np.array([0.003, 0.004, 0.012])  # norm 0.013
    assert M.add(R, t + shift, R, t, pts) == pytest.approx(0.013, abs=1e-15)
    # ADD-S of a pure translation is at most the translation
    assert M.adds(R, t + shift, R, t, pts) <= 0.013 + 1e-15


def test_adds_of_symmetric_set_under_its_symmetry_is_zero():
    # a regular hexagon in the xy-plane plus two points on the axis: symmetric under 60° turns about z
    ring = np.array([[math.cos(a), math.sin(a), 0.0] for a in np.radians(np.arange(0, 360, 60))]) * 0.05
    pts = np.vstack([ring, [[0.0, 0.0, 0.02], [0.0, 0.0, -0.02]]])
    Rg = Rotation.random(random_state=3).as_matrix()
    t = np.array([0.0, 0.0, 0.7])
    Re = Rg @ rot_z(60.0)
    assert M.adds(Re, t, Rg, t, pts) == pytest.approx(0.0, abs=1e-12)
    assert M.add(Re, t, Rg, t, pts) > 0.03  # ADD sees the turn (ring points move by 0.05)
    assert M.add_or_adds(Re, t, Rg, t, pts, symmetric=True) == pytest.approx(0.0, abs=1e-12)
    assert M.add_or_adds(Re, t, Rg, t, pts, symmetric=False) == pytest.approx(M.add(Re, t, Rg, t, pts))


def test_add_adds_against_reference():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(40, 3)) * 0.05
    Re, te, Rg, tg = random_poses(rng, 6)
    got_add = M.add(Re, te, Rg, tg, pts)
    got_adds = M.adds(Re, te, Rg, tg, pts)
    assert got_add.shape == got_adds.shape == (6,)
    for i in range(6):
        assert got_add[i] == pytest.approx(ref_add(Re[i], te[i], Rg[i], tg[i], pts), rel=1e-12)
        assert got_adds[i] == pytest.approx(ref_adds(Re[i], te[i], Rg[i], tg[i], pts), rel=1e-12)
    assert np.all(got_adds <= got_add + 1e-15)


def test_adds_large_batch_is_exact_and_fast():
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(2000, 3)) * np.array([0.05, 0.03, 0.02])
    Re, te, Rg, tg = random_poses(rng, 400, noise_deg=10.0)
    start = time.perf_counter()
    got = M.adds(Re, te, Rg, tg, pts)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0
    for i in (0, 123, 399):  # brute force on a few
        est = pts @ Re[i].T + te[i]
        gt = pts @ Rg[i].T + tg[i]
        assert got[i] == pytest.approx(cdist(gt, est).min(axis=1).mean(), rel=1e-12)


def test_broadcasting_of_batches():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(30, 3)) * 0.05
    Re = Rotation.random(12, random_state=5).as_matrix().reshape(3, 4, 3, 3)
    te = np.array([0.0, 0.0, 1.0])
    Rg, tg = np.eye(3), np.array([0.01, 0.0, 1.0])
    for fn in (M.add, M.adds, M.mssd):
        out = fn(Re, te, Rg, tg, pts)
        assert out.shape == (3, 4)
        assert out[2, 1] == pytest.approx(float(fn(Re[2, 1], te, Rg, tg, pts)), rel=1e-12)
    out = M.mspd(Re, te, Rg, tg, K_VGA, pts)
    assert out.shape == (3, 4)
    assert M.re(Re, Rg).shape == (3, 4)
    assert M.add(np.eye(3), te, Rg, tg, pts).shape == ()
    with pytest.raises(ValueError, match="broadcast"):
        M.add(Re, te, np.stack([np.eye(3)] * 5), tg, pts)
    with pytest.raises(ValueError, match="points"):
        M.add(np.eye(3), te, Rg, tg, np.zeros((0, 3)))


# ----------------------------------------------------------------------------------------------------------
# MSSD / MSPD / RE / TE
# ----------------------------------------------------------------------------------------------------------
CROSS = np.array([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0], [0.0, 0.05, 0.0], [0.0, -0.05, 0.0]])
CROSS_SYMS = np.stack([np.eye(4), homog(rot_z(180.0))])


def test_mssd_mspd_zero_under_a_symmetry():
    Rg = Rotation.random(random_state=6).as_matrix()
    tg = np.array([0.02, -0.01, 0.9])
    Re = Rg @ rot_z(180.0)
    assert M.mssd(Re, tg, Rg, tg, CROSS, CROSS_SYMS) == pytest.approx(0.0, abs=1e-12)
    assert M.mspd(Re, tg, Rg, tg, K_VGA, CROSS, CROSS_SYMS) == pytest.approx(0.0, abs=1e-9)
    # without the symmetry the half turn moves the 0.1 points by 0.2
    assert M.mssd(Re, tg, Rg, tg, CROSS) == pytest.approx(0.2, abs=1e-12)


def test_mssd_non_symmetric_rotation_hand_value():
    # a quarter turn about z maps (0.1, 0, 0) to (0, 0.1, 0): 0.1·√2 away, both for the identity and for the
    # half-turn symmetry; the 0.05 points move by 0.05·√2
    t = np.array([0.0, 0.0, 1.0])
    got = M.mssd(rot_z(90.0), t, np.eye(3), t, CROSS, CROSS_SYMS)
    assert got == pytest.approx(0.1 * math.sqrt(2.0), abs=1e-12)


def test_mspd_translation_along_optical_axis():
    pts = np.array([[0.1, 0.2, 0.0], [0.0, 0.0, 0.0]])
    # at z = 1 m the first point projects (50, 80) px off the principal point, at z = 2 m (25, 40) px;
    # the origin stays on the principal point
    got = M.mspd(np.eye(3), [0.0, 0.0, 2.0], np.eye(3), [0.0, 0.0, 1.0], K_VGA, pts)
    assert got == pytest.approx(math.hypot(25.0, 40.0), abs=1e-9)
    assert M.mspd(np.eye(3), [0.0, 0.0, 2.0], np.eye(3), [0.0, 0.0, 1.0], K_VGA, pts[1:]) == 0.0
    # a non-symmetric quarter turn of the cross at 1 m: (0.1,0,0)→(0,0.1,0): (-50, +40) px → √(50²+40²)
    t = np.array([0.0, 0.0, 1.0])
    got = M.mspd(rot_z(90.0), t, np.eye(3), t, K_VGA, CROSS, CROSS_SYMS)
    assert got == pytest.approx(math.hypot(50.0, 40.0), abs=1e-9)


def test_mssd_mspd_against_reference():
    rng = np.random.default_rng(7)
    pts = rng.normal(size=(25, 3)) * 0.05
    syms = random_symmetries(rng, 4)
    Re, te, Rg, tg = random_poses(rng, 5)
    Ks = np.stack([K_VGA * np.array([[s, 1, 1], [1, s, 1], [1, 1, 1]]) for s in (0.8, 1.0, 1.2, 1.5, 2.0)])
    got_mssd = M.mssd(Re, te, Rg, tg, pts, syms)
    got_mspd = M.mspd(Re, te, Rg, tg, K_VGA, pts, syms)
    got_mspd_k = M.mspd(Re, te, Rg, tg, Ks, pts, syms)
    for i in range(5):
        assert got_mssd[i] == pytest.approx(ref_mssd(Re[i], te[i], Rg[i], tg[i], pts, syms), rel=1e-12)
        assert got_mspd[i] == pytest.approx(ref_mspd(Re[i], te[i], Rg[i], tg[i], K_VGA, pts, syms), rel=1e-10)
        assert got_mspd_k[i] == pytest.approx(ref_mspd(Re[i], te[i], Rg[i], tg[i], Ks[i], pts, syms), rel=1e-10)
    # MSSD with the identity alone bounds ADD from above (max ≥ mean)
    assert np.all(M.mssd(Re, te, Rg, tg, pts) >= M.add(Re, te, Rg, tg, pts) - 1e-15)
    # K with extra batch dimensions broadcasts the poses
    assert M.mspd(Re[0], te[0], Rg[0], tg[0], Ks, pts, syms).shape == (5,)


def test_mssd_chunking_matches_unchunked(monkeypatch):
    rng = np.random.default_rng(8)
    pts = rng.normal(size=(50, 3)) * 0.05
    syms = random_symmetries(rng, 3)
    Re, te, Rg, tg = random_poses(rng, 9)
    whole = (
        M.mssd(Re, te, Rg, tg, pts, syms),
        M.mspd(Re, te, Rg, tg, K_VGA, pts, syms),
        M.add(Re, te, Rg, tg, pts),
    )
    monkeypatch.setattr(pose_errors, "_CHUNK_ELEMENTS", 500)  # a few poses per chunk (where the loops live)
    parts = (
        M.mssd(Re, te, Rg, tg, pts, syms),
        M.mspd(Re, te, Rg, tg, K_VGA, pts, syms),
        M.add(Re, te, Rg, tg, pts),
    )
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_re_te():
    assert M.re(rot_z(90.0), np.eye(3)) == pytest.approx(90.0, abs=1e-12)
    assert M.re(rot_z(180.0), np.eye(3)) == pytest.approx(180.0, abs=1e-12)
    assert M.re(np.eye(3), np.eye(3)) == 0.0
    rng = np.random.default_rng(9)
    Ra = Rotation.random(20, random_state=10).as_matrix()
    Rb = Rotation.random(20, random_state=11).as_matrix()
    got = M.re(Ra, Rb)
    for i in range(20):
        assert got[i] == pytest.approx(ref_re(Ra[i], Rb[i]), abs=1e-9)
    # small angles stay accurate (acos would lose half the digits)
    tiny = Rotation.from_rotvec([1e-7, 0.0, 0.0]).as_matrix()
    assert M.re(tiny, np.eye(3)) == pytest.approx(math.degrees(1e-7), rel=1e-9)
    t = rng.normal(size=(4, 3))
    np.testing.assert_allclose(M.te(t, t + np.array([0.03, 0.04, 0.0])), np.full(4, 0.05), rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# VSD
# ----------------------------------------------------------------------------------------------------------
K_TINY = np.array([[1000.0, 0.0, 1.5], [0.0, 1000.0, 1.5], [0.0, 0.0, 1.0]])


def test_vsd_identical_disjoint_empty():
    gt = np.zeros((6, 8))
    gt[1:4, 1:4] = 0.9
    taus = M.BOP_VSD_TAUS
    np.testing.assert_array_equal(M.vsd(gt, gt, gt, K_VGA, diameter=0.1), np.zeros(len(taus)))
    est = np.zeros_like(gt)
    est[1:4, 5:8] = 0.9
    np.testing.assert_array_equal(M.vsd(est, gt, gt, K_VGA, diameter=0.1), np.ones(len(taus)))
    empty = np.zeros_like(gt)
    np.testing.assert_array_equal(M.vsd(empty, empty, gt, K_VGA, diameter=0.1), np.ones(len(taus)))


def test_vsd_hand_made_4x4():
    # GT covers columns 0-1 at 1.0 m; the estimate covers column 1 (rows 0-1 at 1.0 m, rows 2-3 at 1.1 m) and
    # column 2 at 1.0 m. The scene: the object at columns 0-1, an occluder at 0.5 m on column 2 rows 0-1,
    # no depth on column 2 rows 2-3, background at 2 m on column 3.
    gt = np.zeros((4, 4))
    gt[:, 0:2] = 1.0
    est = np.zeros((4, 4))
    est[0:2, 1] = 1.0
    est[2:4, 1] = 1.1
    est[:, 2] = 1.0
    test = np.zeros((4, 4))
    test[:, 0:2] = 1.0
    test[0:2, 2] = 0.5
    test[:, 3] = 2.0
    # visib_gt = columns 0-1 (8 px). visib_est = column 1 (rows 2-3 only through the GT extension) + column 2
    # rows 2-3 (missing depth counts as visible) = 6 px; column 2 rows 0-1 are hidden by the occluder.
    # union 10, intersection 4 with distances 0, 0, 0.1, 0.1 m = 0.2 diameters.
    got = M.vsd(est, gt, test, K_TINY, delta=0.015, taus=[0.1, 0.3], diameter=0.5)
    np.testing.assert_allclose(got, [(2 + 6) / 10, (0 + 6) / 10], rtol=1e-12)
    got = M.vsd(est, gt, test, K_TINY, taus=[0.4], diameter=0.5, cost_type="tlinear")
    np.testing.assert_allclose(got, [(2 * 0.5 + 6) / 10], rtol=1e-5)
    # not normalised: taus in metres
    got = M.vsd(est, gt, test, K_TINY, taus=[0.05, 0.2], normalized_by_diameter=False)
    np.testing.assert_allclose(got, [0.8, 0.6], rtol=1e-12)


def test_vsd_against_reference_on_random_depths():
    rng = np.random.default_rng(12)
    K = np.array([[30.0, 0.0, 7.5], [0.0, 28.0, 5.5], [0.0, 0.0, 1.0]])  # short focal: rays matter
    for _ in range(5):
        gt = np.where(rng.random((12, 16)) < 0.6, rng.uniform(0.8, 1.0, (12, 16)), 0.0)
        est = np.where(rng.random((12, 16)) < 0.6, rng.uniform(0.8, 1.0, (12, 16)), 0.0)
        test = np.where(rng.random((12, 16)) < 0.8, rng.uniform(0.7, 1.1, (12, 16)), 0.0)
        taus = [0.05, 0.2, 0.5]
        for cost in ("step", "tlinear"):
            got = M.vsd(est, gt, test, K, delta=0.02, taus=taus, diameter=0.3, cost_type=cost)
            want = ref_vsd(est, gt, test, K, 0.02, taus, 0.3, cost)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_vsd_uses_ray_distance_and_rejects_bad_input():
    K = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    d = np.zeros((2, 2))
    d[1, 1] = 2.0
    assert M.depth_to_distance(d, K)[1, 1] == pytest.approx(2.0 * math.sqrt(3.0))
    assert M.depth_to_distance(d, K)[0, 0] == 0.0
    with pytest.raises(ValueError, match="diameter"):
        M.vsd(d, d, d, K)
    with pytest.raises(ValueError, match="shape"):
        M.vsd(d, np.zeros((3, 2)), d, K, diameter=1.0)
    # NaN test depth reads as missing: the object then counts as visible
    test = np.full((2, 2), np.nan)
    np.testing.assert_array_equal(M.vsd(d, d, test, K, diameter=1.0, taus=[0.1]), [0.0])


def test_sphere_projections_overlap():
    t = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    u = np.array([[0.05, 0.0, 1.0], [0.5, 0.0, 1.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(M.sphere_projections_overlap(t, u, 0.05), [True, False, False])


# ----------------------------------------------------------------------------------------------------------
# Thresholds, recall, AUC
# ----------------------------------------------------------------------------------------------------------
def test_bop_constants_and_threshold_helpers():
    np.testing.assert_allclose(M.BOP_MSSD_THRESHOLDS, np.arange(1, 11) * 0.05)
    np.testing.assert_allclose(M.BOP_VSD_TAUS, np.arange(1, 11) * 0.05)
    np.testing.assert_allclose(M.BOP_VSD_THRESHOLDS, np.arange(1, 11) * 0.05)
    np.testing.assert_allclose(M.BOP_MSPD_THRESHOLDS, np.arange(1, 11) * 5.0)
    assert M.BOP_VSD_DELTA == 0.015
    np.testing.assert_allclose(M.mssd_thresholds(0.2), np.arange(1, 11) * 0.01)
    np.testing.assert_allclose(M.mspd_thresholds(1280), np.arange(1, 11) * 10.0)


def test_recall_and_average_recall():
    errors = [0.01, 0.05, np.inf, 0.03, np.nan]
    # strictly below: the 0.05 error does not count at the 0.05 threshold
    np.testing.assert_allclose(M.recall(errors, [0.02, 0.05, 0.06, 1.0]), [0.2, 0.4, 0.6, 0.6])
    assert M.average_recall(errors, [0.02, 0.05, 0.06, 1.0]) == pytest.approx(0.45)
    assert M.recall([], [0.1, 0.2]).tolist() == [0.0, 0.0]
    # VSD-shaped errors (G, taus): recall per (threshold, tau); AR averages everything
    vsd_errors = np.array([[0.1, 0.3], [0.2, 0.6]])
    r = M.recall(vsd_errors, [0.25, 0.5])
    np.testing.assert_allclose(r, [[1.0, 0.0], [1.0, 0.5]])
    assert M.average_recall(vsd_errors, [0.25, 0.5]) == pytest.approx(0.625)
    assert M.bop_average_recall(0.3, 0.6, 0.9) == pytest.approx(0.6)


def test_add_s_recall():
    assert M.add_s_recall([0.005, 0.0099, 0.0101, 0.02, np.inf], 0.1) == pytest.approx(0.4)
    assert M.add_s_recall([0.005, 0.015], [0.1, 0.2]) == pytest.approx(1.0)
    assert M.add_s_recall([0.005, 0.015], [0.1, 0.2], frac=0.05) == pytest.approx(0.5)
    assert M.add_s_recall([], 0.1) == 0.0


def ref_vocap(errors: list[float], max_d: float = 0.1) -> float:
    """The YCB-Video toolbox's VOCap written out in plain Python (MATLAB indices made 0-based)."""
    d = sorted(math.inf if (math.isnan(e) or e > max_d) else e for e in errors)
    n = len(d)
    acc = [(k + 1) / n for k in range(n)]
    rec = [x for x in d if math.isfinite(x)]
    prec = acc[: len(rec)]
    if not rec:
        return 0.0
    mrec = [0.0, *rec, max_d]
    mpre = [0.0, *prec, prec[-1]]
    for i in range(1, len(mpre)):
        mpre[i] = max(mpre[i], mpre[i - 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]) / max_d


def test_adds_auc_hand_values():
    # accuracy 1/4 on (0, 0.02], 2/4 on (0.02, 0.1]: area 0.02/4 + 0.08/2 = 0.045, i.e. 0.45 of 0.1
    assert M.adds_auc([0.02, 0.05, np.inf, 0.2]) == pytest.approx(0.45, abs=1e-12)
    # the exact step integral: mean of (1 - e / 0.1)^+ = (0.8 + 0.5) / 4
    assert M.adds_auc([0.02, 0.05, np.inf, 0.2], method="exact") == pytest.approx(0.325, abs=1e-12)
    # repeated errors: (0, 0.02] carries 1/3 (first occurrence), then 1 up to 0.1
    assert M.adds_auc([0.02, 0.02, 0.06]) == pytest.approx((0.02 / 3 + 0.08) / 0.1, abs=1e-12)
    assert M.adds_auc([0.0, 0.0]) == pytest.approx(1.0)
    assert M.adds_auc([np.inf, 0.5]) == 0.0
    assert M.adds_auc([]) == 0.0
    assert M.adds_auc([0.05], max_threshold_m=0.2) == pytest.approx(1.0)  # right endpoint: 1 from 0 on


def test_adds_auc_against_vocap_and_integral():
    rng = np.random.default_rng(13)
    for n in (1, 7, 50):
        e = rng.exponential(0.04, size=n)
        e[rng.random(n) < 0.1] = np.inf
        e[:2] = np.round(e[:2], 2)
        assert M.adds_auc(e) == pytest.approx(ref_vocap(list(e)), abs=1e-12)
        grid = np.linspace(0.0, 0.1, 200001)
        acc = (e[None, :] <= grid[:, None]).mean(axis=1)
        assert M.adds_auc(e, method="exact") == pytest.approx(np.trapezoid(acc, grid) / 0.1, abs=1e-4)
