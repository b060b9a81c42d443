"""``picopose``: coarse pose of a novel object from a detection, by template matching, a 2D similarity, local
offsets and PnP-RANSAC (:mod:`meshpose.coarse.picopose.estimator`)."""

from meshpose.coarse.picopose.estimator import PicoPoseConfig, PicoPoseEstimator

__all__ = ["PicoPoseConfig", "PicoPoseEstimator"]
