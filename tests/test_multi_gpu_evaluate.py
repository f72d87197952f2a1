"""``multi_gpu_evaluate.json`` of every bundle: ``evaluate.json`` split over ``torchrun`` processes (gloo on a CPU).

The overlay gives each process its device, evaluates the network unwrapped (evaluation computes no gradients, so
``DistributedDataParallel`` has nothing to synchronise; its forward would broadcast the module's buffers from rank 0,
a collective in every iteration, and with ``even_divisible=False`` the ranks run different numbers of iterations),
splits the evaluation data with MONAI's ``DistributedSampler`` (no shuffling, no item repeated to even out the
ranks), keeps the logging handlers on rank 0 and lets MONAI's metric handlers and savers gather every item's values.
So a 2-process evaluation must report exactly the metrics, per-item details and predictions of a 1-process
``evaluate.json`` run of the same ``model.pt``: that is what the slow test checks, on an odd number of items.

Every bundle's file is resolved in a fast test inside a real 1-process gloo group (``RANK=0``, ``WORLD_SIZE=1``).
"""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from bundle_helpers import REPO, bundle_copy, cli_overrides, read_metrics_csv, small_run, workflow
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow
from monai.data import DataLoader, Dataset, DistributedSampler
from monai.transforms import RandGaussianNoised
from torch.nn.parallel import DistributedDataParallel

from frepa_monai.distributed import ItemSeeder, check_items_per_rank, local_device
from frepa_monai.guard import lock_path

NAMES = [
    "frepa_classification_2d",
    "frepa_classification_3d",
    "frepa_detection_2d",
    "frepa_detection_3d",
    "frepa_pretrain_2d",
    "frepa_pretrain_3d",
    "frepa_segmentation_3d",
    "frepa_transfer_2d_to_3d",
    "frepa_vessel_segmentation_2d",
]
CONFIGS = ["train.json", "evaluate.json", "multi_gpu_evaluate.json"]
SIZES = {  # CPU preset at the sizes of the bundles' own tests (vit_tiny has patch 8)
    "frepa_classification_2d": {"cpu_settings#image_size": [32, 32], "test_datalist": "$@datalist['test'][:5]"},
    "frepa_classification_3d": {"cpu_settings#image_size": [32, 32, 32]},
    "frepa_detection_2d": {"cpu_settings#image_size": [32, 32], "test_datalist": "$@datalist['test'][:3]"},
    "frepa_detection_3d": {"cpu_settings#image_size": [32, 32, 32], "test_datalist": "$@datalist['test'][:3]"},
    "frepa_pretrain_2d": {"cpu_settings#image_size": [32, 32], "val_datalist": "$@datalist['validation'][:3]"},
    "frepa_pretrain_3d": {"cpu_settings#patch_size": [32, 32, 32], "cpu_settings#num_samples": 1},
    "frepa_segmentation_3d": {"cpu_settings#patch_size": [32, 32, 32]},
    "frepa_transfer_2d_to_3d": {
        "cpu_settings#image_size": [32, 32],
        "cpu_settings#hidden_size": 32,
        "cpu_settings#num_heads": 2,
        "cpu_settings#num_slices": 4,
        "cpu_settings#max_epochs": {"segmentation": 2, "classification": 2},
        "cpu_settings#val_interval": {"segmentation": 1, "classification": 1},
    },
    "frepa_vessel_segmentation_2d": {
        "cpu_settings#image_size": [64, 64],
        "cpu_settings#working_size": 128,
        "test_datalist": "$@datalist['test'][:3]",
    },
}
LOGGING = {"StatsHandler", "TensorBoardStatsHandler", "frepa_monai.handlers.PreviewSaver"}
"""Handlers that log or write per-process files: on rank 0 only."""
GATHERING = {"MetricsSaver", "ClassificationSaver"}
"""Handlers that gather every rank's items (a collective): on every rank, MONAI writes on rank 0."""


def _small(name: str, **override) -> dict:
    # a task's encoder weights come from model.pt: no pretrained encoder.pt needed ("encoder" of a pretraining
    # bundle is its encoder preset)
    random_encoder = {} if name.startswith("frepa_pretrain") else {"encoder": "random"}
    no_training_data = {"train#dataset#cache_rate": 0.0}  # MONAI resolves the train workflow's dataset too
    return small_run(**{**random_encoder, **no_training_data, **SIZES[name], **override})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_bundle_has_one():
    bundles = {p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/evaluate.json")}
    assert bundles == set(NAMES)
    assert all((REPO / "bundles" / name / "configs" / "multi_gpu_evaluate.json").is_file() for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_resolves_in_a_process_group(tmp_path, monkeypatch, name):
    """In a real 1-process gloo group: the local device, the unwrapped network, the sampler in the evaluation's
    loader, logging handlers off on other ranks and gathering handlers on; finalize ends the group and the guard."""
    root = bundle_copy(tmp_path, name)
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**env, "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    override = _small(name, **{"validate#dataset#cache_rate": 0.0})  # no image is read
    files = [str(root / "configs" / c) for c in CONFIGS]
    wf = ConfigWorkflow(config_file=files, logging_file=False, bundle_root=str(root), **override)
    try:
        wf.initialize()
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert lock_path(root / "models").is_file() and lock_path(root / "eval").is_file()
        assert wf.check_properties() == []
        parser = wf.parser
        evaluator = parser.get_parsed_content("validate#evaluator")
        sampler = parser.get_parsed_content("validate#sampler")
        assert isinstance(sampler, DistributedSampler) and not sampler.shuffle
        assert parser["validate#sampler"]["even_divisible"] is False
        dataset = parser.get_parsed_content("validate#dataset")
        assert evaluator.data_loader.sampler is sampler and len(sampler) == len(dataset)
        assert evaluator.network is parser.get_parsed_content("network")
        assert not isinstance(evaluator.network, DistributedDataParallel)
        assert parser.get_parsed_content("device") == local_device()
        assert all(p.device == local_device() for p in evaluator.network.parameters())
        handlers = parser["validate#handlers"]
        assert "MetricsSaver" in [h["_target_"] for h in handlers if isinstance(h, dict)]
        for h in handlers:
            if isinstance(h, dict) and h["_target_"] in LOGGING:
                assert h.get("_disabled_") == "@is_not_rank0", h
            if isinstance(h, dict) and h["_target_"] in GATHERING:
                assert "rank" not in str(h.get("_disabled_", "")), h
        assert parser.get_parsed_content("is_not_rank0") is False
        key = "val_datalist" if name.startswith("frepa_pretrain") else "test_datalist"
        assert parser.get_parsed_content("validate#dataset#data") == parser.get_parsed_content(key)
        check = rf"check_items_per_rank\(@validate(#|::)dataset(#|::)data, '{key}'\)"  # MONAI writes '#' as '::'
        assert any(re.search(check, line) for line in parser["initialize"])
    finally:
        wf.finalize()
        if dist.is_initialized():  # finalize failed before ending the group: do not leave it to the next test
            dist.destroy_process_group()
    assert not dist.is_initialized()
    assert not lock_path(root / "models").exists() and not lock_path(root / "eval").exists()


def _noisy_items(sampler=None, seed: int | None = None) -> dict[int, torch.Tensor]:
    """Run an ignite engine over 5 items with random noise added at loading (an ``ItemSeeder(seed)`` attached when
    ``seed`` is given); each item's noise by dataset index."""
    noise = RandGaussianNoised(keys="x", prob=1.0).set_random_state(seed=3)
    data = [{"x": torch.zeros(1, 4), "index": i} for i in range(5)]
    loader = DataLoader(Dataset(data, transform=noise), batch_size=1, sampler=sampler, num_workers=0)
    seen = {}
    engine = Engine(lambda e, batch: seen.update({int(batch["index"][0]): batch["x"][0].clone()}))
    if seed is not None:
        ItemSeeder(seed, randomizables=[noise]).attach(engine)
    engine.run(loader, max_epochs=1)
    return seen


def test_item_seeder_draws_follow_the_item_not_the_rank():
    """A rank of a 2-process split draws for item 3 what a single process draws for it, with the seeder; without,
    it draws what the single process draws for its second item."""
    rank1 = DistributedSampler(list(range(5)), even_divisible=False, num_replicas=2, rank=1, shuffle=False)
    assert list(rank1) == [1, 3]
    whole, part = _noisy_items(seed=7), _noisy_items(rank1, seed=7)
    assert sorted(part) == [1, 3] and all(torch.equal(part[i], whole[i]) for i in part)
    assert not torch.equal(whole[1], whole[3])
    plain_whole, plain_part = _noisy_items(), _noisy_items(rank1)
    assert torch.equal(plain_part[1], plain_whole[0]) and not torch.equal(plain_part[3], plain_whole[3])


def test_fewer_items_than_processes_names_the_key():
    check_items_per_rank([{"image": "a.nii.gz"}] * 2, "test_datalist", world_size=2)
    with pytest.raises(ValueError, match=r"^test_datalist holds 1 item\(s\), fewer than the 2 processes"):
        check_items_per_rank([{"image": "a.nii.gz"}], "test_datalist", world_size=2)


def test_item_seeder_needs_a_seed():
    engine = Engine(lambda e, batch: None)
    ItemSeeder().attach(engine)
    with pytest.raises(ValueError, match="needs a seed"):
        engine.run(DataLoader(Dataset([0, 1]), batch_size=1), max_epochs=1)


def _csv_rows(path: Path) -> dict[str, list[str]]:
    """A MONAI report CSV as ``{first column: the other columns}``; a repeated key fails."""
    table = {}
    for row in csv.reader(path.read_text().splitlines()):
        assert row[0] not in table, f"{path.name}: {row[0]} twice"
        table[row[0]] = row[1:]
    return table


def _same_cells(a: list[str], b: list[str]) -> bool:
    """Equal text cells, numbers equal to float tolerance (the ranks' items are gathered in another order)."""

    def number(cell: str) -> float | None:
        try:
            return float(cell)
        except ValueError:
            return None

    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if number(x) is None or number(y) is None:
            if x != y:
                return False
        elif number(y) != pytest.approx(number(x), rel=1e-5, abs=1e-6, nan_ok=True):
            return False
    return True


SLOW = ["frepa_vessel_segmentation_2d", "frepa_classification_2d", "frepa_detection_2d", "frepa_pretrain_2d"]
"""One bundle per kind of metric: MeanDice with per-item details and summaries; ConfusionMatrix, ROCAUC and the
prediction CSV; the detection metric; the pretraining metrics on seeded corruptions."""


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_two_processes_report_what_one_does(tmp_path, name):
    root = bundle_copy(tmp_path, name)
    small = _small(name)  # the pretraining evaluation reseeds per item (ItemSeeder): draws follow the item
    one = workflow(root, ["train.json", "evaluate.json"], **small)
    items = one.parser.get_parsed_content("validate#dataset#data")
    assert len(items) % 2 == 1  # an odd count: a sampler that evened out the ranks would count one item twice
    torch.save(one.parser.get_parsed_content("network").state_dict(), root / "models" / "model.pt")  # seeded init
    one.run()
    one.finalize()

    out = root / "eval_2proc"
    configs = "[" + ",".join(f"'{root}/configs/{c}'" for c in CONFIGS) + "]"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    cmd += ["run", "--config_file", configs, "--bundle_root", str(root)]
    cmd += cli_overrides({**small, "output_dir": str(out)})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert log.count("Epoch[1] Metrics") == 1, log[-3000:]  # StatsHandler on rank 0 only

    expected = read_metrics_csv(root / "eval" / "metrics.csv")
    metrics = one.parser.get_parsed_content("validate#evaluator").state.metrics
    assert expected == pytest.approx(metrics, nan_ok=True)
    assert read_metrics_csv(out / "metrics.csv") == pytest.approx(expected, rel=1e-5, abs=1e-6, nan_ok=True)
    reports = sorted(p.name for p in (root / "eval").glob("*.csv"))
    assert reports == sorted(p.name for p in out.glob("*.csv"))
    for report in reports:  # per-item details, summaries, predictions: every item once, the same values
        a, b = _csv_rows(root / "eval" / report), _csv_rows(out / report)
        assert a.keys() == b.keys(), report
        for key, values in a.items():
            assert _same_cells(values, b[key]), (report, key, values, b[key])
    # each rank evaluated its own share: rank 0 items 0, 2, 4, ..., rank 1 items 1, 3, ...; gathered in rank order
    split = [str(item["image"]) for item in items[0::2] + items[1::2]]
    per_item = [r for r in reports if r.endswith("_raw.csv") or r == "test_predictions.csv"]
    assert per_item or name.startswith("frepa_pretrain")  # the pretraining evaluation saves no per-item report
    for report in per_item:
        assert [k for k in _csv_rows(out / report) if k != "filename"] == split, report
