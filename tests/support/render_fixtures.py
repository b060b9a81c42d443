"""Shared helpers for the renderer tests: small procedural meshes, object models, poses and comparisons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from meshpose.render.base import Lighting, RenderOutput
from meshpose.types import Camera, ObjectModel, Pose


def make_object(mesh: trimesh.Trimesh, obj_id: int = 1) -> ObjectModel:
    """An :class:`ObjectModel` drawing ``mesh`` itself (metres)."""
    extent = np.ptp(np.asarray(mesh.vertices), axis=0)
    return ObjectModel(
        obj_id,
        mesh,
        render_mesh=mesh,
        diameter=float(np.linalg.norm(extent)),
        symmetries=np.eye(4)[None],
        points=np.asarray(mesh.vertices),
    )


def face_colored_box(extents: tuple[float, float, float] = (0.08, 0.06, 0.05)) -> trimesh.Trimesh:
    """A box whose six sides have six distinct flat colours."""
    mesh = trimesh.creation.box(extents)
    palette = np.array(
        [[230, 40, 40], [40, 200, 60], [50, 80, 230], [240, 220, 30], [200, 50, 210], [30, 210, 220]], np.uint8
    )
    side = np.argmax(np.abs(mesh.face_normals), axis=1) * 2 + (mesh.face_normals.max(axis=1) > 0.5)
    colors = np.concatenate([palette[side], np.full((len(mesh.faces), 1), 255, np.uint8)], axis=1)
    mesh.visual.face_colors = colors
    return mesh


def vertex_colored_sphere(radius: float = 0.04, subdivisions: int = 3) -> trimesh.Trimesh:
    """An icosphere whose vertex colours vary smoothly with position."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    unit = np.asarray(mesh.vertices) / radius
    rgb = np.clip((unit * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
    mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    return mesh


def torus(major: float = 0.04, minor: float = 0.015) -> trimesh.Trimesh:
    """A plain (uncoloured) torus: self-occluding, non-convex."""
    return trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=48, minor_sections=24)


def quadrant_texture(size: int = 16) -> np.ndarray:
    """``(size, size, 3)`` uint8 image: top-left red, top-right green, bottom-left blue, bottom-right white."""
    img = np.zeros((size, size, 3), np.uint8)
    h = size // 2
    img[:h, :h] = (255, 0, 0)
    img[:h, h:] = (0, 255, 0)
    img[h:, :h] = (0, 0, 255)
    img[h:, h:] = (255, 255, 255)
    return img


def textured_quad(half: float = 0.05, pbr: bool = False) -> trimesh.Trimesh:
    """A square in the object's z = 0 plane, normal +z, textured with :func:`quadrant_texture`.

    The image's top-left corner is at object ``(-half, +half)`` (uv ``(0, 1)``): seen from a camera on the +z
    side looking down -z with the object's +y pointing up in the image, the image appears upright.
    """
    vertices = np.array([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    image = Image.fromarray(quadrant_texture())
    if pbr:
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=image)
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    else:
        visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def pose(rotvec: tuple[float, float, float], t: tuple[float, float, float]) -> Pose:
    """A single ``cam_from_obj`` pose from a rotation vector (radians) and a translation (metres)."""
    return Pose(Rotation.from_rotvec(rotvec).as_matrix(), np.asarray(t, dtype=np.float64))


def random_poses(rng: np.random.Generator, n: int, distance: float = 0.4, spread: float = 0.03) -> Pose:
    """``(n,)`` poses with uniformly random rotations, about ``distance`` in front of the camera."""
    R = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
    t = np.column_stack([rng.uniform(-spread, spread, (n, 2)), rng.uniform(0.9, 1.1, n) * distance])
    return Pose(R, t)


def camera(width: int = 64, height: int = 48, f: float = 80.0) -> Camera:
    """A small camera with slightly unequal focal lengths and an off-centre principal point."""
    return Camera.from_fxfycxcy(f, f * 1.03, width / 2 - 0.3, height / 2 + 0.6, width=width, height=height)


def compare(a: RenderOutput, b: RenderOutput) -> dict[str, float]:
    """Agreement figures between two renders of the same scenes."""
    both = a.mask & b.mask
    same_instance = both & (a.instance == b.instance)
    cos = np.sum(a.normal * b.normal, axis=-1)
    return {
        "mask_agree": float(np.mean(a.mask == b.mask)),
        "instance_agree": float(np.mean(a.instance == b.instance)),
        "depth_max": float(np.abs(a.depth - b.depth)[same_instance].max(initial=0.0)),
        "xyz_max": float(np.abs(a.xyz - b.xyz)[same_instance].max(initial=0.0)),
        "normal_cos_median": float(np.median(cos[same_instance])) if same_instance.any() else 1.0,
        "normal_cos_p01": float(np.quantile(cos[same_instance], 0.01)) if same_instance.any() else 1.0,
        "rgb_median": float(np.median(np.abs(a.rgb - b.rgb)[same_instance])) if same_instance.any() else 0.0,
        "rgb_p99": float(np.quantile(np.abs(a.rgb - b.rgb).max(-1)[same_instance], 0.99))
        if same_instance.any()
        else 0.0,
        "covered": int(both.sum()),
    }


def open_box(extents: tuple[float, float, float] = (0.06, 0.05, 0.05)) -> trimesh.Trimesh:
    """A box without its +z side (an open container): from above, its inside (back faces) is visible."""
    box = trimesh.creation.box(extents)
    keep = box.face_normals[:, 2] < 0.5
    return trimesh.Trimesh(box.vertices, box.faces[keep], process=False)


def jittered(cam: Camera, du: float, dv: float) -> Camera:
    """``cam`` with the image shifted by ``(du, dv)`` pixels (pixel centres sample ``(u + du, v + dv)``)."""
    K = cam.K.copy()
    K[0, 2] -= du
    K[1, 2] -= dv
    return Camera(K, cam.width, cam.height)


def stable_pixels(
    reference: RenderOutput,
    render: Callable[[list[Camera]], RenderOutput],
    cams: list[Camera],
    jitter: float = 1 / 64,
    tol: float = 1e-3,
) -> np.ndarray:
    """``(B, H, W)`` pixels whose ray-cast surface does not change when the pixel centre moves by ``jitter``.

    A rasteriser snaps vertices to a sub-pixel grid (1/256 px for GL), so at a pixel centre that close to an
    occluding contour it may legitimately see the other surface; such pixels are left out of exact comparisons.

    Args:
        reference: the un-jittered reference render.
        render: renders the same scenes into the given cameras (one per scene).
        cams: the scenes' cameras.
        jitter: pixel offset tried in each of the four diagonal directions.
        tol: largest depth change (metres) still counted as the same surface.
    """
    stable = reference.mask.copy()
    for du, dv in [(jitter, jitter), (jitter, -jitter), (-jitter, jitter), (-jitter, -jitter)]:
        moved = render([jittered(c, du, dv) for c in cams])
        stable &= (moved.instance == reference.instance) & (np.abs(moved.depth - reference.depth) < tol)
    return stable


GOLDEN_PATH = Path(__file__).parent.parent / "data" / "render_golden.npz"


def golden_scene() -> tuple[list[ObjectModel], Pose, Camera, Lighting]:
    """The scene of the stored golden image: a face-coloured box partly hidden by a vertex-coloured sphere,
    32×24 pixels, directional light from the upper left with a specular highlight."""
    objects = [make_object(face_colored_box((0.08, 0.06, 0.05)), 1), make_object(vertex_colored_sphere(0.03, 3), 2)]
    poses = Pose.stack([pose((0.5, -0.6, 0.2), (0.01, 0.0, 0.45)), pose((0.0, 0.0, 0.0), (-0.03, 0.015, 0.38))])
    cam = Camera.from_fxfycxcy(75.0, 77.0, 15.8, 11.2, width=32, height=24)
    light = Lighting(ambient=0.3, diffuse=0.7, direction=(-0.4, -0.5, -0.75), specular=0.3, shininess=16.0)
    return objects, poses, cam, light


def write_golden(path: Path = GOLDEN_PATH) -> None:
    """Render :func:`golden_scene` with the ray caster and store it (run ``python tests/render_fixtures.py``)."""
    from meshpose.render import RaycastRenderer

    objects, poses, cam, light = golden_scene()
    out = RaycastRenderer().render(objects, poses, cam, lighting=light)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        rgb=np.round(out.rgb[0] * 255).astype(np.uint8),
        depth=out.depth[0],
        instance=out.instance[0].astype(np.uint8),
        xyz=out.xyz[0],
    )


if __name__ == "__main__":
    write_golden()
    print(f"wrote {GOLDEN_PATH}")
