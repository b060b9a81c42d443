"""The GL context and the shader programs of the renderer (one draw pass, five or three render targets).

Two *shaded* program variants: the ``TEXTURED`` one samples a texture, the other interpolates per-vertex colours.
Both write the shaded colour, object-frame ``xyz``, the camera-frame normal, camera z and the instance id. The
*geometry* program writes only ``xyz``, camera z and the instance id (no colour, normal or lighting): the lean mode
of :meth:`~meshpose.render.gl.GLRenderer.render` for callers that need no more. Its positions, ``xyz`` and camera
z are computed by the same expressions as the shaded programs', so both give the same values bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import moderngl
import numpy as np

from meshpose.render.base import Lighting

__all__ = ["Program", "ProgramSet", "build_programs", "create_context", "set_lighting"]

_VERTEX_SHADER = """
#version 330
uniform mat4 u_clip_from_obj;
in vec3 in_position;
in vec3 in_normal;
#ifdef TEXTURED
in vec2 in_uv;
out vec2 v_uv;
#else
in vec4 in_color;
out vec3 v_color;
#endif
out vec3 v_xyz;
out vec3 v_normal;
void main() {
    v_xyz = in_position;
    v_normal = in_normal;
#ifdef TEXTURED
    v_uv = in_uv;
#else
    v_color = in_color.rgb;
#endif
    gl_Position = u_clip_from_obj * vec4(in_position, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform mat3 u_rotation;      // cam_from_obj rotation
uniform vec3 u_translation;   // cam_from_obj translation, metres
uniform float u_instance;     // 1 + object index
uniform vec3 u_light_dir;     // unit, towards the light, camera frame
uniform vec3 u_light_color;
uniform float u_ambient;
uniform float u_diffuse;
uniform float u_specular;
uniform float u_shininess;
#ifdef TEXTURED
uniform sampler2D u_texture;
uniform vec4 u_tint;
in vec2 v_uv;
#else
in vec3 v_color;
#endif
in vec3 v_xyz;
in vec3 v_normal;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec4 out_xyz;
layout(location = 2) out vec4 out_normal;
layout(location = 3) out float out_depth;
layout(location = 4) out float out_instance;
void main() {
    vec3 p = u_rotation * v_xyz + u_translation;
    vec3 n = normalize(u_rotation * v_normal);
    if (!gl_FrontFacing) {
        n = -n;  // two-sided: show the normal of the side that faces the camera
    }
#ifdef TEXTURED
    vec3 albedo = texture(u_texture, vec2(v_uv.x, 1.0 - v_uv.y)).rgb * u_tint.rgb;
#else
    vec3 albedo = v_color;
#endif
    float ndl = dot(n, u_light_dir);
    vec3 shaded = albedo * (u_ambient + u_diffuse * max(ndl, 0.0));
    if (u_specular > 0.0 && ndl > 0.0) {
        vec3 r = 2.0 * ndl * n - u_light_dir;
        shaded += vec3(u_specular * pow(max(dot(r, normalize(-p)), 1e-20), u_shininess));
    }
    out_color = vec4(clamp(u_light_color * shaded, 0.0, 1.0), 1.0);
    out_xyz = vec4(v_xyz, 1.0);
    out_normal = vec4(n, 0.0);
    out_depth = p.z;
    out_instance = u_instance;
}
"""

_GEOMETRY_VERTEX_SHADER = """
#version 330
uniform mat4 u_clip_from_obj;
in vec3 in_position;
out vec3 v_xyz;
void main() {
    v_xyz = in_position;
    gl_Position = u_clip_from_obj * vec4(in_position, 1.0);
}
"""

_GEOMETRY_FRAGMENT_SHADER = """
#version 330
uniform mat3 u_rotation;      // cam_from_obj rotation
uniform vec3 u_translation;   // cam_from_obj translation, metres
uniform float u_instance;     // 1 + object index
in vec3 v_xyz;
layout(location = 0) out vec4 out_xyz;
layout(location = 1) out float out_depth;
layout(location = 2) out float out_instance;
void main() {
    vec3 p = u_rotation * v_xyz + u_translation;
    out_xyz = vec4(v_xyz, 1.0);
    out_depth = p.z;
    out_instance = u_instance;
}
"""

_PER_DRAW_UNIFORMS = ("u_clip_from_obj", "u_rotation", "u_translation", "u_instance")
_LIGHT_UNIFORMS = ("u_light_dir", "u_light_color", "u_ambient", "u_diffuse", "u_specular", "u_shininess")


@dataclass
class Program:
    """A linked shader variant and its active uniforms (by name)."""

    program: moderngl.Program
    uniforms: dict[str, Any]

    def set(self, name: str, data: bytes) -> None:
        uniform = self.uniforms.get(name)
        if uniform is not None:  # the GLSL compiler may drop uniforms a variant does not use
            uniform.write(data)


@dataclass
class ProgramSet:
    """The renderer's programs: ``shaded`` keyed by ``textured``, and the lean ``geometry`` program."""

    shaded: dict[bool, Program]
    geometry: Program

    def release(self) -> None:
        for prog in (*self.shaded.values(), self.geometry):
            prog.program.release()


def create_context(backend: str | None, device_index: int | None) -> moderngl.Context:
    """A standalone OpenGL 3.3 context.

    Args:
        backend: moderngl/glcontext backend (``"egl"`` for headless; ``None`` for the platform default).
        device_index: EGL device to use (``None``: the default one).

    Raises:
        RuntimeError: no context could be created (e.g. no libEGL).
    """
    settings: dict[str, Any] = {}
    if backend is not None:
        settings["backend"] = backend
    if device_index is not None:
        settings["device_index"] = device_index
    try:
        return moderngl.create_standalone_context(require=330, **settings)
    except Exception as exc:  # glcontext raises plain Exceptions
        raise RuntimeError(
            f"could not create an OpenGL 3.3 context (backend={backend!r}): {exc}. Headless "
            "rendering needs EGL (libEGL, e.g. Mesa's llvmpipe on a CPU)."
        ) from exc


def _link(ctx: moderngl.Context, vertex: str, fragment: str, defines: str = "") -> Program:
    prog = ctx.program(
        vertex_shader=vertex.replace("#version 330\n", "#version 330\n" + defines, 1),
        fragment_shader=fragment.replace("#version 330\n", "#version 330\n" + defines, 1),
    )
    names = _PER_DRAW_UNIFORMS + _LIGHT_UNIFORMS + ("u_texture", "u_tint")
    uniforms: dict[str, Any] = {n: prog[n] for n in names if n in prog}
    if "u_texture" in uniforms:
        uniforms["u_texture"].value = 0
    return Program(prog, uniforms)


def build_programs(ctx: moderngl.Context) -> ProgramSet:
    """Compile both shaded variants and the geometry program in ``ctx``."""
    shaded = {
        textured: _link(ctx, _VERTEX_SHADER, _FRAGMENT_SHADER, "#define TEXTURED\n" if textured else "")
        for textured in (False, True)
    }
    return ProgramSet(shaded, _link(ctx, _GEOMETRY_VERTEX_SHADER, _GEOMETRY_FRAGMENT_SHADER))


def set_lighting(programs: ProgramSet, light: Lighting) -> None:
    """Write the shading parameters of ``light`` into the shaded programs."""
    values = {
        "u_light_dir": light.unit_direction.astype(np.float32).tobytes(),
        "u_light_color": np.asarray(light.color, np.float32).tobytes(),
        "u_ambient": np.float32(light.ambient).tobytes(),
        "u_diffuse": np.float32(light.diffuse).tobytes(),
        "u_specular": np.float32(light.specular).tobytes(),
        "u_shininess": np.float32(light.shininess).tobytes(),
    }
    for prog in programs.shaded.values():
        for name, value in values.items():
            prog.set(name, value)
