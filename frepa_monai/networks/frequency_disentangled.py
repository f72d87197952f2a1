"""Frequency-disentangled segmentation (the related method offered for segmentation beside Frepa).

The input is split into a low-frequency and a high-frequency component, each goes through its own backbone
branch, and the branch features are fused into a segmentation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from frepa_monai.frequency import gaussian_lowpass
from frepa_monai.networks.build_record import BuildRecord

__all__ = ["frequency_split", "FrequencyDisentangledNet"]


def frequency_split(x: torch.Tensor, cutoff_ratio: float, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian split of ``x`` ``(B, C, *spatial)`` into ``(low, high)``, both of ``x``'s shape and dtype.

    ``low = Re(ifft(F * exp(-d^2 / d_c^2)))`` with ``F`` the FFT over the spatial axes, ``d`` the distance of each
    coefficient to the centre of the centred spectrum (index units, from ``torch.fft.fftfreq`` via
    :func:`frepa_monai.frequency.gaussian_lowpass`, so no ``fftshift`` is involved) and
    ``d_c = cutoff_ratio * min(spatial size)``; ``high = x - low``, so ``low + high == x``.
    """
    spatial = tuple(x.shape[-spatial_dims:])
    dims = tuple(range(-spatial_dims, 0))
    lowpass = gaussian_lowpass(spatial, cutoff_ratio * min(spatial), device=x.device)
    spectrum = torch.fft.fftn(x.float(), dim=dims)
    low = torch.fft.ifftn(spectrum * lowpass, dim=dims).real.to(x.dtype)
    return low, x - low


class FrequencyDisentangledNet(BuildRecord, nn.Module):
    """Two backbone branches on the low- and high-frequency parts of the input, fused by concat + 1x1 conv.

    ``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)``.

    Args:
        backbone_low: any MONAI segmentation network mapping ``(B, in_channels, *spatial)`` to
            ``(B, branch_channels, *spatial)``, e.g. ``monai.networks.nets.UNet(..., out_channels=16)``.
        backbone_high: the high-frequency branch: a module, a factory (callable without arguments returning
            one), or None for a copy of ``backbone_low`` with freshly initialised weights.
        cutoff_ratio: Gaussian cut-off ``d_c`` as a fraction of the smallest spatial size.
        spatial_dims: 2 or 3.
        out_channels: segmentation classes.
        branch_channels: channels each branch outputs; default ``backbone_low.out_channels``.
    """

    def __init__(
        self,
        backbone_low: nn.Module,
        backbone_high: nn.Module | Callable[[], nn.Module] | None = None,
        cutoff_ratio: float = 0.1,
        spatial_dims: int = 2,
        out_channels: int = 2,
        branch_channels: int | None = None,
    ) -> None:
        super().__init__()
        if backbone_high is None:
            backbone_high = copy.deepcopy(backbone_low)
            for module in backbone_high.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        elif not isinstance(backbone_high, nn.Module):
            backbone_high = backbone_high()
        if branch_channels is None:
            branch_channels = getattr(backbone_low, "out_channels", None)
            if not isinstance(branch_channels, int):
                raise ValueError("give branch_channels: the backbone has no integer 'out_channels' attribute.")
        self.backbone_low = backbone_low
        self.backbone_high = backbone_high
        self.cutoff_ratio = cutoff_ratio
        self.spatial_dims = spatial_dims
        self.fuse = Convolution(spatial_dims, 2 * branch_channels, out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, out_channels, *spatial)``."""
        low, high = frequency_split(x, self.cutoff_ratio, self.spatial_dims)
        return self.fuse(torch.cat([self.backbone_low(low), self.backbone_high(high)], dim=1))
