"""Meshes: loading (any format trimesh reads, with textures or vertex colours, in metres), decimation for
rendering, surface sampling, exact diameters, :class:`~meshpose.types.ObjectModel` construction with a load
cache, and procedural textured test objects."""

from meshpose.mesh.diameter import render_bounding_sphere
from meshpose.mesh.load import MeshError, load_mesh
from meshpose.mesh.model import clear_cache, light_model, load_object_model, make_object_model, validate_symmetries
from meshpose.mesh.procedural import (
    example_mesh,
    example_object,
    outer_surface_points,
    texture_pattern,
    textured_box,
    vertex_colored_mesh,
)
from meshpose.mesh.sample import mesh_diameter, sample_surface_points, surface_colors, texture_image
from meshpose.mesh.simplify import simplify_mesh

__all__ = [
    "MeshError",
    "clear_cache",
    "example_mesh",
    "example_object",
    "light_model",
    "load_mesh",
    "load_object_model",
    "make_object_model",
    "mesh_diameter",
    "outer_surface_points",
    "render_bounding_sphere",
    "sample_surface_points",
    "simplify_mesh",
    "surface_colors",
    "texture_image",
    "texture_pattern",
    "textured_box",
    "validate_symmetries",
    "vertex_colored_mesh",
]
