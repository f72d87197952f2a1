#!/usr/bin/env python
"""The paper's ablations (section 4.5, Table 9) at CPU scale: each Frepa component removed in turn.

Variants (pretraining switches of ``bundles/frepa_pretrain_2d``; every other setting, the budget and the seed
equal, see ``frepa_eval.py``):

- ``wo_hm``: no high-frequency masking (the frequency branch only perturbs the low frequencies);
- ``wo_lp``: no low-frequency perturbation (the frequency branch only masks high frequencies);
- ``wo_fm``: no frequency dual-component masking (every view is image-masked);
- ``wo_im``: zero-patch masking instead of histogram-equalized masking;
- ``wo_hfl``, ``wo_con``, ``wo_grad``: the HFL, embedding-consistency or gradient loss term left out.

Each variant's encoder is scored on frequency fidelity (the Fig. 7 probe of ``evaluate_frequency.py``: frozen
encoder, fresh ConvDecoder, ``rho_low/mid/high`` on held-out images, mean over ``--probe_seeds``) and on the
test vessel DSC of ``frepa_vessel_segmentation_2d`` (CHASE_DB1, CPU preset with ``--vessel_epochs`` epochs,
frozen encoder, mean over ``--vessel_seeds``). Other variants (``frepa``, ``mae``, ``mfm``, ``random``) can be
scored the same way with ``--variants``.

Writes ``<work_dir>/<report>.md`` / ``.json``; differences are against the first variant (``frepa`` by default).

Example::

    python tools/run_ablations.py --work_dir eval/harness
    python tools/run_ablations.py --variants frepa mae mfm random --vessel_seeds 0 1 2 --report methods
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frepa_eval import (
    ABLATIONS,
    LABELS,
    PROBE_EPOCHS,
    VARIANTS,
    VESSEL_EPOCHS,
    add_common_arguments,
    fmt,
    mean_std,
    pretrain_seconds,
)
from run_folds import write_report

SCORES = ("rho_low", "rho_mid", "rho_high", "vessel_dsc")


def markdown(result: dict) -> str:
    variants = list(result["scores"])
    ref = variants[0]
    lines = [
        f"| variant | rho_low | rho_mid | rho_high | vessel DSC | rho_high - {LABELS[ref]} | DSC - {LABELS[ref]} "
        "| pretraining (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        s = result["scores"][v]
        cells = [fmt(s[k]) for k in SCORES]
        for k in ("rho_high", "vessel_dsc"):
            cells.append("" if v == ref else f"{mean_std(s[k])[0] - mean_std(result['scores'][ref][k])[0]:+.4f}")
        seconds = result["pretrain_seconds"].get(v)
        cells.append("" if seconds is None else f"{seconds:.0f}")
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from frepa_eval import probe, vessel_dsc

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["frepa", *ABLATIONS])
    parser.add_argument("--probe_seeds", nargs="+", type=int, default=[0, 1, 2], help="ConvDecoder probe seeds")
    parser.add_argument("--vessel_seeds", nargs="+", type=int, default=[0], help="vessel bundle seeds")
    parser.add_argument("--probe_epochs", type=int, default=PROBE_EPOCHS)
    parser.add_argument("--vessel_epochs", type=int, default=VESSEL_EPOCHS)
    parser.add_argument("--report", default="ablations", help="report file stem in --work_dir")
    args = parser.parse_args(argv)
    work_dir = Path(args.work_dir).resolve()

    scores = {}
    for v in args.variants:
        rhos = [probe(work_dir, v, s, args.pretrain_epochs, args.probe_epochs) for s in args.probe_seeds]
        scores[v] = {k: [r[k] for r in rhos] for k in SCORES[:3]}
        scores[v]["vessel_dsc"] = [
            vessel_dsc(work_dir, v, s, args.pretrain_epochs, args.vessel_epochs) for s in args.vessel_seeds
        ]
    result = {
        "pretrain_epochs": args.pretrain_epochs,
        "probe_epochs": args.probe_epochs,
        "vessel_epochs": args.vessel_epochs,
        "probe_seeds": args.probe_seeds,
        "vessel_seeds": args.vessel_seeds,
        "scores": scores,
        "pretrain_seconds": {v: pretrain_seconds(work_dir, v) for v in args.variants},
    }
    write_report(work_dir / args.report, markdown(result), result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
