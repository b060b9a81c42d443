"""The scene sampler: draws arrangements of objects (:class:`SceneLayout`) and renders random views of them
with their exact ground truth (:class:`SyntheticSample`)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from meshpose.render.base import Lighting, full_silhouettes
from meshpose.synth.backgrounds import ground_plane, random_background
from meshpose.synth.config import SceneConfig, sample_range
from meshpose.synth.placement import bounding_sphere, place_floating, place_on_plane
from meshpose.synth.sensor import apply_color_sensor, apply_depth_sensor
from meshpose.types import Camera, ObjectModel, Observation, Pose

__all__ = ["SceneLayout", "SceneSampler", "SyntheticSample"]


@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """One synthetic image with its ground truth (what a training loader consumes).

    Args:
        rgb: ``(H, W, 3)`` uint8 colour image (sensor model applied).
        depth: ``(H, W)`` float32 depth in metres with sensor noise and holes (0 = missing), or ``None``.
        depth_clean: ``(H, W)`` float32 exact depth of every surface (objects, distractors, ground), 0 where
            nothing is.
        camera: the camera.
        obj_ids: ``(N,)`` object ids of the annotated instances.
        objects: the ``N`` annotated objects.
        poses: ``(N,)`` ``cam_from_obj`` poses.
        masks: ``(N, H, W)`` bool full silhouettes (clipped to the image).
        masks_visib: ``(N, H, W)`` bool visible parts.
        px_count_all: ``(N,)`` silhouette pixels including the part beyond the image border.
        bbox_obj: ``(N, 4)`` ``[x, y, w, h]`` of the whole silhouette (may extend beyond the image).
        visib_fract: ``(N,)`` visible pixels / ``px_count_all``.
        instance: ``(H, W)`` int32, ``1 + i`` where annotated instance ``i`` is visible, else 0.
        cam_from_world: the camera pose in the scene's world frame (z up).
        lighting: the light it was rendered with.
        info: ``placement``, ``renderer``, ``scene_seed``, timings (seconds) and other diagnostics.
    """

    rgb: np.ndarray
    depth: np.ndarray | None
    depth_clean: np.ndarray
    camera: Camera
    obj_ids: np.ndarray
    objects: tuple[ObjectModel, ...]
    poses: Pose
    masks: np.ndarray
    masks_visib: np.ndarray
    px_count_all: np.ndarray
    bbox_obj: np.ndarray
    visib_fract: np.ndarray
    instance: np.ndarray
    cam_from_world: Pose
    lighting: Lighting
    info: dict[str, Any] = field(default_factory=dict)

    def observation(self, *, with_depth: bool = True) -> Observation:
        """The sample as an :class:`~meshpose.types.Observation` (what a refiner sees)."""
        return Observation(rgb=self.rgb, camera=self.camera, depth=self.depth if with_depth else None)


@dataclass(frozen=True, eq=False)
class SceneLayout:
    """One arrangement of objects in a world frame (z up, metres).

    Args:
        objects: annotated objects first, then distractors.
        n_targets: how many of ``objects`` are annotated.
        world_from_obj: ``(K, 4, 4)`` object poses.
        placement: ``"plane"`` or ``"float"``.
        center: ``(3,)`` centre of the arrangement.
        radius: radius of a sphere about ``center`` holding every object.
        ground: the ground plane (an object with a texture, its pose is the identity) or ``None``.
        backgrounds: background images of the scene; each view shows a random crop of one.
        seed: the seed the layout was drawn from.
    """

    objects: tuple[ObjectModel, ...]
    n_targets: int
    world_from_obj: np.ndarray
    placement: str
    center: np.ndarray
    radius: float
    ground: ObjectModel | None
    backgrounds: tuple[np.ndarray, ...] = ()
    seed: int = 0


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray, roll: float) -> np.ndarray:
    """``cam_from_world`` (4×4) of an OpenCV camera at ``eye`` looking at ``target`` (image y along -up)."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(-up, z)  # image right = (image down) × forward, image down ≈ -up
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(np.array([1.0, 0.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R_wc = np.stack([x, y, z], axis=1)  # world_from_cam rotation
    c, s = math.cos(roll), math.sin(roll)
    R_roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    R_cw = R_roll @ R_wc.T
    M = np.eye(4)
    M[:3, :3] = R_cw
    M[:3, 3] = -R_cw @ eye
    return M


class SceneSampler:
    """Draws synthetic scenes and images of ``objects`` (for :func:`~meshpose.synth.dataset.synthesize` and for
    training loaders).

    Args:
        objects: annotated objects to draw from (an :class:`~meshpose.synth.sources.ObjectSet` or any sequence
            of models).
        config: scene settings.
        renderer: ``"gl"`` (default), ``"photoreal"``, or a renderer object for colour. Masks of whole
            silhouettes always come from the GL renderer.
        distractors: unannotated objects to draw distractors from (``None``: none).

    Example:
        >>> sampler = SceneSampler(resolve_objects("novel:50"), SceneConfig(width=320, height=240))  # doctest: +SKIP
        >>> sample = sampler.sample(np.random.default_rng(0))                                        # doctest: +SKIP
        >>> sample.rgb.shape, sample.masks_visib.shape[1:]                                           # doctest: +SKIP
        ((240, 320, 3), (240, 320))
    """

    def __init__(
        self,
        objects: Sequence[ObjectModel],
        config: SceneConfig | None = None,
        *,
        renderer: Any = "gl",
        distractors: Sequence[ObjectModel] | None = None,
    ) -> None:
        if len(objects) == 0:
            raise ValueError("SceneSampler needs at least one object")
        self.objects = objects
        self.config = config or SceneConfig()
        self.distractors = distractors if distractors is not None and len(distractors) > 0 else None
        self._renderer_spec = renderer
        self._color_renderer: Any = None

    # --- renderers ----------------------------------------------------------------------------------------
    @property
    def gl(self) -> Any:
        """The GL renderer of this process and thread (silhouettes, and colour unless photoreal)."""
        from meshpose.render.gl import get_default_renderer

        return get_default_renderer()

    @property
    def color_renderer(self) -> Any:
        """The renderer of the colour images (made on first use: Mitsuba is imported only then)."""
        if self._color_renderer is None:
            spec = self._renderer_spec
            if spec == "gl" or spec is None:
                self._color_renderer = self.gl
            elif spec == "photoreal":
                from meshpose.render.photoreal import PhotorealRenderer

                self._color_renderer = PhotorealRenderer(
                    spp=self.config.spp,
                    max_depth=self.config.max_bounces,
                    variant=self.config.mitsuba_variant,
                    geometry=self.config.photoreal_geometry,
                )
            elif isinstance(spec, str):
                raise ValueError(f"renderer must be 'gl', 'photoreal' or a renderer object, got {spec!r}")
            else:
                self._color_renderer = spec
        return self._color_renderer

    @property
    def photoreal(self) -> bool:
        """Whether colour comes from the path tracer."""
        from meshpose.render.photoreal import PhotorealRenderer

        return isinstance(self.color_renderer, PhotorealRenderer)

    # --- scenes -------------------------------------------------------------------------------------------
    def layout(self, rng: np.random.Generator) -> SceneLayout:
        """Draw one arrangement: which objects, their world poses, the ground."""
        cfg = self.config
        seed = int(rng.integers(0, 2**31 - 1))
        n = int(rng.integers(cfg.objects_per_scene[0], cfg.objects_per_scene[1] + 1))
        if not cfg.repeat_objects:
            n = min(n, len(self.objects))
            picks = rng.choice(len(self.objects), size=n, replace=False)
        else:
            picks = rng.integers(0, len(self.objects), size=n)
        targets = [self.objects[int(i)] for i in np.sort(picks)]
        distractors: list[ObjectModel] = []
        if self.distractors is not None:
            nd = int(rng.integers(cfg.distractors_per_scene[0], cfg.distractors_per_scene[1] + 1))
            nd = min(nd, len(self.distractors))
            if nd:
                picks_d = rng.choice(len(self.distractors), size=nd, replace=False)
                distractors = [self.distractors[int(i)] for i in np.sort(picks_d)]
        all_objects = targets + distractors
        if cfg.placement == "mixed":
            placement = "plane" if rng.random() < cfg.plane_probability else "float"
        else:
            placement = cfg.placement
        if placement == "plane":
            poses, center, radius = place_on_plane(all_objects, rng)
            ground = ground_plane(center, max(1.5, 8.0 * radius), rng, cfg.background_dir)
        else:
            poses, center, radius = place_floating(all_objects, rng)
            ground = None
        bw = min(cfg.width, 400)
        bh = max(16, round(bw * cfg.height / cfg.width))
        backgrounds = tuple(random_background(bw, bh, rng, cfg.background_dir) for _ in range(2))
        return SceneLayout(
            objects=tuple(all_objects),
            n_targets=len(targets),
            world_from_obj=poses,
            placement=placement,
            center=center,
            radius=radius,
            ground=ground,
            backgrounds=backgrounds,
            seed=seed,
        )

    def camera_pose(self, layout: SceneLayout, rng: np.random.Generator) -> tuple[Camera, np.ndarray]:
        """Draw intrinsics and a ``cam_from_world`` looking at the arrangement (every object in front)."""
        cfg = self.config
        w, h = cfg.width, cfg.height
        for _ in range(100):
            fov = math.radians(sample_range(rng, cfg.fov_deg))
            fx = w / 2.0 / math.tan(fov / 2.0)
            cx = (w - 1) / 2.0 + rng.uniform(-1, 1) * cfg.principal_jitter * w
            cy = (h - 1) / 2.0 + rng.uniform(-1, 1) * cfg.principal_jitter * h
            camera = Camera.from_fxfycxcy(fx, fx, cx, cy, width=w, height=h)
            fill = sample_range(rng, cfg.fill)
            distance = layout.radius * fx / (fill * min(w, h) / 2.0)
            distance = max(distance, layout.radius + 0.08)
            target = layout.center + rng.normal(size=3) * cfg.target_jitter * layout.radius / math.sqrt(3.0)
            if layout.placement == "plane":
                elev = math.radians(sample_range(rng, cfg.elevation_deg))
                azim = rng.uniform(0, 2 * math.pi)
                direction = np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)])
                up = np.array([0.0, 0.0, 1.0])
                roll = math.radians(sample_range(rng, cfg.roll_deg))
            else:
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                up = rng.normal(size=3)
                roll = rng.uniform(-math.pi, math.pi)
            eye = target + direction * distance
            cam_from_world = _look_at(eye, target, up, roll)
            # Every object fully in front of the camera (a margin of 5 cm).
            ok = True
            for obj, M in zip(layout.objects, layout.world_from_obj, strict=True):
                c, r = bounding_sphere(obj)
                zc = (cam_from_world[:3, :3] @ (M[:3, :3] @ c + M[:3, 3]) + cam_from_world[:3, 3])[2]
                if zc - r < 0.05:
                    ok = False
                    break
            if ok:
                return camera, cam_from_world
        raise RuntimeError("could not place a camera with every object in front of it")

    def lighting(self, cam_from_world: np.ndarray, rng: np.random.Generator, placement: str) -> Lighting:
        """A random light (direction drawn in the world: from above for plane scenes)."""
        cfg = self.config
        d = rng.normal(size=3)
        if placement == "plane":
            d[2] = abs(d[2]) + 0.5
        d /= np.linalg.norm(d)
        d_cam = cam_from_world[:3, :3] @ d
        if d_cam[2] > 0.2:  # a light far behind the objects would leave only ambient: bring it round
            d_cam[2] = -d_cam[2]
        tint = np.clip(1.0 + rng.uniform(-cfg.light_tint, cfg.light_tint, 3), 0.5, 1.5)
        tint = tint / tint.mean()
        return Lighting(
            ambient=sample_range(rng, cfg.ambient),
            diffuse=sample_range(rng, cfg.diffuse),
            direction=tuple(float(x) for x in d_cam),  # type: ignore[arg-type]
            specular=sample_range(rng, cfg.specular),
            shininess=float(rng.uniform(5.0, 60.0)),
            color=tuple(float(x) for x in tint),  # type: ignore[arg-type]
        )

    # --- images -------------------------------------------------------------------------------------------
    def view(self, layout: SceneLayout, rng: np.random.Generator) -> SyntheticSample:
        """Render one random view of ``layout``."""
        cfg = self.config
        t0 = time.perf_counter()
        camera, cam_from_world = self.camera_pose(layout, rng)
        light = self.lighting(cam_from_world, rng, layout.placement)
        background = self._background(layout, camera, rng)
        sensor_seed = int(rng.integers(0, 2**31 - 1))
        render_seed = int(rng.integers(0, 2**31 - 1))

        scene_objects = list(layout.objects)
        world_from_obj = list(layout.world_from_obj)
        if layout.ground is not None:
            scene_objects.append(layout.ground)
            world_from_obj.append(np.eye(4))
        cam_from_obj = cam_from_world[None] @ np.asarray(world_from_obj)
        poses_all = Pose(cam_from_obj[:, :3, :3], cam_from_obj[:, :3, 3])

        if self.photoreal:
            env = cv2.resize(background, (128, 64), interpolation=cv2.INTER_AREA)
            out = self.color_renderer.render(
                scene_objects, poses_all, camera, lighting=light, seed=render_seed, environment=env
            )
        else:
            out = self.color_renderer.render(scene_objects, poses_all, camera, lighting=light)
        t_render = time.perf_counter()
        n = layout.n_targets
        instance_all = out.instance[0]
        rgb = out.rgb[0].astype(np.float32)
        hit = instance_all > 0
        if layout.ground is not None and not self.photoreal:
            rgb = self._contact_shadow(rgb, instance_all, len(scene_objects), light, rng)
        bg = background.astype(np.float32) / 255.0
        rgb = np.where(hit[..., None], rgb, bg)

        poses = poses_all[:n]
        masks_visib = np.stack([instance_all == i + 1 for i in range(n)]) if n else np.zeros((0, *hit.shape), bool)
        masks, px_all, bbox_obj = self.silhouettes(list(layout.objects[:n]), poses, camera)
        masks_visib &= masks
        px_visib = masks_visib.reshape(n, -1).sum(1)
        visib = np.where(px_all > 0, px_visib / np.maximum(px_all, 1), 0.0)
        t_masks = time.perf_counter()

        sensor_rng = np.random.default_rng(sensor_seed)
        rgb8 = apply_color_sensor(rgb, sensor_rng, cfg)
        depth_clean = np.ascontiguousarray(out.depth[0], dtype=np.float32)
        depth = apply_depth_sensor(depth_clean, out.normal[0], camera, sensor_rng, cfg) if cfg.depth else None
        instance = np.zeros(hit.shape, np.int32)
        for i in range(n):
            instance[masks_visib[i]] = i + 1
        t_end = time.perf_counter()
        R_cw, t_cw = cam_from_world[:3, :3], cam_from_world[:3, 3]
        return SyntheticSample(
            rgb=rgb8,
            depth=depth,
            depth_clean=depth_clean,
            camera=camera,
            obj_ids=np.array([o.obj_id for o in layout.objects[:n]], dtype=np.int64),
            objects=tuple(layout.objects[:n]),
            poses=poses,
            masks=masks,
            masks_visib=masks_visib,
            px_count_all=px_all,
            bbox_obj=bbox_obj,
            visib_fract=visib,
            instance=instance,
            cam_from_world=Pose(R_cw, t_cw),
            lighting=light,
            info={
                "placement": layout.placement,
                "renderer": "photoreal" if self.photoreal else "gl",
                "scene_seed": layout.seed,
                "n_distractors": len(layout.objects) - n,
                "timings": {
                    "render": t_render - t0,
                    "masks": t_masks - t_render,
                    "sensor": t_end - t_masks,
                    "total": t_end - t0,
                    **{f"renderer_{k}": v for k, v in out.timings.items()},
                },
            },
        )

    def _background(self, layout: SceneLayout, camera: Camera, rng: np.random.Generator) -> np.ndarray:
        """A random crop (flipped at random) of one of the scene's backgrounds, at the image size."""
        if not layout.backgrounds:
            return random_background(camera.width, camera.height, rng, self.config.background_dir)
        src = layout.backgrounds[int(rng.integers(0, len(layout.backgrounds)))]
        h, w = src.shape[:2]
        frac = rng.uniform(0.6, 1.0)
        cw, ch = max(8, round(w * frac)), max(8, round(h * frac))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = src[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1]
        return cv2.resize(np.ascontiguousarray(crop), (camera.width, camera.height), interpolation=cv2.INTER_LINEAR)

    def sample(self, rng: np.random.Generator) -> SyntheticSample:
        """One image of a fresh scene (what a training loader calls; the scene is drawn anew every time)."""
        return self.view(self.layout(rng), rng)

    def samples(self, seed: int = 0, *, views_per_scene: int = 1) -> Iterator[SyntheticSample]:
        """An endless stream of samples: ``views_per_scene`` views of each scene (cheaper than new scenes)."""
        rng = np.random.default_rng(seed)
        while True:
            layout = self.layout(rng)
            for _ in range(views_per_scene):
                yield self.view(layout, rng)

    def silhouettes(
        self, objects: Sequence[ObjectModel], poses: Pose, camera: Camera
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full silhouettes of each object alone (GL), also beyond the image border
        (:func:`~meshpose.render.base.full_silhouettes`)."""
        return full_silhouettes(self.gl, objects, poses, camera)

    @staticmethod
    def _contact_shadow(
        rgb: np.ndarray, instance: np.ndarray, n_scene: int, light: Lighting, rng: np.random.Generator
    ) -> np.ndarray:
        """Darken the ground around and under the objects (a soft shadow cast away from the light)."""
        ground = instance == n_scene  # the ground is the last object
        occ = ((instance > 0) & ~ground).astype(np.float32)
        if not occ.any():
            return rgb
        h, w = occ.shape
        # At half resolution: the shadow is blurry anyway, and the blur is 4× cheaper.
        small = cv2.resize(occ, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        d = light.unit_direction
        shift = np.array([-d[0], -d[1]]) * 0.01 * max(h, w)
        M = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], dtype=np.float32)
        small = cv2.warpAffine(small, M, (small.shape[1], small.shape[0]))
        sigma = 0.006 * max(h, w) * rng.uniform(0.6, 1.6)
        shadow = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma), (w, h), interpolation=cv2.INTER_LINEAR)
        strength = rng.uniform(0.15, 0.55)
        factor = 1.0 - strength * np.clip(shadow * 1.5, 0, 1)
        return np.where(ground[..., None], rgb * factor[..., None], rgb)
