"""Preset ``icp``: point-to-plane ICP between the rendered visible surface and the observed depth (RGB-D).

Each outer iteration renders the whole scene (every object of the call at its current pose) into a crop around
one object, takes that object's visible rendered surface (camera-frame points from the rendered depth, with the
renderer's exact normals) and the observed depth points inside the predicted region, and runs Open3D's legacy
(robust, point-to-plane) ICP between the two. Objects are refined one after another, each seeing the
others' current poses. Re-rendering between outer iterations keeps the source surface the one that is visible
at the current pose; the maximum correspondence distance shrinks geometrically from coarse to fine (relative to
the object's diameter).

Region of observed points for object ``i`` (pixels of the observation):

* the rendered visible silhouette of ``i`` at its current pose, dilated by ``region_margin × diameter`` (in
  pixels at the object's depth), since the true silhouette differs from the predicted one by about the pose error;
* intersected with ``obs.mask[i]`` when masks are given;
* minus the pixels where another object of the call is rendered in front (the scene's instance map);
* minus missing depth (``0``);
* minus *occluders*: observed points more than ``occluder_margin × max-correspondence distance`` in front of the
  rendered surface (inside the silhouette) or of the nearest rendered surface (in the dilation ring). Points
  behind the surface are kept: there the object may really be further away, and the correspondence distance and
  the robust kernel reject the background.

Which cloud carries normals: the **rendered** cloud is the ICP *target* (the point-to-plane residual uses target
normals) and the **observed** cloud is the *source*. The rendered normals are exact and free (the renderer
writes them), while normals estimated from a noisy depth map with holes are noisy and wrong at depth
discontinuities, and would cost a neighbour search per point. The direction matters a second time: every
observed point looks for its nearest rendered point, so parts of the rendered surface that the camera does not
see (hidden by an unknown occluder, outside the image, missing depth) simply receive no correspondence and do
not pull the pose. Open3D returns ``T`` with ``T · observed ≈ rendered``; the pose update is therefore
``cam_from_obj ← T⁻¹ · cam_from_obj``. Both clouds are centred on the rendered centroid before ICP so that the
linearised rotation is about the object, not about the camera centre.

Degenerate geometry: point-to-plane leaves a direction free where the seen surface does not constrain it (a
surface of revolution turning about its axis, a box seen on two faces sliding along their edge, or a view where an
occluder hides the constraining part), and Open3D's undamped point-to-plane solver then takes an arbitrary, often
huge, step along it. Three measures:

* The geometric residual gets a weak point-to-point term along the surface (``tangent_weight`` ``ε``): Open3D's
  generalized-ICP estimator with target covariances ``n nᵀ + (I − n nᵀ) / ε`` built from the exact rendered normals
  and zero source covariances, i.e. the whitened residual ``(n·d, √ε·d_tangent)`` — point-to-plane along the
  normal plus a small pull along the surface, which keeps every step finite and meaningful.
  (``tangent_weight=0`` gives Open3D's plain ``TransformationEstimationPointToPlane``.)
* The step is damped along weakly constrained directions, Levenberg-Marquardt style: with ``e_k, u_k`` the
  eigen-pairs of ``Σ JᵀJ``, ``J = [(p × n) / r, n]`` (``r`` = half the diameter; twist ``[r·ω, v]``) over the
  observed part of the rendered surface, the step's component along ``u_k`` is scaled by
  ``e_k / (e_k + damping · e_max)`` — near 1 where the surface constrains the pose, near 0 along a free direction.
* Where the view is degenerate (``e_min / e_max < degenerate_conditioning``), textured, and the schedule has
  reached ``color_max_correspondence``, Open3D's coloured ICP (Park et al. 2017) continues from the damped
  geometric step on observed vs rendered intensity (each normalised to zero mean and unit spread), with a small
  ``color_weight`` so that the texture fixes the free directions while the geometry still decides the others.
  Its result replaces the geometric one only if it moves by at most ``color_max_step_deg`` and fits the surface
  about as well (fitness and point-to-plane RMSE within ``color_min_fitness_ratio`` / ``color_max_rmse_ratio``).
  Well-conditioned views skip it (faster, and free of any shading bias). An untextured surface of revolution
  keeps its rotation about the axis from ``init`` (depth cannot tell it).

Score per object, in ``[0, 1]``, computed at the returned pose from one more render: over the visible rendered
pixels with observed depth, a pixel is *occluded* if the observation lies more than ``τ = score_tolerance ×
diameter`` in front of the rendered surface, and an *inlier* if its point-to-plane residual ``|n · (p_obs −
p_render)|`` is below ``τ``. Then ``score = fitness · (1 − ½ · rmse / τ) · min(1, unoccluded / (½ visible))`` with
``fitness = inliers / unoccluded`` and ``rmse`` the inliers' root-mean-square residual: agreement of the seen
surface, its tightness, and a penalty when less than half of the predicted surface is seen (a pose pushed behind
the true object looks fully "occluded").

Failures never raise: the object outside the image or hidden at its current pose, too few observed points in
the region, or an ICP step that diverges (non-finite, too few correspondences, or a step larger than
``max_step_rot_deg`` / ``max_step_trans``) stop the refinement of that object, keep its last good pose and put a
failure (code and message) into ``RefineInfo.failure``.

Modules: :mod:`~meshpose.refine.icp.config` (options), :mod:`~meshpose.refine.icp.scene` (windows, renders),
:mod:`~meshpose.refine.icp.align` (the Open3D registrations), :mod:`~meshpose.refine.icp.refiner` (the loop and
the score).
"""

from meshpose.refine.icp.config import ICPConfig
from meshpose.refine.icp.refiner import ICPRefiner

__all__ = ["ICPConfig", "ICPRefiner"]
