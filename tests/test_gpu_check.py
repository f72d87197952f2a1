"""``tools/gpu_check.py`` at its CPU smoke-test size, and the power-law fit of ``tools/benchmark_scaling.py``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_power_law_fit_recovers_the_exponent_and_its_inverse():
    scaling = _tool("benchmark_scaling")
    pixels = [32**3, 48**3, 64**3, 96**3]
    exponent, coefficient = scaling.fit_power_law(pixels, [3.5 * n**1.37 for n in pixels])
    assert exponent == pytest.approx(1.37, abs=1e-9) and coefficient == pytest.approx(3.5, rel=1e-9)
    fit = (exponent, coefficient)
    assert scaling.power_law(fit, 128**3) == pytest.approx(3.5 * (128**3) ** 1.37, rel=1e-9)
    assert scaling.pixels_for(fit, scaling.power_law(fit, 1e7)) == pytest.approx(1e7, rel=1e-9)
    # least squares: a point off the line moves the slope between the two lines' slopes
    slope, _ = scaling.fit_power_law([1, 2, 4], [1, 2, 16])
    assert 1 < slope < 4
    with pytest.raises(ValueError, match="at least two distinct sizes"):
        scaling.fit_power_law([64, 64], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive finite"):
        scaling.fit_power_law([64, 128], [1.0, 0.0])


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    before = {p for b in ("frepa_pretrain_2d", "frepa_pretrain_3d") for p in (REPO / "bundles" / b).rglob("*")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--tiny", "--out", str(out)]
    # torch.compile takes minutes on a 2-core CPU; the pipeline part runs tools/benchmark_pipeline.py, which
    # tests/test_pipeline.py covers (half a minute here)
    cmd += ["--parts", "steps", "bundles"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {p for b in ("frepa_pretrain_2d", "frepa_pretrain_3d") for p in (REPO / "bundles" / b).rglob("*")}
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), after - before


@pytest.mark.slow
def test_tiny_gpu_check_measures_every_part(tiny_check):
    result, table, written = tiny_check
    assert written == set(), "the bundle runs must write into their temporary copies only"
    assert result["errors"] == {}
    assert result["skipped"] == {"compile": "not in --parts", "pipeline": "not in --parts"}

    hw = result["hardware"]
    assert hw["torch"] == torch.__version__ and hw["cpu_count"] == os.cpu_count()
    assert hw["cuda_available"] == torch.cuda.is_available() and hw["device"]

    steps = result["steps"]
    assert sorted((r["strategy"], r["dims"]) for r in steps) == sorted(
        (s, d) for s in ("frepa", "mae", "mfm", "plain") for d in (2, 3)
    )
    for r in steps:
        assert r["status"] == "ok", r
        assert r["encoder"] == "vit_tiny" and r["size"] == (32 if r["dims"] == 2 else 16)
        assert math.isfinite(r["time_ms"]) and r["time_ms"] > 0
        assert all(math.isfinite(v) and v > 0 for v in r["losses"])

    ratios = {(r["mode"], r["dims"]): r for r in result["ratios"]}
    assert set(ratios) == {("eager", 2), ("eager", 3)}
    for (mode, dims), r in ratios.items():
        by = {s["strategy"]: s["time_ms"] for s in steps if s["dims"] == dims and s["mode"] == mode}
        assert r["ratio"] == pytest.approx(by["frepa"] / (2 * by["plain"]))

    assert result["pipeline"] == []

    bundles = {b["bundle"]: b for b in result["bundles"]}
    assert set(bundles) == {"frepa_pretrain_2d", "frepa_pretrain_3d"}
    for b in bundles.values():
        assert b["rc"] == 0 and b["status"] == "ok", b
        assert len(b["losses"]) == b["iterations"] == 2
        assert all(math.isfinite(v) and v > 0 for v in b["losses"])
        assert "model.pt" in b["models"] and "encoder.pt" in b["models"]

    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Part")]
    parts = [row.split("|")[1].strip() for row in rows]
    assert parts.count("steps") == len(steps) and parts.count("ratio") == len(result["ratios"])
    assert parts.count("pipeline") == len(result["pipeline"]) and parts.count("bundle") == len(result["bundles"])
    for r in steps:
        item = f"| {r['strategy']} {r['encoder']} {r['size']}^{r['dims']} x{r['batch']} |"
        assert sum(item in row and f"{r['time_ms']:.1f}" in row for row in rows) == 1
