"""The figures of the Frepa study report (``tools/reproduce.py``), drawn with matplotlib's file-only backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frepa_monai.study import protocol, runs

COLOURS = {
    "frepa": "#d62728",
    "frepa_literal": "#ff9896",
    "mae": "#1f77b4",
    "mfm": "#2ca02c",
    "random": "#7f7f7f",
    "pixels": "black",
    "frangi": "#9467bd",
    "flat": "#bcbd22",
}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(summary: dict) -> tuple[float, list[float]]:
    return summary["estimate"], [summary["estimate"] - summary["low"], summary["high"] - summary["estimate"]]


def bands(path: Path, analysis: dict) -> None:
    """Band R^2 per method and band, with 95% intervals and the raw-pixel reference."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, band in zip(axes, ("low", "mid", "high")):
        methods = analysis["metrics"][f"band_{band}"]["methods"]
        for x, variant in enumerate(protocol.METHODS):
            value, err = _error(methods[variant])
            ax.bar(x, value, color=COLOURS[variant], yerr=np.array(err)[:, None], capsize=3)
        ax.axhline(methods["pixels"]["estimate"], color="black", ls="--", lw=1, label="raw pixels")
        ax.axhline(0.0, color=COLOURS["flat"], lw=1, label="flat image")
        ax.set_xticks(
            range(len(protocol.METHODS)), [protocol.LABELS[v] for v in protocol.METHODS], rotation=30, ha="right"
        )
        ax.set_title(f"{band} band")
        ax.set_ylabel("band R^2 (held-out images)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def highpass(path: Path, results: dict) -> None:
    """Vessel probe Dice against the high-pass cut-off, mean over seeds and images (seed range shaded)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    keys = ["raw", *[str(c) for c in protocol.HIGHPASS_CUTOFFS]]
    x = np.arange(len(keys))
    for variant in [*protocol.METHODS, "pixels", "frangi"]:
        runs = [r for (v, _), r in results["scores"].items() if v == variant]
        curves = np.array([[np.mean(r["vessel"]["per_image"][k]) for k in keys] for r in runs])
        style = "--" if variant in ("pixels", "frangi") else "-"
        ax.plot(x, curves.mean(0), style, color=COLOURS[variant], label=protocol.LABELS[variant], marker="o", ms=3)
        if len(curves) > 1:
            ax.fill_between(x, curves.min(0), curves.max(0), color=COLOURS[variant], alpha=0.15)
    ax.set_xticks(x, ["raw", *[f"{c:g}" for c in protocol.HIGHPASS_CUTOFFS]])
    ax.set_xlabel("Gaussian high-pass cut-off d_c / size")
    ax.set_ylabel("vessel Dice (held-out children)")
    ax.legend(fontsize=7)
    ax.set_title("vessel probe on high-pass filtered test images (shaded: range over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ablations(path: Path, analysis: dict, delta: float) -> None:
    """Frepa minus each ablation, with 95% intervals, on the high band and the vessel probe."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, metric in zip(axes, ("band_high", "vessel")):
        diffs = analysis["metrics"][metric]["differences"]
        for y, variant in enumerate(protocol.ABLATIONS):
            d = diffs.get(("frepa", variant))
            if d is not None:
                value, err = _error(d)
                ax.errorbar(value, y, xerr=np.array(err)[:, None], fmt="o", color=COLOURS["frepa"], capsize=3)
        ax.axvline(0, color="black", lw=1)
        ax.axvline(delta, color="black", lw=1, ls=":")
        ax.set_yticks(range(len(protocol.ABLATIONS)), [protocol.LABELS[v] for v in protocol.ABLATIONS])
        ax.set_xlabel(f"Frepa minus ablation ({'band R^2, high' if metric == 'band_high' else 'vessel Dice'})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples(path: Path, work_dir: Path, preset: protocol.Preset) -> None:
    """Two held-out images, their readouts from each encoder (seed 0) and the high band of each."""
    import torch

    from frepa_monai.frequency import filter_bank
    from frepa_monai.metrics import band_filters

    _, test, _ = runs.band_probe_images(preset.image_size)
    index = protocol.example_indices()
    columns = [("image", test[index])]
    for variant in [*protocol.METHODS, "pixels"]:
        name = f"{variant}_seed0" if variant != "pixels" else variant
        columns.append((protocol.LABELS[variant], torch.load(work_dir / "scores" / f"{name}.pt", weights_only=True)))
    high = band_filters((preset.image_size, preset.image_size))["high"]
    plt = pyplot()
    fig, axes = plt.subplots(2 * len(index), len(columns), figsize=(1.7 * len(columns), 3.6 * len(index)))
    for c, (title, images) in enumerate(columns):
        detail = filter_bank(images[:, :1].double(), [high])[0, :, 0]
        for r in range(len(index)):
            axes[2 * r][c].imshow(images[r, 0].clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            axes[2 * r + 1][c].imshow(detail[r], cmap="gray", vmin=-0.1, vmax=0.1)
            axes[2 * r][c].set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel("readout", fontsize=7)
    axes[1][0].set_ylabel("its high band", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def corruption(path: Path, preset: protocol.Preset) -> None:
    """One held-out image at the study size, corrupted with the scaled and with the paper's literal sizes."""
    import torch

    from frepa_monai.transforms import FrequencyDualMask, HistogramEqualizedMask

    _, test, _ = runs.band_probe_images(preset.image_size)
    image = test[protocol.example_indices()[0]][None]
    panels = [("image", image)]
    for literal in (False, True):
        words = "literal" if literal else "scaled"
        freq = FrequencyDualMask(spatial_dims=2, literal_sizes=literal).set_random_state(0)
        hist = HistogramEqualizedMask(spatial_dims=2, literal_sizes=literal).set_random_state(0)
        panels += [(f"frequency, {words}", freq(image)), (f"image masking, {words}", hist(image))]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5))
    for ax, (title, x) in zip(axes, panels):
        ax.imshow(torch.as_tensor(x)[0].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(
    folder: Path, work_dir: Path, preset: protocol.Preset, results: dict, analysis: dict, delta: float
) -> dict[str, str]:
    """Every figure of the report into ``folder``; returns their file names."""
    names = {
        "bands": "band_r2.png",
        "examples": "readouts.png",
        "highpass": "vessel_highpass.png",
        "ablations": "ablations.png",
        "corruption": "corruption_sizes.png",
    }
    bands(folder / names["bands"], analysis)
    examples(folder / names["examples"], work_dir, preset)
    highpass(folder / names["highpass"], results)
    ablations(folder / names["ablations"], analysis, delta)
    corruption(folder / names["corruption"], preset)
    return names
