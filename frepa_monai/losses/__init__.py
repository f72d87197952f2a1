"""Every objective of frepa-monai, one family per module:

- :mod:`.frepa`: Frepa's reconstruction and consistency losses (paper 3.2, Eq. 7-11) and ``FrepaLoss``;
- :mod:`.baselines`: the objectives of the MAE and MFM baselines;
- :mod:`.detection`: GIoU + objectness of the detection bundles.
"""

from frepa_monai.losses.baselines import MaskedFrequencyL1Loss, MaskedPatchMSELoss, patch_to_pixel_mask
from frepa_monai.losses.detection import DetectionLoss, giou_loss
from frepa_monai.losses.frepa import (
    EmbeddingConsistencyLoss,
    FocalFrequencyLoss,
    FrepaLoss,
    GradientLoss,
    HierarchicalFrequencyLoss,
    MaskedRMSELoss,
)

__all__ = [
    "MaskedRMSELoss",
    "GradientLoss",
    "HierarchicalFrequencyLoss",
    "FocalFrequencyLoss",
    "EmbeddingConsistencyLoss",
    "FrepaLoss",
    "patch_to_pixel_mask",
    "MaskedPatchMSELoss",
    "MaskedFrequencyL1Loss",
    "giou_loss",
    "DetectionLoss",
]
