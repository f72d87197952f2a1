"""Intensity transforms: the paper's normalisation per modality (paper 4), the Gaussian high-pass corruption of
test images (paper Fig. 1a), and the channel layout the 2D encoders take.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform
from monai.utils import TransformBackends, convert_to_tensor

from frepa_monai.frequency import filter_bank, gaussian_highpass
from frepa_monai.transforms.utils import as_batch, check_finite, named, restore, source_of

__all__ = [
    "CT_WINDOWS",
    "ScaleIntensityByModality",
    "ScaleIntensityByModalityd",
    "GaussianHighPass",
    "GaussianHighPassd",
    "AsChannels",
    "AsChannelsd",
]

CT_WINDOWS = {"lung": (-1000.0, 400.0), "abdomen": (-160.0, 240.0), "brain": (-30.0, 90.0), "bone": (-300.0, 1200.0)}
"""CT windows of the paper (Hounsfield units), rescaled to [0, 1] with clipping."""


class ScaleIntensityByModality(Transform):
    """Rescale an image to [0, 1] by the rule of its modality (paper 4): a CT window, or percentile clipping.

    ``window`` (given per call) names a CT window of :data:`CT_WINDOWS` (or ``windows``): MONAI's
    ``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)``; ``"none"`` (MR, X-ray, photographs...):
    ``ScaleIntensityRangePercentiles(lower, upper, 0, 1, clip=True)``. An unknown window name, or an image with NaN
    or Inf, raises a ``ValueError`` (naming the file for loaded images).

    Args:
        windows: window name -> ``(a_min, a_max)``; default :data:`CT_WINDOWS`.
        lower, upper: percentiles of the other modalities.
    """

    def __init__(
        self, windows: Mapping[str, Sequence[float]] | None = None, lower: float = 0.5, upper: float = 99.5
    ) -> None:
        windows = CT_WINDOWS if windows is None else windows
        self.windows = {
            name: ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True) for name, (a_min, a_max) in windows.items()
        }
        self.percentiles = ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=True)

    def knows(self, window: str) -> bool:
        """Whether ``window`` names a rule: one of the CT windows, or ``none`` (also ``""``)."""
        return str(window).lower() in (*self.windows, "none", "")

    def __call__(self, img: NdarrayOrTensor, window: str = "none", name: str = "image") -> NdarrayOrTensor:
        window = str(window).lower()
        if not self.knows(window):
            raise ValueError(f"unknown CT window '{window}'; known: {sorted(self.windows)}.")
        image = convert_to_tensor(img, track_meta=False)
        check_finite(image if torch.is_floating_point(image) else image.float(), name, source_of(img))
        return self.windows.get(window, self.percentiles)(img)


class ScaleIntensityByModalityd(MapTransform):
    """Dictionary twin of :class:`ScaleIntensityByModality`: the window is read from each item, so a datalist mixing
    CT and MR / X-ray / photographs is normalised item by item.

    Args:
        keys: images to rescale.
        window_key: item key naming the CT window (the sample datalists' ``"window"``; a missing key is ``none``).
        windows, lower, upper: see :class:`ScaleIntensityByModality`.
        allow_missing_keys: skip keys that are not in the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        window_key: str = "window",
        windows: Mapping[str, Sequence[float]] | None = None,
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window_key = window_key
        self.scale = ScaleIntensityByModality(windows, lower, upper)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        window = str(d.get(self.window_key, "none")).lower()
        if not self.scale.knows(window):
            raise ValueError(
                f"unknown CT window '{window}' under key '{self.window_key}'; known: {sorted(self.scale.windows)}."
            )
        for key in self.key_iterator(d):
            d[key] = self.scale(d[key], window, name=f"key '{key}'")
        return d


class GaussianHighPass(Transform):
    """Remove the low frequencies of an image with the Gaussian high-pass ``H(d) = 1 - exp(-d^2 / d_c^2)``.

    ``d`` is the distance of a spectrum coefficient to the centre of the centred spectrum (frequency-index units)
    and ``d_c = cutoff_ratio * min(spatial size)``; each channel is filtered on its own (one batched real FFT).
    This is the corruption of the paper's Fig. 1a: a classifier trained on raw images is tested on images whose
    low frequencies are removed with a growing cut-off.

    Args:
        cutoff_ratio: ``d_c`` as a fraction of the smallest spatial size (> 0).
        keep_mean: add each channel's mean back (default), so that only the structure below the cut-off is
            removed and the intensities stay around the range the network was trained on; ``False`` gives the
            plain high-pass, whose output has zero mean.
        spatial_dims: 2 or 3; ``None`` takes ``img.ndim - 1`` (unbatched input).

    ``(C, *spatial)`` or ``(B, C, *spatial)`` in, the same shape, type, dtype and device out.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, cutoff_ratio: float, keep_mean: bool = True, spatial_dims: int | None = None) -> None:
        if not cutoff_ratio > 0:
            raise ValueError(f"cutoff_ratio must be positive, got {cutoff_ratio}.")
        self.cutoff_ratio = float(cutoff_ratio)
        self.keep_mean = keep_mean
        self.spatial_dims = spatial_dims

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x, batched = as_batch(img, self.spatial_dims, type(self).__name__)
        spatial = tuple(x.shape[2:])
        transfer = gaussian_highpass(spatial, self.cutoff_ratio * min(spatial), real=True, device=x.device)
        out = filter_bank(x, [transfer])[0].to(x.dtype)
        if self.keep_mean:
            out = out + x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        return restore(out, batched, img)


class GaussianHighPassd(MapTransform):
    """Dictionary twin of :class:`GaussianHighPass` (``keys``: the images to filter; other arguments as there)."""

    backend = GaussianHighPass.backend

    def __init__(
        self,
        keys: KeysCollection,
        cutoff_ratio: float,
        keep_mean: bool = True,
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.filter = GaussianHighPass(cutoff_ratio, keep_mean, spatial_dims)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = named(key, self.filter, d[key])
        return d


class AsChannels(Transform):
    """The channel layout of an encoder that takes ``channels`` image channels: a single-channel image is repeated,
    a multi-channel one keeps its first ``channels`` (an RGBA photograph drops its alpha). ``(C, *spatial)`` in,
    ``(channels, *spatial)`` out, same type.

    Args:
        channels: image channels the network takes (3 for the 2D encoders: grey images become grey RGB).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channels: int = 3) -> None:
        self.channels = channels

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.shape[0] >= self.channels:
            return img[: self.channels]
        if img.shape[0] != 1:
            raise ValueError(
                f"image {source_of(img)}has {img.shape[0]} channels: neither 1 nor at least {self.channels}."
            )
        return img.repeat(self.channels, *[1] * (img.ndim - 1))


class AsChannelsd(MapTransform):
    """Dictionary twin of :class:`AsChannels` (``keys``: the images; ``channels``: as there)."""

    backend = AsChannels.backend

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.to_channels = AsChannels(channels)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = named(key, self.to_channels, d[key])
        return d
