#!/usr/bin/env python
"""Batches per second of each pretraining bundle's training data loader against the bundle's own step rate.

The loader is the one ``train#dataloader`` of ``bundles/<bundle>/configs/train.json`` builds (read by MONAI's
``ConfigParser``): cached, augmented, at the preset's crop size and batch, with the Hessian channel (paper 3.2,
Eq. 6) where the config puts it. Only ``num_workers`` is varied (the loader is rebuilt on the same dataset with
the same batch size, shuffle and collate). Each rate is taken after one warm-up batch, over ``--batches``
batches that run across epochs as training does (the workers start anew each epoch).

The Hessian channel has two places, by the config key ``hessian_in_pipeline``:

* ``step`` (``false``, the default): the strategy computes it on the batch's device inside the step
  (``PretrainStrategy.hessian_of``); the loader carries the image only;
* ``pipeline`` (``true``): ``HessianFilterd`` computes it per crop in the loader, after the augmentations.

Both give the same channel of the same augmented crop (``tests/test_pipeline.py``). Both are measured.

* CPU preset: the step is the bundle's own (``network``, ``strategy``, ``optimizer`` from the config; zero_grad,
  strategy, backward, AdamW step, as ``PretrainTrainer`` runs it), timed for ``--steps`` steps after a warm-up
  on a real batch of the loader. ``pipeline / step`` is (loader batches/s) / (steps/s): goal >= 5. With
  ``num_workers`` 0 the loader and the step share the process, so ``data + step`` per iteration is printed too.
* GPU preset (``128^3`` / ``512^2`` crops): the step time is ``--gpu-step-ms`` (an assumption until
  ``tools/gpu_check.py`` measures it on a GPU; the Hessian on the device is counted as part of that step), and
  the tool reports how many workers would feed it at the per-worker rate measured here.

Prints one line per bundle, preset and worker count: ``pipeline / step <bundle> <preset> workers=<n>: <ratio>``
(the default place of the Hessian), and a table with both places. Run on an otherwise idle machine::

    python tools/benchmark_pipeline.py                                   # both bundles, cpu and gpu presets
    python tools/benchmark_pipeline.py --presets cpu --workers 0 --batches 4 --steps 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import monai.data
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("frepa_pretrain_2d", "frepa_pretrain_3d")
GPU_STEP_MS = {"frepa_pretrain_2d": 150.0, "frepa_pretrain_3d": 250.0}
"""Assumed GPU-preset step times (ms; AMP, one modern GPU): ViT-B at 512^2, batch 16, and ViT-1024 at 128^3,
batch 2 x 2 crops, each with its two Frepa views and the Hessian on the device. Estimates from the FLOPs of the
two views at ~40 % of an A100's bf16 peak, to be replaced by ``tools/gpu_check.py``'s measurement."""


def parse(bundle: str, preset: str, workdir: Path, hessian_in_pipeline: bool, overrides: dict) -> ConfigParser:
    """The bundle's train.json at ``preset``, writing only under ``workdir`` (bundle root and cache)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(workdir / bundle)
    parser["preset"] = preset
    parser["hessian_in_pipeline"] = hessian_in_pipeline
    parser["cache_dir"] = str(workdir / bundle / "cache" / preset)
    for key, value in overrides.items():
        parser[key] = value
    parser.parse()
    return parser


def loader_with_workers(loader, num_workers: int):
    """``loader`` rebuilt on the same dataset, batch size, shuffle and collate with ``num_workers`` workers."""
    return type(loader)(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=loader.collate_fn,
        drop_last=loader.drop_last,
    )


def loader_rate(loader, batches: int) -> float:
    """Batches per second over ``batches`` batches after one warm-up batch, across epochs."""
    seen, start = -1, None
    while True:
        for _ in loader:
            seen += 1
            if seen == 0:
                start = time.perf_counter()
            elif seen == batches:
                return batches / (time.perf_counter() - start)


def step_seconds(parser: ConfigParser, batch: dict, steps: int) -> float:
    """Median wall time (s) of the bundle's own training step on ``batch``, after one warm-up step."""
    network = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    strategy = parser.get_parsed_content("strategy")
    device = parser.get_parsed_content("device")
    images = batch["image"].to(device)
    hessian = batch["hessian"].to(device) if "hessian" in batch else None
    network.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = strategy(network, images, 10, hessian)  # epoch 10: every loss term on
        out.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    ap.add_argument("--presets", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=30, help="timed batches per rate at the CPU preset")
    ap.add_argument("--gpu-batches", type=int, default=4, help="timed batches per rate at the GPU preset")
    ap.add_argument("--steps", type=int, default=5, help="timed steps at the CPU preset")
    ap.add_argument("--gpu-step-ms", type=float, default=None, help=f"GPU-preset step time; default {GPU_STEP_MS}")
    ap.add_argument("--places", nargs="+", default=["step", "pipeline"], choices=["step", "pipeline"])
    ap.add_argument("--workdir", type=Path, default=None, help="bundle outputs and caches (default: a temp folder)")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=JSON", help="config overrides, e.g. cpu_settings#batch_size=4"
    )
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="benchmark_pipeline_")
    workdir = args.workdir or Path(tmp.name)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads in the main process, workers 1 thread each")
    lines, rows = [], []
    for bundle in args.bundles:
        for preset in args.presets:
            batches = args.batches if preset == "cpu" else args.gpu_batches
            for place in args.places:
                set_determinism(0)
                parser = parse(bundle, preset, workdir, place == "pipeline", overrides)
                loader = parser.get_parsed_content("train#dataloader")
                dataset = loader.dataset
                if not isinstance(dataset, monai.data.CacheDataset):  # fill a persistent cache before timing
                    for i in range(len(dataset)):
                        dataset[i]
                rates = {n: loader_rate(loader_with_workers(loader, n), batches) for n in args.workers}
                per_epoch = len(loader)
                if preset == "cpu":
                    step = step_seconds(parser, next(iter(loader_with_workers(loader, 0))), args.steps)
                    source = "measured"
                else:
                    ms = args.gpu_step_ms if args.gpu_step_ms is not None else GPU_STEP_MS[bundle]
                    step, source = ms / 1e3, "assumed"
                for n, rate in rates.items():
                    ratio = rate * step
                    rows.append((bundle, preset, place, n, rate, 1e3 * step, source, ratio, per_epoch))
                    if place == "step":
                        lines.append(f"pipeline / step {bundle} {preset} workers={n}: {ratio:.2f}")
                if preset == "gpu":
                    single = rates.get(1) or rates[min(rates)]
                    need = math.ceil(1.0 / (step * single))
                    lines.append(
                        f"workers to feed a {1e3 * step:.0f} ms step {bundle} gpu (Hessian in {place}): {need}"
                        f" (one worker: {single:.2f} batches/s)"
                    )
                if preset == "cpu" and 0 in rates:
                    lines.append(
                        f"data + step per iteration {bundle} cpu workers=0 (Hessian in {place}):"
                        f" {1e3 / rates[0] + 1e3 * step:.0f} ms ({1e3 / rates[0]:.0f} + {1e3 * step:.0f})"
                    )
                del parser, loader, dataset
    head = f"{'bundle':18s} {'preset':6s} {'Hessian':8s} {'workers':>7s} {'batch/s':>8s} {'step ms':>8s} {'':8s}"
    print(head + f" {'ratio':>6s} {'batches/epoch':>13s}")
    for bundle, preset, place, n, rate, ms, source, ratio, per_epoch in rows:
        print(
            f"{bundle:18s} {preset:6s} {place:8s} {n:7d} {rate:8.2f} {ms:8.0f} {source:8s} {ratio:6.2f} {per_epoch:13d}"
        )
    print("\n".join(lines))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
