"""Frepa reconstruction and consistency losses (paper section 3.2, Eq. 7-11).

Inputs are channel-first batches ``(B, C, *spatial)`` with 2 or 3 spatial dims; every loss builds what it
needs (filters, grids) from the input's shape at call time, so any image size works. Per-image values are
reduced over the batch by ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``), as MONAI's losses do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss

from frepa_monai.frequency import filter_bank, gaussian_highpass

__all__ = [
    "MaskedRMSELoss",
    "GradientLoss",
    "HierarchicalFrequencyLoss",
    "FocalFrequencyLoss",
    "EmbeddingConsistencyLoss",
    "FrepaLoss",
]


def _check_pair(input: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if input.shape != target.shape:
        raise ValueError(f"{name}: input shape {tuple(input.shape)} differs from target shape {tuple(target.shape)}.")
    if input.ndim not in (4, 5):
        raise ValueError(f"{name}: expected (B, C, H, W[, D]) tensors, got shape {tuple(input.shape)}.")


class _ImageLoss(_Loss):
    """Base of the losses that compute one value per image, shape ``(B,)``, then reduce over the batch."""

    def _reduce(self, per_image: torch.Tensor) -> torch.Tensor:
        if self.reduction == "mean":
            return per_image.mean()
        if self.reduction == "sum":
            return per_image.sum()
        if self.reduction == "none":
            return per_image
        raise ValueError(f'Unsupported reduction: {self.reduction}, available options are ["mean", "sum", "none"].')


class MaskedRMSELoss(_ImageLoss):
    """Root mean squared error per image over the masked pixels (Eq. 7).

    For image-masked views ``mask`` is the boolean pixel mask of the corruption (``True`` = masked, MAE
    style); for frequency-masked views it is all ``True`` (or ``None``) and the RMSE covers the whole image.
    An image with no masked pixel contributes 0.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: reconstruction ``(B, C, *spatial)``.
            target: raw image ``(B, C, *spatial)``.
            mask: ``(B, 1 or C, *spatial)`` bool or {0, 1}; ``None`` means every pixel.
        """
        _check_pair(input, target, type(self).__name__)
        sq = (input - target).square()
        axes = tuple(range(1, input.ndim))
        if mask is None:
            mse = sq.mean(dim=axes)
        else:
            weight = mask.to(sq.dtype).expand_as(sq)
            mse = (sq * weight).sum(dim=axes) / weight.sum(dim=axes).clamp_min(1.0)
        return self._reduce(_safe_sqrt(mse))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` that is exactly 0 with a zero (not NaN) gradient at ``x == 0``."""
    return torch.where(x > 0, x.clamp_min(1e-20).sqrt(), torch.zeros_like(x))


class GradientLoss(_ImageLoss):
    """Image gradient loss (Eq. 8): mean absolute difference of forward finite differences.

    ``mean_a mean |diff_a(input) - diff_a(target)|`` over the spatial axes ``a``, per image.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(input, target, type(self).__name__)
        error = input - target  # the finite difference is linear
        axes = tuple(range(1, input.ndim))
        per_axis = [error.diff(dim=a).abs().mean(dim=axes) for a in range(2, input.ndim)]
        return self._reduce(torch.stack(per_axis).mean(0))


class HierarchicalFrequencyLoss(_ImageLoss):
    """Hierarchical frequency-to-spatial loss, HFL (Eq. 9).

    ``mean_k mean |O_k(input) - O_k(target)|`` with Gaussian high-pass filters
    ``H_k(d) = 1 - exp(-d^2 / (c_k min(spatial size))^2)``, compared in the image domain. As the filters are
    linear, one ``rfftn`` of the error and one batched ``irfftn`` over the ``K`` filters suffice
    (:func:`~frepa_monai.frequency.filter_bank`).

    Args:
        cutoff_ratios: the ``c_k``; the paper's (0.1, 0.2, 0.3, 0.4, 0.5).
    """

    def __init__(self, cutoff_ratios: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5), reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if not cutoff_ratios or min(cutoff_ratios) <= 0:
            raise ValueError(f"cutoff_ratios must be positive, got {cutoff_ratios}.")
        self.cutoff_ratios = tuple(float(c) for c in cutoff_ratios)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(input, target, type(self).__name__)
        spatial = tuple(input.shape[2:])
        highpass = [
            gaussian_highpass(spatial, c * min(spatial), real=True, device=input.device) for c in self.cutoff_ratios
        ]
        filtered = filter_bank(input - target, highpass)  # (K, B, C, *spatial): the filters are linear
        per_image = filtered.abs().mean(dim=(0, *range(2, filtered.ndim)))
        return self._reduce(per_image.to(input.dtype))


class FocalFrequencyLoss(_ImageLoss):
    """Focal frequency loss (Jiang et al., ICCV 2021), the alternative the paper rejects (Fig. 4); for comparison.

    ``mean(w * |F(input) - F(target)|^2)`` over the orthonormal spectrum, with the spectrum weight
    ``w = |F(input) - F(target)|^alpha`` normalised to [0, 1] per image and channel and not back-propagated.
    """

    def __init__(self, alpha: float = 1.0, log_matrix: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.alpha = alpha
        self.log_matrix = log_matrix

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(input, target, type(self).__name__)
        dims = tuple(range(2, input.ndim))
        diff = torch.fft.fftn((input - target).float(), dim=dims, norm="ortho")
        distance = diff.real.square() + diff.imag.square()
        with torch.no_grad():
            weight = distance.sqrt() ** self.alpha
            if self.log_matrix:
                weight = torch.log1p(weight)
            weight = weight / weight.amax(dim=dims, keepdim=True).clamp_min(1e-12)
        per_image = (weight * distance).mean(dim=tuple(range(1, input.ndim)))
        return self._reduce(per_image.to(input.dtype))


class EmbeddingConsistencyLoss(_ImageLoss):
    """Embedding consistency loss, ConL (Eq. 10): Jensen-Shannon divergence of two views' embeddings.

    The embeddings ``(B, F, *grid)`` (a feature map; ViT tokens as a grid, or ``(B, F, N)``) become
    distributions by a softmax over the feature axis ``dim`` at every token / voxel; the JS divergence
    (natural log, so in ``[0, ln 2]``) is averaged over tokens per image.
    """

    def __init__(self, dim: int = 1, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.dim = dim

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: embedding shapes differ: {tuple(input.shape)} vs {tuple(target.shape)}."
            )
        log_p = torch.log_softmax(input.float(), dim=self.dim)
        log_q = torch.log_softmax(target.float(), dim=self.dim)
        log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0, device=input.device))
        js = 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m)).sum(dim=self.dim)
        per_image = js.clamp_min(0).flatten(1).mean(dim=1)
        return self._reduce(per_image.to(input.dtype))


class FrepaLoss(torch.nn.Module):
    """The Frepa objective (Eq. 11): ``RMSE + l1 Grad + l2 HFL + l3 Con``, ``(l1, l2, l3) = (1, 1, 0.5)``.

    The reconstruction terms are averaged over the views; the consistency term compares the embeddings of
    two views and is off for the first ``consistency_warmup_epochs`` epochs (``epoch`` counts from 1, as
    ignite's ``engine.state.epoch``: with the default 5 it is on from epoch 6). ``use_grad``, ``use_hfl``
    and ``use_con`` switch terms off for the ablations (w/o GradL, HFL, ConL); a term that is off is
    reported as 0 and not computed.

    Returns a dict with the total under ``"loss"`` and every term (``"rmse"``, ``"grad"``, ``"hfl"``,
    ``"con"``, unweighted) for logging.
    """

    def __init__(
        self,
        lambda_grad: float = 1.0,
        lambda_hfl: float = 1.0,
        lambda_con: float = 0.5,
        consistency_warmup_epochs: int = 5,
        use_grad: bool = True,
        use_hfl: bool = True,
        use_con: bool = True,
        hfl_cutoff_ratios: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    ) -> None:
        super().__init__()
        self.lambda_grad, self.lambda_hfl, self.lambda_con = lambda_grad, lambda_hfl, lambda_con
        self.consistency_warmup_epochs = consistency_warmup_epochs
        self.use_grad, self.use_hfl, self.use_con = use_grad, use_hfl, use_con
        self.rmse = MaskedRMSELoss()
        self.grad = GradientLoss()
        self.hfl = HierarchicalFrequencyLoss(hfl_cutoff_ratios)
        self.con = EmbeddingConsistencyLoss()

    def consistency_active(self, epoch: int | None) -> bool:
        """Whether the consistency term counts at 1-based ``epoch`` (``None``: after the warm-up)."""
        return self.use_con and (epoch is None or epoch > self.consistency_warmup_epochs)

    def forward(
        self,
        recons: Sequence[torch.Tensor],
        target: torch.Tensor,
        masks: Sequence[torch.Tensor | None] | None = None,
        embeddings: Sequence[torch.Tensor] | None = None,
        epoch: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            recons: the reconstruction of every view, each ``(B, C, *spatial)``.
            target: the raw image ``(B, C, *spatial)``.
            masks: per view the pixel mask of :class:`~frepa_monai.transforms.FrepaCorruptd` (or ``None``).
            embeddings: the encoder embeddings of the first two views, ``(B, F, *grid)`` each.
            epoch: the current 1-based epoch.
        """
        if isinstance(recons, torch.Tensor):
            recons = [recons]
        masks = [None] * len(recons) if masks is None else list(masks)
        if len(masks) != len(recons):
            raise ValueError(f"FrepaLoss: {len(recons)} reconstructions but {len(masks)} masks.")
        zero = target.new_zeros(())
        terms = {
            "rmse": torch.stack([self.rmse(r, target, m) for r, m in zip(recons, masks)]).mean(),
            "grad": torch.stack([self.grad(r, target) for r in recons]).mean() if self.use_grad else zero,
            "hfl": torch.stack([self.hfl(r, target) for r in recons]).mean() if self.use_hfl else zero,
            "con": zero,
        }
        if embeddings is not None and len(embeddings) >= 2 and self.consistency_active(epoch):
            terms["con"] = self.con(embeddings[0], embeddings[1])
        total = (
            terms["rmse"]
            + self.lambda_grad * terms["grad"]
            + self.lambda_hfl * terms["hfl"]
            + self.lambda_con * terms["con"]
        )
        return {"loss": total, **terms}
