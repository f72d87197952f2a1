"""The pass over datalists before training: each check finds what it is for and passes the sample data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import frepa_monai.data as data
from frepa_monai.transforms import AsSpatialDims, AsSpatialDimsd


def test_every_sample_datalist_passes():
    """The self-check: the embedded data the bundles train on passes every check (no false alarm)."""
    for spatial_dims, resize_to in ((2, 128), (3, None)):
        datalist = data.pretrain_datalist(spatial_dims=spatial_dims)
        channels = (1, 3, 4) if spatial_dims == 2 else (1,)
        assert data.check_datalist(datalist, spatial_dims, channels=channels, resize_to=resize_to) is datalist


@pytest.mark.parametrize(
    "name, array, reason",
    [
        ("flat.png", np.full((40, 40), 9, np.uint8), "constant"),
        ("strip.png", np.tile(np.arange(200, dtype=np.uint8), (4, 10)), "smallest side"),
        ("wide.png", np.tile(np.arange(240, dtype=np.uint8), (20, 1)), "aspect ratio 12"),
        ("ok.png", np.tile(np.arange(60, dtype=np.uint8), (40, 1)), None),
    ],
)
def test_each_check_finds_its_problem(tmp_path, name, array, reason):
    Image.fromarray(array).save(tmp_path / name)
    problem = data.check_image(str(tmp_path / name), 2, resize_to=128)
    assert problem is None if reason is None else reason in problem


def test_dimensions_channels_formats_and_truncation(tmp_path):
    volume = np.random.default_rng(0).random((20, 20, 20, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "two.nii.gz")
    assert "2 channels" in data.check_image(str(tmp_path / "two.nii.gz"), 3, channels=(1,))
    nib.save(nib.Nifti1Image(volume[..., 0], np.eye(4)), tmp_path / "vol.nii.gz")
    assert "3 spatial dimensions" in data.check_image(str(tmp_path / "vol.nii.gz"), 2)
    blob = (tmp_path / "vol.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    assert "truncated" in data.check_image(str(tmp_path / "cut.nii.gz"), 3, channels=(1,))
    (tmp_path / "a.png").write_bytes(b"")
    assert ".nii.gz" in data.check_image(str(tmp_path / "a.png"), 3)
    assert data.check_image(str(tmp_path / "none.png"), 2) == "does not exist"


def test_check_datalist_names_every_bad_file_and_check_inputs_keeps_the_good(tmp_path):
    good = data.pretrain_datalist(spatial_dims=2)["test"][:2]
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "flat.png")
    bad = {"image": str(tmp_path / "flat.png"), "window": "none"}
    with pytest.raises(ValueError, match=r"1 file\(s\).*validation: image .*flat.png is constant"):
        data.check_datalist({"training": good, "validation": [bad]}, 2)
    check = data.check_inputs([*good, bad], 2)
    assert [i["image"] for i in check.items] == [i["image"] for i in good]
    assert check.failures[0][0] == bad["image"] and check.summary().startswith("processed 2 of 3 files; 1 failed")
    with pytest.raises(ValueError, match="no input can be processed"):
        data.check_inputs([bad], 2)


def test_as_spatial_dims_drops_only_trailing_singletons():
    assert AsSpatialDims(2)(np.zeros((1, 5, 6, 1))).shape == (1, 5, 6)
    assert AsSpatialDims(2)(np.zeros((1, 5, 6))).shape == (1, 5, 6)
    assert AsSpatialDims(2)(np.zeros((1, 5, 6, 3))).shape == (1, 5, 6, 3)  # a volume stays one
    assert AsSpatialDimsd("image", 2)({"image": np.zeros((3, 4, 4, 1))})["image"].shape == (3, 4, 4)
