#!/usr/bin/env python
"""How much of each frequency band a frozen encoder keeps: the paper's Fig. 7 protocol (spec section 5).

For every method (default Frepa, MAE, MFM and a random encoder; each pretrained by ``bundles/frepa_pretrain_2d``
with the same epochs, data, encoder and seed, see ``frepa_eval.py``) the encoder is frozen and a fresh
``ConvDecoder`` is trained with MSE to reconstruct the raw images from its features (100 training images of the
pretraining split). ``rho_k = 1 - RMSE(O_k(recon), O_k(image))`` is reported for the low, mid and high band on
the 22 held-out test images, mean +- sample standard deviation over the decoder seeds.

Writes ``<work_dir>/frequency.md`` / ``.json`` (the table), ``frequency.png`` (bar chart, one panel per band,
error bars one standard deviation) and ``frequency_examples.png`` (a held-out image, each method's
reconstruction, and the high band of both). Encoders and probe results are cached in ``<work_dir>``.

Example (the budget of ``docs/results.md``)::

    python tools/evaluate_frequency.py --work_dir eval/harness
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frepa_eval import LABELS, METHODS, PROBE_EPOCHS, VARIANTS, add_common_arguments, fmt, mean_std, pyplot
from run_folds import write_report

BANDS = ("low", "mid", "high")


def summary(probe_result: dict) -> dict:
    """The scores of one probe result: ``rho_low``, ``rho_mid``, ``rho_high`` and ``mse``."""
    return {k: probe_result[k] for k in ("rho_low", "rho_mid", "rho_high", "mse")}


def markdown(result: dict) -> str:
    lines = [
        "| method | rho_low | rho_mid | rho_high | MSE |",
        "|---|---|---|---|---|",
    ]
    for variant, runs in result["runs"].items():
        cells = [fmt([r[f"rho_{b}"] for r in runs.values()]) for b in BANDS]
        cells.append(fmt([r["mse"] for r in runs.values()], 5))
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
    if result.get("pixels"):
        runs = result["pixels"].values()
        cells = [fmt([r[f"rho_{b}"] for r in runs]) for b in BANDS] + [fmt([r["mse"] for r in runs], 5)]
        lines.append("| *reference: no encoder, the raw pixels of each 8 x 8 patch* | " + " | ".join(cells) + " |")
    if "reference" in result:
        ref = result["reference"]
        cells = [f"{ref[f'rho_{b}']:.4f}" for b in BANDS] + [f"{ref['mse']:.5f}"]
        lines.append("| *reference: a flat image at each image's mean* | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def flat_reference() -> dict:
    """The scores of a reconstruction without any structure (every pixel the image's channel mean): what a
    decoder reaches with no information from the encoder. Its ``rho_high`` is ``1 - RMS`` of the images' high
    band, the level a reconstruction without high frequencies scores."""
    import torch
    from frepa_eval import probe_images

    from frepa_monai.metrics import frequency_fidelity

    images = probe_images()["test"][0]
    flat = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    ref = {band: float(v.mean()) for band, v in frequency_fidelity(flat, images).items()}
    ref["mse"] = float(torch.nn.functional.mse_loss(flat, images))
    return ref


def bar_chart(result: dict, path: Path) -> None:
    """One panel per band: the mean rho of every method, error bar one standard deviation over seeds."""
    plt = pyplot()
    variants = list(result["runs"])
    colours = {"low": "tab:blue", "mid": "tab:green", "high": "tab:orange"}  # the paper's Fig. 7b colours
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, band in zip(axes, BANDS):
        stats = [mean_std([r[f"rho_{band}"] for r in result["runs"][v].values()]) for v in variants]
        means = [m for m, _ in stats]
        errors = [s or 0.0 for _, s in stats]
        ax.bar(range(len(variants)), means, yerr=errors, capsize=4, color=colours[band], alpha=0.85)
        low, high = min(m - e for m, e in zip(means, errors)), max(m + e for m, e in zip(means, errors))
        if "reference" in result:
            ref = result["reference"][f"rho_{band}"]
            ax.axhline(ref, color="black", linestyle="--", linewidth=1, label="flat image (no reconstruction)")
            low, high = min(low, ref), max(high, ref)
        if result.get("pixels"):
            ref = mean_std([r[f"rho_{band}"] for r in result["pixels"].values()])[0]
            ax.axhline(ref, color="grey", linestyle=":", linewidth=1.5, label="no encoder (raw patch pixels)")
            low, high = min(low, ref), max(high, ref)
            if band == "high":
                ax.legend(fontsize=7, loc="lower right")
        pad = max(0.15 * (high - low), 2e-4)
        ax.set_ylim(low - pad, min(1.0, high + pad))  # zoomed: the bands differ in the 3rd / 4th decimal
        ax.set_xticks(range(len(variants)), [LABELS[v] for v in variants], rotation=20)
        ax.set_title(f"rho_{band} (higher is better)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    seeds = len(next(iter(result["runs"].values())))
    fig.suptitle(
        f"Frozen encoder + fresh ConvDecoder, held-out images (mean +- std over {seeds} decoder seeds)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def examples(work_dir: Path, variants: list[str], path: Path) -> None:
    """A held-out image (a fundus photograph when there is one), each method's reconstruction (decoder seed 0, as
    cached by the probe) and the high band ``O_high`` of each, on one grey scale."""
    import torch
    from frepa_eval import image_grid, probe_images

    from frepa_monai.frequency import filter_bank
    from frepa_monai.metrics import band_filters

    data = probe_images()
    names = data["test_names"]
    index = next((i for i, n in enumerate(names) if n.lower().endswith((".jpg", ".png"))), 0)
    images = [data["test"][0][index]]
    for variant in variants:
        images.append(torch.load(work_dir / "probe" / f"{variant}_seed0.pt")[index])
    stack = torch.stack(images)
    high = filter_bank(stack, [band_filters(tuple(stack.shape[2:]))["high"]])[0].mean(dim=1)
    scale = 4 * float(high[0].abs().amax()) or 1.0
    image_grid(
        path,
        [list(stack), [0.5 + h / scale for h in high]],
        ["image", "high band"],
        ["held-out image"] + [LABELS[v] for v in variants],
        f"{names[index]}: reconstruction from frozen features (decoder seed 0)",
    )


def main(argv: list[str] | None = None) -> dict:
    from frepa_eval import probe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--methods", nargs="+", choices=list(VARIANTS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="decoder seeds")
    parser.add_argument("--probe_epochs", type=int, default=PROBE_EPOCHS, help="decoder training epochs")
    parser.add_argument("--no_examples", action="store_true", help="skip frequency_examples.png")
    parser.add_argument(
        "--no_pixels", action="store_true", help="skip the no-encoder reference (the probe on raw patch pixels)"
    )
    args = parser.parse_args(argv)
    work_dir = Path(args.work_dir).resolve()

    runs = {
        variant: {str(s): probe(work_dir, variant, s, args.pretrain_epochs, args.probe_epochs) for s in args.seeds}
        for variant in args.methods
    }
    pixels = {}
    if not args.no_pixels:
        pixels = {str(s): probe(work_dir, "pixels", s, args.pretrain_epochs, args.probe_epochs) for s in args.seeds}
    result = {
        "pretrain_epochs": args.pretrain_epochs,
        "probe_epochs": args.probe_epochs,
        "seeds": args.seeds,
        "reference": flat_reference(),
        "pixels": {s: summary(r) for s, r in pixels.items()},
        "runs": {v: {s: summary(r) for s, r in by_seed.items()} for v, by_seed in runs.items()},
    }
    write_report(work_dir / "frequency", markdown(result), result)
    bar_chart(result, work_dir / "frequency.png")
    if not args.no_examples and 0 in args.seeds:
        shown = args.methods + ([] if args.no_pixels else ["pixels"])
        examples(work_dir, shown, work_dir / "frequency_examples.png")
    print(f"written: {work_dir / 'frequency.png'}", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
