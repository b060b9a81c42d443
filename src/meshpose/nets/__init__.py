"""Torch modules shared by the learned refiners: encoders, correlation pyramids, recurrent update blocks, models.

Pure torch (no I/O, no rendering, nothing at import time). ``genflow`` is built from:

* :mod:`meshpose.nets.encoder` — residual CNN encoders to 1/8 resolution (feature and context);
* :mod:`meshpose.nets.corr` — the all-pairs correlation pyramid (RAFT) and its windowed lookup;
* :mod:`meshpose.nets.update` — motion encoder + convolutional GRU + flow and confidence heads;
* :mod:`meshpose.nets.genflow` — the model: recurrent flow whose every step goes through a weighted
  differentiable PnP, so the flow stays the one induced by a rigid motion of the known 3D shape.
"""
