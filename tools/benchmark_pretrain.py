#!/usr/bin/env python
"""Time one pretraining step of Frepa against the MAE and MFM baselines, on the same encoder and batch.

A step is what ``PretrainTrainer`` does per iteration: the strategy's corruption and forward pass, the loss,
backward and an Adam step. Frepa is timed twice: with the Hessian channel computed in the data pipeline (as the
bundles do, in the data loader) and computed in the step. Ratios are against MAE measured in the same run
(goal: Frepa <= 2.2x MAE); the strategies are timed in alternating blocks after a warm-up.

Example::

    python tools/benchmark_pretrain.py --encoders vit_tiny convnext_tiny --dims 2 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from frepa_monai.networks import build_autoencoder
from frepa_monai.strategies import FrepaStrategy, MAEStrategy, MFMStrategy


def step_time(strategy, network, optimizer, images, hessian, repeats: int) -> list[float]:
    """Wall times (s) of ``repeats`` full steps, after one warm-up step."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = strategy(network, images, epoch=10, hessian=hessian)  # epoch 10: the consistency term is on
        out.loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["vit_tiny", "convnext_tiny"])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    parser.add_argument("--size-2d", type=int, default=128)
    parser.add_argument("--size-3d", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per block; 3 alternating blocks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median step time")
    print(f"{'encoder':14s} {'dims':>4s} {'strategy':26s} {'ms/step':>9s} {'x MAE':>7s}")
    for dims in args.dims:
        size = args.size_2d if dims == 2 else args.size_3d
        channels = 3 if dims == 2 else 1
        images = torch.rand(args.batch, channels, *[size] * dims)
        for encoder in args.encoders:
            frepa = FrepaStrategy(dims).set_random_state(args.seed)
            hessian = frepa.hessian_of(images, None)
            cases = {
                "mae": (MAEStrategy(dims).set_random_state(args.seed), False, None),
                "mfm": (MFMStrategy(dims).set_random_state(args.seed), False, None),
                "frepa (Hessian in pipeline)": (frepa, True, hessian),
                "frepa (Hessian in step)": (frepa, True, None),
            }
            nets = {}
            for name, (_, with_hessian, _) in cases.items():
                torch.manual_seed(args.seed)
                net = build_autoencoder(
                    encoder, dims, channels + int(with_hessian), size, out_channels=channels, mask_token=name == "mae"
                )
                nets[name] = (net, torch.optim.Adam(net.parameters(), lr=1e-4))
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(3):
                for name, (strategy, _, h) in cases.items():
                    samples[name] += step_time(strategy, *nets[name], images, h, args.repeats)
            mae = statistics.median(samples["mae"])
            for name, times in samples.items():
                t = statistics.median(times)
                print(f"{encoder:14s} {dims:>4d} {name:26s} {1e3 * t:9.1f} {t / mae:7.2f}")


if __name__ == "__main__":
    main()
