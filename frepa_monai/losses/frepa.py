"""Frepa reconstruction and consistency losses (paper section 3.2, Eq. 7-11).

Inputs are channel-first batches ``(B, C, *spatial)`` with 2 or 3 spatial dims; every loss builds what it
needs (filters, grids) from the input's shape at call time, so any image size works. Per-image values are
reduced over the batch by ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``), as MONAI's losses do.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch.nn.modules.loss import _Loss

from frepa_monai.frequency import filter_bank, gaussian_highpass
from frepa_monai.profiling import phase

__all__ = [
    "MaskedRMSELoss",
    "GradientLoss",
    "HierarchicalFrequencyLoss",
    "FocalFrequencyLoss",
    "EmbeddingConsistencyLoss",
    "FrepaLoss",
    "masked_rmse",
    "gradient_l1",
    "hierarchical_frequency_l1",
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


def masked_rmse(error: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image RMSE ``(B,)`` of ``error = input - target`` ``(B, C, *spatial)`` over the ``mask``-ed pixels.

    ``mask`` ``(B, 1 or C, *spatial)`` bool or {0, 1}; ``None`` means every pixel. A one-channel mask is
    applied to the channel sum of the squared error (the same value, one channel of products).
    """
    sq = error.square()
    if mask is None:
        return _safe_sqrt(sq.flatten(1).mean(dim=1))
    weight = mask.to(sq.dtype)
    if weight.shape[1] == 1 and sq.shape[1] > 1:
        count = weight.flatten(1).sum(dim=1) * sq.shape[1]
        sq = sq.sum(dim=1, keepdim=True)
    else:
        weight = weight.expand_as(sq)
        count = weight.flatten(1).sum(dim=1)
    return _safe_sqrt((sq * weight).flatten(1).sum(dim=1) / count.clamp_min(1.0))


def gradient_l1(error: torch.Tensor) -> torch.Tensor:
    """Per-image gradient loss ``(B,)`` of ``error = input - target`` (the finite difference is linear)."""
    axes = tuple(range(1, error.ndim))
    per_axis = [error.diff(dim=a).abs().mean(dim=axes) for a in range(2, error.ndim)]
    return torch.stack(per_axis).mean(0)


_HFL_CHUNK_ELEMENTS = 2**22
"""At most this many filtered values (16 MiB of float32) per chunk of :func:`hierarchical_frequency_l1`."""


@lru_cache(maxsize=16)
def _highpass_bank(spatial: tuple[int, ...], cutoff_ratios: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The ``K`` Gaussian high-pass filters of :func:`hierarchical_frequency_l1`, ``(K, *half_spectrum)`` (cached)."""
    return torch.stack([gaussian_highpass(spatial, c * min(spatial), real=True, device=device) for c in cutoff_ratios])


def hierarchical_frequency_l1(error: torch.Tensor, cutoff_ratios: Sequence[float]) -> torch.Tensor:
    """Per-image HFL ``(B,)`` of ``error = input - target``: ``mean_k mean |O_k(error)|`` (the filters are linear)."""
    filters = _highpass_bank(tuple(error.shape[2:]), tuple(cutoff_ratios), error.device)
    # a few images at a time: the K filtered copies of a whole 3D batch are large allocations that the allocator
    # maps afresh at every step (3D 8 x 64^3: 0.55x the time image by image); the values are the same
    per_chunk = max(1, _HFL_CHUNK_ELEMENTS // (len(filters) * error[0].numel()))
    per_image = []
    for chunk in error.split(per_chunk):
        filtered = filter_bank(chunk, filters)  # (K, b, C, *spatial)
        per_image.append(filtered.abs().mean(dim=(0, *range(2, filtered.ndim))))
    return torch.cat(per_image).to(error.dtype)


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
        return self._reduce(masked_rmse(input - target, mask))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` that is exactly 0 with a zero (not NaN) gradient at ``x == 0``."""
    return torch.where(x > 0, x.clamp_min(1e-20).sqrt(), torch.zeros_like(x))


class GradientLoss(_ImageLoss):
    """Image gradient loss (Eq. 8): mean absolute difference of forward finite differences.

    ``mean_a mean |diff_a(input) - diff_a(target)|`` over the spatial axes ``a``, per image.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(input, target, type(self).__name__)
        return self._reduce(gradient_l1(input - target))


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
        return self._reduce(hierarchical_frequency_l1(input - target, self.cutoff_ratios))


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
        recons: Sequence[torch.Tensor] | torch.Tensor,
        target: torch.Tensor,
        masks: Sequence[torch.Tensor | None] | None = None,
        embeddings: Sequence[torch.Tensor] | None = None,
        epoch: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            recons: the reconstruction of every view, each ``(B, C, *spatial)``, or one ``(V B, C, *spatial)``
                tensor holding the ``V`` views one after the other along the batch (the autoencoder's output on
                the stacked views; a tensor of ``target``'s batch size is one view).
            target: the raw image ``(B, C, *spatial)``.
            masks: per view the pixel mask of :class:`~frepa_monai.transforms.FrepaCorruptd` (or ``None``).
            embeddings: the encoder embeddings of the first two views, ``(B, F, *grid)`` each.
            epoch: the current 1-based epoch.

        The reconstruction terms are computed once, on the error of all views stacked along the batch: the mean
        over the ``V B`` images is the mean over views of each view's batch mean.
        """
        recon = recons if isinstance(recons, torch.Tensor) else torch.cat(list(recons))
        batch = target.shape[0]
        if recon.ndim not in (4, 5) or recon.shape[0] % batch or recon.shape[1:] != target.shape[1:]:
            raise ValueError(
                f"FrepaLoss: the reconstruction shape {tuple(recon.shape)} differs from target shape "
                f"{tuple(target.shape)} (or from V of its views stacked along the batch, in 2 or 3 spatial dims)."
            )
        n_views = recon.shape[0] // batch
        masks = [None] * n_views if masks is None else list(masks)
        if len(masks) != n_views:
            raise ValueError(f"FrepaLoss: {n_views} reconstructions but {len(masks)} masks.")
        # (V B, C, *spatial): every view's error against the raw image, one subtraction, in float32 (under AMP
        # the reconstruction is float16, whose sums over an image's pixels would overflow)
        error = (recon.float().view(n_views, *target.shape) - target.float()[None]).view(recon.shape)
        zero = target.new_zeros(())
        with phase("loss_rmse"):
            rmse = _views_rmse(error, masks, batch)
        with phase("loss_grad"):
            grad = gradient_l1(error).mean() if self.use_grad else zero
        with phase("loss_hfl"):
            hfl = hierarchical_frequency_l1(error, self.hfl.cutoff_ratios).mean() if self.use_hfl else zero
        terms = {"rmse": rmse, "grad": grad, "hfl": hfl, "con": zero}
        if embeddings is not None and len(embeddings) >= 2 and self.consistency_active(epoch):
            with phase("loss_con"):
                terms["con"] = self.con(embeddings[0], embeddings[1])
        total = (
            terms["rmse"]
            + self.lambda_grad * terms["grad"]
            + self.lambda_hfl * terms["hfl"]
            + self.lambda_con * terms["con"]
        )
        return {"loss": total, **terms}


def _views_rmse(error: torch.Tensor, masks: list[torch.Tensor | None], batch: int) -> torch.Tensor:
    """Mean masked RMSE of the stacked views' ``error`` ``(V B, C, *spatial)``; a view's ``None`` mask is all pixels."""
    if all(m is None for m in masks):
        return masked_rmse(error).mean()
    channels = max(m.shape[1] for m in masks if m is not None)
    full = error.new_ones((batch, channels, *error.shape[2:]), dtype=torch.bool)
    return masked_rmse(error, torch.cat([full if m is None else m.bool().expand_as(full) for m in masks])).mean()
