"""``contour``: RGB pose refinement from silhouette/region statistics and colour, without learned features.

A render-and-compare optimiser in the spirit of abstract render-and-compare and of the region-based trackers
(PWP3D, RBOT, SRT3D):

* **Crops.** Each object is refined in a square crop camera around its current projection
  (:func:`~meshpose.geometry.crop_box_around_object`), coarse to fine (default 64 px, then 128 px).
* **One render per iteration** (non-differentiable GL; all crops of an iteration in one batched call, from
  render meshes decimated to a few thousand faces). Every object's crop shows the whole scene — the object and
  every other object that may reach into it — so the instance map says who owns each pixel: hidden parts of an
  object give it nothing, and a contour that is an occlusion boundary (another object in front) is not pulled.
* **Region term.** Local foreground/background colour histograms (RBOT-style: per cell of the crop, from the
  image inside the projected silhouette — or inside ``obs.mask`` when given — against a band around it) give a
  per-pixel foreground posterior. Along the normals of the rendered contour, a 1-D search finds where the
  posterior puts the contour (a distribution over offsets: SRT3D's correspondence lines with smoothed step
  functions); each line asks its contour pixel to move by the expected offset, weighted by the inverse variance
  and by a robust (Cauchy) weight of its agreement with the rigid motion that explains the other lines, which
  discounts occluded stretches of contour and background patches in the object's colours.
* **Colour term.** The rendered colour (CIE L*a*b*, blurred; a per-object gain on L* and offsets absorb lighting
  differences; L* weighted down because our shading is only roughly right) is compared with the observed colour
  inside the silhouette, Huber-robust. It pins down what the outline leaves open (rotations of textured objects,
  symmetric outlines, depth from texture scale).
* **Prior.** A Gaussian prior on the departure from the initial pose (MAP estimation). The outline says little
  about depth — a centimetre at a metre changes a 100-pixel silhouette by about a pixel, less than the bias of a
  colour posterior at a real edge — so without it depth wanders; with it, depth moves only as far as the image
  really says.
* **Screen-space gradients (OpenDR style).** Pixel motions ``Δu = J_u δ`` come from projecting the rasterised
  ``xyz`` (object coordinates) under a left-multiplied se(3) increment ``δ`` (centred on the object); the
  derivatives of the rendered quantities come from finite differences (the image gradient of the rendered colour,
  the contour normal from the blurred silhouette). A contour location moves with the owned pixel next to it: the
  background pixel just outside borrows its foreground neighbour's motion (the one-pixel dilation of abstract
  render-and-compare).
* **Optimiser: damped Gauss–Newton on se(3)** (Levenberg–Marquardt damping in the metric of the pixel motions,
  step clamps). Every iteration costs a render, so what matters is converging in a handful of iterations;
  Gauss–Newton steps on these residuals do, where the AdaGrad of the abstract render-and-compare paper takes tens
  to hundreds of steps and a step size per scene scale. Each iterate is ranked with a fixed energy (region energy
  of the silhouette against the posterior + colour energy + prior); a step that makes it clearly worse is taken
  back with more damping, and the pose returned is the best one found at the finest level — the initial pose
  included — never a diverged one.

Several objects of one image are refined jointly: all are rendered together at their current poses in every crop

Modules: :mod:`~meshpose.refine.contour.config` (options), :mod:`~meshpose.refine.contour.terms` (image-space
building blocks: pixel motions, colour models, correspondence lines), :mod:`~meshpose.refine.contour.level` (the
per-object, per-level crops), :mod:`~meshpose.refine.contour.energy` (energies and normal equations of one
rendering), :mod:`~meshpose.refine.contour.run` (the state and loop of one call),
:mod:`~meshpose.refine.contour.refiner` (the preset).
"""

from meshpose.refine.contour.config import ContourConfig
from meshpose.refine.contour.refiner import ContourRefiner

__all__ = ["ContourConfig", "ContourRefiner"]
