"""The MFM baseline (Xie et al., "Masked Frequency Modeling for Self-Supervised Visual Pre-Training", ICLR 2023),
paper 4.1: remove a random low- or high-frequency disc of the centred spectrum, recover it
(:class:`~frepa_monai.losses.MaskedFrequencyL1Loss`). Defaults to ``use_hessian=False`` (the published method).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from frepa_monai.frequency import squared_frequency_distance
from frepa_monai.losses import MaskedFrequencyL1Loss
from frepa_monai.losses.baselines import spatial_axes
from frepa_monai.profiling import phase
from frepa_monai.strategies.base import PretrainStrategy, StrategyOutput, network_input

__all__ = ["circular_frequency_mask", "MFMStrategy"]


def circular_frequency_mask(
    spatial: Sequence[int], radius: torch.Tensor, low_pass: torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """The frequencies an MFM filter removes, in the un-shifted ``torch.fft.fftn`` layout.

    A low-pass filter keeps the coefficients at distance ``d <= radius`` from the centre of the centred spectrum
    and removes ``d > radius``; a high-pass filter keeps ``d > radius`` and removes ``d <= radius`` (DC included).
    ``d`` is measured in index units (:func:`~frepa_monai.frequency.squared_frequency_distance`), which is
    symmetric under ``k -> -k``, so the kept spectrum is Hermitian and its inverse FFT real.

    Args:
        spatial: image size ``(H, W[, D])``.
        radius: ``(B,)`` radii in index units.
        low_pass: ``(B,)`` bool, low-pass (``True``) or high-pass filter per image.

    Returns:
        ``(B, 1, *spatial)`` bool, ``True`` = removed (masked) frequency.
    """
    d2 = squared_frequency_distance(spatial, device=device)
    view = (-1, 1) + (1,) * len(spatial)
    inside = d2[None, None] <= radius.to(d2).square().view(view)
    return torch.where(low_pass.to(inside.device).view(view), ~inside, inside)


class MFMStrategy(PretrainStrategy):
    """MFM (Xie et al. 2023): remove a random low- or high-frequency disc of the spectrum, recover it.

    Per image a low-pass (probability ``low_pass_prob``) or a high-pass circular filter of radius
    ``r = u * min(spatial)``, ``u ~ U(radius_ratio)``, is applied to the centred spectrum
    (:func:`circular_frequency_mask`); the corrupted image is the real part of the inverse FFT, clipped to
    ``[0, 1]`` as MFM does (``clip``). Loss: :class:`MaskedFrequencyL1Loss` on the removed frequencies.

    Radius: MFM uses a fixed radius of 16 px on 224 px images (``16 / 224 = 0.071``) and picks low- or high-pass
    with probability 0.5. Here the radius is drawn per image in ``radius_ratio = (0.05, 0.10)`` of the smallest
    image side, a range around MFM's ratio (25.6-51.2 index units at 512 px, 6.4-12.8 at 128^3); pass a float,
    e.g. ``16 / 224``, for MFM's fixed radius. In 3D the disc is a ball (``fftn`` over the three axes).

    Args:
        spatial_dims: 2 or 3.
        radius_ratio: ``(low, high)`` range of the radius relative to ``min(spatial)``, or one fixed ratio.
        low_pass_prob: probability of a low-pass filter (MFM: 0.5).
        clip: clip the corrupted image to ``[0, 1]`` (MFM; inputs are in ``[0, 1]``). ``False`` keeps the exact
            band-limited image (the removed band is then exactly zero in its spectrum).
        use_hessian: feed ``concat(corrupted, hessian)`` like Frepa (default ``False``: the published method).
        sigmas: Hessian filter scales (with ``use_hessian``).
    """

    name = "mfm"

    def __init__(
        self,
        spatial_dims: int,
        radius_ratio: Sequence[float] | float = (0.05, 0.10),
        low_pass_prob: float = 0.5,
        clip: bool = True,
        use_hessian: bool = False,
        sigmas=(1.0, 2.0, 3.0),
    ) -> None:
        super().__init__(spatial_dims, use_hessian, sigmas)
        low, high = (radius_ratio, radius_ratio) if isinstance(radius_ratio, (int, float)) else radius_ratio
        if not 0 < low <= high:
            raise ValueError(f"radius_ratio must satisfy 0 < low <= high, got {radius_ratio}.")
        if not 0.0 <= low_pass_prob <= 1.0:
            raise ValueError(f"low_pass_prob must be in [0, 1], got {low_pass_prob}.")
        self.radius_ratio = (float(low), float(high))
        self.low_pass_prob = low_pass_prob
        self.clip = clip
        self.loss = MaskedFrequencyL1Loss()

    def draw_mask(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The removed frequencies of a batch ``(B, C, *spatial)``: ``(B, 1, *spatial)`` bool, un-shifted layout."""
        batch, spatial = images.shape[0], images.shape[2:]
        low_pass = torch.rand(batch, generator=generator, device=images.device) < self.low_pass_prob
        low, high = self.radius_ratio
        ratio = low + (high - low) * torch.rand(batch, generator=generator, device=images.device)
        return circular_frequency_mask(spatial, ratio * min(spatial), low_pass, device=images.device)

    def corrupt(self, images: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """``Re(ifftn(fftn(images) * ~masked))`` ``(B, C, *spatial)``, clipped to [0, 1] with ``clip``."""
        dims = spatial_axes(images)
        spectrum = torch.fft.fftn(images.float(), dim=dims).masked_fill(masked, 0)
        out = torch.fft.ifftn(spectrum, dim=dims).real
        if self.clip:
            out = out.clamp(0.0, 1.0)
        return out.to(images.dtype) if images.is_floating_point() else out

    def __call__(
        self, network: nn.Module, images: torch.Tensor, epoch: int, hessian: torch.Tensor | None = None
    ) -> StrategyOutput:
        with phase("hessian"):
            hessian = self.hessian_of(images, hessian)
        with phase("corruption"):
            generator = self.draw_generator(images.device)
            masked = self.draw_mask(images, generator)
            corrupted = self.corrupt(images, masked)
        with phase("forward"):
            recon = network(network_input(corrupted, hessian))
        with phase("loss_freq_l1"):
            freq_l1 = self.loss(recon, images, masked)
        return StrategyOutput(
            loss=freq_l1,
            corrupted=corrupted,
            recon=recon,
            terms={"freq_l1": freq_l1.detach(), "loss": freq_l1.detach()},
        )
