"""The protocol of the Frepa study: its presets, variants, data split and claims' inputs, fixed before any run.

Every variant is pretrained by ``bundles/frepa_pretrain_2d`` with one budget in optimizer steps, on the study's
pretraining half of the 2D sample data; the other half (subjects never seen in pretraining) is where the probes
of :mod:`frepa_monai.evaluation` score the frozen encoders. ``random`` is an untrained encoder of the same
architecture, one per seed.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from pathlib import Path

from frepa_monai.workflows import BUNDLES

__all__ = [
    "PRETRAIN_BUNDLE",
    "VESSEL_BUNDLE",
    "HIGHPASS_CUTOFFS",
    "METHODS",
    "ABLATIONS",
    "VARIANTS",
    "LABELS",
    "Preset",
    "PRESETS",
    "study_split",
    "pretrain_datalist",
    "e2e_split",
    "example_indices",
    "pretrain_settings",
    "steps_per_run",
]

PRETRAIN_BUNDLE = BUNDLES / "frepa_pretrain_2d"
VESSEL_BUNDLE = BUNDLES / "frepa_vessel_segmentation_2d"
HIGHPASS_CUTOFFS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
"""Gaussian high-pass cut-offs ``d_c / size`` of the robustness curve (the paper's Fig. 1a range)."""

METHODS = ("frepa", "frepa_literal", "mae", "mfm", "random")
ABLATIONS = ("wo_hm", "wo_lp", "wo_fm", "wo_im", "wo_hfl", "wo_con", "wo_grad")
VARIANTS: dict[str, dict] = {
    "frepa": {},
    "frepa_literal": {"literal_sizes": True},
    "mae": {"strategy_name": "mae", "use_hessian": True},
    "mfm": {"strategy_name": "mfm", "use_hessian": True},
    "random": {},
    "wo_hm": {"hm": False},
    "wo_lp": {"lp": False},
    "wo_fm": {"fm": False},
    "wo_im": {"im": False},
    "wo_hfl": {"hfl": False},
    "wo_con": {"con": False},
    "wo_grad": {"grad": False},
}
"""Pretraining bundle overrides of every variant (``random`` is not pretrained). MAE and MFM take the Hessian
channel too, so that every encoder has one input and one architecture."""
LABELS = {
    "frepa": "Frepa",
    "frepa_literal": "Frepa, literal sizes",
    "mae": "MAE",
    "mfm": "MFM",
    "random": "random",
    "pixels": "raw pixels (no encoder)",
    "frangi": "Hessian filter + threshold (no encoder)",
    "flat": "flat image",
    "wo_hm": "w/o HM",
    "wo_lp": "w/o LP",
    "wo_fm": "w/o FM",
    "wo_im": "w/o IM",
    "wo_hfl": "w/o HFL",
    "wo_con": "w/o ConL",
    "wo_grad": "w/o GradL",
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """What the study runs: the pretraining budget, the seeds and the probe settings."""

    name: str
    bundle_preset: str  # the pretraining bundle's preset whose settings are overridden
    encoder: str
    image_size: int
    batch_size: int
    epochs: int  # pretraining epochs of the study's pretraining half; the step budget follows from them
    learning_rate: float
    amp: bool
    seeds: int  # pretraining seeds of each method (and random initialisations)
    ablation_seeds: int
    vessel_size: int  # longest side of the CHASE_DB1 images in the vessel probe
    neighbourhood: int  # tokens per axis around each token that the probes read
    e2e_seeds: int  # pretraining seeds whose encoders also get the vessel bundle's trained head
    e2e_epochs: int

    def replace(self, **changes) -> Preset:
        return dataclasses.replace(self, **changes)


PRESETS = {
    "cpu": Preset("cpu", "cpu", "vit_tiny", 128, 8, 25, 0.002, False, 5, 3, 384, 3, 2, 150),
    "gpu": Preset("gpu", "gpu", "vit_s", 256, 32, 30, 0.0003, True, 3, 1, 768, 1, 1, 60),
}
"""``cpu``: sized for this project's 2-core CPU (at most 90 minutes). ``gpu``: ViT-S/16 at 256 px with AMP, sized
by estimate (data pipeline about 0.1 s a step, 15 s of start-up a run) for under 10 minutes on one modern GPU;
the probes read each token alone (``neighbourhood`` 1: 384 features instead of 3456)."""


@lru_cache(maxsize=1)
def study_split() -> dict[str, list[dict]]:
    """``{"pretrain": items, "test": items}``: every 2D pretraining item of the sample set, split by subject in
    halves within each of its three sources (slices of the 3D volumes, 2D images, CHASE_DB1 children), seed 0."""
    from frepa_monai.data import pretrain_2d_datalist, split_by_subject

    items = [dict(i, _group=Path(i["image"]).parent.name) for s in pretrain_2d_datalist().values() for i in s]
    split = split_by_subject(items, ratios=(0.5, 0.0, 0.5), seed=0, group_key="_group")
    for item in split["training"] + split["test"]:
        del item["_group"]
    return {"pretrain": split["training"], "test": split["test"]}


def pretrain_datalist() -> dict:
    """The pretraining bundle's datalist in the study: the pretraining half, validated on 4 of its own images (one
    validation at the end of a run, which only names ``model.pt``; the study reads ``encoder.pt``)."""
    items = study_split()["pretrain"]
    return {"training": items, "validation": items[:4], "test": []}


def e2e_split() -> dict:
    """The vessel bundle's datalist in the study: the held-out children only (pretraining never saw them),
    4 training, 1 validation, 2 test children."""
    from frepa_monai.data import split_by_subject, vessel_segmentation_datalist

    held_out = {i["subject"] for i in study_split()["test"]}
    items = [i for s in vessel_segmentation_datalist().values() for i in s if i["subject"] in held_out]
    return split_by_subject(items, ratios=(4, 1, 2), seed=0)


def example_indices() -> list[int]:
    """Two held-out images the report shows: the first CHASE_DB1 photo and the first slice of a 3D volume."""
    test = study_split()["test"]
    chase = next(i for i, item in enumerate(test) if item["source"] == "CHASE_DB1")
    slices = next(i for i, item in enumerate(test) if Path(item["image"]).parent.name == "slices2d")
    return [chase, slices]


def pretrain_settings(preset: Preset, variant: str, seed: int) -> dict:
    """The pretraining bundle overrides of ``variant`` and ``seed`` under ``preset``."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}.")
    p = f"{preset.bundle_preset}_settings"
    return {
        "preset": preset.bundle_preset,
        f"{p}#encoder": preset.encoder,
        f"{p}#image_size": [preset.image_size] * 2,
        f"{p}#batch_size": preset.batch_size,
        f"{p}#max_epochs": preset.epochs,
        f"{p}#val_interval": preset.epochs,
        f"{p}#learning_rate": preset.learning_rate,
        "amp": preset.amp,
        "mlflow": False,
        "seed": seed,
        "run_name": f"{variant}_seed{seed}",
        **VARIANTS[variant],
    }


def steps_per_run(preset: Preset) -> int:
    """Optimizer steps of every pretraining run: epochs x batches of the pretraining half."""
    return preset.epochs * math.ceil(len(study_split()["pretrain"]) / preset.batch_size)
