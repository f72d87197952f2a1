"""Shared fixtures: real images from the package's sample data, loaded once per test session."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import LoadImage, ScaleIntensity

from frepa_monai.data import pretrain_3d_datalist, vessel_segmentation_datalist


def _load(path: str) -> torch.Tensor:
    return torch.as_tensor(LoadImage(image_only=True, ensure_channel_first=True)(path)).float()


@pytest.fixture(scope="session")
def fundus():
    """A CHASE_DB1 fundus photo ``(3, H, W)`` in [0, 1], its vessel mask and its field-of-view mask ``(H, W)``."""
    item = vessel_segmentation_datalist()["training"][0]
    image = ScaleIntensity()(_load(item["image"]))
    label = _load(item["label"])[0] > 0
    fov = _load(item["mask"])[0] > 0
    return image.as_tensor() if hasattr(image, "as_tensor") else image, label, fov


@pytest.fixture(scope="session")
def volume():
    """A real 3D volume ``(1, H, W, D)`` of the 3D pretraining set, scaled to [0, 1]."""
    item = pretrain_3d_datalist()["training"][0]
    image = ScaleIntensity()(_load(item["image"]))
    return image.as_tensor() if hasattr(image, "as_tensor") else image
