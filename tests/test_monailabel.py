"""Frepa bundles served by a real MONAI Label server (its ``monaibundle`` sample app) on 127.0.0.1.

MONAI Label lives in a venv of its own (see tools/monailabel/README.md): ``FREPA_MONAILABEL_PYTHON=<python>`` names
one with this checkout installed (``none`` skips these tests), else ``tools/monailabel/.venv`` is created on first
use with ``setup_app.py --create-venv`` (pinned versions, about 2.5 minutes and 8 GB; reused afterwards).

model.pt files come from the bundles' own ``inference.json`` at the CPU preset (seeded; a segmentation head's final
bias is centred on the first study so that several classes occur), encoder.pt files are real ``vit_tiny`` encoders
at the CPU preset's size. One server serves the segmentation and classification bundles: ``/info/`` (models, labels
of ``channel_def``, trainers) and ``/infer/<model>`` on CHASE_DB1 photographs, the MNI152 T1 volume and tumour
cases, equal to the bundles' own ``inference.json`` outputs. A second server runs the annotation loop on the 2D
vessel bundle: ``/infer``, a label through ``PUT /datastore/label``, ``/train`` (``run_sync``, one epoch), another
label and ``/train`` (a new run, not the finished one resumed), ``/infer`` with the new weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
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
from bundle_helpers import encoder_checkpoint, read_predictions_csv
from monai.bundle import ConfigParser
from PIL import Image

from frepa_monai.data import (
    brain_region_segmentation_datalist,
    tumour_classification_datalist,
    vessel_segmentation_datalist,
)

REPO = Path(__file__).resolve().parents[1]
V2D, S3D = "frepa_vessel_segmentation_2d", "frepa_segmentation_3d"
BUNDLES = (V2D, S3D)
C2D, C3D = "frepa_classification_2d", "frepa_classification_3d"
CLASSIFIERS = (C2D, C3D)
START_TIMEOUT_S = 240
INFER_TIMEOUT_S = 300
TRAIN_TIMEOUT_S = 600
ENCODER = {V2D: ("vit_tiny", 2, 4, [128, 128]), S3D: ("vit_tiny", 3, 2, [48, 48, 48])}  # train.json's CPU preset


def _setup_app_module():
    spec = importlib.util.spec_from_file_location("frepa_setup_app", REPO / "tools" / "monailabel" / "setup_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup_app = _setup_app_module()


def _origins(python: str) -> tuple[str | None, str | None]:
    """Where ``monailabel`` and ``frepa_monai`` would be imported from by ``python`` (None: not installed)."""
    modules = "('monailabel', 'frepa_monai')"
    code = f"import importlib.util as u\nfor m in {modules}: print(getattr(u.find_spec(m), 'origin', ''))"
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


def _studies(folder: Path, fundus_count: int = 2, brain: bool = True) -> dict[str, list[Path]]:
    """Real CHASE_DB1 fundus photographs (JPEG, test split), and with ``brain`` the MNI152 T1 volume (NIfTI) and, for
    the classification bundles, a tumour and a tumour-free case of their test split (2D MR slices, 3D MR crops)."""
    folder.mkdir(parents=True)
    out = {V2D: [Path(item["image"]) for item in vessel_segmentation_datalist()["test"][:fundus_count]]}
    if brain:
        out[S3D] = [Path(brain_region_segmentation_datalist()["test"][0]["image"])]
        for name, dims in ((C2D, 2), (C3D, 3)):
            test = tumour_classification_datalist(spatial_dims=dims)["test"]
            out[name] = [Path(next(i["image"] for i in test if i["label"] == c)) for c in (1, 0)]
    for files in out.values():
        for f in files:
            shutil.copy2(f, folder / f.name)
    return {name: [folder / f.name for f in files] for name, files in out.items()}


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


def _build_classifier(bundle: str, out: Path) -> Path:
    """model.pt of ``bundle``'s inference network at the CPU preset, seeded random weights (the class scores of a
    random network already differ from image to image)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(out.parent.parent)
    parser["preset"] = "cpu"
    torch.manual_seed(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), out)
    return out


def _encoders(folder: Path, names) -> dict[str, Path]:
    """A real seeded encoder.pt per bundle at its CPU preset (:data:`ENCODER`)."""
    return {n: encoder_checkpoint(folder / n / "encoder.pt", *ENCODER[n], seed=3) for n in names}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _request(req: urllib.request.Request, timeout: float) -> tuple[bytes, str]:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{req.get_method()} {req.full_url} -> {e.code}: {e.read()[:2000]!r}") from e


def _post(url: str, timeout: float, params: dict | None = None) -> tuple[bytes, str]:
    """POST ``url``, with ``params`` as the JSON body when given."""
    data, headers = (json.dumps(params).encode(), {"Content-Type": "application/json"}) if params else (b"", {})
    return _request(urllib.request.Request(url, data=data, headers=headers, method="POST"), timeout)


def _put_label(base: str, image_id: str, label: np.ndarray) -> dict:
    """``PUT /datastore/label`` of ``label`` (class indices) as a PNG file for ``image_id`` (a multipart form)."""
    png, boundary = io.BytesIO(), "frepa-monailabel-test-boundary"
    Image.fromarray(label.astype(np.uint8)).save(png, format="PNG")
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="{image_id}.png"\r\n'
    body = f"{head}Content-Type: image/png\r\n\r\n".encode() + png.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    query = urllib.parse.urlencode({"image": image_id, "tag": "final"})
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    req = urllib.request.Request(f"{base}/datastore/label?{query}", data=body, headers=headers, method="PUT")
    return json.loads(_request(req, timeout=60)[0])


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


@contextlib.contextmanager
def _serve(python: str, app: Path, studies: Path, names: list[str], work: Path):
    """A MONAI Label server of ``app`` on a free port of 127.0.0.1 (CPU only), until ``/info/`` answers; yields
    ``{"base", "info", "log", "proc", "start_s"}`` and stops the server's process group afterwards."""
    port = _free_port()
    cmd = setup_app.server_command(python, app, studies, names, "127.0.0.1", port)
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
        start_s = time.monotonic() - t0
        print(f"MONAI Label ({', '.join(names)}) answered /info/ after {start_s:.1f} s")
        yield {"base": base, "info": info, "log": log, "proc": proc, "start_s": start_s}
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


@pytest.fixture(scope="module")
def server(monailabel_python, tmp_path_factory):
    """A running MONAI Label server serving the segmentation and classification bundles; stopped (process group)
    afterwards."""
    work = tmp_path_factory.mktemp("monailabel")
    studies = _studies(work / "studies")
    models = {name: _build_model(name, studies[name][0], work / "models" / name / "model.pt") for name in BUNDLES}
    models.update({name: _build_classifier(name, work / "models" / name / "model.pt") for name in CLASSIFIERS})
    encoders = _encoders(work / "encoders", BUNDLES)

    app = work / "app"
    served = [*BUNDLES, *CLASSIFIERS]
    changes = setup_app.setup_app(app, served, monailabel_python, models=models, encoders=encoders)
    assert set(changes) == set(served)
    for name, pretrain in ((V2D, "frepa_pretrain_2d"), (S3D, "frepa_pretrain_3d")):
        placed = app / "model" / pretrain / "models" / "encoder.pt"  # where train.json's default looks
        assert placed.read_bytes() == encoders[name].read_bytes()
        assert f"encoder placed at {placed}" in changes[name]
    for name in CLASSIFIERS:  # served for inference only: no train config, so MONAI Label lists no trainer
        assert not list((app / "model" / name / "configs").glob("*train.json"))
    reference = _reference_labels(monailabel_python, work / "reference", models, studies)
    with _serve(monailabel_python, app, work / "studies", served, work) as running:
        yield {**running, "studies": studies, "reference": reference}


def _channel_labels(name: str) -> dict[str, int]:
    meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())
    channel_def = next(iter(meta["network_data_format"]["outputs"].values()))["channel_def"]
    return {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}


@pytest.mark.slow
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


# --- the annotation loop: infer, label, train, label, train again, infer with the new weights ------------------------

LOOP_TRAIN = {"max_epochs": 1, "device": "cpu", "multi_gpu": False, "pretrained": True, "tracking": "mlflow"}
"""``POST /train`` parameters: one epoch on every labelled image, starting from ``models/model.pt`` (``pretrained``:
MONAI Label's ``CheckpointLoader``), MLflow through MONAI's ``tracking`` (MONAI Label's option). ``val_split`` is
MONAI Label's default, 0.2: with one or two labels that leaves no validation image, and the app's
``FrepaBundleTrainTask`` validates on the training images instead."""
LOOP_LEARNING_RATE = 1e-4
BATCH_SIZE = 2  # train.json's cpu_settings#batch_size: one item per image (its crops are one batch)


@pytest.fixture(scope="module")
def loop_server(monailabel_python, tmp_path_factory):
    """A MONAI Label server of the 2D vessel bundle (own app: the tests above keep their model.pt) with two CHASE_DB1
    photographs as studies and no labels yet."""
    work = tmp_path_factory.mktemp("monailabel_loop")
    studies = _studies(work / "studies", fundus_count=2, brain=False)
    model = _build_model(V2D, studies[V2D][0], work / "models" / V2D / "model.pt")
    app = work / "app"
    setup_app.setup_app(
        app, [V2D], monailabel_python, models={V2D: model}, encoders=_encoders(work / "encoders", [V2D])
    )
    # The paper's learning rate (1e-4) instead of the CPU preset's 1e-3 in the app's copy of train.json, as a user may
    # set it there: from the seeded head, one step at 1e-3 moves every pixel to background, and an all-background map
    # would equal the bundle's own inference whatever weights /infer used.
    train_json = app / "model" / V2D / "configs" / "train.json"
    config = json.loads(train_json.read_text())
    assert config["cpu_settings"]["learning_rate"] == 1e-3
    config["cpu_settings"]["learning_rate"] = LOOP_LEARNING_RATE
    train_json.write_text(json.dumps(config, indent=4))
    with _serve(monailabel_python, app, work / "studies", [V2D], work) as running:
        yield {**running, "work": work, "bundle": app / "model" / V2D, "studies": studies[V2D], "model": model}


def _infer(base: str, image_id: str) -> tuple[np.ndarray, float]:
    """The served vessel label map of ``image_id`` (0/1) and how long ``/infer`` took."""
    t0 = time.monotonic()
    query = urllib.parse.urlencode({"image": image_id, "output": "image"})
    body, content_type = _post(f"{base}/infer/{V2D}?{query}", timeout=INFER_TIMEOUT_S)
    assert content_type == "image/png"
    return np.asarray(Image.open(io.BytesIO(body))), time.monotonic() - t0


def _train(base: str, log: Path) -> float:
    """``POST /train/<vessel bundle>?run_sync=true`` with :data:`LOOP_TRAIN`; how long it took."""
    t0 = time.monotonic()
    try:
        body, _ = _post(f"{base}/train/{V2D}?run_sync=true", timeout=TRAIN_TIMEOUT_S, params=LOOP_TRAIN)
    except AssertionError as e:
        raise AssertionError(f"{e}\nserver log:\n{_log_tail(log, 8000)}") from None
    assert json.loads(body) == {}, body  # BundleTrainTask returns {} once monai.bundle.run has finished
    return time.monotonic() - t0


def _parts(state: Path | dict) -> tuple[dict, dict]:
    """The tensors of a state dict (or model.pt): (the encoder's, the rest: the segmentation head's)."""
    state = torch.load(state, map_location="cpu", weights_only=True) if isinstance(state, Path) else state
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in tensors.items() if k.startswith("encoder.")}, {
        k: v for k, v in tensors.items() if not k.startswith("encoder.")
    }


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert set(a) == set(b)
    return sorted(k for k in a if not torch.equal(a[k], b[k]))


def _epoch_checkpoint(models: Path) -> tuple[Path, dict]:
    """The one ``checkpoint_epoch=<n>.pt`` in ``models`` (the bundle keeps ``n_saved=1``) and its trainer state."""
    found = sorted(models.glob("checkpoint_epoch=*.pt"))
    assert len(found) == 1, f"expected one epoch checkpoint in {models}: {[p.name for p in found]}"
    return found[0], torch.load(found[0], map_location="cpu", weights_only=True)


def _mlflow_runs(db: Path, experiment: str) -> dict[str, dict[str, int]]:
    """Per MLflow run of ``experiment`` in the SQLite store ``db``: how many values each metric logged."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        runs = con.execute(
            "SELECT r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name = ?",
            (experiment,),
        ).fetchall()
        return {
            run: dict(con.execute("SELECT key, COUNT(*) FROM metrics WHERE run_uuid = ? GROUP BY key", (run,)))
            for (run,) in runs
        }


@pytest.mark.slow
def test_annotation_loop(loop_server, monailabel_python):
    """Label, train, label, train again, infer: MONAI Label's annotation loop on the 2D vessel bundle."""
    base, log, bundle = loop_server["base"], loop_server["log"], loop_server["bundle"]
    models = bundle / "models"
    assert V2D in loop_server["info"]["trainers"]
    studies = loop_server["studies"]
    ids = [s.name.split(".")[0] for s in studies]
    masks = {Path(i["image"]).name.split(".")[0]: i["label"] for i in vessel_segmentation_datalist()["test"]}
    timings = {"server start (until /info/ answers)": loop_server["start_s"]}

    before, timings["/infer, initial model.pt"] = _infer(base, ids[0])
    assert before.shape == (960, 999) and set(np.unique(before)) == {0, 1}
    initial_encoder, _ = _parts(models / "model.pt")
    last_run = None
    for n, image_id in enumerate(ids, start=1):
        # an annotator's label (CHASE_DB1's first observer), submitted through the datastore API
        label = (np.asarray(Image.open(masks[image_id])) > 0).astype(np.uint8)
        assert _put_label(base, image_id, label) == {"image": image_id, "label": image_id}
        query = urllib.parse.urlencode({"label": image_id, "tag": "final"})
        stored = np.asarray(Image.open(io.BytesIO(_get(f"{base}/datastore/label?{query}"))))
        np.testing.assert_array_equal(stored, label)
        assert int(stored.sum()) > 10_000, "a vessel label map of a fundus photograph"
        training = json.loads(_get(f"{base}/datastore/?output=train"))  # the datalist /train takes
        assert sorted(Path(d["label"]).name for d in training) == [f"{i}.png" for i in ids[:n]]

        encoder_before, head_before = _parts(models / "model.pt")
        timings[f"/train {n} ({n} label{'s' * (n > 1)}, 1 epoch)"] = _train(base, log)
        ckpt, state = _epoch_checkpoint(models)
        trainer = state["trainer"]
        # a new run of exactly one epoch on the labelled images: a finished run resumed would run none
        assert ckpt.name == "checkpoint_epoch=1.pt" and trainer["max_epochs"] == 1
        assert trainer["iteration"] == trainer["epoch_length"] == -(-n // BATCH_SIZE)
        assert last_run is None or _changed(last_run, _parts(state["network"])[1])
        last_run = _parts(state["network"])[1]
        # model.pt (the validated epoch's network) is new; the encoder stays frozen at the weights MONAI Label's
        # CheckpointLoader loaded from the previous model.pt ("pretrained"), the head was trained
        encoder_after, head_after = _parts(models / "model.pt")
        assert _changed(encoder_before, encoder_after) == [] == _changed(initial_encoder, encoder_after)
        assert _changed(head_before, head_after), f"/train {n} left the head of model.pt unchanged"

    after, timings["/infer, trained model.pt"] = _infer(base, ids[0])
    second, timings["/infer, trained model.pt, 2nd image"] = _infer(base, ids[1])
    changed = int((after != before).sum())
    assert changed > 0, "/infer still answers with the initial model.pt's prediction"
    for served in (after, second):  # both classes remain, so the comparison below is not trivially true
        assert 0.01 < float(served.mean()) < 0.99, f"vessel fraction {served.mean():.4f} after training"
    reference = _reference_labels(
        monailabel_python, loop_server["work"] / "reference", {V2D: models / "model.pt"}, {V2D: studies}
    )
    for image_id, served in zip(ids, (after, second)):
        own = np.asarray(Image.open(reference / V2D / "eval" / "inference" / f"{image_id}_seg.png"))
        np.testing.assert_array_equal(served.astype(np.int64) * 255, own)  # the bundle writes vessel as 255

    # MLflow through MONAI Label's tracking=mlflow: one run per /train, each engine logging once
    per_run = _mlflow_runs(bundle / "eval" / "mlruns.db", V2D)
    assert len(per_run) == len(ids), per_run
    for counts in per_run.values():
        assert counts.get("train_loss") == 1 and counts.get("val_mean_dice") == 1, counts

    print(f"{ids[0]}: {changed} of {after.size} pixels changed; vessel {before.mean():.3f} before, {after.mean():.3f}")
    print("\n".join(f"{step}: {seconds:.1f} s" for step, seconds in timings.items()))


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_monailabel_serves_classifier(server, name):
    """A classification bundle answers ``/infer`` with its class scores (MONAI Label's ``ClassificationWriter``), equal
    to the bundle's own ``predictions.csv``; it is offered for inference only (no trainer)."""
    model = server["info"]["models"].get(name)
    assert model is not None, f"{name} not in /info/ models: {list(server['info']['models'])}"
    assert model["type"] == "classification" and model["dimension"] == (2 if name == C2D else 3)
    assert model["labels"] == _channel_labels(name) == {"no tumour": 0, "tumour": 1}
    assert name not in server["info"]["trainers"]

    own = read_predictions_csv(server["reference"] / name / "eval" / "inference" / "predictions.csv")
    own = {Path(f).name: scores for f, scores in own.items()}
    served = {}
    for study in server["studies"][name]:
        image_id = study.name.split(".")[0]
        t0 = time.monotonic()
        query = urllib.parse.urlencode({"image": image_id, "output": "json"})
        body, content_type = _post(f"{server['base']}/infer/{name}?{query}", timeout=INFER_TIMEOUT_S)
        print(f"/infer/{name}?image={image_id}: {time.monotonic() - t0:.1f} s")
        assert content_type == "application/json"
        prediction = json.loads(body)["prediction"]
        assert [(p["idx"], p["label"]) for p in prediction] == [(0, "no tumour"), (1, "tumour")]
        served[study.name] = [p["score"] for p in prediction]
        assert sum(served[study.name]) == pytest.approx(1.0, abs=1e-5)  # softmax probabilities
        np.testing.assert_allclose(served[study.name], own[study.name], rtol=0, atol=1e-5)
    first, second = served.values()
    assert abs(first[1] - second[1]) > 1e-4, "the two cases should get different scores"


# --- setup_app.py's checks (no MONAI Label needed: they run before the app folder is made) --------------------------


def _bundle(root: Path, name: str, source: str = V2D) -> Path:
    """A bundle folder ``root/<name>`` with ``source``'s configs and a model.pt (never loaded by these checks)."""
    shutil.copytree(REPO / "bundles" / source / "configs", root / name / "configs")
    (root / name / "models").mkdir()
    (root / name / "models" / "model.pt").write_bytes(b"weights")
    return root / name


def test_setup_app_needs_the_encoder(tmp_path, capsys):
    """A bundle trained through MONAI Label needs its pretraining bundle's encoder.pt: missing, the error names it."""
    bundle = _bundle(tmp_path / "bundles", V2D)
    app, expected = tmp_path / "app", tmp_path / "bundles" / "frepa_pretrain_2d" / "models" / "encoder.pt"
    assert setup_app.encoder_source(bundle) == ("frepa_pretrain_2d", expected)
    assert setup_app.main(["--app", str(app), "--bundle", str(bundle), "--python", sys.executable]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.endswith(f"{expected} does not exist") and "--encoder frepa_vessel_segmentation_2d=" in message
    assert not app.exists(), "nothing is written before every file is found"
    given = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match=f"{given} does not exist$"):
        setup_app.setup_app(app, [str(bundle)], sys.executable, encoders={V2D: given})
    with pytest.raises(ValueError, match=r"--encoder names bundles that are not served: \['frepa_segmentation_3d'\]"):
        setup_app.setup_app(app, [str(bundle)], sys.executable, encoders={S3D: given})
    # classification bundles are served for inference only: they need no encoder
    assert setup_app.required_encoder(_bundle(tmp_path / "bundles", C2D, C2D)) is None


def test_setup_app_places_one_encoder_per_pretraining_bundle(tmp_path):
    """Two bundles that train from frepa_pretrain_2d share <app>/model/frepa_pretrain_2d/models/encoder.pt; a
    different encoder for the second is refused, naming both files."""
    first, second = _bundle(tmp_path / "b", V2D), _bundle(tmp_path / "b", "frepa_vessel_segmentation_2d_copy")
    one, two = encoder_checkpoint(tmp_path / "one.pt", *ENCODER[V2D]), tmp_path / "two.pt"
    encoder_checkpoint(two, *ENCODER[V2D], seed=4)
    target = tmp_path / "app" / "model" / "frepa_pretrain_2d" / "models" / "encoder.pt"
    assert setup_app.place_encoder(tmp_path / "app", first, one) == target
    assert target.read_bytes() == one.read_bytes()
    assert setup_app.place_encoder(tmp_path / "app", second, one) == target  # the same file: shared
    with pytest.raises(ValueError, match=f"needs the encoder {two} at {target}, but another bundle"):
        setup_app.place_encoder(tmp_path / "app", second, two)


@pytest.mark.parametrize("name", ["frepa_detection_2d", "frepa_detection_3d", "frepa_pretrain_2d"])
def test_setup_app_refuses_what_monailabel_cannot_serve(tmp_path, name):
    with pytest.raises(ValueError, match="'detector'" if "detection" in name else "only segmentation and classif"):
        setup_app.setup_app(tmp_path / "app", [str(_bundle(tmp_path, name, name))], sys.executable)
    assert not (tmp_path / "app").exists()
