"""Label checks of the downstream bundles, on real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from frepa_monai.transforms import (
    ValidateLabel,
    ValidateLabeld,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _loaded(array: np.ndarray, path, tmp_path):
    """``array`` written as a real NIfTI file and read back with MONAI (a MetaTensor that knows its file)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / path))
    return LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / path))


def test_validate_label_names_the_file_and_the_undeclared_classes(tmp_path):
    good = _loaded(np.array([[0, 1], [2, 1]], dtype=np.uint8), "good.nii.gz", tmp_path)
    assert ValidateLabel(3)(good) is good
    with pytest.raises(ValueError, match=r"bad\.nii\.gz' holds classes \[255\].*declares 2 classes"):
        ValidateLabel(2)(_loaded(np.array([[0, 255]], dtype=np.uint8), "bad.nii.gz", tmp_path))
    with pytest.raises(ValueError, match=r"frac\.nii\.gz' holds non-integer values"):
        ValidateLabel(2)(_loaded(np.array([[0.0, 0.5]], dtype=np.float32), "frac.nii.gz", tmp_path))
    with pytest.raises(ValueError, match=r"holds classes \[-1\]"):
        ValidateLabel(2)(torch.tensor([[[0, -1]]]))
    with pytest.raises(ValueError, match="expected one channel"):
        ValidateLabel(2)(torch.zeros(3, 4, 4))


def test_validate_labeld_checks_the_size_against_the_image(tmp_path):
    image = _loaded(np.zeros((6, 5), dtype=np.float32), "img.nii.gz", tmp_path)
    label = _loaded(np.zeros((6, 4), dtype=np.uint8), "lab.nii.gz", tmp_path)
    with pytest.raises(
        ValueError, match=r"lab\.nii\.gz' has spatial size \(6, 4\) but its image '.*img\.nii\.gz' has \(6, 5\)"
    ):
        ValidateLabeld("label", num_classes=2)({"image": image, "label": label})
    out = ValidateLabeld("label", num_classes=2, image_key=None)({"image": image, "label": label})
    assert out["label"] is label
