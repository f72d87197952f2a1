#!/usr/bin/env python
"""The GPU check: one command that measures what the project has never measured on a GPU, in under 8 minutes.

Parts, each with its own time budget (what would not fit is recorded as skipped) and its own error record (one
part failing never stops the others):

1. ``hardware``: device name and memory, CUDA / cuDNN / torch / MONAI versions, CPU count.
2. ``steps``: step time and peak memory (``torch.cuda.max_memory_allocated``) of Frepa, MAE, MFM and plain
   (one full-image reconstruction, RMSE only; ``tools/pretrain_steps.py``) at the paper presets: ``vit_b`` at
   2D 512^2 and ``vit_1024`` at 3D 128^3 (paper 4.1), with the batch of the pretraining bundles'
   ``gpu_settings`` (3D: ``batch_size x num_samples`` crops), bfloat16 AMP, eager and with ``torch.compile``;
   and ``frepa / (2 x plain)`` per dims and mode. Each mode runs in a subprocess of its own, so a crash or a
   hang in one (a compiler error, an illegal memory access) leaves the rest.
3. ``pipeline``: ``tools/benchmark_pipeline.py`` (when present) at the GPU preset with the preset's workers,
   told the Frepa step time measured in part 2. :func:`pipeline_command` is the one place its command line is
   written.
4. ``bundles``: each pretraining bundle's GPU preset for a few iterations (``python -m monai.bundle run`` on a
   copy of the bundle in a temporary folder, one epoch of ``--iterations`` iterations and one validation
   image): return code, wall time, the loss of each iteration (from MONAI's ``StatsHandler`` log) and the
   process's peak CUDA memory (printed by an appended ``finalize`` expression).

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``. Without CUDA everything runs on the CPU and
AMP is ignored (as the bundles do); ``--tiny`` shrinks every part for a CPU smoke test (``vit_tiny``, 32^2 /
16^3, the bundles' CPU preset at 32^2 / 32^3)::

    python tools/gpu_check.py --out gpu_check            # on the GPU machine, about 7 minutes
    python tools/gpu_check.py --tiny --out /tmp/gpu_tiny  # CPU smoke test, well under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("frepa", "mae", "mfm", "plain")
BUNDLES = {2: "frepa_pretrain_2d", 3: "frepa_pretrain_3d"}
MiB = 2**20
PEAK_TAG = "GPU_CHECK_PEAK_MIB"
# default seconds per part; the whole check also stops starting parts at --total-budget
BUDGETS = {"steps": 80.0, "compile": 180.0, "pipeline": 60.0, "bundles": 120.0}


def _error(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip().splitlines()[-1][:800]


# -------------------------------------------------------------------------------------------------- hardware
def hardware() -> dict:
    """What the numbers were taken on."""
    import monai
    import torch

    info = {
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            device_count=torch.cuda.device_count(),
            device_memory_gib=props.total_memory / 2**30,
            compute_capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return info


# -------------------------------------------------------------------------------------------- presets (configs)
def presets(tiny: bool) -> dict[int, dict]:
    """Per dims the encoder, size, batch and workers of the pretraining bundles' ``gpu_settings`` (``--tiny``:
    vit_tiny at 32^2 / 16^3, batch 2, no workers)."""
    out = {}
    for dims, bundle in BUNDLES.items():
        path = REPO / "bundles" / bundle / "configs" / "train.json"
        gpu = json.loads(path.read_text())["gpu_settings"]
        if tiny:
            out[dims] = {"encoder": "vit_tiny", "size": 32 if dims == 2 else 16, "batch": 2, "num_workers": 0}
            continue
        size = gpu["image_size"][0] if dims == 2 else gpu["patch_size"][0]
        batch = gpu["batch_size"] * (gpu.get("num_samples", 1) if dims == 3 else 1)
        out[dims] = {"encoder": gpu["encoder"], "size": size, "batch": batch, "num_workers": gpu["num_workers"]}
    return out


# ------------------------------------------------------------------------------------- steps (worker process)
def _steps_worker(spec: dict) -> None:
    """Run ``spec['cases']`` in order within ``spec['budget_s']``; one JSON line per case on ``spec['out']``."""
    import torch
    from pretrain_steps import build_case, run_step, time_steps

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seen: dict[int, float] = {}  # seconds of the last case per dims: the estimate of the next one
    with open(spec["out"], "a") as out:
        for case_spec in spec["cases"]:
            dims = case_spec["dims"]
            record = {**case_spec, "compile": spec["compile"], "amp": spec["amp"] and device.type == "cuda"}
            elapsed = time.perf_counter() - start
            estimate = seen.get(dims, max(seen.values(), default=0.0))
            if elapsed + estimate > spec["budget_s"]:
                record.update(status="skipped", reason=f"budget: {elapsed:.0f} s used, next ~{estimate:.0f} s")
                out.write(json.dumps(record) + "\n")
                out.flush()
                continue
            case_start = time.perf_counter()
            case = None
            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                case = build_case(
                    case_spec["strategy"],
                    case_spec["encoder"],
                    dims,
                    case_spec["size"],
                    case_spec["batch"],
                    device,
                    amp=spec["amp"],
                    compile=spec["compile"],
                )
                warm = time.perf_counter()
                losses = [float(run_step(case)) for _ in range(spec["warmup"])]  # compiles here
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                warmup_s = time.perf_counter() - warm
                times = time_steps(case, repeats=spec["repeats"], warmup=0)
                losses.append(float(run_step(case)))
                record.update(
                    status="ok",
                    time_ms=1e3 * sorted(times)[len(times) // 2],
                    times_ms=[1e3 * t for t in times],
                    warmup_s=warmup_s,
                    losses=losses,
                    peak_mib=torch.cuda.max_memory_allocated(device) / MiB if device.type == "cuda" else None,
                    device=str(device),
                )
            except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
                oom = isinstance(exc, torch.cuda.OutOfMemoryError)
                record.update(status="out of memory" if oom else "error", error=_error(exc))
            finally:
                del case
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            seen[dims] = time.perf_counter() - case_start
            record["wall_s"] = seen[dims]
            out.write(json.dumps(record) + "\n")
            out.flush()


def step_cases(preset: dict[int, dict], strategies: list[str]) -> list[dict]:
    """The cases of one mode: frepa and plain of each dims first (the ratio), then the other strategies."""
    first = [s for s in ("frepa", "plain") if s in strategies]
    rest = [s for s in strategies if s not in first]
    order = [(d, s) for d in preset for s in first] + [(d, s) for d in preset for s in rest]
    keys = ("encoder", "size", "batch")
    return [{"strategy": s, "dims": d, **{k: preset[d][k] for k in keys}} for d, s in order]


def run_steps(args, preset, mode: str, budget: float, workdir: Path) -> list[dict]:
    """One mode (``eager`` or ``compile``) in a worker subprocess; every case gets a record."""
    cases = step_cases(preset, args.compile_strategies if mode == "compile" else args.strategies)
    out = workdir / f"steps_{mode}.jsonl"
    spec = {
        "cases": cases,
        "compile": mode == "compile",
        "amp": not args.no_amp,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "budget_s": max(budget - 20.0, 1.0),  # the worker's own import and start-up
        "out": str(out),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--steps-worker", json.dumps(spec)]
    error = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 30.0, env=_env())
        if proc.returncode != 0:
            error = f"worker rc {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1][:500]
    except subprocess.TimeoutExpired:
        error = f"worker timed out after {budget + 30:.0f} s"
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    missing = cases[len(done) :]
    for case in missing:
        done.append({**case, "compile": mode == "compile", "status": "error" if error else "skipped",
                     "error": error or "not reached"})  # fmt: skip
    for record in done:
        record["mode"] = mode
    return done


def ratios(records: list[dict]) -> list[dict]:
    """``frepa / (2 x plain)`` per mode and dims, where both were measured."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in records):
        for dims in sorted({r["dims"] for r in records}):
            by = {r["strategy"]: r for r in records if r["mode"] == mode and r["dims"] == dims}
            frepa, plain = by.get("frepa", {}), by.get("plain", {})
            entry = {"mode": mode, "dims": dims}
            if frepa.get("status") == "ok" and plain.get("status") == "ok":
                entry.update(status="ok", ratio=frepa["time_ms"] / (2.0 * plain["time_ms"]))
            else:
                entry.update(status="not measured", reason="frepa or plain missing")
            out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------- pipeline
def pipeline_command(bundle: str, workers: int, step_ms: float | None, tiny: bool, help_text: str) -> list[str]:
    """The command line of ``tools/benchmark_pipeline.py`` for one bundle (the one place to adapt it)."""
    cmd = [sys.executable, str(REPO / "tools" / "benchmark_pipeline.py"), "--bundles", bundle]
    if tiny:
        cmd += ["--presets", "cpu", "--workers", "0", "--batches", "2", "--steps", "1"]
        if "--places" in help_text:
            cmd += ["--places", "step"]
        if "--set" in help_text:
            size = "cpu_settings#image_size=[32,32]" if bundle.endswith("2d") else "cpu_settings#patch_size=[32,32,32]"
            cmd += ["--set", size]
    else:
        cmd += ["--presets", "gpu", "--workers", str(workers)]
        if "--gpu-batches" in help_text:
            cmd += ["--gpu-batches", "2"]
        if step_ms is not None and "--gpu-step-ms" in help_text:
            cmd += ["--gpu-step-ms", f"{step_ms:.1f}"]
    return cmd


def run_pipeline(args, preset, steps: list[dict], budget: float) -> list[dict]:
    """The pipeline rate per bundle (skipped when ``tools/benchmark_pipeline.py`` does not exist)."""
    tool = REPO / "tools" / "benchmark_pipeline.py"
    if not tool.exists():
        return [{"bundle": b, "status": "skipped", "reason": f"{tool.relative_to(REPO)} not found"}
                for b in BUNDLES.values()]  # fmt: skip
    try:
        help_text = subprocess.run(
            [sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=60, env=_env()
        ).stdout
    except subprocess.TimeoutExpired:
        help_text = ""
    start = time.perf_counter()
    out = []
    for dims, bundle in BUNDLES.items():
        record = {"bundle": bundle, "workers": preset[dims]["num_workers"]}
        left = budget - (time.perf_counter() - start)
        if left < 10:
            out.append({**record, "status": "skipped", "reason": "budget"})
            continue
        frepa = [r for r in steps if r["strategy"] == "frepa" and r["dims"] == dims and r.get("status") == "ok"]
        step_ms = min((r["time_ms"] for r in frepa), default=None)
        cmd = pipeline_command(bundle, preset[dims]["num_workers"], step_ms, args.tiny, help_text)
        record["command"] = " ".join(cmd[1:])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left, env=_env(), cwd=REPO)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("pipeline / step", "workers to feed"))]
            record.update(rc=proc.returncode, lines=lines, wall_s=time.perf_counter() - t0)
            record["status"] = "ok" if proc.returncode == 0 and lines else "error"
            found = (re.match(r"(.*):\s*([0-9.]+)", ln) for ln in lines)
            record["values"] = {m.group(1): float(m.group(2)) for m in found if m}
            if record["status"] == "error":
                record["error"] = (proc.stderr.strip().splitlines() or ["no result line printed"])[-1][:500]
        except subprocess.TimeoutExpired:
            record.update(status="skipped", reason=f"timed out after {left:.0f} s (budget)")
        out.append(record)
    return out


# ----------------------------------------------------------------------------------------------------- bundles
LOSS_LINE = re.compile(r"Iter:\s*(\d+)/(\d+)\s*--\s*(.*)")


def parse_losses(log: str) -> list[float]:
    """The ``loss`` of each iteration from MONAI ``StatsHandler`` lines (``Epoch: 1/1, Iter: 2/3 -- loss: ...``)."""
    losses = []
    for line in log.splitlines():
        m = LOSS_LINE.search(line)
        if m and (v := re.search(r"(?:^|\s)loss:\s*(\S+)", m.group(3))):
            try:
                losses.append(float(v.group(1)))
            except ValueError:
                pass
    return losses


def bundle_overrides(root: Path, dims: int, tiny: bool, iterations: int) -> dict:
    """Overrides for a few iterations of the bundle's GPU preset (``--tiny``: its CPU preset at 32^2 / 32^3)."""
    config = json.loads((root / "configs" / "train.json").read_text())
    preset = "cpu" if tiny else "gpu"
    key = f"{preset}_settings"
    batch = config[key]["batch_size"] if not tiny else 2
    finalize = list(config.get("finalize", []))
    finalize.append(
        f"$print('{PEAK_TAG}', torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else -1.0)"
    )
    over = {
        "preset": preset,
        f"{key}#max_epochs": 1,
        f"{key}#val_interval": 1,
        "train#trainer#epoch_length": iterations,
        "train_datalist": f"$@datalist['training'][:{batch * iterations}]",
        "val_datalist": "$@datalist['validation'][:1]",
        "finalize": finalize,
    }
    if tiny:
        over[f"{key}#batch_size"] = batch
        if dims == 2:
            over[f"{key}#image_size"] = [32, 32]
        else:
            over.update({f"{key}#patch_size": [32, 32, 32], f"{key}#num_samples": 1, f"{key}#val_num_samples": 1})
    return over


def run_bundle(dims: int, tiny: bool, iterations: int, timeout: float) -> dict:
    """One pretraining bundle's preset for ``iterations`` iterations on a temporary copy."""
    name = BUNDLES[dims]
    record = {"bundle": name, "preset": "cpu" if tiny else "gpu", "iterations": iterations}
    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{name}_") as tmp:
        root = Path(tmp) / name
        shutil.copytree(REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("models", "eval"))
        over = bundle_overrides(root, dims, tiny, iterations)
        args = [a for k, v in over.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "train.json")]
        cmd += ["--bundle_root", str(root), *args]
        record["command"] = (
            f"python -m monai.bundle run --config_file <copy>/configs/train.json {' '.join(args[:2])} ..."
        )
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp, env=_env())
        except subprocess.TimeoutExpired as exc:
            log = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            record.update(status="skipped", reason=f"timed out after {timeout:.0f} s", losses=parse_losses(log))
            return record
        log = proc.stdout + "\n" + proc.stderr
        record.update(rc=proc.returncode, wall_s=time.perf_counter() - start, losses=parse_losses(log))
        peak = [float(m.group(1)) for m in re.finditer(rf"{PEAK_TAG}\s+(-?[0-9.eE+]+)", log)]
        record["peak_mib"] = peak[-1] if peak and peak[-1] >= 0 else None
        record["models"] = sorted(p.name for p in (root / "models").glob("*")) if (root / "models").is_dir() else []
        ok = proc.returncode == 0 and record["losses"] and all(math.isfinite(v) for v in record["losses"])
        record["status"] = "ok" if ok else "error"
        if not ok:
            record["error"] = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1][:800]
    return record


# ------------------------------------------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    """One table, one row per measurement (step case, ratio, pipeline run, bundle run)."""
    hw = result.get("hardware", {})
    lines = [
        f"# GPU check on {hw.get('device', '?')}",
        "",
        f"torch {hw.get('torch')}, CUDA {hw.get('cuda_version')}, MONAI {hw.get('monai')}, "
        f"{hw.get('cpu_count')} CPUs; {result.get('mode', '')}; total {result.get('wall_s', 0):.0f} s",
        "",
        "| Part | Item | Dims | Mode | Status | ms/step | Peak MiB | Note |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else ""

    for r in result.get("steps", []):
        note = r.get("reason") or r.get("error") or (f"warm-up {r['warmup_s']:.1f} s" if "warmup_s" in r else "")
        item = f"{r['strategy']} {r['encoder']} {r['size']}^{r['dims']} x{r['batch']}"
        lines.append(
            f"| steps | {item} | {r['dims']}D | {r['mode']} | {r['status']} | {num(r.get('time_ms'), '.1f')} | "
            f"{num(r.get('peak_mib'), '.0f')} | {note} |"
        )
    for r in result.get("ratios", []):
        lines.append(
            f"| ratio | frepa / (2 x plain) | {r['dims']}D | {r['mode']} | {r['status']} | "
            f"{num(r.get('ratio'), '.2f')} | | {r.get('reason', '')} |"
        )
    for r in result.get("pipeline", []):
        note = "; ".join(r.get("lines", [])) or r.get("reason") or r.get("error", "")
        lines.append(f"| pipeline | {r['bundle']} workers={r.get('workers', '')} | | | {r['status']} | | | {note} |")
    for r in result.get("bundles", []):
        losses = ", ".join(f"{v:.4f}" for v in r.get("losses", []))
        note = f"rc {r.get('rc')}, {num(r.get('wall_s'), '.0f')} s, losses {losses}"
        if r.get("error") or r.get("reason"):
            note += f"; {r.get('error') or r.get('reason')}"
        lines.append(
            f"| bundle | {r['bundle']} {r['preset']} x{r['iterations']} | | | {r['status']} | | "
            f"{num(r.get('peak_mib'), '.0f')} | {note} |"
        )
    for part, error in result.get("errors", {}).items():
        lines.append(f"| {part} | (part failed) | | | error | | | {error} |")
    return "\n".join(lines) + "\n"


def _env() -> dict:
    """The children's environment: this tree's ``frepa_monai`` and ``tools/`` importable."""
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "tools")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps-worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder of the JSON and Markdown")
    parser.add_argument("--json", type=Path, default=None, help="default <out>/gpu_check.json")
    parser.add_argument("--markdown", type=Path, default=None, help="default <out>/gpu_check.md")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test sizes")
    parser.add_argument("--parts", nargs="+", default=["steps", "compile", "pipeline", "bundles"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--compile-strategies", nargs="*", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--no-amp", action="store_true", help="fp32 steps on CUDA (AMP is bfloat16 by default)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default 2, tiny 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case (default 5, tiny 1)")
    parser.add_argument("--iterations", type=int, default=None, help="bundle iterations (default 3, tiny 2)")
    for part, seconds in BUDGETS.items():
        parser.add_argument(f"--budget-{part}", type=float, default=seconds, help=f"seconds (default {seconds:g})")
    parser.add_argument("--total-budget", type=float, default=420.0, help="no part starts after this (seconds)")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 5)
    args.iterations = args.iterations if args.iterations is not None else (2 if args.tiny else 3)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps_worker:
        _steps_worker(json.loads(args.steps_worker))
        return 0
    start = time.perf_counter()
    json_path = args.json or args.out / "gpu_check.json"
    md_path = args.markdown or args.out / "gpu_check.md"
    result: dict = {"mode": "tiny (CPU smoke test)" if args.tiny else "paper presets", "errors": {}, "skipped": {}}
    budgets = {p: getattr(args, f"budget_{p}") for p in BUDGETS}

    def left() -> float:
        return args.total_budget - (time.perf_counter() - start)

    def part(name, fn):
        if name not in args.parts and name != "hardware":
            result["skipped"][name] = "not in --parts"
            return None
        if name != "hardware" and left() < 15:
            result["skipped"][name] = f"total budget {args.total_budget:g} s used"
            return None
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one part failing never stops the others
            result["errors"][name] = _error(exc)
            print(f"[gpu_check] {name} failed: {result['errors'][name]}", flush=True)
            return None
        finally:
            result.setdefault("part_wall_s", {})[name] = time.perf_counter() - t0
            print(f"[gpu_check] {name}: {time.perf_counter() - t0:.0f} s", flush=True)

    result["hardware"] = part("hardware", hardware) or {}
    preset = presets(args.tiny)
    result["presets"] = preset
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        steps = []
        for mode, budget_key in (("eager", "steps"), ("compile", "compile")):
            got = part(budget_key, lambda m=mode, b=budget_key: run_steps(args, preset, m, min(budgets[b], left()),
                                                                           Path(tmp)))  # fmt: skip
            steps += got or []
        result["steps"] = steps
        result["ratios"] = ratios(steps) if steps else []
        for r in result["ratios"]:
            if r["status"] == "ok":
                print(f"frepa / (2 x plain) {preset[r['dims']]['encoder']} {r['dims']}D {r['mode']}: {r['ratio']:.2f}")
    result["pipeline"] = part("pipeline", lambda: run_pipeline(args, preset, steps, min(budgets["pipeline"], left())))
    result["pipeline"] = result["pipeline"] or []

    def bundles():
        out, t0 = [], time.perf_counter()
        for i, dims in enumerate(BUNDLES):  # each gets an equal share of what is left of the part's budget
            share = (budgets["bundles"] - (time.perf_counter() - t0)) / (len(BUNDLES) - i)
            out.append(run_bundle(dims, args.tiny, args.iterations, max(min(share, left()), 1.0)))
        return out

    result["bundles"] = part("bundles", bundles) or []
    result["wall_s"] = time.perf_counter() - start
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {json_path} and {md_path} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
