"""Frepa's corruptions, array transforms (paper 3.1.1, Eq. 1-3 and 12; 3.1.2, Eq. 4 and 13; Fig. 2a).

- :class:`FrequencyDualMask`: high-frequency masking of the centred spectrum and low-frequency perturbation.
- :class:`HistogramEqualizedMask`: image patches replaced by noise with each patch's mean and standard deviation.
- :class:`FrepaCorrupt`: the views of one training step, each made by one of the two with ``prob_frequency``.

Sizes are the paper's at its working size :data:`PAPER_SIZE` and scaled to other image sizes unless
``literal_sizes=True`` (:func:`scale_patch_size`, :func:`scale_sigma_ratio`). Every image of a batch gets its own
draw; all channels of one image share it. The dictionary twins are in :mod:`.dictionary`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import RandomizableTransform
from monai.utils import TransformBackends

from frepa_monai.frequency import frequency_indices, squared_frequency_distance
from frepa_monai.transforms.utils import TorchSeeded, as_batch, restore, seeded_generator, standard_normal

__all__ = [
    "FREQUENCY",
    "IMAGE",
    "PAPER_SIZE",
    "size_ratio",
    "scale_patch_size",
    "scale_sigma_ratio",
    "FrequencyDualMask",
    "HistogramEqualizedMask",
    "FrepaViews",
    "FrepaCorrupt",
]

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


class FrequencyDualMask(TorchSeeded):
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
        x, batched = as_batch(img, self.spatial_dims, type(self).__name__)
        if not self._do_transform or not (self.high_freq_mask or self.low_freq_perturb):
            return img
        return restore(self.corrupt(x, seeded_generator(self._seed, x.device)), batched, img)

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
        noise = standard_normal((len(sigma), len(plan.noise_weight), 2), generator, device, torch.float32)
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


class HistogramEqualizedMask(TorchSeeded):
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
        x, batched = as_batch(img, self.spatial_dims, type(self).__name__)
        if not self._do_transform:
            mask = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
            return img, (mask if batched else mask[0])
        out, mask = self.corrupt(x, seeded_generator(self._seed, x.device))
        return restore(out, batched, img), (mask if batched else mask[0])

    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a float batch ``(B, C, *spatial)``; returns the new batch and its pixel mask ``(B, 1, *spatial)``."""
        batch, channels, *spatial = x.shape
        nd = len(spatial)
        ps = self.patch_size_at(spatial)
        grid = [math.ceil(s / ps) for s in spatial]
        pad = [v for p, s in zip(reversed(grid), reversed(spatial)) for v in (0, p * ps - s)]
        n_patches = math.prod(grid)
        n_masked = int(round(self.mask_ratio * n_patches))
        scores = torch.rand((batch, n_patches), generator=generator, device=x.device)
        chosen = scores.topk(n_masked, dim=1).indices  # (B, k) patch indices in C order of the grid
        patches = _patchify(F.pad(x, pad) if any(pad) else x, grid, ps)  # (B, N, C, ps^nd), a copy to write into
        images = torch.arange(batch, device=x.device)[:, None]
        if self.fill == "zero":
            patches[images, chosen] = 0.0
        else:
            picked = patches[images, chosen]  # (B, k, C, ps^nd)
            valid = None
            if any(pad):  # partial edge patches: their moments use the real pixels only
                ones = F.pad(torch.ones((1, 1, *spatial), device=x.device, dtype=x.dtype), pad)
                valid = _patchify(ones, grid, ps)[0][chosen]  # (B, k, 1, ps^nd)
            mean, std = _patch_moments(picked, valid)
            # one noise draw per patch, shared by the channels (as in FrequencyDualMask): a grey image repeated to
            # RGB stays grey; each channel still gets its own mean and standard deviation
            noise = standard_normal((batch, n_masked, 1, ps**nd), generator, x.device, x.dtype)
            noise_mean, noise_std = _patch_moments(noise, valid, centred=False)
            scale = std / noise_std.clamp_min(1e-12)
            patches[images, chosen] = torch.addcmul(mean - noise_mean * scale, noise, scale)  # the patch's moments
        masked = torch.zeros((batch, n_patches, 1, 1), dtype=x.dtype, device=x.device)
        masked[images, chosen] = 1.0
        out = _unpatchify(patches, grid, ps)
        mask = _unpatchify(masked.expand(-1, -1, -1, ps**nd), grid, ps).bool()
        crop = (slice(None), slice(None), *[slice(0, s) for s in spatial])
        return out[crop], mask[crop]


def _patchify(x: torch.Tensor, grid: Sequence[int], ps: int) -> torch.Tensor:
    """``(B, C, *[g * ps for g in grid])`` -> ``(B, N, C, ps^nd)``, the patches in C order of the grid (a copy)."""
    nd = len(grid)
    tiled = x.view(*x.shape[:2], *[n for g in grid for n in (g, ps)])  # (B, C, G1, ps, G2, ps, ...)
    order = (0, *range(2, 2 + 2 * nd, 2), 1, *range(3, 3 + 2 * nd, 2))  # (B, G1, G2, ..., C, ps, ps, ...)
    return tiled.permute(order).reshape(x.shape[0], math.prod(grid), x.shape[1], ps**nd)


def _unpatchify(patches: torch.Tensor, grid: Sequence[int], ps: int) -> torch.Tensor:
    """The inverse of :func:`_patchify`: ``(B, N, C, ps^nd)`` -> ``(B, C, *[g * ps for g in grid])``."""
    nd, (batch, _, channels, _) = len(grid), patches.shape
    tiled = patches.reshape(batch, *grid, channels, *[ps] * nd)  # (B, G1, G2, ..., C, ps, ps, ...)
    order = (0, nd + 1, *[a for i in range(nd) for a in (1 + i, nd + 2 + i)])  # (B, C, G1, ps, G2, ps, ...)
    return tiled.permute(order).reshape(batch, channels, *[g * ps for g in grid])


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


class FrepaViews(NamedTuple):
    """The corrupted views of one call of :class:`FrepaCorrupt`, one list entry per view.

    - ``views``: the corrupted images, the input's shape, type, dtype and device;
    - ``masks``: bool pixel masks ``(1, *spatial)`` (``(B, 1, *spatial)`` for batches), ``True`` where the image
      masking replaced a patch and everywhere for a frequency-masked view (so the masked RMSE covers it whole);
    - ``strategies``: int64 :data:`FREQUENCY` or :data:`IMAGE`, shape ``()`` (``(B,)`` for batches).
    """

    views: list
    masks: list
    strategies: list


class FrepaCorrupt(TorchSeeded):
    """The corrupted views of a Frepa step (paper Fig. 2a and 3.2): each view by frequency dual-component masking
    with probability ``prob_frequency``, else by histogram-equalized masking, drawn per view and per image.

    Works on single images in a data pipeline and on a batch already on the GPU (pass ``spatial_dims``); returns
    :class:`FrepaViews`. The Hessian channel of the encoder input is a transform of its own,
    :class:`~frepa_monai.transforms.HessianFilter`.

    Args:
        views: number of views.
        prob_frequency: probability of the frequency strategy for a view.
        frequency_mask: offer the frequency strategy (``False``: the "w/o FM" ablation, image masking only).
        image_mask: offer the image strategy (``False``: frequency masking only).
        fill: image masking fill, ``"histogram"`` or ``"zero"`` (the "w/o IM" ablation).
        high_freq_mask, low_freq_perturb, cutoff_ratio, sigma_ratio, frequency_patch_size: see
            :class:`FrequencyDualMask` (``frequency_patch_size`` is its ``patch_size``).
        mask_ratio, image_patch_size: see :class:`HistogramEqualizedMask` (``image_patch_size`` is its
            ``patch_size``).
        literal_sizes: take the patch sizes and ``sigma_ratio`` as given at every image size instead of scaling
            them from the paper's working size.
        spatial_dims: 2 or 3; required for batched input.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
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
        spatial_dims: int | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, 1.0)
        if not (frequency_mask or image_mask):
            raise ValueError("FrepaCorrupt needs at least one of frequency_mask and image_mask.")
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

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> FrepaViews:
        """The views of ``img`` ``(C, *spatial)`` or ``(B, C, *spatial)``."""
        if randomize:
            self.randomize()
        x, batched = as_batch(img, self.spatial_dims, type(self).__name__)
        views = self.corrupt(x, seeded_generator(self._seed, x.device))
        return FrepaViews(
            [restore(v, batched, img) for v in views.views],
            [m if batched else m[0] for m in views.masks],
            [s if batched else s[0] for s in views.strategies],
        )

    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> FrepaViews:
        """The views of a float batch ``(B, C, *spatial)`` as batched tensors, drawn from ``generator``."""
        out = FrepaViews([], [], [])
        for _ in range(self.views):
            use_freq = torch.rand(x.shape[0], generator=generator, device=x.device) < self.prob_frequency
            view = torch.empty_like(x)
            mask = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
            if bool(use_freq.any()):
                view[use_freq] = self.frequency.corrupt(x[use_freq], generator)
            if not bool(use_freq.all()):
                view[~use_freq], mask[~use_freq] = self.image.corrupt(x[~use_freq], generator)
            out.views.append(view)
            out.masks.append(mask)
            out.strategies.append(torch.where(use_freq, FREQUENCY, IMAGE))
        return out
