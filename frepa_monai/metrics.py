"""Metrics of the Frepa evaluation (spec section 5): frequency fidelity of reconstructions.

``frequency_fidelity`` follows the paper's Fig. 7 protocol: ``rho_k = 1 - RMSE(O_k(recon), O_k(target))``
for images in [0, 1], with a Gaussian low-pass ``O_low`` (cut-off ``0.05 * min size``), a Gaussian
high-pass ``O_high`` (cut-off ``0.25 * min size``) and the band pass ``O_mid = 1 - O_low - O_high``.
A perfect reconstruction has ``rho = 1`` in every band; an error confined to high frequencies lowers
mainly ``rho_high``.
"""

from __future__ import annotations

import torch
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction

from frepa_monai.frequency import filter_bank, gaussian_lowpass

__all__ = ["FREQUENCY_BANDS", "band_filters", "frequency_fidelity", "FrequencyFidelityMetric"]

FREQUENCY_BANDS = ("low", "mid", "high")


def band_filters(
    spatial_shape: tuple[int, ...],
    low_cutoff_ratio: float = 0.05,
    high_cutoff_ratio: float = 0.25,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Transfer functions of ``O_low``, ``O_mid`` and ``O_high`` in the ``rfftn`` layout (they sum to 1)."""
    size = min(spatial_shape)
    low = gaussian_lowpass(spatial_shape, low_cutoff_ratio * size, real=True, device=device)
    high = 1.0 - gaussian_lowpass(spatial_shape, high_cutoff_ratio * size, real=True, device=device)
    return {"low": low, "mid": 1.0 - low - high, "high": high}


def frequency_fidelity(
    recon: torch.Tensor, target: torch.Tensor, low_cutoff_ratio: float = 0.05, high_cutoff_ratio: float = 0.25
) -> dict[str, torch.Tensor]:
    """``rho_low``, ``rho_mid``, ``rho_high`` per image.

    Args:
        recon: reconstructions ``(B, C, *spatial)`` in [0, 1], 2 or 3 spatial dims.
        target: the images ``(B, C, *spatial)``.

    Returns:
        ``{"rho_low": (B,), "rho_mid": (B,), "rho_high": (B,)}``; each ``1 - RMSE`` of the band-filtered error
        over channels and pixels (filtering is linear, so ``O(recon) - O(target) = O(recon - target)``).
    """
    if recon.shape != target.shape or recon.ndim not in (4, 5):
        raise ValueError(
            f"frequency_fidelity: expected two (B, C, H, W[, D]) tensors of one shape, got {tuple(recon.shape)} "
            f"and {tuple(target.shape)}."
        )
    filters = band_filters(tuple(recon.shape[2:]), low_cutoff_ratio, high_cutoff_ratio, recon.device)
    filtered = filter_bank(recon - target, [filters[band] for band in FREQUENCY_BANDS])  # (3, B, C, *spatial)
    rmse = filtered.square().mean(dim=tuple(range(2, filtered.ndim))).sqrt()
    return {f"rho_{band}": 1.0 - rmse[k] for k, band in enumerate(FREQUENCY_BANDS)}


class FrequencyFidelityMetric(RegressionMetric):
    """MONAI cumulative metric of one band of :func:`frequency_fidelity`, for evaluators and handlers.

    Args:
        band: ``"low"``, ``"mid"`` or ``"high"``.
        reduction, get_not_nans: as MONAI's regression metrics.
    """

    def __init__(
        self,
        band: str = "high",
        low_cutoff_ratio: float = 0.05,
        high_cutoff_ratio: float = 0.25,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        if band not in FREQUENCY_BANDS:
            raise ValueError(f"band must be one of {FREQUENCY_BANDS}, got {band!r}.")
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.band = band
        self.low_cutoff_ratio, self.high_cutoff_ratio = low_cutoff_ratio, high_cutoff_ratio

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rho = frequency_fidelity(y_pred, y, self.low_cutoff_ratio, self.high_cutoff_ratio)[f"rho_{self.band}"]
        return rho[:, None]
