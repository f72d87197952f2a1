"""Networks that carry how they were built, so that ``models/model.pt`` rebuilds the architecture it was trained with.

A builder (:func:`~frepa_monai.networks.factory.build_task_network`, :func:`~frepa_monai.networks.factory.
build_slice_transformer`, :func:`~frepa_monai.networks.autoencoder.build_autoencoder`) stores its own name, its
arguments and the bundle preset in ``network.build_config``. :class:`BuildRecord` puts that dict into the state dict
as PyTorch's ``_extra_state`` entry, so it travels inside ``model.pt`` (a plain state dict, as the model zoo
expects) and inside every epoch checkpoint. Only plain values are stored: the file still loads with
``torch.load(weights_only=True)``.

- :func:`read_build_config` reads it back from a ``model.pt``, an epoch checkpoint or an ``encoder.pt``.
- :func:`~frepa_monai.networks.factory.network_from_checkpoint` builds the recorded network, or the configured one
  when there is no file yet.
"""

from __future__ import annotations

import os

import torch.nn as nn

__all__ = ["BuildRecord", "record_build", "read_build_config"]

EXTRA_STATE_KEY = "_extra_state"


class BuildRecord:
    """Mixin for an ``nn.Module`` whose ``build_config`` travels in its state dict (``_extra_state``)."""

    build_config: dict | None = None

    def get_extra_state(self) -> dict:
        return {"build_config": dict(self.build_config or {})}

    def set_extra_state(self, state) -> None:
        """Keep the loaded record as ``loaded_build_config``; the module's own ``build_config`` stays."""
        self.loaded_build_config = state.get("build_config") if isinstance(state, dict) else None


def record_build(network: nn.Module, builder: str, args: dict, preset: str | None = None) -> nn.Module:
    """Set ``network.build_config = {"builder", "args", "preset"}`` and return ``network``.

    ``args`` are the builder's keyword arguments without the encoder checkpoint: the rebuilt network gets every
    weight from the state dict.
    """
    network.build_config = {"builder": builder, "args": dict(args), "preset": preset}
    return network


def _state_dict_of(obj) -> dict | None:
    if not isinstance(obj, dict):
        return None
    if EXTRA_STATE_KEY in obj:
        return obj
    for key in ("network", "model", "state_dict"):  # epoch checkpoints, {"model": ...} files, encoder.pt
        if isinstance(obj.get(key), dict) and EXTRA_STATE_KEY in obj[key]:
            return obj[key]
    return None


def read_build_config(path: str | os.PathLike) -> dict | None:
    """The ``build_config`` recorded in checkpoint ``path``, or ``None`` when it records none.

    ``model.pt`` and epoch checkpoints hold it in their state dict; an ``encoder.pt`` of
    :func:`~frepa_monai.networks.checkpoint.save_encoder_checkpoint` holds ``network_config``, which is returned as
    ``{"builder": "build_encoder", "args": ..., "preset": ...}``. Raises
    :class:`~frepa_monai.networks.checkpoint.CheckpointError` naming the file when it is damaged.
    """
    from frepa_monai.networks.checkpoint import load_checkpoint

    obj = load_checkpoint(path)
    state = _state_dict_of(obj)
    if state is not None:
        extra = state[EXTRA_STATE_KEY]
        config = extra.get("build_config") if isinstance(extra, dict) else None
        return dict(config) if config else None
    if isinstance(obj, dict) and isinstance(obj.get("network_config"), dict):
        config = dict(obj["network_config"])
        return {"builder": "build_encoder", "args": config, "preset": config.get("preset")}
    return None
