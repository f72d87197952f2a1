"""Transfer of a pretrained 2D encoder to 3D volumes without re-training (paper 3.3.2)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock

from frepa_monai.networks.build_record import BuildRecord
from frepa_monai.networks.encoders import freeze_unused_cross_attention_norms

__all__ = ["SliceTransformer", "sinusoidal_embedding_1d", "sinusoidal_embedding_2d"]


def sinusoidal_embedding_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal position embedding of ``length`` positions, ``(1, length, dim)`` (Vaswani et al. 2017)."""
    if dim % 2:
        raise ValueError(f"the embedding dimension must be even, got {dim}.")
    position = torch.arange(length, dtype=torch.float32)[:, None]
    omega = torch.exp(-math.log(temperature) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return torch.cat([torch.sin(position * omega), torch.cos(position * omega)], dim=1)[None]


def sinusoidal_embedding_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sinusoidal position embedding of a ``height x width`` grid, ``(1, height * width, dim)``.

    The values of MONAI's ``build_sincos_position_embedding(..., spatial_dims=2)`` (``[sin w, cos w, sin h, cos h]``,
    ``dim / 4`` frequencies each), as a plain tensor: that function returns an ``nn.Parameter``, and creating one
    (or reading ``.data``) in ``forward`` makes ``torch.export`` / ONNX export fail on a lifted fake constant.
    """
    if dim % 4:
        raise ValueError(f"the embedding dimension must be divisible by 4, got {dim}.")
    grid_h, grid_w = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_h, out_w = grid_h.flatten()[:, None] * omega, grid_w.flatten()[:, None] * omega
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


class SliceTransformer(BuildRecord, nn.Module):
    """Frozen 2D encoder per slice + iterated intra-/inter-image transformer blocks + a task head.

    For a volume ``x`` ``(B, C, H, W, D)`` (slices along the last axis):

    1. each slice goes through the frozen 2D ``encoder`` (eval mode, ``torch.no_grad()``), ``slice_chunk_size``
       slices at a time: ``e`` ``(B * D, F_e, h, w)``; a 1x1 linear projection maps ``F_e`` to ``hidden_size``;
    2. ``iterations`` times: add the fixed 2D sinusoidal in-plane embedding ``p_intra`` to the ``h * w`` tokens of
       every slice and apply an intra-image :class:`~monai.networks.blocks.TransformerBlock`; rearrange to the ``D``
       tokens at each in-plane position, add the fixed 1D sinusoidal slice embedding ``p_inter`` and apply an
       inter-image block (every iteration has its own pair of blocks; both embeddings are added before each
       block, so every block sees the positions);
    3. the fused map ``(B, hidden_size, h, w, D)`` goes to ``head(fused, (H, W, D))``.

    Only the projection, the transformer blocks and the head train; the encoder keeps ``requires_grad=False``
    and eval mode (also after ``.train()``), so its batch-norm statistics and weights never change.

    Channels: the encoder takes ``encoder.in_channels`` channels (2D Frepa: 3 image + 1 Hessian). With
    ``hessian_channel=True`` the last input channel is the Hessian channel and the remaining (grayscale) channels
    are repeated to the encoder's image channels (a 3D volume image + Hessian ``C=2`` feeds a 3 + 1 channel
    encoder as ``[img, img, img, hessian]``); with ``hessian_channel=False`` a 1-channel input is repeated to all
    encoder channels. Other mismatches raise ``ValueError``. A ViT encoder needs slices of its ``img_size``.

    Args:
        encoder: a 2D encoder from :func:`~frepa_monai.networks.encoders.build_encoder` (``out_channels``,
            ``stride``, ``in_channels`` attributes), usually with pretrained weights.
        head: a head taking ``(features (B, hidden_size, h, w, D), out_size)``, e.g. a 3D
            :class:`~frepa_monai.networks.heads.SegmentationHead` with ``stride=(sh, sw, 1)``; None returns the
            fused map.
        hidden_size: token dimension ``n_d`` of the transformer blocks (divisible by 4 and by ``num_heads``).
        num_heads: attention heads of each block.
        mlp_dim: feed-forward width, default ``4 * hidden_size``.
        iterations: number of intra/inter block pairs (the paper uses 3).
        slice_chunk_size: slices encoded at once.
        hessian_channel: whether the last channel of input and encoder is the Hessian channel (see above).
        dropout_rate: dropout of the transformer blocks.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module | None = None,
        hidden_size: int = 256,
        num_heads: int = 8,
        mlp_dim: int | None = None,
        iterations: int = 3,
        slice_chunk_size: int = 16,
        hessian_channel: bool = True,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2D sinusoidal embedding), got {hidden_size}.")
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.proj = nn.Linear(encoder.out_channels, hidden_size)
        mlp_dim = mlp_dim or 4 * hidden_size
        self.intra_blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate) for _ in range(iterations)
        )
        self.inter_blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate) for _ in range(iterations)
        )
        freeze_unused_cross_attention_norms(self)
        self.head = head
        self.hidden_size = hidden_size
        self.slice_chunk_size = slice_chunk_size
        self.hessian_channel = hessian_channel
        self.out_channels = hidden_size
        self.stride = (*tuple(encoder.stride)[:2], 1)

    def train(self, mode: bool = True) -> SliceTransformer:
        """Set train/eval mode for the trainable parts; the frozen encoder always stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _encoder_channels(self, slices: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, encoder.in_channels, H, W)`` by repeating grayscale channels."""
        c, c_enc = slices.shape[1], self.encoder.in_channels
        if c == c_enc:
            return slices
        if self.hessian_channel and c == 2 and c_enc > 2:
            return torch.cat([slices[:, :1].expand(-1, c_enc - 1, -1, -1), slices[:, 1:]], dim=1)
        if not self.hessian_channel and c == 1:
            return slices.expand(-1, c_enc, -1, -1)
        raise ValueError(
            f"volume has {c} channels but the 2D encoder takes {c_enc} (hessian_channel={self.hessian_channel}); "
            "give 1 image channel (+ 1 Hessian channel) or the encoder's channels."
        )

    def encode_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D)`` -> frozen-encoder features ``(B * D, F_e, h, w)``, slices in chunks, no grad."""
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        with torch.no_grad():
            feats = [
                self.encoder(self._encoder_channels(chunk)) for chunk in torch.split(slices, self.slice_chunk_size)
            ]
        return torch.cat(feats, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D)`` -> ``head((B, hidden_size, h, w, D), (H, W, D))``."""
        b, d = x.shape[0], x.shape[-1]
        e = self.encode_slices(x)  # (B*D, F_e, h, w)
        gh, gw = e.shape[2:]
        tokens = self.proj(e.flatten(2).transpose(1, 2))  # (B*D, h*w, n)
        p_intra = sinusoidal_embedding_2d(gh, gw, self.hidden_size).to(tokens)
        p_inter = sinusoidal_embedding_1d(d, self.hidden_size).to(tokens)
        n = self.hidden_size
        for intra, inter in zip(self.intra_blocks, self.inter_blocks):
            tokens = intra(tokens + p_intra)  # attention over the tokens of one slice
            tokens = tokens.reshape(b, d, gh * gw, n).transpose(1, 2).reshape(b * gh * gw, d, n)
            tokens = inter(tokens + p_inter)  # attention over the slices at one position
            tokens = tokens.reshape(b, gh * gw, d, n).transpose(1, 2).reshape(b * d, gh * gw, n)
        fused = tokens.reshape(b, d, gh, gw, n).permute(0, 4, 2, 3, 1)  # (B, n, h, w, D)
        if self.head is None:
            return fused
        return self.head(fused, x.shape[2:])
