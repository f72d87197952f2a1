"""Frepa's corruptions: frequency dual-component masking, histogram-equalized masking and the views of a step."""

from frepa_monai.transforms.corruption.array import (
    FREQUENCY,
    IMAGE,
    PAPER_SIZE,
    FrepaCorrupt,
    FrepaViews,
    FrequencyDualMask,
    HistogramEqualizedMask,
    scale_patch_size,
    scale_sigma_ratio,
    size_ratio,
)
from frepa_monai.transforms.corruption.dictionary import FrepaCorruptd, FrequencyDualMaskd, HistogramEqualizedMaskd

__all__ = [
    "FREQUENCY",
    "IMAGE",
    "PAPER_SIZE",
    "size_ratio",
    "scale_patch_size",
    "scale_sigma_ratio",
    "FrequencyDualMask",
    "FrequencyDualMaskd",
    "HistogramEqualizedMask",
    "HistogramEqualizedMaskd",
    "FrepaViews",
    "FrepaCorrupt",
    "FrepaCorruptd",
]
