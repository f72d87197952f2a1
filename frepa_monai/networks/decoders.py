"""The lightweight convolutional decoder of Frepa (paper 3.2: "a few convolutional layers")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.utils import ensure_tuple_rep

__all__ = ["ConvDecoder", "upsampling_factors", "match_size"]


def upsampling_factors(stride: int, num_blocks: int) -> list[int]:
    """Split one axis' ``stride`` into ``num_blocks`` per-block up-sampling factors whose product is ``stride``.

    Factors of 2 go to the last blocks, the rest to the first: 32 -> [4, 2, 2, 2], 16 -> [2, 2, 2, 2],
    8 -> [1, 2, 2, 2], 12 -> [3, 1, 2, 2].
    """
    factors = [1] * num_blocks
    rest, i = int(stride), num_blocks - 1
    while rest % 2 == 0 and i >= 0:
        factors[i], rest, i = 2, rest // 2, i - 1
    factors[0] *= rest
    return factors


def match_size(x: torch.Tensor, out_size: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Bring ``x`` ``(B, C, *grid * stride)`` to ``(B, C, *out_size)``.

    When ``out_size`` is what the encoder's end-padding produced the grid from (``grid * stride - stride <
    out_size <= grid * stride`` on every axis) the extra end is cropped, exactly undoing the padding; any other
    size is reached by linear interpolation.
    """
    size = tuple(int(s) for s in x.shape[2:])
    out_size = tuple(int(s) for s in out_size)
    if size == out_size:
        return x
    if all(s - st < o <= s for s, o, st in zip(size, out_size, stride)):
        return x[(slice(None), slice(None)) + tuple(slice(0, o) for o in out_size)]
    mode = "bilinear" if len(out_size) == 2 else "trilinear"
    return F.interpolate(x, size=out_size, mode=mode, align_corners=False)


class ConvDecoder(nn.Module):
    """Up to 4 blocks (transposed-conv up-sampling + 3x3 conv + activation), then a 1x1 output projection.

    ``(B, in_channels, *grid)`` -> ``(B, out_channels, *out_size)``: the blocks up-sample by ``stride`` in total
    (the encoder's stride, split by :func:`upsampling_factors`), then :func:`match_size` crops or interpolates to
    the ``out_size`` given at forward time, so odd input sizes come back exactly.

    Args:
        in_channels: encoder feature channels ``F``.
        out_channels: output channels (image channels for reconstruction, classes for segmentation).
        stride: the encoder's total down-sampling factor, int or per axis.
        spatial_dims: 2 or 3.
        channels: channels of the blocks; default halves ``in_channels`` at each block, at least 16.
        num_blocks: number of blocks (at most 4; 1 to 4).
        act: activation after each 3x3 convolution (a MONAI act spec).
        norm: optional normalisation after each 3x3 convolution (a MONAI norm spec); none by default, so the
            reconstruction keeps each image's absolute intensity and any feature-map size works.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: Sequence[int] | int,
        spatial_dims: int,
        channels: Sequence[int] | None = None,
        num_blocks: int = 4,
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        norm: tuple | str | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= num_blocks <= 4:
            raise ValueError(f"num_blocks must be 1 to 4, got {num_blocks}.")
        self.stride = tuple(int(s) for s in ensure_tuple_rep(stride, spatial_dims))
        if channels is None:
            channels = [max(in_channels // 2 ** (i + 1), 16) for i in range(num_blocks)]
        if len(channels) != num_blocks:
            raise ValueError(f"channels {tuple(channels)} must have num_blocks={num_blocks} entries.")
        per_axis = [upsampling_factors(s, num_blocks) for s in self.stride]
        blocks = []
        c_in = in_channels
        for i, c in enumerate(channels):
            factor = tuple(axis[i] for axis in per_axis)
            blocks.append(
                nn.Sequential(
                    UpSample(spatial_dims, c_in, c, scale_factor=factor, mode="deconv"),
                    Convolution(spatial_dims, c, c, kernel_size=3, act=act, norm=norm),
                )
            )
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.out_proj = Convolution(spatial_dims, c_in, out_channels, kernel_size=1, conv_only=True)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, features: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, in_channels, *grid)`` -> ``(B, out_channels, *out_size)``; ``*grid * stride`` without ``out_size``."""
        x = self.out_proj(self.blocks(features))
        if out_size is None:
            return x
        return match_size(x, out_size, self.stride)
