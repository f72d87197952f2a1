"""Frequency-grid helpers shared by the Frepa transforms, losses and metrics.

All grids are in the un-shifted order of ``torch.fft.fftn`` (or ``rfftn`` when ``real=True``) and measure
frequencies in integer index units, so the distance of a coefficient to the centre of the *centred* spectrum
(paper Eq. 1) is ``sqrt(sum_a k_a^2)`` without any ``fftshift``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["frequency_indices", "squared_frequency_distance", "gaussian_highpass", "gaussian_lowpass", "filter_bank"]


def frequency_indices(size: int, real: bool = False) -> torch.Tensor:
    """Signed integer frequency of each FFT index along one axis, shape ``(size,)`` or ``(size // 2 + 1,)``.

    For even ``size`` the Nyquist index holds ``-size / 2`` (as ``torch.fft.fftfreq``), also in the real
    (``rfft``) layout, so ``k + size // 2`` is the coefficient's position in the ``fftshift``-ed spectrum.
    """
    k = torch.fft.fftfreq(size, d=1.0 / size).round().long()
    return k[: size // 2 + 1] if real else k


@lru_cache(maxsize=32)
def _squared_distance(spatial_shape: tuple[int, ...], real: bool, device: torch.device) -> torch.Tensor:
    d2 = torch.zeros((), dtype=torch.float32)
    last = len(spatial_shape) - 1
    for axis, size in enumerate(spatial_shape):
        k = frequency_indices(size, real=real and axis == last).float()
        view = [1] * len(spatial_shape)
        view[axis] = -1
        d2 = d2 + k.view(view) ** 2
    return d2.to(device)


def squared_frequency_distance(
    spatial_shape: Sequence[int], real: bool = False, device: torch.device | str | None = None
) -> torch.Tensor:
    """Squared distance ``d^2`` of every spectrum coefficient to the spectrum centre (index units).

    Args:
        spatial_shape: spatial size of the image, e.g. ``(H, W)`` or ``(H, W, D)``.
        real: return the half grid of ``torch.fft.rfftn`` (last axis ``size // 2 + 1``).
        device: device of the returned tensor (cached per shape and device; do not modify it in place).

    Returns:
        float32 tensor of the spectrum's shape.
    """
    return _squared_distance(tuple(int(s) for s in spatial_shape), bool(real), torch.device(device or "cpu"))


def gaussian_lowpass(
    spatial_shape: Sequence[int], cutoff: float, real: bool = False, device: torch.device | str | None = None
) -> torch.Tensor:
    """Gaussian (exponential) low-pass transfer function ``exp(-d^2 / cutoff^2)``; ``cutoff`` in index units."""
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}.")
    return torch.exp(-squared_frequency_distance(spatial_shape, real, device) / cutoff**2)


def gaussian_highpass(
    spatial_shape: Sequence[int], cutoff: float, real: bool = False, device: torch.device | str | None = None
) -> torch.Tensor:
    """Gaussian high-pass transfer function ``1 - exp(-d^2 / cutoff^2)`` (paper Eq. 9's ``O_h``)."""
    return 1.0 - gaussian_lowpass(spatial_shape, cutoff, real, device)


def filter_bank(x: torch.Tensor, transfer_functions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply ``K`` real, centred-symmetric frequency filters to a batch ``(B, C, *spatial)`` at once.

    Args:
        x: real images, 2 or 3 spatial dims.
        transfer_functions: ``K`` tensors in the ``rfftn`` layout of ``x``'s spatial shape (``real=True``
            grids of this module), or one ``(K, *half_spectrum)`` tensor of them.

    Returns:
        ``(K, B, C, *spatial)`` float32 tensor (float64 for float64 input): one forward ``rfftn`` and one
        batched ``irfftn``.
    """
    spatial = tuple(x.shape[2:])
    bank = transfer_functions if isinstance(transfer_functions, torch.Tensor) else torch.stack(list(transfer_functions))
    filters = bank.view(len(bank), 1, 1, *bank.shape[1:])
    x = x if x.dtype == torch.float64 else x.float()
    spectrum = torch.fft.rfftn(x, dim=tuple(range(2, x.ndim)))
    return torch.fft.irfftn(spectrum[None] * filters, s=spatial, dim=tuple(range(3, x.ndim + 1)))
