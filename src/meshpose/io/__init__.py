"""File I/O at the boundary: BOP datasets, BOP results files, images (millimetres → metres happens here)."""

from meshpose.io.bop import BopDataset, BopFormatError, GtInstance, Target
from meshpose.io.images import ImageError, read_depth, read_mask, read_rgb, write_depth, write_mask, write_rgb
from meshpose.io.results import (
    FailureLog,
    ResultRow,
    ResultsFormatError,
    ResultsWriter,
    group_by_image,
    read_results,
    write_results,
)

__all__ = [
    "BopDataset",
    "BopFormatError",
    "FailureLog",
    "GtInstance",
    "ImageError",
    "ResultRow",
    "ResultsFormatError",
    "ResultsWriter",
    "Target",
    "group_by_image",
    "read_depth",
    "read_mask",
    "read_results",
    "read_rgb",
    "write_depth",
    "write_mask",
    "write_results",
    "write_rgb",
]
