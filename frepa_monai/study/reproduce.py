"""The Frepa study: pretrain every method with one budget, score the frozen encoders, write ``docs/results.md``.

1. Pretraining (``bundles/frepa_pretrain_2d``, one budget in optimizer steps, on the study's pretraining half of
   the 2D sample data): Frepa with the corruption sizes scaled from the paper's 512 px, Frepa with the paper's
   literal pixel sizes, MAE and MFM, ``seeds`` pretraining seeds each; ``seeds`` random initialisations; the seven
   ablations of Frepa, ``ablation_seeds`` seeds each.
2. Probes (:mod:`frepa_monai.evaluation`) on the held-out half (subjects pretraining never saw): band R^2 of a
   ridge readout into each token's pixels (paper Fig. 7), vessel Dice of a ridge readout onto the CHASE_DB1 masks,
   leave-one-child-out, raw and on Gaussian high-pass filtered images (paper Fig. 1a); the references: raw
   pixels, a flat image, the Hessian filter with a threshold.
3. End to end: ``frepa_vessel_segmentation_2d``'s trained head on the frozen encoders of ``e2e_seeds`` seeds.
4. Intervals: hierarchical bootstrap with the pretraining seed as the unit (:mod:`frepa_monai.bootstrap`);
   verdicts by the decision rule stated in the report before the numbers.

Everything is cached in ``--work_dir``, so a stopped run resumes and a finished one only rewrites the report.
``--preset cpu`` (default) is sized for a 2-core CPU (at most 90 minutes) and writes ``docs/results.md``;
``--preset gpu`` runs ViT-S at 256 px with AMP on one GPU (under 10 minutes) and writes ``docs/results_gpu.md``.
``--set field=value`` changes a field of the preset (:class:`frepa_monai.study.protocol.Preset`), e.g. for a smoke run.

Examples::

    python tools/reproduce.py
    python tools/reproduce.py --preset gpu
    python tools/reproduce.py --preset gpu --set image_size=32 --set epochs=1 --work_dir /tmp/smoke --output x.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from frepa_monai.study import protocol, report, runs
from frepa_monai.workflows import BUNDLES

REPO = BUNDLES.parent

PARTS = ("pretraining", "probes", "end-to-end", "statistics and report")


def parse_field(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    fields = {f.name: f.type for f in dataclasses.fields(protocol.Preset)}
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"--set expects field=value with a field of {sorted(fields)}, got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def encoders(preset: protocol.Preset) -> list[tuple[str, int]]:
    """Every (variant, seed) the study scores."""
    out = [(v, s) for v in protocol.METHODS for s in range(preset.seeds)]
    return out + [(v, s) for v in protocol.ABLATIONS for s in range(preset.ablation_seeds)]


def run(preset: protocol.Preset, work_dir: Path) -> dict:
    """Steps 1-3 (cached); returns the wall seconds each part took in this invocation."""
    seconds = {}
    start = time.perf_counter()
    for variant, seed in encoders(preset):
        runs.encoder_path(work_dir, preset, variant, seed)
    seconds["pretraining"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = {(v, s): runs.probe_scores(work_dir, preset, v, s) for v, s in encoders(preset)}
    for reference in ("pixels", "frangi", "flat"):
        scores[(reference, None)] = runs.probe_scores(work_dir, preset, reference, None)
    seconds["probes"] = time.perf_counter() - start
    start = time.perf_counter()
    e2e = {(v, s): runs.e2e_dice(work_dir, preset, v, s) for v in report.E2E for s in range(preset.e2e_seeds)}
    seconds["end-to-end"] = time.perf_counter() - start
    return {"seconds": seconds, "scores": scores, "e2e": e2e}


def main(argv: list[str] | None = None, description: str | None = None) -> Path:
    """The command line of ``tools/reproduce.py``."""
    parser = argparse.ArgumentParser(
        description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(protocol.PRESETS), default="cpu")
    parser.add_argument("--work_dir", default=None, help="cache of every run (default: eval/study_<preset>)")
    parser.add_argument("--output", default=None, help="report (default: docs/results.md, docs/results_gpu.md)")
    parser.add_argument("--set", dest="fields", type=parse_field, action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)

    preset = protocol.PRESETS[args.preset].replace(**dict(args.fields))
    work_dir = Path(args.work_dir or REPO / "eval" / f"study_{preset.name}").resolve()
    default_output = "results.md" if preset.name == "cpu" else f"results_{preset.name}.md"
    output = Path(args.output or REPO / "docs" / default_output).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    timings_file = work_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else []

    results = run(preset, work_dir)
    start = time.perf_counter()
    report.write(output, work_dir, preset, results)
    results["seconds"]["statistics and report"] = time.perf_counter() - start
    timings.append({k: round(v, 1) for k, v in results["seconds"].items()})
    timings_file.write_text(json.dumps(timings, indent=2) + "\n")
    print(f"written: {output}")
    return output
