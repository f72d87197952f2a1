"""The ``network_data_format`` of a published bundle describes the weights it ships.

A bundle's ``configs/metadata.json`` describes the paper preset (e.g. 4 x 512 x 512 for the 2D bundles). A
``models/model.pt`` trained on CPU is the CPU preset's network (``vit_tiny`` at 128 x 128): the model zoo's checks
(``verify_net_in_out``, ``ckpt_export``) and every tool that reads the metadata (MONAI Label, MONAI Deploy) would
feed it inputs it cannot take. ``model.pt`` records how its network was built
(:func:`frepa_monai.networks.read_build_config`: builder, arguments, preset), so :func:`shipped_metadata` gives the
published copy's ``metadata.json`` with, from those arguments:

- ``inputs.image.spatial_shape``: its first ``len(img_size)`` axes are ``img_size`` (an integer ``img_size`` counts
  for every spatial axis); the axes after them are kept. The slice transformer
  (:func:`~frepa_monai.networks.build_slice_transformer`) records the 2D encoder's ``(H, W)``: a volume's depth
  stays as the metadata gives it.
- ``inputs.image.num_channels``: ``in_channels``. The slice transformer's ``in_channels`` is its 2D encoder's
  (3 image channels + Hessian); its volumes have one image channel (+ the Hessian channel), which it repeats, so
  their channels stay ``2`` (``1`` without the Hessian channel).
- ``outputs.pred.spatial_shape``: the new input shape, where it equalled the input's (dense outputs); class and
  box outputs keep theirs.

The description says so, naming the builder, preset and encoder. Nothing changes when ``models/model.pt`` is absent
or records no network (the repository's metadata is then zipped as it is).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from frepa_monai.zoo.utils import ZooError, json_style

__all__ = ["WEIGHTS", "build_config_of", "shipped_format", "shipped_metadata"]

WEIGHTS = "models/model.pt"  # the file the model zoo's checks load (ci/verify_bundle.py: _get_weights_names)

logger = logging.getLogger("frepa.zoo")


def build_config_of(weights: Path) -> dict | None:
    """The build record of ``weights`` (``None`` when it records none); a damaged file raises :class:`ZooError`."""
    from frepa_monai.networks import read_build_config  # torch: only when a bundle ships weights

    try:
        return read_build_config(weights)
    except Exception as e:  # CheckpointError names the file and says what is wrong
        raise ZooError(f"{weights}: cannot read the network it records: {' '.join(str(e).split())}") from None


def _spatial(args: dict, builder: str, old: list) -> list:
    img_size = args.get("img_size")
    if builder == "build_slice_transformer":
        axes = 2  # the 2D encoder's (H, W) of each slice; the depth is the volume's
    else:
        axes = int(args.get("spatial_dims") or len(old))
    if isinstance(img_size, int):
        size = [img_size] * axes
    elif isinstance(img_size, (list, tuple)) and img_size:
        size = [int(s) for s in img_size][:axes]
    else:
        return list(old)
    return size + list(old[len(size) :])


def _channels(args: dict, builder: str, old: int) -> int:
    in_channels = int(args.get("in_channels") or old)
    if builder != "build_slice_transformer":
        return in_channels
    if args.get("hessian_channel", True):
        return 2 if in_channels > 2 else in_channels
    return 1


def shipped_format(meta: dict, config: dict) -> dict:
    """``meta`` (a metadata dict) with ``network_data_format`` and ``description`` for the network of the build
    record ``config`` (see the module docstring); ``meta`` itself is not changed."""
    out = copy.deepcopy(meta)
    builder, args = str(config.get("builder")), dict(config.get("args") or {})
    image = out["network_data_format"]["inputs"]["image"]
    pred = out["network_data_format"]["outputs"]["pred"]
    old_shape = list(image["spatial_shape"])
    image["spatial_shape"] = _spatial(args, builder, old_shape)
    image["num_channels"] = _channels(args, builder, image["num_channels"])
    if list(pred["spatial_shape"]) == old_shape:
        pred["spatial_shape"] = list(image["spatial_shape"])
    encoder = args.get("encoder_name") or args.get("name")
    preset = f"preset {config['preset']!r}" if config.get("preset") else "no preset recorded"
    shape = " x ".join(str(s) for s in [image["num_channels"], *image["spatial_shape"]])
    note = (
        f"Published with {WEIGHTS}: network_data_format describes the network these weights were trained with, as "
        f"{WEIGHTS} records it ({builder}, {preset}, encoder {encoder!r}): input {shape}; the metadata.json "
        "of the repository describes the paper preset."
    )
    out["description"] = f"{out.get('description', '').rstrip()} {note}".strip()
    return out


def shipped_metadata(bundle: str | Path) -> bytes | None:
    """The ``configs/metadata.json`` bytes to publish for ``bundle``: rewritten for its ``models/model.pt`` (see the
    module docstring), or ``None`` (publish the file as it is) when it has no weights recording their network."""
    bundle = Path(bundle)
    weights = bundle / WEIGHTS
    if not weights.is_file():
        return None
    config = build_config_of(weights)
    if not config:
        logger.warning(f"{bundle.name}: {weights} records no network: configs/metadata.json is published as it is")
        return None
    path = bundle / "configs" / "metadata.json"
    text = path.read_text()
    try:
        meta = json.loads(text)
        out = shipped_format(meta, config)
    except (KeyError, TypeError, ValueError) as e:
        raise ZooError(f"{path}: network_data_format cannot describe {weights}: {e!r}") from None
    return (json.dumps(out, **json_style(text)) + ("\n" if text.endswith("\n") else "")).encode()
