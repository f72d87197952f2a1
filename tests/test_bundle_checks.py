"""The model zoo CI's network check, ``monai.bundle.verify_net_in_out``, for every bundle's ``inference.json``.

Every folder under ``bundles/`` holding ``configs/metadata.json`` is checked (``verify_metadata`` is in
``test_bundle_metadata.py``). ``network_data_format`` describes the paper (GPU) preset, so the check runs twice:

- CPU preset, real forward pass: a copy of ``configs/`` in a temporary folder whose ``inference.json`` says
  ``"preset": "cpu"`` and whose ``metadata.json`` gives the CPU preset's input (and dense output) spatial shape,
  read from the config's own ``patch_size`` / ``image_size``; ``verify_net_in_out`` then builds the network and
  runs it on random input of that shape (offline, on CPU). Spatial entries written as patterns (``"*"``,
  ``"16*n"``, ``"2**p"``) are kept and resolved by verify_net_in_out's ``any`` / ``n`` / ``p``: ``any`` is the
  size the bundle's own patch has at that axis (e.g. the number of slices of a slice transformer).
- GPU preset, the files as they are: ``verify_net_in_out`` with ``--preset gpu`` on PyTorch's ``meta`` device
  (the network is built and run without memory or arithmetic, only shapes and dtypes), so the paper-scale
  networks (vit_b at 512^2, vit_1024 at 128^3) are checked against the metadata in under a second each.

Both also check what verify_net_in_out leaves out: the output's spatial shape (the input's for dense outputs,
none for class / box outputs). The same check runs once through the command line (``python -m monai.bundle
verify_net_in_out``), and once against a wrong metadata to show that it fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import REPO
from monai.bundle import ConfigParser, verify_net_in_out

BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/metadata.json"))
IDS = [b.name for b in BUNDLES]
SIZE_KEYS = ("patch_size", "image_size", "roi_size", "img_size")  # the network's input size, first found
DEFAULT_ANY = 8


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def io_format(meta: dict) -> tuple[dict, dict]:
    ndf = meta["network_data_format"]
    return ndf["inputs"]["image"], ndf["outputs"]["pred"]


def parser_at(bundle: Path, preset: str) -> ConfigParser:
    """``bundle``'s inference.json and metadata at ``preset`` (``cpu`` or ``gpu``)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"preset": preset, "bundle_root": str(bundle)})
    return parser


def network_size(parser: ConfigParser, bundle: Path, dims: int) -> list[int]:
    """The network's input size at the parser's preset: the first of ``SIZE_KEYS`` with ``dims`` entries or
    fewer (a slice transformer's 2D ``image_size`` fits a 3D input)."""
    for key in SIZE_KEYS:
        if key in parser:
            size = parser.get_parsed_content(key)
            if isinstance(size, (list, tuple)) and 0 < len(size) <= dims:
                return [int(s) for s in size]
    raise AssertionError(f"{bundle.name}/configs/inference.json: none of {SIZE_KEYS} gives a {dims}D input size.")


def spatial_pattern(meta_shape: list, size: list[int]) -> tuple[list, int]:
    """``meta_shape`` with its integer entries replaced by ``size`` (pattern strings kept), and the ``any`` that
    gives a ``"*"`` entry the bundle's own size at that axis."""
    shape = [size[i] if isinstance(s, int) and i < len(size) else s for i, s in enumerate(meta_shape)]
    stars = [i for i, s in enumerate(meta_shape) if s == "*" and i < len(size)]
    return shape, size[stars[0]] if stars else DEFAULT_ANY


def resolved(shape: list, any_: int) -> tuple[int, ...]:
    """Integer sizes of a spatial pattern, as verify_net_in_out builds its fake input (``p = n = 1``)."""
    from monai.bundle.scripts import _get_fake_spatial_shape  # MONAI's own resolution of "*", "x*n", "x**p"

    return tuple(_get_fake_spatial_shape(shape, p=1, n=1, any=any_))


def check_output(name: str, out: torch.Tensor, spatial: tuple, image: dict, pred: dict) -> None:
    """What verify_net_in_out does not check: batch, and the spatial shape the metadata implies."""
    assert out.shape[0] == 1 and out.shape[1] == pred["num_channels"], f"{name}: output {tuple(out.shape)}"
    if pred["spatial_shape"] == image["spatial_shape"]:  # dense output: the input's grid
        assert tuple(out.shape[2:]) == spatial, f"{name}: output {tuple(out.shape)} for input spatial {spatial}"
    elif all(s == 1 for s in pred["spatial_shape"]):  # one vector per image (classes, box)
        assert all(s == 1 for s in out.shape[2:]), f"{name}: output {tuple(out.shape)}, metadata says one vector"


def cpu_copy(bundle: Path, tmp_path: Path) -> tuple[Path, tuple, int]:
    """``configs/`` of ``bundle`` in ``tmp_path/<name>`` with the CPU preset and its shapes in the metadata;
    returns (copy, input spatial shape, ``any``)."""
    root = tmp_path / bundle.name
    shutil.copytree(bundle / "configs", root / "configs")
    meta = read_json(root / "configs" / "metadata.json")
    image, pred = io_format(meta)
    size = network_size(parser_at(bundle, "cpu"), bundle, len(image["spatial_shape"]))
    shape, any_ = spatial_pattern(image["spatial_shape"], size)
    if pred["spatial_shape"] == image["spatial_shape"]:
        pred["spatial_shape"] = shape
    image["spatial_shape"] = shape
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    config = read_json(root / "configs" / "inference.json")
    config["preset"] = "cpu"
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    return root, resolved(shape, any_), any_


def test_bundles_found():
    assert {"frepa_pretrain_2d", "frepa_pretrain_3d"} <= set(IDS)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_verify_net_in_out_cpu_preset(bundle, tmp_path):
    """The network of inference.json at the CPU preset, run for real on CPU with the metadata's (CPU-sized)
    input; the output has the metadata's channels, dtype and spatial layout."""
    root, spatial, any_ = cpu_copy(bundle, tmp_path)
    meta_file, config_file = root / "configs" / "metadata.json", root / "configs" / "inference.json"
    torch.manual_seed(0)
    verify_net_in_out(
        net_id="network_def", meta_file=str(meta_file), config_file=str(config_file), device="cpu", p=1, n=1, any=any_
    )
    image, pred = io_format(read_json(meta_file))
    parser = ConfigParser()
    parser.read_config(str(config_file))
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.rand(1, image["num_channels"], *spatial))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    check_output(bundle.name, out, spatial, image, pred)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_verify_net_in_out_gpu_preset_as_written(bundle):
    """The unmodified metadata against the paper-preset network, on the ``meta`` device (shapes only)."""
    meta = read_json(bundle / "configs" / "metadata.json")
    image, pred = io_format(meta)
    size = network_size(parser_at(bundle, "gpu"), bundle, len(image["spatial_shape"]))
    wrong = [m for m, s in zip(image["spatial_shape"], size) if isinstance(m, int) and m != s]
    assert not wrong, (
        f"{bundle.name}: metadata.json network_data_format inputs.image.spatial_shape {image['spatial_shape']} is "
        f"not the GPU preset's input size {size} (inference.json with preset gpu)"
    )
    _, any_ = spatial_pattern(image["spatial_shape"], size)
    with torch.device("meta"):  # parameters and activations without storage: paper scale in no time
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
            device="meta",
            p=1,
            n=1,
            any=any_,
            preset="gpu",
        )
        net = parser_at(bundle, "gpu").get_parsed_content("network_def").eval()
        spatial = resolved(image["spatial_shape"], any_)
        with torch.no_grad():
            out = net(torch.empty(1, image["num_channels"], *spatial))
    assert out.device.type == "meta" and out.dtype == torch.float32
    check_output(bundle.name, out, spatial, image, pred)


def test_verify_net_in_out_rejects_a_wrong_metadata(tmp_path):
    bundle = REPO / "bundles" / "frepa_classification_2d"
    root, _, _ = cpu_copy(bundle, tmp_path)
    meta_file = root / "configs" / "metadata.json"
    meta = read_json(meta_file)
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] += 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="output channel number `2` doesn't match: `3`"):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(meta_file),
            config_file=str(root / "configs/inference.json"),
            device="cpu",
        )


@pytest.mark.slow
def test_verify_net_in_out_command_line():
    """The model zoo's command, on this repository's files as they are (paper preset, on CPU)."""
    bundle = REPO / "bundles" / "frepa_classification_3d"  # vit_1024 at 128^3 runs in about a second
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += [
        "--meta_file",
        str(bundle / "configs/metadata.json"),
        "--config_file",
        str(bundle / "configs/inference.json"),
    ]
    cmd += ["--device", "cpu", "--preset", "gpu"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data shape of network is verified with no error" in out.stdout + out.stderr
