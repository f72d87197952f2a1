"""Intensity transforms: the Gaussian high-pass of paper Fig. 1a, per-modality scaling, channels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from frepa_monai.frequency import squared_frequency_distance
from frepa_monai.transforms import (
    AsChannels,
    AsChannelsd,
    GaussianHighPass,
    GaussianHighPassd,
    ScaleIntensityByModality,
    ScaleIntensityByModalityd,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftn(x.double(), dim=tuple(range(2, x.ndim)))


def cosine(shape, k: int) -> torch.Tensor:
    """``cos(2 pi k x / W)`` along the last axis of a ``(C, H, W)`` image: one frequency at distance ``k``."""
    x = torch.arange(shape[-1], dtype=torch.float64)
    return torch.cos(2 * math.pi * k * x / shape[-1]).expand(*shape).clone()


@pytest.mark.parametrize("k", [1, 3, 10, 31])
def test_highpass_scales_a_tone_by_the_gaussian_transfer_function(k):
    n, cutoff_ratio = 64, 0.1  # d_c = 6.4 frequency-index units
    tone = cosine((1, n, n), k)
    out = GaussianHighPass(cutoff_ratio, keep_mean=False)(tone)
    gain = 1 - math.exp(-(k**2) / (cutoff_ratio * n) ** 2)
    torch.testing.assert_close(out, gain * tone, atol=1e-6, rtol=0)


def test_highpass_removes_low_frequencies_of_a_real_image_and_keeps_its_mean(fundus):
    image = fundus[0][:, :256, :256].contiguous()
    out = GaussianHighPass(0.05)(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    torch.testing.assert_close(out.mean(dim=(1, 2)), image.mean(dim=(1, 2)), atol=1e-5, rtol=0)
    f_in, f_out = spectrum(image[None])[0], spectrum(out[None])[0]
    d = squared_frequency_distance((256, 256)).sqrt()
    low = (d > 0) & (d <= 2)  # H <= 1 - exp(-4 / 12.8^2) = 0.024
    high = d >= 40  # H >= 1 - exp(-1600 / 163.8) = 0.99994
    assert f_out[:, low].abs().sum() < 0.03 * f_in[:, low].abs().sum()
    torch.testing.assert_close(f_out[:, high], f_in[:, high], atol=1e-3, rtol=1e-3)
    plain = GaussianHighPass(0.05, keep_mean=False)(image)
    assert plain.mean(dim=(1, 2)).abs().max() < 1e-5
    torch.testing.assert_close(out - plain, image.mean(dim=(1, 2), keepdim=True).expand_as(out), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_highpass_batches_types_and_dictionary_twin(device):
    batch = torch.rand(2, 3, 32, 40, device=device)
    f = GaussianHighPass(0.1, spatial_dims=2)
    out = f(batch)
    assert out.device == batch.device and out.shape == batch.shape
    torch.testing.assert_close(out[1], GaussianHighPass(0.1)(batch[1]))
    volume = torch.rand(1, 16, 16, 16, device=device).double()
    assert GaussianHighPass(0.1)(volume).dtype == torch.float64
    numpy_out = GaussianHighPass(0.1)(batch[0].cpu().numpy())
    assert isinstance(numpy_out, np.ndarray)
    np.testing.assert_allclose(numpy_out, out[0].cpu().numpy(), atol=1e-5)
    d = GaussianHighPassd(keys="image", cutoff_ratio=0.1)({"image": batch[0], "label": 1})
    torch.testing.assert_close(d["image"], out[0])
    assert d["label"] == 1


def test_highpass_rejects_bad_cutoffs_and_names_the_file_with_nan():
    with pytest.raises(ValueError, match="cutoff_ratio"):
        GaussianHighPass(0.0)
    image = MetaTensor(torch.full((1, 8, 8), float("nan")), meta={"filename_or_obj": "slice_07.nii.gz"})
    with pytest.raises(ValueError, match="key 'image'.*slice_07.nii.gz.*NaN"):
        GaussianHighPassd("image", 0.1)({"image": image})


def test_as_channels_repeats_grey_and_keeps_the_first_channels():
    grey = torch.rand(1, 8, 8)
    rgb = AsChannels(3)(grey)
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[2]) and torch.equal(rgb[1], grey[0])
    rgba = np.random.default_rng(0).random((4, 8, 8))
    assert np.array_equal(AsChannels(3)(rgba), rgba[:3])
    d = AsChannelsd("image", channels=3)({"image": grey})
    assert d["image"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="2 channels"):
        AsChannels(3)(torch.rand(2, 8, 8))


def test_scale_by_modality_windows_ct_and_clips_percentiles_elsewhere():
    ct = torch.tensor([[[-1200.0, -1000.0, -300.0, 400.0, 900.0]]])
    scaled = ScaleIntensityByModality()(ct, window="lung")
    torch.testing.assert_close(scaled, torch.tensor([[[0.0, 0.0, 0.5, 1.0, 1.0]]]))
    mr = torch.arange(1000.0).reshape(1, 10, 100)
    out = ScaleIntensityByModalityd("image")({"image": mr, "window": "none"})["image"]
    assert out.min() == 0.0 and out.max() == 1.0 and 0.45 < out.median() < 0.55
    with pytest.raises(ValueError, match="unknown CT window 'liver' under key 'window'"):
        ScaleIntensityByModalityd("image")({"image": mr, "window": "liver"})
