"""Frepa's MONAI transforms, grouped by concern (channel-first, torch on any device or numpy, array transforms
with their ``...d`` dictionary twins):

- :mod:`.corruption`: the pretraining corruptions (paper 3.1 and 3.2): ``FrequencyDualMask``,
  ``HistogramEqualizedMask``, ``FrepaCorrupt`` and their twins;
- :mod:`.hessian`: the Hessian ridge channel of the encoder input (paper Eq. 6): ``HessianFilter``;
- :mod:`.intensity`: normalisation per modality (paper 4), the Gaussian high-pass of Fig. 1a, the channel layout;
- :mod:`.labels`: label checks of the downstream bundles;
- :mod:`.spatial`: a DICOM slice, loaded one voxel deep, as the 2D image it is;
- :mod:`.detection`: detection box targets and outputs in the input file's coordinates.

Everything is importable from ``frepa_monai.transforms``, so configs name ``frepa_monai.transforms.<Name>``.
"""

from frepa_monai.transforms.corruption import (
    FREQUENCY,
    IMAGE,
    PAPER_SIZE,
    FrepaCorrupt,
    FrepaCorruptd,
    FrepaViews,
    FrequencyDualMask,
    FrequencyDualMaskd,
    HistogramEqualizedMask,
    HistogramEqualizedMaskd,
    scale_patch_size,
    scale_sigma_ratio,
    size_ratio,
)
from frepa_monai.transforms.detection import (
    DetectionBoxToOriginald,
    MaskToBox,
    MaskToBoxd,
    SaveBoxJSONd,
    original_grid_box,
)
from frepa_monai.transforms.hessian import HessianFilter, HessianFilterd
from frepa_monai.transforms.intensity import (
    CT_WINDOWS,
    AsChannels,
    AsChannelsd,
    GaussianHighPass,
    GaussianHighPassd,
    ScaleIntensityByModality,
    ScaleIntensityByModalityd,
)
from frepa_monai.transforms.labels import ValidateLabel, ValidateLabeld
from frepa_monai.transforms.spatial import AsSpatialDims, AsSpatialDimsd
from frepa_monai.transforms.utils import seeded_generator

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
    "HessianFilter",
    "HessianFilterd",
    "CT_WINDOWS",
    "ScaleIntensityByModality",
    "ScaleIntensityByModalityd",
    "GaussianHighPass",
    "GaussianHighPassd",
    "AsChannels",
    "AsChannelsd",
    "ValidateLabel",
    "ValidateLabeld",
    "AsSpatialDims",
    "AsSpatialDimsd",
    "MaskToBox",
    "MaskToBoxd",
    "original_grid_box",
    "DetectionBoxToOriginald",
    "SaveBoxJSONd",
    "seeded_generator",
]
