"""The renderer seam: what every renderer takes and returns.

A renderer draws a *scene* — several objects, each at its own ``cam_from_obj`` pose — into a camera, and returns
every per-pixel quantity a render-and-compare method needs, from one pass with correct mutual occlusion:
colour, depth, a mask, the object-frame coordinates of the visible surface (``xyz``), camera-frame normals and the
instance index. A *batch* of scenes (hypotheses) can be drawn in one call, each with its own camera (crops).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from meshpose.types import Camera, ObjectModel, Pose

if TYPE_CHECKING:
    import trimesh

__all__ = [
    "DEFAULT_COLOR",
    "Lighting",
    "RenderOutput",
    "Renderer",
    "SurfaceData",
    "closed_orientation",
    "corner_normals",
    "full_silhouettes",
    "normalize_scene_batch",
    "only_outputs",
    "render_alone",
    "surface_data",
]

DEFAULT_COLOR: tuple[int, int, int, int] = (160, 160, 160, 255)
"""RGBA albedo (uint8) of a mesh that has neither vertex/face colours nor a texture."""


@dataclass(frozen=True)
class Lighting:
    """Simple shading: ambient + one directional light, Lambertian (and an optional Phong highlight).

    Args:
        ambient: ambient intensity in [0, 1].
        diffuse: directional light intensity.
        direction: ``(3,)`` direction *towards* the light, in the camera frame (default: from the camera).
        specular: Phong specular intensity (0 disables it).
        shininess: Phong exponent.
        color: ``(3,)`` light colour multiplier.

    ``Lighting(ambient=1, diffuse=0)`` returns the unshaded albedo (vertex colour or texture).

    Every renderer shades a visible point with albedo ``a``, unit normal ``n`` (camera frame, turned towards
    the camera), unit light direction ``l = direction / |direction|`` and unit view direction ``v`` (from the
    point to the camera centre) as::

        rgb = clip(color * (a * (ambient + diffuse * max(n·l, 0))
                            + specular * max(r·v, 0) ** shininess), 0, 1)

    with ``r = 2 (n·l) n - l`` the mirrored light direction; the specular term is 0 where ``n·l ≤ 0``.

    Raises:
        ValueError: negative intensities or a zero light direction.
    """

    ambient: float = 0.45
    diffuse: float = 0.6
    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)
    specular: float = 0.0
    shininess: float = 20.0
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("ambient", "diffuse", "specular", "shininess"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Lighting.{name} must be finite and non-negative, got {value}")
        d = np.asarray(self.direction, dtype=np.float64)
        if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0:
            raise ValueError(f"Lighting.direction must be a finite non-zero 3-vector, got {self.direction}")
        c = np.asarray(self.color, dtype=np.float64)
        if c.shape != (3,) or not np.all(np.isfinite(c)) or np.any(c < 0):
            raise ValueError(f"Lighting.color must be 3 finite non-negative values, got {self.color}")

    @property
    def unit_direction(self) -> np.ndarray:
        """``(3,)`` float64 unit vector towards the light, camera frame."""
        d = np.asarray(self.direction, dtype=np.float64)
        return d / np.linalg.norm(d)


@dataclass(frozen=True, eq=False)
class RenderOutput:
    """Per-pixel outputs of one render call, batched over ``B`` scenes (``B = 1`` for a single scene).

    Args:
        rgb: ``(B, H, W, 3)`` float32 shaded colour in [0, 1]; 0 on the background.
        depth: ``(B, H, W)`` float32 z-depth in metres (camera frame); 0 on the background.
        mask: ``(B, H, W)`` bool, True where any object is visible.
        xyz: ``(B, H, W, 3)`` float32 object-frame coordinates (metres) of the visible surface point, in the frame
            of the object that is visible there; 0 on the background.
        normal: ``(B, H, W, 3)`` float32 unit surface normals in the camera frame; 0 on the background.
        instance: ``(B, H, W)`` int32: ``1 + index`` into the ``objects`` sequence of the visible object; 0 on
            the background.
        timings: wall time per stage in seconds (renderer-specific keys, e.g. ``draw``, ``readback``,
            ``total``).

    A renderer asked for only some of the images (``outputs`` of :meth:`~meshpose.render.gl.GLRenderer.render`)
    returns the others as read-only zero arrays of these shapes and dtypes.
    """

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    xyz: np.ndarray
    normal: np.ndarray
    instance: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, b: int | slice) -> RenderOutput:
        """Select scenes along the batch axis (an int keeps the batch axis with size 1)."""
        sl = slice(b, b + 1) if isinstance(b, int) else b
        return RenderOutput(
            self.rgb[sl],
            self.depth[sl],
            self.mask[sl],
            self.xyz[sl],
            self.normal[sl],
            self.instance[sl],
            dict(self.timings),
        )

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


@runtime_checkable
class Renderer(Protocol):
    """Anything that renders scenes of :class:`ObjectModel` at :class:`Pose` into a :class:`Camera`."""

    def render(
        self,
        objects: Sequence[ObjectModel],
        poses: Pose,
        camera: Camera | Sequence[Camera],
        *,
        lighting: Lighting | None = None,
    ) -> RenderOutput:
        """Render ``B`` scenes of the ``N`` ``objects``.

        Args:
            objects: the ``N`` objects of every scene (an object may appear twice: pass it twice).
            poses: ``cam_from_obj`` poses, batch shape ``(N,)`` for one scene or ``(B, N)`` for ``B`` scenes.
            camera: one camera for all scenes, or ``B`` cameras (e.g. one crop per hypothesis). All cameras of
                one call must have the same ``width`` and ``height``.
            lighting: shading; ``None`` uses the renderer's default.

        Returns:
            A :class:`RenderOutput` with batch size ``B`` (1 for poses of shape ``(N,)``).
        """
        ...


def normalize_scene_batch(
    objects: Sequence[ObjectModel], poses: Pose, camera: Camera | Sequence[Camera]
) -> tuple[Pose, list[Camera]]:
    """Check a render call's arguments and bring them to ``poses (B, N)`` and ``B`` cameras.

    ``poses`` has batch shape ``(N,)`` (one scene) or ``(B, N)``; with a single object an unbatched pose is
    accepted too.

    Raises:
        ValueError: if the pose batch does not match the objects, the camera count does not match ``B``, or the
            cameras differ in size.
    """
    n = len(objects)
    if n == 0:
        raise ValueError("render needs at least one object")
    shape = tuple(poses.batch_shape)
    if len(shape) == 0 and n == 1:
        poses = poses.reshape(1, 1)  # a single pose for a single object
    elif len(shape) == 1:
        poses = poses.reshape(1, shape[0])
    elif len(shape) != 2:
        raise ValueError(f"render poses must have batch shape (N,) or (B, N), got {shape}")
    b, n_pose = (int(s) for s in poses.batch_shape)
    if n_pose != n:
        raise ValueError(f"render got {n} objects but poses for {n_pose}")
    cams = [camera] * b if isinstance(camera, Camera) else list(camera)
    if len(cams) != b:
        raise ValueError(f"render got {len(cams)} cameras for {b} scenes")
    if any((c.width, c.height) != (cams[0].width, cams[0].height) for c in cams):
        raise ValueError("all cameras of one render call must have the same width and height")
    return poses, cams


def only_outputs(renderer: Renderer, outputs: Collection[str] | None) -> dict[str, Any]:
    """Keyword arguments that ask ``renderer`` for only the images ``outputs`` (e.g. ``("mask",)``): ``{"outputs":
    outputs}`` for a renderer whose ``render`` takes them (the GL renderer then draws and reads back only those),
    else ``{}`` (the renderer draws everything, as the :class:`Renderer` protocol has it)."""
    if outputs is None:
        return {}
    try:
        takes = "outputs" in inspect.signature(renderer.render).parameters
    except (TypeError, ValueError):  # no signature to inspect
        takes = False
    return {"outputs": tuple(outputs)} if takes else {}


def render_alone(
    renderer: Renderer,
    objects: Sequence[ObjectModel],
    poses: Pose,
    cameras: Sequence[Camera],
    lighting: Lighting | None,
    *,
    outputs: Collection[str] | None = None,
) -> RenderOutput:
    """Render object ``b`` alone at ``poses[b]`` into ``cameras[b]``, for every ``b``, in one batched call (scene
    ``b`` holds all objects, the others far behind the camera, which the renderer skips). ``outputs``: only these
    images are needed (:func:`only_outputs`)."""
    n = len(objects)
    R = np.broadcast_to(np.eye(3), (n, n, 3, 3)).copy()
    t = np.broadcast_to(np.array([0.0, 0.0, -1e4]), (n, n, 3)).copy()  # the others far behind the camera
    Rp, tp = poses.numpy()
    R[np.arange(n), np.arange(n)] = Rp
    t[np.arange(n), np.arange(n)] = tp
    return renderer.render(
        list(objects), Pose(R, t), list(cameras), lighting=lighting, **only_outputs(renderer, outputs)
    )


def full_silhouettes(
    renderer: Renderer, objects: Sequence[ObjectModel], poses: Pose, camera: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Silhouette of each object *alone*, also beyond the image border, as bop_toolkit counts it.

    Each object is drawn alone into a window around its projected bounding box (integer pixel shifts of the
    camera, so the sampling is that of the full image), all in one batched call; windows reach at most one image
    size beyond each border (a larger silhouette is truncated there).

    Args:
        renderer: the renderer.
        objects: the ``N`` objects.
        poses: ``(N,)`` their ``cam_from_obj`` poses.
        camera: the image's camera.

    Returns:
        ``masks`` ``(N, H, W)`` bool clipped to the image, ``px_count_all`` ``(N,)`` int64 silhouette pixels
        including those beyond the border, ``bbox_obj`` ``(N, 4)`` int64 ``[x, y, w, h]`` of the whole silhouette
        (``-1`` for an object that projects to no pixel).
    """
    poses = poses.reshape(-1)
    n = len(objects)
    h, w = camera.height, camera.width
    masks = np.zeros((n, h, w), bool)
    px_all = np.zeros(n, np.int64)
    bbox = np.full((n, 4), -1, np.int64)
    if n == 0:
        return masks, px_all, bbox
    R, t = poses.numpy()
    boxes = []
    for i, obj in enumerate(objects):
        v = np.asarray(obj.render_mesh.vertices, dtype=np.float64) @ R[i].T + t[i]
        z = np.maximum(v[:, 2], 1e-6)
        u = camera.fx * v[:, 0] / z + camera.K[0, 1] * v[:, 1] / z + camera.cx
        vv = camera.fy * v[:, 1] / z + camera.cy
        x0, x1 = math.floor(u.min()) - 1, math.ceil(u.max()) + 1
        y0, y1 = math.floor(vv.min()) - 1, math.ceil(vv.max()) + 1
        x0, x1 = max(x0, -w), min(x1, 2 * w - 1)
        y0, y1 = max(y0, -h), min(y1, 2 * h - 1)
        boxes.append((x0, y0, max(x1, x0), max(y1, y0)))
    cw = max(b[2] - b[0] + 1 for b in boxes)
    ch = max(b[3] - b[1] + 1 for b in boxes)
    cams = []
    for x0, y0, _, _ in boxes:
        K = camera.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        cams.append(Camera(K, cw, ch))
    out = render_alone(renderer, objects, poses, cams, Lighting(ambient=1.0, diffuse=0.0))
    for i, (x0, y0, _, _) in enumerate(boxes):
        m = out.instance[i] == i + 1
        px_all[i] = int(m.sum())
        if px_all[i] == 0:
            continue
        ys, xs = np.nonzero(m)
        bbox[i] = [xs.min() + x0, ys.min() + y0, xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        sx0, sy0 = max(0, -x0), max(0, -y0)  # paste the part inside the image
        sx1, sy1 = min(cw, w - x0), min(ch, h - y0)
        if sx1 > sx0 and sy1 > sy0:
            masks[i, y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] = m[sy0:sy1, sx0:sx1]
    return masks, px_all, bbox


# ----------------------------------------------------------------------------------------------------------
# Mesh → per-vertex render attributes (shared by the renderers so that they agree on normals and colours)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SurfaceData:
    """A mesh flattened into per-vertex arrays a renderer draws directly.

    Vertices are split where a face needs its own attribute at a shared vertex (a crease in the normals, a
    face colour), so every attribute is per vertex. Face ``f`` of ``faces`` is face ``f`` of the source mesh.

    Args:
        positions: ``(V, 3)`` float64 object-frame vertex positions, metres.
        faces: ``(F, 3)`` int32 indices into ``positions``.
        normals: ``(V, 3)`` float32 unit shading normals, object frame. Each lies on the side of its faces'
            winding normal ``(p1 - p0) × (p2 - p0)``, so the winding tells a renderer which side is seen.
        colors: ``(V, 4)`` uint8 RGBA albedo per vertex; for a textured mesh the texture is multiplied by it.
        uvs: ``(V, 2)`` float32 texture coordinates in trimesh's convention (``v = 0`` is the *bottom* row of
            the image), or ``None``.
        texture: ``(Ht, Wt, 4)`` uint8 RGBA texture image, row 0 = *top* of the image, or ``None``.
        center: ``(3,)`` float64 centre of a bounding sphere of the vertices (object frame, metres).
        radius: radius of that sphere, metres.
        orientation: ``+1`` if the mesh is closed with outward winding (see :func:`closed_orientation`),
            ``-1`` if closed with inward winding, ``0`` otherwise. A renderer may cull the faces turned away
            from a camera outside a closed mesh without changing the image.
    """

    positions: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    uvs: np.ndarray | None
    texture: np.ndarray | None
    center: np.ndarray
    radius: float
    orientation: int = 0

    @property
    def textured(self) -> bool:
        return self.texture is not None and self.uvs is not None


def corner_normals(vertices: np.ndarray, faces: np.ndarray, crease_angle: float = 30.0) -> np.ndarray:
    """Smooth normals per face corner that stay sharp across creases.

    The normal of face ``f`` at its vertex ``v`` is the area-weighted mean of the unit normals of the faces
    around ``v`` whose normal is within ``crease_angle`` of face ``f``'s (``f`` itself always counts), so
    smooth surfaces shade smoothly while box edges stay crisp. Faces are compared by their winding normals, so
    neighbours with flipped winding do not blend.

    Args:
        vertices: ``(V, 3)`` positions.
        faces: ``(F, 3)`` vertex indices.
        crease_angle: degrees; ``0`` gives flat (face) normals, ``180`` plain vertex normals.

    Returns:
        ``(F, 3, 3)`` float64 unit normals, ``[f, k]`` for corner ``k`` of face ``f``; each has a positive dot
        product with face ``f``'s winding normal (degenerate faces get ``+z``).

    Example:
        >>> import trimesh
        >>> box = trimesh.creation.box()
        >>> n = corner_normals(box.vertices, box.faces, 30.0)
        >>> bool(np.allclose(n, box.face_normals[:, None, :]))
        True
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n_faces = len(faces)
    tri = vertices[faces]
    area_normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3), |·| = 2 area
    length = np.linalg.norm(area_normal, axis=1, keepdims=True)
    unit = np.divide(area_normal, length, out=np.zeros_like(area_normal), where=length > 0)

    corner_vertex = faces.reshape(-1)
    corner_face = np.repeat(np.arange(n_faces), 3)
    order = np.argsort(corner_vertex, kind="stable")
    incident_face = corner_face[order]  # faces around each vertex, grouped by vertex
    count = np.bincount(corner_vertex, minlength=len(vertices))
    start = np.concatenate([[0], np.cumsum(count)[:-1]])

    cos_crease = math.cos(math.radians(min(max(crease_angle, 0.0), 180.0)))
    acc = np.zeros((3 * n_faces, 3))
    corner_count = count[corner_vertex]
    corner_start = start[corner_vertex]
    active = np.arange(3 * n_faces)
    for rank in range(int(count.max(initial=0))):
        active = active[corner_count[active] > rank]
        other = incident_face[corner_start[active] + rank]
        own = corner_face[active]
        keep = (other == own) | (np.einsum("ij,ij->i", unit[other], unit[own]) >= cos_crease)
        acc[active[keep]] += area_normal[other[keep]]

    acc_len = np.linalg.norm(acc, axis=1, keepdims=True)
    fallback = unit[corner_face]
    fallback[np.linalg.norm(fallback, axis=1) == 0] = (0.0, 0.0, 1.0)
    out = np.where(acc_len > 1e-300, acc / np.maximum(acc_len, 1e-300), fallback)
    return out.reshape(n_faces, 3, 3)


def closed_orientation(vertices: np.ndarray, faces: np.ndarray) -> int:
    """Whether a mesh bounds solids, and which way its winding points.

    The mesh counts as closed if, after merging vertices at identical positions, every directed edge of every
    face is traversed exactly once in the opposite direction by another face (a closed, consistently wound
    2-manifold without degenerate faces). Seen from outside all of it, every ray then hits a face turned
    towards the camera first, so culling the others cannot change a rendering.

    Args:
        vertices: ``(V, 3)`` positions.
        faces: ``(F, 3)`` vertex indices.

    Returns:
        ``+1`` if closed and every connected part has positive volume (winding normals point outwards),
        ``-1`` if closed and every part has negative volume, else ``0``.

    Example:
        >>> import trimesh
        >>> box = trimesh.creation.box()
        >>> closed_orientation(box.vertices, box.faces), closed_orientation(box.vertices, box.faces[:, ::-1])
        (1, -1)
        >>> closed_orientation(box.vertices, box.faces[1:])
        0
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return 0
    rows = np.ascontiguousarray(vertices + 0.0)  # + 0.0 turns -0.0 into 0.0 so equal positions merge
    _, merged = np.unique(rows.view(np.dtype((np.void, 24))).reshape(-1), return_inverse=True)
    f = merged.reshape(-1)[faces]
    if np.any((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])):
        return 0
    n_v = int(f.max()) + 1
    heads = f.reshape(-1)
    tails = f[:, [1, 2, 0]].reshape(-1)
    directed = heads * n_v + tails
    reverse = tails * n_v + heads
    order = np.argsort(directed)
    sorted_edges = directed[order]
    if np.any(sorted_edges[1:] == sorted_edges[:-1]):
        return 0  # an edge traversed twice in the same direction: inconsistent winding or non-manifold
    pos = np.searchsorted(sorted_edges, reverse)
    pos = np.minimum(pos, len(sorted_edges) - 1)
    if not np.all(sorted_edges[pos] == reverse):
        return 0  # a boundary edge
    # Connected parts (faces joined through shared edges) and their signed volumes.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edge_face = np.repeat(np.arange(len(f)), 3)
    partner = edge_face[order][pos]
    graph = coo_matrix((np.ones(len(edge_face)), (edge_face, partner)), shape=(len(f), len(f)))
    n_parts, label = connected_components(graph, directed=False)
    tri = vertices[faces]
    origin = vertices.mean(axis=0)
    signed = np.einsum("ij,ij->i", tri[:, 0] - origin, np.cross(tri[:, 1] - origin, tri[:, 2] - origin))
    volume = np.bincount(label, weights=signed, minlength=n_parts)
    if np.all(volume > 0):
        return 1
    if np.all(volume < 0):
        return -1
    return 0


def _rgba_image(image: Any) -> np.ndarray | None:
    """A PIL image (or array) as ``(H, W, 4)`` uint8 RGBA, row 0 at the top; ``None`` if unusable."""
    if image is None:
        return None
    if hasattr(image, "convert"):
        arr = np.asarray(image.convert("RGBA"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            return None
        if arr.dtype != np.uint8:
            scale = 255.0 if np.issubdtype(arr.dtype, np.floating) else 1.0
            arr = np.clip(np.asarray(arr, dtype=np.float64) * scale, 0, 255).round().astype(np.uint8)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.shape[2] == 3:
            arr = np.concatenate([arr, np.full((*arr.shape[:2], 1), 255, np.uint8)], axis=2)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        return None
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _rgba_color(value: Any, default: Sequence[int]) -> np.ndarray:
    """A colour in any trimesh form (uint8 or float in [0, 1], RGB or RGBA) as ``(4,)`` uint8."""
    if value is None:
        return np.asarray(default, dtype=np.uint8)
    c = np.asarray(value).reshape(-1)
    if c.size not in (3, 4):
        return np.asarray(default, dtype=np.uint8)
    if np.issubdtype(c.dtype, np.floating):
        c = np.clip(c * 255.0, 0, 255).round()
    c = np.clip(c, 0, 255).astype(np.uint8)
    return np.concatenate([c, [255]]).astype(np.uint8) if c.size == 3 else c


def _corner_albedo(
    mesh: trimesh.Trimesh, default_color: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-corner albedo ``(F, 3, 4)`` uint8, per-corner uv ``(F, 3, 2)`` or None, texture or None."""
    faces = np.asarray(mesh.faces, dtype=np.int64)
    n_faces, n_vertices = len(faces), len(mesh.vertices)
    uniform = np.asarray(default_color, dtype=np.uint8)
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = getattr(visual, "material", None)
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        texture = _rgba_image(image)
        uv = getattr(visual, "uv", None)
        factor = getattr(material, "baseColorFactor", None)
        if texture is not None and uv is not None and len(uv) == n_vertices:
            tint = _rgba_color(factor, (255, 255, 255, 255))
            corner_uv = np.asarray(uv, dtype=np.float64)[faces].astype(np.float32)
            return np.broadcast_to(tint, (n_faces, 3, 4)).copy(), corner_uv, texture
        main = getattr(material, "main_color", None) if factor is None else factor
        uniform = _rgba_color(main, default_color)
    elif kind == "vertex":
        colors = np.asarray(visual.vertex_colors)  # type: ignore[union-attr]
        if colors.shape == (n_vertices, 4):
            return colors.astype(np.uint8)[faces], None, None
    elif kind == "face":
        colors = np.asarray(visual.face_colors)  # type: ignore[union-attr]
        if colors.shape == (n_faces, 4):
            return np.repeat(colors.astype(np.uint8)[:, None, :], 3, axis=1), None, None
    return np.broadcast_to(uniform, (n_faces, 3, 4)).copy(), None, None


def surface_data(
    mesh: trimesh.Trimesh,
    *,
    crease_angle: float = 30.0,
    default_color: Sequence[int] = DEFAULT_COLOR,
) -> SurfaceData:
    """Flatten a trimesh mesh into per-vertex render attributes (see :class:`SurfaceData`).

    Colours: a ``TextureVisuals`` with an image (``material.image``, or PBR ``baseColorTexture`` times
    ``baseColorFactor``) and per-vertex ``uv`` is drawn textured; one without a usable image takes its
    material's main colour; ``ColorVisuals`` vertex colours are interpolated across faces and face colours
    stay flat per face; a mesh with none of these gets ``default_color``. Alpha is carried but renderers draw
    opaque.

    Args:
        mesh: the mesh (metres, object frame).
        crease_angle: degrees, see :func:`corner_normals`.
        default_color: RGBA uint8 albedo of an uncoloured mesh.

    Returns:
        The :class:`SurfaceData`; vertices are shared wherever all attributes agree.

    Raises:
        ValueError: if the mesh has no faces or non-finite vertices.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"cannot render a mesh without triangles (faces shape {faces.shape})")
    if not np.all(np.isfinite(vertices)):
        raise ValueError("cannot render a mesh with NaN or inf vertices")
    normals = corner_normals(vertices, faces, crease_angle)
    albedo, uv, texture = _corner_albedo(mesh, default_color)

    # Merge corners that agree on every attribute back into shared vertices.
    n_corners = 3 * len(faces)
    columns = [faces.reshape(n_corners, 1).astype(np.float64), normals.reshape(n_corners, 3)]
    columns.append(albedo.reshape(n_corners, 4).astype(np.float64))
    if uv is not None:
        columns.append(uv.reshape(n_corners, 2).astype(np.float64))
    key = np.ascontiguousarray(np.concatenate(columns, axis=1))
    rows = key.view(np.dtype((np.void, key.dtype.itemsize * key.shape[1]))).reshape(-1)  # byte-wise row keys
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    corner_vertex = faces.reshape(-1)

    used = vertices[np.unique(faces)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    center = 0.5 * (lo + hi)
    radius = float(np.linalg.norm(used - center, axis=1).max())
    return SurfaceData(
        positions=vertices[corner_vertex[first]],
        faces=inverse.reshape(-1, 3).astype(np.int32),
        normals=normals.reshape(n_corners, 3)[first].astype(np.float32),
        colors=np.ascontiguousarray(albedo.reshape(n_corners, 4)[first]),
        uvs=None if uv is None else np.ascontiguousarray(uv.reshape(n_corners, 2)[first]),
        texture=texture if uv is not None else None,
        center=center,
        radius=radius,
        orientation=closed_orientation(vertices, faces),
    )
