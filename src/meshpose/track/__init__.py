"""Tracking objects through video with any refiner: :class:`Tracker` keeps the state across frames.

* :mod:`~meshpose.track.motion` — the constant-velocity motion model on se(3) (:class:`ConstantVelocity`);
* :mod:`~meshpose.track.matches` — the prediction from feature matches with the previous frame
  (:func:`predict_from_matches`, :class:`MatchConfig`): for large motion between frames;
* :mod:`~meshpose.track.tracker` — :class:`Tracker` (predict, refine jointly, lost-track detection, recovery from
  detections or by a wider search, tracked poses checked against and fitted to detections), :class:`TrackerConfig`;
* :mod:`~meshpose.track.result` — :class:`TrackResult` (a track's outcome in a frame) and :func:`check_frame`;
* :mod:`~meshpose.track.presets` — the ``--fast`` configuration.

A dataset run (``meshpose track``) is :func:`meshpose.run.track.track_dataset`.
"""

from meshpose.track.matches import (
    FrameFeatures,
    MatchConfig,
    MatchPrediction,
    MatchPredictor,
    detect_features,
    predict_from_matches,
)
from meshpose.track.motion import ConstantVelocity, MotionConfig
from meshpose.track.presets import FAST_CONTOUR, FAST_TRACKER, fast_refiner_options, fast_tracker_options
from meshpose.track.result import TrackResult, TrackStatus, check_frame
from meshpose.track.tracker import Tracker, TrackerConfig

__all__ = [
    "FAST_CONTOUR",
    "FAST_TRACKER",
    "ConstantVelocity",
    "FrameFeatures",
    "MatchConfig",
    "MatchPrediction",
    "MatchPredictor",
    "MotionConfig",
    "TrackResult",
    "TrackStatus",
    "Tracker",
    "TrackerConfig",
    "check_frame",
    "detect_features",
    "fast_refiner_options",
    "fast_tracker_options",
    "predict_from_matches",
]
