"""One-call builders of downstream networks for bundle configs (``_target_``).

Pretrained encoder weights are loaded here, inside the network definition (``encoder_checkpoint=``), not by a
``CheckpointLoader`` in ``train.json``: MONAI Label broke on the latter (model zoo PR 414).
Inference configs pass ``encoder_checkpoint=None`` and load the whole trained network from ``models/model.pt``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import MedNeXt, SwinUNETR

from frepa_monai.networks.autoencoder import build_autoencoder
from frepa_monai.networks.build_record import read_build_config, record_build
from frepa_monai.networks.checkpoint import load_encoder_weights
from frepa_monai.networks.encoders import PRESET_DOC_KEYS, PatchifyEncoder, build_encoder, encoder_preset
from frepa_monai.networks.frequency_disentangled import FrequencyDisentangledNet
from frepa_monai.networks.heads import (
    ClassificationHead,
    DetectionHead,
    FrepaTaskNet,
    LinearClassificationHead,
    LinearSegmentationHead,
    SegmentationHead,
)
from frepa_monai.networks.slice_transformer import SliceTransformer

__all__ = [
    "to_device",
    "ENCODER_MODES",
    "build_whole_network",
    "build_head",
    "build_downstream_encoder",
    "build_task_network",
    "build_slice_transformer",
    "build_pretrained_whole_network",
    "network_from_checkpoint",
]

logger = logging.getLogger(__name__)

HEADS = ("segmentation", "classification", "detection", "linear")
LINEAR_TASKS = ("segmentation", "classification")
ENCODER_MODES = ("pretrained", "random", "none")
"""Values of the downstream bundles' ``encoder`` setting: ``pretrained`` loads ``encoder_checkpoint`` (a Frepa,
MAE or MFM encoder from a pretraining bundle), ``random`` keeps the preset's random initialisation (the same
architecture without pretraining), ``none`` replaces the encoder by :class:`PatchifyEncoder` (the head alone on
the raw pixels of each patch, at the encoder's grid)."""


def to_device(network: nn.Module, device: torch.device | str, channels_last: bool = False) -> nn.Module:
    """``network`` moved to ``device``; with ``channels_last`` its 2D / 3D convolution weights in channels-last memory
    format (``torch.channels_last`` / ``channels_last_3d``), which convolutions then also give their outputs.

    Channels-last is a speed option for the convolutional encoders (ConvNeXt, MedNeXt, the decoder); the values
    computed are the same up to float rounding. Other parameters are left as they are.
    """
    network = network.to(device)
    if channels_last:
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}  # 2D and 3D convolution weights
        with torch.no_grad():
            for parameter in network.parameters():
                if parameter.dim() in formats:
                    parameter.data = parameter.data.contiguous(memory_format=formats[parameter.dim()])
    return network


def _check_checkpoint(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"encoder checkpoint '{path}' does not exist: train an encoder first (bundles/frepa_pretrain_2d or "
            "bundles/frepa_pretrain_3d write models/encoder.pt), pass --encoder_checkpoint <file>, or run the "
            "baseline with --encoder random."
        )


def build_downstream_encoder(
    encoder_name: str,
    spatial_dims: int,
    in_channels: int,
    img_size: Sequence[int] | int,
    encoder: str = "pretrained",
    encoder_checkpoint: str | os.PathLike | None = None,
    encoder_overrides: dict | None = None,
) -> nn.Module:
    """The encoder of a downstream network, by ``encoder`` mode (see :data:`ENCODER_MODES`).

    ``pretrained`` with ``encoder_checkpoint=None`` builds the random preset: inference configs do that and then
    load every weight from the trained network's ``models/model.pt``.
    """
    if encoder not in ENCODER_MODES:
        raise ValueError(f"encoder must be one of {ENCODER_MODES}, got {encoder!r}.")
    net = build_encoder(encoder_name, spatial_dims, in_channels, img_size, **(encoder_overrides or {}))
    if encoder == "none":
        return PatchifyEncoder(in_channels, net.stride, spatial_dims)
    if encoder == "pretrained" and encoder_checkpoint is not None:
        _check_checkpoint(encoder_checkpoint)
        load_encoder_weights(net, encoder_checkpoint, strict=True)
    return net


def build_head(
    head: str,
    in_channels: int,
    stride: Sequence[int],
    spatial_dims: int,
    out_channels: int = 2,
    task: str | None = None,
    **head_kwargs,
) -> nn.Module:
    """A task head on a feature map of ``in_channels`` channels and ``stride``.

    ``"segmentation"`` -> :class:`SegmentationHead` with ``out_channels`` classes, ``"classification"`` ->
    :class:`ClassificationHead` with ``out_channels`` classes, ``"detection"`` -> :class:`DetectionHead`
    (``out_channels`` ignored: the head outputs ``2 * spatial_dims + 1`` numbers). ``"linear"`` is the linear
    probe of ``task``: :class:`LinearSegmentationHead` for ``task="segmentation"``,
    :class:`LinearClassificationHead` for ``task="classification"``; it is one linear map and takes no
    ``head_kwargs``. ``task`` names the bundle's task; it is only needed for ``"linear"`` and must agree with a
    named head.
    """
    if task is not None and head not in ("linear", task):
        raise ValueError(f"head '{head}' does not fit task '{task}': use head='{task}' or head='linear'.")
    if head == "segmentation":
        return SegmentationHead(in_channels, out_channels, stride, spatial_dims, **head_kwargs)
    if head == "classification":
        return ClassificationHead(in_channels, out_channels, spatial_dims, **head_kwargs)
    if head == "detection":
        return DetectionHead(in_channels, spatial_dims, **head_kwargs)
    if head == "linear":
        if task not in LINEAR_TASKS:
            raise ValueError(f"head 'linear' needs task= one of {LINEAR_TASKS} (the bundle's task), got {task!r}.")
        if head_kwargs:
            raise ValueError(
                f"head 'linear' is one linear map and takes no head_kwargs, got {sorted(head_kwargs)}: "
                "drop head_kwargs for the linear probe."
            )
        if task == "segmentation":
            return LinearSegmentationHead(in_channels, out_channels, stride, spatial_dims)
        return LinearClassificationHead(in_channels, out_channels, spatial_dims)
    raise ValueError(f"unknown head '{head}', choose one of {HEADS}.")


def build_task_network(
    encoder_name: str,
    spatial_dims: int,
    in_channels: int,
    img_size: Sequence[int] | int,
    head: str | nn.Module = "segmentation",
    out_channels: int = 2,
    encoder_checkpoint: str | os.PathLike | None = None,
    freeze_encoder: bool = True,
    head_kwargs: dict | None = None,
    encoder_overrides: dict | None = None,
    encoder: str = "pretrained",
    frequency_disentangled: bool = False,
    cutoff_ratio: float = 0.1,
    branch_channels: int = 16,
    preset: str | None = None,
) -> nn.Module:
    """Encoder preset + task head in one :class:`FrepaTaskNet`, optionally with pretrained encoder weights.

    Args:
        encoder_name: encoder preset, e.g. ``"vit_b"``.
        spatial_dims: 2 or 3.
        in_channels: input channels, the Hessian channel included.
        img_size: image size (see :func:`~frepa_monai.networks.encoders.build_encoder`).
        head: a head name (see :func:`build_head`) or a head module.
        out_channels: classes of the segmentation / classification head.
        encoder_checkpoint: encoder checkpoint loaded strictly into the encoder when ``encoder="pretrained"``
            (a missing file raises ``FileNotFoundError`` with what to do); None keeps it random (inference, where
            ``model.pt`` holds every weight).
        freeze_encoder: the paper's protocol: only the head trains.
        head_kwargs: extra arguments of the head.
        encoder_overrides: extra arguments of ``build_encoder``.
        encoder: ``"pretrained"``, ``"random"`` or ``"none"`` (see :data:`ENCODER_MODES`).
        frequency_disentangled: segmentation only: a :class:`FrequencyDisentangledNet` whose low- and
            high-frequency branches are this encoder (one shared module) with a segmentation head each, giving
            ``branch_channels`` features, fused by a 1x1 convolution into ``out_channels`` classes.
        cutoff_ratio: Gaussian cut-off of the frequency split, a fraction of the smallest spatial size.
        branch_channels: features of each branch of the frequency-disentangled network.
        preset: the bundle preset (``"cpu"`` / ``"gpu"``), recorded with the other arguments (but not
            ``encoder_checkpoint``) in the state dict: see :mod:`frepa_monai.networks.build_record`. A network
            with a head module (not a name) records nothing.
    """
    enc = build_downstream_encoder(
        encoder_name, spatial_dims, in_channels, img_size, encoder, encoder_checkpoint, encoder_overrides
    )
    freeze = bool(freeze_encoder) and encoder != "none"
    if frequency_disentangled:
        if head != "segmentation":
            raise ValueError(f"frequency_disentangled needs head='segmentation', got {head!r}.")
        branches = [
            FrepaTaskNet(
                enc,
                build_head(head, enc.out_channels, enc.stride, spatial_dims, branch_channels, **(head_kwargs or {})),
                freeze,
            )
            for _ in range(2)
        ]
        net = FrequencyDisentangledNet(
            branches[0], branches[1], cutoff_ratio, spatial_dims, out_channels, branch_channels=branch_channels
        )
    elif not isinstance(head, str):
        return FrepaTaskNet(enc, head, freeze_encoder=freeze)  # a head module is not recorded (see preset below)
    else:
        head_module = build_head(head, enc.out_channels, enc.stride, spatial_dims, out_channels, **(head_kwargs or {}))
        net = FrepaTaskNet(enc, head_module, freeze_encoder=freeze)
    args = {
        "encoder_name": encoder_name,
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "img_size": img_size,
        "head": head,
        "out_channels": out_channels,
        "freeze_encoder": freeze_encoder,
        "head_kwargs": head_kwargs,
        "encoder_overrides": encoder_overrides,
        "encoder": encoder,
        "frequency_disentangled": frequency_disentangled,
        "cutoff_ratio": cutoff_ratio,
        "branch_channels": branch_channels,
    }
    return record_build(net, "build_task_network", args, preset)


def build_slice_transformer(
    encoder_name: str,
    in_channels: int,
    img_size: Sequence[int] | int,
    head: str | nn.Module = "segmentation",
    out_channels: int = 2,
    encoder_checkpoint: str | os.PathLike | None = None,
    hidden_size: int = 256,
    num_heads: int = 8,
    iterations: int = 3,
    slice_chunk_size: int = 16,
    hessian_channel: bool = True,
    head_kwargs: dict | None = None,
    encoder_overrides: dict | None = None,
    encoder: str = "pretrained",
    freeze_encoder: bool = True,
    preset: str | None = None,
) -> SliceTransformer:
    """A 2D encoder preset (frozen, optionally pretrained) in a :class:`SliceTransformer` with a 3D head.

    ``in_channels`` and ``img_size`` are the 2D encoder's (e.g. 4 and 512); the network takes volumes
    ``(B, C, H, W, D)`` with ``(H, W) == img_size`` for a ViT (any size otherwise) and ``C`` 2 (image + Hessian,
    repeated to the encoder's channels) or ``in_channels``. The head sees ``(B, hidden_size, h, w, D)``.
    ``encoder`` is the mode of :func:`build_downstream_encoder` (``pretrained``, ``random`` or ``none``).
    ``freeze_encoder=False`` is accepted, for the downstream bundles' common switch, and only warns: the 2D encoder
    always stays frozen here (paper 3.3.2). ``preset`` and the arguments (but not ``encoder_checkpoint``) are recorded
    in the state dict when ``head`` is a name (see :mod:`frepa_monai.networks.build_record`).
    """
    if not freeze_encoder:
        logger.warning(
            "freeze_encoder=false has no effect: SliceTransformer always keeps the 2D encoder frozen (paper 3.3.2); "
            "only the projection, the transformer blocks and the head train"
        )
    enc = build_downstream_encoder(
        encoder_name, 2, in_channels, img_size, encoder, encoder_checkpoint, encoder_overrides
    )
    head_module = head
    if isinstance(head, str):
        head_module = build_head(head, hidden_size, (*enc.stride, 1), 3, out_channels, **(head_kwargs or {}))
    net = SliceTransformer(
        enc,
        head_module,
        hidden_size=hidden_size,
        num_heads=num_heads,
        iterations=iterations,
        slice_chunk_size=slice_chunk_size,
        hessian_channel=hessian_channel,
    )
    if not isinstance(head, str):
        return net
    args = {
        "encoder_name": encoder_name,
        "in_channels": in_channels,
        "img_size": img_size,
        "head": head,
        "out_channels": out_channels,
        "hidden_size": hidden_size,
        "num_heads": num_heads,
        "iterations": iterations,
        "slice_chunk_size": slice_chunk_size,
        "hessian_channel": hessian_channel,
        "head_kwargs": head_kwargs,
        "encoder_overrides": encoder_overrides,
        "encoder": encoder,
        "freeze_encoder": freeze_encoder,
    }
    return record_build(net, "build_slice_transformer", args, preset)


def build_pretrained_whole_network(
    encoder_name: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    encoder_checkpoint: str | os.PathLike | None = None,
) -> nn.Module:
    """``SwinUNETR`` / ``MedNeXt`` of a Swin / MedNeXt preset (fully trainable), its encoder optionally pretrained.

    Every tensor of the checkpoint must load (no unexpected key); the decoder stays randomly initialised.
    """
    net = build_whole_network(encoder_name, spatial_dims, in_channels, out_channels)
    if encoder_checkpoint is not None:
        report = load_encoder_weights(net, encoder_checkpoint, strict=False)
        if report.unexpected_keys:
            raise ValueError(
                f"'{encoder_checkpoint}' holds weights that {type(net).__name__} lacks: {report.unexpected_keys[:6]}."
            )
    return net


def build_whole_network(name: str, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """The whole MONAI segmentation network whose encoder is preset ``name`` (Swin and MedNeXt presets).

    ``swin_*`` -> ``SwinUNETR`` (its ``swinViT`` is the encoder; needs ``use_last_merging=True``), ``mednext_*``
    -> ``MedNeXt``. Encoder parameters keep their names, so
    :func:`~frepa_monai.networks.checkpoint.load_encoder_weights` loads a pretrained encoder into the returned
    network. ``(B, in_channels, *spatial)`` -> ``(B, out_channels, *spatial)``; SwinUNETR needs spatial sizes
    divisible by 32 (``patch_size**5``).
    """
    settings = encoder_preset(name)
    arch = settings["arch"]
    if arch == "swin" and settings["use_last_merging"]:
        return SwinUNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            patch_size=settings["patch_size"],
            depths=settings["depths"],
            num_heads=settings["num_heads"],
            window_size=settings["window_size"],
            feature_size=settings["feature_size"],
            spatial_dims=spatial_dims,
        )
    if arch == "mednext":
        kwargs = {k: v for k, v in settings.items() if k not in PRESET_DOC_KEYS}
        return MedNeXt(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    raise ValueError(
        f"preset '{name}' is not the encoder of a whole MONAI network; use 'swin_36' / 'mednext_24' "
        "(or a Swin preset with use_last_merging=True / a MedNeXt preset)."
    )


def network_from_checkpoint(builder: str, checkpoint: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """``builder(**kwargs)`` with the arguments recorded in ``checkpoint`` in place of ``kwargs``: the network
    that ``checkpoint`` (a ``model.pt`` or epoch checkpoint) was trained with, or the configured one when the file
    does not exist yet (see :mod:`frepa_monai.networks.build_record`).

    Args:
        builder: ``"build_task_network"``, ``"build_slice_transformer"`` or ``"build_autoencoder"``.
        checkpoint: the weights the network will be given, or ``None``.
        kwargs: the builder's arguments, as a bundle config gives them (``encoder_checkpoint`` is kept: the
            recorded arguments leave it out).

    Raises:
        ValueError: naming the file, when it records a network of another builder (another bundle's weights).
    """
    builders = {f.__name__: f for f in (build_task_network, build_slice_transformer, build_autoencoder)}
    if builder not in builders:
        raise ValueError(f"builder must be one of {sorted(builders)}, got {builder!r}.")
    config = read_build_config(checkpoint) if checkpoint is not None and os.path.isfile(checkpoint) else None
    if not config:
        if checkpoint is not None and os.path.isfile(checkpoint):
            logger.warning(f"{checkpoint} records no network: building the configured one")
        return builders[builder](**kwargs)
    if config.get("builder") != builder:
        raise ValueError(
            f"{checkpoint} holds a network of {config.get('builder')}, but this config builds {builder}: "
            "the weights come from another bundle"
        )
    recorded = config.get("args", {})
    changed = sorted(k for k in recorded if k in kwargs and kwargs[k] != recorded[k])
    if changed:
        logger.warning(f"{checkpoint}: building the network it was trained with ({', '.join(changed)} from the file)")
    return builders[builder](**{**kwargs, **recorded, "preset": config.get("preset")})
