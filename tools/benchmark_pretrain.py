#!/usr/bin/env python
"""Time one pretraining step of Frepa against two plain reconstruction steps, MAE and MFM, on the same encoder.

A step is what ``PretrainTrainer`` does per iteration (see ``tools/pretrain_steps.py``). ``plain`` is one
full-image reconstruction with RMSE only; Frepa reconstructs two full views, so two plain steps are its floor and
``frepa / (2 x plain)`` is Frepa's own overhead (goal: <= 1.25). The strategies are timed in alternating blocks
after a warm-up, in one process, so every ratio compares numbers from the same run. For each encoder and dims
it prints:

- the median step time of every strategy (Frepa with the Hessian channel from the data pipeline, as the
  bundles feed it, and computed in the step);
- ``frepa / (2 x plain) <encoder> <dims>D: <ratio>``;
- the breakdown of a Frepa and a plain step into corruption (and Hessian), forward, each loss term, backward
  and optimizer (wall time per phase, ``frepa_monai.profiling``);
- with ``--options``, each speed option on against off: channels-last memory format (convolutional
  encoders), ``torch.compile``, foreach and fused AdamW, and AMP (CUDA only);
- with ``--profile``, the ``torch.profiler`` table of the costliest operators of a Frepa step.

Run it on an otherwise idle machine. Example::

    python tools/benchmark_pretrain.py --encoders vit_tiny convnext_tiny --dims 2 3 --options
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrain_steps import build_case, phase_breakdown, run_step, time_steps  # noqa: E402

CASES = {
    "plain": {"strategy": "plain"},
    "mae": {"strategy": "mae"},
    "mfm": {"strategy": "mfm"},
    "frepa": {"strategy": "frepa", "hessian": "pipeline"},
    "frepa (Hessian in step)": {"strategy": "frepa", "hessian": "step"},
}
PHASES = ("hessian", "corruption", "forward", "loss_rmse", "loss_grad", "loss_hfl", "loss_con", "backward", "optimizer")


def alternating_medians(cases: dict, repeats: int, blocks: int = 3) -> dict[str, float]:
    """Median step time (s) of every case, timed in ``blocks`` alternating blocks of ``repeats`` steps."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(blocks):
        for name, case in cases.items():
            samples[name] += time_steps(case, repeats, warmup=1)
    return {name: statistics.median(times) for name, times in samples.items()}


def print_breakdown(cases: dict, repeats: int) -> None:
    rows = {name: phase_breakdown(cases[name], repeats) for name in ("frepa", "plain")}
    print(f"  breakdown (ms per step): {'phase':12s} {'frepa':>9s} {'plain':>9s}")
    for p in PHASES:
        values = [rows[name].get(p) for name in ("frepa", "plain")]
        if any(v is not None for v in values):
            cells = " ".join(f"{v:9.1f}" if v is not None else f"{'-':>9s}" for v in values)
            print(f"  {'':24s} {p:12s} {cells}")
    totals = " ".join(f"{sum(rows[name].get(p, 0.0) for p in PHASES):9.1f}" for name in ("frepa", "plain"))
    print(f"  {'':24s} {'sum':12s} {totals}")


def option_cases(encoder: str, dims: int, size: int, batch: int, device: str) -> dict[str, tuple[dict, dict]]:
    """(off, on) keyword arguments of ``build_case`` for each speed option that applies here."""
    base = {"strategy": "frepa", "encoder": encoder, "dims": dims, "size": size, "batch": batch, "device": device}
    options = {
        "foreach AdamW": ({}, {"optimizer": "foreach"}),
        "fused AdamW": ({}, {"optimizer": "fused"}),
        "torch.compile": ({}, {"compile": True}),
    }
    if not encoder.startswith("vit"):
        options["channels_last"] = ({}, {"channels_last": True})
    if device.startswith("cuda"):
        options["amp (bfloat16)"] = ({}, {"amp": True})
    return {name: ({**base, **off}, {**base, **on}) for name, (off, on) in options.items()}


def print_options(encoder: str, dims: int, size: int, batch: int, device: str, repeats: int) -> None:
    for name, (off, on) in option_cases(encoder, dims, size, batch, device).items():
        try:
            cases = {"off": build_case(**off), "on": build_case(**on)}
            medians = alternating_medians(cases, repeats, blocks=2)
        except Exception as err:  # an option this build or machine lacks (e.g. no compiler for torch.compile)
            print(f"  option {name:16s} unavailable: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        print(
            f"  option {name:16s} off {1e3 * medians['off']:9.1f} ms  on {1e3 * medians['on']:9.1f} ms  "
            f"on / off {medians['on'] / medians['off']:.2f}"
        )


def print_profile(case, rows: int) -> None:
    run_step(case)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            run_step(case)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["vit_tiny", "convnext_tiny"])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    parser.add_argument("--size-2d", type=int, default=128)
    parser.add_argument("--size-3d", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per block (3 alternating blocks)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--options", action="store_true", help="time each speed option on and off")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of a Frepa step")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch {args.batch}")
    for dims in args.dims:
        size = args.size_2d if dims == 2 else args.size_3d
        repeats = args.repeats if dims == 2 else max(1, args.repeats // 2)
        for encoder in args.encoders:
            common = {"encoder": encoder, "dims": dims, "size": size, "batch": args.batch, "device": args.device}
            cases = {name: build_case(**common, **kwargs) for name, kwargs in CASES.items()}
            medians = alternating_medians(cases, repeats)
            print(f"{encoder} {dims}D, {size}^{dims}: median ms per step")
            for name, seconds in medians.items():
                print(f"  {name:24s} {1e3 * seconds:9.1f}")
            ratio = medians["frepa"] / (2 * medians["plain"])
            in_step = medians["frepa (Hessian in step)"] / (2 * medians["plain"])
            print(f"frepa / (2 x plain) {encoder} {dims}D: {ratio:.2f}")
            print(
                f"  (Hessian channel computed in the step: {in_step:.2f}; frepa / mae: "
                f"{medians['frepa'] / medians['mae']:.2f})"
            )
            print_breakdown(cases, repeats)
            if args.options:
                print_options(encoder, dims, size, args.batch, args.device, repeats)
            if args.profile:
                print_profile(cases["frepa"], rows=25)


if __name__ == "__main__":
    main()
