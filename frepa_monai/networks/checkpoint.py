"""Saving and loading Frepa encoder weights.

A Frepa encoder checkpoint is ``{"state_dict": <encoder state dict>, "network_config": {"name", "spatial_dims",
"in_channels", "img_size", "preset"}, "best": {"epoch", "metric", "score"}}`` (``best``: the validation that chose
the weights, when a bundle wrote them), written atomically. :func:`load_encoder_weights` also reads a whole
:class:`~frepa_monai.networks.autoencoder.FrepaAutoEncoder` (or task network) state dict and MONAI
``CheckpointSaver`` files (``{"network": state_dict, ...}`` or a bare state dict).
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from frepa_monai.networks.encoders import build_encoder

__all__ = [
    "CheckpointError",
    "checkpoint_problem",
    "load_checkpoint",
    "EncoderLoadReport",
    "save_encoder_checkpoint",
    "read_encoder_checkpoint",
    "load_encoder_weights",
    "build_encoder_from_checkpoint",
    "warm_start",
]

logger = logging.getLogger(__name__)

_CONFIG_KEYS = ("name", "spatial_dims", "in_channels", "img_size")
_STATE_DICT_KEYS = ("state_dict", "network", "model", "net")
_PREFIXES = ("module.", "_orig_mod.")
_LEGACY_KEYS = ("mae.mask_token",)  # MAE's mask token sat in the ViT encoder before it moved to MaskTokens


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded: missing, empty, truncated, or not a checkpoint of weights."""


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format (since torch 1.6)
_PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle, protocol 2 or later


def checkpoint_problem(path: str | os.PathLike, deep: bool = False) -> str | None:
    """What is wrong with checkpoint file ``path``, in words (``None``: nothing found).

    The quick checks read the file's first bytes and, for torch's zip archive, its central directory at the end,
    so a truncated file is found without loading it. ``deep=True`` also loads it with ``weights_only=True``, to tell
    a file holding Python objects other than weights (refused, never unpickled) from one torch cannot read.
    """
    path = Path(path)
    if not path.is_file():
        return "does not exist"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                if not any(name.endswith("data.pkl") for name in archive.namelist()):
                    return "is a zip archive but not a PyTorch checkpoint (no data.pkl)"
        except (zipfile.BadZipFile, OSError):
            return f"is truncated or damaged: an incomplete PyTorch archive of {size} bytes"
    elif not head.startswith(_PICKLE_MAGIC):
        return f"is not a PyTorch checkpoint (it starts with {head!r}, neither a PyTorch archive nor a pickle)"
    if not deep:
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return "holds Python objects besides weights; Frepa checkpoints hold only tensors, so it is not loaded"
    except Exception as e:  # torch's errors on damaged files vary: EOFError, RuntimeError, KeyError
        return f"cannot be read by torch.load ({type(e).__name__}); it is damaged or not a checkpoint"
    return None


def checkpoint_error(path: str | os.PathLike, error: BaseException | None = None) -> CheckpointError | None:
    """A :class:`CheckpointError` naming ``path`` when :func:`checkpoint_problem` (deep) finds a problem, else
    ``None`` (``error`` came from elsewhere: re-raise it)."""
    problem = checkpoint_problem(path, deep=True)
    if problem is None:
        return None
    return CheckpointError(f"checkpoint {path} {problem}: it is not a Frepa checkpoint this bundle can load.")


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` whose errors name the file and say what is wrong with it
    (:class:`CheckpointError`), never torch's advice to turn ``weights_only`` off."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        error = checkpoint_error(path, e)
        if error is None:
            raise
        raise error from None


@dataclass
class EncoderLoadReport:
    """What :func:`load_encoder_weights` did: keys are relative to the encoder (or whole network) loaded into."""

    path: str
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    network_config: dict | None = None


def _encoder_of(model: nn.Module) -> nn.Module:
    """The encoder inside a FrepaAutoEncoder / FrepaTaskNet / SliceTransformer, else the module itself."""
    encoder = getattr(model, "encoder", None)
    return encoder if isinstance(encoder, nn.Module) else model


def save_encoder_checkpoint(
    path: str | os.PathLike, encoder: nn.Module, config: dict | None = None, best: dict | None = None
) -> None:
    """Write ``encoder``'s weights and network config to ``path`` atomically (temp file + ``os.replace``).

    Args:
        path: destination file (its folder is created).
        encoder: an encoder from :func:`~frepa_monai.networks.encoders.build_encoder`, or a module holding it as
            ``.encoder`` (e.g. a FrepaAutoEncoder, whose recorded bundle preset is then added to the config as
            ``"preset"``).
        config: ``{"name", "spatial_dims", "in_channels", "img_size"}``; default ``encoder.network_config``.
        best: what the weights are, stored as ``"best"``, e.g. ``{"epoch", "metric", "score"}`` of the validation
            that chose them.
    """
    preset = (getattr(encoder, "build_config", None) or {}).get("preset")
    encoder = _encoder_of(encoder)
    config = dict(config if config is not None else getattr(encoder, "network_config", {}))
    if preset is not None:
        config.setdefault("preset", preset)
    absent = [k for k in _CONFIG_KEYS if k not in config]
    if absent:
        raise ValueError(f"network config for '{path}' lacks {absent}; give config= or build with build_encoder().")
    state_dict = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"state_dict": state_dict, "network_config": config, **({"best": best} if best else {})}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def read_encoder_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read ``path`` and return (encoder state dict with mapped keys, network config or None).

    Accepted: the Frepa format, a ``CheckpointSaver`` dict (``{"network": ...}`` / ``{"model": ...}``) or a bare
    state dict. Keys lose ``module.`` / ``_orig_mod.`` prefixes; when some keys start with ``encoder.`` (a whole
    autoencoder or task network) only those are kept, without the prefix.
    """
    obj = load_checkpoint(path)
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a state dict or checkpoint dict.")
    config = obj.get("network_config") if isinstance(obj.get("network_config"), dict) else None
    state_dict = next((obj[k] for k in _STATE_DICT_KEYS if isinstance(obj.get(k), dict)), obj)
    tensors = {_strip_prefixes(str(k)): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"'{path}' holds no weights (keys: {sorted(map(str, obj))[:10]}).")
    if any(k.startswith("encoder.") for k in tensors):
        tensors = {_strip_prefixes(k[len("encoder.") :]): v for k, v in tensors.items() if k.startswith("encoder.")}
    return {k: v for k, v in tensors.items() if k not in _LEGACY_KEYS}, config


def _first(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_encoder_weights(
    model_or_encoder: nn.Module, path: str | os.PathLike, strict: bool = True
) -> EncoderLoadReport:
    """Load pretrained encoder weights from ``path`` into an encoder, or into the ``.encoder`` of a model.

    ``model_or_encoder`` may also be a whole MONAI network whose encoder has the checkpoint's parameter names
    (``SwinUNETR`` / ``MedNeXt`` from :func:`~frepa_monai.networks.encoders.build_whole_network`): pass
    ``strict=False`` there, its decoder keys are then reported as missing.

    Args:
        model_or_encoder: the target.
        path: a checkpoint (see :func:`read_encoder_checkpoint` for the formats).
        strict: raise on any missing or unexpected key; otherwise only report them.

    Returns:
        an :class:`EncoderLoadReport`.

    Raises:
        ValueError: naming the file and the offending keys when shapes differ, when no key matches (another
            architecture, e.g. a ``vit_tiny`` checkpoint into a ``swin_tiny`` encoder) or, with ``strict``, when
            keys are missing or unexpected.
    """
    target = _encoder_of(model_or_encoder)
    weights, config = read_encoder_checkpoint(path)
    own = target.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
    loaded = [k for k in own if k in weights and weights[k].shape == own[k].shape]
    if mismatched or not loaded or (strict and (missing or unexpected)):
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {_first(mismatched)}")
        if missing:
            problems.append(f"{len(missing)} missing keys: {_first(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
        theirs = f" (checkpoint network {config})" if config else ""
        ours = getattr(target, "network_config", None)
        raise ValueError(
            f"encoder weights in '{path}'{theirs} do not fit {type(target).__name__}"
            f"{f' {ours}' if ours else ''}: " + "; ".join(problems) + "."
        )
    target.load_state_dict({k: weights[k] for k in loaded}, strict=False)
    return EncoderLoadReport(str(path), loaded, missing, unexpected, config)


def warm_start(network: nn.Module, init_encoder: str | os.PathLike | None = None) -> nn.Module:
    """Load the encoder weights of ``init_encoder`` (an ``encoder.pt``, released or from an earlier run) into
    ``network``'s encoder, strictly, and return ``network``; ``None`` leaves it as it is.

    Pretraining bundles call it (``--init_encoder <encoder.pt>``) to start from an existing encoder; only the
    weights come from the file (the decoder, optimizer and epoch start anew), and a resumed run's checkpoint
    replaces them.
    """
    if init_encoder is None:
        return network
    if not os.path.isfile(init_encoder):
        raise FileNotFoundError(f"init_encoder {init_encoder} does not exist")
    report = load_encoder_weights(network, init_encoder, strict=True)
    logger.warning(f"encoder warm-started from {init_encoder} ({len(report.loaded_keys)} tensors)")
    return network


def build_encoder_from_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild the encoder described by the checkpoint's ``network_config`` and load its weights (strict)."""
    _, config = read_encoder_checkpoint(path)
    if config is None:
        raise ValueError(f"'{path}' has no network_config; build the encoder and use load_encoder_weights().")
    encoder = build_encoder(
        config["name"],
        config["spatial_dims"],
        config["in_channels"],
        config["img_size"],
        **config.get("overrides", {}),
    )
    load_encoder_weights(encoder, path, strict=True)
    return encoder
