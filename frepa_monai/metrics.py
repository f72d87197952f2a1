"""Metrics of the Frepa evaluation: frequency fidelity of reconstructions (paper Fig. 7) and the detection
metrics of the downstream detection bundles (paper 4.1.3: IoU, detection ratio, sensitivity, precision).

``frequency_fidelity`` follows the paper's Fig. 7 protocol: ``rho_k = 1 - RMSE(O_k(recon), O_k(target))``
for images in [0, 1], with a Gaussian low-pass ``O_low`` (cut-off ``0.05 * min size``), a Gaussian
high-pass ``O_high`` (cut-off ``0.25 * min size``) and the band pass ``O_mid = 1 - O_low - O_high``.
A perfect reconstruction has ``rho = 1`` in every band; an error confined to high frequencies lowers
mainly ``rho_high``.

``rho`` has little range on [0, 1] images: their high band holds an RMS of about 0.03, so even a flat image
scores ``rho_high`` of about 0.97. ``band_r2`` measures the same bands as a coefficient of determination,
``1 - sum |O_k(pred - target)|^2 / sum |O_k(target - mean(target))|^2``: the image's own mean scores 0, a
perfect reconstruction 1, anything worse than the flat image below 0.
"""

from __future__ import annotations

import math

import torch
from monai.data.box_utils import box_iou, box_pair_giou
from monai.metrics import CumulativeIterationMetric
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction

from frepa_monai.frequency import filter_bank, gaussian_lowpass

__all__ = [
    "FREQUENCY_BANDS",
    "band_filters",
    "frequency_fidelity",
    "FrequencyFidelityMetric",
    "band_energies",
    "band_r2",
    "BandR2Metric",
    "DETECTION_METRICS",
    "detection_scores",
    "DetectionMetric",
]

FREQUENCY_BANDS = ("low", "mid", "high")


def _check_band(band: str) -> None:
    if band not in FREQUENCY_BANDS:
        raise ValueError(f"band must be one of {FREQUENCY_BANDS}, got {band!r}.")


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
        _check_band(band)
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.band = band
        self.low_cutoff_ratio, self.high_cutoff_ratio = low_cutoff_ratio, high_cutoff_ratio

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rho = frequency_fidelity(y_pred, y, self.low_cutoff_ratio, self.high_cutoff_ratio)[f"rho_{self.band}"]
        return rho[:, None]


def band_energies(
    pred: torch.Tensor,
    target: torch.Tensor,
    band: str,
    low_cutoff_ratio: float = 0.05,
    high_cutoff_ratio: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``(B,)``: the error energy ``sum |O_k(pred - target)|^2`` and the target's own energy
    ``sum |O_k(target - mean(target))|^2`` in ``band`` (sums over channels and pixels), as :func:`band_r2` uses them.

    ``mean(target)`` is the spatial mean of each image and channel; the band filters ``O_k`` are those of
    :func:`frequency_fidelity`. Inputs ``(B, C, *spatial)``, 2 or 3 spatial dims.
    """
    _check_band(band)
    if pred.shape != target.shape or pred.ndim not in (4, 5):
        raise ValueError(
            f"band_r2: expected two (B, C, H, W[, D]) tensors of one shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    axes = tuple(range(2, target.ndim))
    target = target if target.dtype == torch.float64 else target.float()
    transfer = band_filters(tuple(target.shape[2:]), low_cutoff_ratio, high_cutoff_ratio, target.device)[band]
    # one batched filter of the error and of the centred target: (1, 2B, C, *spatial)
    both = torch.cat([pred.to(target.dtype) - target, target - target.mean(dim=axes, keepdim=True)])
    energy = filter_bank(both, [transfer])[0].square().flatten(1).sum(dim=1)  # (2B,)
    error, spread = energy.chunk(2)
    return error, spread


def band_r2(
    pred: torch.Tensor,
    target: torch.Tensor,
    band: str,
    low_cutoff_ratio: float = 0.05,
    high_cutoff_ratio: float = 0.25,
) -> torch.Tensor:
    """Band-limited coefficient of determination of ``pred`` against ``target``, one value per image.

    ``1 - sum |O_k(pred - target)|^2 / sum |O_k(target - mean(target))|^2`` (see :func:`band_energies`). The
    image's own mean scores exactly 0, a perfect reconstruction 1, anything worse than that flat image is
    negative; the ratio does not depend on the intensity scale. An image with no energy in the band (a constant
    image) has no defined value: NaN.

    Args:
        pred: predictions ``(B, C, *spatial)``, 2 or 3 spatial dims.
        target: the images ``(B, C, *spatial)``.
        band: ``"low"``, ``"mid"`` or ``"high"``.
        low_cutoff_ratio, high_cutoff_ratio: the band edges of :func:`band_filters`.

    Returns:
        ``(B,)`` float tensor.
    """
    error, spread = band_energies(pred, target, band, low_cutoff_ratio, high_cutoff_ratio)
    return torch.where(spread > 0, 1.0 - error / spread.clamp_min(1e-30), torch.full_like(spread, float("nan")))


class BandR2Metric(CumulativeIterationMetric):
    """:func:`band_r2` of one band pooled over every image seen (``val_r2_low`` / ``_mid`` / ``_high``).

    ``aggregate()`` returns ``1 - sum(error energy) / sum(target energy)`` over all images, the energy-weighted
    mean of their R^2: a nearly flat image (a crop of background) has almost no energy in a band, so its own R^2
    is huge in size and says little, and pooling keeps it from dominating. For a single image it is
    :func:`band_r2`.

    Args:
        band: ``"low"``, ``"mid"`` or ``"high"``.
        low_cutoff_ratio, high_cutoff_ratio: the band edges of :func:`band_filters`.
    """

    def __init__(self, band: str = "high", low_cutoff_ratio: float = 0.05, high_cutoff_ratio: float = 0.25) -> None:
        _check_band(band)
        super().__init__()
        self.band = band
        self.low_cutoff_ratio, self.high_cutoff_ratio = low_cutoff_ratio, high_cutoff_ratio

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, *spatial)`` pair (MONAI batches decollated items) -> ``(B, 2)`` error and target energies."""
        if y is None:
            raise ValueError("BandR2Metric needs the target images y.")
        error, spread = band_energies(y_pred, y, self.band, self.low_cutoff_ratio, self.high_cutoff_ratio)
        return torch.stack([error, spread], dim=1)

    def aggregate(self) -> torch.Tensor:
        energies = self.get_buffer()
        if not isinstance(energies, torch.Tensor) or energies.numel() == 0:
            return torch.tensor(float("nan"))
        error, spread = energies.reshape(-1, 2).double().sum(dim=0)
        return (1.0 - error / spread) if spread > 0 else torch.tensor(float("nan"))


DETECTION_METRICS = ("iou", "giou", "detection_ratio", "sensitivity", "precision")


def _detection_table(pred: torch.Tensor, target: torch.Tensor, objectness_threshold: float) -> torch.Tensor:
    """Per image ``[iou, giou, has_object, predicted_positive]`` of one predicted and one true box each."""
    n = (pred.shape[-1] - 1) // 2
    pred, target = pred.float(), target.float().to(pred.device)
    iou = box_iou(pred[:, : 2 * n], target[:, : 2 * n]).diagonal()  # MONAI has a paired GIoU, no paired IoU
    giou = box_pair_giou(pred[:, : 2 * n], target[:, : 2 * n])
    has_object = (target[:, -1] > 0.5).float()
    positive = (torch.sigmoid(pred[:, -1]) >= objectness_threshold).float()
    return torch.stack([iou, giou, has_object, positive], dim=1)


def _scores_of(table: torch.Tensor, iou_threshold: float) -> dict[str, float]:
    iou, giou, has_object, positive = (table[:, i] for i in range(4))
    objects = has_object > 0
    hit = objects & (iou >= iou_threshold)
    true_positive = float((hit & (positive > 0)).sum())
    n_objects, n_positive = float(objects.sum()), float(positive.sum())
    nan = math.nan
    return {
        "iou": float(iou[objects].mean()) if n_objects else nan,
        "giou": float(giou[objects].mean()) if n_objects else nan,
        "detection_ratio": float(hit.sum()) / n_objects if n_objects else nan,
        "sensitivity": true_positive / n_objects if n_objects else nan,
        "precision": true_positive / n_positive if n_positive else nan,
    }


def detection_scores(
    pred: torch.Tensor, target: torch.Tensor, iou_threshold: float = 0.5, objectness_threshold: float = 0.5
) -> dict[str, float]:
    """Detection metrics of one predicted box per image against one true box (or none) per image.

    ``pred`` and ``target`` are ``(N, 2 * spatial_dims + 1)`` in :class:`~frepa_monai.networks.heads.DetectionHead`
    format: a corner box (MONAI ``xyxy`` / ``xyzxyz``, any consistent unit) and, last, the objectness: a logit in
    ``pred``, 1 (object) or 0 (no object) in ``target``. Over the images that hold an object:

    - ``iou``, ``giou``: mean (generalised) intersection over union of predicted and true box;
    - ``detection_ratio``: fraction whose predicted box has IoU >= ``iou_threshold`` (the paper's cancer detection
      ratio, objectness not used);
    - ``sensitivity``: true positives / objects, a true positive being an image with an object, objectness
      ``sigmoid(logit) >= objectness_threshold`` and IoU >= ``iou_threshold``;
    - ``precision``: true positives / images predicted positive (objectness above threshold, any image).

    Undefined ratios (no object, no positive prediction) are NaN.
    """
    return _scores_of(_detection_table(pred, target, objectness_threshold), iou_threshold)


class DetectionMetric(CumulativeIterationMetric):
    """One of :data:`DETECTION_METRICS` accumulated over iterations (see :func:`detection_scores`), for MONAI's
    ``IgniteMetricHandler``: ``metric(y_pred, y)`` with ``(B, 2 * spatial_dims + 1)`` tensors or lists of
    ``(2 * spatial_dims + 1,)`` tensors (decollated batches), ``aggregate()`` -> the metric over all images.
    """

    def __init__(self, metric_name: str = "iou", iou_threshold: float = 0.5, objectness_threshold: float = 0.5) -> None:
        super().__init__()
        if metric_name not in DETECTION_METRICS:
            raise ValueError(f"metric_name must be one of {DETECTION_METRICS}, got {metric_name!r}.")
        self.metric_name = metric_name
        self.iou_threshold = iou_threshold
        self.objectness_threshold = objectness_threshold

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("DetectionMetric needs the target boxes y.")
        if y_pred.ndim == 1:  # one decollated item
            y_pred, y = y_pred[None], y[None]
        if y_pred.shape != y.shape or y_pred.shape[-1] not in (5, 7):
            raise ValueError(
                f"expected pred and target of shape (B, 5) or (B, 7), got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        return _detection_table(y_pred, y, self.objectness_threshold)

    def aggregate(self) -> torch.Tensor:
        table = self.get_buffer()
        if not isinstance(table, torch.Tensor) or table.numel() == 0:
            return torch.tensor(math.nan)
        return torch.tensor(_scores_of(table.reshape(-1, 4), self.iou_threshold)[self.metric_name])
