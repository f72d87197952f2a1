"""Statistics, figures and the Markdown report of the Frepa study (``tools/reproduce.py``).

The claims, their metrics and the smallest effects of interest are fixed here, in code, before the study runs;
the report states them before any number.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from pathlib import Path

import numpy as np

from frepa_monai.bootstrap import BETTER, NOT_WORSE, hierarchical_bootstrap, verdict
from frepa_monai.study import protocol, runs
from frepa_monai.study.figures import draw_all

E2E = ("frepa", "mae", "mfm", "random")
"""Variants that also get the vessel bundle's trained head (the end-to-end number)."""
DELTA = 0.02
"""The smallest effect of interest, on every metric (band R^2 and Dice are both fractions of 1)."""
METRICS = {
    "band_low": "band R^2, low",
    "band_mid": "band R^2, mid",
    "band_high": "band R^2, high",
    "vessel": "vessel probe Dice",
    "highpass": "vessel probe Dice, high-pass filtered (mean over cut-offs)",
    "e2e": "trained-head vessel Dice (end to end)",
}
CLAIMS = [
    # (source in the paper, what it says, metric, a, b, kind)
    *[("Fig. 7b", "mid band: Frepa above", "band_mid", "frepa", b, BETTER) for b in ("mae", "mfm")],
    *[("Fig. 7b", "high band: Frepa above", "band_high", "frepa", b, BETTER) for b in ("mae", "mfm")],
    *[("Fig. 7b", "low band: Frepa comparable", "band_low", "frepa", b, NOT_WORSE) for b in ("mae", "mfm")],
    *[("Fig. 1b, CHASE_DB1", "fine vessels: Frepa above", "vessel", "frepa", b, BETTER) for b in ("mae", "mfm")],
    *[("Fig. 1a", "high-pass robustness: Frepa above", "highpass", "frepa", b, BETTER) for b in ("mae", "mfm")],
    *[
        ("Table 9", f"every component helps: Frepa above {protocol.LABELS[v]}", m, "frepa", v, BETTER)
        for v in protocol.ABLATIONS
        for m in ("band_high", "vessel")
    ],
    *[("(pretraining)", "Frepa above a random encoder", m, "frepa", "random", BETTER) for m in ("band_mid", "vessel")],
    *[
        ("(this project)", "scaled sizes above the literal ones", m, "frepa", "frepa_literal", BETTER)
        for m in ("band_mid", "band_high", "vessel")
    ],
    *[
        ("Fig. 1b, end to end", "trained head: Frepa above", "e2e", "frepa", b, BETTER)
        for b in ("mae", "mfm", "random")
    ],
]


def tables(scores: dict, e2e: dict) -> dict[str, tuple[dict[str, np.ndarray], list[str]]]:
    """metric -> (variant -> ``(seeds, images)`` scores, subject of each image)."""
    out: dict[str, tuple[dict, list]] = {}
    by_variant: dict[str, list[dict]] = {}
    for (variant, _), result in sorted(scores.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        by_variant.setdefault(variant, []).append(result)
    test_subjects = protocol.study_split()["test"]
    band_subjects = [i["subject"] for i in test_subjects]
    vessel_subjects = next(iter(scores.values()))["vessel"]["groups"]
    for band in ("low", "mid", "high"):
        out[f"band_{band}"] = (
            {v: np.array([r["band"]["per_image"][band] for r in rs]) for v, rs in by_variant.items() if rs[0]["band"]},
            band_subjects,
        )
    out["vessel"] = (
        {v: np.array([r["vessel"]["per_image"]["raw"] for r in rs]) for v, rs in by_variant.items()},
        vessel_subjects,
    )
    out["highpass"] = (
        {
            v: np.array(
                [np.mean([r["vessel"]["per_image"][str(c)] for c in protocol.HIGHPASS_CUTOFFS], axis=0) for r in rs]
            )
            for v, rs in by_variant.items()
            if "highpass" in rs[0]["vessel"]
        },
        vessel_subjects,
    )
    if e2e:
        names = sorted(next(iter(e2e.values()))["per_image"])
        children = {Path(i["image"]).name: i["subject"] for s in protocol.e2e_split().values() for i in s}
        runs: dict[str, list] = {}
        for (variant, _), result in sorted(e2e.items()):
            runs.setdefault(variant, []).append([result["per_image"][n] for n in names])
        out["e2e"] = ({v: np.array(r) for v, r in runs.items()}, [children[n] for n in names])
    return out


def analyse(scores: dict, e2e: dict) -> dict:
    """Bootstrap summaries per metric and the verdict of every claim."""
    result = {"metrics": {}, "claims": []}
    for metric, (values, subjects) in tables(scores, e2e).items():
        pairs = sorted({(a, b) for _, _, m, a, b, _ in CLAIMS if m == metric and a in values and b in values})
        result["metrics"][metric] = hierarchical_bootstrap(values, subjects, pairs)
    for source, text, metric, a, b, kind in CLAIMS:
        diff = result["metrics"].get(metric, {}).get("differences", {}).get((a, b))
        if diff is None:
            continue
        word = verdict(diff["low"], diff["high"], DELTA, kind)
        result["claims"].append(
            {"source": source, "text": text, "metric": metric, "a": a, "b": b, "kind": kind, **diff, "verdict": word}
        )
    return result


def summary(analysis: dict) -> str:
    """One paragraph: how many claims came out each way, and what the verdicts can and cannot say."""
    counts = {w: sum(c["verdict"] == w for c in analysis["claims"]) for w in ("confirmed", "refuted", "inconclusive")}
    paper = [c for c in analysis["claims"] if not c["source"].startswith("(")]
    confirmed = sorted(
        {f"{c['source']} ({c['text']}, vs {_label(c['b'])})" for c in paper if c["verdict"] == "confirmed"}
    )
    return (
        f"Of {len(analysis['claims'])} comparisons, {counts['confirmed']} are confirmed, {counts['refuted']} refuted "
        f"and {counts['inconclusive']} inconclusive at this scale. Paper claims confirmed here: "
        + ("; ".join(confirmed) if confirmed else "none")
        + ". A refuted claim means that an advantage of the smallest effect of interest is excluded for encoders "
        "pretrained with this budget on this data, not that the paper is wrong at its own scale."
    )


def _ci(interval: dict, digits: int = 3) -> str:
    return f"{interval['estimate']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def _label(variant: str) -> str:
    return protocol.LABELS.get(variant, variant)


def claims_table(analysis: dict) -> list[str]:
    lines = [
        "| paper | claim | metric | comparison | difference [95% CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in analysis["claims"]:
        lines.append(
            f"| {c['source']} | {c['text']} | {METRICS[c['metric']]} | {_label(c['a'])} - {_label(c['b'])} "
            f"| {_ci(c)} | **{c['verdict']}** |"
        )
    return lines


def method_table(analysis: dict, metrics: list[str], variants: list[str]) -> list[str]:
    lines = ["| encoder | " + " | ".join(METRICS[m] for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for v in variants:
        cells = []
        for m in metrics:
            s = analysis["metrics"].get(m, {}).get("methods", {}).get(v)
            cells.append("" if s is None else _ci(s) + (f" (n={s['seeds']})" if s["seeds"] > 1 else ""))
        lines.append(f"| {_label(v)} | " + " | ".join(cells) + " |")
    return lines


def write(output: Path, work_dir: Path, preset: protocol.Preset, results: dict) -> None:
    """Analyse the cached results and write the report with its figures (in ``<output stem>/``)."""
    analysis = analyse(results["scores"], results["e2e"])
    figures = output.parent / output.stem
    figures.mkdir(parents=True, exist_ok=True)
    names = draw_all(figures, work_dir, preset, results, analysis, DELTA)
    rel = output.stem
    split = protocol.study_split()
    test_subjects = sorted({i["subject"] for i in split["test"]})
    children = sorted(set(next(iter(results["scores"].values()))["vessel"]["groups"]))
    pretrain_cost = {}
    for variant, seed in {k for k in results["scores"] if k[1] is not None}:
        seconds = runs.pretrain_seconds(work_dir, variant, seed)
        if seconds and variant != "random":
            pretrain_cost.setdefault(variant, []).append(seconds["cpu"])
    reference = analysis["metrics"]
    pixels = {b: reference[f"band_{b}"]["methods"]["pixels"]["estimate"] for b in ("low", "mid", "high")}
    checks_ok = all(v >= 0.85 for v in pixels.values())
    part_seconds = {
        "pretraining": sum(
            (runs.pretrain_seconds(work_dir, v, s) or {"wall": 0})["wall"]
            for v, s in results["scores"]
            if s is not None
        ),
        "probes": sum(r["seconds"] for r in results["scores"].values()),
        "end-to-end": sum(r["seconds"] for r in results["e2e"].values()),
    }
    lines = [
        "# Results: does Frepa keep high frequencies better, at the scale that runs here?",
        "",
        f"Generated by `python tools/reproduce.py{'' if preset.name == 'cpu' else ' --preset ' + preset.name}` "
        "(do not edit by hand: rerun it). Every number below comes from that run.",
        "",
        "## Decision rule (fixed before the run)",
        f"- Each claim of the paper is a comparison `a - b` of two encoders on one metric. The smallest effect of "
        f"interest is **{DELTA}** on every metric (band R^2 and Dice are fractions of 1; the paper reports Frepa "
        "about 10 Dice points above MAE on CHASE_DB1).",
        "- Interval: 95% percentile interval of a hierarchical bootstrap (4000 replicates) that resamples the "
        "pretraining seeds of each encoder, the test subjects, and the images within each subject; the pretraining "
        "seed is the unit of replication.",
        f"- *a above b* is **confirmed** when the interval lies above 0 and does not lie wholly below {DELTA}, "
        f"**refuted** when it lies wholly below {DELTA} (an advantage as large as the smallest effect of interest is "
        "excluded, even if a smaller one exists), **inconclusive** otherwise.",
        f"- *a comparable to b* (not worse) is **confirmed** when the interval lies above -{DELTA}, **refuted** when "
        f"it lies wholly below -{DELTA}, **inconclusive** otherwise.",
        "- Verdicts hold at this scale only; they say nothing about the paper's 17 million images and ViT-B.",
        "",
        "## Verdicts",
        *claims_table(analysis),
        "",
        summary(analysis),
        "",
        "GPU study: "
        + (
            "[results_gpu.md](results_gpu.md) (`--preset gpu`)."
            if (output.parent / "results_gpu.md").is_file() and preset.name == "cpu"
            else "prepared (`python tools/reproduce.py --preset gpu`, ViT-S at 256 px with AMP), not run yet: no GPU "
            "has been available to this project."
            if preset.name == "cpu"
            else "this page."
        ),
        "",
        "## Probe self-checks",
        f"- Band probe on the raw pixels of each {_stride(preset)} x {_stride(preset)} patch (no encoder): R^2 low "
        f"{pixels['low']:.3f}, mid "
        f"{pixels['mid']:.3f}, high {pixels['high']:.3f}: "
        + ("**passes** (>= 0.85 in every band: the probe can see every band)." if checks_ok else "**fails** (< 0.85)."),
        "- A flat image (each image's mean) scores R^2 0 in every band by construction: "
        + ", ".join(f"{reference[f'band_{b}']['methods']['flat']['estimate']:.3f}" for b in ("low", "mid", "high"))
        + ".",
        f"- Vessel probe references: raw pixels + Hessian channel {_ci(reference['vessel']['methods']['pixels'])}, "
        f"Hessian filter with a threshold {_ci(reference['vessel']['methods']['frangi'])}, every pixel of the field of "
        f"view called vessel (a flat image) {_ci(reference['vessel']['methods']['flat'])}.",
        *e2e_check(analysis),
        "",
        "## Setup",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"{_device()}; run on {datetime.date.today().isoformat()}.",
        f"- Pretraining: `bundles/frepa_pretrain_2d`, `{preset.encoder}` at {preset.image_size} x {preset.image_size} "
        f"(image + Hessian channel for every method), batch {preset.batch_size}, {preset.epochs} epochs = "
        f"**{protocol.steps_per_run(preset)} optimizer steps** for every run, Adam lr {preset.learning_rate}"
        f"{', AMP' if preset.amp else ''}; {len(split['pretrain'])} images of "
        f"{len({i['subject'] for i in split['pretrain']})} subjects (the pretraining half).",
        f"- Seeds: {preset.seeds} pretraining seeds for Frepa (scaled sizes), Frepa (literal sizes), MAE and MFM, "
        f"{preset.seeds} random initialisations, {preset.ablation_seeds} seeds per ablation.",
        "- CPU seconds per pretraining run (mean): "
        + ", ".join(f"{_label(v)} {statistics.fmean(c):.0f} s" for v, c in sorted(pretrain_cost.items()))
        + ".",
        f"- Band probe: ridge readout of each token's {preset.neighbourhood} x {preset.neighbourhood} neighbourhood of "
        f"features into its {_stride(preset)} x {_stride(preset)} x 3 pixels, fitted "
        f"on the {len(split['pretrain'])} pretraining images, scored on {len(split['test'])} held-out images of "
        f"{len(test_subjects)} subjects ({', '.join(test_subjects)}).",
        f"- Vessel probe: ridge readout onto the vessel mask, leave-one-child-out over the {len(children)} held-out "
        f"CHASE_DB1 children ({2 * len(children)} images at {preset.vessel_size} px), threshold chosen on the "
        "training children, Dice inside the field of view; high-pass cut-offs "
        + ", ".join(map(str, protocol.HIGHPASS_CUTOFFS))
        + ".",
        f"- End to end: `frepa_vessel_segmentation_2d` (frozen encoder, trained head, {preset.e2e_epochs} epochs) on "
        f"the held-out children (4 training, 1 validation, 2 test), pretraining seeds 0-{preset.e2e_seeds - 1}.",
        "- Wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in part_seconds.items())
        + " (each cached run's own wall time, summed, whichever invocation of reproduce.py ran it; a run that "
        "shared the CPU with other jobs counts its longer time).",
        "",
        "## Band R^2 of frozen encoders (paper Fig. 7)",
        "Mean over test subjects [95% CI]; 1 is a perfect readout, 0 the flat image.",
        "",
        *method_table(analysis, ["band_low", "band_mid", "band_high"], [*protocol.METHODS, "pixels", "flat"]),
        "",
        f"![band R^2 per method]({rel}/{names['bands']})",
        "",
        f"![a held-out image read out of each encoder]({rel}/{names['examples']})",
        "",
        "## Vessels: probe, high-pass robustness (paper Fig. 1a) and the trained head",
        "",
        *method_table(analysis, ["vessel", "highpass", "e2e"], [*protocol.METHODS, "pixels", "frangi", "flat"]),
        "",
        f"![vessel Dice against the high-pass cut-off]({rel}/{names['highpass']})",
        "",
        "## Ablations (paper Table 9)",
        "",
        *method_table(analysis, ["band_mid", "band_high", "vessel"], ["frepa", *protocol.ABLATIONS]),
        "",
        f"![Frepa minus each ablation]({rel}/{names['ablations']})",
        "",
        f"## Corruption sizes at {preset.image_size} px",
        f"![the paper's literal sizes and the scaled ones]({rel}/{names['corruption']})",
        "",
    ]
    output.write_text("\n".join(lines) + "\n")


def e2e_check(analysis: dict) -> list[str]:
    """Whether every trained head learned: its Dice above the flat image's (else the end-to-end number is void)."""
    heads = analysis["metrics"].get("e2e", {}).get("methods", {})
    if not heads:
        return []
    flat = analysis["metrics"]["vessel"]["methods"]["flat"]["estimate"]
    learned = all(h["estimate"] > flat for h in heads.values())
    scores = ", ".join(f"{_label(v)} {h['estimate']:.3f}" for v, h in heads.items())
    return [
        f"- Trained heads (end to end): Dice {scores} against {flat:.3f} for the flat image: "
        + ("every head learned." if learned else "**not every head learned**: the end-to-end verdicts are void.")
    ]


def _stride(preset: protocol.Preset) -> int:
    from frepa_monai.networks import ENCODER_PRESETS

    return ENCODER_PRESETS[preset.encoder]["patch_size"]


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
