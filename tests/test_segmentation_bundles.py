"""The segmentation bundles run through MONAI's ConfigWorkflow: CHASE_DB1 retinal vessels (2D) and grouped AAL
brain regions (3D), each a frozen Frepa encoder with a trained segmentation head.

Every test copies a bundle to a temporary folder and shrinks it with config overrides: 2D on 2 real CHASE_DB1
images at a 128-pixel working resolution with 64x64 patches, 3D on 64x80x56 crops of the two real brains
(Colin27, MNI152) with 32^3 patches, 1-2 epochs. Encoder checkpoints are real ``vit_tiny`` encoders written at
those sizes (``bundle_helpers.encoder_checkpoint``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import (
    SMALL_RUN,
    assert_same_weights,
    bundle_copy,
    cli_overrides,
    encoder_checkpoint,
    error_messages,
    run,
    workflow,
)
from PIL import Image

from frepa_monai.data import brain_region_segmentation_datalist, vessel_segmentation_datalist
from frepa_monai.networks.checkpoint import read_encoder_checkpoint
from frepa_monai.networks.encoders import PatchifyEncoder
from frepa_monai.networks.frequency_disentangled import FrequencyDisentangledNet

V2D, S3D = "frepa_vessel_segmentation_2d", "frepa_segmentation_3d"
CLASSES_3D = ["frontal", "parietal_occipital", "temporal", "deep_grey_limbic", "cerebellum"]
ENCODER = {V2D: ("vit_tiny", 2, 4, [64, 64]), S3D: ("vit_tiny", 3, 2, [32, 32, 32])}
SMALL = {
    V2D: {
        **SMALL_RUN,
        "cpu_settings#image_size": [64, 64],
        "cpu_settings#working_size": 128,
        "cpu_settings#num_samples": 2,
        "train_datalist": "$@datalist['training'][:2]",
        "val_datalist": "$@datalist['validation'][:1]",
        "test_datalist": "$@datalist['test'][:2]",
    },
    S3D: {
        **SMALL_RUN,
        "cpu_settings#patch_size": [32, 32, 32],
        "cpu_settings#num_samples": 2,
    },
}
INFER_SMALL = {
    V2D: {"preset": "cpu", "image_size": [64, 64], "working_size": 128},
    S3D: {"preset": "cpu", "patch_size": [32, 32, 32]},
}


def _crop(path: str, out: Path, step: int = 1) -> str:
    """A 64x80x56 crop (every ``step``-th voxel) around the centre of a real volume, with its own affine."""
    img = nib.load(path)
    c = [s // 2 for s in img.shape]
    nib.save(img.slicer[c[0] - 32 : c[0] + 32 : step, c[1] - 40 : c[1] + 40 : step, c[2] - 32 : c[2] + 24 : step], out)
    return str(out)


@pytest.fixture(scope="module")
def brains(tmp_path_factory):
    """Crops of the two real brains at 1.5 mm (every class present in both) and a 3 mm crop for inference."""
    folder = tmp_path_factory.mktemp("brains")
    split = brain_region_segmentation_datalist()
    items = {}
    for name, item in (("training", split["training"][0]), ("test", split["test"][0])):
        items[name] = {
            **item,
            "image": _crop(item["image"], folder / f"{name}_image.nii.gz"),
            "label": _crop(item["label"], folder / f"{name}_label.nii.gz"),
        }
    items["coarse"] = {"image": _crop(split["test"][0]["image"], folder / "coarse_image.nii.gz", step=2)}
    return items


def _setup(tmp_path: Path, name: str, brains: dict | None = None, **override):
    """The bundle copied to ``tmp_path``, an encoder checkpoint, and the overrides of a small run."""
    root = bundle_copy(tmp_path, name)
    # seed 1: unlike the bundle's own seeded initialisation (seed 0), so a loaded encoder differs from a random one
    ckpt = encoder_checkpoint(tmp_path / "encoder.pt", *ENCODER[name], seed=1)
    small = {**SMALL[name], "encoder_checkpoint": str(ckpt)}
    if name == S3D:
        small["datalist"] = {"training": [brains["training"]], "validation": [], "test": [brains["test"]]}
    return root, ckpt, {**small, **override}


def _encoder_of(network: torch.nn.Module) -> torch.nn.Module:
    return network.backbone_low.encoder if isinstance(network, FrequencyDisentangledNet) else network.encoder


def _assert_encoder_is_checkpoint(network: torch.nn.Module, ckpt: Path) -> None:
    weights, _ = read_encoder_checkpoint(ckpt)
    state = _encoder_of(network).state_dict()
    assert set(state) == set(weights)
    for key, value in weights.items():
        assert torch.equal(state[key].cpu(), value), f"encoder tensor {key} changed during training"


@pytest.mark.parametrize("name", [V2D, S3D])
def test_train_evaluate_inference(tmp_path, name, brains):
    root, ckpt, small = _setup(tmp_path, name, brains)
    wf = run(root, ["train.json"], **small)
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    network = wf.parser.get_parsed_content("network")
    assert trainer.state.epoch == 2 and np.isfinite(float(trainer.state.output[0]["loss"]))
    expected = {"val_mean_dice"} | ({f"val_dice_{c}" for c in CLASSES_3D} if name == S3D else set())
    assert set(evaluator.state.metrics) == expected
    assert all(0.0 <= evaluator.state.metrics[k] <= 1.0 for k in expected)

    # the frozen encoder is bit-identical to the checkpoint; the optimizer holds exactly the head's parameters
    _assert_encoder_is_checkpoint(network, ckpt)
    optimized = {id(p) for group in wf.parser.get_parsed_content("optimizer").param_groups for p in group["params"]}
    assert optimized == {id(p) for p in network.head.parameters()}
    models = root / "models"
    assert {"checkpoint_epoch=2.pt", "model.pt"} <= {p.name for p in models.iterdir()}
    best = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert set(best) == set(network.state_dict())  # a bare state dict of the whole network
    network.load_state_dict(best)
    _assert_encoder_is_checkpoint(network, ckpt)

    # evaluate.json: the test split, metrics.csv with the validation metric names, per-image details
    ev = workflow(root, ["train.json", "evaluate.json"], **small)
    ev.run()
    ev.finalize()
    out = root / "eval"
    saved = {k: float(v) for k, v in (line.split(",") for line in (out / "metrics.csv").read_text().splitlines())}
    assert set(saved) == expected and all(0.0 <= v <= 1.0 for v in saved.values())
    raw = (out / "val_mean_dice_raw.csv").read_text().splitlines()
    test_items = ev.parser.get_parsed_content("test_datalist")
    assert [line.split(",")[0] for line in raw[1:]] == [item["image"] for item in test_items]
    if name == S3D:  # one test brain holding every class: the mean Dice is the mean of the per-class Dice
        assert raw[0].split(",")[1:] == [f"class{i}" for i in range(5)] + ["mean"]
        assert saved["val_mean_dice"] == pytest.approx(np.mean([saved[f"val_dice_{c}"] for c in CLASSES_3D]))

    # inference.json: the prediction on the input's own grid
    if name == V2D:
        source = vessel_segmentation_datalist()["test"][0]["image"]
        inf = workflow(
            root, ["inference.json"], workflow_type="infer", datalist=[{"image": source}], **INFER_SMALL[name]
        )
        inf.run()
        inf.finalize()
        mask = np.asarray(Image.open(out / "inference" / f"{Path(source).stem}_seg.png"))
        assert mask.shape == np.asarray(Image.open(source)).shape[:2] == (960, 999)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    else:  # a 3 mm volume: resampled to 1.5 mm for the network, the label map comes back on the 3 mm grid
        source = brains["coarse"]["image"]
        inf = workflow(
            root, ["inference.json"], workflow_type="infer", datalist=[{"image": source}], **INFER_SMALL[name]
        )
        inf.run()
        inf.finalize()
        seg, src = nib.load(out / "inference" / "coarse_image_seg.nii.gz"), nib.load(source)
        assert seg.shape == src.shape == (32, 40, 28)
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= set(range(6))


def _write_bad_labels(tmp_path: Path, name: str, brains: dict) -> dict[str, dict]:
    """Items whose label is a real label file made wrong: an undeclared class, or another size than the image."""
    if name == V2D:
        item = vessel_segmentation_datalist()["training"][0]
        label = np.asarray(Image.open(item["label"]))
        assert set(np.unique(label)) == {0, 1}
        Image.fromarray((label * 255).astype(np.uint8)).save(tmp_path / "label_0_255.png")
        Image.fromarray(label[:900, :900].astype(np.uint8)).save(tmp_path / "label_cropped.png")
        paths = {"class": tmp_path / "label_0_255.png", "size": tmp_path / "label_cropped.png"}
    else:
        item = brains["training"]
        img = nib.load(item["label"])
        data = np.asarray(img.dataobj).copy()
        data[data == 5] = 7
        nib.save(nib.Nifti1Image(data, img.affine), tmp_path / "label_7.nii.gz")
        nib.save(img.slicer[:-4], tmp_path / "label_cropped.nii.gz")
        paths = {"class": tmp_path / "label_7.nii.gz", "size": tmp_path / "label_cropped.nii.gz"}
    return {kind: {**item, "label": str(path)} for kind, path in paths.items()}


@pytest.mark.parametrize("name", [V2D, S3D])
def test_bad_labels_stop_with_the_file_named(tmp_path, name, brains):
    """A 0/255 PNG or a NIfTI holding class 7, and a label of another size than its image: the run stops with
    an error naming the label file."""
    root, _, small = _setup(tmp_path, name, brains)
    reasons = {"class": "does not declare", "size": "spatial size"}
    for kind, item in _write_bad_labels(tmp_path, name, brains).items():
        datalist = {"training": [item], "validation": [item], "test": [item]}
        with pytest.raises(Exception) as excinfo:
            run(root, ["train.json"], **{**small, "datalist": datalist})
        chain = error_messages(excinfo.value)
        assert item["label"] in chain and reasons[kind] in chain, chain[-2000:]


@pytest.mark.parametrize(
    "name, mode, disentangled",
    [
        (V2D, "none", False),
        (V2D, "random", False),
        (V2D, "pretrained", True),
        (S3D, "none", False),
        (S3D, "pretrained", True),
    ],
)
def test_encoder_modes_and_frequency_disentangled(tmp_path, name, mode, disentangled, brains):
    """``--encoder none`` (patchify baseline) and ``random`` build and train; ``--frequency_disentangled true``
    trains two heads on the low / high frequencies through one shared frozen encoder, and its model loads in
    inference.json with the same switch."""
    root, ckpt, small = _setup(tmp_path, name, brains, encoder=mode, frequency_disentangled=disentangled)
    small["cpu_settings#max_epochs"] = 1
    wf = workflow(root, ["train.json"], **small)
    network = wf.parser.get_parsed_content("network")
    encoder = _encoder_of(network)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    wf.run()
    assert (root / "models" / "model.pt").is_file()
    assert np.isfinite(float(wf.parser.get_parsed_content("train#trainer").state.output[0]["loss"]))
    if mode == "none":
        assert isinstance(encoder, PatchifyEncoder) and not list(encoder.parameters())
    elif mode == "random":  # the preset's random weights, frozen: unchanged by training, not the checkpoint's
        assert all(torch.equal(encoder.state_dict()[k], v) for k, v in before.items())
        weights, _ = read_encoder_checkpoint(ckpt)
        assert not all(torch.equal(before[k], weights[k]) for k in weights)
    else:
        assert isinstance(network, FrequencyDisentangledNet)
        assert network.backbone_low.encoder is network.backbone_high.encoder
        _assert_encoder_is_checkpoint(network, ckpt)
        datalist = [{"image": (brains["test"] if name == S3D else vessel_segmentation_datalist()["test"][0])["image"]}]
        inf = workflow(
            root,
            ["inference.json"],
            workflow_type="infer",
            frequency_disentangled=True,
            datalist=datalist,
            **INFER_SMALL[name],
        )
        inf.run()
        inf.finalize()
        assert len([p for p in (root / "eval" / "inference").iterdir() if p.name != "summary.json"]) == 1


def test_resumed_run_repeats_an_uninterrupted_run(tmp_path):
    """Stopped after epoch 1 and started again, training resumes from checkpoint_epoch=1.pt and ends with the
    weights and best model of an uninterrupted seeded run."""
    _, ckpt, small = _setup(tmp_path, V2D)
    whole, parts = bundle_copy(tmp_path / "whole", V2D), bundle_copy(tmp_path / "parts", V2D)
    run(whole, ["train.json"], **small)
    run(parts, ["train.json"], **{**small, "cpu_settings#max_epochs": 1})
    assert (parts / "models" / "checkpoint_epoch=1.pt").is_file()
    resumed = run(parts, ["train.json"], **small)
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2
    for name in ("checkpoint_epoch=2.pt", "model.pt"):
        a = torch.load(whole / "models" / name, map_location="cpu", weights_only=True)
        b = torch.load(parts / "models" / name, map_location="cpu", weights_only=True)
        a, b = a.get("network", a), b.get("network", b)
        assert set(a) == set(b)
        assert_same_weights(b, a)


def test_missing_pretrained_encoder_is_a_clear_error(tmp_path, monkeypatch):
    """The default encoder_checkpoint is frepa_pretrain_2d's models/encoder.pt: absent, the run says so."""
    root = bundle_copy(tmp_path, V2D)
    monkeypatch.chdir(tmp_path)  # neither the bundle's sibling nor ./bundles holds a pretrained encoder
    small = {k: v for k, v in SMALL[V2D].items()}
    with pytest.raises(Exception) as excinfo:
        run(root, ["train.json"], **small)
    chain = error_messages(excinfo.value)
    assert str(tmp_path / "frepa_pretrain_2d" / "models" / "encoder.pt") in chain and "--encoder random" in chain


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    """``torchrun --nproc_per_node=2`` with multi_gpu_train.json (gloo) trains the frequency-disentangled
    network, whose frozen shared encoder DDP must leave alone."""
    root, ckpt, small = _setup(tmp_path, V2D, frequency_disentangled=True)
    small["train_datalist"] = "$@datalist['training'][:4]"
    configs = f"['{root}/configs/train.json','{root}/configs/multi_gpu_train.json']"
    overrides = cli_overrides(small)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    cmd += ["run", "--config_file", configs, "--bundle_root", str(root), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Epoch[2] Metrics") + result.stdout.count("Epoch[2] Metrics") >= 1
    best = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    weights, _ = read_encoder_checkpoint(ckpt)
    assert all(torch.equal(best[f"backbone_low.encoder.{k}"], v) for k, v in weights.items())
