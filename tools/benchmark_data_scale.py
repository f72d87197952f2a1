#!/usr/bin/env python
"""Peak memory and samples per second of the pretraining bundles' training data against the data set's size, for
the in-memory cache (``--cache memory``: MONAI's ``CacheDataset``) and the persistent one (``--cache
persistent``: MONAI's ``PersistentDataset``, files in ``cache_dir``).

The data are derived from the package's real sample data and written under ``--workdir`` (outside the repository):
2D images are random 64^2 .. 96^2 crops of the 2D pretraining images (random flips, intensity scaled by 0.8 .. 1.2),
volumes random 40^3 .. 56^3 crops of the 3D pretraining volumes, both as NIfTI with the source's modality and CT
window. Each (bundle, size, cache) runs in a fresh subprocess that builds ``train#dataset`` and
``train#dataloader`` from the bundle's own train.json at the CPU preset with the generated datalist, then reads
``--epochs`` epochs; it reports its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``; about 0.8 GB of it is the
imports), the growth of its RSS from before the dataset is built to after the epochs ("data MB"), the time to build the
dataset (the memory cache fills here), the first epoch (the persistent cache is written here) and the later ones.
The cost per sample of the persistent path is the first epoch's and a later epoch's time per sample.

    python tools/benchmark_data_scale.py --workdir /tmp/frepa_scale   # 1k, 5k, 20k images; 50, 200, 500 volumes
    python tools/benchmark_data_scale.py --workdir /tmp/s --images 40 80 --volumes 4 8 --epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLE = {2: "frepa_pretrain_2d", 3: "frepa_pretrain_3d"}
META = ("modality", "window", "subject")


def _load(path: str) -> np.ndarray:
    """A sample image as a float32 array without channel axis: ``(H, W)`` for 2D (colour averaged), ``(H, W, D)``."""
    from monai.transforms import LoadImage

    array = np.asarray(LoadImage(image_only=True)(path), dtype=np.float32)
    return array.mean(-1) if array.ndim == 3 and array.shape[-1] in (3, 4) and path.endswith(".png") else array


def generate(folder: Path, dims: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` real-derived images (``dims`` 2) or volumes (3) in ``folder``, as a datalist; existing files are
    reused (the list is written once per ``count`` and seed)."""
    import nibabel as nib

    from frepa_monai.data import pretrain_2d_datalist, pretrain_3d_datalist

    folder = Path(folder) / f"{dims}d"
    listing = folder / f"datalist_{count}_{seed}.json"
    if listing.is_file():
        return json.loads(listing.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    sources = (pretrain_2d_datalist if dims == 2 else pretrain_3d_datalist)()["training"]
    arrays = [_load(s["image"]) for s in sources]
    arrays = [a.reshape(a.shape[:2]) if dims == 2 and a.ndim == 3 and a.shape[2] == 1 else a for a in arrays]
    keep = [i for i, a in enumerate(arrays) if a.ndim == dims]
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        k = keep[n % len(keep)]
        array, source = arrays[k], sources[k]
        side = rng.integers(64, 97) if dims == 2 else rng.integers(40, 57)
        size = [min(int(side), s) for s in array.shape]
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(array.shape, size)]
        crop = array[tuple(slice(a, a + c) for a, c in zip(start, size))]
        for axis in range(dims):
            if rng.random() < 0.5:
                crop = np.flip(crop, axis)
        crop = np.ascontiguousarray(crop * rng.uniform(0.8, 1.2), dtype=np.float32)
        path = folder / f"{'image' if dims == 2 else 'volume'}_{seed}_{n:06d}.nii.gz"
        if not path.is_file():
            nib.save(nib.Nifti1Image(crop, np.eye(4)), str(path))
        out.append({"image": str(path), **{key: source[key] for key in META}})
    listing.write_text(json.dumps(out))
    return out


def rss_mb() -> float:
    """This process's resident memory now (MiB), from ``/proc/self/statm`` (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(spec: dict) -> dict:
    """In a fresh process: build the bundle's dataset and loader on the generated data and read ``epochs`` epochs."""
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    torch.set_num_threads(spec["threads"])
    set_determinism(0)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / spec["bundle"] / "configs" / "train.json"))
    parser["bundle_root"] = spec["root"]
    parser["preset"] = "cpu"
    parser["train_datalist"] = json.loads(Path(spec["datalist"]).read_text())
    parser["cache"] = spec["cache"]
    parser["cache_dir"] = spec["cache_dir"]
    parser["train#dataset#num_workers"] = spec["threads"]
    for key, value in spec["overrides"].items():
        parser[key] = value
    parser.parse()
    before = rss_mb()
    start = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    times = {"build_s": time.perf_counter() - start}
    samples = 0
    for epoch in range(spec["epochs"]):
        start = time.perf_counter()
        for batch in loader:
            samples += batch["image"].shape[0]
        times[f"epoch{epoch + 1}_s"] = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {
        **times,
        "samples_per_epoch": samples // spec["epochs"],
        "peak_rss_mb": rss / 2**20,
        "data_rss_mb": rss_mb() - before,  # what the dataset, its cache and the loader hold after the epochs
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="generated data, caches and results (not the repo)")
    ap.add_argument("--images", nargs="*", type=int, default=[1000, 5000, 20000])
    ap.add_argument("--volumes", nargs="*", type=int, default=[50, 200, 500])
    ap.add_argument("--caches", nargs="+", default=["memory", "persistent"], choices=["memory", "persistent"])
    ap.add_argument("--epochs", type=int, default=2, help="epochs read per run (the first builds a persistent cache)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads and cache-filling threads per run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="config overrides for every run")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (default: <workdir>/scale.json)")
    ap.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="a PNG of memory and samples/s against size, e.g. docs/performance/data_memory.png",
    )
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: one run, in a fresh process
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))))
        return
    if REPO in args.workdir.resolve().parents or args.workdir.resolve() == REPO:
        raise SystemExit(f"--workdir: {args.workdir} is inside the repository; give a folder outside it")
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    results = []
    print(
        f"{'bundle':18s} {'size':>6s} {'cache':10s} {'peak MB':>8s} {'data MB':>8s} {'build s':>8s} {'epoch1 s':>9s} ",
        end="",
    )
    print(f"{'later s':>8s} {'samples/s':>9s} {'ms/sample 1st':>13s} {'ms/sample later':>15s}")
    for dims, sizes in ((2, args.images), (3, args.volumes)):
        for size in sizes:
            data = generate(args.workdir / "data", dims, size)
            listing = args.workdir / "data" / f"{dims}d" / f"datalist_{size}_0.json"
            for cache in args.caches:
                cache_dir = args.workdir / "cache" / f"{dims}d_{size}"
                if cache_dir.is_dir():  # every persistent run builds its cache from nothing
                    for f in cache_dir.iterdir():
                        f.unlink()
                spec = {
                    "bundle": BUNDLE[dims],
                    "root": str(args.workdir / "bundle" / BUNDLE[dims]),
                    "datalist": str(listing),
                    "cache": cache,
                    "cache_dir": str(cache_dir),
                    "epochs": args.epochs,
                    "threads": args.threads,
                    "overrides": overrides,
                }
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                cmd = [sys.executable, __file__, "--workdir", str(args.workdir), "--run", json.dumps(spec)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode:
                    raise SystemExit(f"{BUNDLE[dims]} {size} {cache}: the run failed\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                n = r["samples_per_epoch"]
                later = [r[f"epoch{e}_s"] for e in range(2, args.epochs + 1)]
                later_s = sum(later) / len(later) if later else float("nan")
                row = {"bundle": BUNDLE[dims], "size": size, "cache": cache, **r, "later_epoch_s": later_s}
                row["samples_per_s"] = n / later_s if later else n / r["epoch1_s"]
                row["ms_per_sample_first"] = 1e3 * r["epoch1_s"] / max(len(data), 1)
                row["ms_per_sample_later"] = 1e3 * later_s / max(len(data), 1)
                results.append(row)
                print(
                    f"{BUNDLE[dims]:18s} {size:6d} {cache:10s} {r['peak_rss_mb']:8.0f} {r['data_rss_mb']:8.0f} "
                    f"{r['build_s']:8.2f} "
                    f"{r['epoch1_s']:9.2f} {later_s:8.2f} {row['samples_per_s']:9.1f} "
                    f"{row['ms_per_sample_first']:13.2f} {row['ms_per_sample_later']:15.2f}",
                    flush=True,
                )
    out = args.json or args.workdir / "scale.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")
    if args.plot:
        plot(results, args.plot)


def plot(results: list[dict], path: Path) -> None:
    """Data RSS and samples/s against the data set's size, per bundle and cache (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for bundle in BUNDLE.values():
        for cache in ("memory", "persistent"):
            rows = sorted(
                (r for r in results if r["bundle"] == bundle and r["cache"] == cache), key=lambda r: r["size"]
            )
            if not rows:
                continue
            label = f"{bundle.removeprefix('frepa_pretrain_')} {cache}"
            sizes = [r["size"] for r in rows]
            axes[0].plot(sizes, [max(r["data_rss_mb"], 1.0) for r in rows], "o-", label=label)
            axes[1].plot(sizes, [r["samples_per_s"] for r in rows], "o-", label=label)
    for ax, title in zip(axes, ("RSS growth (MiB)", "samples/s (later epochs)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("data set size (images or volumes)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
