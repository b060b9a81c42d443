"""Geometry: SE(3)/SO(3) helpers over roma, projection, crops, PnP, rigid alignment and symmetry expansion.

Units are metres and pixels; cameras are OpenCV pinholes; poses are ``cam_from_obj`` (see ``DESIGN.md``).
Importing this package does no work beyond importing its dependencies.
"""

from meshpose.geometry.align import kabsch, ransac_rigid
from meshpose.geometry.crop import (
    crop_box_around_object,
    crop_cameras,
    crop_image,
    crop_images,
    object_box,
    square_crop_box,
)
from meshpose.geometry.lie import (
    perturb_pose,
    random_rotations,
    random_unit_vectors,
    rotation_about_axis,
    rotation_angle,
    se3_exp,
    se3_log,
    skew,
)
from meshpose.geometry.pnp import PnPResult, gauss_newton_pnp, pnp_ransac, poselib_available
from meshpose.geometry.projection import (
    depth_to_points,
    pixel_grid,
    project,
    project_object_points,
    unproject,
)
from meshpose.geometry.symmetry import continuous_steps, symmetry_transforms_from_lists

__all__ = [
    "PnPResult",
    "continuous_steps",
    "crop_box_around_object",
    "crop_cameras",
    "crop_image",
    "crop_images",
    "depth_to_points",
    "gauss_newton_pnp",
    "kabsch",
    "object_box",
    "perturb_pose",
    "pixel_grid",
    "pnp_ransac",
    "poselib_available",
    "project",
    "project_object_points",
    "random_rotations",
    "random_unit_vectors",
    "ransac_rigid",
    "rotation_about_axis",
    "rotation_angle",
    "se3_exp",
    "se3_log",
    "skew",
    "square_crop_box",
    "symmetry_transforms_from_lists",
    "unproject",
]
