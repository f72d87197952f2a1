"""Pretraining strategies: what one training step corrupts, feeds the network and optimises.

A strategy takes the raw batch and the autoencoder and returns a :class:`StrategyOutput`; the trainer in
:mod:`frepa_monai.engines` only back-propagates ``loss``, so Frepa and the baselines it is compared with
(MAE, MFM in :mod:`frepa_monai.baselines`) run through the same MONAI workflow. Every strategy draws its random
numbers from ``set_random_state`` seeds, so a seeded run is reproducible and can be resumed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from monai.transforms import Randomizable
from monai.utils import MAX_SEED

from frepa_monai.losses import FrepaLoss
from frepa_monai.transforms import FrepaCorruptd, HessianFilter, seeded_generator

__all__ = ["StrategyOutput", "PretrainStrategy", "FrepaStrategy", "network_input"]


@dataclass
class StrategyOutput:
    """Result of one strategy step on a batch ``(B, C, *spatial)``.

    Attributes:
        loss: the scalar to back-propagate.
        terms: every logged term as a detached scalar tensor, ``"loss"`` included.
        corrupted: the (first) corrupted view the network saw, image channels only, ``(B, C, *spatial)``.
        recon: the network's reconstruction of that view, ``(B, C, *spatial)``.
    """

    loss: torch.Tensor
    corrupted: torch.Tensor
    recon: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def network_input(image: torch.Tensor, hessian: torch.Tensor | None) -> torch.Tensor:
    """The encoder input ``concat(image, hessian)`` along channels (paper Eq. 6), or the image alone."""
    return image if hessian is None else torch.cat([image, hessian.to(image.dtype)], dim=1)


class PretrainStrategy(Randomizable):
    """Base of the pretraining strategies.

    Args:
        spatial_dims: 2 or 3.
        use_hessian: feed ``concat(corrupted, HessianFilter(raw))`` to the network (``in_channels + 1`` inputs).
            A ``hessian`` passed to ``__call__`` (computed in the data pipeline) is used as it is.
        sigmas: scales of the Hessian filter when it is computed here.
    """

    name = "base"

    def __init__(self, spatial_dims: int, use_hessian: bool = True, sigmas=(1.0, 2.0, 3.0)) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.use_hessian = use_hessian
        self.hessian_filter = HessianFilter(sigmas, spatial_dims=spatial_dims)

    def hessian_of(self, images: torch.Tensor, hessian: torch.Tensor | None) -> torch.Tensor | None:
        """The Hessian channel ``(B, 1, *spatial)`` of the raw images, or ``None`` without the Hessian channel."""
        if not self.use_hessian:
            return None
        return hessian if hessian is not None else self.hessian_filter(images)

    def randomize(self, data=None) -> None:  # draws happen inside __call__, see draw_generator
        pass

    def draw_generator(self, device: torch.device) -> torch.Generator:
        """A torch generator on ``device`` for one step, seeded by one draw from this strategy's random state."""
        return seeded_generator(int(self.R.randint(MAX_SEED)), device)

    def __call__(
        self, network: nn.Module, images: torch.Tensor, epoch: int, hessian: torch.Tensor | None = None
    ) -> StrategyOutput:
        """One step's forward pass on raw ``images`` ``(B, C, *spatial)`` at 1-based ``epoch``."""
        raise NotImplementedError


class FrepaStrategy(PretrainStrategy):
    """Frepa (paper 3.2): two views by :class:`~frepa_monai.transforms.FrepaCorruptd`, :class:`FrepaLoss`.

    The views go through the autoencoder in one batch, each with the Hessian channel of the raw image (the network
    is called as ``network(x, return_embedding=True)``, see
    :class:`~frepa_monai.networks.autoencoder.FrepaAutoEncoder`); the reconstruction terms
    compare every view's reconstruction with the raw image (masked RMSE on image-masked views), the
    consistency term compares the two views' encoder embeddings after the warm-up.

    Args:
        spatial_dims, use_hessian, sigmas: see :class:`PretrainStrategy`.
        loss: the objective; default ``FrepaLoss()`` (weights 1, 1, 0.5; 5 warm-up epochs).
        views: corrupted views per image (2 for the consistency term).
        corruption: keyword arguments of :class:`~frepa_monai.transforms.FrepaCorruptd` (ablation switches
            ``frequency_mask``, ``fill``, ``high_freq_mask``, ``low_freq_perturb``, ratios and patch sizes).
    """

    name = "frepa"

    def __init__(
        self,
        spatial_dims: int,
        loss: FrepaLoss | None = None,
        views: int = 2,
        use_hessian: bool = True,
        sigmas=(1.0, 2.0, 3.0),
        **corruption,
    ) -> None:
        super().__init__(spatial_dims, use_hessian, sigmas)
        self.loss = loss if loss is not None else FrepaLoss()
        self.views = views
        self.corrupt = FrepaCorruptd(
            keys="image", views=views, spatial_dims=spatial_dims, use_hessian=False, **corruption
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.corrupt.set_random_state(seed, state)
        return self

    def __call__(
        self, network: nn.Module, images: torch.Tensor, epoch: int, hessian: torch.Tensor | None = None
    ) -> StrategyOutput:
        hessian = self.hessian_of(images, hessian)
        views = self.corrupt({"image": images})
        # all views in one forward pass: one call through the network (and through DDP, which needs that)
        inputs = torch.cat([network_input(views[f"image_view{v}"], hessian) for v in range(1, self.views + 1)])
        recon, embedding = network(inputs, return_embedding=True)
        recons, embeddings = recon.chunk(self.views), embedding.chunk(self.views)
        masks = [views[f"mask_view{v}"] for v in range(1, self.views + 1)]
        terms = self.loss(recons, images, masks, embeddings, epoch=epoch)
        return StrategyOutput(
            loss=terms["loss"],
            corrupted=views["image_view1"],
            recon=recons[0],
            terms={k: v.detach() for k, v in terms.items()},
        )
