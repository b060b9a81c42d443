"""``abstract``: render-and-compare in a learned descriptor space, all objects of an image refined jointly.

After *Refining 6D Object Pose Predictions using Abstract Render-and-Compare* (Kask et al.):

* **Descriptors.** A small encoder–decoder (:mod:`meshpose.nets.descriptor`, trained by ``meshpose train
  abstract`` on generated objects, self-supervised from pixel correspondences) maps an image to dense
  descriptors that keep what identifies a surface point and drop lighting, shadows and baked-in shading; the
  background maps to ``0``.
* **Fusion onto the mesh** (:mod:`~meshpose.refine.abstract.fusion`, :mod:`~meshpose.refine.abstract.field`):
  ~50 views of the mesh rendered all around it, their descriptors averaged in a voxel grid in the object frame
  (~5000 voxels); vertices — and, for rendering, every surface point — get the inverse-distance-weighted
  descriptor of the 4 nearest voxels. Cached on disk per mesh content and network.
* **LightDR** (:mod:`~meshpose.refine.abstract.lightdr`): the GL renderer draws all objects of a crop in one pass
  and the descriptor image follows from the rasterised object coordinates; the gradient of the blurred descriptor
  difference with respect to each pose comes from screen-space image gradients (OpenDR style) with the one-pixel
  dilation of every silhouette and occlusion boundaries given to the front object by the z-buffer. The pixel
  motions and the crop geometry are ``contour``'s (:mod:`meshpose.refine.contour`).
* **Optimiser** (:mod:`~meshpose.refine.abstract.run`): AdaGrad on all poses of the image jointly, coarse to fine
  crops, the best pose per object kept.
"""

from meshpose.refine.abstract.config import AbstractConfig
from meshpose.refine.abstract.refiner import AbstractRefiner

__all__ = ["AbstractConfig", "AbstractRefiner"]
