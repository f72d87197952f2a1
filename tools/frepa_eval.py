"""Shared parts of the evaluation harness (``evaluate_frequency.py``, ``evaluate_highpass.py``,
``run_ablations.py``, ``reproduce.py``): the pretraining variants with one budget, the frozen-encoder
reconstruction probe of the paper's Fig. 7, the vessel-segmentation score, and plot / table helpers.

Every encoder of a comparison is a ``vit_tiny`` at 128 x 128 pretrained by ``bundles/frepa_pretrain_2d`` on the
embedded sample data with the same epochs, batch size, learning rate, augmentation and seed; only the strategy
(or, for the ablations, one Frepa switch) differs. All of them take the image and its Hessian ridge channel
(4 channels): MAE and MFM are run with ``use_hessian=true`` so that the encoders have one architecture and one
input and the downstream bundles take every one of them unchanged (the published MAE and MFM have no Hessian
channel). ``random`` is a freshly initialised encoder of that architecture, never trained.

Results are cached in the work folder: an encoder, a probe result or a vessel run that exists is reused, so the
tools share their pretraining and a stopped run resumes. A cached encoder pretrained with another budget is an
error (use a new work folder).
"""

from __future__ import annotations

import json
import statistics
import time
from functools import lru_cache
from pathlib import Path

from run_folds import REPO, read_metrics, run_workflow, train_and_evaluate

PRETRAIN_BUNDLE = REPO / "bundles" / "frepa_pretrain_2d"
VESSEL_BUNDLE = REPO / "bundles" / "frepa_vessel_segmentation_2d"
ENCODER = {"name": "vit_tiny", "spatial_dims": 2, "in_channels": 4, "img_size": [128, 128]}

METHODS = ("frepa", "mae", "mfm", "random")
ABLATIONS = ("wo_hm", "wo_lp", "wo_fm", "wo_im", "wo_hfl", "wo_con", "wo_grad")
VARIANTS: dict[str, dict] = {
    "frepa": {},
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
"""Pretraining bundle overrides of every variant (``random`` is not pretrained)."""
LABELS = {
    "frepa": "Frepa",
    "mae": "MAE",
    "mfm": "MFM",
    "random": "random",
    "pixels": "no encoder (raw 8 x 8 patch pixels)",
    "wo_hm": "w/o HM (low-frequency perturbation only)",
    "wo_lp": "w/o LP (high-frequency masking only)",
    "wo_fm": "w/o FM (image masking only)",
    "wo_im": "w/o IM (zero-patch masking)",
    "wo_hfl": "w/o HFL",
    "wo_con": "w/o ConL",
    "wo_grad": "w/o GradL",
}

PRETRAIN_EPOCHS = 25
PROBE_EPOCHS = 30
VESSEL_EPOCHS = 60


def add_common_arguments(parser) -> None:
    """``--work_dir`` and ``--pretrain_epochs``, shared by every harness tool."""
    parser.add_argument("--work_dir", default="eval/harness", help="encoders, runs and reports (shared by the tools)")
    parser.add_argument(
        "--pretrain_epochs", type=int, default=PRETRAIN_EPOCHS, help="pretraining epochs of every variant"
    )


# ----------------------------------------------------------------------------------------------------------
# pretraining
# ----------------------------------------------------------------------------------------------------------


def pretrain_settings(variant: str, epochs: int, seed: int = 0) -> dict:
    """The pretraining bundle overrides of ``variant``: the CPU preset, ``epochs`` epochs, no MLflow."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}.")
    return {
        "preset": "cpu",
        "cpu_settings#max_epochs": int(epochs),
        "cpu_settings#val_interval": 5,
        "mlflow": False,
        "seed": seed,
        "run_name": variant,
        **VARIANTS[variant],
    }


def encoder_path(work_dir: Path, variant: str, epochs: int, seed: int = 0) -> Path:
    """``models/encoder.pt`` of ``variant`` under ``work_dir/pretrain``, pretraining it first when it is missing.

    ``random`` is an untrained encoder of the same architecture, initialised with ``torch.manual_seed(seed)``.
    A ``settings.json`` beside each encoder records its budget; a cached encoder with another budget stops the
    run with an error naming it.
    """
    root = Path(work_dir).resolve() / "pretrain" / variant
    path = root / "models" / "encoder.pt"
    settings = pretrain_settings(variant, 0 if variant == "random" else epochs, seed)
    record = root / "settings.json"
    if path.is_file():
        found = json.loads(record.read_text()) if record.is_file() else None
        if found is not None and found.get("overrides") != settings:
            raise SystemExit(
                f"{path} was pretrained with {found.get('overrides')}, not {settings}: use another --work_dir."
            )
        return path
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if variant == "random":
        import torch

        from frepa_monai.networks import build_encoder, save_encoder_checkpoint

        torch.manual_seed(seed)
        save_encoder_checkpoint(path, build_encoder(**ENCODER))
    else:
        print(f"=== pretraining {variant} ({epochs} epochs) in {root}", flush=True)
        run_workflow(PRETRAIN_BUNDLE, ["train.json"], "train", {**settings, "bundle_root": str(root)})
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"overrides": settings, "seconds": round(seconds, 1)}, indent=2) + "\n")
    return path


def pretrain_seconds(work_dir: Path, variant: str) -> float | None:
    """Wall time of ``variant``'s pretraining as recorded in its ``settings.json`` (None if unknown)."""
    record = Path(work_dir).resolve() / "pretrain" / variant / "settings.json"
    return json.loads(record.read_text()).get("seconds") if record.is_file() else None


# ----------------------------------------------------------------------------------------------------------
# the Fig. 7 probe: frozen encoder, fresh ConvDecoder, frequency fidelity on held-out images
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def probe_images():
    """Training and held-out images of the probe, as the pretraining bundle prepares them for validation.

    Returns ``{"train": (images, hessians), "test": (images, hessians), "test_names": [...]}`` with images
    ``(N, 3, 128, 128)`` in [0, 1] and Hessian ridge channels ``(N, 1, 128, 128)``: the pretraining split's
    ``training`` images (100) and its ``test`` images (22, never used in pretraining), seed 0.
    """
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import convert_to_tensor

    parser = ConfigParser()
    parser.read_config(str(PRETRAIN_BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(PRETRAIN_BUNDLE), "preset": "cpu", "use_hessian": True, "seed": 0})
    transform = parser.get_parsed_content("validate#preprocessing")
    datalist = parser.get_parsed_content("datalist")
    out = {}
    for split in ("training", "test"):
        items = [transform(dict(item)) for item in datalist[split]]
        images = torch.stack([convert_to_tensor(item["image"], track_meta=False).float() for item in items])
        hessians = torch.stack([convert_to_tensor(item["hessian"], track_meta=False).float() for item in items])
        out["train" if split == "training" else "test"] = (images, hessians)
    out["test_names"] = [Path(item["image"]).name for item in datalist["test"]]
    return out


def probe_encoder(encoder, seed: int, epochs: int = PROBE_EPOCHS, batch_size: int = 8, lr: float = 1e-3) -> dict:
    """The paper's Fig. 7 protocol for one encoder (a checkpoint path or a module) and one seed.

    The encoder is frozen (eval mode, no gradients) and its feature maps of the probe images are computed once; a
    fresh :class:`~frepa_monai.networks.ConvDecoder` (seeded with ``seed``) is trained with MSE for ``epochs``
    epochs (Adam, ``lr``, shuffled batches of ``batch_size``) to reconstruct the raw images from them; then
    ``rho_low``, ``rho_mid`` and ``rho_high`` (:func:`frepa_monai.metrics.frequency_fidelity`) are averaged over
    the held-out images.

    Returns:
        ``{"rho_low", "rho_mid", "rho_high", "mse"}`` (floats), ``"per_image"`` (the three rhos per held-out
        image) and ``"seconds"``; the held-out reconstructions under ``"recon"`` (a tensor, not saved to JSON).
    """
    import torch

    from frepa_monai.metrics import frequency_fidelity
    from frepa_monai.networks import ConvDecoder, build_encoder_from_checkpoint

    start = time.perf_counter()
    data = probe_images()
    if isinstance(encoder, (str, Path)):
        encoder = build_encoder_from_checkpoint(encoder)
    encoder = encoder.eval().requires_grad_(False)
    in_channels = encoder.network_config["in_channels"] if hasattr(encoder, "network_config") else encoder.in_channels

    def features(images, hessians):
        x = torch.cat([images, hessians], dim=1) if in_channels == images.shape[1] + 1 else images
        with torch.no_grad():
            return torch.cat([encoder(chunk) for chunk in x.split(16)])

    train_x, train_f = data["train"][0], features(*data["train"])
    test_x, test_f = data["test"][0], features(*data["test"])
    size = tuple(train_x.shape[2:])
    torch.manual_seed(seed)
    decoder = ConvDecoder(encoder.out_channels, train_x.shape[1], encoder.stride, spatial_dims=2)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    decoder.train()
    for _ in range(epochs):
        for index in torch.randperm(len(train_x), generator=generator).split(batch_size):
            loss = torch.nn.functional.mse_loss(decoder(train_f[index], size), train_x[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    decoder.eval()
    with torch.no_grad():
        recon = torch.cat([decoder(chunk, size) for chunk in test_f.split(16)])
    rho = frequency_fidelity(recon, test_x)
    result = {band: float(values.mean()) for band, values in rho.items()}
    result["mse"] = float(torch.nn.functional.mse_loss(recon, test_x))
    result["per_image"] = {band: [round(float(v), 6) for v in values] for band, values in rho.items()}
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["recon"] = recon
    return result


def probe(work_dir: Path, variant: str, seed: int, pretrain_epochs: int, epochs: int = PROBE_EPOCHS) -> dict:
    """:func:`probe_encoder` of ``variant``'s encoder, cached in ``work_dir/probe/<variant>_seed<seed>.json``,
    the held-out reconstructions in ``<variant>_seed<seed>.pt`` (a cached result is returned as it is)."""
    cache = Path(work_dir).resolve() / "probe" / f"{variant}_seed{seed}.json"
    if cache.is_file() and cache.with_suffix(".pt").is_file():
        found = json.loads(cache.read_text())
        if found.get("probe_epochs") == epochs and found.get("pretrain_epochs") == pretrain_epochs:
            return found
    import torch

    from frepa_monai.networks import PatchifyEncoder

    if variant == "pixels":  # no encoder: the raw pixels of each patch, what a ViT's patch embedding starts from
        source = PatchifyEncoder(ENCODER["in_channels"], stride=8, spatial_dims=2)
    else:
        source = encoder_path(work_dir, variant, pretrain_epochs)
    print(f"=== probe {variant}, seed {seed}", flush=True)
    result = probe_encoder(source, seed, epochs)
    result.update({"probe_epochs": epochs, "pretrain_epochs": pretrain_epochs, "encoder": str(source)})
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.pop("recon"), cache.with_suffix(".pt"))
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------------
# vessel segmentation DSC (frepa_vessel_segmentation_2d, CHASE_DB1)
# ----------------------------------------------------------------------------------------------------------


def vessel_dsc(work_dir: Path, variant: str, seed: int, pretrain_epochs: int, epochs: int = VESSEL_EPOCHS) -> float:
    """Test DSC of the vessel bundle (CPU preset, ``epochs`` epochs) on ``variant``'s frozen encoder, ``seed``.

    The run lives in ``work_dir/vessel/<variant>_seed<seed>`` with its overrides in ``settings.json``; a finished
    run (``eval/metrics.csv``) with the same overrides is not repeated, one with others is an error.
    """
    root = Path(work_dir).resolve() / "vessel" / f"{variant}_seed{seed}"
    metrics, record = root / "eval" / "metrics.csv", root / "settings.json"
    override = {
        "preset": "cpu",
        "cpu_settings#max_epochs": int(epochs),
        "cpu_settings#val_interval": min(10, int(epochs)),
        "mlflow": False,
        "seed": seed,
        "run_name": f"{variant}_seed{seed}",
        "encoder": "pretrained",
        "encoder_checkpoint": str(encoder_path(work_dir, variant, pretrain_epochs)),
    }
    if record.is_file() and json.loads(record.read_text()) != override:
        raise SystemExit(
            f"{root} was trained with {json.loads(record.read_text())}, not {override}: use another --work_dir."
        )
    if metrics.is_file():
        return read_metrics(metrics)["val_mean_dice"]
    root.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(override, indent=2) + "\n")
    print(f"=== vessel segmentation {variant}, seed {seed} in {root}", flush=True)
    return train_and_evaluate(VESSEL_BUNDLE, root, override)["val_mean_dice"]


# ----------------------------------------------------------------------------------------------------------
# summaries, tables, plots
# ----------------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float], digits: int = 4) -> str:
    """``mean +- std`` of ``values`` (just the value for one)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + ("" if std is None else f" +- {std:.{digits}f}")


def pyplot():
    """matplotlib's pyplot with the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(path: Path, rows: list[list], row_titles: list[str], col_titles: list[str], title: str) -> None:
    """Save a grid of 2D images (``(H, W)`` or ``(3, H, W)`` arrays / tensors, shown in [0, 1]) as a PNG."""
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(1.8 * len(rows[0]), 1.9 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            a = np.asarray(img, dtype=np.float32)
            a = np.moveaxis(a, 0, -1) if a.ndim == 3 else a
            axes[r][c].imshow(np.clip(a, 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(col_titles[c], fontsize=8)
            if c == 0:
                axes[r][c].set_ylabel(row_titles[r], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
