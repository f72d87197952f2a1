"""Frepa corruption transforms (paper sections 3.1 and 3.2, spec section 1).

Every transform takes channel-first images, ``(C, *spatial)``, or batches, ``(B, C, *spatial)`` (pass
``spatial_dims`` for batches, since a 2D batch looks like a 3D volume), as torch tensors on any device or
numpy arrays, and returns the input's type, dtype and device. Random transforms are MONAI
``RandomizableTransform`` s: ``set_random_state(seed)`` makes them reproducible on CPU and CUDA alike, each
call drawing one torch seed from ``self.R`` and all random numbers of the call from a torch generator on the
image's device. Every image of a batch gets its own draw; all channels of one image share it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor, create_file_basename
from monai.transforms import (
    MapTransform,
    RandomizableTransform,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Transform,
)
from monai.utils import MAX_SEED, TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from frepa_monai.frequency import filter_bank, frequency_indices, gaussian_highpass, squared_frequency_distance

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
    "HessianFilter",
    "HessianFilterd",
    "GaussianHighPass",
    "GaussianHighPassd",
    "FrepaCorruptd",
    "CT_WINDOWS",
    "ScaleIntensityByModalityd",
    "ValidateLabel",
    "ValidateLabeld",
    "MaskToBox",
    "MaskToBoxd",
    "original_grid_box",
    "DetectionBoxToOriginald",
    "SaveBoxJSONd",
    "seeded_generator",
]

logger = logging.getLogger(__name__)

FREQUENCY = 0
"""Strategy code of frequency dual-component masking (stored under ``strategy_view<i>``)."""
IMAGE = 1
"""Strategy code of histogram-equalized image masking."""

NOISE_FLOOR = 1e-3
"""Low-frequency perturbation skips coefficients where the noise's standard deviation is below
``NOISE_FLOOR * sigma`` (``d > 2.63 d_c``): they would carry under 1e-5 of the noise energy (2D and 3D)."""

PAPER_SIZE = {2: 512, 3: 128}
"""The paper's working image size per number of spatial dims (paper 4: 2D images resized to 512 x 512, 3D crops of
128^3). The corruption sizes of the paper (spectrum patches of 16, image patches of 32 / 16, ``sigma = 0.002
max|f|``) are given at this size; at other sizes they are scaled (see :func:`scale_patch_size` and
:func:`scale_sigma_ratio`) unless ``literal_sizes=True``."""


def size_ratio(spatial: Sequence[int]) -> float:
    """``min(spatial) / PAPER_SIZE[len(spatial)]``: how large an image is against the paper's working size."""
    if len(spatial) not in PAPER_SIZE:
        raise ValueError(f"expected 2 or 3 spatial dims, got the spatial shape {tuple(spatial)}.")
    return min(int(s) for s in spatial) / PAPER_SIZE[len(spatial)]


def scale_patch_size(patch_size: int, spatial: Sequence[int]) -> int:
    """A patch side given at the paper's working size, at the image size ``spatial`` (at least 1).

    The patch then covers the same share of the image (image patches) or of the spectrum (spectrum patches: a
    spectrum of ``n`` coefficients per axis spans frequencies ``-n/2 .. n/2``, so a patch of ``16 n / 512`` index
    units tiles it into the same ``32 x 32`` grid as the paper's 16 at 512), and the masking probability of each
    patch, which depends on ``d / d_c`` with ``d_c = cutoff_ratio * min(size)``, is the paper's.
    """
    return max(1, round(patch_size * size_ratio(spatial)))


def scale_sigma_ratio(sigma_ratio: float, spatial: Sequence[int]) -> float:
    """``sigma_ratio`` of Eq. 3 at the image size ``spatial``, keeping the paper's image-domain perturbation RMSE.

    The noise ``delta_k = N(0, sigma^2) exp(-d^2 / d_c^2)`` with ``sigma = sigma_ratio max|f|`` (``max|f|`` = DC =
    ``N mean(x)`` for a non-negative image of ``N`` pixels) perturbs the image by an RMSE of
    ``sqrt(sum_k E|delta_k|^2) / N = sigma_ratio mean(x) sqrt(sum_k exp(-2 d_k^2 / d_c^2))``, and the sum is
    ``(pi / 2)^(n / 2) d_c^n`` for ``n`` spatial dims (``d_c >> 1``): at a fixed ``sigma_ratio`` the RMSE grows as
    ``min(size)^(n / 2)``, 4x weaker at 128 px than at 512 in 2D. Dividing by ``size_ratio^(n / 2)`` keeps it.
    """
    return sigma_ratio * size_ratio(spatial) ** (-len(spatial) / 2)



# ----------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------


def _as_batch(img: NdarrayOrTensor, spatial_dims: int | None, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``img`` as a float ``(B, C, *spatial)`` tensor and whether the input was batched.

    Raises a ``ValueError`` naming the transform and the image's source file for a wrong number of
    dimensions or for NaN / Inf values.
    """
    x = convert_to_tensor(img, track_meta=False)
    source = _source_of(img)
    dims = x.ndim - 1 if spatial_dims is None else spatial_dims
    if dims not in (2, 3) or x.ndim not in (dims + 1, dims + 2):
        raise ValueError(
            f"{name}: {source}has shape {tuple(x.shape)}; expected channel-first (C, *spatial) or "
            f"(B, C, *spatial) with 2 or 3 spatial dims (spatial_dims={spatial_dims})."
        )
    if not torch.is_floating_point(x) or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    _check_finite(x, name, source)
    batched = x.ndim == dims + 2
    return (x if batched else x[None]), batched


def _check_finite(x: torch.Tensor, name: str, source: str) -> None:
    """Raise a ``ValueError`` naming ``name`` and ``source`` if the float tensor ``x`` holds NaN or Inf."""
    # NaN and Inf propagate into the sum, which is far cheaper than isfinite(x); the latter only confirms
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: {source}contains NaN or Inf values; clean or mask the image first.")


def _source_of(img: NdarrayOrTensor) -> str:
    """``"file '<path>' "`` for a MetaTensor loaded from a file, else ``""`` (for error messages)."""
    if isinstance(img, MetaTensor):
        filename = img.meta.get("filename_or_obj")
        if filename:
            return f"image '{filename}' "
    return ""


def _restore(out: torch.Tensor, batched: bool, like: NdarrayOrTensor) -> NdarrayOrTensor:
    """Undo :func:`_as_batch`: drop the batch axis if the input had none, return the input's type and dtype."""
    out = out if batched else out[0]
    return convert_to_dst_type(out, like)[0]


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch random generator on ``device`` seeded with ``seed`` (all draws of a call come from it)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


class _TorchSeeded(RandomizableTransform):
    """A ``RandomizableTransform`` whose ``randomize`` draws one torch seed per call from ``self.R``."""

    _seed: int = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(MAX_SEED))


class _SpectrumPlan:
    """Per image size, everything :class:`FrequencyDualMask` needs that does not depend on the image.

    Works on the flattened ``rfftn`` half spectrum of ``M`` coefficients:

    * ``patch_of`` ``(M,)``: the spectrum patch deciding each coefficient's fate; the DC coefficient points to
      an extra patch that is never masked, and on the last-axis planes that hold both ``k`` and ``-k``
      (index 0 and, for even sizes, Nyquist) the non-canonical twin points to its mirror's patch, so every
      mask drawn per patch is Hermitian-symmetric;
    * ``patch_prob`` ``(P + 1,)``: the masking probability ``1 - exp(-d^2 / d_c^2)`` of each patch
      (``d``: distance of the patch centre to the spectrum centre);
    * ``twin_pos`` / ``twin_src``: the non-canonical plane coefficients and their mirrors;
      ``self_paired``: coefficients equal to their own mirror;
    * ``noise_support`` ``(K,)``: the coefficients that get noise, those whose weight ``exp(-d^2 / d_c^2)``
      is at least ``NOISE_FLOOR`` (DC excluded), with ``noise_weight`` ``(K,)`` their weight over ``sqrt(2)``
      and ``noise_twin_pos`` / ``noise_twin_src`` / ``noise_self_paired`` the twins in support numbering.
    """

    def __init__(self, spatial: tuple[int, ...], patch_size: int, cutoff: float, device: torch.device) -> None:
        nd = len(spatial)
        half = (*spatial[:-1], spatial[-1] // 2 + 1)
        # patch of every coefficient: patches tile the fftshift-ed spectrum from its corner
        patch_ids, centres = [], []
        for axis, size in enumerate(spatial):
            shifted = frequency_indices(size, real=axis == nd - 1) + size // 2
            patch_ids.append(torch.div(shifted, patch_size, rounding_mode="floor"))
            first = torch.arange(0, size, patch_size, dtype=torch.float64)
            last = (first + patch_size).clamp(max=size) - 1
            centres.append((first + last) / 2 - size // 2)
        grid = [len(c) for c in centres]
        patch_of = torch.zeros(half, dtype=torch.long)
        for axis, ids in enumerate(patch_ids):
            stride = math.prod(grid[axis + 1 :])
            patch_of = patch_of + ids.view([-1 if a == axis else 1 for a in range(nd)]) * stride
        d2 = sum(c**2 for c in torch.meshgrid(*centres, indexing="ij"))
        patch_prob = torch.cat([(1.0 - torch.exp(-d2 / cutoff**2)).flatten(), torch.zeros(1, dtype=torch.float64)])
        patch_of = patch_of.flatten()
        patch_of[0] = len(patch_prob) - 1  # DC: the never-masked patch
        # Hermitian twins on the self-mirrored planes of the last axis
        position = torch.arange(patch_of.numel()).view(half)
        twin_pos, twin_src, self_paired = [], [], []
        for j in [0] + ([spatial[-1] // 2] if spatial[-1] % 2 == 0 else []):
            plane = position[..., j]
            twin = torch.roll(torch.flip(plane, tuple(range(nd - 1))), (1,) * (nd - 1), tuple(range(nd - 1)))
            twin_pos.append(plane[plane > twin])
            twin_src.append(twin[plane > twin])
            self_paired.append(plane[plane == twin])
        self.twin_pos, self.twin_src = torch.cat(twin_pos).to(device), torch.cat(twin_src).to(device)
        self.self_paired = torch.cat(self_paired).to(device)
        patch_of[self.twin_pos.cpu()] = patch_of[self.twin_src.cpu()]
        self.patch_of = patch_of.to(device)
        self.patch_prob = patch_prob.float().to(device)
        # noise support: where the noise's standard deviation reaches NOISE_FLOOR * sigma (never DC)
        weight = torch.exp(-squared_frequency_distance(spatial, real=True) / cutoff**2).flatten()
        weight[0] = 0.0
        support = torch.nonzero(weight >= NOISE_FLOOR).flatten()
        rank = torch.full_like(patch_of, -1)
        rank[support] = torch.arange(len(support))
        in_support = rank[self.twin_pos.cpu()] >= 0  # a twin has its mirror's distance: both in or both out
        self.noise_twin_pos = rank[self.twin_pos.cpu()[in_support]].to(device)
        self.noise_twin_src = rank[self.twin_src.cpu()[in_support]].to(device)
        self_paired = self.self_paired.cpu()
        self.noise_self_paired = rank[self_paired[rank[self_paired] >= 0]].to(device)
        self.noise_support = support.to(device)
        self.noise_weight = (weight[support] / math.sqrt(2.0)).to(device)
        self.half = half


@lru_cache(maxsize=16)
def _spectrum_plan(spatial: tuple[int, ...], patch_size: int, cutoff: float, device: torch.device) -> _SpectrumPlan:
    return _SpectrumPlan(spatial, patch_size, cutoff, device)


# ----------------------------------------------------------------------------------------------------------
# frequency dual-component masking
# ----------------------------------------------------------------------------------------------------------


class FrequencyDualMask(_TorchSeeded):
    """Frequency dual-component masking (paper 3.1.1, Eq. 1-3; 3D: Eq. 12).

    The centred spectrum of each image is tiled with ``patch_size`` patches (``16 x 16`` in 2D,
    ``16 x 16 x 16`` in 3D, starting at the corner of the shifted spectrum; edge patches may be partial).
    A patch whose centre lies at distance ``d`` (index units) from the spectrum centre is set to zero with
    probability ``p = 1 - exp(-d^2 / d_c^2)``, ``d_c = cutoff_ratio * min(spatial size)`` (high-frequency
    masking); then noise ``delta = N(0, sigma^2) * exp(-d^2 / d_c^2)`` with ``sigma = sigma_ratio * max|f|``
    is added per frequency (low-frequency perturbation). ``E|delta|^2 = sigma^2`` for the complex noise.

    The DC coefficient is never masked nor perturbed, so the image mean is unchanged. Mask and noise are
    Hermitian-symmetric (``k`` and ``-k`` share their fate), so the result is real by construction: the
    transform uses ``rfftn`` / ``irfftn``, one forward and one inverse transform per call. All channels of an
    image share one mask and one noise draw.

    Sizes: ``patch_size`` and ``sigma_ratio`` are the paper's values at its working size :data:`PAPER_SIZE` (512
    in 2D, 128 in 3D). At another image size they are scaled (:func:`scale_patch_size`,
    :func:`scale_sigma_ratio`), so that the corruption masks the same share of each frequency band and perturbs
    the image with the same RMSE; ``literal_sizes=True`` takes them as given, in index units of this image (at
    128 px that leaves an 8 x 8 patch grid whose patches next to DC are masked with ``p`` of about 0.17, against
    0.011 at 512, and a perturbation 4x weaker). ``d_c = cutoff_ratio * min(size)`` scales either way.

    Args:
        patch_size: side of the spectrum patches (frequency index units at the paper's working size).
        cutoff_ratio: ``d_c / min(spatial size)`` of Eq. 2 and 3.
        sigma_ratio: ``sigma / max|f|`` of Eq. 3 at the paper's working size.
        high_freq_mask: apply high-frequency masking (``False``: the "w/o HM" ablation).
        low_freq_perturb: apply low-frequency perturbation (``False``: the "w/o LP" ablation).
        spatial_dims: 2 or 3; ``None`` takes ``img.ndim - 1`` (unbatched input).
        prob: probability of corrupting at all (per call).
        literal_sizes: use ``patch_size`` and ``sigma_ratio`` as given at every image size.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        patch_size: int = 16,
        cutoff_ratio: float = 0.2,
        sigma_ratio: float = 0.002,
        high_freq_mask: bool = True,
        low_freq_perturb: bool = True,
        spatial_dims: int | None = None,
        prob: float = 1.0,
        literal_sizes: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if patch_size < 1 or cutoff_ratio <= 0 or sigma_ratio < 0:
            raise ValueError(
                f"FrequencyDualMask needs patch_size >= 1, cutoff_ratio > 0, sigma_ratio >= 0; got "
                f"{patch_size}, {cutoff_ratio}, {sigma_ratio}."
            )
        self.patch_size = int(patch_size)
        self.cutoff_ratio = float(cutoff_ratio)
        self.sigma_ratio = float(sigma_ratio)
        self.high_freq_mask = high_freq_mask
        self.low_freq_perturb = low_freq_perturb
        self.spatial_dims = spatial_dims
        self.literal_sizes = literal_sizes

    def sizes_at(self, spatial: Sequence[int]) -> tuple[int, float]:
        """The spectrum patch side and ``sigma_ratio`` used on images of spatial size ``spatial``."""
        if self.literal_sizes:
            return self.patch_size, self.sigma_ratio
        return scale_patch_size(self.patch_size, spatial), scale_sigma_ratio(self.sigma_ratio, spatial)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Corrupt ``img`` of shape ``(C, *spatial)`` or ``(B, C, *spatial)``; returns the same shape."""
        if randomize:
            self.randomize()
        x, batched = _as_batch(img, self.spatial_dims, type(self).__name__)
        if not self._do_transform or not (self.high_freq_mask or self.low_freq_perturb):
            return img
        return _restore(self.corrupt(x, seeded_generator(self._seed, x.device)), batched, img)

    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Corrupt a float batch ``(B, C, *spatial)`` with the given generator; returns a new tensor."""
        spatial = tuple(x.shape[2:])
        dims = tuple(range(2, x.ndim))
        patch_size, sigma_ratio = self.sizes_at(spatial)
        plan = _spectrum_plan(spatial, patch_size, self.cutoff_ratio * min(spatial), x.device)
        spectrum = torch.fft.rfftn(x, dim=dims)  # (B, C, *half); all channels share mask and noise
        if self.high_freq_mask:
            spectrum.masked_fill_(self.high_frequency_mask(x.shape[0], plan, generator)[:, None], 0)
        if self.low_freq_perturb and sigma_ratio > 0:
            sigma = sigma_ratio * _spectrum_peak(x, spectrum)
            self.perturb_(spectrum, sigma, plan, generator)
        return torch.fft.irfftn(spectrum, s=spatial, dim=dims)

    @staticmethod
    def high_frequency_mask(batch: int, plan: _SpectrumPlan, generator: torch.Generator) -> torch.Tensor:
        """Hermitian boolean mask ``(B, *half_spectrum)``, ``True`` where a coefficient is set to zero."""
        device = plan.patch_of.device
        masked_patches = torch.rand((batch, len(plan.patch_prob)), generator=generator, device=device) < plan.patch_prob
        return masked_patches[:, plan.patch_of].view(batch, *plan.half)

    @staticmethod
    def perturb_(spectrum: torch.Tensor, sigma: torch.Tensor, plan: _SpectrumPlan, generator: torch.Generator) -> None:
        """Add Hermitian complex noise, ``E|n|^2 = sigma^2 exp(-2 d^2 / d_c^2)``, to ``spectrum`` in place.

        ``spectrum`` is ``(B, C, *half_spectrum)``, ``sigma`` ``(B,)``; the channels of an image share the draw.
        """
        device = spectrum.device
        noise = _standard_normal((len(sigma), len(plan.noise_weight), 2), generator, device, torch.float32)
        noise[:, plan.noise_twin_pos] = noise[:, plan.noise_twin_src] * torch.tensor([1.0, -1.0], device=device)
        noise[:, plan.noise_self_paired, 1] = 0.0
        noise.mul_((sigma[:, None] * plan.noise_weight)[..., None])
        noise = torch.view_as_complex(noise).to(spectrum.dtype)[:, None].expand(-1, spectrum.shape[1], -1)
        spectrum.view(*spectrum.shape[:2], -1).index_add_(2, plan.noise_support, noise)


def _spectrum_peak(x: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """``max |f|`` per image ``(B,)`` of ``x`` ``(B, C, *spatial)`` and its ``rfftn`` spectrum.

    For a non-negative image the peak is the DC coefficient (``|f(k)| <= sum |x| = f(0)``), read off
    directly; the whole spectrum is searched only for batches holding negative values.
    """
    dc = spectrum[(slice(None), slice(None)) + (0,) * (x.ndim - 2)].abs().amax(dim=1)
    nonnegative = x.flatten(1).amin(dim=1) >= 0
    if bool(nonnegative.all()):
        return dc
    power = torch.view_as_real(spectrum).square().sum(-1)
    return torch.where(nonnegative, dc, power.flatten(1).amax(dim=1).sqrt())


class _RandomDictTwin(_TorchSeeded, MapTransform):
    """Plumbing shared by the random dictionary twins: one array transform, seeded with the twin."""

    def __init__(self, keys: KeysCollection, transform: RandomizableTransform, prob: float, allow_missing_keys: bool):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self


class FrequencyDualMaskd(_RandomDictTwin):
    """Dictionary twin of :class:`FrequencyDualMask`; every key gets its own draw."""

    backend = FrequencyDualMask.backend

    def __init__(self, keys: KeysCollection, prob: float = 1.0, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, FrequencyDualMask(**kwargs), prob, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = _named(key, self.transform, d[key])
        return d


def _named(key: Hashable, transform, img, *args, **kwargs):
    """Call ``transform(img)`` and prefix a ``ValueError`` with the dictionary key."""
    try:
        return transform(img, *args, **kwargs)
    except ValueError as e:
        raise ValueError(f"key '{key}': {e}") from e


# ----------------------------------------------------------------------------------------------------------
# histogram-equalized image masking
# ----------------------------------------------------------------------------------------------------------


class HistogramEqualizedMask(_TorchSeeded):
    """Histogram-equalized image-domain masking (paper 3.1.2, Eq. 4 and 13).

    The image is tiled with ``patch_size`` patches (the paper's 32 in 2D, 16 in 3D at its working size
    :data:`PAPER_SIZE`, scaled to the image size by :func:`scale_patch_size` unless ``literal_sizes=True``: 8 px
    at 128 x 128, so that the masked patches are as large against the image as in the paper; edge patches may be
    partial); ``round(mask_ratio * number of patches)`` of them are chosen uniformly and each is replaced by
    Gaussian noise with that patch's own mean and standard deviation, per channel. The noise is
    standardised per patch, so a masked patch keeps its mean and standard deviation exactly (a constant
    patch stays constant); the channels of an image share one noise draw (a grey image repeated to three
    channels stays grey). All other pixels are left bit-identical.

    Args:
        patch_size: patch side in pixels at the paper's working size; ``None`` picks 32 for 2D and 16 for 3D.
        mask_ratio: fraction of patches to mask.
        fill: ``"histogram"`` (Eq. 4) or ``"zero"`` (zero-patch masking, the "w/o IM" ablation).
        spatial_dims: 2 or 3; ``None`` takes ``img.ndim - 1`` (unbatched input).
        prob: probability of corrupting at all (per call).
        literal_sizes: use ``patch_size`` as pixels at every image size.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        patch_size: int | None = None,
        mask_ratio: float = 0.7,
        fill: str = "histogram",
        spatial_dims: int | None = None,
        prob: float = 1.0,
        literal_sizes: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if fill not in ("histogram", "zero"):
            raise ValueError(f"fill must be 'histogram' or 'zero', got {fill!r}.")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}.")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}.")
        self.patch_size = patch_size
        self.mask_ratio = float(mask_ratio)
        self.fill = fill
        self.spatial_dims = spatial_dims
        self.literal_sizes = literal_sizes

    def patch_size_at(self, spatial: Sequence[int]) -> int:
        """The patch side in pixels used on images of spatial size ``spatial``."""
        size = self.patch_size or (32 if len(spatial) == 2 else 16)
        return size if self.literal_sizes else scale_patch_size(size, spatial)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Mask ``img`` of shape ``(C, *spatial)`` or ``(B, C, *spatial)``; returns the same shape."""
        return self.call_with_mask(img, randomize)[0]

    def call_with_mask(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, torch.Tensor]:
        """As ``__call__``, also returning the boolean pixel mask ``(1, *spatial)`` / ``(B, 1, *spatial)``."""
        if randomize:
            self.randomize()
        x, batched = _as_batch(img, self.spatial_dims, type(self).__name__)
        if not self._do_transform:
            mask = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
            return img, (mask if batched else mask[0])
        out, mask = self.corrupt(x, seeded_generator(self._seed, x.device))
        return _restore(out, batched, img), (mask if batched else mask[0])

    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a float batch ``(B, C, *spatial)``; returns the new batch and its pixel mask ``(B, 1, *spatial)``."""
        batch, channels, *spatial = x.shape
        nd = len(spatial)
        ps = self.patch_size_at(spatial)
        grid = [math.ceil(s / ps) for s in spatial]
        pad = [v for p, s in zip(reversed(grid), reversed(spatial)) for v in (0, p * ps - s)]
        out = F.pad(x, pad) if any(pad) else x.clone()  # a copy to write the noise into
        n_patches = math.prod(grid)
        n_masked = int(round(self.mask_ratio * n_patches))
        scores = torch.rand((batch, n_patches), generator=generator, device=x.device)
        chosen = scores.topk(n_masked, dim=1).indices  # (B, k) patch indices in C order
        # advanced indices (image, patch row, patch column, ...) separated by slices over the channels and the
        # pixels of a patch pick the chosen patches straight from the (B, C, P1, ps, P2, ps, ...) view:
        # (B, k, C, ps, ps, ...), without moving the rest of the image
        index = (torch.arange(batch, device=x.device)[:, None], slice(None))
        for patch_axis in torch.unravel_index(chosen, grid):
            index += (patch_axis, slice(None))
        tiled = out.view(batch, channels, *[n for p in grid for n in (p, ps)])
        if self.fill == "zero":
            tiled[index] = 0.0
        else:
            picked = tiled[index].reshape(batch, n_masked, channels, ps**nd)
            valid = None
            if any(pad):  # partial edge patches: their moments use the real pixels only
                ones = F.pad(torch.ones((1, 1, *spatial), device=x.device, dtype=x.dtype), pad)
                ones = ones.expand(batch, -1, *ones.shape[2:]).view(batch, 1, *tiled.shape[2:])
                valid = ones[index].reshape(batch, n_masked, 1, ps**nd)
            mean, std = _patch_moments(picked, valid)
            # one noise draw per patch, shared by the channels (as in FrequencyDualMask): a grey image repeated to
            # RGB stays grey; each channel still gets its own mean and standard deviation
            noise = _standard_normal((batch, n_masked, 1, ps**nd), generator, x.device, x.dtype)
            noise_mean, noise_std = _patch_moments(noise, valid, centred=False)
            scale = std / noise_std.clamp_min(1e-12)
            fill = torch.addcmul(mean - noise_mean * scale, noise, scale)  # exactly the patch's mean and std
            tiled[index] = fill.view(batch, n_masked, channels, *[ps] * nd)
        masked = torch.zeros((batch, n_patches), dtype=torch.bool, device=x.device).scatter_(1, chosen, True)
        masked = masked.view(batch, 1, *[n for p in grid for n in (p, 1)])
        mask = masked.expand(batch, 1, *[n for p in grid for n in (p, ps)]).reshape(batch, 1, *out.shape[2:])
        crop = (slice(None), slice(None), *[slice(0, s) for s in spatial])
        return out[crop], mask[crop]


def _patch_moments(
    patches: torch.Tensor, valid: torch.Tensor | None, centred: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation over the last axis (the real, non-padded pixels), kept dims.

    Plain sums and norms, much faster on CPU than ``torch.var_mean``. ``centred=True`` subtracts the mean
    before squaring (exact for any data); ``False`` uses ``E[x^2] - mean^2``, one pass, for zero-mean noise.
    """
    if valid is not None:
        patches = patches * valid
    count = patches.shape[-1] if valid is None else valid.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean = patches.sum(dim=-1, keepdim=True) / count
    if centred:
        spread = patches - mean if valid is None else (patches - mean) * valid
        return mean, torch.linalg.vector_norm(spread, dim=-1, keepdim=True) / count**0.5
    second = torch.linalg.vector_norm(patches, dim=-1, keepdim=True).square() / count
    return mean, (second - mean.square()).clamp_min(0.0).sqrt()


def _standard_normal(
    shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``N(0, 1)`` samples by the Box-Muller transform of ``torch.rand`` draws.

    Exactly Gaussian like ``torch.randn``, and faster on CPU, where ``randn`` runs on one thread while the
    element-wise logarithm, square root, sine and cosine here use all of them.
    """
    n = math.prod(shape)
    uniform = torch.rand((2, (n + 1) // 2), generator=generator, device=device, dtype=dtype)
    radius = uniform[0].neg_().log1p_().mul_(-2.0).sqrt_()  # sqrt(-2 ln(1 - u)), u in [0, 1): finite
    angle = uniform[1].mul_(2.0 * math.pi)
    out = torch.empty((2, (n + 1) // 2), device=device, dtype=dtype)
    torch.cos(angle, out=out[0])
    torch.sin(angle, out=out[1])
    return out.mul_(radius).view(-1)[:n].view(shape)


class HistogramEqualizedMaskd(_RandomDictTwin):
    """Dictionary twin of :class:`HistogramEqualizedMask`; writes the pixel mask of the first key to ``mask_key``.

    Args:
        keys: images to mask (every key gets its own draw).
        mask_key: where the boolean pixel mask ``(1, *spatial)`` (``True`` = masked) is stored; ``None``: nowhere.
        kwargs: arguments of :class:`HistogramEqualizedMask`.
    """

    backend = HistogramEqualizedMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, HistogramEqualizedMask(**kwargs), prob, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for i, key in enumerate(self.key_iterator(d)):
            d[key], mask = _named(key, self.transform.call_with_mask, d[key])
            if i == 0 and self.mask_key is not None:
                d[self.mask_key] = mask
        return d


# ----------------------------------------------------------------------------------------------------------
# Hessian ridge channel
# ----------------------------------------------------------------------------------------------------------


class HessianFilter(Transform):
    """Multi-scale Hessian ridge (vesselness) filter, Frangi-style, in the image domain (paper Eq. 6).

    The channel mean of the image is smoothed with Gaussians of ``sigmas`` (pixels; separable convolution,
    kernels cut at 3 sigma, edges replicated) and its Hessian taken by finite differences. From the
    eigenvalues sorted by magnitude (``|l1| <= |l2| (<= |l3|)``) the Frangi measure is
    ``exp(-Rb^2 / 2 beta^2) (1 - exp(-S^2 / 2 c^2))`` in 2D (``Rb = l1 / l2``) and
    ``(1 - exp(-Ra^2 / 2 alpha^2)) exp(-Rb^2 / 2 beta^2) (1 - exp(-S^2 / 2 c^2))`` in 3D
    (``Ra = l2 / l3``, ``Rb = l1 / sqrt(|l2 l3|)``), with ``S`` the Hessian norm and ``c`` half its maximum
    per image and scale. The maximum over scales is divided by its maximum per image, giving one channel in
    [0, 1] (all zeros for an image without ridges).

    Args:
        sigmas: Gaussian scales in pixels.
        alpha, beta: Frangi's plate / blob sensitivities.
        polarity: ``"both"`` (bright and dark ridges: vessels are dark in fundus photos, bright in CT
            angiography), ``"bright"`` or ``"dark"``.
        spatial_dims: 2 or 3; ``None`` takes ``img.ndim - 1`` (unbatched input).

    Returns ``(1, *spatial)`` for ``(C, *spatial)`` input, ``(B, 1, *spatial)`` for batches.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        sigmas: Sequence[float] = (1.0, 2.0, 3.0),
        alpha: float = 0.5,
        beta: float = 0.5,
        polarity: str = "both",
        spatial_dims: int | None = None,
    ) -> None:
        if polarity not in ("both", "bright", "dark"):
            raise ValueError(f"polarity must be 'both', 'bright' or 'dark', got {polarity!r}.")
        if not sigmas or min(sigmas) <= 0:
            raise ValueError(f"sigmas must be positive, got {sigmas}.")
        self.sigmas = tuple(float(s) for s in sigmas)
        self.alpha = alpha
        self.beta = beta
        self.polarity = polarity
        self.spatial_dims = spatial_dims

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x, batched = _as_batch(img, self.spatial_dims, type(self).__name__)
        return _restore(self.ridges(x.mean(dim=1, keepdim=True)), batched, img)

    def ridges(self, x: torch.Tensor) -> torch.Tensor:
        """Ridge measure of a single-channel float batch ``(B, 1, *spatial)``, scaled to [0, 1] per image.

        ``c`` is taken per scale, so the measure of each scale does not depend on the ``sigma^2`` normalisation of
        the Hessian (``Ra``, ``Rb`` and ``S / c`` are all scale-free): it is left out.
        """
        nd = x.ndim - 2
        smoothed = _gaussian_smooth(x, self.sigmas)  # (B, S, *spatial), one channel per sigma
        axes = tuple(range(2, 2 + nd))
        first = [_central_difference(smoothed, axis) for axis in axes[:-1]]
        hessian = {(a, a): _second_difference(smoothed, axes[a]) for a in range(nd)}
        hessian.update({(a, b): _central_difference(first[a], axes[b]) for a in range(nd) for b in range(a + 1, nd)})
        eig = _sorted_eigenvalues(hessian, nd)  # |l1| <= |l2| (<= |l3|)
        norm2 = sum(value.square() for value in eig)
        c2 = (0.25 * norm2.amax(dim=axes, keepdim=True)).clamp_min(1e-20)  # c = half the largest Hessian norm
        vesselness = 1.0 - torch.exp(-norm2 / (2 * c2))
        tiny = 1e-20
        if nd == 2:
            l1, l2 = eig
            vesselness *= torch.exp(-(l1.square() / l2.square().clamp_min(tiny)) / (2 * self.beta**2))
            signs = [l2]
        else:  # an eigenvalue of 0 in l2 or l3 makes l1 = 0 and Ra = 0, so the measure 0: no division issue
            l1, l2, l3 = eig
            vesselness *= 1.0 - torch.exp(-(l2.square() / l3.square().clamp_min(tiny)) / (2 * self.alpha**2))
            vesselness *= torch.exp(-(l1.square() / (l2 * l3).abs().clamp_min(tiny)) / (2 * self.beta**2))
            signs = [l2, l3]
        for s in signs:  # bright ridges curve down (negative eigenvalues across the ridge), dark ones up
            if self.polarity == "bright":
                vesselness *= s < 0
            elif self.polarity == "dark":
                vesselness *= s > 0
        best = vesselness.amax(dim=1, keepdim=True)
        peak = best.amax(dim=axes, keepdim=True)
        return torch.where(peak > 0, best / peak.clamp_min(tiny), torch.zeros_like(best))


def _central_difference(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``(t[i + 1] - t[i - 1]) / 2`` along ``dim``, one-sided at the ends (as ``torch.gradient``, fewer passes)."""
    n = t.shape[dim]
    out = torch.zeros_like(t)
    if n > 1:
        torch.sub(t.narrow(dim, 2, n - 2), t.narrow(dim, 0, n - 2), out=out.narrow(dim, 1, n - 2)).mul_(0.5)
        torch.sub(t.narrow(dim, 1, 1), t.narrow(dim, 0, 1), out=out.narrow(dim, 0, 1))
        torch.sub(t.narrow(dim, n - 1, 1), t.narrow(dim, n - 2, 1), out=out.narrow(dim, n - 1, 1))
    return out


def _second_difference(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t[i + 1] - 2 t[i] + t[i - 1]`` along ``dim``, with the ends replicated."""
    n = t.shape[dim]
    padded = torch.cat([t.narrow(dim, 0, 1), t, t.narrow(dim, n - 1, 1)], dim=dim)
    return padded.narrow(dim, 2, n) + padded.narrow(dim, 0, n) - 2 * t


def _gaussian_kernels(sigmas: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1D Gaussians of every sigma, zero-padded to one length, shape ``(S, 2r + 1)``."""
    radius = max(int(math.ceil(3 * s)) for s in sigmas)
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernels = torch.stack([torch.exp(-(t**2) / (2 * s**2)) * (t.abs() <= math.ceil(3 * s)) for s in sigmas])
    return kernels / kernels.sum(dim=1, keepdim=True)


def _gaussian_smooth(x: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(B, 1, *spatial)`` at every sigma: ``(B, S, *spatial)``."""
    nd = x.ndim - 2
    conv = (F.conv2d, F.conv3d)[nd - 2]
    kernels = _gaussian_kernels(sigmas, x.device, x.dtype)
    radius = kernels.shape[1] // 2
    out = x.expand(-1, len(sigmas), *x.shape[2:])
    for axis in range(nd):
        shape = [len(sigmas), 1] + [1] * nd
        shape[2 + axis] = kernels.shape[1]
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), kernels.view(shape), groups=len(sigmas))
    return out


def _sorted_eigenvalues(h: dict[tuple[int, int], torch.Tensor], nd: int) -> tuple[torch.Tensor, ...]:
    """Eigenvalues ``(l1, l2[, l3])`` of the symmetric Hessian field ``h[(a, b)]`` (``a <= b``), in closed form,
    ordered by magnitude: ``|l1| <= |l2| (<= |l3|)``."""
    if nd == 2:
        half_trace = (h[0, 0] + h[1, 1]) / 2
        radius = torch.sqrt(((h[0, 0] - h[1, 1]) / 2).square() + h[0, 1].square())
        low, high = half_trace - radius, half_trace + radius
        small = torch.where(low.abs() <= high.abs(), low, high)
        return small, low + high - small
    # symmetric 3x3 matrices, trigonometric method: e1 >= e2 >= e3
    a11, a22, a33, a12, a13, a23 = h[0, 0], h[1, 1], h[2, 2], h[0, 1], h[0, 2], h[1, 2]
    q = (a11 + a22 + a33) / 3
    p = torch.sqrt(((a11 - q).square() + (a22 - q).square() + (a33 - q).square() + 2 * (a12**2 + a13**2 + a23**2)) / 6)
    inv_p = torch.where(p > 1e-12, p, torch.ones_like(p)).reciprocal()
    b11, b22, b33 = (a11 - q) * inv_p, (a22 - q) * inv_p, (a33 - q) * inv_p
    b12, b13, b23 = a12 * inv_p, a13 * inv_p, a23 * inv_p
    det = b11 * (b22 * b33 - b23**2) - b12 * (b12 * b33 - b23 * b13) + b13 * (b12 * b23 - b22 * b13)
    phi = torch.acos((det / 2).clamp(-1.0, 1.0)) / 3
    e1 = q + 2 * p * torch.cos(phi)
    e3 = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    e2 = 3 * q - e1 - e3
    # the largest magnitude is at an end of the value order; then order the other two
    l3 = torch.where(e1.abs() >= e3.abs(), e1, e3)
    other = e1 + e3 - l3
    l1 = torch.where(other.abs() <= e2.abs(), other, e2)
    return l1, other + e2 - l1, l3


class HessianFilterd(MapTransform):
    """Dictionary twin of :class:`HessianFilter`.

    Args:
        keys: images to filter.
        output_keys: where to store each key's ridge channel; default ``"<key>_hessian"``.
        append: instead, concatenate the ridge channel to the image itself (``in_channels + 1`` channels,
            the downstream encoder input ``concat(image, HessianFilter(image))``).
        kwargs: arguments of :class:`HessianFilter`.
    """

    backend = HessianFilter.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection | None = None,
        append: bool = False,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = [f"{k}_hessian" for k in self.keys] if output_keys is None else list(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {self.output_keys} must match keys {self.keys} one to one.")
        self.append = append
        self.filter = HessianFilter(**kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            ridges = _named(key, self.filter, d[key])
            if self.append:
                batch_axis = 1 if d[key].ndim == (self.filter.spatial_dims or d[key].ndim - 1) + 2 else 0
                cat = torch.cat if isinstance(d[key], torch.Tensor) else np.concatenate
                d[key] = cat([d[key], ridges], batch_axis)
            else:
                d[out_key] = ridges
        return d


# ----------------------------------------------------------------------------------------------------------
# Gaussian high-pass filtering of test images (paper Fig. 1a, spec section 5)
# ----------------------------------------------------------------------------------------------------------


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
        x, batched = _as_batch(img, self.spatial_dims, type(self).__name__)
        spatial = tuple(x.shape[2:])
        transfer = gaussian_highpass(spatial, self.cutoff_ratio * min(spatial), real=True, device=x.device)
        out = filter_bank(x, [transfer])[0].to(x.dtype)
        if self.keep_mean:
            out = out + x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        return _restore(out, batched, img)


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
            d[key] = _named(key, self.filter, d[key])
        return d


# ----------------------------------------------------------------------------------------------------------
# the Frepa corruption of one sample (or batch): two views + Hessian channel
# ----------------------------------------------------------------------------------------------------------


class FrepaCorruptd(_TorchSeeded, MapTransform):
    """Two independently corrupted views of an image plus the Hessian channel (paper Fig. 2a, 3.2).

    Each view is made by frequency dual-component masking (probability ``prob_frequency``) or by
    histogram-equalized image masking, drawn independently per view and per image of a batch. Writes
    ``<key>_view<i>`` (corrupted image), ``mask_view<i>`` (bool pixel mask ``(1, *spatial)``, all ``True``
    for the frequency strategy, so the masked RMSE covers the whole image), ``strategy_view<i>``
    (int64 :data:`FREQUENCY` or :data:`IMAGE`, shape ``()`` or ``(B,)``) and, unless ``use_hessian=False``,
    ``hessian`` (:class:`HessianFilter` of the raw image, ``(1, *spatial)``). Works in a data pipeline on
    single samples and on a collated batch already on the GPU (pass ``spatial_dims``).

    Args:
        keys: the image key (exactly one).
        views: number of views.
        prob_frequency: probability of the frequency strategy for a view.
        frequency_mask: offer the frequency strategy (``False``: the "w/o FM" ablation, image masking only).
        image_mask: offer the image strategy (``False``: frequency masking only).
        fill: image masking fill, ``"histogram"`` or ``"zero"`` (the "w/o IM" ablation).
        high_freq_mask, low_freq_perturb, cutoff_ratio, sigma_ratio, frequency_patch_size: see
            :class:`FrequencyDualMask`.
        mask_ratio, image_patch_size: see :class:`HistogramEqualizedMask`.
        literal_sizes: take the patch sizes and ``sigma_ratio`` as given at every image size instead of
            scaling them from the paper's working size (see :class:`FrequencyDualMask`).
        use_hessian, sigmas: compute the Hessian channel and its scales.
        spatial_dims: 2 or 3; required for batched input.
        mask_key, strategy_key, hessian_key: output key names.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        views: int = 2,
        prob_frequency: float = 0.5,
        frequency_mask: bool = True,
        image_mask: bool = True,
        fill: str = "histogram",
        high_freq_mask: bool = True,
        low_freq_perturb: bool = True,
        cutoff_ratio: float = 0.2,
        sigma_ratio: float = 0.002,
        frequency_patch_size: int = 16,
        mask_ratio: float = 0.7,
        image_patch_size: int | None = None,
        literal_sizes: bool = False,
        use_hessian: bool = True,
        sigmas: Sequence[float] = (1.0, 2.0, 3.0),
        spatial_dims: int | None = None,
        mask_key: str = "mask",
        strategy_key: str = "strategy",
        hessian_key: str = "hessian",
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, 1.0)
        if len(self.keys) != 1:
            raise ValueError(f"FrepaCorruptd corrupts exactly one key, got {self.keys}.")
        if not (frequency_mask or image_mask):
            raise ValueError("FrepaCorruptd needs at least one of frequency_mask and image_mask.")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}.")
        self.views = views
        self.prob_frequency = prob_frequency if (frequency_mask and image_mask) else float(frequency_mask)
        self.spatial_dims = spatial_dims
        self.frequency = FrequencyDualMask(
            frequency_patch_size,
            cutoff_ratio,
            sigma_ratio,
            high_freq_mask,
            low_freq_perturb,
            spatial_dims,
            literal_sizes=literal_sizes,
        )
        self.image = HistogramEqualizedMask(
            image_patch_size, mask_ratio, fill, spatial_dims, literal_sizes=literal_sizes
        )
        self.hessian = HessianFilter(sigmas, spatial_dims=spatial_dims) if use_hessian else None
        self.mask_key, self.strategy_key, self.hessian_key = mask_key, strategy_key, hessian_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        key = self.keys[0]
        img = d[key]
        self.randomize()
        x, batched = _named(key, _as_batch, img, self.spatial_dims, type(self).__name__)
        gen = seeded_generator(self._seed, x.device)
        for view in range(1, self.views + 1):
            use_freq = torch.rand(x.shape[0], generator=gen, device=x.device) < self.prob_frequency
            out = torch.empty_like(x)
            mask = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
            if bool(use_freq.any()):
                out[use_freq] = self.frequency.corrupt(x[use_freq], gen)
            if not bool(use_freq.all()):
                out[~use_freq], mask[~use_freq] = self.image.corrupt(x[~use_freq], gen)
            strategy = torch.where(use_freq, FREQUENCY, IMAGE)
            d[f"{key}_view{view}"] = _restore(out, batched, img)
            d[f"{self.mask_key}_view{view}"] = mask if batched else mask[0]
            d[f"{self.strategy_key}_view{view}"] = strategy if batched else strategy[0]
        if self.hessian is not None:
            d[self.hessian_key] = _restore(self.hessian.ridges(x.mean(dim=1, keepdim=True)), batched, img)
        return d


# ----------------------------------------------------------------------------------------------------------
# intensity normalisation per item (paper section 4)
# ----------------------------------------------------------------------------------------------------------

CT_WINDOWS = {"lung": (-1000.0, 400.0), "abdomen": (-160.0, 240.0), "brain": (-30.0, 90.0), "bone": (-300.0, 1200.0)}
"""CT windows of the paper (Hounsfield units), rescaled to [0, 1] with clipping."""


class ScaleIntensityByModalityd(MapTransform):
    """Rescale each item to [0, 1] by its own rule: a CT window or percentile clipping (paper section 4).

    Items whose ``window_key`` names a CT window (:data:`CT_WINDOWS`, or ``windows``) go through MONAI's
    ``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)``; all others (``"none"``, missing key) through
    ``ScaleIntensityRangePercentiles(lower, upper, 0, 1, clip=True)``, the paper's rule for non-CT modalities.
    A datalist mixing CT and MR / X-ray / photographs is thus normalised item by item. Images with NaN or Inf
    raise a ``ValueError`` naming the key and, for loaded images, the file.

    Args:
        keys: images to rescale.
        window_key: item key naming the CT window (the sample datalists' ``"window"``).
        windows: window name -> ``(a_min, a_max)``; default :data:`CT_WINDOWS`.
        lower, upper: percentiles for the other items.
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
        windows = CT_WINDOWS if windows is None else windows
        self.windows = {
            name: ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True) for name, (a_min, a_max) in windows.items()
        }
        self.percentiles = ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=True)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        window = str(d.get(self.window_key, "none")).lower()
        if window not in self.windows and window not in ("none", ""):
            raise ValueError(
                f"unknown CT window '{window}' under key '{self.window_key}'; known: {sorted(self.windows)}."
            )
        scale = self.windows.get(window, self.percentiles)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False)
            _check_finite(
                image if torch.is_floating_point(image) else image.float(), f"key '{key}'", _source_of(d[key])
            )
            d[key] = scale(d[key])
        return d


# ----------------------------------------------------------------------------------------------------------
# downstream labels
# ----------------------------------------------------------------------------------------------------------


class ValidateLabel(Transform):
    """Check a label map ``(1, *spatial)`` against the classes a config declares; returns it unchanged.

    Raises a ``ValueError`` naming the label's file when it has more than one channel, holds NaN / Inf or
    non-integer values, or values outside ``[0, num_classes)`` (e.g. a 0/255 mask where 0/1 is expected).

    Args:
        num_classes: classes of the task, background included (labels ``0 .. num_classes - 1``).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        self.num_classes = int(num_classes)

    def __call__(self, label: NdarrayOrTensor, name: str = "label") -> NdarrayOrTensor:
        source = _source_of(label).replace("image ", "", 1) or "(in memory) "
        x = convert_to_tensor(label, track_meta=False)
        if x.ndim < 3 or x.shape[0] != 1:
            raise ValueError(
                f"{name} {source}has shape {tuple(x.shape)}; expected one channel, (1, *spatial), of class indices."
            )
        values = torch.unique(x)
        if torch.is_floating_point(values):
            if not bool(torch.isfinite(values).all()):
                raise ValueError(f"{name} {source}contains NaN or Inf values.")
            if not bool((values == values.round()).all()):
                raise ValueError(
                    f"{name} {source}holds non-integer values {values[:8].tolist()}; expected class indices."
                )
            values = values.long()
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"{name} {source}holds classes {bad[:8].tolist()} that the config does not declare: it declares "
                f"{self.num_classes} classes (0 .. {self.num_classes - 1}); values found: {values[:12].tolist()}."
            )
        return label


class ValidateLabeld(MapTransform):
    """Dictionary twin of :class:`ValidateLabel` that also checks that each label has its image's spatial size.

    Place it right after loading, before any spatial transform. Errors name the label's file (and the image's
    for a size mismatch).

    Args:
        keys: label keys.
        num_classes: classes of the task, background included.
        image_key: the image whose spatial size each label must have; None skips the size check.
    """

    def __init__(
        self, keys: KeysCollection, num_classes: int, image_key: str | None = "image", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.validate = ValidateLabel(num_classes)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.validate(d[key], name=f"label '{key}'")
            if self.image_key is not None and self.image_key in d:
                image_size, label_size = tuple(d[self.image_key].shape[1:]), tuple(d[key].shape[1:])
                if image_size != label_size:
                    raise ValueError(
                        f"label '{key}' {_source_of(d[key]).replace('image ', '', 1)}has spatial size {label_size} but "
                        f"its image {_source_of(d[self.image_key]).replace('image ', '', 1)}has {image_size}; "
                        "image and label must be on the same grid."
                    )
        return d


class MaskToBox(Transform):
    """The detection target of a mask: the box around all its foreground, normalised, plus objectness.

    ``(1, *spatial)`` mask -> ``(2 * spatial_dims + 1,)`` float tensor ``[lo_1 .. lo_n, hi_1 .. hi_n, objectness]``
    in :class:`~frepa_monai.networks.heads.DetectionHead`'s format: the corners of the smallest box holding every
    voxel ``> 0`` in array index order (MONAI's corner mode ``xyxy`` / ``xyzxyz``, minimum inclusive, maximum
    exclusive) divided by the spatial size, so in [0, 1]; objectness 1. An empty mask gives zeros with
    objectness 0 (its box is ignored by :class:`~frepa_monai.networks.heads.DetectionLoss`). Computed after the
    spatial transforms, the box follows every crop, resize and flip of the mask.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, mask: NdarrayOrTensor) -> torch.Tensor:
        x = convert_to_tensor(mask, track_meta=False)
        if x.ndim not in (3, 4):
            raise ValueError(f"mask {_source_of(mask)}has shape {tuple(x.shape)}; expected (C, *spatial), 2D or 3D.")
        foreground = (x > 0).any(dim=0)
        n = foreground.ndim
        out = torch.zeros(2 * n + 1, dtype=torch.float32)
        if not bool(foreground.any()):
            return out
        for axis in range(n):
            others = tuple(a for a in range(n) if a != axis)
            hit = torch.nonzero(foreground.any(dim=others) if others else foreground).flatten()
            size = foreground.shape[axis]
            out[axis] = hit[0].item() / size
            out[n + axis] = (hit[-1].item() + 1) / size
        out[-1] = 1.0
        return out


class MaskToBoxd(MapTransform):
    """Dictionary twin of :class:`MaskToBox`: replaces each mask under ``keys`` by its box target (or writes it
    to ``box_keys``)."""

    def __init__(
        self, keys: KeysCollection, box_keys: KeysCollection | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = self.keys if box_keys is None else ensure_tuple(box_keys)
        if len(self.box_keys) != len(self.keys):
            raise ValueError("box_keys must name one output per key.")
        self.to_box = MaskToBox()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, box_key in self.key_iterator(d, self.box_keys):
            d[box_key] = self.to_box(d[key])
        return d


# ----------------------------------------------------------------------------------------------------------
# detection outputs in the input file's own coordinates (inference of the detection bundles)
# ----------------------------------------------------------------------------------------------------------


def _homogeneous(points: np.ndarray, dims: int) -> np.ndarray:
    """``(P, n)`` voxel coordinates -> ``(P, dims + 1)``: zeros for the missing axes (a 2D slice with a 3D
    affine sits at index 0 of its third axis) and a trailing 1."""
    out = np.zeros((points.shape[0], dims + 1))
    out[:, : points.shape[1]] = points
    out[:, -1] = 1.0
    return out


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The ``2 ** n`` corners ``(2 ** n, n)`` of the box ``[lo, hi]``."""
    return np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)


def original_grid_box(pred: torch.Tensor, image: torch.Tensor, objectness_threshold: float = 0.5) -> dict:
    """A :class:`~frepa_monai.networks.heads.DetectionHead` output for one image, in the coordinates of the
    image's file: voxel indices of the loaded array and world (scanner, mm) coordinates.

    ``image`` is the network input ``(C, *spatial)`` as a MetaTensor: after the preprocessing (resize, pad,
    crop...) its ``affine`` maps the network grid to the world, and its ``original_affine`` /
    ``spatial_shape`` meta data describe the file as loaded (files without an affine, PNG / JPEG, load with the
    identity affine, so their world coordinates are voxel coordinates). The box is mapped exactly, without
    resampling: a box edge at ``e`` (edge coordinates: voxel ``i`` spans ``[i, i + 1)``, as ``pred`` is
    normalised by the grid size) is the point ``e - 0.5`` in the affines' voxel-centre coordinates, so its
    position in the file's grid is ``inv(original_affine) @ affine @ (e - 0.5) + 0.5``. For axis-aligned
    preprocessing (resize, pad, crop: what the bundles apply) this is the inverse of the preprocessing; for
    anything else the bounding box of the mapped corners is taken.

    Args:
        pred: ``(2 * n + 1,)``: normalised corner box ``[lo_1 .. lo_n, hi_1 .. hi_n]`` on the network input grid
            and objectness logit.
        image: the network input of that prediction, ``(C, *spatial)`` with ``n`` spatial dims.
        objectness_threshold: ``detected`` is ``sigmoid(logit) >= objectness_threshold``.

    Returns:
        a JSON-ready dict: ``image`` (file name), ``objectness`` (probability), ``detected``, ``box_voxel``
        (integers ``[lo_1 .. lo_n, hi_1 .. hi_n]`` in the file's array index order, minimum inclusive, maximum
        exclusive, clipped to the image, at least one voxel wide: the continuous box rounded to the nearest
        voxel edges), ``box_voxel_continuous`` (unrounded), ``box_world`` (``[min_x, min_y, min_z, max_x, max_y,
        max_z]`` of the physical extent of ``box_voxel``, voxel faces included, in ``space``; None when the file
        has no affine), ``space`` (``RAS`` or ``LPS``, MONAI's reader convention; None without affine),
        ``spatial_shape``, ``affine`` (the file's, identity without affine),
        ``box_normalised`` (``pred``'s box on the network input grid).
    """
    n = image.ndim - 1
    pred = torch.as_tensor(pred).detach().float().cpu().flatten()
    if pred.numel() != 2 * n + 1:
        raise ValueError(
            f"expected a detection output of {2 * n + 1} numbers for a {n}D image, got shape {tuple(pred.shape)}."
        )
    meta = dict(getattr(image, "meta", {}) or {})
    affine = np.asarray(torch.as_tensor(getattr(image, "affine", torch.eye(n + 1))).cpu(), dtype=np.float64)
    dims = affine.shape[0] - 1
    original = meta.get("original_affine")
    original = np.eye(dims + 1) if original is None else np.asarray(torch.as_tensor(original), dtype=np.float64)
    shape = np.array([int(s) for s in meta.get("spatial_shape", image.shape[1:])][:n])
    grid = np.array(image.shape[1:], dtype=np.float64)
    box = pred[: 2 * n].double().numpy().reshape(2, n) * grid  # edge coordinates on the network grid

    to_file = np.linalg.inv(original) @ affine
    corners = _homogeneous(_box_corners(box[0], box[1]) - 0.5, dims) @ to_file.T
    mapped = corners[:, :n] + 0.5
    lo, hi = mapped.min(0), mapped.max(0)
    lo_v = np.clip(np.floor(lo + 0.5), 0, shape - 1).astype(int)
    hi_v = np.clip(np.floor(hi + 0.5), lo_v + 1, shape).astype(int)

    world = _homogeneous(_box_corners(lo_v - 0.5, hi_v - 0.5), dims) @ original.T
    box_world = [round(float(v), 4) for v in (*world[:, :dims].min(0), *world[:, :dims].max(0))]
    has_affine = meta.get("original_affine") is not None
    objectness = float(torch.sigmoid(pred[-1]))
    space = meta.get("space") if has_affine else None
    return {
        "image": str(meta.get("filename_or_obj", "")),
        "objectness": objectness,
        "detected": objectness >= objectness_threshold,
        "box_voxel": [int(v) for v in (*lo_v, *hi_v)],
        "box_voxel_continuous": [round(float(v), 4) for v in (*lo, *hi)],
        "box_world": box_world if has_affine else None,
        "space": None if space is None else str(space),
        "spatial_shape": [int(s) for s in shape],
        "affine": original.tolist(),
        "box_normalised": [float(v) for v in pred[: 2 * n]],
    }


class DetectionBoxToOriginald(MapTransform):
    """Postprocessing of the detection bundles' inference: each detection output under ``keys`` becomes its
    :func:`original_grid_box` dict (under ``box_keys``) and a box mask on the grid of the input file (under
    ``mask_keys``): a ``(1, *spatial_shape)`` uint8 MetaTensor, 1 inside ``box_voxel`` when ``detected`` (all 0
    otherwise), whose meta data are the file's (affine, space, file name), so that ``SaveImaged`` writes a mask
    that overlays the input in a viewer.

    Args:
        keys: detection outputs ``(2 * spatial_dims + 1,)`` (one item, as ``SupervisedEvaluator`` post-processes).
        image_key: the network input of the item (a MetaTensor carrying the preprocessing's geometry).
        box_keys: where to write the dicts; default ``"<key>_box"``.
        mask_keys: where to write the masks; default ``"<key>_box_mask"``.
        objectness_threshold: see :func:`original_grid_box`.
    """

    def __init__(
        self,
        keys,
        image_key: str = "image",
        box_keys=None,
        mask_keys=None,
        objectness_threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.box_keys = [f"{k}_box" for k in self.keys] if box_keys is None else list(ensure_tuple(box_keys))
        self.mask_keys = [f"{k}_box_mask" for k in self.keys] if mask_keys is None else list(ensure_tuple(mask_keys))
        if not len(self.box_keys) == len(self.mask_keys) == len(self.keys):
            raise ValueError("box_keys and mask_keys must name one output per key.")
        self.objectness_threshold = objectness_threshold

    def __call__(self, data):
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(f"DetectionBoxToOriginald needs the network input under '{self.image_key}'.")
        image = d[self.image_key]
        for key, box_key, mask_key in self.key_iterator(d, self.box_keys, self.mask_keys):
            box = original_grid_box(d[key], image, self.objectness_threshold)
            mask = torch.zeros((1, *box["spatial_shape"]), dtype=torch.uint8)
            if box["detected"]:
                n = len(box["spatial_shape"])
                mask[(0, *(slice(a, b) for a, b in zip(box["box_voxel"][:n], box["box_voxel"][n:])))] = 1
            affine = torch.as_tensor(np.asarray(box["affine"]), dtype=torch.float64)
            meta = {
                "filename_or_obj": box["image"],
                "original_affine": affine.clone(),
                "spatial_shape": np.asarray(box["spatial_shape"]),
                "original_channel_dim": "no_channel",
            }
            if box["space"] is not None:
                meta["space"] = box["space"]
            d[box_key], d[mask_key] = box, MetaTensor(mask, affine=affine, meta=meta)
        return d


class SaveBoxJSONd(MapTransform):
    """Write each :func:`original_grid_box` dict under ``keys`` as JSON to
    ``<output_dir>/<input name>_<output_postfix>.json`` (named after the dict's ``image``, as ``SaveImaged`` names
    its files with ``separate_folder=False``).

    Args:
        keys: box dicts.
        output_dir: folder of the JSON files, created if missing.
        output_postfix: appended to the input's file name.
    """

    def __init__(
        self, keys, output_dir: str = "./", output_postfix: str = "box", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            box = d[key]
            name = box.get("image") or f"item_{id(box)}"
            self.output_dir.mkdir(parents=True, exist_ok=True)
            stem = create_file_basename(self.output_postfix, name, self.output_dir, separate_folder=False)
            path = Path(f"{stem}.json")
            lines = [f"  {json.dumps(str(k))}: {json.dumps(v)}" for k, v in box.items()]  # one line per field
            path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
            logger.info(f"saved {path}")
        return d
