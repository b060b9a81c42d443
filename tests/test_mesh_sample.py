"""Surface sampling, exact diameters, surface colours."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.spatial.distance import pdist

from meshpose.mesh import mesh_diameter, sample_surface_points, surface_colors, textured_box
from meshpose.mesh.sample import sample_texture


# ------------------------------------------------------------------------------------------------------
# Diameter
# ------------------------------------------------------------------------------------------------------
def test_diameter_of_a_box_is_its_space_diagonal() -> None:
    box = trimesh.creation.box((0.1, 0.2, 0.3))
    assert mesh_diameter(box) == pytest.approx(np.sqrt(0.01 + 0.04 + 0.09), abs=1e-12)


def test_diameter_of_a_sphere_is_twice_its_radius() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.07)  # vertices lie on the sphere
    assert mesh_diameter(sphere) == pytest.approx(0.14, abs=1e-12)
    assert mesh_diameter(sphere) == pytest.approx(pdist(sphere.vertices).max(), abs=1e-15)


def test_diameter_ignores_unreferenced_vertices() -> None:
    box = trimesh.creation.box((0.1, 0.1, 0.1))
    junk = trimesh.Trimesh(np.vstack([box.vertices, [[10.0, 0.0, 0.0]]]), box.faces, process=False)
    assert mesh_diameter(junk) == pytest.approx(np.sqrt(0.03), abs=1e-12)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (np.zeros((1, 3)), 0.0),
        (np.zeros((5, 3)), 0.0),
        (np.outer(np.linspace(-1, 2, 50), [1.0, 2.0, 2.0]), 9.0),  # collinear
        (np.c_[np.random.default_rng(0).random((200, 2)), np.zeros(200)], None),  # coplanar
        (np.array([[0, 0, 0], [3, 4, 0.0]]), 5.0),
    ],
)
def test_diameter_of_degenerate_point_sets(points: np.ndarray, expected: float | None) -> None:
    want = pdist(points).max() if expected is None else expected
    assert mesh_diameter(points) == pytest.approx(want, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 300),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 0.1, 1.0]),
    flat=st.sampled_from([None, 0, 1, 2]),
)
def test_diameter_matches_brute_force(n: int, seed: int, scale: float, flat: int | None) -> None:
    points = np.random.default_rng(seed).normal(size=(n, 3)) * scale
    if flat is not None:
        points[:, flat] = 0.5 * scale
    assert mesh_diameter(points) == pytest.approx(pdist(points).max(), rel=1e-12, abs=1e-15)


def test_diameter_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        mesh_diameter(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        mesh_diameter(np.array([[0.0, 0.0, np.nan], [1.0, 0.0, 0.0]]))


def _shape(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    g = rng.normal(size=(n, 3))
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    shapes = {
        "sphere": lambda: u * 0.1,
        "rough sphere": lambda: u * (0.1 + 1e-5 * rng.random((n, 1))),
        "ellipsoid": lambda: u * [0.1, 0.09, 0.08],
        "near sphere ellipsoid": lambda: u * [0.1, 0.0999, 0.0998],
        "hemisphere": lambda: np.c_[u[:, :2], np.abs(u[:, 2:])],
        "cube": lambda: rng.random((n, 3)),
        "ball": lambda: u * rng.random((n, 1)) ** (1 / 3),
        "disc rim": lambda: np.c_[u[:, :2] / np.linalg.norm(u[:, :2], axis=1, keepdims=True), np.zeros(n)],
        "segment": lambda: np.outer(rng.random(n), [1.0, 2.0, 3.0]),
        "two clusters": lambda: np.concatenate([g[: n // 2] * 1e-3, g[n // 2 :] * 1e-3 + 1.0]),
        "far from origin": lambda: u * 0.1 + [100.0, -50.0, 3.0],
    }
    rotation = trimesh.transformations.random_rotation_matrix(rng.random(3))[:3, :3]
    return np.asarray(shapes[name]() @ rotation.T, dtype=np.float64)


SHAPES = [
    "sphere",
    "rough sphere",
    "ellipsoid",
    "near sphere ellipsoid",
    "hemisphere",
    "cube",
    "ball",
    "disc rim",
    "segment",
    "two clusters",
    "far from origin",
]


@pytest.mark.parametrize("name", SHAPES)
def test_diameter_of_larger_sets_matches_brute_force(name: str) -> None:
    # above the all-pairs size: the pruned searches (caps or balls) must still be exact
    points = _shape(name, 3000, np.random.default_rng(7))
    assert mesh_diameter(points) == pytest.approx(pdist(points).max(), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", SHAPES)
def test_diameter_search_strategies_and_fallback(name: str, monkeypatch, caplog) -> None:
    from meshpose.mesh import diameter

    points = _shape(name, 2500, np.random.default_rng(3))
    exact = pdist(points).max()
    monkeypatch.setattr(diameter, "_EASY_BALL_PAIRS_PER_POINT", 0)  # compare caps and balls, take the cheaper
    assert mesh_diameter(points) == pytest.approx(exact, rel=1e-12, abs=1e-15)
    monkeypatch.setattr(diameter, "MAX_EXACT_PAIRS", 0)  # over the limit: the stated bound, with a warning
    bound = mesh_diameter(points)
    theta = diameter._pruning_directions(diameter._FALLBACK_LEVEL)[1]
    assert exact * np.cos(theta) * (1 - 1e-12) <= bound <= exact * (1 + 1e-12)
    assert 1 / np.cos(theta) - 1 < 1.2e-3  # as the docstring says
    for record in caplog.records:  # when the limit applied (not for sets the ball filter makes small)
        assert "lower bound within a relative" in record.getMessage()


def test_diameter_of_a_huge_sphere_mesh_is_fast() -> None:
    # issue 16: a 1.3 M-face mesh whose vertices all lie on the convex hull took quadratic time
    import time

    sphere = trimesh.creation.icosphere(subdivisions=8, radius=0.07)
    assert len(sphere.faces) > 1_300_000
    rotation = trimesh.transformations.random_rotation_matrix(np.random.default_rng(0).random(3))
    sphere.apply_transform(rotation)
    sphere.apply_translation([0.2, -0.1, 0.5])
    start = time.perf_counter()
    d = mesh_diameter(sphere)
    elapsed = time.perf_counter() - start
    assert d == pytest.approx(0.14, abs=1e-12)  # the icosphere holds antipodal vertex pairs
    assert elapsed < 30.0  # about 2-4 s on one core; generous for a loaded test machine


# ------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------
def test_sampling_is_deterministic_and_seeded() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    a = sample_surface_points(mesh, 500, seed=3)
    b = sample_surface_points(mesh, 500, seed=3)
    c = sample_surface_points(mesh, 500, seed=4)
    assert a.shape == (500, 3) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_samples_lie_on_the_surface() -> None:
    mesh = trimesh.creation.torus(0.05, 0.015, major_sections=24, minor_sections=12)
    pts = sample_surface_points(mesh, 1000, seed=0)
    _, dist, _ = trimesh.proximity.closest_point(mesh, pts)
    assert dist.max() < 1e-12


def test_sampling_is_uniform_by_area() -> None:
    extents = np.array([0.1, 0.2, 0.3])
    box = trimesh.creation.box(extents)
    pts = sample_surface_points(box, 30_000, seed=0)
    # which pair of sides each point is on: the coordinate at ±extent/2
    on_side = np.isclose(np.abs(pts), extents / 2, atol=1e-12)
    assert np.all(on_side.sum(axis=1) >= 1)
    side = np.argmax(on_side, axis=1)
    frac = np.bincount(side, minlength=3) / len(pts)
    areas = np.array([extents[1] * extents[2], extents[0] * extents[2], extents[0] * extents[1]])
    np.testing.assert_allclose(frac, areas / areas.sum(), atol=0.01)
    # within a side, uniform: the mean is the side's centre
    for k in range(3):
        sel = pts[side == k]
        np.testing.assert_allclose(sel.mean(axis=0)[[i for i in range(3) if i != k]], 0.0, atol=0.004)


def test_sampling_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        sample_surface_points(trimesh.creation.box(), 0)
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    with pytest.raises(ValueError, match="total area"):
        sample_surface_points(flat, 10)


# ------------------------------------------------------------------------------------------------------
# Surface colours
# ------------------------------------------------------------------------------------------------------
def test_surface_colors_interpolate_vertex_colours() -> None:
    mesh = trimesh.Trimesh(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0]],
        [[0, 1, 2]],
        vertex_colors=[[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]],
        process=False,
    )
    got = surface_colors(mesh, [[0.0, 0.0, 0.5], [0.5, 0.5, -1.0], [1 / 3, 1 / 3, 0.0]])
    np.testing.assert_allclose(got, [[1, 0, 0], [0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], atol=1e-9)


def test_surface_colors_read_face_colours() -> None:
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    box.visual.face_colors = np.repeat(np.array([[255, 0, 0, 255], [0, 0, 255, 255]]), 6, axis=0)
    got = surface_colors(box, box.triangles_center)
    np.testing.assert_allclose(got, box.visual.face_colors[:, :3] / 255.0)


def test_surface_colors_sample_the_texture() -> None:
    box = textured_box((0.1, 0.1, 0.1), seed=0, texture_px=32)
    # the centre of the +x side maps to the centre of the atlas's first tile (96×64 atlas, v up)
    got = surface_colors(box, [[0.05, 0.0, 0.0]])[0]
    image = np.asarray(box.visual.material.image, dtype=np.float64) / 255.0
    np.testing.assert_allclose(got, image[15:17, 15:17].mean(axis=(0, 1)), atol=1e-9)


def test_sample_texture_is_bilinear_v_up_and_wraps() -> None:
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    img[0, 0] = 255  # top-left texel is white: u≈0.25, v≈0.75
    got = sample_texture(Image.fromarray(img), [[0.25, 0.75], [0.75, 0.25], [0.5, 0.5], [1.25, -0.25]])
    np.testing.assert_allclose(got[:, 0], [1.0, 0.0, 0.25, 1.0])
