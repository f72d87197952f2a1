#!/usr/bin/env python
"""Step time and peak memory of Frepa, MAE, MFM and plain against image size, with fitted growth exponents.

Every (strategy, dims, size) point runs in a process of its own (forked from a fork server), so its peak
memory is its own: on CPU the child's peak resident set (``ru_maxrss``), given both as the absolute peak and
as the growth over the child's resident set before the step was built; on CUDA
``torch.cuda.max_memory_allocated``. A point whose memory, extrapolated from the smaller sizes of the same
strategy, exceeds ``--memory-budget-gib`` is not run (recorded as ``skipped``); on CPU the child also runs
under ``RLIMIT_AS`` of that budget, so a point the estimate let through but that needs more fails alone and
is recorded as ``does not fit``.

The growth exponent of a strategy is the least-squares slope of log(step time) and of log(step memory) against
log(pixels or voxels) over its measured sizes: 1 is linear in the pixels, 2 quadratic (a ViT's attention over
all tokens). Memory at the sizes not run, and at the larger ``--extrapolate-2d`` / ``--extrapolate-3d`` sizes,
is extrapolated from the local fit through the two largest measured sizes, and marked as extrapolated
everywhere it is shown. The steps are those of ``pretrain_steps.py``
(paper 3.1 for Frepa's corruption, 3.2 for its losses); batch ``--batch``, fp32 on CPU.

Example (full size; see docs/performance.md for its duration)::

    python tools/benchmark_scaling.py

Tiny (seconds)::

    python tools/benchmark_scaling.py --sizes-2d 32 64 --sizes-3d 16 32 --repeats 1 --no-plots --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("frepa", "mae", "mfm", "plain")
MiB = 2**20
GiB = 2**30


# ---------------------------------------------------------------------------------------------------- fitting
def fit_power_law(pixels, values) -> tuple[float, float]:
    """Least-squares fit of ``log(value) = exponent * log(pixels) + log(coefficient)``.

    Returns ``(exponent, coefficient)``, so ``value ~ coefficient * pixels ** exponent``. Needs at least two
    distinct pixel counts and positive values.
    """
    points = [(float(n), float(v)) for n, v in zip(pixels, values, strict=True)]
    if len({n for n, _ in points}) < 2:
        raise ValueError(f"a power-law fit needs at least two distinct sizes, got pixels {list(pixels)}.")
    if any(n <= 0 or v <= 0 or not math.isfinite(v) for n, v in points):
        raise ValueError(f"a power-law fit needs positive finite pixels and values, got {points}.")
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(v) for _, v in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, math.exp(my - slope * mx)


def power_law(fit: tuple[float, float], pixels: float) -> float:
    """The value of a :func:`fit_power_law` fit at ``pixels``."""
    exponent, coefficient = fit
    return coefficient * float(pixels) ** exponent


def pixels_for(fit: tuple[float, float], value: float) -> float:
    """The pixel count at which a :func:`fit_power_law` fit reaches ``value`` (inf for a non-growing fit)."""
    exponent, coefficient = fit
    if exponent <= 0:
        return math.inf
    return (value / coefficient) ** (1.0 / exponent)


# --------------------------------------------------------------------------------------------- one point (child)
def _current_rss_bytes() -> int:
    """The resident set now (Linux ``/proc/self/statm``), else the peak so far (``ru_maxrss``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    """This process's peak resident set: ``ru_maxrss`` is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure_point(spec: dict) -> dict:
    """Build and time one step (in this process); the record the parent stores for the point."""
    import torch
    from pretrain_steps import build_case, time_steps

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    record = {k: spec[k] for k in ("strategy", "dims", "size", "encoder", "batch", "device")}
    record["threads"] = torch.get_num_threads()
    rss_before = _current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    case = build_case(
        spec["strategy"], spec["encoder"], spec["dims"], spec["size"], spec["batch"], device, amp=spec.get("amp", False)
    )
    times = time_steps(case, repeats=spec["repeats"], warmup=spec["warmup"])
    record.update(
        status="ok",
        times_ms=[1e3 * t for t in times],
        time_ms=1e3 * statistics.median(times),
        rss_before_mib=rss_before / MiB,
        peak_rss_mib=_peak_rss_bytes() / MiB,
    )
    record["peak_delta_mib"] = record["peak_rss_mib"] - record["rss_before_mib"]
    if device.type == "cuda":
        record["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / MiB
    return record


def _point_worker(spec: dict, conn) -> None:
    """A point's child process: an address-space limit, the measurement, its record sent back."""
    limit = spec.get("rlimit_as_bytes")
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    try:
        record = measure_point(spec)
    except (MemoryError, RuntimeError) as error:
        text = f"{type(error).__name__}: {error}".strip()
        memory = isinstance(error, MemoryError) or "alloc" in text.lower() or "out of memory" in text.lower()
        record = {**{k: spec[k] for k in ("strategy", "dims", "size")}, "status": "does not fit" if memory else "error"}
        record["error"] = text.splitlines()[-1][:500]
    conn.send(record)
    conn.close()


# ------------------------------------------------------------------------------------------ the sweep (parent)
def memory_of(record: dict) -> float | None:
    """The memory a point's fits use, in MiB: the CUDA peak on a GPU, else the growth of the resident set."""
    if record.get("status") != "ok":
        return None
    value = record.get("cuda_peak_mib", record.get("peak_delta_mib"))
    return max(float(value), 1.0)


def absolute_memory_of(record: dict) -> float:
    """The memory compared with the budget, in MiB: the CUDA peak, else the absolute peak resident set."""
    return float(record.get("cuda_peak_mib", record.get("peak_rss_mib")))


def point_context():
    """Where the points run: a fork server that imported torch and the step builders once (a point then starts in
    well under a second, in a process of its own), else fresh interpreters (``spawn``)."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # the fork server starts with this environment but not this sys.path: tools/ on PYTHONPATH for pretrain_steps
        tools = str(Path(__file__).resolve().parent)
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if tools not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([tools, *[p for p in paths if p]])
        ctx.set_forkserver_preload(["torch", "pretrain_steps"])
        return ctx
    return mp.get_context("spawn")


def run_point(spec: dict, timeout: float, ctx=None) -> dict:
    """Run one point in a process of its own and return its record (errors and timeouts are records too)."""
    ctx = ctx or point_context()
    base = {k: spec[k] for k in ("strategy", "dims", "size")}
    receive, send = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    proc = ctx.Process(target=_point_worker, args=(spec, send), daemon=True)
    proc.start()
    send.close()
    record = None
    try:
        if receive.poll(timeout):
            record = receive.recv()
    except EOFError:  # the child died before it sent its record
        pass
    if record is None and proc.is_alive():
        proc.kill()
        proc.join(30)
        return {**base, "status": "error", "error": f"timed out after {timeout:.0f} s"}
    proc.join(30)
    if record is None:  # killed (SIGKILL by the kernel's OOM killer, SIGSEGV at the address-space limit) or crashed
        rc = proc.exitcode
        memory = rc is not None and rc < 0
        return {**base, "status": "does not fit" if memory else "error", "error": f"child exit status {rc}"}
    return {**record, "wall_s": time.perf_counter() - start}


def local_fit(records: list[dict]) -> tuple[float, float] | None:
    """The memory fit through the two largest measured sizes of one strategy (None with fewer than two)."""
    ok = [r for r in records if memory_of(r) is not None]
    if len(ok) < 2:
        return None
    last = ok[-2:]
    return fit_power_law([r["pixels"] for r in last], [memory_of(r) for r in last])


def estimate_mib(records: list[dict], pixels: int) -> float | None:
    """Extrapolated absolute memory (MiB) of a larger point of the same strategy, from its measured points."""
    ok = [r for r in records if memory_of(r) is not None]
    if not ok:
        return None
    base = ok[-1].get("rss_before_mib", 0.0) if "cuda_peak_mib" not in ok[-1] else 0.0
    fit = local_fit(ok)
    if fit is None:  # one point: assume linear growth in the pixels
        return base + memory_of(ok[-1]) * pixels / ok[-1]["pixels"]
    return base + power_law(fit, pixels)


def sweep(args, device: str, log=print) -> list[dict]:
    """Every point of the sweep, measured, skipped or failed, in order."""
    ctx = point_context()
    budget_mib = args.memory_budget_gib * GiB / MiB
    records: list[dict] = []
    for dims, sizes in ((2, args.sizes_2d), (3, args.sizes_3d)):
        for strategy in args.strategies:
            done: list[dict] = []
            stopped = None
            for size in sorted(sizes):
                pixels = size**dims
                spec = {
                    "strategy": strategy,
                    "dims": dims,
                    "size": size,
                    "encoder": args.encoder,
                    "batch": args.batch,
                    "device": device,
                    "amp": args.amp,
                    "threads": args.threads,
                    "warmup": 1,
                    "repeats": args.repeats_large if pixels >= args.large_pixels else args.repeats,
                }
                if device == "cpu" and not args.no_rlimit:
                    spec["rlimit_as_bytes"] = int(args.memory_budget_gib * GiB)
                estimate = estimate_mib(done, pixels)
                if stopped is not None:
                    record = {**spec, "status": "skipped", "reason": stopped}
                elif estimate is not None and estimate > budget_mib:
                    record = {**spec, "status": "skipped", "reason": f"estimated {estimate / 1024:.1f} GiB > budget"}
                else:
                    record = {**spec, **run_point(spec, args.timeout, ctx)}
                record.update(pixels=pixels, estimate_mib=estimate)
                record.pop("rlimit_as_bytes", None)
                if record["status"] == "ok":
                    done.append(record)
                elif record["status"] == "does not fit":
                    stopped = f"{size}^{dims} did not fit"
                log(_point_line(record))
                records.append(record)
    return records


def _point_line(r: dict) -> str:
    head = f"{r['dims']}D {r['strategy']:6s} {r['size']:4d}^{r['dims']}"
    if r["status"] != "ok":
        return f"{head}  {r['status']}: {r.get('reason') or r.get('error', '')}"
    memory = (
        f"cuda peak {r['cuda_peak_mib']:8.1f} MiB"
        if "cuda_peak_mib" in r
        else (f"peak RSS {r['peak_rss_mib']:8.1f} MiB (+{r['peak_delta_mib']:.1f} over {r['rss_before_mib']:.0f})")
    )
    return f"{head}  {r['time_ms']:10.1f} ms/step  {memory}"


def summarize(records: list[dict], budget_gib: float, extrapolate: dict | None = None) -> list[dict]:
    """Per (dims, strategy): the growth exponents, the extrapolated memory at the sizes not run, and where the
    step stops fitting in the budget (measured or extrapolated); ``extrapolate`` maps dims to further sizes to
    extrapolate the memory to."""
    extrapolate = extrapolate or {}
    budget_mib = budget_gib * GiB / MiB
    out = []
    for dims in sorted({r["dims"] for r in records}):
        for strategy in dict.fromkeys(r["strategy"] for r in records if r["dims"] == dims):
            rows = [r for r in records if r["dims"] == dims and r["strategy"] == strategy]
            ok = [r for r in rows if r["status"] == "ok"]
            entry = {"dims": dims, "strategy": strategy, "measured_sizes": [r["size"] for r in ok]}
            if len({r["pixels"] for r in ok}) >= 2:
                entry["time_exponent"] = fit_power_law([r["pixels"] for r in ok], [r["time_ms"] for r in ok])[0]
                entry["memory_exponent"] = fit_power_law([r["pixels"] for r in ok], [memory_of(r) for r in ok])[0]
            fit = local_fit(ok)
            if fit is not None:
                entry["local_memory_exponent"] = fit[0]  # through the two largest sizes: what the extrapolation uses
            base = ok[-1].get("rss_before_mib", 0.0) if ok and "cuda_peak_mib" not in ok[-1] else 0.0
            not_run = [r["size"] for r in rows if r["status"] != "ok"]
            further = [n for n in extrapolate.get(dims, []) if not ok or n > ok[-1]["size"]]
            entry["extrapolated_mib"] = {
                str(n): base + power_law(fit, n**dims) for n in sorted(set(not_run + further)) if fit
            }
            too_big = [r for r in rows if r["status"] == "ok" and absolute_memory_of(r) > budget_mib]
            no_fit = [r for r in rows if r["status"] == "does not fit"]
            if too_big or no_fit:
                first = min(too_big + no_fit, key=lambda r: r["pixels"])
                entry["stops_fitting"] = {"size": first["size"], "how": "measured"}
            elif fit is not None and budget_mib > base:
                side = pixels_for(fit, budget_mib - base) ** (1.0 / dims)
                entry["stops_fitting"] = {"size": side, "how": "extrapolated"}
            out.append(entry)
    return out


def print_summary(summary: list[dict], budget_gib: float, log=print) -> None:
    log(f"\ngrowth exponents (slope of log value against log pixels/voxels), memory budget {budget_gib:g} GiB")
    for s in summary:
        te, me = s.get("time_exponent"), s.get("memory_exponent")
        fits = s.get("stops_fitting")
        where = (
            ""
            if fits is None
            else (
                f"stops fitting at {fits['size']}^{s['dims']} (measured)"
                if fits["how"] == "measured"
                else f"stops fitting near {fits['size']:.3g}^{s['dims']} (EXTRAPOLATED)"
            )
        )
        extra = ", ".join(f"{k}^{s['dims']}: {v / 1024:.1f} GiB" for k, v in s["extrapolated_mib"].items())
        te_s = f"{te:.2f}" if te is not None else "n/a"
        me_s = f"{me:.2f}" if me is not None else "n/a"
        le = s.get("local_memory_exponent")
        le_s = f" (largest two: n^{le:.2f})" if le is not None else ""
        log(f"{s['dims']}D {s['strategy']:6s} time ~ n^{te_s}  memory ~ n^{me_s}{le_s}  {where}")
        if extra:
            log(f"    extrapolated (not run): {extra}")


# ------------------------------------------------------------------------------------------------------- plots
def plot(records: list[dict], summary: list[dict], out_dir: Path, budget_gib: float) -> list[Path]:
    """``scaling_time.png`` and ``scaling_memory.png`` (log-log, a 2D and a 3D panel) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    cuda = any("cuda_peak_mib" in r for r in records)
    for kind in ("time", "memory"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, dims in zip(axes, (2, 3), strict=True):
            rows = [r for r in records if r["dims"] == dims]
            for strategy in dict.fromkeys(r["strategy"] for r in rows):
                ok = [r for r in rows if r["strategy"] == strategy and r["status"] == "ok"]
                if kind == "time":
                    ys = [r["time_ms"] / 1e3 for r in ok]
                else:
                    ys = [absolute_memory_of(r) / 1024 for r in ok]
                (line,) = ax.plot([r["pixels"] for r in ok], ys, "o-", label=strategy)
                entry = next((s for s in summary if s["dims"] == dims and s["strategy"] == strategy), {})
                if kind == "memory" and entry.get("extrapolated_mib") and ok:
                    ext = [(int(n) ** dims, v / 1024) for n, v in entry["extrapolated_mib"].items()]
                    xs = [ok[-1]["pixels"]] + [p for p, _ in ext]
                    ax.plot(xs, [ys[-1]] + [v for _, v in ext], "x--", color=line.get_color(), alpha=0.7)
            sizes = sorted(
                {r["size"] for r in rows}
                | {
                    int(n)
                    for e in summary
                    if e["dims"] == dims
                    for n in (e["extrapolated_mib"] if kind == "memory" else [])
                }
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([s**dims for s in sizes], [f"{s}^{dims}" for s in sizes])
            ax.minorticks_off()
            ax.set_xlabel("pixels" if dims == 2 else "voxels")
            ax.set_title(f"{dims}D")
            ax.grid(True, which="both", alpha=0.3)
            if kind == "memory":
                ax.axhline(budget_gib, color="grey", linestyle=":", label=f"budget {budget_gib:g} GiB")
            if rows:
                ax.legend(fontsize=8)
        encoder = records[0]["encoder"] if records else ""
        batch = records[0]["batch"] if records else ""
        if kind == "time":
            axes[0].set_ylabel("s per step")
            fig.suptitle(f"step time against image size ({encoder}, batch {batch})")
        else:
            axes[0].set_ylabel("peak CUDA memory (GiB)" if cuda else "peak resident set (GiB)")
            fig.suptitle(f"peak memory against image size ({encoder}, batch {batch}; x--: extrapolated)")
        fig.tight_layout()
        path = out_dir / f"scaling_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown_table(records: list[dict]) -> str:
    """The points as a Markdown table (time in ms, memory in MiB)."""
    lines = ["| Dims | Size | Strategy | ms/step | Peak memory (MiB) | Growth (MiB) | Status |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in records:
        if r["status"] == "ok":
            peak = absolute_memory_of(r)
            growth = r.get("peak_delta_mib", peak)
            lines.append(
                f"| {r['dims']}D | {r['size']} | {r['strategy']} | {r['time_ms']:.1f} | {peak:.0f} | "
                f"{growth:.0f} | ok |"
            )
        else:
            why = r.get("reason") or r.get("error", "")
            est = r.get("estimate_mib")
            est_s = f"~{est:.0f} (extrapolated)" if est else ""
            lines.append(f"| {r['dims']}D | {r['size']} | {r['strategy']} | | {est_s} | | {r['status']}: {why} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--encoder", default="vit_tiny", help="encoder preset for both dims (e.g. convnext_tiny)")
    parser.add_argument("--sizes-2d", nargs="*", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--sizes-3d", nargs="*", type=int, default=[32, 48, 64, 96, 128])
    parser.add_argument("--extrapolate-2d", nargs="*", type=int, default=[1024, 2048], help="memory only")
    parser.add_argument("--extrapolate-3d", nargs="*", type=int, default=[160, 192, 256], help="memory only")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point (after one warm-up step)")
    parser.add_argument("--repeats-large", type=int, default=1, help="timed steps of points >= --large-pixels")
    parser.add_argument("--large-pixels", type=int, default=250_000)
    parser.add_argument("--memory-budget-gib", type=float, default=20.0)
    parser.add_argument("--no-rlimit", action="store_true", help="no RLIMIT_AS in the CPU children")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per point (default: torch's)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per point")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "performance" / "scaling.json")
    parser.add_argument("--plots-dir", type=Path, default=REPO / "docs" / "performance")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--replot", type=Path, help="summary and plots of this JSON's points, nothing measured")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.replot:
        result = json.loads(args.replot.read_text())
        summary = summarize(
            result["points"], result["memory_budget_gib"], {2: args.extrapolate_2d, 3: args.extrapolate_3d}
        )
        print_summary(summary, result["memory_budget_gib"])
        result["summary"] = summary
        args.replot.write_text(json.dumps(result, indent=1) + "\n")
        for path in (
            [] if args.no_plots else plot(result["points"], summary, args.plots_dir, result["memory_budget_gib"])
        ):
            print(f"wrote {path}")
        return
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"{args.encoder}, batch {args.batch}, device {device}, memory budget {args.memory_budget_gib:g} GiB, "
        f"one process per point"
    )
    records = sweep(args, device)
    summary = summarize(records, args.memory_budget_gib, {2: args.extrapolate_2d, 3: args.extrapolate_3d})
    print_summary(summary, args.memory_budget_gib)
    result = {
        "encoder": args.encoder,
        "batch": args.batch,
        "device": device,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load,
        "memory_budget_gib": args.memory_budget_gib,
        "wall_s": time.perf_counter() - start,
        "points": records,
        "summary": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{markdown_table(records)}\n\nwrote {args.json}")
    if not args.no_plots:
        for path in plot(records, summary, args.plots_dir, args.memory_budget_gib):
            print(f"wrote {path}")
    print(f"total {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
