"""Frepa image encoders (paper sections 4.1.1 and 4.1.2) built from MONAI networks.

Every encoder maps ``(B, in_channels, *spatial)`` to a channel-first feature map
``(B, out_channels, *ceil(spatial / stride))`` and exposes:

- ``out_channels``: feature channels ``F`` of the map,
- ``stride``: total down-sampling factor per spatial axis (a tuple of ints),
- ``size_divisor``: what ``img_size`` must be a multiple of (per axis),
- ``in_channels`` and ``network_config`` (``name``, ``spatial_dims``, ``in_channels``, ``img_size``), which
  checkpoints store beside the weights (see :mod:`frepa_monai.networks.checkpoint`).

The convolutional and Swin encoders take any input size: an input that is not a multiple of ``stride`` is
zero-padded at the end of each axis (the :class:`~frepa_monai.networks.decoders.ConvDecoder` crops the
reconstruction back to the input size). The ViT encoder has a learnt position embedding of a fixed grid, so
its input must have exactly ``img_size``.

Presets (``ENCODER_PRESETS``), encoder parameters measured with the Hessian channel (2D: 4 inputs at 512^2,
3D: 2 inputs at 128^3):

=================  ==========  ==========================================================  =========  ========
name               paper dims  architecture                                                measured   paper
=================  ==========  ==========================================================  =========  ========
``vit_b``          2D          MONAI ``ViT``, hidden 768, 12 layers, 12 heads, patch 16     86.62M     86.9M
``swin_b``         2D          MONAI ``SwinTransformer``, embed 128, depths 2-2-18-2,       86.74M     86.9M
                               patch 4, window 7, *without* the merging after the last
                               stage (MONAI merges after every stage: 95.14M with it)
``convnext_128``   2D          ConvNeXt-B layout (channels 128-1024, depths 3-3-27-3,        87.55M     87.5M
                               kernel 7, expansion 4) of MONAI ``MedNeXtBlock``\\ s with
                               a layer norm (see :class:`ConvNeXtBlock`)
``vit_1024``       3D          MONAI ``ViT``, hidden 1024, 2 layers, 16 heads, patch 16     34.11M     32.0M
``swin_36``        3D          encoder (``swinViT``) of ``SwinUNETR(feature_size=36)``       4.63M     (35.1M)
``mednext_24``     3D          encoder of MedNeXt-L with ``init_filters=24``                26.33M     (34.8M)
=================  ==========  ==========================================================  =========  ========

The paper's 35.1M and 34.8M are whole networks: ``SwinUNETR(feature_size=36)`` measures 35.07M and MedNeXt-L
(``init_filters=24``, residual connections as in MONAI's ``create_mednext("L")``) 34.81M; build them with
:func:`~frepa_monai.networks.factory.build_whole_network`, whose encoder parameters have the same names as these
presets' so pretrained encoder weights load into them. ``vit_1024``: the paper gives only "dim=1024"; with
MONAI's ``ViT`` a 1024-wide, MLP ratio 4 ViT at 128^3 / patch 16 has 34.1M parameters with 2 layers (29.9M with
one input channel); each further layer adds 12.6M, so 2 layers is the depth that fits 32.0M.

``vit_s`` (ViT-S/16, hidden 384, 12 layers, 6 heads) is the study's GPU preset (``tools/reproduce.py --preset
gpu``). All presets work in 2D and 3D. The ``*_tiny`` presets (``vit_tiny``, ``swin_tiny``, ``convnext_tiny``,
``mednext_tiny``) train on a CPU at 64-128 px (2D) or 32-64^3 (3D).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, TransformerBlock
from monai.networks.blocks.mednext_block import MedNeXtBlock
from monai.networks.nets import MedNeXt, ViT
from monai.networks.nets.swin_unetr import SwinTransformer
from monai.utils import ensure_tuple_rep

__all__ = [
    "ENCODER_PRESETS",
    "ViTEncoder",
    "SwinEncoder",
    "ConvNeXtBlock",
    "ConvNeXtEncoder",
    "MedNeXtEncoder",
    "build_encoder",
    "pad_to_multiple",
    "freeze_unused_cross_attention_norms",
]

_MEDNEXT_L = {
    "encoder_expansion_ratio": (3, 4, 8, 8),
    "decoder_expansion_ratio": (8, 8, 4, 3),
    "bottleneck_expansion_ratio": 8,
    "kernel_size": 3,
    "blocks_down": (3, 4, 8, 8),
    "blocks_bottleneck": 8,
    "blocks_up": (8, 8, 4, 3),
    "use_residual_connection": True,
}

#: preset name -> settings: ``arch`` selects the encoder class, the other entries are its arguments;
#: ``paper_spatial_dims`` and ``paper_params`` (encoder, or whole network where noted) document the paper.
ENCODER_PRESETS: dict[str, dict] = {
    # 2D paper encoders (paper 4.1.1)
    "vit_b": {
        "arch": "vit",
        "patch_size": 16,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_layers": 12,
        "num_heads": 12,
        "paper_spatial_dims": 2,
        "paper_params": 86.9e6,
    },
    "swin_b": {
        "arch": "swin",
        "feature_size": 128,
        "patch_size": 4,
        "depths": (2, 2, 18, 2),
        "num_heads": (4, 8, 16, 32),
        "window_size": 7,
        "use_last_merging": False,
        "paper_spatial_dims": 2,
        "paper_params": 86.9e6,
    },
    "convnext_128": {
        "arch": "convnext",
        "channels": (128, 256, 512, 1024),
        "depths": (3, 3, 27, 3),
        "kernel_size": 7,
        "expansion_ratio": 4,
        "paper_spatial_dims": 2,
        "paper_params": 87.5e6,
    },
    # 3D paper encoders (paper 4.1.2)
    "vit_1024": {
        "arch": "vit",
        "patch_size": 16,
        "hidden_size": 1024,
        "mlp_dim": 4096,
        "num_layers": 2,
        "num_heads": 16,
        "paper_spatial_dims": 3,
        "paper_params": 32.0e6,
    },
    "swin_36": {
        "arch": "swin",
        "feature_size": 36,
        "patch_size": 2,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "use_last_merging": True,
        "paper_spatial_dims": 3,
        "paper_params": 35.1e6,  # whole SwinUNETR
    },
    "mednext_24": {
        "arch": "mednext",
        "init_filters": 24,
        **_MEDNEXT_L,
        "paper_spatial_dims": 3,
        "paper_params": 34.8e6,  # whole MedNeXt-L
    },
    # ViT-S/16 (Touvron et al. 2021), for the study's GPU preset at 256 px
    "vit_s": {"arch": "vit", "patch_size": 16, "hidden_size": 384, "mlp_dim": 1536, "num_layers": 12, "num_heads": 6},
    # small presets for CPU runs and tests
    "vit_tiny": {"arch": "vit", "patch_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_layers": 2, "num_heads": 4},
    "swin_tiny": {
        "arch": "swin",
        "feature_size": 12,
        "patch_size": 2,
        "depths": (1, 1, 1, 1),
        "num_heads": (1, 2, 4, 8),
        "window_size": 4,
        "use_last_merging": False,
    },
    "convnext_tiny": {
        "arch": "convnext",
        "channels": (16, 32, 64, 128),
        "depths": (1, 1, 1, 1),
        "kernel_size": 5,
        "expansion_ratio": 2,
    },
    "mednext_tiny": {
        "arch": "mednext",
        "init_filters": 8,
        "encoder_expansion_ratio": 2,
        "decoder_expansion_ratio": 2,
        "bottleneck_expansion_ratio": 2,
        "kernel_size": 3,
        "blocks_down": (1, 1, 1, 1),
        "blocks_bottleneck": 1,
        "blocks_up": (1, 1, 1, 1),
        "use_residual_connection": True,
    },
}

PRESET_DOC_KEYS = ("arch", "paper_spatial_dims", "paper_params")


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> torch.Tensor:
    """Zero-pad the end of each spatial axis of ``x`` ``(B, C, *spatial)`` up to a multiple of ``multiple``."""
    pad: list[int] = []
    for size, m in zip(reversed(x.shape[2:]), reversed(tuple(multiple))):
        pad += [0, (-int(size)) % int(m)]
    if any(pad):
        x = F.pad(x, pad)
    return x


def freeze_unused_cross_attention_norms(module: nn.Module) -> None:
    """``requires_grad_(False)`` on the ``norm_cross_attn`` of MONAI ``TransformerBlock``\\ s without cross attention.

    MONAI creates that LayerNorm in every block but uses it only with ``with_cross_attention=True``; left
    trainable it never gets a gradient, which ``DistributedDataParallel`` reports as an error.
    """
    for block in module.modules():
        if isinstance(block, TransformerBlock) and not block.with_cross_attention:
            block.norm_cross_attn.requires_grad_(False)


def _check_divisible(name: str, img_size: Sequence[int], divisor: Sequence[int]) -> None:
    if any(int(s) % int(d) for s, d in zip(img_size, divisor)):
        raise ValueError(
            f"encoder '{name}': img_size {tuple(img_size)} must be divisible by {tuple(divisor)} on every axis."
        )


class ViTEncoder(nn.Module):
    """MONAI :class:`~monai.networks.nets.ViT` whose normalised tokens are returned as a grid.

    ``(B, in_channels, *img_size)`` -> ``(B, hidden_size, *img_size / patch_size)``. The input must have exactly
    ``img_size`` (the learnt position embedding is defined on that grid); a ``ValueError`` names both sizes.

    For MAE (:class:`~frepa_monai.strategies.MAEStrategy`), :meth:`encode_visible` runs the transformer on the
    visible tokens only; the autoencoder's :class:`~frepa_monai.networks.MaskTokens` put them back on the grid. The
    encoder holds exactly MONAI's ``ViT`` parameters: ``forward(x)`` gives ``ViT``'s tokens as a grid.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        pos_embed_type: str = "learnable",
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = tuple(int(s) for s in ensure_tuple_rep(img_size, spatial_dims))
        self.stride = tuple(int(p) for p in ensure_tuple_rep(patch_size, spatial_dims))
        self.size_divisor = self.stride
        _check_divisible("vit", self.img_size, self.stride)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.stride))
        self.in_channels = in_channels
        self.out_channels = hidden_size
        self.vit = ViT(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=self.stride,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type=pos_embed_type,
            classification=False,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
            qkv_bias=qkv_bias,
        )
        freeze_unused_cross_attention_norms(self.vit)

    @property
    def num_tokens(self) -> int:
        """Number of patch tokens ``N = prod(grid_size)``, in C order of the grid."""
        return math.prod(self.grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *img_size)`` -> ``(B, hidden_size, *grid_size)``."""
        tokens = self.encode_visible(x, None)
        return tokens.transpose(1, 2).reshape(x.shape[0], self.out_channels, *self.grid_size)

    def encode_visible(self, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """Encode only the ``visible`` tokens of ``x`` (MAE's encoder).

        Args:
            x: ``(B, in_channels, *img_size)``; patch embedding and position embedding see the whole input.
            visible: ``(B, N_visible)`` long indices into the ``N = prod(grid_size)`` tokens (C order of the
                grid), the same count for every image; ``None`` means every token in grid order.

        Returns:
            ``(B, N_visible, hidden_size)``: the normalised tokens, in the order of ``visible``.
        """
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"ViT encoder built for img_size {self.img_size} got an input of spatial size {tuple(x.shape[2:])}; "
                "resize or crop the input to img_size (or rebuild the encoder with that img_size)."
            )
        tokens = self.vit.patch_embedding(x)  # (B, N, hidden), position embedding added
        batch, hidden = tokens.shape[0], tokens.shape[-1]
        if visible is not None:
            if visible.ndim != 2 or visible.shape[0] != batch:
                raise ValueError(f"visible must be (B={batch}, N_visible) indices, got shape {tuple(visible.shape)}.")
            tokens = tokens.gather(1, visible[..., None].expand(-1, -1, hidden))
        for block in self.vit.blocks:
            tokens = block(tokens)
        return self.vit.norm(tokens)


class SwinEncoder(nn.Module):
    """MONAI :class:`~monai.networks.nets.swin_unetr.SwinTransformer`, configured as in ``SwinUNETR``.

    ``(B, in_channels, *spatial)`` -> ``(B, feature_size * 2**m, *spatial / (patch_size * 2**m))`` with ``m``
    patch mergings: 4 (MONAI's default, a merge after every stage, as ``SwinUNETR.swinViT``) or 3 with
    ``use_last_merging=False`` (as the original Swin-B, whose last stage is not followed by a merge).
    The sub-module is called ``swinViT`` like in ``SwinUNETR``, so state dicts are interchangeable.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        feature_size: int = 48,
        patch_size: int = 2,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Sequence[int] | int = 7,
        use_last_merging: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != 4:
            raise ValueError(f"MONAI's SwinTransformer has 4 stages, got depths {tuple(depths)}.")
        merges = 4 if use_last_merging else 3
        self.stride = tuple([patch_size * 2**merges] * spatial_dims)
        self.size_divisor = self.stride
        _check_divisible("swin", ensure_tuple_rep(img_size, spatial_dims), self.size_divisor)
        self.in_channels = in_channels
        self.out_channels = feature_size * 2**merges
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=ensure_tuple_rep(window_size, spatial_dims),
            patch_size=ensure_tuple_rep(patch_size, spatial_dims),
            depths=depths,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
            norm_layer=nn.LayerNorm,
            spatial_dims=spatial_dims,
            downsample="merging",
        )
        if not use_last_merging:
            self.swinViT.layers4[0].downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, out_channels, *ceil(spatial / stride))``."""
        x = pad_to_multiple(x, self.stride)
        return self.swinViT(x, normalize=True)[-1]


class ConvNeXtBlock(MedNeXtBlock):
    """MONAI's :class:`~monai.networks.blocks.mednext_block.MedNeXtBlock` with a layer norm over the feature map.

    Residual block: depthwise ``kernel_size`` conv, norm, 1x1 expansion by ``expansion_ratio``, GELU, 1x1
    compression (ConvNeXt's block without layer scale). The norm is a one-group ``GroupNorm`` instead of
    MedNeXt's per-channel one, which fails on (and carries no information from) 1-pixel feature maps, as a
    small or strongly down-sampled input gives. ``(B, channels, *spatial)`` -> same shape.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 7, expansion_ratio: int = 4) -> None:
        super().__init__(
            channels,
            channels,
            expansion_ratio=expansion_ratio,
            kernel_size=kernel_size,
            use_residual_connection=True,
            dim=f"{spatial_dims}d",
        )
        self.norm = nn.GroupNorm(num_groups=1, num_channels=channels)


class ConvNeXtEncoder(nn.Module):
    """ConvNeXt (Liu et al. 2022) layout built from MONAI blocks, 2D or 3D.

    A 4x4 patchify stem, then per stage a 2x2 stride-2 down-sampling convolution (not before the first stage)
    and ``depths[i]`` :class:`ConvNeXtBlock` residual blocks. Stem and down-sampling convolutions are followed by
    a one-group group norm (a layer norm over the feature map). ``(B, in_channels, *spatial)`` ->
    ``(B, channels[-1], *spatial / 32)`` for 4 stages.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        channels: Sequence[int] = (128, 256, 512, 1024),
        depths: Sequence[int] = (3, 3, 27, 3),
        kernel_size: int = 7,
        expansion_ratio: int = 4,
        stem_stride: int = 4,
    ) -> None:
        super().__init__()
        if len(channels) != len(depths):
            raise ValueError(f"channels {tuple(channels)} and depths {tuple(depths)} must have the same length.")
        self.stride = tuple([stem_stride * 2 ** (len(channels) - 1)] * spatial_dims)
        self.size_divisor = self.stride
        _check_divisible("convnext", ensure_tuple_rep(img_size, spatial_dims), self.size_divisor)
        self.in_channels = in_channels
        self.out_channels = channels[-1]
        downsample = []
        for i, c in enumerate(channels):
            c_in, step = (in_channels, stem_stride) if i == 0 else (channels[i - 1], 2)
            downsample.append(
                Convolution(
                    spatial_dims,
                    c_in,
                    c,
                    strides=step,
                    kernel_size=step,
                    padding=0,
                    act=None,
                    norm=("group", {"num_groups": 1}),
                )
            )
        self.downsample = nn.ModuleList(downsample)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[
                    ConvNeXtBlock(spatial_dims, c, kernel_size=kernel_size, expansion_ratio=expansion_ratio)
                    for _ in range(depth)
                ]
            )
            for c, depth in zip(channels, depths)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, out_channels, *ceil(spatial / stride))``."""
        x = pad_to_multiple(x, self.stride)
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        return x


class MedNeXtEncoder(nn.Module):
    """The encoder half (stem, stages, down blocks, bottleneck) of MONAI's :class:`~monai.networks.nets.MedNeXt`.

    Built by constructing the MONAI network with the same arguments and keeping its encoder modules under their
    original names, so the state dict loads into the whole ``MedNeXt`` (:func:`build_whole_network`).
    ``(B, in_channels, *spatial)`` -> ``(B, init_filters * 2**n, *spatial / 2**n)``, ``n = len(blocks_down)``.
    MedNeXt normalises each channel over space, so the bottleneck needs at least 2 voxels on some axis:
    inputs larger than ``2**n`` (16) on at least one axis (a 1-voxel bottleneck with batch 1 raises in torch).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (2, 2, 2, 2),
        **mednext_kwargs,
    ) -> None:
        super().__init__()
        n = len(blocks_down)
        self.stride = tuple([2**n] * spatial_dims)
        self.size_divisor = self.stride
        _check_divisible("mednext", ensure_tuple_rep(img_size, spatial_dims), self.size_divisor)
        self.in_channels = in_channels
        self.out_channels = init_filters * 2**n
        # the decoder is built only to be dropped: keep it minimal (no decoder blocks)
        mednext_kwargs = {**mednext_kwargs, "blocks_up": (0,) * n}
        net = MedNeXt(
            spatial_dims=spatial_dims,
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=1,
            blocks_down=blocks_down,
            **mednext_kwargs,
        )
        self.stem = net.stem
        self.enc_stages = net.enc_stages
        self.down_blocks = net.down_blocks
        self.bottleneck = net.bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, out_channels, *ceil(spatial / stride))``."""
        x = self.stem(pad_to_multiple(x, self.stride))
        for stage, down in zip(self.enc_stages, self.down_blocks):
            x = down(stage(x))
        return self.bottleneck(x)


_ARCHITECTURES = {"vit": ViTEncoder, "swin": SwinEncoder, "convnext": ConvNeXtEncoder, "mednext": MedNeXtEncoder}
# MedNeXt arguments that only concern its decoder
_MEDNEXT_DECODER_KEYS = ("decoder_expansion_ratio", "blocks_up")


def encoder_preset(name: str) -> dict:
    """A copy of ``ENCODER_PRESETS[name]``; a ``ValueError`` lists the presets for an unknown name."""
    if name not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder preset '{name}', choose one of {sorted(ENCODER_PRESETS)}.")
    return copy.deepcopy(ENCODER_PRESETS[name])


def build_encoder(
    name: str, spatial_dims: int, in_channels: int, img_size: Sequence[int] | int, **overrides
) -> nn.Module:
    """Build the encoder preset ``name`` (see ``ENCODER_PRESETS``); no weights are downloaded.

    Args:
        name: preset name, e.g. ``"vit_b"``, ``"swin_36"``, ``"convnext_tiny"``.
        spatial_dims: 2 or 3.
        in_channels: input channels, the Hessian channel included (2D: 3 + 1, 3D: 1 + 1).
        img_size: training image size (int or per-axis); must be divisible by the encoder's ``size_divisor``.
            For ViT it is the only input size accepted; the others take any input size (padded internally).
        overrides: replace preset settings, e.g. ``num_layers=4``.

    Returns:
        the encoder, with ``network_config = {"name", "spatial_dims", "in_channels", "img_size"}``.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    settings = {**encoder_preset(name), **overrides}
    arch = settings["arch"]
    kwargs = {k: v for k, v in settings.items() if k not in PRESET_DOC_KEYS}
    if arch == "mednext":
        kwargs = {k: v for k, v in kwargs.items() if k not in _MEDNEXT_DECODER_KEYS}
    img_size = tuple(int(s) for s in ensure_tuple_rep(img_size, spatial_dims))
    try:
        encoder = _ARCHITECTURES[arch](spatial_dims=spatial_dims, in_channels=in_channels, img_size=img_size, **kwargs)
    except ValueError as e:
        raise ValueError(f"build_encoder('{name}', spatial_dims={spatial_dims}, img_size={img_size}): {e}") from e
    encoder.network_config = {
        "name": name,
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "img_size": list(img_size),
        **({"overrides": overrides} if overrides else {}),
    }
    return encoder


class PatchifyEncoder(nn.Module):
    """The ``encoder=none`` baseline: no learnt encoder, the image cut into ``stride`` patches (space to depth).

    ``(B, C, *spatial)`` -> ``(B, C * prod(stride), *ceil(spatial / stride))``: every feature vector is the raw
    pixels of one patch (zero-padded at the end of each axis), the information a ViT's patch embedding starts
    from. A task head on it measures what the head alone learns from the pixels, at the encoder's grid.

    Args:
        in_channels: input channels ``C``.
        stride: patch size per axis (int or sequence), usually the replaced encoder's ``stride``.
        spatial_dims: 2 or 3.
    """

    def __init__(self, in_channels: int, stride: Sequence[int] | int, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stride = tuple(int(s) for s in ensure_tuple_rep(stride, spatial_dims))
        self.size_divisor = self.stride
        self.out_channels = in_channels * math.prod(self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> ``(B, C * prod(stride), *grid)``."""
        x = pad_to_multiple(x, self.stride)
        batch, channels, *spatial = x.shape
        grid = [s // p for s, p in zip(spatial, self.stride)]
        shape = [batch, channels]
        for g, p in zip(grid, self.stride):
            shape += [g, p]
        x = x.reshape(shape)
        n = self.spatial_dims
        # (B, C, g1, p1, g2, p2, ...) -> (B, C, p1, p2, ..., g1, g2, ...)
        order = [0, 1] + [3 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)]
        return x.permute(order).reshape(batch, self.out_channels, *grid)
