"""Renderers: draw objects at poses into cameras; colour, depth, mask, xyz, normals and instance ids.

* :class:`GLRenderer` — moderngl on EGL, one pass, batched over hypotheses (the one methods use);
  :func:`get_default_renderer` shares one per process and thread.
* :class:`RaycastRenderer` — embree reference, for tests.

Nothing here creates a GL context or touches a device at import time.
"""

from meshpose.render.base import (
    DEFAULT_COLOR,
    Lighting,
    Renderer,
    RenderOutput,
    SurfaceData,
    corner_normals,
    normalize_scene_batch,
    surface_data,
)
from meshpose.render.gl import GLRenderer, get_default_renderer, opencv_projection
from meshpose.render.raycast import RaycastRenderer, pixel_rays, shade

__all__ = [
    "DEFAULT_COLOR",
    "GLRenderer",
    "Lighting",
    "RaycastRenderer",
    "RenderOutput",
    "Renderer",
    "SurfaceData",
    "corner_normals",
    "get_default_renderer",
    "normalize_scene_batch",
    "opencv_projection",
    "pixel_rays",
    "shade",
    "surface_data",
]
