"""The pretraining baselines Frepa is compared with (paper 4.1): MAE and MFM, as :class:`PretrainStrategy`\\ s.

- :class:`MAEStrategy`: masked autoencoder (He et al., CVPR 2022). A ViT encoder sees only the visible tokens
  (:meth:`~frepa_monai.networks.encoders.ViTEncoder.forward_visible`); any other encoder gets the image with the
  masked patches set to zero (SimMIM, Xie et al., CVPR 2022). MSE on the masked patches.
- :class:`MFMStrategy`: masked frequency modeling (Xie et al., "Masked Frequency Modeling for Self-Supervised
  Visual Pre-Training", ICLR 2023). A random low- or high-pass circular mask of the centred spectrum; frequency
  L1 loss on the removed band.

Both train the same :class:`~frepa_monai.networks.autoencoder.FrepaAutoEncoder` (encoder + conv decoder) as Frepa
and, being the published methods, default to ``use_hessian=False`` (the network then has ``C`` input and ``C``
output channels, ``build_autoencoder(..., in_channels=C, out_channels=C)``). With ``use_hessian=True`` the encoder
gets ``concat(corrupted, HessianFilter(raw))`` exactly as Frepa's does (``C + 1`` inputs), for comparisons with
equal architectures; like Frepa's, that channel is computed from the raw image, so it carries structure of the
masked patches / removed band (except for the MAE ViT, whose masked tokens are dropped with their Hessian part).

Randomness: every call draws one seed from ``self.R`` and uses a ``torch.Generator`` on the batch's device, so
``set_random_state(seed)`` makes a step reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep
from torch.nn.modules.loss import _Loss

from frepa_monai.frequency import squared_frequency_distance
from frepa_monai.networks.encoders import ViTEncoder
from frepa_monai.strategies import PretrainStrategy, StrategyOutput, network_input

__all__ = [
    "unwrap",
    "random_patch_mask",
    "patch_to_pixel_mask",
    "circular_frequency_mask",
    "MaskedPatchMSELoss",
    "MaskedFrequencyL1Loss",
    "MAEStrategy",
    "MFMStrategy",
]


def _spatial_dims_of(x: torch.Tensor) -> tuple[int, ...]:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a batch (B, C, H, W[, D]), got shape {tuple(x.shape)}.")
    return tuple(range(2, x.ndim))


def unwrap(network: nn.Module) -> nn.Module:
    """The autoencoder inside ``DistributedDataParallel`` / ``DataParallel`` (their ``.module``), or ``network``."""
    while isinstance(getattr(network, "module", None), nn.Module):
        network = network.module
    return network


# ---------------------------------------------------------------------------------------------- masks


def random_patch_mask(
    batch: int, n_patches: int, n_masked: int, generator: torch.Generator, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``n_masked`` of ``n_patches`` patches per image, uniformly at random (MAE's per-sample shuffle).

    Returns:
        ``masked`` ``(B, n_patches)`` bool (``True`` = masked) and ``visible`` ``(B, n_patches - n_masked)`` long,
        the indices of the kept patches in increasing order.
    """
    if not 0 <= n_masked <= n_patches:
        raise ValueError(f"n_masked must be in [0, {n_patches}], got {n_masked}.")
    scores = torch.rand((batch, n_patches), generator=generator, device=device)
    order = scores.argsort(dim=1)
    visible = order[:, n_masked:].sort(dim=1).values
    masked = torch.ones((batch, n_patches), dtype=torch.bool, device=scores.device)
    return masked.scatter(1, visible, False), visible


def patch_to_pixel_mask(mask: torch.Tensor, patch_size: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Patch-grid mask ``(B, *grid)`` -> pixel mask ``(B, 1, *spatial)``; the last patches may be cut by the border."""
    return _patches_to_pixels(mask[:, None], patch_size, spatial)


def _patches_to_pixels(x: torch.Tensor, patch_size: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Repeat every patch value over its pixels: ``(B, C, *grid)`` -> ``(B, C, *spatial)``."""
    for axis, (p, s) in enumerate(zip(patch_size, spatial)):
        x = x.repeat_interleave(int(p), dim=axis + 2).narrow(axis + 2, 0, int(s))
    return x


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


# --------------------------------------------------------------------------------------------- losses


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
        _spatial_dims_of(input)
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
        dims = _spatial_dims_of(input)
        diff = torch.fft.fftn(input.float() - target.float(), dim=dims, norm="ortho").abs()
        weight = mask.to(diff.dtype).expand_as(diff)
        return (diff * weight).sum() / weight.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------ strategies


class MAEStrategy(PretrainStrategy):
    """MAE (He et al. 2022): mask ``mask_ratio`` of the patches per image, MSE on the masked patches.

    - ViT encoder (:class:`~frepa_monai.networks.encoders.ViTEncoder`): the patches are the ViT's tokens; the
      transformer runs on the ``N - round(mask_ratio * N)`` visible tokens only, the masked positions of the
      token grid get the encoder's learnable ``mask_token`` and the conv decoder reconstructs the image from the
      grid (MAE's asymmetric design, with Frepa's conv decoder instead of MAE's transformer decoder).
    - Any other encoder (Swin, ConvNeXt, MedNeXt): SimMIM style, the masked patches of the input are set to zero.

    Args:
        spatial_dims: 2 or 3.
        mask_ratio: fraction of patches masked per image, ``round(mask_ratio * N)`` (MAE: 0.75).
        patch_size: masking patch size (int or per axis). Default ``None``: the ViT's patch size for a ViT encoder
            (16 for the paper presets; another value raises, since the ViT's tokens are the patches), 16 otherwise.
        norm_pix_loss: normalise each target patch by its mean and std (MAE's option; default off).
        use_hessian: feed ``concat(corrupted, hessian)`` like Frepa (default ``False``: the published method).
        sigmas: Hessian filter scales (with ``use_hessian``).
    """

    name = "mae"

    def __init__(
        self,
        spatial_dims: int,
        mask_ratio: float = 0.75,
        patch_size: Sequence[int] | int | None = None,
        norm_pix_loss: bool = False,
        use_hessian: bool = False,
        sigmas=(1.0, 2.0, 3.0),
    ) -> None:
        super().__init__(spatial_dims, use_hessian, sigmas)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
        self.mask_ratio = mask_ratio
        self.patch_size = None if patch_size is None else tuple(ensure_tuple_rep(patch_size, spatial_dims))
        self.norm_pix_loss = norm_pix_loss

    def patch_size_for(self, encoder: nn.Module) -> tuple[int, ...]:
        """The masking patch size used with ``encoder``."""
        if isinstance(encoder, ViTEncoder):
            if self.patch_size is not None and tuple(self.patch_size) != tuple(encoder.stride):
                raise ValueError(
                    f"MAE on a ViT masks its tokens: patch_size {self.patch_size} must be the ViT's patch size "
                    f"{tuple(encoder.stride)} (or None)."
                )
            return tuple(encoder.stride)
        return self.patch_size or (16,) * self.spatial_dims

    def n_masked(self, n_patches: int) -> int:
        """Masked patches per image: ``round(mask_ratio * n_patches)``."""
        return int(round(self.mask_ratio * n_patches))

    def draw_mask(
        self, images: torch.Tensor, patch_size: Sequence[int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random patch mask of a batch ``(B, C, *spatial)``.

        Returns:
            ``masked`` ``(B, *grid)`` bool with ``grid = ceil(spatial / patch_size)`` and ``visible``
            ``(B, N_visible)`` token indices in C order of the grid.
        """
        grid = [math.ceil(s / p) for s, p in zip(images.shape[2:], patch_size)]
        n = math.prod(grid)
        masked, visible = random_patch_mask(images.shape[0], n, self.n_masked(n), generator, images.device)
        return masked.view(images.shape[0], *grid), visible

    def __call__(
        self, network: nn.Module, images: torch.Tensor, epoch: int, hessian: torch.Tensor | None = None
    ) -> StrategyOutput:
        hessian = self.hessian_of(images, hessian)
        generator = self.draw_generator(images.device)
        encoder = unwrap(network).encoder
        patch = self.patch_size_for(encoder)
        masked, visible = self.draw_mask(images, patch, generator)
        pixel_mask = patch_to_pixel_mask(masked, patch, images.shape[2:])  # (B, 1, *spatial)
        corrupted = images.masked_fill(pixel_mask, 0.0)
        if isinstance(encoder, ViTEncoder):
            if visible.shape[1] == 0:
                raise ValueError(f"mask_ratio {self.mask_ratio} masks every one of the {masked[0].numel()} tokens.")
            # masked tokens are dropped inside the encoder; one call through the (DDP) wrapper's forward
            recon = network(network_input(images, hessian), visible=visible)
        else:
            recon = network(network_input(corrupted, hessian))
        mse = MaskedPatchMSELoss(patch, self.norm_pix_loss)(recon, images, masked)
        return StrategyOutput(
            loss=mse, corrupted=corrupted, recon=recon, terms={"mse": mse.detach(), "loss": mse.detach()}
        )


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
        dims = _spatial_dims_of(images)
        spectrum = torch.fft.fftn(images.float(), dim=dims).masked_fill(masked, 0)
        out = torch.fft.ifftn(spectrum, dim=dims).real
        if self.clip:
            out = out.clamp(0.0, 1.0)
        return out.to(images.dtype) if images.is_floating_point() else out

    def __call__(
        self, network: nn.Module, images: torch.Tensor, epoch: int, hessian: torch.Tensor | None = None
    ) -> StrategyOutput:
        hessian = self.hessian_of(images, hessian)
        generator = self.draw_generator(images.device)
        masked = self.draw_mask(images, generator)
        corrupted = self.corrupt(images, masked)
        recon = network(network_input(corrupted, hessian))
        freq_l1 = self.loss(recon, images, masked)
        return StrategyOutput(
            loss=freq_l1,
            corrupted=corrupted,
            recon=recon,
            terms={"freq_l1": freq_l1.detach(), "loss": freq_l1.detach()},
        )
