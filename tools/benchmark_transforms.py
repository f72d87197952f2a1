#!/usr/bin/env python
"""Benchmark the Frepa corruption transforms against baselines measured in the same run, on the same tensors.

Prints, per image:
  * FrequencyDualMask vs a bare complex ``fftn`` + ``ifftn`` round trip (8x3x512x512 and 2x1x128^3);
  * HistogramEqualizedMask vs MONAI ``RandCoarseDropout`` with the same number of patches, per single image
    (RandCoarseDropout has no batch mode; a batched row is printed for the record);
  * both torch transforms vs a straightforward numpy per-patch loop (the official code's approach).
Goals (issue 3): <= 1.3x the FFT round trip, <= 1.0x RandCoarseDropout, >= 10x (frequency) and >= 5x
(image masking) faster than the numpy loop. Times are medians over ``--repeats`` runs after a warm-up, the
transform and its baseline timed in alternating blocks. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from monai.transforms import RandCoarseDropout

from frepa_monai.transforms import FrequencyDualMask, HistogramEqualizedMask


def paired_times(fn, baseline, repeats: int, rounds: int = 3) -> tuple[float, float]:
    """Median wall times (seconds) of ``fn()`` and ``baseline()``.

    Each is timed in blocks of ``repeats`` calls after one warm-up call (steady state, as in a data pipeline),
    and the blocks alternate over ``rounds`` so that both see the same drift in machine load.
    """
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for f, times in ((fn, samples[0]), (baseline, samples[1])):
            f()
            for _ in range(repeats):
                start = time.perf_counter()
                f()
                times.append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


def fft_round_trip(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    dims = tuple(range(x.ndim - spatial_dims, x.ndim))
    return torch.fft.ifftn(torch.fft.fftn(x, dim=dims), dim=dims).real


def numpy_frequency_mask(img: np.ndarray, rng: np.random.Generator, patch: int = 16, cutoff_ratio: float = 0.2):
    """Per-channel, per-patch numpy loop as in the authors' code: fft2 + shift, mask patches, perturb, invert."""
    out = np.empty_like(img)
    h, w = img.shape[1:]
    dc = cutoff_ratio * min(h, w)
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    weight = np.exp(-(yy**2 + xx**2) / dc**2)
    for c in range(img.shape[0]):
        f = np.fft.fftshift(np.fft.fft2(img[c]))
        for i in range(0, h, patch):
            for j in range(0, w, patch):
                d = math.hypot(i + patch / 2 - h / 2, j + patch / 2 - w / 2)
                if rng.random() < 1 - math.exp(-(d**2) / dc**2):
                    f[i : i + patch, j : j + patch] = 0
        sigma = 0.002 * np.abs(f).max()
        noise = rng.normal(0, sigma, f.shape) * weight
        noise[h // 2, w // 2] = 0
        out[c] = np.fft.ifft2(np.fft.ifftshift(f + noise)).real
    return out


def numpy_image_mask(img: np.ndarray, rng: np.random.Generator, patch: int = 32, ratio: float = 0.7):
    """Per-patch numpy loop: choose patches, fill each with Gaussian noise of its own mean and std."""
    out = img.copy()
    h, w = img.shape[1:]
    corners = [(i, j) for i in range(0, h, patch) for j in range(0, w, patch)]
    for k in rng.permutation(len(corners))[: round(ratio * len(corners))]:
        i, j = corners[k]
        for c in range(img.shape[0]):
            p = img[c, i : i + patch, j : j + patch]
            out[c, i : i + patch, j : j + patch] = rng.normal(p.mean(), p.std(), p.shape)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per block, 3 blocks (median is printed)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    r = args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of 3 x {r} runs, times per image")

    rows = []
    # frequency dual masking vs FFT round trip
    for shape, nd in (((8, 3, 512, 512), 2), ((2, 1, 128, 128, 128), 3)):
        x = torch.rand(shape)
        fdm = FrequencyDualMask(spatial_dims=nd).set_random_state(args.seed)
        t_fdm, t_fft = paired_times(lambda: fdm(x), lambda: fft_round_trip(x, nd), r)
        rows.append((f"FrequencyDualMask {shape}", t_fdm / shape[0], "complex fftn+ifftn", t_fft / shape[0], "<= 1.3"))

    # histogram-equalized masking vs RandCoarseDropout with the same patch count, one 3x512x512 image at a time
    # (RandCoarseDropout takes single images), and a batch of 8 for the record
    x = torch.rand(8, 3, 512, 512)
    n_holes = round(0.7 * (512 // 32) ** 2)
    dropout = RandCoarseDropout(holes=n_holes, spatial_size=32, fill_value=None, prob=1.0)
    dropout.set_random_state(args.seed)
    single_hem = HistogramEqualizedMask().set_random_state(args.seed)
    t_hem, t_rcd = paired_times(lambda: single_hem(x[0]), lambda: dropout(x[0].clone()), r)
    rows.append(
        ("HistogramEqualizedMask (3, 512, 512)", t_hem, f"RandCoarseDropout ({n_holes} holes)", t_rcd, "<= 1.0")
    )
    batch_hem = HistogramEqualizedMask(spatial_dims=2).set_random_state(args.seed)
    t_hem, t_rcd = paired_times(lambda: batch_hem(x), lambda: [dropout(img.clone()) for img in x], r)
    rows.append(
        (f"HistogramEqualizedMask {tuple(x.shape)}", t_hem / 8, "RandCoarseDropout, image by image", t_rcd / 8, "-")
    )

    # torch transforms vs the numpy per-patch loops, one 3x512x512 image
    img = x[0].numpy()
    single_fdm = FrequencyDualMask().set_random_state(args.seed)
    t_f, t_np_f = paired_times(lambda: single_fdm(x[0]), lambda: numpy_frequency_mask(img, rng), r)
    t_i, t_np_i = paired_times(lambda: single_hem(x[0]), lambda: numpy_image_mask(img, rng), r)
    rows.append(("FrequencyDualMask (3, 512, 512)", t_f, "numpy per-patch loop", t_np_f, "<= 0.1"))
    rows.append(("HistogramEqualizedMask (3, 512, 512)", t_i, "numpy per-patch loop", t_np_i, "<= 0.2"))

    print(f"{'transform':45s} {'ms/img':>8s}   {'baseline':34s} {'ms/img':>8s} {'ratio':>7s}  goal")
    for name, t, base_name, t_base, goal in rows:
        ratio = t / t_base
        speedup = f"  ({t_base / t:.1f}x faster)" if ratio < 1 else ""
        print(f"{name:45s} {1e3 * t:8.2f}   {base_name:34s} {1e3 * t_base:8.2f} {ratio:7.2f}  {goal}{speedup}")


if __name__ == "__main__":
    main()
