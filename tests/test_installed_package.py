"""frepa-monai as a new user gets it: the wheel, installed (not editable) in a fresh virtual environment outside the
repository, runs a bundle published with ``tools/zoo.py publish`` and downloaded by MONAI's own client.

1. **Wheel.** ``pip wheel --no-deps`` (``build`` is not a dependency; pip builds in an isolated environment, as
   ``pip install`` would) from a copy of the files the package is made of (``setup.cfg``, ``pyproject.toml``,
   ``README.md``, ``LICENSE``, ``frepa_monai/``): an in-tree build would reuse a stale ``build/lib`` of the clone.
2. **Install.** ``python3.11 -m venv`` and that venv's pip: ``pip install torch==2.13.0 <wheel>`` (the README's
   pin, which gives the CPU build), with ``--no-compile`` (pip would byte-compile the whole 3 GB environment,
   PyTorch's thousands of modules included; Python compiles the modules a run imports, when it imports them).
   The venv lies outside the repository and outside the system's temporary folder: in ``$FREPA_INSTALL_TEST_DIR``,
   default ``~/.cache/frepa-monai/install-test``, one folder per run, removed at the end.
3. **Publish and download.** ``tools/zoo.py publish`` (this repository's Python, which runs the model zoo's checks)
   into a folder served by a real HTTP server on 127.0.0.1 (a thread), then the venv's
   ``python -m monai.bundle download --url``.
4. **Run.** From the downloaded bundle's folder, with the venv's Python and no ``PYTHONPATH``:
   ``frepa_vessel_segmentation_2d`` (a downstream bundle that needs no other with ``--encoder random``) trains one
   tiny epoch (CPU preset, 2 CHASE_DB1 images at a 128-pixel working size, 64x64 patches) and runs its inference
   on a 999x960 fundus photograph of the embedded sample data: the vessel mask comes back at the input's size.

The network is needed only by pip (PyPI for the dependencies, as for the README's install).
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bundle_helpers import REPO, cli_overrides
from PIL import Image

from frepa_monai.networks import read_build_config

NAME = "frepa_vessel_segmentation_2d"
PACKAGE_FILES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "frepa_monai")
TORCH = "torch==2.13.0"
TRAIN = {
    "preset": "cpu",
    "encoder": "random",
    "cpu_settings#image_size": [64, 64],
    "cpu_settings#working_size": 128,
    "cpu_settings#num_samples": 2,
    "cpu_settings#max_epochs": 1,
    "cpu_settings#val_interval": 1,
    "train_datalist": "$@datalist['training'][:2]",
    "val_datalist": "$@datalist['validation'][:1]",
    "test_datalist": "$@datalist['test'][:1]",
}
INFER = {"preset": "cpu", "image_size": [64, 64], "working_size": 128}


def user_env() -> dict:
    """The environment of a user's shell: no ``PYTHONPATH`` (which would put this clone first), no active venv,
    no user site-packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    return {**env, "PYTHONNOUSERSITE": "1"}


def timed(cmd: list, cwd: Path, log: Path, timeout: float = 900, env: dict | None = None) -> float:
    """Run ``cmd`` in ``cwd`` (as a user would, unless ``env`` is given), its output in ``log``; fails with its tail;
    returns the wall time."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env or user_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}:\n{log.read_text()[-4000:]}"
    )
    return seconds


@pytest.fixture
def work_dir():
    """A fresh folder outside the repository and the system's temporary folder (the venv is 3 GB), removed after."""
    base = Path(os.environ.get("FREPA_INSTALL_TEST_DIR") or Path.home() / ".cache" / "frepa-monai" / "install-test")
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=base)).resolve()
    assert REPO.resolve() not in folder.parents and Path(tempfile.gettempdir()).resolve() not in folder.parents
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def served():
    """A real static HTTP server on 127.0.0.1 (a thread); yields a function that serves a folder and gives its URL."""
    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_a_downloaded_bundle(work_dir, served, record_property):
    times = {}
    logs = work_dir / "logs"
    logs.mkdir()

    # 1. the wheel, from a copy of the package's files
    src, wheels = work_dir / "src", work_dir / "wheels"
    for rel in PACKAGE_FILES:
        if (REPO / rel).is_dir():
            shutil.copytree(REPO / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / rel, src / rel)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, src]
    times["wheel"] = timed(pip_wheel, work_dir, logs / "wheel.log")
    (wheel,) = wheels.glob("frepa_monai-*.whl")
    version = re.search(r"^version = (\S+)$", (REPO / "setup.cfg").read_text(), re.M)[1]
    assert wheel.name == f"frepa_monai-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        requires = [line for line in zf.read(f"frepa_monai-{version}.dist-info/METADATA").decode().splitlines()]
    tracked_samples = [p for p in (REPO / "frepa_monai" / "data" / "sample").rglob("*") if p.is_file()]
    assert sum(n.startswith("frepa_monai/data/sample/") for n in names) == len(tracked_samples) > 300
    assert "frepa_monai/zoo/checks.py" in names and not any(
        n.startswith(("tests/", "bundles/", "tools/")) for n in names
    )
    assert "Requires-Dist: tqdm" in requires
    size_mb = wheel.stat().st_size / 1e6

    # 2. a fresh venv outside the repository; the package not editable, with the pinned CPU build of PyTorch
    venv = work_dir / "venv"
    times["venv"] = timed([sys.executable, "-m", "venv", venv], work_dir, logs / "venv.log")
    python = venv / "bin" / "python"
    install = [python, "-m", "pip", "install", "-q", "--no-compile", TORCH, wheel]
    times["install"] = timed(install, work_dir, logs / "install.log", timeout=1800)
    probe = "import frepa_monai, torch, tqdm; print(frepa_monai.__version__, frepa_monai.__file__, torch.__version__)"
    out = subprocess.run([python, "-c", probe], cwd=work_dir, env=user_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    got_version, location, torch_version = out.stdout.split()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert got_version == version and Path(location).parent == site / "frepa_monai"
    assert torch_version.startswith("2.13.0")
    direct_url = json.loads((site / f"frepa_monai-{version}.dist-info" / "direct_url.json").read_text())
    assert direct_url["url"].endswith(wheel.name) and "dir_info" not in direct_url  # from the wheel, not editable

    # 3. publish (this repository's Python and tools/zoo.py), serve, download with MONAI's client
    site_dir = work_dir / "site"
    site_dir.mkdir()
    url = served(site_dir)
    publish = [sys.executable, REPO / "tools" / "zoo.py", "publish", NAME, "--to", site_dir, "--base_url", url]
    times["publish"] = timed(publish, work_dir, logs / "publish.log", env=dict(os.environ))  # the maintainer's
    zip_name = f"{NAME}_v0.1.0.zip"
    assert (site_dir / zip_name).is_file()
    downloads = work_dir / "downloads"
    downloads.mkdir()
    download = [python, "-m", "monai.bundle", "download", "--name", NAME, "--version", "0.1.0"]
    download += ["--url", f"{url}/{zip_name}", "--bundle_dir", downloads]
    times["download"] = timed(download, downloads, logs / "download.log")
    assert "tqdm is not installed" not in (logs / "download.log").read_text()
    root = downloads / NAME
    assert (root / "configs" / "train.json").is_file() and not (root / "models").exists()

    # 4. train one tiny epoch and infer, from the bundle's folder, with the venv's Python
    train_json = json.loads((root / "configs" / "train.json").read_text())
    train = {**TRAIN, **({"mlflow": False} if "mlflow" in train_json else {})}
    run = [python, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", *cli_overrides(train)]
    times["train"] = timed(run, root, logs / "train.log")
    text = (logs / "train.log").read_text()
    losses = [float(v) for v in re.findall(r"train_loss: ([-+0-9.eEnaif]+)", text)]  # StatsHandler, per iteration
    assert losses and all(math.isfinite(v) for v in losses), f"training losses {losses}:\n{text[-3000:]}"
    dice = [float(v) for v in re.findall(r"val_mean_dice: ([-+0-9.eE]+)", text)]
    assert dice and all(0.0 <= v <= 1.0 for v in dice), f"validation Dice {dice}:\n{text[-3000:]}"
    weights = root / "models" / "model.pt"
    assert weights.is_file() and list((root / "models").glob("checkpoint_epoch=1.pt"))
    record = read_build_config(weights)
    assert record["builder"] == "build_task_network" and record["args"]["img_size"] == [64, 64]
    assert record["args"]["encoder"] == "random" and record["args"]["in_channels"] == 4

    source = Path(
        subprocess.run(
            [python, "-c", "import frepa_monai.data as d; print(d.vessel_segmentation_datalist()['test'][0]['image'])"],
            cwd=root,
            env=user_env(),
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    assert site in source.parents, f"{source} is not the installed package's sample data"
    infer = {**INFER, "datalist": [{"image": str(source)}]}
    run = [python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *cli_overrides(infer)]
    times["inference"] = timed(run, root, logs / "inference.log")
    mask = np.asarray(Image.open(root / "eval" / "inference" / f"{source.stem}_seg.png"))
    assert mask.shape == np.asarray(Image.open(source)).shape[:2] == (960, 999)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    summary = json.loads((root / "eval" / "inference" / "summary.json").read_text())
    assert summary["processed"] == [str(source)] and summary["failed"] == []

    record_property("wheel_mb", round(size_mb, 1))
    for step, seconds in times.items():
        record_property(f"{step}_s", round(seconds, 1))
    print(f"wheel {size_mb:.1f} MB; " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
