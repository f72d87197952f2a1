"""The bundle configs cannot drift: 2D / 3D twins differ only where their dimension does, every ``_target_``
resolves, and no bundle reads another bundle's configs (the model zoo wants self-contained bundles)."""

from __future__ import annotations

import json
import pydoc
import re

import pytest
from bundle_helpers import REPO
from monai.bundle.config_item import ComponentLocator

BUNDLES = REPO / "bundles"
CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "multi_gpu_evaluate.json")
DIMENSION = {
    "network_def#spatial_dims",
    "train#augmentation",
    "preprocessing",
    "datalist",
    "image_channels",
    "input_check",
}
"""What every twin pair differs in: dimension, its augmentations and preprocessing, its data, the images it takes
(``input_check``) and channels."""
NAMING = {"bundle_root", "experiment_name"}
"""The bundle's own name."""
TWINS = {  # (2D, 3D) -> config -> what differs besides DIMENSION and NAMING
    ("frepa_pretrain_2d", "frepa_pretrain_3d"): {
        "train.json": {
            "cpu_settings",
            "gpu_settings",
            "image_size",
            "patch_size",
            "image_patch_size",
            "val_num_samples",
            "network_def#img_size",
            "strategies#frepa",
            "strategies#mae",
            "strategies#mfm",
            "validate#crop",
        },
        "inference.json": {
            "encoder",
            "image_size",
            "patch_size",
            "decoder_channels",
            "network_def#img_size",
            "inferer",
            "postprocessing",
        },
    },
    ("frepa_classification_2d", "frepa_classification_3d"): {
        "train.json": {"cpu_settings", "gpu_settings", "encoder_checkpoint"},
        "inference.json": {"cpu_settings", "gpu_settings"},
    },
    ("frepa_detection_2d", "frepa_detection_3d"): {
        "train.json": {"cpu_settings", "gpu_settings", "encoder_checkpoint", "flip"},
        "inference.json": {"cpu_settings", "gpu_settings", "mask_ext", "postprocessing"},
    },
    # one task family: fine vessels in 2D fundus photographs, brain regions in 3D MR
    ("frepa_vessel_segmentation_2d", "frepa_segmentation_3d"): {
        "train.json": {
            "cpu_settings",
            "gpu_settings",
            "encoder_checkpoint",
            "class_names",
            "image_size",
            "patch_size",
            "pixdim",
            "working_size",
            "num_folds",
            "network_def#img_size",
            "validate#additional_metrics",
            "validate#inferer",
        },
        "inference.json": {
            "class_names",
            "displayable_configs",
            "encoder_name",
            "image_size",
            "patch_size",
            "pixdim",
            "working_size",
            "vessel_value",
            "network_def#img_size",
            "inferer",
            "postprocessing",
        },
    },
}
SPLIT = ("train", "validate", "network_def", "strategies")
"""Sections compared one level deeper (``train#augmentation``), so that their handler lists must agree."""


def flatten(config, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": [1]}}`` -> ``{"a#b#0": 1}``: MONAI's config ids of every leaf."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = enumerate(config)
    else:
        return {prefix: config}
    out: dict[str, object] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}#{key}" if prefix else str(key)))
    return out


def section(config_id: str) -> str:
    parts = config_id.split("#")
    return "#".join(parts[:2]) if parts[0] in SPLIT and len(parts) > 1 else parts[0]


def load(name: str, config: str) -> dict:
    return json.loads((BUNDLES / name / "configs" / config).read_text())


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("pair", list(TWINS), ids=lambda p: p[1])
def test_twins_differ_only_in_the_listed_keys(pair, config):
    a, b = (flatten(load(name, config)) for name in pair)
    differ = {section(k) for k in a.keys() | b.keys() if a.get(k, KeyError) != b.get(k, KeyError)}
    allowed = DIMENSION | NAMING | TWINS[pair].get(config, set())
    assert differ <= allowed, f"{pair[0]} and {pair[1]} {config} drifted apart in {sorted(differ - allowed)}"
    listed = TWINS[pair].get(config, set())
    assert listed <= differ, f"listed as different but equal (remove from TWINS): {sorted(listed - differ)}"


def test_the_twins_share_their_handler_lists():
    """The longest shared blocks: training and validation handlers, one copy per bundle, equal in each pair."""
    for pair in TWINS:
        a, b = (load(name, "train.json") for name in pair)
        for engine in ("train", "validate"):
            assert a[engine]["handlers"] == b[engine]["handlers"], (pair, engine)


def _targets(config, found: list[str]) -> list[str]:
    if isinstance(config, dict):
        if isinstance(config.get("_target_"), str):
            found.append(config["_target_"])
        for value in config.values():
            _targets(value, found)
    elif isinstance(config, list):
        for value in config:
            _targets(value, found)
    return found


BUNDLE_NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_every_target_resolves_and_no_bundle_reads_another_bundles_configs(name):
    """Every ``_target_`` and every ``frepa_monai.*`` name inside a ``$`` expression exists; no path leaves the
    bundle for another bundle's configs."""
    locator = ComponentLocator()
    for path in sorted((BUNDLES / name / "configs").glob("*.json")):
        config = json.loads(path.read_text())
        for target in _targets(config, []):
            module = locator.get_component_module_name(target)
            resolved = pydoc.locate(f"{module[0] if isinstance(module, list) else module}.{target}") if module else None
            assert resolved is not None or pydoc.locate(target) is not None, f"{path}: _target_ {target!r}"
        for value in flatten(config).values():
            if isinstance(value, str) and value.startswith("$"):
                for used in re.findall(r"frepa_monai(?:\.\w+)+", value):
                    assert pydoc.locate(used) is not None, f"{path}: {used} in {value[:80]}"
            if isinstance(value, str) and not value.startswith("https://"):  # the metadata schema's address
                assert "../" not in value and not any(f"{other}/configs" in value for other in BUNDLE_NAMES), (
                    f"{path} reads a file outside its bundle: {value[:80]}"
                )
