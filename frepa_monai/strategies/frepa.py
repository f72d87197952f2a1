"""The Frepa strategy (paper 3.2): two corrupted views, one autoencoder pass, :class:`~frepa_monai.losses.FrepaLoss`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from frepa_monai.losses import FrepaLoss
from frepa_monai.profiling import phase
from frepa_monai.strategies.base import PretrainStrategy, StrategyOutput, network_input
from frepa_monai.transforms import FrepaCorrupt

__all__ = ["FrepaStrategy"]


class FrepaStrategy(PretrainStrategy):
    """Frepa (paper 3.2): two views by :class:`~frepa_monai.transforms.FrepaCorrupt`, :class:`FrepaLoss`.

    The views go through the autoencoder in one batch, each with the Hessian channel of the raw image (the network
    is called as ``network(x, return_embedding=True)``, see
    :class:`~frepa_monai.networks.autoencoder.FrepaAutoEncoder`); the reconstruction terms compare every view's
    reconstruction with the raw image (masked RMSE on image-masked views), the consistency term compares the two
    views' encoder embeddings after the warm-up.

    Args:
        spatial_dims, use_hessian, sigmas: see :class:`PretrainStrategy`.
        loss: the objective; default ``FrepaLoss()`` (weights 1, 1, 0.5; 5 warm-up epochs).
        views: corrupted views per image (2 for the consistency term).
        prob_frequency, frequency_mask, fill, high_freq_mask, low_freq_perturb, cutoff_ratio, sigma_ratio,
            frequency_patch_size, mask_ratio, image_patch_size, literal_sizes: the corruption, see
            :class:`~frepa_monai.transforms.FrepaCorrupt` (``frequency_mask=False``: w/o FM, ``fill="zero"``: w/o
            IM, ``high_freq_mask=False``: w/o HM, ``low_freq_perturb=False``: w/o LP).
    """

    name = "frepa"

    def __init__(
        self,
        spatial_dims: int,
        loss: FrepaLoss | None = None,
        views: int = 2,
        use_hessian: bool = True,
        sigmas=(1.0, 2.0, 3.0),
        prob_frequency: float = 0.5,
        frequency_mask: bool = True,
        fill: str = "histogram",
        high_freq_mask: bool = True,
        low_freq_perturb: bool = True,
        cutoff_ratio: float = 0.2,
        sigma_ratio: float = 0.002,
        frequency_patch_size: int = 16,
        mask_ratio: float = 0.7,
        image_patch_size: int | None = None,
        literal_sizes: bool = False,
    ) -> None:
        super().__init__(spatial_dims, use_hessian, sigmas)
        self.loss = loss if loss is not None else FrepaLoss()
        self.views = views
        self.corrupt = FrepaCorrupt(
            views=views,
            prob_frequency=prob_frequency,
            frequency_mask=frequency_mask,
            image_mask=True,
            fill=fill,
            high_freq_mask=high_freq_mask,
            low_freq_perturb=low_freq_perturb,
            cutoff_ratio=cutoff_ratio,
            sigma_ratio=sigma_ratio,
            frequency_patch_size=frequency_patch_size,
            mask_ratio=mask_ratio,
            image_patch_size=image_patch_size,
            literal_sizes=literal_sizes,
            spatial_dims=spatial_dims,
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.corrupt.set_random_state(seed, state)
        return self

    def __call__(
        self, network: nn.Module, images: torch.Tensor, epoch: int, hessian: torch.Tensor | None = None
    ) -> StrategyOutput:
        with phase("hessian"):
            hessian = self.hessian_of(images, hessian)
        with phase("corruption"):
            views = self.corrupt(images)
            # all views in one forward pass: one call through the network (and through DDP, which needs that)
            inputs = torch.cat([network_input(view, hessian) for view in views.views])
        with phase("forward"):
            recon, embedding = network(inputs, return_embedding=True)  # (V B, C, *spatial), (V B, F, *grid)
        embeddings = embedding.chunk(self.views)
        terms = self.loss(recon, images, views.masks, embeddings, epoch=epoch)  # the views stacked along the batch
        return StrategyOutput(
            loss=terms["loss"],
            corrupted=views.views[0],
            recon=recon[: images.shape[0]],
            terms={k: v.detach() for k, v in terms.items()},
        )
