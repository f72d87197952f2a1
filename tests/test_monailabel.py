"""The segmentation bundles served by a real MONAI Label server (its ``monaibundle`` sample app) on 127.0.0.1.

MONAI Label lives in a venv of its own (its pins differ from the project's, see tools/monailabel/README.md). Which
Python runs the server:

- ``FREPA_MONAILABEL_PYTHON=<python>``: an existing MONAI Label venv with this checkout installed (``pip install
  -e .``); ``FREPA_MONAILABEL_PYTHON=none`` skips these tests.
- otherwise ``tools/monailabel/.venv`` (git-ignored), created on first use with ``tools/monailabel/setup_app.py
  --create-venv`` (pinned versions, about 2.5 minutes and 8 GB with torch's CUDA libraries; reused afterwards).

For each bundle a model.pt is built from the bundle's own ``inference.json`` at the CPU preset (seeded weights;
an untrained network predicts one class everywhere, so the final convolution's bias is centred on the first study
image so that several classes occur). The server then gets a studies folder with two CHASE_DB1 fundus photographs
(JPEG) and the MNI152 T1 volume (NIfTI); ``/info/`` must list both models with the labels of their metadata's
``channel_def``, and ``/infer/<model>`` must return, for every study, a label image of the input's size (and, for
NIfTI, affine) equal to what the bundle's own ``inference.json`` writes for the same model.pt.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from frepa_monai.data import brain_region_segmentation_datalist, vessel_segmentation_datalist

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
V2D, S3D = "frepa_vessel_segmentation_2d", "frepa_segmentation_3d"
BUNDLES = (V2D, S3D)
START_TIMEOUT_S = 240
INFER_TIMEOUT_S = 300


def _setup_app_module():
    spec = importlib.util.spec_from_file_location("frepa_setup_app", REPO / "tools" / "monailabel" / "setup_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup_app = _setup_app_module()


def _origins(python: str) -> tuple[str | None, str | None]:
    """Where ``monailabel`` and ``frepa_monai`` would be imported from by ``python`` (None: not installed)."""
    code = (
        "import importlib.util as u\n"
        "for m in ('monailabel', 'frepa_monai'):\n"
        "    s = u.find_spec(m)\n"
        "    print(s.origin if s else '')\n"
    )
    res = subprocess.run([python, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        pytest.fail(f"{python} does not run: {res.stderr[-2000:]}")
    ml, frepa = (res.stdout.splitlines() + ["", ""])[:2]
    return ml or None, frepa or None


@pytest.fixture(scope="module")
def monailabel_python() -> str:
    """The Python of a MONAI Label venv with this checkout's frepa_monai (see the module docstring)."""
    chosen = os.environ.get("FREPA_MONAILABEL_PYTHON", "").strip()
    if chosen.lower() in ("none", "skip", "0", "false"):
        pytest.skip(f"FREPA_MONAILABEL_PYTHON={chosen}: MONAI Label tests disabled")
    if not chosen:
        venv = setup_app.DEFAULT_VENV
        if importlib.util.find_spec("venv") is None or importlib.util.find_spec("ensurepip") is None:
            pytest.skip(f"{sys.executable} cannot create venvs (no venv/ensurepip): MONAI Label is not installed")
        venv.mkdir(parents=True, exist_ok=True)
        with open(venv / ".frepa-lock", "w") as lock:  # one creator at a time (inside the git-ignored venv)
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                chosen = str(setup_app.create_venv(venv))
            except subprocess.CalledProcessError as e:
                pytest.fail(
                    f"creating the MONAI Label venv {venv} failed ({' '.join(map(str, e.cmd))}):\n"
                    f"{(e.stdout or '')[-3000:]}\nset FREPA_MONAILABEL_PYTHON=none to skip these tests"
                )
    if not Path(chosen).is_file():
        pytest.skip(f"FREPA_MONAILABEL_PYTHON={chosen} does not exist: MONAI Label is not installed there")
    ml, frepa = _origins(chosen)
    if ml is None:
        pytest.skip(f"monailabel is not installed beside {chosen} (see tools/monailabel/README.md)")
    expected = REPO / "frepa_monai" / "__init__.py"
    if frepa is None or Path(frepa).resolve() != expected.resolve():
        pytest.fail(f"frepa_monai beside {chosen} is {frepa}, not this checkout's: pip install -e {REPO} there")
    return chosen


def _studies(folder: Path) -> dict[str, list[Path]]:
    """Two real CHASE_DB1 fundus photographs (JPEG, test split) and the MNI152 T1 volume (NIfTI), per bundle."""
    folder.mkdir(parents=True)
    fundus = [Path(item["image"]) for item in vessel_segmentation_datalist()["test"][:2]]
    brain = [Path(brain_region_segmentation_datalist()["test"][0]["image"])]
    for f in fundus + brain:
        shutil.copy2(f, folder / f.name)
    return {V2D: [folder / f.name for f in fundus], S3D: [folder / f.name for f in brain]}


def _build_model(bundle: str, image: Path, out: Path) -> Path:
    """model.pt of ``bundle``'s inference network at the CPU preset whose prediction on ``image`` has several classes.

    Seeded weights; the final convolution's bias is shifted so that every class's mean logit over ``image`` is 0
    (untrained, the network predicts one class everywhere and a comparison of label maps would be trivial).
    """
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(out.parent.parent)
    parser["preset"] = "cpu"
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    num_classes = parser.get_parsed_content("num_classes")
    x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"][None]
    x = x.as_tensor() if hasattr(x, "as_tensor") else x  # a plain tensor: the bias update below stays a Parameter
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(x, network)
    final = [m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)][-1]
    assert final.out_channels == num_classes and final.bias is not None
    with torch.no_grad():
        final.bias.sub_(logits.mean(dim=[0, *range(2, logits.ndim)]))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _post(url: str, timeout: float) -> tuple[bytes, str]:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        raise AssertionError(f"POST {url} -> {e.code}: {e.read()[:500]!r}") from e


def _log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def _reference_labels(python: str, work: Path, models: dict[str, Path], studies: dict[str, list[Path]]) -> Path:
    """Run each bundle's own inference.json (its SaveImaged output) on the studies, in the MONAI Label venv."""
    script = ["import sys", "from monai.bundle import run"]
    for name, model in models.items():
        root = work / name
        (root / "models").mkdir(parents=True)
        shutil.copy2(model, root / "models" / "model.pt")
        (work / f"{name}_in").mkdir()
        for f in studies[name]:
            shutil.copy2(f, work / f"{name}_in" / f.name)
        config = REPO / "bundles" / name / "configs" / "inference.json"
        script.append(
            f"run(config_file={str(config)!r}, bundle_root={str(root)!r}, input_dir={str(work / f'{name}_in')!r}, "
            "logging_file=False)"
        )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TMPDIR": str(work)}
    res = subprocess.run(
        [python, "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, f"the bundles' own inference failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return work


@pytest.fixture(scope="module")
def server(monailabel_python, tmp_path_factory):
    """A running MONAI Label server serving both segmentation bundles; stopped (process group) afterwards."""
    work = tmp_path_factory.mktemp("monailabel")
    studies = _studies(work / "studies")
    models = {name: _build_model(name, studies[name][0], work / "models" / name / "model.pt") for name in BUNDLES}

    app = work / "app"
    changes = setup_app.setup_app(app, list(BUNDLES), monailabel_python, models=models)
    assert set(changes) == set(BUNDLES)
    reference = _reference_labels(monailabel_python, work / "reference", models, studies)

    port = _free_port()
    cmd = setup_app.server_command(monailabel_python, app, work / "studies", list(BUNDLES), "127.0.0.1", port)
    (work / "cwd").mkdir()
    (work / "tmp").mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TMPDIR": str(work / "tmp")}
    log = work / "server.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=work / "cwd", env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        info = None
        while time.monotonic() - t0 < START_TIMEOUT_S:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label exited with {proc.returncode} before answering:\n{_log_tail(log)}")
            try:
                info = json.loads(_get(f"{base}/info/"))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(1.0)
        if info is None:
            pytest.fail(f"MONAI Label did not answer /info/ within {START_TIMEOUT_S} s:\n{_log_tail(log)}")
        print(f"MONAI Label answered /info/ after {time.monotonic() - t0:.1f} s")
        yield {"base": base, "info": info, "studies": studies, "reference": reference, "log": log, "proc": proc}
    finally:
        pgid = proc.pid  # start_new_session: the server leads its own process group
        try:
            os.killpg(pgid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # nothing of the group is left
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(pgid, signal.SIGKILL)
            pytest.fail(f"processes of MONAI Label's group {pgid} outlived SIGTERM")


def _channel_labels(name: str) -> dict[str, int]:
    meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())
    channel_def = next(iter(meta["network_data_format"]["outputs"].values()))["channel_def"]
    return {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}


@pytest.mark.parametrize("name", BUNDLES)
def test_monailabel_serves_bundle(server, name):
    model = server["info"]["models"].get(name)
    assert model is not None, f"{name} not in /info/ models: {list(server['info']['models'])}"
    assert model["type"] == "segmentation"
    assert model["dimension"] == (2 if name == V2D else 3)
    assert model["labels"] == _channel_labels(name)
    assert (
        model["version"] == json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())["version"]
    )
    assert set(_channel_labels(name)) <= set(server["info"]["labels"])
    assert name in server["info"]["trainers"], "MONAI Label did not accept the bundle's train.json"

    for study in server["studies"][name]:
        image_id = study.name.split(".")[0]
        t0 = time.monotonic()
        body, content_type = _post(
            f"{server['base']}/infer/{name}?{urllib.parse.urlencode({'image': image_id, 'output': 'image'})}",
            timeout=INFER_TIMEOUT_S,
        )
        print(f"/infer/{name}?image={image_id}: {time.monotonic() - t0:.1f} s")
        reference = server["reference"] / name / "eval" / "inference"
        if name == V2D:
            assert content_type == "image/png"
            result = server["reference"] / f"{image_id}_served.png"
            result.write_bytes(body)
            label = np.asarray(Image.open(result))
            with Image.open(study) as src:
                assert label.shape == (src.height, src.width) == (960, 999)
            assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
            own = np.asarray(Image.open(reference / f"{image_id}_seg.png"))  # the bundle writes vessel as 255
            np.testing.assert_array_equal(label.astype(np.int64) * 255, own)
        else:
            result = server["reference"] / f"{image_id}_served.nii.gz"
            result.write_bytes(body)
            label, src = nib.load(result), nib.load(study)
            assert label.shape == src.shape
            np.testing.assert_allclose(label.affine, src.affine, atol=1e-4)
            data = np.asarray(label.dataobj)
            assert label.get_data_dtype() == np.uint8 and set(np.unique(data)) <= set(range(6))
            assert len(np.unique(data)) >= 3, "the served label map should hold several classes"
            own = nib.load(reference / f"{image_id}_seg.nii.gz")
            np.testing.assert_array_equal(data, np.asarray(own.dataobj))
            np.testing.assert_allclose(own.affine, src.affine, atol=1e-4)
