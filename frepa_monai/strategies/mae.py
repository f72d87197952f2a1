"""The MAE baseline (He et al., CVPR 2022), paper 4.1: mask patches, reconstruct them.

A ViT encoder sees only the visible tokens (:meth:`~frepa_monai.networks.encoders.ViTEncoder.encode_visible`) and
the autoencoder's :class:`~frepa_monai.networks.MaskTokens` fill the masked grid positions with MAE's learnable
mask token; any other encoder gets the image with the masked patches set to zero (SimMIM, Xie et al., CVPR 2022).
MSE on the masked patches (:class:`~frepa_monai.losses.MaskedPatchMSELoss`). Being the published method, it
defaults to ``use_hessian=False``; ``use_hessian=True`` gives the encoder Frepa's input, for comparisons with
equal architectures (the Hessian channel of the raw image then carries structure of the masked patches, except
for the ViT, whose masked tokens are dropped with their Hessian part).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.utils import ensure_tuple_rep

from frepa_monai.losses import MaskedPatchMSELoss, patch_to_pixel_mask
from frepa_monai.networks.encoders import ViTEncoder
from frepa_monai.profiling import phase
from frepa_monai.strategies.base import PretrainStrategy, StrategyOutput, network_input, unwrap

__all__ = ["random_patch_mask", "MAEStrategy"]


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


class MAEStrategy(PretrainStrategy):
    """MAE (He et al. 2022): mask ``mask_ratio`` of the patches per image, MSE on the masked patches.

    - ViT encoder (:class:`~frepa_monai.networks.encoders.ViTEncoder`): the patches are the ViT's tokens; the
      transformer runs on the ``N - round(mask_ratio * N)`` visible tokens only, the masked positions of the
      token grid get the autoencoder's learnable mask token (:class:`~frepa_monai.networks.MaskTokens`:
      ``build_autoencoder(..., mask_token=True)``) and the conv decoder reconstructs the image from the grid
      (MAE's asymmetric design, with Frepa's conv decoder instead of MAE's transformer decoder).
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
        with phase("hessian"):
            hessian = self.hessian_of(images, hessian)
        with phase("corruption"):
            generator = self.draw_generator(images.device)
            encoder = unwrap(network).encoder
            patch = self.patch_size_for(encoder)
            masked, visible = self.draw_mask(images, patch, generator)
            pixel_mask = patch_to_pixel_mask(masked, patch, images.shape[2:])  # (B, 1, *spatial)
            corrupted = images.masked_fill(pixel_mask, 0.0)
        with phase("forward"):
            if isinstance(encoder, ViTEncoder):
                if visible.shape[1] == 0:
                    raise ValueError(f"mask_ratio {self.mask_ratio} masks every one of the {masked[0].numel()} tokens.")
                # masked tokens are dropped inside the encoder; one call through the (DDP) wrapper's forward
                recon = network(network_input(images, hessian), visible=visible)
            else:
                recon = network(network_input(corrupted, hessian))
        with phase("loss_mse"):
            mse = MaskedPatchMSELoss(patch, self.norm_pix_loss)(recon, images, masked)
        return StrategyOutput(
            loss=mse, corrupted=corrupted, recon=recon, terms={"mse": mse.detach(), "loss": mse.detach()}
        )
