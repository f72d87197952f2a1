"""The 2D-to-3D transfer bundle (frepa_transfer_2d_to_3d) through MONAI's ConfigWorkflow: a frozen 2D encoder applied
slice by slice inside the slice transformer, for 3D brain-region segmentation and 3D tumour classification.

Every test copies the bundle to a temporary folder and shrinks it with config overrides: a real ``vit_tiny`` 2D
encoder checkpoint at 32 x 32 (patch 8, 4 channels = 3 image + Hessian, ``bundle_helpers.encoder_checkpoint``),
slices resized in-plane to 32 x 32, 4-slice slabs, hidden size 32, 1-2 epochs on the real embedded data (the two
brains at 1.5 mm; 4 training crops of 48^3).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import (
    bundle_copy,
    encoder_checkpoint,
    error_messages,
    read_metrics_csv,
    read_predictions_csv,
    run,
    workflow,
)

from frepa_monai.data import brain_region_segmentation_datalist, tumour_classification_datalist
from frepa_monai.networks import PatchifyEncoder, SliceTransformer
from frepa_monai.networks.checkpoint import read_encoder_checkpoint

NAME = "frepa_transfer_2d_to_3d"
CLASSES = ["frontal", "parietal_occipital", "temporal", "deep_grey_limbic", "cerebellum"]
SMALL = {  # MLflow off: creating its SQLite store takes seconds
    "preset": "cpu",
    "cpu_settings#image_size": [32, 32],
    "cpu_settings#hidden_size": 32,
    "cpu_settings#num_heads": 2,
    "cpu_settings#num_slices": 4,
    "cpu_settings#num_samples": 2,
    "cpu_settings#max_epochs": {"segmentation": 2, "classification": 2},
    "cpu_settings#val_interval": {"segmentation": 1, "classification": 1},
}
# classification: 4 real training crops (2 with tumour); validation and test are the bundle's own splits
TASK_SMALL = {
    "segmentation": {},
    "classification": {"task": "classification", "train_datalist": "$@datalist['training'][:4]"},
}
INFER_SMALL = {"preset": "cpu", "image_size": [32, 32], "hidden_size": 32, "num_heads": 2, "num_slices": 4}


@pytest.fixture(scope="module")
def coarse_brain(tmp_path_factory) -> Path:
    """The test brain at 3 mm (every other voxel, its own affine): inference resamples it to 1.5 mm and back."""
    path = brain_region_segmentation_datalist()["test"][0]["image"]
    out = tmp_path_factory.mktemp("coarse") / "coarse_t1.nii.gz"
    nib.save(nib.load(path).slicer[::2, ::2, ::2], out)
    return out


def _setup(tmp_path: Path, task: str = "segmentation", **override) -> tuple[Path, Path, dict]:
    root = bundle_copy(tmp_path, NAME)
    # seed 1: unlike the bundle's own seeded initialisation (seed 0), so a loaded encoder differs from a random one
    ckpt = encoder_checkpoint(tmp_path / "encoder.pt", "vit_tiny", 2, 4, [32, 32], seed=1)
    return root, ckpt, {**SMALL, **TASK_SMALL[task], "encoder_checkpoint": str(ckpt), **override}


def _assert_encoder_is_checkpoint(network: SliceTransformer, ckpt: Path) -> None:
    weights, _ = read_encoder_checkpoint(ckpt)
    state = network.encoder.state_dict()
    assert set(state) == set(weights)
    for key, value in weights.items():
        assert torch.equal(state[key].cpu(), value), f"encoder tensor {key} changed during training"


def _trainable(network: SliceTransformer) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in network.named_parameters() if p.requires_grad}


def _assert_trains_only_the_transfer_part(wf, network: SliceTransformer, before: dict[str, torch.Tensor]) -> None:
    """The optimizer holds exactly the trainable parameters, none of them in the encoder; the transformer blocks,
    the projection and the head all changed."""
    assert isinstance(network, SliceTransformer)
    optimized = {id(p) for group in wf.parser.get_parsed_content("optimizer").param_groups for p in group["params"]}
    assert optimized == {id(p) for p in network.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in network.encoder.parameters())
    assert all(k.split(".")[0] in ("proj", "intra_blocks", "inter_blocks", "head") for k in before)
    after = dict(network.named_parameters())
    for part in ("proj", "intra_blocks", "inter_blocks", "head"):
        assert any(not torch.equal(after[k].detach(), v) for k, v in before.items() if k.startswith(part)), part


def _train(root: Path, small: dict):
    """Run train.json for 2 epochs; return the workflow, its network, the trainable parameters before training,
    the trainer and the evaluator."""
    wf = workflow(root, ["train.json"], **small)
    network = wf.parser.get_parsed_content("network")
    before = _trainable(network)
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and np.isfinite(float(trainer.state.output[0]["loss"]))
    return wf, network, before, trainer, wf.parser.get_parsed_content("validate#evaluator")


def _mean_dice(seg: np.ndarray, label: np.ndarray, num_classes: int = 6) -> float:
    """MONAI's MeanDice(include_background=False) of one volume: classes absent from the label are ignored."""
    scores = []
    for c in range(1, num_classes):
        p, g = seg == c, label == c
        if g.any():
            scores.append(2.0 * (p & g).sum() / (p.sum() + g.sum()))
    return float(np.mean(scores))


def test_segmentation_train_evaluate_inference(tmp_path, coarse_brain):
    root, ckpt, small = _setup(tmp_path)
    wf, network, before, trainer, evaluator = _train(root, small)
    expected = {"val_mean_dice"} | {f"val_dice_{c}" for c in CLASSES}
    assert set(evaluator.state.metrics) == expected
    assert all(0.0 <= evaluator.state.metrics[k] <= 1.0 for k in expected)
    # training slabs: 2 per volume, (2 channels, 32 x 32 in-plane, 4 slices)
    assert [tuple(item["image"].shape) for item in trainer.state.batch] == [(2, 32, 32, 4)] * 2

    _assert_encoder_is_checkpoint(network, ckpt)
    _assert_trains_only_the_transfer_part(wf, network, before)
    models = root / "models"
    assert {"checkpoint_epoch=2.pt", "model.pt"} <= {p.name for p in models.iterdir()}
    best = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert set(best) == set(network.state_dict())  # a bare state dict of the whole network

    # evaluate.json: the test brain (MNI152), Dice on the label's own grid
    run(root, ["train.json", "evaluate.json"], **small)
    saved = read_metrics_csv(root / "eval" / "metrics.csv")
    assert set(saved) == expected and all(0.0 <= v <= 1.0 for v in saved.values())

    # inference.json on the test brain: the label map on the input's grid gives exactly the evaluated Dice
    test_item = brain_region_segmentation_datalist()["test"][0]
    run(root, ["inference.json"], "infer", datalist=[{"image": test_item["image"]}], **INFER_SMALL)
    out = root / "eval" / "inference" / "mni152_2009a_t1_seg.nii.gz"
    seg, src = nib.load(out), nib.load(test_item["image"])
    assert seg.shape == src.shape == (105, 129, 108)
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    assert seg.get_data_dtype() == np.uint8
    label = np.asarray(nib.load(test_item["label"]).dataobj)
    assert _mean_dice(np.asarray(seg.dataobj), label) == pytest.approx(saved["val_mean_dice"], abs=1e-5)

    # a 3 mm volume: resampled to 1.5 mm and resized in-plane for the network, the label map comes back on its grid
    run(root, ["inference.json"], "infer", datalist=[{"image": str(coarse_brain)}], **INFER_SMALL)
    seg, src = nib.load(root / "eval" / "inference" / "coarse_t1_seg.nii.gz"), nib.load(coarse_brain)
    assert seg.shape == src.shape == (53, 65, 54)
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(6))


def test_classification_train_evaluate_inference(tmp_path):
    root, ckpt, small = _setup(tmp_path, "classification")
    wf, network, before, trainer, evaluator = _train(root, small)
    # 4 crops of 48^3, resized in-plane to the encoder's 32 x 32, all 48 slices kept
    assert [tuple(item["image"].shape) for item in trainer.state.batch] == [(2, 32, 32, 48)] * 4
    assert set(evaluator.state.metrics) == {"val_acc", "val_auc"}
    assert all(0.0 <= v <= 1.0 for v in evaluator.state.metrics.values())
    _assert_encoder_is_checkpoint(network, ckpt)
    _assert_trains_only_the_transfer_part(wf, network, before)

    # evaluate.json: accuracy and AUC of the test split, equal to what the saved probabilities give
    run(root, ["train.json", "evaluate.json"], **small)
    out = root / "eval"
    saved, probs = read_metrics_csv(out / "metrics.csv"), read_predictions_csv(out / "test_predictions.csv")
    test_items = tumour_classification_datalist(spatial_dims=3)["test"]
    assert sorted(probs) == sorted(item["image"] for item in test_items)
    assert all(sum(p) == pytest.approx(1.0, abs=1e-5) for p in probs.values())
    correct = [int(np.argmax(probs[item["image"]])) == item["label"] for item in test_items]
    assert set(saved) == {"val_acc", "val_auc"} and saved["val_acc"] == pytest.approx(np.mean(correct))

    # inference.json: the same probabilities for the same crops
    run(root, ["inference.json"], "infer", task="classification", **INFER_SMALL)
    inferred = read_predictions_csv(out / "inference" / "predictions.csv")
    assert sorted(inferred) == sorted(probs)
    for name, p in probs.items():
        np.testing.assert_allclose(inferred[name], p, atol=1e-5)


def test_label_with_an_undeclared_class_names_the_file(tmp_path):
    """A real label map holding class 7 (an unmerged AAL label) stops the run with an error naming its file."""
    root, _, small = _setup(tmp_path)
    item = brain_region_segmentation_datalist()["training"][0]
    img = nib.load(item["label"])
    data = np.asarray(img.dataobj).copy()
    data[data == 5] = 7
    bad = tmp_path / "label_7.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    datalist = {"training": [{**item, "label": str(bad)}], "validation": [], "test": []}
    with pytest.raises(Exception) as excinfo:
        run(root, ["train.json"], **{**small, "datalist": datalist})
    chain = error_messages(excinfo.value)
    assert str(bad) in chain and "does not declare" in chain, chain[-2000:]


@pytest.mark.parametrize("mode", ["random", "none"])
def test_encoder_baselines_train(tmp_path, caplog, mode):
    """``--encoder random`` (the preset's seeded random 2D encoder, frozen) and ``--encoder none`` (raw patches)
    train; ``--freeze_encoder false`` changes nothing but says so."""
    root, ckpt, small = _setup(tmp_path, "classification", encoder=mode, freeze_encoder="false")
    small["cpu_settings#max_epochs"] = {"segmentation": 1, "classification": 1}
    with caplog.at_level(logging.WARNING):
        wf = workflow(root, ["train.json"], **small)
        network = wf.parser.get_parsed_content("network")  # the network definition says so
    assert "freeze_encoder=false has no effect" in caplog.text
    encoder_before = {k: v.clone() for k, v in network.encoder.state_dict().items()}
    wf.run()
    assert (root / "models" / "model.pt").is_file()
    assert np.isfinite(float(wf.parser.get_parsed_content("train#trainer").state.output[0]["loss"]))
    if mode == "none":
        assert isinstance(network.encoder, PatchifyEncoder) and not list(network.encoder.parameters())
    else:  # unchanged by training, and not the checkpoint's weights
        assert all(torch.equal(network.encoder.state_dict()[k], v) for k, v in encoder_before.items())
        weights, _ = read_encoder_checkpoint(ckpt)
        assert not all(torch.equal(encoder_before[k], weights[k]) for k in weights)


def test_missing_pretrained_encoder_and_unknown_task_are_clear_errors(tmp_path, monkeypatch):
    """The default encoder_checkpoint is frepa_pretrain_2d's models/encoder.pt: absent, the run says so; a
    misspelt task lists the tasks."""
    root = bundle_copy(tmp_path, NAME)
    monkeypatch.chdir(tmp_path)  # neither the bundle's sibling nor ./bundles holds a pretrained encoder
    with pytest.raises(Exception) as excinfo:
        run(root, ["train.json"], **SMALL)
    chain = error_messages(excinfo.value)
    assert str(tmp_path / "frepa_pretrain_2d" / "models" / "encoder.pt") in chain and "--encoder random" in chain
    with pytest.raises(Exception) as excinfo:
        run(root, ["train.json"], **{**SMALL, "encoder": "random", "task": "segmentaton"})
    chain = error_messages(excinfo.value)
    assert "segmentaton" in chain and "classification" in chain, chain[-2000:]
