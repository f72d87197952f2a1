#!/usr/bin/env python
"""Robustness to losing the low frequencies: the paper's Fig. 1a protocol (spec section 5).

For every method (default Frepa, MAE, MFM and a random encoder, pretrained with one budget as in
``frepa_eval.py``) the ``frepa_classification_2d`` bundle trains its frozen-encoder classifier on the raw images
(CPU preset, tumour-present classification of CT / MR slices), once per cross-validation fold (default all 5:
each subject is the test split once, so every one of the 44 slices is tested once). The test slices are then
passed through a Gaussian high-pass filter ``H(d) = 1 - exp(-d^2 / d_c^2)``, ``d_c = cutoff_ratio * 128``, with a
growing cut-off (``frepa_monai.transforms.GaussianHighPass``: applied after the bundle's intensity scaling and
resizing, before the Hessian channel is computed from the filtered image; the image mean is kept), and the
accuracy of the argmax class is measured at every cut-off; cut-off 0 is the raw image.

The accuracy is pooled over the folds' test slices (+- the standard deviation of the per-fold accuracies) and
compared with always answering the majority class; the AUC of the tumour probability is averaged over the folds,
so that a classifier that ranks the slices but sits on one side of the threshold still shows. Writes
``<work_dir>/highpass.md`` / ``.json``, ``highpass.png`` (accuracy and AUC against the cut-off, one line per
method) and ``highpass_examples.png`` (a test slice at every cut-off).

Example::

    python tools/evaluate_highpass.py --work_dir eval/harness
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from frepa_eval import LABELS, METHODS, VARIANTS, add_common_arguments, encoder_path, mean_std, pyplot
from run_folds import REPO, run_workflow, write_report

BUNDLE = REPO / "bundles" / "frepa_classification_2d"
CUTOFFS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


def train_classifier(root: Path, encoder: Path, fold: int, epochs: int | None) -> dict:
    """Train the classification bundle on ``fold`` with ``encoder`` in ``root`` (skipped when done before);
    return the config overrides that rebuild the trained network."""
    override = {
        "preset": "cpu",
        "seed": 0,
        "fold": fold,
        "mlflow": False,
        "run_name": root.name,
        "encoder": "pretrained",
        "encoder_checkpoint": str(encoder),
        "bundle_root": str(root),
        **({"cpu_settings#max_epochs": int(epochs)} if epochs else {}),
    }
    done = root / "trained.json"
    if not done.is_file() or json.loads(done.read_text()) != override:
        root.mkdir(parents=True, exist_ok=True)
        print(f"=== classifier in {root}", flush=True)
        run_workflow(BUNDLE, ["train.json"], "train", override)
        done.write_text(json.dumps(override, indent=2) + "\n")
    return override


def highpass_predictions(override: dict, cutoffs: list[float]) -> dict:
    """Predicted and true classes of the fold's test slices at every cut-off, with the trained ``models/model.pt``.

    Returns ``{"labels": [...], "names": [...], "pred": {cutoff: [class, ...]}, "prob": {cutoff: [p(tumour), ...]},
    "examples": {cutoff: the first slice}}``.
    """
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from frepa_monai.transforms import GaussianHighPass

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    parser.update(override)
    network = parser.get_parsed_content("network")
    weights = Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    prepare = Compose(parser.get_parsed_content("preprocessing"))
    encoder_input = Compose(parser.get_parsed_content("encoder_input"))
    items = [prepare(dict(item)) for item in parser.get_parsed_content("test_datalist")]
    out = {
        "labels": [int(item["label"]) for item in items],
        "names": [Path(str(item["image"].meta["filename_or_obj"])).name for item in items],
        "pred": {},
        "prob": {},
        "examples": {},
    }
    for cutoff in cutoffs:
        images = [item["image"].as_tensor() for item in items]
        if cutoff > 0:
            images = [GaussianHighPass(cutoff)(x) for x in images]
        out["examples"][cutoff] = images[0]
        batch = torch.stack([encoder_input({"image": x})["image"] for x in images])
        with torch.no_grad():
            prob = torch.softmax(network(batch), dim=1)
        out["pred"][cutoff] = prob.argmax(dim=1).tolist()
        out["prob"][cutoff] = prob[:, 1].tolist()
    return out


def markdown(result: dict, metric: str = "accuracy") -> str:
    """Table of ``result[metric]`` (``"accuracy"`` or ``"auc"``): one row per method, one column per cut-off."""
    cutoffs = result["cutoffs"]
    lines = [
        "| method | " + " | ".join("raw" if c == 0 else f"d_c = {c:g}" for c in cutoffs) + " |",
        "|---" * (len(cutoffs) + 1) + "|",
    ]
    for variant, by_cutoff in result[metric].items():
        cells = []
        for c in cutoffs:
            s = by_cutoff[str(c)]
            cells.append(f"{s['value']:.3f}" + (f" +- {s['fold_std']:.3f}" if s["fold_std"] is not None else ""))
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
    if metric == "accuracy":
        chance = f"{result['majority']:.3f}"
        lines.append("| *reference: always the majority class* | " + " | ".join([chance] * len(cutoffs)) + " |")
    return "\n".join(lines) + "\n"


def line_plot(result: dict, path: Path) -> None:
    """Accuracy and AUC against the cut-off, one line per method; dashed: majority class / chance."""
    plt = pyplot()
    cutoffs = result["cutoffs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, chance in zip(axes, ("accuracy", "auc"), (result["majority"], 0.5)):
        for variant, by_cutoff in result[metric].items():
            values = [by_cutoff[str(c)]["value"] for c in cutoffs]
            ax.plot(range(len(cutoffs)), values, marker="o", label=LABELS[variant])
        ax.axhline(
            chance,
            color="black",
            linestyle="--",
            linewidth=1,
            label="majority class" if metric == "accuracy" else "chance",
        )
        ax.set_xticks(range(len(cutoffs)), ["raw"] + [f"{c:g}" for c in cutoffs[1:]])
        ax.set_xlabel("high-pass cut-off d_c / image size")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"accuracy (pooled, {result['n_slices']} test slices)")
    axes[1].set_ylabel("AUC (mean over folds)")
    fig.suptitle("Frozen-encoder classifier on high-pass filtered test slices", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scores(folds: list[dict], cutoff: float) -> tuple[dict, dict]:
    """Accuracy pooled over the folds' test slices and AUC averaged over the folds (folds holding both classes),
    each with the standard deviation over folds."""
    import torch
    from monai.metrics import compute_roc_auc

    hits = [[p == t for p, t in zip(f["pred"][cutoff], f["labels"])] for f in folds]
    per_fold_acc = [sum(h) / len(h) for h in hits if h]
    n = sum(len(h) for h in hits)
    per_fold_auc = [
        float(compute_roc_auc(torch.tensor(f["prob"][cutoff]), torch.tensor(f["labels"])))
        for f in folds
        if len(set(f["labels"])) == 2
    ]
    accuracy = {
        "value": sum(map(sum, hits)) / max(n, 1),
        "fold_std": mean_std(per_fold_acc)[1],
        "per_fold": per_fold_acc,
    }
    auc = (
        {"value": mean_std(per_fold_auc)[0], "fold_std": mean_std(per_fold_auc)[1], "per_fold": per_fold_auc}
        if per_fold_auc
        else {"value": float("nan"), "fold_std": None, "per_fold": []}
    )
    return accuracy, auc


def main(argv: list[str] | None = None) -> dict:
    from frepa_eval import image_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--methods", nargs="+", choices=list(VARIANTS), default=list(METHODS))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="cross-validation folds")
    parser.add_argument("--cutoffs", nargs="+", type=float, default=list(CUTOFFS), help="d_c / size; 0 = raw")
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: the CPU preset's)")
    args = parser.parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    cutoffs = sorted(set(args.cutoffs))

    accuracy, auc, examples, labels = {}, {}, None, []
    for variant in args.methods:
        encoder = encoder_path(work_dir, variant, args.pretrain_epochs)
        folds = []
        for fold in args.folds:
            override = train_classifier(work_dir / "highpass" / f"{variant}_fold{fold}", encoder, fold, args.epochs)
            folds.append(highpass_predictions(override, cutoffs))
        labels = [t for f in folds for t in f["labels"]]
        accuracy[variant], auc[variant] = {}, {}
        for c in cutoffs:
            accuracy[variant][str(c)], auc[variant][str(c)] = scores(folds, c)
        examples = examples or (folds[0]["names"][0], folds[0]["examples"])
    result = {
        "pretrain_epochs": args.pretrain_epochs,
        "folds": args.folds,
        "cutoffs": cutoffs,
        "n_slices": len(labels),
        "majority": max(labels.count(0), labels.count(1)) / max(len(labels), 1),
        "accuracy": accuracy,
        "auc": auc,
    }
    text = "Accuracy:\n\n" + markdown(result) + "\nAUC:\n\n" + markdown(result, "auc")
    write_report(work_dir / "highpass", text, result)
    line_plot(result, work_dir / "highpass.png")
    name, images = examples
    shown = []
    for c in cutoffs:  # the first channel, min-max scaled for display
        x = images[c][0]
        shown.append((x - x.min()) / (x.max() - x.min()).clamp_min(1e-8))
    titles = ["raw"] + [f"d_c = {c:g}" for c in cutoffs[1:]]
    image_grid(work_dir / "highpass_examples.png", [shown], [name], titles, "High-pass filtered test slice")
    print(f"written: {work_dir / 'highpass.png'}, {work_dir / 'highpass_examples.png'}", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
