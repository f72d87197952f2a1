"""What every pretraining strategy shares: its output, the encoder input, seeded draws per step.

A strategy takes the raw batch and the autoencoder and returns a :class:`StrategyOutput`; the trainer in
:mod:`frepa_monai.engines` only back-propagates ``loss``, so Frepa and the baselines it is compared with run
through the same MONAI workflow. Every strategy draws its random numbers from ``set_random_state`` seeds, so a
seeded run is reproducible and can be resumed exactly.

``use_hessian`` has one meaning everywhere: the encoder input is ``concat(corrupted image, HessianFilter(raw
image))`` (paper Eq. 6), ``in_channels + 1`` channels; a ``hessian`` batch computed in the data pipeline is used
as it is, else the strategy computes the channel on the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from monai.transforms import Randomizable
from monai.utils import MAX_SEED

from frepa_monai.transforms import HessianFilter, seeded_generator

__all__ = ["StrategyOutput", "PretrainStrategy", "network_input", "unwrap"]


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


def unwrap(network: nn.Module) -> nn.Module:
    """The autoencoder inside ``DistributedDataParallel`` / ``DataParallel`` (their ``.module``), or ``network``."""
    while isinstance(getattr(network, "module", None), nn.Module):
        network = network.module
    return network
