"""The pretraining bundles' training pipeline: where the Hessian channel is computed (paper 3.2, Eq. 6) and which
dataset caches the items (``cache``, ``cache_rate``, ``cache_dir``), read from the bundles' own train.json."""

from __future__ import annotations

from pathlib import Path

import monai.data
import pytest
import torch
from bundle_helpers import REPO
from monai.bundle import ConfigParser

from frepa_monai.data import CacheDataset, PersistentDataset

BUNDLES = ("frepa_pretrain_2d", "frepa_pretrain_3d")
SMALL = {
    "frepa_pretrain_2d": {"cpu_settings#image_size": [64, 64], "train_datalist": "$@datalist['training'][:6]"},
    "frepa_pretrain_3d": {
        "cpu_settings#patch_size": [32, 32, 32],
        "cpu_settings#num_samples": 2,
        "train_datalist": "$@datalist['training'][:2]",
    },
}


def parsed(name: str, root: Path, preset: str = "cpu", **override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    parser["preset"] = preset
    for key, value in {**SMALL[name], **override}.items():
        parser[key] = value
    parser.parse()
    return parser


def first_batch(parser: ConfigParser, seed: int = 3) -> dict:
    """The first training batch, in datalist order, with the training transforms seeded by ``seed``."""
    dataset = parser.get_parsed_content("train#dataset")
    loader = monai.data.DataLoader(dataset, batch_size=len(dataset), shuffle=False, num_workers=0)
    parser.get_parsed_content("train#preprocessing").set_random_state(seed=seed)  # after MONAI's loader seeded it
    return next(iter(loader))


@pytest.mark.parametrize("name", BUNDLES)
def test_the_hessian_computed_in_the_step_is_the_channel_the_pipeline_computed(tmp_path, name):
    """By default (``hessian_in_pipeline`` false) the loader carries the image only and the strategy computes the
    channel of the very same augmented crops on their device; with ``true`` the pipeline computes it per crop.
    The two agree to float32 rounding: the same function of the same crops, batched or one by one (the channel is
    in [0, 1] and normalised per image, so an absolute 1e-5 is far below any change the place could make)."""
    in_step = parsed(name, tmp_path)
    in_pipeline = parsed(name, tmp_path, hessian_in_pipeline=True)
    assert in_step["hessian_in_pipeline"] is False
    a, b = first_batch(in_step), first_batch(in_pipeline)
    assert "hessian" not in a and b["hessian"].shape == (b["image"].shape[0], 1, *b["image"].shape[2:])
    assert torch.equal(a["image"], b["image"])  # the same augmented crops
    strategy = in_step.get_parsed_content("strategy")
    channel = strategy.hessian_of(a["image"], None)
    assert channel.amax() == 1.0 and channel.mean() > 0.01  # a real ridge channel, not zeros
    torch.testing.assert_close(channel, b["hessian"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", BUNDLES)
def test_cache_keys_are_plain_and_the_gpu_preset_reads_a_persistent_cache(tmp_path, name):
    cpu = parsed(name, tmp_path)
    assert cpu.get_parsed_content("cache") == "memory" and cpu.get_parsed_content("cache_rate") == 1.0
    assert cpu.get_parsed_content("cache_dir") == str(tmp_path / "eval" / "cache")
    assert type(cpu.get_parsed_content("train#dataset")) is CacheDataset
    gpu = parsed(name, tmp_path, preset="gpu")
    assert gpu.get_parsed_content("cache") == "persistent"  # not built: it would cache at the paper's size
    switched = parsed(name, tmp_path, cache="persistent", cache_dir=str(tmp_path / "c"))
    for section in ("train", "validate"):
        dataset = switched.get_parsed_content(f"{section}#dataset")
        assert isinstance(dataset, PersistentDataset) and dataset.cache_dir == tmp_path / "c"
    off = parsed(name, tmp_path, cache_rate=0.0)
    assert off.get_parsed_content("train#dataset").cache_num == 0


@pytest.mark.parametrize("name", BUNDLES)
def test_persistent_and_memory_caches_yield_the_same_items(tmp_path, name):
    """The same seeded batch from the in-memory cache, from a persistent cache being built, and from its files."""
    memory = first_batch(parsed(name, tmp_path))
    cache_dir = tmp_path / "cache"
    for _ in range(2):  # the first pass writes the files, the second reads them
        persistent = first_batch(parsed(name, tmp_path, cache="persistent", cache_dir=str(cache_dir)))
        assert persistent.keys() == memory.keys()
        assert torch.equal(persistent["image"], memory["image"])
    files = sorted(cache_dir.glob("*.pt"))
    assert len(files) == len(parsed(name, tmp_path).get_parsed_content("train_datalist"))
    assert not list(cache_dir.glob(".*.tmp"))
