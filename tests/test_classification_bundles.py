"""The tumour classification bundles (frepa_classification_2d, frepa_classification_3d), cross-validation and the
encoder comparison (frepa_monai.workflows, behind tools/run_folds.py and tools/compare_encoders.py).

Every test copies a bundle to a temporary folder and shrinks it with config overrides (10 real slices at 32 x 32,
4 real crops at 32^3: ``vit_tiny`` has patch 8; 1-2 epochs), with a real encoder checkpoint written by
``bundle_helpers.encoder_checkpoint``. Metrics are checked against values computed by hand from the saved
per-image probabilities.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import (
    REPO,
    bundle_copy,
    encoder_checkpoint,
    error_messages,
    read_metrics_csv,
    read_predictions_csv,
    run,
    small_run,
    workflow,
)
from monai.bundle import ConfigParser

from frepa_monai.data import tumour_classification_datalist
from frepa_monai.networks import PatchifyEncoder
from frepa_monai.workflows import compare_encoders, cross_validate, parse_override

NAMES = ["frepa_classification_2d", "frepa_classification_3d"]
DIMS = {"frepa_classification_2d": 2, "frepa_classification_3d": 3}
IN_CHANNELS = {2: 4, 3: 2}
SIZE = {2: [32, 32], 3: [32, 32, 32]}
# checkpoints use seed 7: the bundles seed 0, a seed-0 checkpoint would equal their random encoder
# tiny real subsets holding both classes: 2D 10 training slices (6 with tumour) and 5 validation slices (4),
# 3D 4 training crops and 4 validation crops (2 with tumour each); the test split is the bundle's own
DATA = {
    2: {"train_datalist": "$@datalist['training'][::3]", "val_datalist": "$@datalist['validation'][::2]"},
    3: {"train_datalist": "$@datalist['training'][:4]"},
}


def small(dims: int, checkpoint: Path | None, **override) -> dict:
    return small_run(checkpoint, **{"cpu_settings#image_size": SIZE[dims], **DATA[dims], **override})


def _auc(probs: list[float], labels: list[int]) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score of a positive > score of a negative), ties count 1/2."""
    pos = [p for p, y in zip(probs, labels) if y == 1]
    neg = [p for p, y in zip(probs, labels) if y == 0]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


@pytest.mark.parametrize("name", NAMES)
def test_train_evaluate_inference(tmp_path, name):
    dims = DIMS[name]
    root = bundle_copy(tmp_path, name)
    ckpt = encoder_checkpoint(tmp_path / "encoder.pt", "vit_tiny", dims, IN_CHANNELS[dims], SIZE[dims], seed=7)
    wf = workflow(root, ["train.json"], **small(dims, ckpt))
    network = wf.parser.get_parsed_content("network")
    head_before = {k: v.clone() for k, v in network.head.state_dict().items()}
    wf.run()
    wf.finalize()

    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and math.isfinite(float(trainer.state.output[0]["loss"]))
    val = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert set(val) == {"val_acc", "val_auc"} and 0 <= val["val_acc"] <= 1 and 0 <= val["val_auc"] <= 1

    # the frozen encoder is bit-identical to the checkpoint in the saved model; the head trained
    models = root / "models"
    assert {"model.pt", "checkpoint_epoch=2.pt"} <= {p.name for p in models.iterdir()}
    saved = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    reference = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    encoder = {k[len("encoder.") :]: v for k, v in saved.items() if k.startswith("encoder.")}
    assert encoder.keys() == reference.keys()
    assert all(torch.equal(encoder[k], reference[k]) for k in reference)
    head = {k[len("head.") :]: v for k, v in saved.items() if k.startswith("head.")}
    assert head.keys() == head_before.keys() and not all(torch.equal(head[k], head_before[k]) for k in head)

    # evaluate.json on the test split: metrics equal what the saved probabilities give by hand
    run(root, ["train.json", "evaluate.json"], **small(dims, ckpt))
    out = root / "eval"
    metrics = read_metrics_csv(out / "metrics.csv")
    assert set(metrics) == {"val_acc", "val_auc"} and all(0 <= v <= 1 for v in metrics.values())
    test = tumour_classification_datalist(dims)["test"]
    probs = read_predictions_csv(out / "test_predictions.csv")
    assert sorted(probs) == sorted(item["image"] for item in test)
    labels = [item["label"] for item in test]
    p = [probs[item["image"]] for item in test]
    assert all(len(row) == 2 and abs(sum(row) - 1) < 1e-5 and min(row) >= 0 for row in p)
    accuracy = sum(int(row[1] > row[0]) == y for row, y in zip(p, labels)) / len(labels)
    assert metrics["val_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["val_auc"] == pytest.approx(_auc([row[1] for row in p], labels), abs=1e-6)

    # inference.json: one row of class probabilities per input
    infer = {"preset": "cpu", "cpu_settings#image_size": SIZE[dims]}
    if dims == 3:  # a folder of the user's own files
        folder = tmp_path / "input"
        folder.mkdir()
        for item in test[:2]:
            os.symlink(item["image"], folder / Path(item["image"]).name)
        infer["input_dir"] = str(folder)
    run(root, ["inference.json"], workflow_type="infer", **infer)
    inferred = read_predictions_csv(out / "inference" / "predictions.csv")
    expected = [str(folder / Path(item["image"]).name) for item in test[:2]] if dims == 3 else probs
    assert sorted(inferred) == sorted(expected)
    assert all(len(row) == 2 and abs(sum(row) - 1) < 1e-5 and min(row) >= 0 for row in inferred.values())
    if dims == 2:  # the test split by default: the same probabilities as evaluate.json
        for image, row in inferred.items():
            assert row == pytest.approx(probs[image], abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_folds_keep_subjects_disjoint(name):
    """``fold=k`` in the bundle's config: no subject in two splits, each subject tested in exactly one fold."""
    subjects = {}
    tested = []
    for k in range(5):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
        parser.update({"fold": k, "bundle_root": str(REPO / "bundles" / name)})
        splits = {
            s: {item["subject"] for item in parser.get_parsed_content(f"{s}_datalist")}
            for s in ("train", "val", "test")
        }
        assert all(splits.values())
        assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
        assert not splits["val"] & splits["test"]
        tested += sorted(splits["test"])
        subjects.update(dict.fromkeys(splits["train"] | splits["val"] | splits["test"]))
    assert sorted(tested) == sorted(subjects) and len(subjects) == 5


def test_encoder_baselines(tmp_path):
    """``--encoder random``: the random preset, not the checkpoint, stays frozen; ``--encoder none``: the head on
    the raw patches."""
    root = bundle_copy(tmp_path, "frepa_classification_2d")
    ckpt = encoder_checkpoint(tmp_path / "encoder.pt", "vit_tiny", 2, 4, SIZE[2], seed=7)
    reference = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for mode in ("random", "none"):
        wf = workflow(root, ["train.json"], **small(2, ckpt, encoder=mode, **{"cpu_settings#max_epochs": 1}))
        network = wf.parser.get_parsed_content("network")
        before = {k: v.clone() for k, v in network.encoder.state_dict().items()}
        wf.run()
        loss = float(wf.parser.get_parsed_content("train#trainer").state.output[0]["loss"])
        assert math.isfinite(loss)
        if mode == "random":
            assert not network.encoder.training and not any(p.requires_grad for p in network.encoder.parameters())
            assert all(torch.equal(v, before[k]) for k, v in network.encoder.state_dict().items())
            assert not all(torch.equal(before[k], reference[k]) for k in reference)
        else:
            assert isinstance(network.encoder, PatchifyEncoder)
        for p in (root / "models").glob("*.pt"):
            p.unlink()


def test_missing_encoder_checkpoint_and_bad_label(tmp_path, monkeypatch):
    root = bundle_copy(tmp_path, "frepa_classification_2d")
    monkeypatch.chdir(tmp_path)  # no bundles/frepa_pretrain_2d below the working folder either
    with pytest.raises(Exception) as error:
        wf = workflow(root, ["train.json"], **small(2, None))
        wf.run()
    text = error_messages(error.value)
    assert "FileNotFoundError" in text and str(tmp_path / "frepa_pretrain_2d" / "models" / "encoder.pt") in text

    item = dict(tumour_classification_datalist(2)["training"][0], label=2)
    with pytest.raises(Exception) as error:
        workflow(root, ["train.json"], **small(2, None, train_datalist=[item], encoder="none"))
    text = error_messages(error.value)
    assert item["image"] in text and "holds classes [2]" in text


@pytest.mark.slow
def test_missing_image_ends_the_command_with_exit_code_1(tmp_path):
    """A datalist entry naming a missing image: ``python -m monai.bundle run`` prints the error naming the file and
    exits with code 1, not with an abort (134, SIGABRT, "terminate called without an active exception": a cache
    worker thread still transforming the next item while Python finalised took the GIL inside a torch destructor).
    The input check that finds a missing file before training is switched off, so that the error is raised while
    ``frepa_monai.data.CacheDataset`` fills its cache: that is where the abort was."""
    root = bundle_copy(tmp_path, "frepa_classification_2d")
    missing = tmp_path / "no_such_image.nii.gz"
    train_datalist = f"$[dict(d, image='{missing}') if i == 0 else d for i, d in enumerate(@datalist['training'])]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "train.json")]
    cmd += ["--bundle_root", str(root), "--preset", "cpu", "--encoder", "none"]
    cmd += ["--train_datalist", train_datalist, "--check_datalist", "$None"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "terminate called" not in result.stderr
    assert f"No such file or no access: '{missing}'" in result.stderr, result.stderr[-3000:]


def test_tools_are_command_lines_with_help():
    for tool in ("run_folds", "compare_encoders", "reproduce"):
        done = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), "--help"], capture_output=True)
        assert done.returncode == 0 and b"--work_dir" in done.stdout, done.stderr.decode()


def test_run_folds(tmp_path):
    """``frepa_monai.workflows.cross_validate`` (``tools/run_folds.py``): every fold tests its own subjects."""
    ckpt = encoder_checkpoint(tmp_path / "encoder.pt", "vit_tiny", 2, 4, SIZE[2], seed=7)
    work = tmp_path / "cv"
    sets = ["preset=cpu", "cpu_settings#image_size=[32,32]", "cpu_settings#max_epochs=1"]
    sets += [f"encoder_checkpoint={ckpt}", "train_datalist=$@datalist['training'][::2]"]
    overrides = dict(parse_override(s) for s in sets)
    result = cross_validate("frepa_classification_2d", num_folds=2, work_dir=work, overrides=overrides)

    summary = json.loads((work / "cv_summary.json").read_text())
    assert summary["folds"] == [0, 1] and summary["encoder_checkpoint"] == str(ckpt)
    assert set(summary["metrics"]) == {"val_acc", "val_auc"}
    tested = []
    for name in summary["metrics"]:
        values = [read_metrics_csv(work / f"fold_{k}" / "eval" / "metrics.csv")[name] for k in (0, 1)]
        assert [summary["per_fold"][str(k)][name] for k in (0, 1)] == values
        assert summary["summary"][name]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["summary"][name]["std"] == pytest.approx(statistics.stdev(values))
        assert f"{statistics.fmean(values):.4f} +- " in (work / "cv_summary.md").read_text()
    assert result["summary"]["val_acc"]["n"] == 2
    # each fold tested its own subjects, together all of them
    subject = {item["image"]: item["subject"] for s in tumour_classification_datalist(2).values() for item in s}
    for k in (0, 1):
        tested.append({subject[f] for f in read_predictions_csv(work / f"fold_{k}" / "eval" / "test_predictions.csv")})
    assert not tested[0] & tested[1] and len(tested[0] | tested[1]) == 5


def test_compare_encoders(tmp_path):
    """``compare_encoders`` (tools/compare_encoders.py): one run per encoder mode in its own folder; the table holds
    each run's test metrics and their difference."""
    ckpt = encoder_checkpoint(tmp_path / "encoder.pt", "vit_tiny", 2, 4, SIZE[2], seed=7)
    work = tmp_path / "compare"
    sets = ["preset=cpu", "cpu_settings#image_size=[32,32]", "cpu_settings#max_epochs=1"]
    sets += [f"encoder_checkpoint={ckpt}", "train_datalist=$@datalist['training'][::3]"]
    overrides = dict(parse_override(s) for s in sets)
    modes = ("pretrained", "none")
    result = compare_encoders(["frepa_classification_2d"], modes, work_dir=work, overrides=overrides)
    runs = result["runs"]["frepa_classification_2d"]
    for mode in ("pretrained", "none"):
        csv = read_metrics_csv(work / "frepa_classification_2d" / f"{mode}_seed0" / "eval" / "metrics.csv")
        assert runs[mode]["0"] == csv and set(csv) == {"val_acc", "val_auc"}
        assert result["summary"]["frepa_classification_2d"]["val_acc"][mode]["mean"] == pytest.approx(csv["val_acc"])
    table = (work / "comparison.md").read_text()
    assert "| frepa_classification_2d | val_acc |" in table and json.loads((work / "comparison.json").read_text())
