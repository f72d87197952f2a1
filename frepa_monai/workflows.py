"""Running bundle workflows in this process, and the runs the command lines of ``tools/`` make of them.

- :func:`run_workflow`, :func:`train_and_evaluate`, :func:`read_metrics`: one bundle workflow (MONAI's
  ``ConfigWorkflow``, as the model zoo's CI runs bundles), train then test;
- :func:`cross_validate` (``tools/run_folds.py``) and :func:`compare_encoders` (``tools/compare_encoders.py``);
- the ``--set key=value`` overrides those command lines share, and their reports.

Workflows run in this process, so MONAI is imported once. Bundles are named by folder, or by name under
:data:`BUNDLES` (this repository's ``bundles/``).
"""

from __future__ import annotations

import argparse
import json
import logging.config
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BUNDLES",
    "DOWNSTREAM",
    "bundle_path",
    "parse_override",
    "add_overrides_argument",
    "parse_folds",
    "read_metrics",
    "summarise",
    "fmt",
    "write_report",
    "run_workflow",
    "train_and_evaluate",
    "cross_validate",
    "compare_encoders",
]

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
"""The bundles of this repository (next to the package in a clone or an editable install)."""
DOWNSTREAM = (
    "frepa_vessel_segmentation_2d",
    "frepa_segmentation_3d",
    "frepa_classification_2d",
    "frepa_classification_3d",
    "frepa_detection_2d",
    "frepa_detection_3d",
    "frepa_transfer_2d_to_3d",
)
"""The downstream bundles :func:`compare_encoders` runs by default."""


def bundle_path(bundle: str | Path) -> Path:
    """A bundle folder given as a path, or as a name under ``bundles/`` of this repository."""
    for candidate in (Path(bundle), BUNDLES / str(bundle)):
        if (candidate / "configs" / "train.json").is_file():
            return candidate.resolve()
    raise SystemExit(f"no bundle '{bundle}': neither it nor {BUNDLES / str(bundle)} holds configs/train.json.")


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


def fmt(value) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def cv_markdown(result: dict) -> str:
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
        lines.append(f"| {fold} | " + " | ".join(fmt(metrics.get(n, math.nan)) for n in names) + " |")
    cells = []
    for n in names:
        s = result["summary"][n]
        cells.append(f"{fmt(s['mean'])} +- {fmt(s['std'])} (n={s['n']})")
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


def cross_validate(
    bundle: str | Path,
    num_folds: int | None = None,
    folds: Sequence[int] | None = None,
    work_dir: str | Path | None = None,
    encoder: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """k-fold cross-validation of a downstream bundle by subject (``tools/run_folds.py``).

    For every fold ``k`` the bundle's ``train.json`` runs with ``fold=k`` in ``<work_dir>/fold_<k>`` (its own
    ``models/`` and ``eval/``; the configs are read from the original bundle), then ``train.json`` +
    ``evaluate.json`` tests the fold's held-out subjects. The encoder checkpoint is resolved once, from the original
    bundle. A fold folder holding checkpoints resumes; a finished fold is only evaluated again. Writes and returns
    the per-fold metrics with their mean, sample standard deviation and count of finite values
    (``<work_dir>/cv_summary.md`` / ``.json``).
    """
    from monai.bundle import ConfigParser

    bundle = bundle_path(bundle)
    configs = bundle / "configs"
    overrides = dict(overrides or {})
    work_dir = Path(work_dir or bundle / "eval" / "folds").resolve()
    if (configs / "logging.conf").is_file():
        logging.config.fileConfig(configs / "logging.conf", disable_existing_loggers=False)

    # settings that must not depend on the fold folder: resolved once against the original bundle
    config = ConfigParser()
    config.read_config(str(configs / "train.json"))
    config.update({"bundle_root": str(bundle), **overrides, **({"encoder": encoder} if encoder else {})})
    if "fold" not in config or (num_folds is None and "num_folds" not in config):
        raise SystemExit(f"{configs / 'train.json'} has no 'fold' / 'num_folds': the bundle does not support k-fold.")
    num_folds = int(num_folds or config.get_parsed_content("num_folds"))
    checkpoint = config.get_parsed_content("encoder_checkpoint") if "encoder_checkpoint" in config else None
    checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
    folds = list(folds) if folds is not None else list(range(num_folds))
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
        if encoder:
            override["encoder"] = encoder
        print(f"=== {bundle.name} fold {k}/{num_folds} in {fold_root}", flush=True)
        per_fold[str(k)] = train_and_evaluate(bundle, fold_root, override)

    names = list(dict.fromkeys(n for metrics in per_fold.values() for n in metrics))
    result = {
        "bundle": bundle.name,
        "bundle_path": str(bundle),
        "encoder": encoder or (config.get_parsed_content("encoder") if "encoder" in config else None),
        "encoder_checkpoint": checkpoint,
        "num_folds": num_folds,
        "folds": folds,
        "overrides": overrides,
        "metrics": names,
        "per_fold": per_fold,
        "summary": {n: summarise([m.get(n, math.nan) for m in per_fold.values()]) for n in names},
    }
    write_report(work_dir / "cv_summary", cv_markdown(result), result)
    return result


def comparison_markdown(result: dict) -> str:
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
                    cells.append(fmt(s["mean"]) + (f" +- {fmt(s['std'])}" if s["n"] > 1 else ""))
            p, r = by_mode.get("pretrained"), by_mode.get("random")
            diff = p["mean"] - r["mean"] if p and r and p["mean"] is not None and r["mean"] is not None else None
            lines.append(f"| {bundle} | {metric} | " + " | ".join(cells) + f" | {fmt(diff)} |")
    return "\n".join(lines) + "\n"


def compare_encoders(
    bundles: Sequence[str | Path] = DOWNSTREAM,
    encoders: Sequence[str] = ("pretrained", "random"),
    seeds: Sequence[int] = (0,),
    work_dir: str | Path = "eval/compare_encoders",
    overrides: dict | None = None,
) -> dict:
    """Every downstream bundle with each encoder mode and seed, same budget, test metrics side by side
    (``tools/compare_encoders.py``): one run folder per mode and seed, ``<work_dir>/comparison.md`` / ``.json``."""
    overrides = dict(overrides or {})
    work_dir = Path(work_dir).resolve()
    runs: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name in bundles:
        bundle = bundle_path(name)
        for mode in encoders:
            for seed in seeds:
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
    result = {
        "encoders": list(encoders),
        "seeds": list(seeds),
        "overrides": overrides,
        "runs": runs,
        "summary": summary,
    }
    write_report(work_dir / "comparison", comparison_markdown(result), result)
    return result
