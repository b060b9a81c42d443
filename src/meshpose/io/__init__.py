"""File I/O at the boundary: BOP datasets and their ``models_info.json``, BOP results files, images (millimetres →
metres happens here and only here)."""

from meshpose.io.bop import BopDataset, BopFormatError, GtInstance, Target
from meshpose.io.images import ImageError, read_depth, read_mask, read_rgb, write_depth, write_mask, write_rgb
from meshpose.io.models_info import ModelInfo, expand_symmetries, read_models_info
from meshpose.io.results import (
    ResultRow,
    ResultsFormatError,
    group_by_image,
    read_results,
    write_results,
)

__all__ = [
    "BopDataset",
    "BopFormatError",
    "GtInstance",
    "ImageError",
    "ModelInfo",
    "ResultRow",
    "ResultsFormatError",
    "Target",
    "expand_symmetries",
    "group_by_image",
    "read_depth",
    "read_mask",
    "read_models_info",
    "read_results",
    "read_rgb",
    "write_depth",
    "write_mask",
    "write_results",
    "write_rgb",
]
