"""The tumour detection bundles (frepa_detection_2d, frepa_detection_3d) run through MONAI's ConfigWorkflow.

Every test copies a bundle to a temporary folder and shrinks it with config overrides (32 x 32 slices, 32^3
crops: ``vit_tiny`` has patch 8; 2 epochs), with a real encoder checkpoint written by
``bundle_helpers.encoder_checkpoint``. Geometry is checked against the sample index's boxes (array index order,
minimum inclusive, maximum exclusive) and against the input files' own affines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import bundle_copy, encoder_checkpoint, error_messages, small_run, workflow
from monai.transforms import LoadImage

from frepa_monai.data import SAMPLE_DIR, load_index, tumour_detection_datalist
from frepa_monai.networks import PatchifyEncoder
from frepa_monai.transforms import MaskToBox, MaskToBoxd, original_grid_box

DIMS = {"frepa_detection_2d": 2, "frepa_detection_3d": 3}
IN_CHANNELS = {"frepa_detection_2d": 4, "frepa_detection_3d": 2}
SIZE = {"frepa_detection_2d": [32, 32], "frepa_detection_3d": [32, 32, 32]}
METRICS = {"val_iou", "val_giou", "val_detection_ratio", "val_sensitivity", "val_precision"}


def small(name: str, checkpoint: Path | None = None, **override) -> dict:
    return small_run(checkpoint, **{"cpu_settings#image_size": SIZE[name], **override})


def infer_small(name: str, **override) -> dict:
    return {"preset": "cpu", "cpu_settings#image_size": SIZE[name], **override}


def _check_metric(name: str, value: float) -> None:
    """Metric ranges; NaN only where the metric is undefined (precision without positive predictions)."""
    if name == "val_precision" and math.isnan(value):
        return
    low = -1.0 if name == "val_giou" else 0.0
    assert low <= value <= 1.0, f"{name}={value}"


def _foreground_box(mask: np.ndarray) -> list[int]:
    hit = np.argwhere(mask > 0)
    return [*hit.min(0).tolist(), *(hit.max(0) + 1).tolist()]


@pytest.mark.parametrize("name", ["frepa_detection_2d", "frepa_detection_3d"])
def test_train_evaluate_inference(tmp_path, name):
    dims = DIMS[name]
    root = bundle_copy(tmp_path, name)
    ckpt = encoder_checkpoint(tmp_path / "encoder.pt", "vit_tiny", dims, IN_CHANNELS[name], SIZE[name])
    wf = workflow(root, ["train.json"], **small(name, ckpt))
    # 2 lung CT subjects: 1 training, 0 validation, 1 test; validation falls back to the training split
    datalist = wf.parser.get_parsed_content("datalist")
    assert datalist["validation"] == [] and wf.parser.get_parsed_content("val_datalist") == datalist["training"]
    assert {it["subject"] for it in datalist["training"]}.isdisjoint({it["subject"] for it in datalist["test"]})
    network, optimizer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("optimizer")
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in network.head.parameters()}  # the frozen encoder is not optimised
    wf.run()
    wf.finalize()

    trainer, evaluator = (
        wf.parser.get_parsed_content("train#trainer"),
        wf.parser.get_parsed_content("validate#evaluator"),
    )
    assert trainer.state.epoch == 2 and math.isfinite(float(trainer.state.output[0]["loss"]))
    assert set(evaluator.state.metrics) == METRICS
    for metric, value in evaluator.state.metrics.items():
        _check_metric(metric, value)
    assert {"checkpoint_epoch=2.pt", "model.pt"} <= {p.name for p in (root / "models").iterdir()}

    # the encoder of the trained model is the checkpoint's, bit for bit
    encoder_weights = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert {k[len("encoder.") :] for k in model if k.startswith("encoder.")} == set(encoder_weights)
    for key, value in encoder_weights.items():
        assert torch.equal(model[f"encoder.{key}"], value), key
        assert torch.equal(network.encoder.state_dict()[key], value), key
    assert any(k.startswith("head.") for k in model)

    # evaluate.json: the test split with models/model.pt -> eval/metrics.csv and the per-image IoU table
    ev = workflow(root, ["train.json", "evaluate.json"], **small(name, encoder_checkpoint=None))
    ev.run()
    ev.finalize()
    saved = dict(line.split(",") for line in (root / "eval" / "metrics.csv").read_text().splitlines())
    assert set(saved) == METRICS
    for metric, value in saved.items():
        _check_metric(metric, float(value))
    test = datalist["test"]
    rows = (root / "eval" / "val_iou_raw.csv").read_text().splitlines()
    assert rows[0].startswith("filename,") and [r.split(",")[0] for r in rows[1:]] == [it["image"] for it in test]
    has_tumour = [float(r.split(",")[3]) for r in rows[1:]]  # columns: IoU, GIoU, has tumour, predicted positive
    assert has_tumour == [float(MaskToBox()(LoadImage(ensure_channel_first=True)(it["label"]))[-1]) for it in test]
    ious = [float(r.split(",")[1]) for r, t in zip(rows[1:], has_tumour) if t]
    assert float(saved["val_iou"]) == pytest.approx(np.mean(ious), abs=1e-6)  # mean IoU over tumour images

    # inference.json: per test image a JSON box in the file's voxel / world coordinates and a box mask on its grid
    inf = workflow(root, ["inference.json"], workflow_type="infer", **infer_small(name))
    inf.run()
    inf.finalize()
    out = root / "eval" / "inference"
    for item in test:
        stem = Path(item["image"]).name.replace(".nii.gz", "")
        box = json.loads((out / f"{stem}_box.json").read_text())
        source = nib.load(item["image"])
        assert box["image"] == item["image"] and box["spatial_shape"] == list(source.shape)
        np.testing.assert_allclose(box["affine"], source.affine, atol=1e-5)
        lo, hi = np.array(box["box_voxel"][:dims]), np.array(box["box_voxel"][dims:])
        assert (0 <= lo).all() and (lo < hi).all() and (hi <= np.array(source.shape)).all()
        assert 0.0 <= box["objectness"] <= 1.0 and box["detected"] == (box["objectness"] >= 0.5)
        mask = nib.load(out / f"{stem}_box.nii.gz")
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-5)
        data = np.asanyarray(mask.dataobj)
        if box["detected"]:
            assert _foreground_box(data) == box["box_voxel"] and data.max() == 1
        else:
            assert data.max() == 0


def test_box_target_follows_the_mask(tmp_path):
    """MaskToBoxd of a real slice's mask is the sample index's box divided by the size; after the bundle's resize
    and padding, the target mapped back to the file's grid is the index box up to the resizing's sampling."""
    name = "frepa_detection_2d"
    raw = next(r for r in load_index()["axial_2d"] if r["image"].endswith("lung2_z020_image.nii.gz"))
    assert len(raw["box"]) == 1  # one connected tumour component
    index_box = np.array(raw["box"][0], dtype=float)
    item = next(it for it in tumour_detection_datalist(2, num_folds=2)["test"] if it["image"].endswith(raw["image"]))
    label = LoadImage(ensure_channel_first=True, image_only=True)(item["label"])
    shape = np.array(label.shape[1:], dtype=float)
    target = MaskToBoxd("label")({"label": label})["label"]
    np.testing.assert_allclose(target[:4].numpy(), index_box / np.tile(shape, 2), atol=1e-7)
    assert target[-1] == 1

    root = bundle_copy(tmp_path, name)  # the bundle's own validation preprocessing, at the CPU preset's 128 x 128
    wf = workflow(root, ["train.json"], preset="cpu", encoder="random")
    d = wf.parser.get_parsed_content("validate#preprocessing")(dict(item))
    assert d["image"].shape == (4, 128, 128) and d["label"].shape == (5,)
    mapped = np.array(original_grid_box(d["label"], d["image"])["box_voxel_continuous"])
    # nearest-neighbour resizing samples the mask at the network pixels' centres: an edge moves by at most half a
    # network pixel, plus up to one pixel inwards where the tumour's outermost row / column falls between samples
    pixel = shape.max() / 128  # file voxels per network pixel
    np.testing.assert_allclose(mapped, index_box, atol=1.5 * pixel)
    # a slice without tumour: objectness 0
    empty = next(
        it for it in tumour_detection_datalist(2, num_folds=2)["test"] if it["image"].endswith("z050_image.nii.gz")
    )
    assert wf.parser.get_parsed_content("validate#preprocessing")(dict(empty))["label"].tolist() == [0.0] * 5


def _forward_box(box: list[int], shape, size: int) -> list[float]:
    """A file-grid box -> normalised box on the network grid by the preprocessing's arithmetic: longest side
    resized to ``size`` (other sides rounded), then centred zero padding to ``size``."""
    n = len(shape)
    resized = [int(round(s * size / max(shape))) for s in shape]
    pad = [(size - r) // 2 for r in resized]
    lo = [(box[i] * resized[i] / shape[i] + pad[i]) / size for i in range(n)]
    hi = [(box[n + i] * resized[i] / shape[i] + pad[i]) / size for i in range(n)]
    return lo + hi


@pytest.mark.parametrize(
    "name,source,box",
    [
        ("frepa_detection_2d", "nifti", [101, 40, 180, 97]),
        ("frepa_detection_2d", "png", [33, 120, 250, 301]),
        ("frepa_detection_3d", "nifti", [7, 12, 20, 30, 41, 45]),
    ],
)
def test_inference_box_round_trip(tmp_path, name, source, box):
    """A known box fed to inference as the network's output lands at the right voxels and world coordinates of
    the input file, and its mask overlays the input (same grid, same affine)."""
    dims = DIMS[name]
    if dims == 2:
        item = tumour_detection_datalist(2, num_folds=2)["test"][5]
    else:
        item = tumour_detection_datalist(3, num_folds=2)["test"][0]
    folder = tmp_path / "input"
    folder.mkdir()
    if source == "png":  # a real CT slice as an 8-bit PNG (no affine)
        from PIL import Image

        hu = np.asanyarray(nib.load(item["image"]).dataobj).astype(float)
        Image.fromarray((np.clip((hu + 1000) / 1400, 0, 1) * 255).astype(np.uint8).T).save(folder / "slice.png")
    else:
        (folder / Path(item["image"]).name).write_bytes(Path(item["image"]).read_bytes())
    root = bundle_copy(tmp_path, name)
    wf = workflow(root, ["inference.json"], workflow_type="infer", input_dir=str(folder), **infer_small(name))
    d = wf.parser.get_parsed_content("dataset")[0]
    image = d["image"]
    shape = list(image.meta["spatial_shape"])
    assert image.shape[1:] == tuple(SIZE[name])
    pred = torch.tensor([*_forward_box(box, shape, SIZE[name][0]), 4.0])
    out = wf.parser.get_parsed_content("postprocessing")({"image": image, "pred": pred})

    written = sorted(Path(wf.parser.get_parsed_content("staging_dir")).iterdir())  # published at finalize
    ext = ".png" if source == "png" else ".nii.gz"
    assert [p.name[-len(ext) :] if p.suffix != ".json" else ".json" for p in written] == [".json", ext]
    saved = json.loads(written[0].read_text())
    assert saved == json.loads(json.dumps(out["box"]))
    assert saved["box_voxel"] == box and saved["detected"] and saved["spatial_shape"] == shape
    np.testing.assert_allclose(saved["box_voxel_continuous"], box, atol=1e-3)
    assert saved["objectness"] == pytest.approx(1 / (1 + math.exp(-4.0)))
    mask = LoadImage(image_only=True)(written[1])
    assert list(mask.shape) == shape and _foreground_box(np.asarray(mask)) == box
    if source == "png":
        assert saved["box_world"] is None and saved["space"] is None
        assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}
        return
    # world box: the physical extent (voxel faces) of the box, by the file's own affine
    affine = nib.load(item["image"]).affine
    faces = np.array([[a - 0.5 for a in box[:dims]], [b - 0.5 for b in box[dims:]]])
    corners = np.array(np.meshgrid(*faces.T, indexing="ij")).reshape(dims, -1).T
    corners = np.c_[corners, np.zeros((len(corners), 3 - dims))]
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(saved["box_world"], [*world.min(0), *world.max(0)], atol=1e-3)
    stored = nib.load(written[1])
    assert np.allclose(stored.affine, affine, atol=1e-5) and stored.get_data_dtype() == np.uint8
    # below the objectness threshold: the JSON keeps the box, the mask is empty
    out = wf.parser.get_parsed_content("postprocessing")(
        {"image": image, "pred": pred * torch.tensor([1.0] * 2 * dims + [-1.0])}
    )
    assert not out["box"]["detected"] and out["box_mask"].max() == 0


def _bad_items(tmp_path: Path, kind: str) -> list[dict]:
    item = dict(tumour_detection_datalist(2, num_folds=2)["training"][3])
    label = nib.load(item["label"])
    data = np.asanyarray(label.dataobj).copy()
    if kind == "class":
        data[10:20, 10:20] = 2
    else:
        data = data[:-7]
    bad = tmp_path / f"bad_{kind}_label.nii.gz"
    nib.save(nib.Nifti1Image(data, label.affine), bad)
    return [dict(item, label=str(bad))]


@pytest.mark.parametrize("kind,reason", [("class", "does not declare"), ("size", "spatial size")])
def test_bad_label_raises_naming_the_file(tmp_path, kind, reason):
    name = "frepa_detection_2d"
    root = bundle_copy(tmp_path, name)
    items = _bad_items(tmp_path, kind)
    with pytest.raises(Exception) as info:
        wf = workflow(root, ["train.json"], **small(name, encoder="random", train_datalist=items, val_datalist=items))
        wf.run()
    chain = error_messages(info.value)
    assert f"bad_{kind}_label.nii.gz" in chain and reason in chain


def test_encoder_modes_and_folds(tmp_path, monkeypatch):
    """Default encoder path without a pretrained encoder -> FileNotFoundError with advice; the random and none
    baselines need no checkpoint; fold k of 2 tests the other lung CT; CT + MR gives 5 folds."""
    name = "frepa_detection_3d"
    root = bundle_copy(tmp_path, name)
    monkeypatch.chdir(tmp_path)  # no bundles/frepa_pretrain_3d/models/encoder.pt below the working folder
    with pytest.raises(Exception) as info:  # MONAI wraps the FileNotFoundError of the network definition
        workflow(root, ["train.json"], preset="cpu")
    causes = []
    error = info.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(e, FileNotFoundError) and "--encoder random" in str(e) for e in causes)
    assert str(tmp_path / "frepa_pretrain_3d" / "models" / "encoder.pt") in error_messages(info.value)
    none = workflow(root, ["train.json"], preset="cpu", encoder="none").parser
    assert isinstance(none.get_parsed_content("network").encoder, PatchifyEncoder)
    random = workflow(root, ["train.json"], preset="cpu", encoder="random").parser
    assert random.get_parsed_content("network").encoder.network_config["name"] == "vit_tiny"

    tests = []
    for fold in (0, 1):
        parser = workflow(root, ["train.json"], preset="cpu", encoder="random", fold=fold).parser
        assert parser.get_parsed_content("num_folds") == 2
        tests.append({it["subject"] for it in parser.get_parsed_content("test_datalist")})
    assert tests[0] | tests[1] == {"pyradiomics_lung1", "pyradiomics_lung2"} and not tests[0] & tests[1]
    mixed = workflow(root, ["train.json"], preset="cpu", encoder="random", modalities=["CT", "MR"])
    assert mixed.parser.get_parsed_content("num_folds") == 5
    assert sum(len(v) for v in mixed.parser.get_parsed_content("datalist").values()) == 18
    assert all(Path(it["image"]).is_relative_to(SAMPLE_DIR) for it in mixed.parser.get_parsed_content("train_datalist"))
