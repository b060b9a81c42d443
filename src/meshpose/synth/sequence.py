"""Synthetic video sequences for tracking (RBOT-style): smooth random trajectories of objects rendered with the GL
renderer over a procedural background, with motion blur, occlusion by a moving distractor, lighting changes and a
"frame step" (every ``k``-th frame of the trajectory, as the RBOT benchmark makes fast motion from slow).

* :class:`SequenceConfig` — how a sequence looks and moves;
* :func:`render_sequence` — the frames in memory (:class:`SyntheticSequence`: observations and ground truth);
* :func:`write_sequence_dataset` — sequences as a BOP dataset, one scene per sequence (``scene_gt.json``,
  ``scene_camera.json``, ``scene_gt_info.json``, rgb, masks, optional depth, targets), for ``meshpose track``.

Trajectory. Keyframes every ``keyframe_every`` trajectory frames hold a random orientation offset (rotation vector
within ``rot_range_deg`` of a random base orientation), a position in the image (within ``shift_frac`` of the
image size from the centre) and a depth; cubic splines through them (rotation vectors, pixel position, depth) give
a smooth motion whose speed per *output* frame grows with ``frame_step``. With the defaults at 640×480 the motion
per trajectory frame is 1.2–1.9° (mean over a sequence; peaks 2.5–5°) and 1–3 px (peaks 2–12 px), so frame step 4
is 5–8° and 4–12 px per frame on average. Several objects move in side-by-side lanes. Everything is a function of
``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from meshpose.io.bop_write import SceneWriter, write_camera_json, write_models
from meshpose.mesh import make_object_model, textured_box
from meshpose.render.base import Lighting
from meshpose.synth.backgrounds import random_background
from meshpose.types import Camera, ObjectModel, Observation, Pose

__all__ = ["SequenceConfig", "SyntheticSequence", "iter_frames", "render_sequence", "write_sequence_dataset"]

#: Object id of the occluder in renders (never written as an annotated object).
OCCLUDER_ID = 999_999


@dataclass(frozen=True)
class SequenceConfig:
    """How a synthetic sequence looks and moves.

    Args:
        width, height: image size in pixels.
        focal: focal length in pixels (``None``: ``1.1 · width``).
        frames: output frames.
        frame_step: output frame ``i`` is trajectory frame ``i · frame_step`` (RBOT's frame step: 1–4).
        keyframe_every: trajectory frames between two random keyframes of the spline (larger: slower motion).
        size_frac: ``(lo, hi)`` the object's diameter spans this fraction of the image width (sets the depth).
        rot_range_deg: keyframe orientations lie within this angle of the sequence's base orientation.
        shift_frac: keyframe centres lie within this fraction of the image half-size from the image centre.
        depth_range: keyframe depths vary by this factor around the mean (``±``).
        blur_samples: renders averaged over the exposure per frame (motion blur; 1 disables it).
        shutter: exposure, fraction of one trajectory frame.
        occlusion: output frames ``(first, last)`` in which a distractor box in front of the first object hides it
            completely; it slides in over ``occlusion_ramp`` frames before and out after (``None``: no occluder).
        occlusion_ramp: frames the occluder takes to slide in and out.
        light_change: amplitude of the smooth changes of the light's intensity and direction (0: constant light).
        noise_std: Gaussian noise of the colour image (grey levels).
        depth: also render depth (metres, with ``depth_noise_m`` noise).
        depth_noise_m: standard deviation of the depth noise.
        camera_jump_deg: ``(lo, hi)``: a *static scene* seen by a hand-held camera that jumps between output frames
            (as LM-O's frames, 1–27 images apart): the objects stand still around a common centre and the camera's
            view direction turns by an angle uniform in ``[lo, hi]`` degrees about it per frame, with a random roll
            of up to 5°, a look-at point that wanders by up to ``camera_jump_frac`` diameters and a distance
            within ``±depth_range``. ``None``: objects move along their own trajectories (the options above).
        camera_jump_frac: the look-at point of a jumping camera lies within this many mean object diameters of the
            scene centre.
        table_m: with ``camera_jump_deg``, a textured table of this side (metres) under the objects (0: none), seen
            and moving with the scene but not annotated — as the cluttered table of LM-O, whose texture is what
            tells a tracker how the camera moved when the objects themselves have little.
        relocate: with ``camera_jump_deg``, the probability that an object is picked up and put down elsewhere
            between two output frames (a new spot near the others, clear of them, turned about the vertical): the
            objects of LM-O's sequence are moved like that — by its ground truth, between 36 of its 96 frame pairs one
            to five objects move by 2–67 cm while the rest stand still (``benchmarks/scene_motion.py``) — and a
            still-scene tracker must notice it.
        distractors: with ``camera_jump_deg``, this many generated objects that are rendered but not annotated stand
            among the objects (clear of them, about their size): they hide parts of the objects, and no detection
            outlines them — as the unannotated clutter on LM-O's table.
        seed: seed of everything random.
    """

    width: int = 320
    height: int = 240
    focal: float | None = None
    frames: int = 30
    frame_step: int = 1
    keyframe_every: int = 50
    size_frac: tuple[float, float] = (0.3, 0.45)
    rot_range_deg: float = 60.0
    shift_frac: float = 0.3
    depth_range: float = 0.15
    blur_samples: int = 3
    shutter: float = 0.5
    occlusion: tuple[int, int] | None = None
    occlusion_ramp: int = 3
    light_change: float = 0.3
    noise_std: float = 2.0
    depth: bool = False
    depth_noise_m: float = 0.001
    camera_jump_deg: tuple[float, float] | None = None
    camera_jump_frac: float = 1.0
    table_m: float = 0.0
    relocate: float = 0.0
    distractors: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.frame_step < 1 or self.keyframe_every < 1 or self.blur_samples < 1:
            raise ValueError("SequenceConfig: frames, frame_step, keyframe_every and blur_samples must be ≥ 1")
        if self.distractors < 0:
            raise ValueError(f"SequenceConfig.distractors must be ≥ 0, got {self.distractors}")
        if not 0.0 <= self.relocate <= 1.0:
            raise ValueError(f"SequenceConfig.relocate must be a probability in [0, 1], got {self.relocate}")
        if not 0 < self.size_frac[0] <= self.size_frac[1]:
            raise ValueError(f"SequenceConfig.size_frac must be (lo, hi) with 0 < lo ≤ hi, got {self.size_frac}")

    @property
    def camera(self) -> Camera:
        """The sequence's pinhole camera (principal point at the image centre)."""
        f = self.focal if self.focal is not None else 1.1 * self.width
        return Camera.from_fxfycxcy(
            f, f, (self.width - 1) / 2, (self.height - 1) / 2, width=self.width, height=self.height
        )


@dataclass
class SyntheticSequence:
    """A rendered sequence in memory.

    Args:
        objects: the ``N`` annotated objects.
        camera: the camera of every frame.
        rgb: ``F`` colour frames, ``(H, W, 3)`` uint8.
        depth: ``F`` depth maps in metres (``None`` without depth).
        gt: ``(F, N)`` ``cam_from_obj`` poses.
        visib: ``(F, N)`` visible fraction of each object's silhouette.
        masks: ``(F, N, H, W)`` full silhouettes; ``masks_visib`` the visible parts.
    """

    objects: list[ObjectModel]
    camera: Camera
    rgb: list[np.ndarray]
    depth: list[np.ndarray] | None
    gt: Pose
    visib: np.ndarray
    masks: np.ndarray
    masks_visib: np.ndarray
    config: SequenceConfig = field(default_factory=SequenceConfig)

    def __len__(self) -> int:
        return len(self.rgb)

    def observation(self, i: int) -> Observation:
        """Frame ``i`` as an :class:`Observation`."""
        return Observation(self.rgb[i], self.camera, None if self.depth is None else self.depth[i])


class _Trajectory:
    """A smooth trajectory of one object: cubic splines through random keyframes (rotation vector relative to a
    base orientation, pixel position of the centre, depth), evaluated at any real trajectory time."""

    def __init__(
        self, obj: ObjectModel, cfg: SequenceConfig, rng: np.random.Generator, length: float, lane: tuple[int, int]
    ) -> None:
        from scipy.interpolate import CubicSpline
        from scipy.spatial.transform import Rotation

        cam = cfg.camera
        self.cam = cam
        n_keys = math.ceil(length / cfg.keyframe_every) + 2
        times = np.arange(n_keys) * float(cfg.keyframe_every)
        self.R0 = Rotation.random(random_state=rng).as_matrix()
        rv = rng.normal(size=(n_keys, 3))
        rv *= (math.radians(cfg.rot_range_deg) * rng.uniform(0.3, 1.0, (n_keys, 1))) / np.linalg.norm(rv, axis=1)[
            :, None
        ]
        # Objects move in side-by-side lanes (lane j of n: a 1/n-wide strip of the image), so that they pass close
        # to each other without hiding each other for long.
        j, n = lane
        lane_cx = cam.cx + (j - (n - 1) / 2) * cam.width / n
        uv = np.stack(
            [
                lane_cx + rng.uniform(-1, 1, n_keys) * cfg.shift_frac * cam.width / (2 * n),
                cam.cy + rng.uniform(-1, 1, n_keys) * cfg.shift_frac * cam.height / 2,
            ],
            1,
        )
        frac = rng.uniform(*cfg.size_frac)
        z_mean = cam.fx * obj.diameter / (frac * cam.width)
        z = z_mean * (1.0 + cfg.depth_range * rng.uniform(-1, 1, n_keys))
        self.rot = CubicSpline(times, rv)
        self.pix = CubicSpline(times, uv)
        self.z = CubicSpline(times, z)

    def pose(self, s: float) -> Pose:
        from scipy.spatial.transform import Rotation

        R = Rotation.from_rotvec(self.rot(s)).as_matrix() @ self.R0
        (u, v), z = self.pix(s), float(self.z(s))
        t = np.array([(u - self.cam.cx) / self.cam.fx * z, (v - self.cam.cy) / self.cam.fy * z, z])
        return Pose(torch.from_numpy(R), torch.from_numpy(t))


class _StaticInWorld:
    """An object that stands still in the world, seen by a camera that jumps once per output frame; ``world_from_obj``
    is one ``(4, 4)`` placement, or one per output frame (an object that is moved between frames)."""

    def __init__(
        self, cam_from_world: list[np.ndarray], world_from_obj: np.ndarray | list[np.ndarray], frame_step: int
    ) -> None:
        self.cam_from_world, self.frame_step = cam_from_world, frame_step
        self.world_from_obj = (
            world_from_obj if isinstance(world_from_obj, list) else [world_from_obj] * len(cam_from_world)
        )

    def pose(self, s: float) -> Pose:
        i = min(len(self.cam_from_world) - 1, max(0, round(s / self.frame_step)))
        return Pose.from_matrix(torch.from_numpy(self.cam_from_world[i] @ self.world_from_obj[i]))


def _static_scene(objects: list[ObjectModel], cfg: SequenceConfig, rng: np.random.Generator) -> list[_StaticInWorld]:
    """``camera_jump_deg``: the objects on a ring around the world origin (z up), random orientations; the camera
    on a sphere around the origin (elevation 15–80°), its view direction turning by ``camera_jump_deg`` per frame."""
    from scipy.spatial.transform import Rotation

    assert cfg.camera_jump_deg is not None
    n, cam = len(objects), cfg.camera
    d_max = max(o.diameter for o in objects)
    d_mean = float(np.mean([o.diameter for o in objects]))
    ring = 0.0 if n == 1 else max(0.6 * d_max, 0.55 * d_max / math.sin(math.pi / n))
    phase = rng.uniform(0, 2 * math.pi)
    world_from_obj = []
    for j in range(n):
        a = phase + 2 * math.pi * j / n
        m = np.eye(4)
        m[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        m[:3, 3] = [ring * math.cos(a), ring * math.sin(a), 0.0]
        world_from_obj.append(m)
    dist = cam.fx * (2 * ring + d_max) / (rng.uniform(*cfg.size_frac) * cam.width)
    up = np.array([0.0, 0.0, 1.0])

    def direction(az: float, el: float) -> np.ndarray:
        return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])

    view = direction(rng.uniform(0, 2 * math.pi), math.radians(45.0))  # from the origin towards the camera
    cams = []
    for i in range(cfg.frames):
        if i > 0:
            angle = math.radians(rng.uniform(*cfg.camera_jump_deg))
            for _ in range(50):  # a random turn that keeps the elevation in range
                axis = np.cross(view, rng.normal(size=3))
                turned = Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).apply(view)
                if math.radians(15.0) <= math.asin(float(np.clip(turned[2], -1, 1))) <= math.radians(80.0):
                    view = turned
                    break
        target = np.append(rng.uniform(-1, 1, 2), 0.0) * cfg.camera_jump_frac * d_mean / math.sqrt(2)
        eye = target + view * dist * (1.0 + cfg.depth_range * rng.uniform(-1, 1))
        f = (target - eye) / np.linalg.norm(target - eye)
        y = -(up - np.dot(up, f) * f)
        y /= np.linalg.norm(y)
        x = np.cross(y, f)
        roll = Rotation.from_rotvec(f * math.radians(rng.uniform(-5.0, 5.0))).as_matrix()
        R = (roll @ np.stack([x, y, f], 1)).T  # cam_from_world rotation (rows: camera axes in the world)
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R, -R @ eye
        cams.append(m)
    placements = _relocations(world_from_obj, [o.diameter for o in objects], ring, cfg, rng)
    out = [_StaticInWorld(cams, w, cfg.frame_step) for w in placements]
    taken = [w[:2, 3] for w in world_from_obj]
    for _ in range(cfg.distractors):  # unannotated clutter among the objects (first placements: they stay)
        xy, _found = _clear_spot(rng, ring + 0.5 * d_max, taken, [0.8 * d_mean] * len(taken), tries=100)
        m = np.eye(4)
        m[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        m[:2, 3] = xy
        taken.append(xy)
        out.append(_StaticInWorld(cams, m, cfg.frame_step))
    if cfg.table_m > 0:  # its top just under the lowest point any object can reach
        table = np.eye(4)
        table[2, 3] = -0.5 * d_max - 0.01
        out.append(_StaticInWorld(cams, table, cfg.frame_step))
    return out


def _relocations(
    world_from_obj: list[np.ndarray], diameters: list[float], ring: float, cfg: SequenceConfig, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """Per object, its ``(4, 4)`` placement in each output frame: with probability ``cfg.relocate`` per frame it is
    moved to a random spot within the ring (plus a diameter) whose centre is at least the mean of the two diameters
    from every other object's, and turned by a random angle about the vertical; otherwise it stays. No random
    numbers are drawn when ``relocate`` is 0 (the sequences without it are as before)."""
    from scipy.spatial.transform import Rotation

    now = [w.copy() for w in world_from_obj]
    out: list[list[np.ndarray]] = [[w] for w in now]
    reach = ring + max(diameters)
    for _ in range(1, cfg.frames):
        for j in range(len(now)):
            if cfg.relocate > 0 and rng.uniform() < cfg.relocate:
                others = [k for k in range(len(now)) if k != j]
                gaps = [0.5 * (diameters[j] + diameters[k]) for k in others]
                xy, found = _clear_spot(rng, reach, [now[k][:2, 3] for k in others], gaps, tries=50)
                if found:
                    moved = now[j].copy()
                    moved[:3, :3] = Rotation.from_euler("z", rng.uniform(0, 2 * math.pi)).as_matrix() @ moved[:3, :3]
                    moved[:2, 3] = xy
                    now[j] = moved
            out[j].append(now[j])
    return out


def _clear_spot(
    rng: np.random.Generator, reach: float, centres: list[np.ndarray], gaps: list[float], *, tries: int
) -> tuple[np.ndarray, bool]:
    """A random table spot ``(x, y)`` (uniform over the disc of radius ``reach`` metres) at least ``gaps[k]`` from
    each of ``centres[k]``, and whether one was found in ``tries`` draws (if not, the last draw)."""
    xy = np.zeros(2)
    for _ in range(tries):
        r, a = reach * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        xy = np.array([r * math.cos(a), r * math.sin(a)])
        if all(np.linalg.norm(xy - q) >= g for q, g in zip(centres, gaps, strict=True)):
            return xy, True
    return xy, False


def _distractors(count: int, diameter: float, seed: int) -> list[ObjectModel]:
    """``count`` generated objects scaled to ``diameter`` metres (clutter: rendered, never annotated)."""
    import dataclasses

    from meshpose.synth.novel import novel_mesh

    out = []
    for k in range(count):
        obj = novel_mesh(100_000 + k, seed)
        mesh = obj.mesh.copy()
        extent = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
        mesh.apply_scale(diameter / max(extent, 1e-9))
        out.append(dataclasses.replace(obj, mesh=mesh).to_object_model(90_000 + k))
    return out


def _table(side_m: float, rng: np.random.Generator) -> ObjectModel:
    """A square of ``side_m`` metres in the z = 0 plane facing +z, textured with a procedural photograph-like
    background (dead leaves, noise, stripes, text patches) of 1024 px strewn with small printed shapes, in grey."""
    import trimesh
    from PIL import Image

    h = 0.5 * side_m
    v = np.array([[-h, -h, 0.0], [h, -h, 0.0], [h, h, 0.0], [-h, h, 0.0]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    import cv2

    texture = random_background(1024, 1024, rng)
    for _ in range(1500):  # printed clutter: small shapes with corners for a feature detector
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, 1024, 2))
        r = int(rng.integers(3, 14))
        if rng.random() < 0.5:
            cv2.rectangle(texture, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1)
        else:
            cv2.circle(texture, (x, y), r, colour, -1)
    grey = cv2.cvtColor(texture, cv2.COLOR_RGB2GRAY)  # a grey print: the objects' colours stand out
    image = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    mesh = trimesh.Trimesh(v, np.array([[0, 1, 2], [0, 2, 3]]), process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    return make_object_model(mesh, OCCLUDER_ID + 1, name="table", num_points=16)


def _occluder(obj: ObjectModel, seed: int) -> ObjectModel:
    """A flat textured box 1.4 diameters wide: in front of ``obj`` at 60 % of its depth it hides it completely."""
    d = obj.diameter
    mesh = textured_box((1.4 * d, 1.4 * d, 0.15 * d), seed=seed, texture="noise")
    return make_object_model(mesh, OCCLUDER_ID, name="occluder", num_points=16)


def _occluder_offset(frame: int, cfg: SequenceConfig) -> float | None:
    """The occluder's sideways offset in units of its own width at output ``frame`` (0: centred on the object;
    ``None``: out of the picture)."""
    if cfg.occlusion is None:
        return None
    a, b = cfg.occlusion
    ramp = max(1, cfg.occlusion_ramp)
    if a <= frame <= b:
        return 0.0
    gap = (a - frame) if frame < a else (frame - b)
    if gap > ramp:
        return None
    return (-1.0 if frame < a else 1.0) * 1.6 * gap / ramp


def _lighting(s: float, cfg: SequenceConfig, phase: np.ndarray) -> Lighting:
    a = cfg.light_change
    w = 2 * math.pi / 60.0
    direction = (
        0.5 * math.sin(w * s + phase[0]) * (1 + a),
        -0.5 + 0.4 * a * math.sin(0.7 * w * s + phase[1]),
        -1.0,
    )
    return Lighting(
        ambient=0.5 + 0.15 * a * math.sin(0.5 * w * s + phase[2]),
        diffuse=0.55 + 0.25 * a * math.sin(0.9 * w * s + phase[3]),
        direction=direction,
        specular=0.1,
        shininess=30.0,
    )


def render_sequence(objects: list[ObjectModel], config: SequenceConfig | None = None) -> SyntheticSequence:
    """Render a sequence of ``objects`` moving along smooth random trajectories.

    Args:
        objects: the ``N`` objects (each gets its own trajectory; they may overlap and hide each other).
        config: how it looks and moves (default :class:`SequenceConfig`).

    Returns:
        The frames and their ground truth.

    Example:
        >>> from meshpose.mesh import example_object
        >>> seq = render_sequence([example_object()], SequenceConfig(width=64, height=48, frames=2, blur_samples=1))
        >>> len(seq), seq.rgb[0].shape, tuple(seq.gt.batch_shape)
        (2, (48, 64, 3), (2, 1))
    """
    from meshpose.render.gl import get_default_renderer

    cfg = config or SequenceConfig()
    if not objects:
        raise ValueError("render_sequence needs at least one object")
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0x5E0]))
    cam = cfg.camera
    length = float(cfg.frames * cfg.frame_step)
    trajs: list[_Trajectory] | list[_StaticInWorld] = (
        [_Trajectory(o, cfg, rng, length, (j, len(objects))) for j, o in enumerate(objects)]
        if cfg.camera_jump_deg is None
        else _static_scene(objects, cfg, rng)
    )
    extra: list[tuple[ObjectModel, _Trajectory | _StaticInWorld]] = []  # rendered, not annotated
    if cfg.camera_jump_deg is not None and cfg.distractors:
        n = len(objects)
        clutter = _distractors(cfg.distractors, float(np.mean([o.diameter for o in objects])), cfg.seed)
        static = cast(list[_StaticInWorld], trajs)
        extra += list(zip(clutter, static[n : n + cfg.distractors], strict=True))
        trajs = static[:n] + static[n + cfg.distractors :]
    if len(trajs) > len(objects):
        extra.append((_table(cfg.table_m, rng), trajs[-1]))
        trajs = trajs[: len(objects)]
    bg = random_background(cfg.width, cfg.height, rng).astype(np.float32) / 255.0
    if extra:  # a picture glued to the camera would not move with the scene: a plain wall behind the table
        bg = np.broadcast_to(rng.uniform(0.3, 0.7, 3).astype(np.float32), bg.shape).copy()
    phase = rng.uniform(0, 2 * math.pi, 4)
    occ = _occluder(objects[0], cfg.seed) if cfg.occlusion is not None else None
    occ_R = torch.from_numpy(_small_tilt(rng))
    renderer = get_default_renderer()
    rgbs: list[np.ndarray] = []
    depths: list[np.ndarray] = []
    gts: list[Pose] = []
    masks, visibs = [], []
    for i in range(cfg.frames):
        s = float(i * cfg.frame_step)
        light = _lighting(s, cfg, phase)
        offsets = [0.0] if cfg.blur_samples == 1 else np.linspace(-0.5, 0.5, cfg.blur_samples) * cfg.shutter
        acc = np.zeros((cfg.height, cfg.width, 3), np.float32)
        center = None
        for k, ds in enumerate(offsets):
            poses = [tr.pose(s + float(ds)) for tr in trajs]
            scene = list(objects) + [o for o, _ in extra]
            scene_poses = list(poses) + [tr.pose(s + float(ds)) for _, tr in extra]
            off = _occluder_offset(i, cfg)
            if occ is not None and off is not None:
                scene.append(occ)
                scene_poses.append(_occluder_pose(poses[0], objects[0], off, occ_R))
            out = renderer.render(scene, Pose.stack(scene_poses), cam, lighting=light)
            acc += np.where(out.mask[0][..., None], out.rgb[0], bg)
            if k == len(offsets) // 2:
                center = (poses, out, scene, scene_poses)
        assert center is not None
        poses, out, scene, scene_poses = center
        img = acc / len(offsets) * 255.0 + rng.normal(0.0, cfg.noise_std, acc.shape)
        rgbs.append(np.clip(img, 0, 255).astype(np.uint8))
        if cfg.depth:
            d = out.depth[0].astype(np.float64)
            far = float(max(p.t[2] for p in poses)) + 0.5
            d = np.where(d > 0, d, far) + rng.normal(0.0, cfg.depth_noise_m, d.shape)
            depths.append(d.astype(np.float32))
        full = np.stack([renderer.render([o], p.reshape(1), cam).mask[0] for o, p in zip(objects, poses, strict=True)])
        vis = np.stack([out.instance[0] == j + 1 for j in range(len(objects))])
        masks.append(full)
        visibs.append(vis)
        gts.append(Pose.stack(poses))
    m, mv = np.stack(masks), np.stack(visibs)
    n_all = m.reshape(*m.shape[:2], -1).sum(-1)
    visib = np.where(n_all > 0, mv.reshape(*mv.shape[:2], -1).sum(-1) / np.maximum(n_all, 1), 0.0)
    return SyntheticSequence(
        list(objects), cam, rgbs, depths if cfg.depth else None, Pose.stack(gts), visib, m, mv, config=cfg
    )


def _small_tilt(rng: np.random.Generator) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rng.normal(0.0, 0.15, 3)).as_matrix()


def _occluder_pose(obj_pose: Pose, obj: ObjectModel, offset: float, R: torch.Tensor) -> Pose:
    """The occluder at 60 % of the object's depth on the line of sight through its centre, shifted sideways by
    ``offset`` occluder widths."""
    t = obj_pose.t.reshape(3).double() * 0.6
    t = t + torch.tensor([offset * 1.4 * obj.diameter, 0.0, 0.0], dtype=torch.float64)
    return Pose(R.double(), t)


def write_sequence_dataset(
    root: str | Path,
    sequences: list[tuple[list[ObjectModel], SequenceConfig]],
    *,
    split: str = "test",
    first_scene_id: int = 1,
) -> list[SyntheticSequence]:
    """Render sequences and write them as one BOP dataset, one scene per sequence (images numbered from 0).

    Every object of every sequence goes into ``models/`` (objects with one ``obj_id`` must be the same object);
    ``camera.json`` is the first sequence's camera; ``test_targets_bop19.json`` lists the instances at least
    10 % visible.

    Args:
        root: the dataset folder.
        sequences: per sequence, its objects and config.
        split: split folder.
        first_scene_id: id of the first scene (the next ones count up).

    Returns:
        The rendered sequences (same order).
    """
    from meshpose.synth.dataset import write_targets

    root = Path(root)
    models: dict[int, ObjectModel] = {}
    for objs, _ in sequences:
        for o in objs:
            models.setdefault(o.obj_id, o)
    write_models(root, list(models.values()))
    out: list[SyntheticSequence] = []
    for k, (objs, cfg) in enumerate(sequences):
        seq = render_sequence(objs, cfg)
        if k == 0:
            write_camera_json(root, seq.camera)
        writer = SceneWriter(root, split, first_scene_id + k)
        ids = [o.obj_id for o in objs]
        for i in range(len(seq)):
            writer.add_image(
                i,
                seq.camera,
                seq.rgb[i],
                ids,
                seq.gt[i],
                depth=None if seq.depth is None else seq.depth[i],
                masks=seq.masks[i],
                masks_visib=seq.masks_visib[i],
            )
        writer.close()
        out.append(seq)
    write_targets(root, split)
    return out


def iter_frames(seq: SyntheticSequence) -> Iterator[tuple[int, Observation, Pose]]:
    """``(index, observation, gt (N,))`` of each frame."""
    for i in range(len(seq)):
        yield i, seq.observation(i), seq.gt[i]
