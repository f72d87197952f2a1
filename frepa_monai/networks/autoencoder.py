"""The Frepa encoder-decoder ``N`` of paper Eq. 5-6: ``N[(O x) (+) x~] -> x``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from frepa_monai.networks.build_record import BuildRecord, record_build
from frepa_monai.networks.decoders import ConvDecoder
from frepa_monai.networks.encoders import ViTEncoder, build_encoder

__all__ = ["MaskTokens", "FrepaAutoEncoder", "build_autoencoder"]


class MaskTokens(nn.Module):
    """MAE's learnable mask token (He et al. 2022): the visible tokens of a ViT back on its grid, the masked
    positions filled with one token ``(1, 1, hidden_size)``, initialised to zeros.

    Part of the autoencoder of the MAE baseline only (``build_autoencoder(..., mask_token=True)``), so encoders,
    and the ``encoder.pt`` the downstream bundles load, hold no MAE parameter.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, hidden_size))

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
        """``tokens`` ``(B, N_visible, F)`` at positions ``visible`` ``(B, N_visible)`` -> ``(B, F, *grid_size)``."""
        batch, _, hidden = tokens.shape
        grid = self.token.to(tokens.dtype).expand(batch, math.prod(grid_size), hidden)
        grid = grid.scatter(1, visible[..., None].expand(-1, -1, hidden), tokens)
        return grid.transpose(1, 2).reshape(batch, hidden, *grid_size)


class FrepaAutoEncoder(BuildRecord, nn.Module):
    """An encoder ``E`` and a :class:`~frepa_monai.networks.decoders.ConvDecoder`.

    - ``forward(x)``: ``(B, C_in, *spatial)`` -> reconstruction ``(B, C_out, *spatial)``, the same spatial size
      as ``x`` (conv / Swin encoders pad internally, the decoder crops back; a ViT needs ``x`` of its img_size).
    - ``embed(x)``: ``(B, C_in, *spatial)`` -> ``E(x)``, the encoder feature map ``(B, F, *grid)`` used by the
      consistency loss (paper Eq. 10; the loss takes the softmax over dim 1).
    - ``forward_with_embedding(x)``: both from one encoder pass.

    ``mask_tokens`` (:class:`MaskTokens`, the MAE baseline on a ViT only) lets ``forward(x, visible=...)`` encode
    the visible tokens alone and put MAE's mask token where the others were.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, mask_tokens: MaskTokens | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.mask_tokens = mask_tokens

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *spatial)`` -> ``(B, F, *grid)``."""
        return self.encoder(x)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C_in, *spatial)`` -> (reconstruction ``(B, C_out, *spatial)``, embedding ``(B, F, *grid)``)."""
        embedding = self.encoder(x)
        return self.decoder(embedding, x.shape[2:]), embedding

    def forward(self, x: torch.Tensor, return_embedding: bool = False, visible: torch.Tensor | None = None):
        """``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial)``; with ``return_embedding`` also ``(B, F, *grid)``.

        ``return_embedding=True`` is :meth:`forward_with_embedding` through ``forward``, so that wrappers such as
        ``DistributedDataParallel`` see the call. ``visible`` ``(B, N_visible)``: the token indices a ViT encoder
        keeps (MAE, see :meth:`~frepa_monai.networks.encoders.ViTEncoder.encode_visible`); needs ``mask_tokens``.
        """
        if return_embedding:
            return self.forward_with_embedding(x)
        if visible is None:
            return self.decoder(self.encoder(x), x.shape[2:])
        if self.mask_tokens is None:
            raise ValueError(
                "encoding visible tokens only (MAE) needs the autoencoder's mask token: build it with "
                "build_autoencoder(..., mask_token=True) (the pretraining bundles do for --strategy_name mae)."
            )
        tokens = self.encoder.encode_visible(x, visible)
        return self.decoder(self.mask_tokens(tokens, visible, self.encoder.grid_size), x.shape[2:])


def build_autoencoder(
    name: str,
    spatial_dims: int,
    in_channels: int,
    img_size: Sequence[int] | int,
    out_channels: int | None = None,
    decoder_channels: Sequence[int] | None = None,
    mask_token: bool = False,
    preset: str | None = None,
    **encoder_overrides,
) -> FrepaAutoEncoder:
    """Encoder preset ``name`` + a matching ``ConvDecoder``.

    Args:
        name: encoder preset (see :data:`~frepa_monai.networks.encoders.ENCODER_PRESETS`).
        spatial_dims: 2 or 3.
        in_channels: input channels, the Hessian channel included (2D: 3 + 1 = 4, 3D: 1 + 1 = 2).
        img_size: training image size (see :func:`~frepa_monai.networks.encoders.build_encoder`).
        out_channels: reconstructed channels, default ``in_channels - 1`` (the image without the Hessian
            channel); pass ``in_channels`` for the ``use_hessian=False`` ablation.
        decoder_channels: channels of the decoder blocks (default: halving from the encoder's channels).
        mask_token: add MAE's :class:`MaskTokens` when the encoder is a ViT (the MAE baseline; other encoders are
            masked SimMIM style and need none).
        preset: the bundle preset (``"cpu"`` / ``"gpu"``), recorded with the arguments in the state dict (see
            :mod:`frepa_monai.networks.build_record`).
        encoder_overrides: passed to ``build_encoder``.
    """
    if out_channels is None:
        if in_channels < 2:
            raise ValueError(f"in_channels={in_channels} leaves no image channel besides the Hessian channel.")
        out_channels = in_channels - 1
    encoder = build_encoder(name, spatial_dims, in_channels, img_size, **encoder_overrides)
    decoder = ConvDecoder(encoder.out_channels, out_channels, encoder.stride, spatial_dims, channels=decoder_channels)
    tokens = MaskTokens(encoder.out_channels) if mask_token and isinstance(encoder, ViTEncoder) else None
    args = {
        "name": name,
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "img_size": img_size,
        "out_channels": out_channels,
        "decoder_channels": decoder_channels,
        "mask_token": mask_token,
        **encoder_overrides,
    }
    return record_build(FrepaAutoEncoder(encoder, decoder, tokens), "build_autoencoder", args, preset)
