"""The pretraining bundles run through MONAI's ConfigWorkflow, as the model zoo's CI runs bundles.

Every test copies a bundle to a temporary folder (``bundle_root``) and shrinks it with config overrides (2 to 8
real sample images, small crops, 1-2 epochs), so that train, evaluate and inference take seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import (
    REPO,
    SMALL_RUN,
    assert_same_weights,
    bundle_copy,
    cli_overrides,
    error_messages,
    run,
    workflow,
)
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from frepa_monai.data import pretrain_2d_datalist, pretrain_3d_datalist
from frepa_monai.transforms import scale_patch_size, scale_sigma_ratio

SMALL = {  # SMALL_RUN has MLflow off; a test that checks it turns it on
    "frepa_pretrain_3d": {
        **SMALL_RUN,
        "cpu_settings#patch_size": [32, 32, 32],
        "cpu_settings#num_samples": 1,
        "train_datalist": "$@datalist['training'][:2]",
    },
    "frepa_pretrain_2d": {
        **SMALL_RUN,
        "cpu_settings#image_size": [32, 32],
        "cpu_settings#batch_size": 4,
        "train_datalist": "$@datalist['training'][:8]",
        "val_datalist": "$@datalist['validation'][:2]",
    },
}
INFER_SMALL = {
    "frepa_pretrain_3d": {"preset": "cpu", "patch_size": [32, 32, 32]},
    "frepa_pretrain_2d": {"preset": "cpu", "image_size": [32, 32]},
}


def train(root: Path, name: str, stop_after_epoch: int | None = None, **override) -> ConfigWorkflow:
    """Train a small run; ``stop_after_epoch`` ends it after that epoch's handlers, as a kill would (same config)."""
    wf = workflow(root, ["train.json"], **{**SMALL[name], **override})
    if stop_after_epoch is not None:
        trainer = wf.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda engine: engine.terminate())
    wf.run()
    wf.finalize()
    return wf


@pytest.mark.parametrize("name", ["frepa_pretrain_3d", "frepa_pretrain_2d"])
def test_train_evaluate_inference(tmp_path, name):
    root = bundle_copy(tmp_path, name)
    wf = train(root, name, tracking="mlflow" if name.endswith("3d") else None)
    trainer, evaluator = (
        wf.parser.get_parsed_content("train#trainer"),
        wf.parser.get_parsed_content("validate#evaluator"),
    )
    assert trainer.state.epoch == 2
    terms = trainer.state.output[0]
    assert {"loss", "loss_rmse", "loss_grad", "loss_hfl", "loss_con"} <= set(terms)
    assert float(terms["loss_con"]) == 0.0  # epochs 1-2: still in the 5-epoch warm-up
    metrics = evaluator.state.metrics
    bands = ("low", "mid", "high")
    assert set(metrics) == {"val_rmse", *(f"val_rho_{b}" for b in bands), *(f"val_r2_{b}" for b in bands)}
    assert 0 < metrics["val_rmse"] < 1 and all(0 < metrics[f"val_rho_{b}"] <= 1 for b in bands)
    assert all(metrics[f"val_r2_{b}"] < 1 for b in bands)  # band R^2: 1 only for a perfect reconstruction

    models, out = root / "models", root / "eval"
    assert {"checkpoint_epoch=2.pt", "model.pt", "encoder.pt"} <= {p.name for p in models.iterdir()}
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard events"
    if name.endswith("3d"):  # one MLflow run in the local SQLite store with every loss term and metric
        from mlflow.tracking import MlflowClient  # a client of its own: mlflow.set_tracking_uri would leave the
        # process's MLFLOW_TRACKING_URI pointing here, and every later MLFlowHandler would log into this store

        client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert len(runs) == 1
        logged = set(runs[0].data.metrics)
        assert {
            "train_loss",
            "train_rmse",
            "train_con",
            "val_rmse",
            "val_r2_low",
            "val_r2_mid",
            "val_r2_high",
        } <= logged
    preview = out / "previews" / "preview_epoch_2.png"
    assert preview.is_file() and preview.stat().st_size > 1000
    encoder = torch.load(models / "encoder.pt", map_location="cpu", weights_only=True)
    assert encoder["network_config"]["name"] == "vit_tiny"
    assert encoder["network_config"]["in_channels"] == (2 if name.endswith("3d") else 4)
    assert encoder["network_config"]["preset"] == "cpu" and encoder["best"]["metric"] == "val_rmse"
    best = torch.load(models / "model.pt", map_location="cpu", weights_only=True)  # encoder.pt: the best epoch's
    assert best["_extra_state"]["build_config"]["args"]["img_size"] == list(INFER_SMALL[name].values())[1]
    for key, value in encoder["state_dict"].items():
        assert torch.equal(best[f"encoder.{key}"], value), key

    # evaluate.json: the best model on the validation split reproduces the training's validation metrics
    ev = workflow(root, ["train.json", "evaluate.json"], **SMALL[name])
    ev.run()
    ev.finalize()
    saved = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
    assert set(saved) == set(metrics)
    assert float(saved["val_rmse"]) == pytest.approx(evaluator.state.best_metric, rel=1e-5)

    # inference.json: reconstructions of the test split, saved with the input's geometry
    inf = workflow(root, ["inference.json"], workflow_type="infer", **INFER_SMALL[name])
    inf.run()
    inf.finalize()
    saved = sorted(p for p in (out / "inference").iterdir() if p.name != "summary.json")
    assert saved and all("_recon" in p.name for p in saved)
    summary = json.loads((out / "inference" / "summary.json").read_text())
    assert len(summary["processed"]) == len(saved) and summary["failed"] == []
    source = None
    if name.endswith("3d"):
        source = nib.load(pretrain_3d_datalist()["test"][0]["image"])
        recon = nib.load(saved[0])
        assert recon.shape[:3] == source.shape and np.allclose(recon.affine, source.affine)
        assert 0.0 <= recon.get_fdata().min() and recon.get_fdata().max() <= 1.0
        # --mode embed: the encoder's feature map, with the geometry of its grid (stride 8 for vit_tiny)
        run(root, ["inference.json"], workflow_type="infer", mode="embed", **INFER_SMALL[name])
        embedding = nib.load(next((out / "inference").glob("*_embedding.nii.gz")))
        assert np.allclose(embedding.shape[:3], np.array(source.shape) / 8, atol=1) and embedding.shape[3] == 96
        np.testing.assert_allclose(embedding.header.get_zooms()[:3], 8 * np.array(source.header.get_zooms()[:3]))
        np.testing.assert_allclose(
            embedding.affine[:3, 3], source.affine[:3, :3] @ np.full(3, 3.5) + source.affine[:3, 3]
        )


def test_mae_baseline_keeps_its_mask_token_out_of_the_encoder(tmp_path):
    """``--strategy_name mae``: no Hessian channel; MAE's mask token is trained and saved in ``model.pt`` (the
    autoencoder), not in ``encoder.pt``; inference builds that network from ``model.pt``, with or without the
    same ``--strategy_name``."""
    name = "frepa_pretrain_2d"
    root = bundle_copy(tmp_path, name)
    wf = train(root, name, strategy_name="mae")
    assert wf.parser.get_parsed_content("in_channels") == 3
    model = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert model["mask_tokens.token"].shape == (1, 1, 96) and model["mask_tokens.token"].abs().sum() > 0
    encoder = torch.load(root / "models" / "encoder.pt", map_location="cpu", weights_only=True)
    assert encoder["network_config"]["in_channels"] == 3 and not any("mask" in k for k in encoder["state_dict"])
    infer = {**INFER_SMALL[name], "use_hessian": False}
    run(root, ["inference.json"], workflow_type="infer", strategy_name="mae", **infer)
    outputs = {p.name: p.read_bytes() for p in (root / "eval" / "inference").glob("*.png")}
    assert outputs
    run(root, ["inference.json"], workflow_type="infer", **infer)  # model.pt records the MAE network: no switch
    assert {p.name: p.read_bytes() for p in (root / "eval" / "inference").glob("*.png")} == outputs


def test_resumed_run_repeats_an_uninterrupted_run(tmp_path):
    """A run stopped after epoch 1 and restarted ends exactly where an uninterrupted seeded run ends."""
    name = "frepa_pretrain_2d"
    whole = bundle_copy(tmp_path / "whole", name)
    train(whole, name)
    parts = bundle_copy(tmp_path / "parts", name)
    train(parts, name, stop_after_epoch=1)  # the same max_epochs, so the same cosine LR schedule
    assert (parts / "models" / "checkpoint_epoch=1.pt").is_file()
    resumed = train(parts, name)  # same command again: resumes from checkpoint_epoch=1.pt
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2
    a = torch.load(whole / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    b = torch.load(parts / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert_same_weights(b["network"], a["network"])
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] > 0
    # the best model (lowest validation RMSE over both parts) is the uninterrupted run's best model
    assert a["best_model"]["_saved"] == b["best_model"]["_saved"] and len(a["best_model"]["_saved"]) == 1
    best_a = torch.load(whole / "models" / "model.pt", map_location="cpu", weights_only=True)
    best_b = torch.load(parts / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert_same_weights(best_b, best_a)


def test_a_finished_run_trains_anew_and_a_longer_one_resumes(tmp_path):
    """The same command after a finished run (as MONAI Label's second ``/train`` on new labels) trains again from
    epoch 0 instead of running zero epochs; a larger ``max_epochs`` continues the finished run."""
    name = "frepa_pretrain_2d"
    root = bundle_copy(tmp_path, name)

    def epochs_run(**override) -> tuple[list[int], int]:
        wf = workflow(root, ["train.json"], **{**SMALL[name], **override})
        trainer, done = wf.parser.get_parsed_content("train#trainer"), []
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: done.append(engine.state.epoch))
        wf.run()
        wf.finalize()
        assert not list((root / "models").glob("*.finished"))  # set aside at the start, removed after epoch 1
        return done, len(list((root / "models").glob("checkpoint_epoch=*.pt")))

    assert epochs_run() == ([1, 2], 1)
    assert epochs_run() == ([1, 2], 1)  # finished: a new run, whose checkpoints replace the finished one's
    assert epochs_run(**{"cpu_settings#max_epochs": 3}) == ([3], 1)  # longer: resumes at epoch 3


def test_training_on_a_folder_of_the_users_images(tmp_path):
    """``--data_dir <folder>`` trains on every image file found there, split 7:1:2 by file."""
    name = "frepa_pretrain_2d"
    root = bundle_copy(tmp_path, name)
    folder = tmp_path / "my_images" / "nested"
    folder.mkdir(parents=True)
    for item in pretrain_2d_datalist()["training"][:10]:
        shutil.copy(item["image"], folder / Path(item["image"]).name)
    (folder / "notes.txt").write_text("not an image")
    small = {k: v for k, v in SMALL[name].items() if not k.endswith("_datalist")}
    wf = train(root, name, data_dir=str(tmp_path / "my_images"), **small)
    datalist = wf.parser.get_parsed_content("datalist")
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [7, 1, 2]
    assert all(item["image"].startswith(str(folder)) for s in datalist.values() for item in s)
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as info:
        train(root, name, data_dir=str(tmp_path / "empty"), **small)
    assert "no image files" in error_messages(info.value) and "empty" in error_messages(info.value)


def test_evaluation_builds_the_trained_architecture_and_refuses_an_unrecorded_other_one(tmp_path):
    """``model.pt`` of a ``convnext_tiny`` run evaluates with the default (``vit_tiny``) config: the network comes
    from the file. The same weights without their record (a state dict from elsewhere) fail clearly."""
    name = "frepa_pretrain_3d"
    root = bundle_copy(tmp_path, name)
    train(root, name, **{"cpu_settings#max_epochs": 1, "cpu_settings#encoder": "convnext_tiny"})
    wf = workflow(root, ["train.json", "evaluate.json"], **SMALL[name])  # vit_tiny
    wf.run()
    assert type(wf.parser.get_parsed_content("network").encoder).__name__ == "ConvNeXtEncoder"
    model = root / "models" / "model.pt"
    weights = torch.load(model, map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in weights.items() if k != "_extra_state"}, model)
    wf = workflow(root, ["train.json", "evaluate.json"], **SMALL[name])
    with pytest.raises(Exception) as info:
        wf.run()
    chain = error_messages(info.value)
    assert "model.pt" in chain and "another network architecture" in chain


def test_corrupt_or_nan_volume_gives_an_error_naming_the_file(tmp_path):
    name = "frepa_pretrain_3d"
    root = bundle_copy(tmp_path, name)
    good = pretrain_3d_datalist()["training"][0]["image"]
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.decompress(Path(good).read_bytes())[:2000])
    nan_volume = tmp_path / "nan_volume.nii.gz"
    data = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    data[5, 6, 7] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan_volume)
    for bad, reason in ((truncated, ""), (nan_volume, "NaN or Inf")):
        items = f"$[{{'image': '{bad}', 'window': 'none'}}]"
        with pytest.raises(Exception) as info:
            train(root, name, train_datalist=items, val_datalist=items)
        chain = error_messages(info.value)
        assert bad.name in chain and reason in chain


THREADS_AT_EXIT = (
    "$print('threads at exit: %s' % sorted(open(f'/proc/self/task/{t}/comm').read().strip()"
    " for t in __import__('os').listdir('/proc/self/task')), flush=True)"
)
"""A last finalize step: the names of this process's threads (Linux), once the bundle's finalize has run (one
write, so that the two ranks' lines cannot mix within it)."""


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    """``torchrun --nproc_per_node=2`` with multi_gpu_train.json trains with the gloo backend on a CPU, and every
    rank exits cleanly: finalize ends the process group, so no gloo thread is left to meet the interpreter's exit
    (one that was aborted a rank with "terminate called without an active exception", issue 15)."""
    name = "frepa_pretrain_3d"
    root = bundle_copy(tmp_path, name)
    configs = f"['{root}/configs/train.json','{root}/configs/multi_gpu_train.json']"
    small = dict(SMALL[name])
    proc = Path("/proc/self/task").is_dir()
    if proc:  # the bundle's own finalize, then the thread names
        small["finalize"] = json.loads((root / "configs" / "multi_gpu_train.json").read_text())["finalize"]
        small["finalize"].append(THREADS_AT_EXIT)
    overrides = cli_overrides(small)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(root),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "models" / "checkpoint_epoch=2.pt").is_file() and (root / "models" / "encoder.pt").is_file()
    assert result.stderr.count("Epoch[2] Metrics") + result.stdout.count("Epoch[2] Metrics") >= 1
    if proc:
        threads = re.findall(r"threads at exit: \[[^\]]*\]", result.stdout)
        assert len(threads) == 2 and not any("gloo" in names for names in threads), threads


@pytest.mark.slow
def test_killed_run_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    """SIGKILL during training, then the same command again: it resumes from the newest atomic checkpoint
    and ends with the weights of an uninterrupted seeded run."""
    name = "frepa_pretrain_2d"
    small = {**SMALL[name], "cpu_settings#max_epochs": 4, "train_datalist": "$@datalist['training'][:32]"}
    whole = bundle_copy(tmp_path / "whole", name)
    train(whole, name, **small)

    root = bundle_copy(tmp_path / "killed", name)
    overrides = cli_overrides(small)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(root / "configs" / "train.json"),
        "--bundle_root",
        str(root),
        *overrides,
    ]
    process = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (root / "models" / "checkpoint_epoch=1.pt").exists() and process.poll() is None:
            assert time.time() < deadline, "no checkpoint written in time"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    stopped_at = max(int(p.stem.split("=")[1]) for p in (root / "models").glob("checkpoint_epoch=*.pt"))
    assert stopped_at < 4, "the run finished before it was killed"
    train(root, name, **small)  # the README's command again
    a = torch.load(whole / "models" / "checkpoint_epoch=4.pt", map_location="cpu", weights_only=True)
    b = torch.load(root / "models" / "checkpoint_epoch=4.pt", map_location="cpu", weights_only=True)
    assert_same_weights(b["network"], a["network"])


def test_switches_given_as_command_line_strings():
    """``--hfl false`` reaches the config as the string "false": the bundles read switches with MONAI's
    ``str2bool``, and a value that is no switch stops with MONAI's error naming the value and the accepted ones."""
    root = REPO / "bundles" / "frepa_pretrain_3d"
    wrong = ConfigWorkflow(config_file=str(root / "configs" / "train.json"), logging_file=False, hfl="maybe")
    with pytest.raises(Exception) as info:
        wrong.parser.get_parsed_content("loss")
    assert 'Got "maybe", expected a value from: yes, true' in error_messages(info.value)
    root = REPO / "bundles" / "frepa_pretrain_3d"
    wf = ConfigWorkflow(config_file=str(root / "configs" / "train.json"), logging_file=False, hfl="false", fm="False")
    loss = wf.parser.get_parsed_content("loss")
    strategy = wf.parser.get_parsed_content("strategy")
    assert loss.use_hfl is False and loss.use_grad is True and strategy.corrupt.prob_frequency == 0.0


@pytest.mark.parametrize("name", ["frepa_pretrain_3d", "frepa_pretrain_2d"])
def test_corruption_sizes_and_ratios_are_plain_config_keys(name):
    """The corruption's sizes, ``prob_frequency`` and the mask ratios are plain keys that reach the strategies; by
    default the sizes scale from the paper's working size, ``--literal_sizes true`` keeps its pixel values."""
    configs = REPO / "bundles" / name / "configs"
    spatial = (48, 48, 48) if name.endswith("3d") else (128, 128)

    def strategy(**override):
        wf = ConfigWorkflow(config_file=str(configs / "train.json"), logging_file=False, preset="cpu", **override)
        return wf.parser.get_parsed_content("strategy")

    corrupt = strategy().corrupt
    assert corrupt.prob_frequency == 0.5 and corrupt.image.mask_ratio == 0.7
    assert corrupt.frequency.sizes_at(spatial) == (scale_patch_size(16, spatial), scale_sigma_ratio(0.002, spatial))
    assert corrupt.image.patch_size_at(spatial) == scale_patch_size(32 if len(spatial) == 2 else 16, spatial)
    changed = strategy(
        prob_frequency=0.25, mask_ratio=0.5, frequency_patch_size=8, image_patch_size=64, sigma_ratio=0.001
    ).corrupt
    assert changed.prob_frequency == 0.25 and changed.image.mask_ratio == 0.5
    assert changed.frequency.sizes_at(spatial)[0] == scale_patch_size(8, spatial)
    assert changed.image.patch_size_at(spatial) == scale_patch_size(64, spatial)
    literal = strategy(literal_sizes="true").corrupt
    assert literal.frequency.sizes_at(spatial) == (16, 0.002)
    assert literal.image.patch_size_at(spatial) == (32 if len(spatial) == 2 else 16)
    assert strategy(strategy_name="mae", mae_mask_ratio=0.6).mask_ratio == 0.6
