"""Optimiser parameter groups: no weight decay on biases, norms, embeddings and tokens; layer-wise learning-rate decay.

The paper trains with Adam at learning rate 1e-4 (section 4.1); :func:`param_groups` feeds ``torch.optim.AdamW``,
which with ``weight_decay=0`` is exactly that Adam. For fine-tuning a pretrained encoder (``freeze_encoder``
false) it adds the two settings of MAE and BEiT fine-tuning:

- **weight decay** only on weight matrices and kernels: parameters with at most one dimension (biases, the
  weights of LayerNorm / GroupNorm / InstanceNorm), position embeddings, class / mask tokens and Swin's relative
  position bias tables get ``weight_decay=0``;
- **layer-wise learning-rate decay**: a parameter of encoder layer ``l`` learns at ``lr * layer_decay ** (L - l)``,
  so the first layers, which hold the most general features, move least. ``L`` is the layer of the task head,
  which learns at the full ``lr``. Layers of the encoders of :mod:`frepa_monai.networks.encoders` (found by type,
  so the same rule holds inside MONAI's ``UNETR`` / ``SwinUNETR`` / ``MedNeXt`` and under a DDP wrapper):

  ===============================  ==================================================================  =========
  encoder                          layer ``l``                                                         ``L``
  ===============================  ==================================================================  =========
  MONAI ``ViT`` (``vit_*``)        patch embedding (and class token) 0, block ``i`` -> ``i + 1``;      blocks + 1
                                   the final norm feeds the head and learns with it (MAE)
  MONAI ``SwinTransformer``        patch embedding 0, stage ``k`` (``layers{k}``, 1-4) -> ``k``; the   5
  (``swin_*``)                     patch merging that ends stage ``k`` feeds stage ``k + 1`` and
                                   learns with it (SimMIM's Swin rule)
  ``ConvNeXtEncoder``              stem 0, stage ``i`` with its down-sampling convolution -> ``i + 1``  stages + 1
  (``convnext_*``)
  ``MedNeXtEncoder`` / MONAI       stem 0, ``enc_stages[i]`` -> ``i + 1``, ``down_blocks[i]`` (which    stages + 2
  ``MedNeXt`` (``mednext_*``)      feeds stage ``i + 1``) -> ``i + 2``, bottleneck -> stages + 1
  ===============================  ==================================================================  =========

  Every other parameter (task head, decoder, the slice transformer's blocks) learns at the full rate.

Frozen parameters (``requires_grad=False``) are left out, so a frozen encoder gives the head's parameters only.
Groups with equal learning rate and weight decay are merged: at most ``2 * (L + 1)`` groups, one with
``layer_decay=1`` and ``weight_decay=0``.

MONAI's :func:`monai.optimizers.generate_param_groups` is not used: it sets a learning rate per matcher but no
weight decay, keeps frozen parameters, puts a parameter matched twice into two groups (which torch refuses) and
returns one-shot generators. One (lr, weight decay) key per parameter, merged, is shorter than the ``2 * (L + 1)``
matchers it would need.
"""

from __future__ import annotations

import logging
import re

import torch.nn as nn
from monai.networks.nets import MedNeXt, ViT
from monai.networks.nets.swin_unetr import SwinTransformer

from frepa_monai.networks.encoders import ConvNeXtEncoder, MedNeXtEncoder

__all__ = ["param_groups", "layer_ids", "no_weight_decay"]

logger = logging.getLogger(__name__)

#: parameter names (last component) without weight decay besides the 1-D ones: position embeddings, tokens, Swin's
#: relative position bias tables
NO_DECAY_NAMES = ("position_embeddings", "pos_embed", "token", "relative_position_bias_table")


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for a parameter that gets no weight decay: at most one dimension, or an embedding / token by name."""
    last = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or any(key in last for key in NO_DECAY_NAMES)


def _vit_layer(name: str, vit: ViT) -> int:
    if name.startswith("patch_embedding.") or name == "cls_token":
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return len(vit.blocks) + 1  # the final norm and a classification head


def _swin_layer(name: str, swin: SwinTransformer) -> int:
    first = name.split(".")[0]
    if first == "patch_embed":
        return 0
    stage = re.fullmatch(r"layers(\d+)(c?)", first)
    if stage is None:
        return 5
    k = int(stage.group(1))
    return k + 1 if not stage.group(2) and ".downsample." in name else k


def _convnext_layer(name: str, encoder: ConvNeXtEncoder) -> int:
    part, index = name.split(".")[:2]
    return 0 if (part, index) == ("downsample", "0") else int(index) + 1


def _mednext_layer(name: str, net: nn.Module) -> int | None:
    n = len(net.enc_stages)
    part = name.split(".")[0]
    if part == "stem":
        return 0
    if part in ("enc_stages", "down_blocks"):
        return int(name.split(".")[1]) + (1 if part == "enc_stages" else 2)
    if part == "bottleneck":
        return n + 1
    return None  # MedNeXt's decoder: full rate


def _depth(module: nn.Module) -> int:
    """``L``, the layer of the head, for an encoder of a known type."""
    if isinstance(module, ViT):
        return len(module.blocks) + 1
    if isinstance(module, SwinTransformer):
        return 5
    if isinstance(module, ConvNeXtEncoder):
        return len(module.stages) + 1
    return len(module.enc_stages) + 2


_LAYER_OF = {ViT: _vit_layer, SwinTransformer: _swin_layer, ConvNeXtEncoder: _convnext_layer}
_LAYER_OF.update({MedNeXtEncoder: _mednext_layer, MedNeXt: _mednext_layer})


def layer_ids(network: nn.Module) -> dict[str, tuple[int, int]]:
    """``{parameter name: (layer l, depth L)}`` for the parameters of every encoder of a known type in ``network``.

    Names are ``network.named_parameters()``'s; parameters outside such an encoder (the head) are absent: they
    learn at the full rate. See the module docstring for the layers of each encoder.
    """
    found: list[tuple[str, nn.Module]] = []
    for prefix, module in network.named_modules():  # parents come first: an encoder's own sub-modules are skipped
        inside = any(p == "" or prefix.startswith(f"{p}.") for p, _ in found)
        if not inside and isinstance(module, tuple(_LAYER_OF)):
            found.append((prefix, module))
    ids: dict[str, tuple[int, int]] = {}
    for prefix, module in found:
        layer_of = next(f for cls, f in _LAYER_OF.items() if isinstance(module, cls))
        depth = _depth(module)
        for name, _ in module.named_parameters():
            layer = layer_of(name, module)
            if layer is not None:
                ids[f"{prefix}.{name}" if prefix else name] = (layer, depth)
    return ids


def param_groups(
    network: nn.Module, learning_rate: float, weight_decay: float = 0.0, layer_decay: float = 1.0
) -> list[dict]:
    """Parameter groups of ``network``'s trainable parameters for ``torch.optim.AdamW`` (see the module docstring).

    Args:
        network: the network to train (a DDP or ``torch.compile`` wrapper is fine).
        learning_rate: the full rate, of the task head (config key ``learning_rate``).
        weight_decay: decoupled weight decay of weight matrices and kernels (config key ``weight_decay``);
            0 makes AdamW the paper's Adam.
        layer_decay: ``lr * layer_decay ** (L - l)`` for encoder layer ``l`` (config key ``layer_decay``), in
            (0, 1]; 1 gives every parameter ``learning_rate``.

    Returns:
        ``[{"params": [...], "lr": ..., "weight_decay": ...}, ...]``, one group per distinct (lr, weight decay),
        in the order of the parameters; every trainable parameter in exactly one group.

    Raises:
        ValueError: naming the key, for a rate or decay out of range or a network without trainable parameters.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1 = no layer-wise decay), got {layer_decay}.")
    ids = layer_ids(network) if layer_decay != 1 else {}
    if layer_decay != 1 and not ids:
        logger.warning(
            "layer_decay=%s has no effect: %s holds no encoder of a known architecture (ViT, Swin, ConvNeXt, MedNeXt); "
            "every parameter learns at learning_rate",
            layer_decay,
            type(network).__name__,
        )
    groups: dict[tuple[float, float], dict] = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        lr = learning_rate
        if name in ids:
            layer, depth = ids[name]
            lr = learning_rate * layer_decay ** (depth - layer)
        wd = 0.0 if no_weight_decay(name, param) else float(weight_decay)
        groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd})["params"].append(param)
    if not groups:
        raise ValueError(
            f"{type(network).__name__} has no trainable parameters (requires_grad=True), nothing to optimise: "
            "the network config freezes everything."
        )
    return list(groups.values())
