"""The MONAI model zoo CI's checks on what ``tools/zoo.py publish`` publishes, for every bundle, and publish's
refusal of a bundle that fails one.

For each bundle of ``bundles/``: a copy with CPU-preset weights, ``models/model.pt`` written as training writes it
(``validate#best_model_saver`` saves the bare state dict of ``train.json``'s ``network``, its build record
included): the state dict of ``train.json``'s ``network_def`` at ``preset`` ``cpu`` (downstream bundles with
``encoder`` ``random``: the weights of a pretrained encoder would come from another bundle). Not a one-epoch
training: the checks read the architecture and the shapes only, and a training run costs 15-40 s per bundle on two
cores (the 3D ones most), several minutes for the nine. Its published copy (``zoo.stage_bundle``: the files
``zoo.publish`` zips, ``metadata.json`` rewritten for the weights) then passes ``verify_metadata``,
``check_properties``, ``verify_net_in_out`` and ``ckpt_export``, called as the model zoo's ``ci/verify_bundle.py``
calls them (``verify(bundle, models_path, mode="full")``, the functions below copied from it), with no override:
only ``ckpt_export`` gets ``zoo.EXPORT_ARGS`` (``use_trace``: the networks do not script; the zoo puts such
arguments in its ``ci/bundle_custom_data.py``, see ``frepa_monai/zoo/checks.py``). The exported TorchScript must
give the PyTorch network's output for an input of the published metadata's shape.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import REPO, bundle_copy
from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, MetaProperties
from test_bundle_checks import network_size, parser_at

from frepa_monai import zoo

BUNDLES = sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/metadata.json"))
SCHEMA = REPO / "bundles" / "schema" / "meta_schema_20240725.json"


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_metadata_names_the_package_at_its_version():
    """Every bundle requires ``frepa-monai`` at setup.cfg's version, and tqdm (a dependency of the package: MONAI's
    downloads show no progress without it)."""
    cfg = setup_cfg()
    version = cfg["metadata"]["version"]
    requires = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    assert "tqdm" in requires
    for name in BUNDLES:
        packages = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())[
            "required_packages_version"
        ]
        assert packages.get("frepa-monai") == version, (
            f"{name}: frepa-monai {packages.get('frepa-monai')}, not {version}"
        )
        assert packages.get("tqdm"), f"{name}: required_packages_version names no tqdm"


# ------------------------------------------------------------- the model zoo's calls (ci/verify_bundle.py, dfae206d)
def prepare_schema(bundle_path: str) -> None:
    """ci/utils.py prepare_schema: the schema the metadata names, as ``eval/schema.json`` (here the stored copy)."""
    os.makedirs(os.path.join(bundle_path, "eval"), exist_ok=True)
    shutil.copyfile(SCHEMA, os.path.join(bundle_path, "eval/schema.json"))


def verify_metadata_format(bundle_path: str):
    verify_metadata(
        meta_file=os.path.join(bundle_path, "configs/metadata.json"),
        filepath=os.path.join(bundle_path, "eval/schema.json"),
    )


def check_properties(**kwargs):
    """The zoo's check_properties, with MONAI's MetaProperties and InferProperties (the zoo takes those of the apps
    in ``supported_apps``)."""
    workflow = create_workflow(**kwargs)
    workflow.properties = {**MetaProperties, **InferProperties}
    check_result = workflow.check_properties()
    workflow.finalize()  # not in the zoo's CI (a process that ends here): ends the bundle's run guard
    if check_result is not None and len(check_result) > 0:
        raise ValueError(f"check properties for workflow failed: {check_result}")


def verify_data_shape(bundle_path: str, net_id: str, config_file: str):
    verify_net_in_out(
        net_id=net_id,
        meta_file=os.path.join(bundle_path, "configs/metadata.json"),
        config_file=os.path.join(bundle_path, config_file),
        bundle_root=bundle_path,
    )


def verify_torchscript(
    bundle_path: str, net_id: str, config_file: str, model_name: str = "model.pt", ts_name: str = "model.ts"
):
    ckpt_export(
        net_id=net_id,
        filepath=os.path.join(bundle_path, "models/verify_model.ts"),
        ckpt_file=os.path.join(bundle_path, "models", model_name),
        meta_file=os.path.join(bundle_path, "configs/metadata.json"),
        config_file=os.path.join(bundle_path, config_file),
        bundle_root=bundle_path,
        **zoo.EXPORT_ARGS,
    )
    if ts_name is not None and os.path.exists(os.path.join(bundle_path, "models", ts_name)):
        torch.jit.load(os.path.join(bundle_path, "models", ts_name))


# -------------------------------------------------------------------------------------------------------- helpers
def with_cpu_weights(root: Path, seed: int = 0) -> torch.nn.Module:
    """``root/models/model.pt``: the state dict of ``train.json``'s ``network_def`` at the CPU preset (encoder
    ``random`` in downstream bundles), nudged away from the initialisation so that every weight counts."""
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.update({"preset": "cpu", "bundle_root": str(root)})
    if parser.get("encoder") == "pretrained":
        parser["encoder"] = "random"
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    (root / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return net.eval()


def io(meta: dict) -> tuple[dict, dict]:
    ndf = meta["network_data_format"]
    return ndf["inputs"]["image"], ndf["outputs"]["pred"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_published_copy_passes_the_zoo_checks(name, tmp_path):
    root = bundle_copy(tmp_path / "src", name)
    net = with_cpu_weights(root)
    published = zoo.stage_bundle(root, tmp_path / "models")  # the zoo's models_path
    bundle_path, config_file = str(published), os.path.join("configs", "inference.json")

    prepare_schema(bundle_path)
    verify_metadata_format(bundle_path)
    check_properties(
        workflow_type="inference",
        bundle_root=bundle_path,
        config_file=os.path.join(bundle_path, config_file),
        logging_file=os.path.join(bundle_path, "configs/logging.conf"),
        meta_file=os.path.join(bundle_path, "configs/metadata.json"),
    )
    verify_data_shape(bundle_path, "network_def", config_file)
    verify_torchscript(bundle_path, "network_def", config_file)

    # the published metadata describes the CPU weights; only network_data_format and the description changed
    source = json.loads((root / "configs" / "metadata.json").read_text())
    meta = json.loads((published / "configs" / "metadata.json").read_text())
    changed = {k for k in source.keys() | meta.keys() if source.get(k) != meta.get(k)}
    assert changed == {"network_data_format", "description"}
    assert (
        meta["description"].startswith(source["description"])
        and "Published with models/model.pt" in meta["description"]
    )
    (image, pred), (src_image, src_pred) = io(meta), io(source)
    cpu_size = network_size(parser_at(root, "cpu"), root, len(src_image["spatial_shape"]))
    assert image["spatial_shape"] == cpu_size + src_image["spatial_shape"][len(cpu_size) :]
    assert image["spatial_shape"] != src_image["spatial_shape"]  # the paper preset's is larger
    assert image["num_channels"] == src_image["num_channels"]
    dense = src_pred["spatial_shape"] == src_image["spatial_shape"]
    assert pred["spatial_shape"] == (image["spatial_shape"] if dense else src_pred["spatial_shape"])

    # the exported TorchScript is the shipped network
    x = torch.rand(1, image["num_channels"], *image["spatial_shape"])
    ts = torch.jit.load(str(published / "models" / "verify_model.ts"))
    with torch.no_grad():
        expected, got = net(x), ts(x)
    assert got.shape == expected.shape and got.shape[1] == pred["num_channels"]
    if dense:
        assert tuple(got.shape[2:]) == tuple(image["spatial_shape"])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- publish refuses, last line
def test_publish_refuses_a_metadata_the_schema_rejects(tmp_path):
    bundles = tmp_path / "bundles"
    root = bundle_copy(bundles, "frepa_pretrain_2d")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    with pytest.raises(zoo.ZooError) as error:
        zoo.publish(tmp_path / "site", bundles_dir=bundles)
    message = str(error.value)
    assert message.startswith(f"{root}: configs/metadata.json: the model zoo's check verify_metadata failed: ")
    assert "'network_data_format' is a required property" in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == []  # nothing published, no staging left


def test_publish_never_downloads_a_schema(tmp_path):
    bundles = tmp_path / "bundles"
    root = bundle_copy(bundles, "frepa_pretrain_2d")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["schema"] = "https://example.org/schemas/meta_schema_29990101.json"
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    with pytest.raises(zoo.ZooError, match=r"check verify_metadata failed: the schema .*meta_schema_29990101\.json"):
        zoo.publish(tmp_path / "site", bundles_dir=bundles)
    assert not (tmp_path / "site" / "model_info.json").exists()


def test_damaged_weights_are_named(tmp_path):
    root = bundle_copy(tmp_path, "frepa_classification_2d")
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(zoo.ZooError, match=rf"^{root / 'models' / 'model.pt'}: cannot read the network it records"):
        zoo.shipped_metadata(root)


@pytest.mark.slow
def test_publish_refuses_weights_the_metadata_does_not_describe(tmp_path):
    """CPU weights whose classifier has another number of classes than the metadata's: verify_net_in_out fails,
    ``tools/zoo.py publish`` exits 1 and its last line names the bundle, the files and the check; nothing is
    published."""
    bundles = tmp_path / "bundles"
    root = bundle_copy(bundles, "frepa_classification_2d")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] = "a third class"
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    with_cpu_weights(root)
    cmd = [sys.executable, str(REPO / "tools" / "zoo.py"), "publish", "--to", str(tmp_path / "site")]
    out = subprocess.run([*cmd, "--bundles_dir", str(bundles)], capture_output=True, text=True)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"zoo.py publish: error: {root}: configs/inference.json network_def vs configs/metadata.json "
        "network_data_format: the model zoo's check verify_net_in_out failed: "
    ), last
    assert "output channel number `2` doesn't match: `3`" in last
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == []
