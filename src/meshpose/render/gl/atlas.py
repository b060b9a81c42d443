"""Batched drawing: ``B`` scenes (e.g. crops, each with its own camera) as tiles of one tall framebuffer.

Scene ``b`` is drawn into rows ``[b H, (b + 1) H)`` of the atlas through its own viewport and scissor, so one
read-back has the layout ``(B, H, W, C)``. Only the rectangles the previous pass drew into are cleared.

An atlas has the targets of one program kind: the shaded programs' five (colour, ``xyz``, normal, camera z,
instance: :data:`SHADED_TARGETS`) or the geometry program's three (:data:`GEOMETRY_TARGETS`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import moderngl
import numpy as np

from meshpose.render.gl.meshes import GpuMesh
from meshpose.render.gl.programs import Program

__all__ = ["GEOMETRY_TARGETS", "SHADED_TARGETS", "Atlas", "DrawPlan", "clear_dirty", "draw_tiles", "get_atlas"]

SHADED_TARGETS: tuple[str, ...] = ("rgb", "xyz", "normal", "depth", "instance")
"""The colour attachments of a shaded atlas, in attachment order."""
GEOMETRY_TARGETS: tuple[str, ...] = ("xyz", "depth", "instance")
"""The colour attachments of a geometry atlas, in attachment order."""

_TARGET_FORMAT = {"rgb": (4, "f1"), "xyz": (4, "f4"), "normal": (4, "f4"), "depth": (1, "f4"), "instance": (1, "f4")}


@dataclass
class DrawPlan:
    """Per (scene, object) draw data: ``(B, N, ...)`` float32 column-major matrices and flags."""

    clip_from_obj: np.ndarray  # (B, N, 4, 4)
    rotation: np.ndarray  # (B, N, 3, 3)
    translation: np.ndarray  # (B, N, 3)
    visible: np.ndarray  # (B, N) bool
    cull: np.ndarray  # (B, N) int: +1 cull back faces, -1 cull front faces, 0 draw both
    footprint: np.ndarray  # (B, 4) int pixel box (x0, y0, x1, y1), end-exclusive, that holds every fragment


@dataclass
class Atlas:
    """A framebuffer holding ``capacity`` tiles of ``width × height`` stacked vertically.

    Outside ``dirty`` (rectangles ``(x, y, w, h)`` drawn into by the last pass; ``None``: unknown) it holds
    the background, so the next pass only clears those rectangles: clearing a whole 640×480 frame with its five
    targets costs more than drawing a typical object into it. ``targets`` names the colour attachments in order.
    """

    def attachment(self, name: str) -> int:
        """The colour attachment index of target ``name``."""
        return self.targets.index(name)

    fbo: moderngl.Framebuffer
    attachments: list[moderngl.Renderbuffer]
    capacity: int
    targets: tuple[str, ...]
    dirty: list[tuple[int, int, int, int]] | None = None

    def release(self) -> None:
        self.fbo.release()
        for a in self.attachments:
            a.release()


def get_atlas(
    ctx: moderngl.Context,
    atlases: OrderedDict[tuple[int, int, bool], Atlas],
    width: int,
    height: int,
    tiles: int,
    max_height: int,
    geometry: bool = False,
) -> Atlas:
    """An atlas of ``width × height`` tiles holding at least ``tiles`` of them, from ``atlases`` or new.

    ``geometry`` chooses the targets of the geometry program (else those of the shaded ones).

    A new atlas holds the next power of two of tiles, within ``max_height`` pixels (but at least ``tiles``);
    ``atlases`` keeps the 4 most recently used sizes (the others are released).
    """
    key = (width, height, geometry)
    atlas = atlases.get(key)
    if atlas is not None and atlas.capacity >= tiles:
        atlases.move_to_end(key)
        return atlas
    if atlas is not None:
        atlas.release()
        del atlases[key]
    capacity = 1
    while capacity < tiles:
        capacity *= 2
    capacity = max(tiles, min(capacity, max_height // height))
    size = (width, capacity * height)
    targets = GEOMETRY_TARGETS if geometry else SHADED_TARGETS
    attachments = [ctx.renderbuffer(size, _TARGET_FORMAT[n][0], dtype=_TARGET_FORMAT[n][1]) for n in targets]
    depth = ctx.depth_renderbuffer(size)
    fbo = ctx.framebuffer(attachments, depth)
    atlas = Atlas(fbo, [*attachments, depth], capacity, targets)
    atlases[key] = atlas
    while len(atlases) > 4:
        _, old = atlases.popitem(last=False)
        old.release()
    return atlas


def draw_tiles(
    ctx: moderngl.Context,
    atlas: Atlas,
    meshes: list[GpuMesh],
    plan: DrawPlan,
    first: int,
    last: int,
    width: int,
    height: int,
    geometry: Program | None = None,
) -> None:
    """Draw scenes ``first .. last - 1`` into consecutive tiles of the atlas and wait until done.

    With ``geometry`` (the geometry program; the atlas must have its targets) every mesh is drawn with it instead
    of its shaded program.
    """
    ctx.enable_only(moderngl.DEPTH_TEST)
    ctx.depth_func = "<"
    ctx.front_face = "cw"  # opencv_projection mirrors y: clockwise on screen = the winding's front side
    atlas.fbo.use()
    clear_dirty(atlas, width, height)
    dirty = []
    for b in range(first, last):
        x0, y0, x1, y1 = (int(v) for v in plan.footprint[b])
        if x1 > x0 and y1 > y0:
            dirty.append((x0, (b - first) * height + y0, x1 - x0, y1 - y0))
        tile = (0, (b - first) * height, width, height)
        ctx.viewport = tile
        ctx.scissor = tile
        for n, mesh in enumerate(meshes):
            if not plan.visible[b, n]:
                continue
            prog = mesh.program if geometry is None else geometry
            prog.set("u_clip_from_obj", plan.clip_from_obj[b, n].tobytes())
            prog.set("u_rotation", plan.rotation[b, n].tobytes())
            prog.set("u_translation", plan.translation[b, n].tobytes())
            prog.set("u_instance", np.float32(n + 1).tobytes())
            if mesh.texture is not None and geometry is None:
                prog.set("u_tint", mesh.tint)
                mesh.texture.use(0)
            if plan.cull[b, n]:
                ctx.enable(moderngl.CULL_FACE)
                ctx.cull_face = "back" if plan.cull[b, n] > 0 else "front"
            else:
                ctx.disable(moderngl.CULL_FACE)
            (mesh.vao if geometry is None else mesh.geometry_vao).render(moderngl.TRIANGLES)
    ctx.scissor = None
    atlas.dirty = dirty
    ctx.finish()


def clear_dirty(atlas: Atlas, width: int, height: int) -> None:
    """Restore the background (colour 0, depth 1) where the last pass drew: per rectangle, or in one go."""
    fbo = atlas.fbo
    if atlas.dirty is None:
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=(0, 0, width, atlas.capacity * height))
        return
    if not atlas.dirty:
        return
    rects = np.array(atlas.dirty)
    x0, y0 = rects[:, 0].min(), rects[:, 1].min()
    x1, y1 = (rects[:, 0] + rects[:, 2]).max(), (rects[:, 1] + rects[:, 3]).max()
    union = (x1 - x0) * (y1 - y0)
    if len(rects) > 8 or (rects[:, 2] * rects[:, 3]).sum() > 0.5 * union:
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=(int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    else:
        for rect in atlas.dirty:
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=rect)
