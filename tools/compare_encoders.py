#!/usr/bin/env python
"""Compare encoders on the downstream bundles: the same bundle, data, head and budget with a pretrained (Frepa)
encoder, a random frozen encoder of the same architecture, and no encoder.

For every bundle, encoder mode (``pretrained``, ``random``, ``none``) and seed, the bundle's ``train.json`` runs
in ``<work_dir>/<bundle>/<encoder>_seed<s>`` and ``train.json`` + ``evaluate.json`` scores the test split
(:func:`run_folds.train_and_evaluate`). The test metrics are printed and written to ``<work_dir>/comparison.md``
and ``comparison.json``: per bundle and metric, the mean (and sample standard deviation over seeds when there
are several) of each encoder mode, and the difference pretrained - random.

The pretrained encoder is each bundle's default ``encoder_checkpoint`` (``models/encoder.pt`` of
``frepa_pretrain_2d`` / ``frepa_pretrain_3d``: run those first) unless ``--set encoder_checkpoint=<file>`` names
another, e.g. an MAE encoder from ``--strategy_name mae``. An existing run folder resumes from its newest
checkpoint; use a new ``--work_dir`` to start afresh.

Example (every downstream bundle with its CPU preset, Frepa against random)::

    python tools/compare_encoders.py --set preset=cpu --work_dir eval/compare
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from run_folds import ENCODER_MODES, _fmt, add_overrides_argument, bundle_path, summarise, write_report

DOWNSTREAM = (
    "frepa_vessel_segmentation_2d",
    "frepa_segmentation_3d",
    "frepa_classification_2d",
    "frepa_classification_3d",
    "frepa_detection_2d",
    "frepa_detection_3d",
    "frepa_transfer_2d_to_3d",
)


def markdown(result: dict) -> str:
    modes = result["encoders"]
    lines = [
        "# Downstream test metrics by encoder",
        "",
        f"- seeds: {', '.join(map(str, result['seeds']))}; overrides: `{json.dumps(result['overrides'])}`",
        "- mean (+- sample standard deviation over seeds); `pretrained - random`: difference of the means",
        "",
        "| bundle | metric | " + " | ".join(modes) + " | pretrained - random |",
        "|---|---" + "|---" * (len(modes) + 1) + "|",
    ]
    for bundle, metrics in result["summary"].items():
        for metric, by_mode in metrics.items():
            cells = []
            for mode in modes:
                s = by_mode.get(mode)
                if s is None:
                    cells.append("")
                else:
                    cells.append(_fmt(s["mean"]) + (f" +- {_fmt(s['std'])}" if s["n"] > 1 else ""))
            p, r = by_mode.get("pretrained"), by_mode.get("random")
            diff = p["mean"] - r["mean"] if p and r and p["mean"] is not None and r["mean"] is not None else None
            lines.append(f"| {bundle} | {metric} | " + " | ".join(cells) + f" | {_fmt(diff)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from run_folds import train_and_evaluate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=list(DOWNSTREAM), help="bundle folders or names")
    parser.add_argument("--encoders", nargs="+", choices=ENCODER_MODES, default=["pretrained", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="the bundles' seed (data split, init)")
    parser.add_argument("--work_dir", default="eval/compare_encoders", help="run folders and the comparison")
    add_overrides_argument(parser)
    args = parser.parse_args(argv)
    overrides = dict(args.overrides)
    work_dir = Path(args.work_dir).resolve()
    runs: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name in args.bundles:
        bundle = bundle_path(name)
        for mode in args.encoders:
            for seed in args.seeds:
                root = work_dir / bundle.name / f"{mode}_seed{seed}"
                root.mkdir(parents=True, exist_ok=True)
                print(f"=== {bundle.name}: encoder {mode}, seed {seed} in {root}", flush=True)
                override = {"run_name": f"{mode}_seed{seed}", **overrides, "encoder": mode, "seed": seed}
                if mode == "pretrained" and "encoder_checkpoint" not in overrides:
                    from monai.bundle import ConfigParser

                    config = ConfigParser()
                    config.read_config(str(bundle / "configs" / "train.json"))
                    config.update({"bundle_root": str(bundle), **overrides})
                    override["encoder_checkpoint"] = str(
                        Path(config.get_parsed_content("encoder_checkpoint")).resolve()
                    )
                metrics = train_and_evaluate(bundle, root, override)
                runs.setdefault(bundle.name, {}).setdefault(mode, {})[str(seed)] = metrics

    summary: dict[str, dict[str, dict[str, dict]]] = {}
    for bundle, by_mode in runs.items():
        names = list(dict.fromkeys(n for seeds in by_mode.values() for m in seeds.values() for n in m))
        summary[bundle] = {
            n: {mode: summarise([m.get(n, math.nan) for m in seeds.values()]) for mode, seeds in by_mode.items()}
            for n in names
        }
    result = {"encoders": args.encoders, "seeds": args.seeds, "overrides": overrides, "runs": runs, "summary": summary}
    write_report(work_dir / "comparison", markdown(result), result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
