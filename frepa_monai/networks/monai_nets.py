"""A Frepa encoder checkpoint in MONAI's own networks (``UNETR``, ``SwinUNETR``, ``MedNeXt``), without our factories.

The Frepa encoders keep MONAI's module names: :class:`~frepa_monai.networks.encoders.ViTEncoder` holds MONAI's
``ViT`` as ``vit`` (as ``UNETR.vit``), :class:`~frepa_monai.networks.encoders.SwinEncoder` MONAI's
``SwinTransformer`` as ``swinViT`` (as ``SwinUNETR.swinViT``) and
:class:`~frepa_monai.networks.encoders.MedNeXtEncoder` MedNeXt's ``stem``, ``enc_stages``, ``down_blocks`` and
``bottleneck``. So the first name of every checkpoint key names the sub-module of the MONAI network it belongs to,
and :func:`load_encoder_into` loads the checkpoint into those sub-modules, strictly: every tensor of the
checkpoint and every tensor of those sub-modules, or nothing. Which presets fit:

- ``UNETR`` (patch 16, 12 layers, ``proj_type="conv"``, ``qkv_bias=False``): ``vit_b`` with UNETR's defaults
  (hidden 768, MLP 3072, 12 heads), or any ViT preset of patch 16 and 12 layers with the same hidden size, MLP
  size and heads; the same ``in_channels`` and ``img_size``.
- ``SwinUNETR(feature_size=36)``: ``swin_36`` (patch 2, depths 2-2-2-2, heads 3-6-12-24, window 7); any Swin
  preset with ``use_last_merging`` and SwinUNETR's matching arguments.
- MONAI ``MedNeXt``: a ``mednext_*`` preset with the same arguments
  (:func:`~frepa_monai.networks.factory.build_whole_network` builds these networks from the preset).
"""

from __future__ import annotations

import os

import torch.nn as nn

from frepa_monai.networks.checkpoint import EncoderLoadReport, load_encoder_weights, read_encoder_checkpoint

__all__ = ["load_encoder_into"]


def load_encoder_into(network: nn.Module, path: str | os.PathLike) -> EncoderLoadReport:
    """Load the Frepa encoder checkpoint ``path`` (``models/encoder.pt``) into a MONAI network's encoder.

    Args:
        network: e.g. ``monai.networks.nets.UNETR`` or ``SwinUNETR`` built with the encoder's settings.
        path: an ``encoder.pt`` of :func:`~frepa_monai.networks.checkpoint.save_encoder_checkpoint` (or any file
            :func:`~frepa_monai.networks.checkpoint.read_encoder_checkpoint` reads, e.g. a Frepa ``model.pt``).

    Returns:
        an :class:`~frepa_monai.networks.checkpoint.EncoderLoadReport`, keys as in ``network.state_dict()``:
        ``loaded_keys`` every tensor of the encoder sub-modules, ``missing_keys`` the network's other tensors
        (its decoder, left as initialised), ``unexpected_keys`` empty.

    Raises:
        ValueError: naming the file, when the checkpoint does not fit (a sub-module the network lacks, missing or
            unexpected keys, shapes that differ); the network is then left unchanged.
    """
    weights, config = read_encoder_checkpoint(path)
    modules = sorted({key.split(".", 1)[0] for key in weights})
    children = dict(network.named_children())
    absent = [m for m in modules if m not in children]
    name = type(network).__name__
    if absent:
        raise ValueError(
            f"encoder weights in '{path}' (checkpoint network {config}) belong to the sub-modules {modules}, but "
            f"{name} has no {absent} (it has {sorted(children)}): a ViT checkpoint loads into UNETR, a Swin one "
            f"into SwinUNETR, a MedNeXt one into MedNeXt."
        )
    # the network's encoder sub-modules under their own names, so keys match the checkpoint's; the class is named
    # after them for load_encoder_weights' errors ("... do not fit UNETR.vit: ...")
    encoder = type(f"{name}.{'/'.join(modules)}", (nn.Module,), {})()
    for m in modules:
        encoder.add_module(m, children[m])
    report = load_encoder_weights(encoder, path, strict=True)
    loaded = set(report.loaded_keys)
    report.missing_keys = [k for k in network.state_dict() if k not in loaded]
    return report
