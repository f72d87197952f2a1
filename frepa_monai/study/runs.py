"""The study's runs, each cached in the work folder under a name holding the variant and the seed, beside the
settings it was made with: a cached result made with other settings stops the run with an error naming it.

- :func:`encoder_path`: a variant pretrained with a seed (``random``: initialised);
- :func:`probe_scores`: band and vessel probes of an encoder, or of a reference (raw pixels, Hessian filter, flat);
- :func:`e2e_dice`: the vessel bundle's trained head on a frozen encoder.
"""

from __future__ import annotations

import csv
import json
import time
from functools import lru_cache
from pathlib import Path

from frepa_monai.study.protocol import (
    HIGHPASS_CUTOFFS,
    PRETRAIN_BUNDLE,
    VESSEL_BUNDLE,
    Preset,
    e2e_split,
    example_indices,
    pretrain_datalist,
    pretrain_settings,
    steps_per_run,
    study_split,
)
from frepa_monai.workflows import run_workflow, train_and_evaluate

__all__ = [
    "band_probe_images",
    "vessel_probe_images",
    "encoder_path",
    "pretrain_seconds",
    "probe_scores",
    "e2e_dice",
    "per_image_dice",
]


def _json(obj) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def _cached(record: Path, settings: dict):
    """The cached result beside ``record`` if it was made with ``settings``; an error if with others."""
    if not record.is_file():
        return None
    found = json.loads(record.read_text())
    if found.get("settings") != json.loads(json.dumps(settings, default=str)):
        raise SystemExit(f"{record} was made with other settings ({found.get('settings')}): use another --work_dir.")
    return found


@lru_cache(maxsize=2)
def band_probe_images(image_size: int):
    """``(train, test, test_subjects)``: the study's pretraining and test images as the pretraining bundle prepares
    them for validation (resized to ``image_size``, 3 channels, [0, 1]), ``(N, 3, size, size)`` tensors."""
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import convert_to_tensor

    parser = ConfigParser()
    parser.read_config(str(PRETRAIN_BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(PRETRAIN_BUNDLE), "preset": "cpu", "cpu_settings#image_size": [image_size] * 2})
    transform = parser.get_parsed_content("validate#preprocessing")

    def load(items):
        return torch.stack([convert_to_tensor(transform(dict(i))["image"], track_meta=False).float() for i in items])

    split = study_split()
    return load(split["pretrain"]), load(split["test"]), [i["subject"] for i in split["test"]]


@lru_cache(maxsize=2)
def vessel_probe_images(longest_side: int):
    """The study's held-out CHASE_DB1 children at ``longest_side`` px, as the vessel bundle prepares its images:
    ``(images (N, 3, H, W) in [0, 1], vessel masks (N, H, W), fields of view (N, H, W), children)``."""
    import torch
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

    from frepa_monai.data import vessel_segmentation_datalist
    from frepa_monai.transforms import ScaleIntensityByModalityd

    held_out = {i["subject"] for i in study_split()["test"]}
    items = sorted(
        (i for s in vessel_segmentation_datalist().values() for i in s if i["subject"] in held_out),
        key=lambda i: i["image"],
    )
    keys = ["image", "label", "mask"]
    prepare = Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            ScaleIntensityByModalityd("image"),
            Resized(
                keys,
                longest_side,
                size_mode="longest",
                mode=["bilinear", "nearest", "nearest"],
                anti_aliasing=[True, False, False],
            ),
        ]
    )
    data = [prepare(dict(i)) for i in items]
    images = torch.stack([torch.as_tensor(d["image"]).float()[:3].clamp(0, 1) for d in data])
    labels = torch.stack([torch.as_tensor(d["label"])[0] > 0 for d in data])
    fov = torch.stack([torch.as_tensor(d["mask"])[0] > 0 for d in data])
    return images, labels, fov, [i["subject"] for i in items]


def encoder_path(work_dir: Path, preset: Preset, variant: str, seed: int) -> Path:
    """``models/encoder.pt`` of ``variant`` pretrained with ``seed``, pretraining it when it is not cached.

    ``random`` is an untrained encoder of the pretraining architecture initialised with ``torch.manual_seed(seed)``.
    ``record.json`` beside the encoder holds the overrides and the pretraining's CPU and wall seconds.
    """
    root = Path(work_dir).resolve() / "pretrain" / f"{variant}_seed{seed}"
    path, record = root / "models" / "encoder.pt", root / "record.json"
    settings = pretrain_settings(preset, variant, seed)
    if _cached(record, settings) is not None and path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    if variant == "random":
        import torch

        from frepa_monai.networks import build_encoder, save_encoder_checkpoint

        torch.manual_seed(seed)
        save_encoder_checkpoint(path, build_encoder(preset.encoder, 2, 4, preset.image_size))
    else:
        print(f"=== pretraining {variant}, seed {seed} ({steps_per_run(preset)} steps) in {root}", flush=True)
        run_workflow(
            PRETRAIN_BUNDLE,
            ["train.json"],
            "train",
            {**settings, "datalist": pretrain_datalist(), "bundle_root": str(root)},
        )
    seconds = {"wall": round(time.perf_counter() - start, 1), "cpu": round(time.process_time() - cpu, 1)}
    record.write_text(_json({"settings": settings, "seconds": seconds}))
    return path


def pretrain_seconds(work_dir: Path, variant: str, seed: int) -> dict | None:
    record = Path(work_dir).resolve() / "pretrain" / f"{variant}_seed{seed}" / "record.json"
    return json.loads(record.read_text())["seconds"] if record.is_file() else None


# ----------------------------------------------------------------------------------------------------------
# scores: the probes of every encoder and the references
# ----------------------------------------------------------------------------------------------------------


def probe_scores(work_dir: Path, preset: Preset, variant: str, seed: int | None) -> dict:
    """Band probe and vessel probe of one encoder (``variant="pixels"``: the raw-pixel reference; ``"frangi"``: the
    Hessian filter with a threshold, vessels only; ``"flat"``: a flat image), cached in ``work_dir/scores``."""
    name = variant if seed is None else f"{variant}_seed{seed}"
    record = Path(work_dir).resolve() / "scores" / f"{name}.json"
    probe = {k: getattr(preset, k) for k in ("encoder", "image_size", "vessel_size", "neighbourhood")}
    pretraining = None if seed is None else pretrain_settings(preset, variant, seed)
    settings = {"probe": probe, "pretraining": pretraining, "variant": variant, "seed": seed}
    found = _cached(record, settings)
    if found is not None:
        return found
    import torch

    from frepa_monai import evaluation
    from frepa_monai.metrics import FREQUENCY_BANDS, band_r2
    from frepa_monai.networks import ENCODER_PRESETS, build_encoder_from_checkpoint

    start = time.perf_counter()
    train, test, _ = band_probe_images(preset.image_size)
    images, labels, fov, children = vessel_probe_images(preset.vessel_size)
    encoder = None
    if variant not in ("pixels", "frangi", "flat"):
        encoder = build_encoder_from_checkpoint(encoder_path(work_dir, preset, variant, seed)).requires_grad_(False)
        encoder = encoder.to("cuda" if torch.cuda.is_available() else "cpu")
    print(f"=== probes of {name}", flush=True)
    examples = example_indices()
    if variant == "flat":
        mean = test.mean(dim=(2, 3), keepdim=True).expand_as(test)
        band = {"per_image": {b: band_r2(mean, test, b).tolist() for b in FREQUENCY_BANDS}, "examples": mean[examples]}
        share = (labels & fov).flatten(1).sum(1) / fov.flatten(1).sum(1)
        vessel = {"per_image": {"raw": (2 * share / (1 + share)).tolist()}}  # every pixel of the FOV called vessel
    elif variant == "frangi":
        band = None
        vessel = evaluation.frangi_reference(images, labels, fov, children, HIGHPASS_CUTOFFS)
    else:  # the raw-pixel reference reads patches of the encoders' stride (band) and 8 x 8 patches (vessels)
        stride = ENCODER_PRESETS[preset.encoder]["patch_size"]
        near = {} if encoder is None else {"neighbourhood": preset.neighbourhood}
        band = evaluation.band_probe(encoder, train, test, stride=stride, per_image=True, examples=examples, **near)
        vessel = evaluation.vessel_probe(encoder, images, labels, fov, children, HIGHPASS_CUTOFFS, **near)
    record.parent.mkdir(parents=True, exist_ok=True)
    if band is not None:
        torch.save(band.pop("examples"), record.with_suffix(".pt"))  # the readouts of the example images
    result = {"settings": settings, "band": band, "vessel": vessel, "seconds": round(time.perf_counter() - start, 1)}
    record.write_text(_json(result))
    return json.loads(record.read_text())


def e2e_dice(work_dir: Path, preset: Preset, variant: str, seed: int) -> dict:
    """Test Dice per image of ``frepa_vessel_segmentation_2d``'s trained head on ``variant``'s frozen encoder
    (``seed``: the pretraining seed, also the head's seed), cached in ``work_dir/e2e``."""
    root = Path(work_dir).resolve() / "e2e" / f"{variant}_seed{seed}"
    record = root / "record.json"
    p = f"{preset.bundle_preset}_settings"
    settings = {
        "preset": preset.bundle_preset,
        f"{p}#encoder_name": preset.encoder,
        f"{p}#image_size": [preset.image_size] * 2,
        f"{p}#working_size": preset.vessel_size,
        f"{p}#max_epochs": preset.e2e_epochs,
        f"{p}#val_interval": min(10, preset.e2e_epochs),
        "amp": preset.amp,
        "mlflow": False,
        "seed": seed,
        "run_name": f"{variant}_seed{seed}",
        "encoder": "pretrained",
    }
    found = _cached(record, settings)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    print(f"=== vessel bundle on {variant}, seed {seed} in {root}", flush=True)
    start = time.perf_counter()
    override = {
        **settings,
        "encoder_checkpoint": str(encoder_path(work_dir, preset, variant, seed)),
        "datalist": e2e_split(),
    }
    metrics = train_and_evaluate(VESSEL_BUNDLE, root, override)
    per_image = per_image_dice(root / "eval" / "val_mean_dice_raw.csv")
    result = {"settings": settings, "dice": metrics["val_mean_dice"], "per_image": per_image}
    result["seconds"] = round(time.perf_counter() - start, 1)
    record.write_text(_json(result))
    return json.loads(record.read_text())


def per_image_dice(path: Path) -> dict[str, float]:
    """Image file name -> Dice, from the ``val_mean_dice_raw.csv`` that MONAI's ``MetricsSaver`` writes (a row per
    image: ``filename``, one column per class, ``mean``)."""
    with open(path, newline="") as f:
        return {Path(row["filename"]).name: float(row["mean"]) for row in csv.DictReader(f)}
