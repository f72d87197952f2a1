"""Downstream task heads on an encoder's feature map (paper 4.1.1: frozen encoder, trained heads), 2D and 3D.

Every head is called as ``head(features, out_size=None)`` with ``features`` ``(B, F, *grid)``; ``out_size`` is
the input image's spatial size (only the segmentation head uses it). :class:`FrepaTaskNet` puts an encoder and
a head together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv, Pool
from monai.utils import ensure_tuple_rep

from frepa_monai.networks.build_record import BuildRecord
from frepa_monai.networks.decoders import ConvDecoder, match_size

__all__ = [
    "SegmentationHead",
    "ClassificationHead",
    "DetectionHead",
    "LinearSegmentationHead",
    "LinearClassificationHead",
    "FrepaTaskNet",
]


class SegmentationHead(ConvDecoder):
    """The Frepa :class:`~frepa_monai.networks.decoders.ConvDecoder` with ``out_channels`` task classes.

    ``(B, F, *grid)`` -> logits ``(B, out_channels, *out_size)``.
    """


def _mlp(in_features: int, hidden_dims: Sequence[int], out_features: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden_dims:
        layers += [nn.Linear(in_features, h), nn.GELU(), nn.Dropout(dropout)]
        in_features = h
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class ClassificationHead(nn.Module):
    """Global average pooling and an MLP: ``(B, F, *grid)`` -> logits ``(B, num_classes)``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int,
        hidden_dims: Sequence[int] = (256,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.mlp = _mlp(in_channels, hidden_dims, num_classes, dropout)
        self.out_channels = num_classes

    def forward(self, features: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, F, *grid)`` -> ``(B, num_classes)``; ``out_size`` is ignored."""
        return self.mlp(self.pool(features).flatten(1))


class LinearSegmentationHead(nn.Module):
    """Linear probe for segmentation: a 1x1 convolution to the classes, up-sampled to the input size.

    ``(B, F, *grid)`` -> logits ``(B, out_channels, *out_size)``: the 1x1 convolution (``F * K + K`` parameters)
    gives the class logits of every patch, MONAI's non-trainable :class:`~monai.networks.blocks.UpSample`
    interpolates them bilinearly (2D) or trilinearly (3D) by ``stride``, and the encoder's end padding is cropped
    off (:func:`~frepa_monai.networks.decoders.match_size`). Linear interpolation keeps the head one affine map of
    the features (nearest neighbour would too, but gives blocky masks at stride 16), and ``align_corners=False``
    puts every logit at the centre of its patch. Interpolating the logits equals a 1x1 convolution of the
    interpolated features, with ``K / F`` of the work.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int] | int, spatial_dims: int) -> None:
        super().__init__()
        self.stride = tuple(int(s) for s in ensure_tuple_rep(stride, spatial_dims))
        self.up = UpSample(
            spatial_dims,
            in_channels,
            out_channels,
            scale_factor=self.stride,
            mode="nontrainable",
            pre_conv=Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1),
            interp_mode="linear",
            align_corners=False,
        )
        self.out_channels = out_channels

    def forward(self, features: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, F, *grid)`` -> ``(B, out_channels, *out_size)``; ``*grid * stride`` without ``out_size``."""
        logits = self.up(features)
        return logits if out_size is None else match_size(logits, out_size, self.stride)


class LinearClassificationHead(ClassificationHead):
    """Linear probe for classification: global average pooling and one ``nn.Linear`` (``F * K + K`` parameters).

    ``(B, F, *grid)`` -> logits ``(B, num_classes)``: a :class:`ClassificationHead` without hidden layers.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int) -> None:
        super().__init__(in_channels, num_classes, spatial_dims, hidden_dims=())


class DetectionHead(nn.Module):
    """One box per image from the feature map's layout: 1x1 reduction, coarse pooled grid, MLP -> box and objectness.

    ``(B, F, *grid)`` -> ``(B, 2 * spatial_dims + 1)``: ``[..., :2 * spatial_dims]`` is the box in MONAI's
    standard corner mode (2D ``[x1, y1, x2, y2]``, 3D ``[x1, y1, z1, x2, y2, z2]``) normalised to [0, 1] of the
    image size, ``[..., -1]`` the objectness logit. Multiply by the image size for pixel boxes.

    The features are reduced to ``reduced_channels`` by a 1x1 convolution and average-pooled to a
    ``pool_size``-per-axis grid that the MLP sees flattened, so where a structure lies in the image reaches the
    box regression (a global average would discard it). The box is predicted as a size ``s`` and a relative
    position ``c`` (sigmoids) with ``lo = c (1 - s)``, ``hi = lo + s``: always inside [0, 1] with ``lo <= hi``,
    and without clamping, so no corner ever loses its gradient at the image border.
    """

    def __init__(
        self,
        in_channels: int,
        spatial_dims: int,
        hidden_dims: Sequence[int] = (256,),
        dropout: float = 0.0,
        reduced_channels: int = 32,
        pool_size: int = 4,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.reduce = Conv[Conv.CONV, spatial_dims](in_channels, reduced_channels, kernel_size=1)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](pool_size)
        self.mlp = _mlp(reduced_channels * pool_size**spatial_dims, hidden_dims, 2 * spatial_dims + 1, dropout)
        self.out_channels = 2 * spatial_dims + 1

    def forward(self, features: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, F, *grid)`` -> ``(B, 2 * spatial_dims + 1)`` (normalised box, objectness logit)."""
        out = self.mlp(self.pool(torch.relu(self.reduce(features))).flatten(1))
        n = self.spatial_dims
        position, size = torch.sigmoid(out[:, :n]), torch.sigmoid(out[:, n : 2 * n])
        lo = position * (1.0 - size)
        return torch.cat([lo, lo + size, out[:, 2 * n :]], dim=1)


class FrepaTaskNet(BuildRecord, nn.Module):
    """An encoder and a task head: ``(B, C, *spatial)`` -> ``head(encoder(x), spatial)``.

    With ``freeze_encoder=True`` (the paper's downstream protocol) the encoder has ``requires_grad=False``, stays
    in eval mode after ``.train()`` and runs under ``torch.no_grad()``: only the head trains.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, freeze_encoder: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> FrepaTaskNet:
        """Set train/eval mode; a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> the head's output (segmentation logits ``(B, K, *spatial)``, class logits
        ``(B, K)`` or boxes ``(B, 2 * spatial_dims + 1)``)."""
        if self.freeze_encoder:
            with torch.no_grad():
                features = self.encoder(x)
        else:
            features = self.encoder(x)
        return self.head(features, x.shape[2:])
