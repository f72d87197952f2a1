#!/usr/bin/env python
"""k-fold cross-validation of a downstream bundle (classification, detection, ...) by subject.

For every fold ``k`` the bundle's ``configs/train.json`` runs with ``fold=k`` in its own ``bundle_root``
(``<work_dir>/fold_<k>``: ``models/`` and ``eval/`` of that fold; the configs are read from the original bundle),
then ``train.json`` + ``evaluate.json`` evaluates the fold's test split (the fold's held-out subjects) with its
``models/model.pt``. Every metric of each fold's ``eval/metrics.csv`` is collected, and the per-fold values and
their mean +- standard deviation are printed and written to ``<work_dir>/cv_summary.md`` and
``<work_dir>/cv_summary.json``.

The encoder checkpoint is resolved once, from the original bundle (its ``encoder_checkpoint``, by default the
pretraining bundle's ``models/encoder.pt``), and passed to every fold explicitly. Workflows run in this process
(``monai.bundle.ConfigWorkflow``), so MONAI is imported once. A fold folder that already holds checkpoints
resumes from its newest one (``train.json``'s behaviour); a finished fold is then only evaluated again. Use a
new ``--work_dir`` to start afresh.

Examples::

    python tools/run_folds.py --bundle frepa_classification_2d --set preset=cpu
    python tools/run_folds.py --bundle bundles/frepa_detection_3d --encoder random --folds 0 \\
        --set preset=cpu --set cpu_settings#max_epochs=2 --work_dir /tmp/cv_det3d

The standard deviation is the sample standard deviation (``ddof=1``) over the folds whose value is finite; a
metric that is NaN in some folds (e.g. AUC on a test fold holding one class only, precision without positive
predictions) is summarised over the others and ``n`` says over how many.
"""

from __future__ import annotations

import argparse
import json
import logging.config
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENCODER_MODES = ("pretrained", "random", "none")  # frepa_monai.networks.ENCODER_MODES (not imported: fast --help)


def bundle_path(bundle: str) -> Path:
    """A bundle folder given as a path, or as a name under ``bundles/`` of this repository."""
    for candidate in (Path(bundle), REPO / "bundles" / bundle):
        if (candidate / "configs" / "train.json").is_file():
            return candidate.resolve()
    raise SystemExit(f"no bundle '{bundle}': neither it nor {REPO / 'bundles' / bundle} holds configs/train.json.")


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` -> ``(key, value)``; the value is read as JSON when it is JSON (``2``, ``[32,32]``, ``false``),
    else kept as a string (``cpu``, ``$@datalist['training'][:8]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}.")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE``, repeatable, into ``args.overrides``: ``(key, value)`` pairs (see :func:`parse_override`)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every workflow, repeatable: --set preset=cpu --set cpu_settings#max_epochs=2",
    )


def parse_folds(text: str) -> list[int]:
    try:
        folds = [int(f) for f in text.split(",") if f.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--folds expects comma-separated integers, got {text!r}.") from e
    if not folds:
        raise argparse.ArgumentTypeError("--folds names no fold.")
    return folds


def read_metrics(path: Path) -> dict[str, float]:
    """``name,value`` (or tab-separated) lines of a ``MetricsSaver`` ``metrics.csv``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} was not written: the bundle's evaluate.json must save metrics.csv there.")
    metrics = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, value = line.replace("\t", ",").rsplit(",", 1)
            metrics[name.strip()] = float(value)
    return metrics


def summarise(values: list[float]) -> dict:
    """Mean, sample standard deviation and count of the finite values (None where undefined)."""
    finite = [v for v in values if math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
    }


def _fmt(value) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def markdown(result: dict) -> str:
    names = result["metrics"]
    lines = [
        f"# Cross-validation of {result['bundle']}",
        "",
        f"- encoder: `{result['encoder']}`, checkpoint `{result['encoder_checkpoint']}`",
        f"- folds: {', '.join(map(str, result['folds']))} of {result['num_folds']} (test split = the fold's subjects)",
        f"- overrides: `{json.dumps(result['overrides'])}`" if result["overrides"] else "- overrides: none",
        "- mean +- sample standard deviation over the folds with a finite value (n)",
        "",
        "| fold | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for fold, metrics in result["per_fold"].items():
        lines.append(f"| {fold} | " + " | ".join(_fmt(metrics.get(n, math.nan)) for n in names) + " |")
    cells = []
    for n in names:
        s = result["summary"][n]
        cells.append(f"{_fmt(s['mean'])} +- {_fmt(s['std'])} (n={s['n']})")
    lines.append("| mean +- std | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(stem: Path, text: str, result: dict) -> None:
    """Write ``text`` to ``<stem>.md`` and ``result`` to ``<stem>.json`` (NaN as null), print both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    print(text)
    print(f"written: {stem.with_suffix('.md')}, {stem.with_suffix('.json')}")


def run_workflow(bundle: Path, config_names: list[str], kind: str, override: dict) -> None:
    """Run one workflow of ``bundle`` in this process: ``config_names`` (e.g. ``["train.json", "evaluate.json"]``,
    merged in order) from its ``configs/``, ``kind`` ``"train"`` or ``"eval"``, with the config ``override``."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    files = [str(configs / name) for name in config_names]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type=kind,
        **override,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def train_and_evaluate(bundle: Path, root: Path, override: dict) -> dict[str, float]:
    """Run ``bundle``'s train.json, then train.json + evaluate.json, in this process with ``bundle_root=root`` and
    ``override``; return the test metrics that evaluate.json wrote to ``root/eval/metrics.csv``."""
    override = {**override, "bundle_root": str(root)}
    run_workflow(bundle, ["train.json"], "train", override)
    if not (root / "models" / "model.pt").is_file():
        raise SystemExit(
            f"training wrote no {root / 'models' / 'model.pt'}: no validation ran "
            "(val_interval larger than max_epochs?); set e.g. --set cpu_settings#val_interval=1."
        )
    run_workflow(bundle, ["train.json", "evaluate.json"], "eval", override)
    return read_metrics(root / "eval" / "metrics.csv")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle folder, or its name under bundles/")
    parser.add_argument("--num_folds", type=int, default=None, help="default: the bundle's num_folds")
    parser.add_argument("--folds", type=parse_folds, default=None, help="subset of folds, e.g. 0,2 (default: all)")
    parser.add_argument("--work_dir", default=None, help="fold folders and summary (default: <bundle>/eval/folds)")
    parser.add_argument("--encoder", choices=ENCODER_MODES, default=None, help="default: the bundle's (pretrained)")
    add_overrides_argument(parser)
    args = parser.parse_args(argv)

    from monai.bundle import ConfigParser

    bundle = bundle_path(args.bundle)
    configs = bundle / "configs"
    overrides = dict(args.overrides)
    work_dir = Path(args.work_dir or bundle / "eval" / "folds").resolve()
    if (configs / "logging.conf").is_file():
        logging.config.fileConfig(configs / "logging.conf", disable_existing_loggers=False)

    # settings that must not depend on the fold folder: resolved once against the original bundle
    config = ConfigParser()
    config.read_config(str(configs / "train.json"))
    config.update({"bundle_root": str(bundle), **overrides, **({"encoder": args.encoder} if args.encoder else {})})
    if "fold" not in config or (args.num_folds is None and "num_folds" not in config):
        raise SystemExit(f"{configs / 'train.json'} has no 'fold' / 'num_folds': the bundle does not support k-fold.")
    num_folds = int(args.num_folds or config.get_parsed_content("num_folds"))
    checkpoint = config.get_parsed_content("encoder_checkpoint") if "encoder_checkpoint" in config else None
    checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
    folds = args.folds if args.folds is not None else list(range(num_folds))
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise SystemExit(f"folds {bad} outside 0..{num_folds - 1} (num_folds={num_folds}).")
    work_dir.mkdir(parents=True, exist_ok=True)

    per_fold: dict[str, dict[str, float]] = {}
    for k in folds:
        fold_root = work_dir / f"fold_{k}"
        fold_root.mkdir(parents=True, exist_ok=True)
        override = {"run_name": f"fold_{k}", **overrides, "bundle_root": str(fold_root)}
        override.update({"fold": k, "num_folds": num_folds})
        if "encoder_checkpoint" in config:
            override["encoder_checkpoint"] = checkpoint
        if args.encoder:
            override["encoder"] = args.encoder
        print(f"=== {bundle.name} fold {k}/{num_folds} in {fold_root}", flush=True)
        per_fold[str(k)] = train_and_evaluate(bundle, fold_root, override)

    names = list(dict.fromkeys(n for metrics in per_fold.values() for n in metrics))
    result = {
        "bundle": bundle.name,
        "bundle_path": str(bundle),
        "encoder": args.encoder or (config.get_parsed_content("encoder") if "encoder" in config else None),
        "encoder_checkpoint": checkpoint,
        "num_folds": num_folds,
        "folds": folds,
        "overrides": overrides,
        "metrics": names,
        "per_fold": per_fold,
        "summary": {n: summarise([m.get(n, math.nan) for m in per_fold.values()]) for n in names},
    }
    write_report(work_dir / "cv_summary", markdown(result), result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
