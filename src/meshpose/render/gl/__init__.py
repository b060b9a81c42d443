"""Rasterising renderer: moderngl on EGL (Mesa llvmpipe on a CPU, the real GPU where there is one).

One draw pass with five render targets writes, per pixel, the shaded colour, the object-frame coordinates of
the visible surface (``xyz``), the camera-frame normal, the camera z-depth and the instance id; the mask is
``instance > 0``. A batch of ``B`` scenes (hypotheses), each with its own camera, is drawn into one tall atlas
framebuffer — scene ``b`` in rows ``[b H, (b + 1) H)`` through its own viewport — and read back once, so the
read-back memory already has the layout ``(B, H, W, C)``. A caller that needs only some images asks for them
(``outputs``): only those are read back, and geometry alone (``xyz``, depth, instance, mask) is drawn by a program
without colour, normals or lighting into three targets (about a third less time on llvmpipe), bit for bit the same.

Projection: the GL projection is built from ``K`` (see :func:`opencv_projection`) so that a camera-frame point
lands exactly where OpenCV projects it, with pixel ``(u, v)`` the centre of column ``u`` and row ``v`` and row 0
at the top of the returned images (no flip). ``xyz`` and depth are interpolated perspective-correctly, so the
depth of a covered pixel is that of the surface point seen through the pixel centre (float32; near an occluding
contour or on a surface seen edge-on, GL's 1/256-pixel vertex snapping may shift what a pixel centre sees).

Speed (this is the hot path of every refiner): GPU buffers are cached per mesh object; closed, consistently
wound meshes seen from outside are drawn with back-face culling (exact, see ``cull_closed``); the atlas is only
cleared where the previous pass drew; and returned arrays live in recycled memory (see ``reuse_output_memory``).

The EGL context is created on the first :meth:`GLRenderer.render` call, never at import. A renderer belongs to the
thread (and process) that first renders with it; :func:`get_default_renderer` hands out one per thread and
process.

Modules: :mod:`~meshpose.render.gl.renderer` (the :class:`GLRenderer` class, :func:`get_default_renderer`),
:mod:`~meshpose.render.gl.programs` (context and shaders), :mod:`~meshpose.render.gl.meshes` (mesh upload and
cache), :mod:`~meshpose.render.gl.atlas` (batched drawing of ``B`` scenes), :mod:`~meshpose.render.gl.projection`
(projection matrix, near/far, footprints), :mod:`~meshpose.render.gl.memory` (recycled output memory).
"""

from meshpose.render.gl.projection import opencv_projection
from meshpose.render.gl.renderer import GLRenderer, get_default_renderer

__all__ = ["GLRenderer", "get_default_renderer", "opencv_projection"]
