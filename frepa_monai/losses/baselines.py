"""The objectives of the pretraining baselines (paper 4.1): MAE's masked-patch MSE and MFM's frequency L1.

- :class:`MaskedPatchMSELoss`: MAE (He et al., CVPR 2022), mean squared error over the masked patches.
- :class:`MaskedFrequencyL1Loss`: MFM (Xie et al., ICLR 2023), L1 of the spectrum over the removed frequencies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep
from torch.nn.modules.loss import _Loss

__all__ = ["spatial_axes", "patch_to_pixel_mask", "MaskedPatchMSELoss", "MaskedFrequencyL1Loss"]


def spatial_axes(x: torch.Tensor) -> tuple[int, ...]:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a batch (B, C, H, W[, D]), got shape {tuple(x.shape)}.")
    return tuple(range(2, x.ndim))


def patch_to_pixel_mask(mask: torch.Tensor, patch_size: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Patch-grid mask ``(B, *grid)`` -> pixel mask ``(B, 1, *spatial)``; the last patches may be cut by the border."""
    return _patches_to_pixels(mask[:, None], patch_size, spatial)


def _patches_to_pixels(x: torch.Tensor, patch_size: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Repeat every patch value over its pixels: ``(B, C, *grid)`` -> ``(B, C, *spatial)``."""
    for axis, (p, s) in enumerate(zip(patch_size, spatial)):
        x = x.repeat_interleave(int(p), dim=axis + 2).narrow(axis + 2, 0, int(s))
    return x


def _patch_sum(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Sum over channels and each patch: ``(B, C, *spatial)`` -> ``(B, 1, *ceil(spatial / patch_size))``."""
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    ps = tuple(int(p) for p in patch_size)
    return pool(x.sum(1, keepdim=True), ps, ps, ceil_mode=True, divisor_override=1)


class MaskedPatchMSELoss(_Loss):
    """MAE's loss: mean squared error over the pixels of the masked patches.

    With ``norm_pix_loss=True`` each target patch is first normalised by its own mean and standard deviation
    over its pixels and channels (MAE: ``(t - mean) / sqrt(var + 1e-6)``, unbiased variance). Patches cut by the
    image border use their pixels inside the image. A batch with no masked patch gives 0.

    Args:
        patch_size: patch size per spatial axis (int or sequence).
        norm_pix_loss: normalise the target per patch.
        eps: added to the variance.
    """

    def __init__(self, patch_size: Sequence[int] | int = 16, norm_pix_loss: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def normalize_patches(self, target: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> the target with every patch at zero mean and unit (unbiased) variance."""
        spatial = target.shape[2:]
        patch = ensure_tuple_rep(self.patch_size, len(spatial))
        count = _patch_sum(torch.ones_like(target[:1]), patch)  # (1, 1, *grid) pixels x channels per patch
        mean = _patches_to_pixels(_patch_sum(target, patch) / count, patch, spatial)
        centred = target - mean
        var = _patch_sum(centred.square(), patch) / (count - 1).clamp_min(1)
        return centred / _patches_to_pixels((var + self.eps).sqrt(), patch, spatial)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: reconstruction ``(B, C, *spatial)``.
            target: raw image ``(B, C, *spatial)``.
            mask: patch-grid mask ``(B, *ceil(spatial / patch_size))``, ``True`` = masked patch.
        """
        if input.shape != target.shape:
            raise ValueError(f"input shape {tuple(input.shape)} differs from target shape {tuple(target.shape)}.")
        spatial_axes(input)
        input, target = input.float(), target.float()
        spatial = target.shape[2:]
        patch = ensure_tuple_rep(self.patch_size, len(spatial))
        if self.norm_pix_loss:
            target = self.normalize_patches(target)
        weight = patch_to_pixel_mask(mask, patch, spatial).to(input.dtype)  # (B, 1, *spatial)
        sq = (input - target).square() * weight
        return sq.sum() / (weight.sum() * input.shape[1]).clamp_min(1.0)


class MaskedFrequencyL1Loss(_Loss):
    """MFM's frequency loss on the removed band: mean over masked frequencies of ``|F(input) - F(target)|``.

    ``F`` is the orthonormal ``torch.fft.fftn`` over the spatial axes (full spectrum), ``|.|`` the complex modulus;
    the mean runs over the masked coefficients and channels of the whole batch (MFM's
    ``sum(loss * mask) / mask.sum() / C``). MFM's ``FrequencyLoss`` is the focal frequency loss with its spectrum
    weight matrix switched off (``with_matrix=False``, ``loss_gamma=1``), i.e. exactly this plain frequency L1.
    Errors confined to the kept frequencies contribute nothing.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: reconstruction ``(B, C, *spatial)``.
            target: raw image ``(B, C, *spatial)``.
            mask: ``(B, 1 or C, *spatial)`` bool in the un-shifted FFT layout, ``True`` = masked frequency.
        """
        if input.shape != target.shape:
            raise ValueError(f"input shape {tuple(input.shape)} differs from target shape {tuple(target.shape)}.")
        dims = spatial_axes(input)
        diff = torch.fft.fftn(input.float() - target.float(), dim=dims, norm="ortho").abs()
        weight = mask.to(diff.dtype).expand_as(diff)
        return (diff * weight).sum() / weight.sum().clamp_min(1.0)
