"""Packaging bundles the way the MONAI model zoo does: a reproducible zip ``<name>_v<version>.zip`` (fixed time
stamps and permissions, sorted entries) whose top folder is ``<name>/``, files of ``models/`` over the model zoo's
25 MB beside it and listed in its ``large_files.yml``, ``configs/metadata.json`` describing the shipped
``models/model.pt`` (:mod:`~frepa_monai.zoo.network_format`), the zoo index updated, and :func:`publish` to a folder
any static HTTP server can serve, after the model zoo's checks (:mod:`~frepa_monai.zoo.checks`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from frepa_monai.zoo.checks import run_checks
from frepa_monai.zoo.index import read_index, update_index
from frepa_monai.zoo.network_format import shipped_metadata
from frepa_monai.zoo.utils import (
    BUNDLES_DIR,
    INDEX_NAME,
    LARGE_FILES_NAME,
    MAX_FILE_MB,
    REPO,
    VERSION_RE,
    ZooError,
    index_key,
    sha256,
    zip_name,
)
from frepa_monai.zoo.verification import verify

__all__ = [
    "list_bundles",
    "read_metadata",
    "bundle_files",
    "published_files",
    "stage_bundle",
    "large_files_yml",
    "read_large_files",
    "write_zip",
    "package_bundle",
    "package",
    "check_bundle",
    "publish",
]

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
ZIP_FILE_MODE = 0o100644  # regular file, rw-r--r--
ZIP_COMPRESSLEVEL = 9
SKIP_DIRS = ("eval", "mlruns", "__pycache__", ".*")  # outputs, MLflow stores, caches, hidden folders
SKIP_FILES = ("checkpoint_epoch=*.pt", "mlruns.db", "events.out.tfevents.*", "*.pyc", ".*")

logger = logging.getLogger("frepa.zoo")


def list_bundles(bundles_dir: str | os.PathLike = BUNDLES_DIR, names: list[str] | None = None) -> list[Path]:
    """Bundle folders (those holding ``configs/metadata.json``) under ``bundles_dir``, or the named ones (names or
    paths), sorted by name."""
    bundles_dir = Path(bundles_dir)
    found = {p.parent.parent.name: p.parent.parent for p in bundles_dir.glob("*/configs/metadata.json")}
    if not names:
        if not found:
            raise ZooError(f"no bundle under {bundles_dir}: no folder there holds configs/metadata.json.")
        return [found[n] for n in sorted(found)]
    chosen = []
    for name in names:
        path = Path(name)
        if (path / "configs" / "metadata.json").is_file():
            chosen.append(path)
        elif name in found:
            chosen.append(found[name])
        else:
            raise ZooError(f"no bundle '{name}' under {bundles_dir} (bundles there: {', '.join(sorted(found))}).")
    return sorted(chosen, key=lambda p: p.name)


def read_metadata(bundle: str | os.PathLike) -> dict:
    """``configs/metadata.json`` of ``bundle``, with a valid ``version`` (errors name the file)."""
    path = Path(bundle) / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ZooError(f"{path} not found: a bundle needs configs/metadata.json.") from None
    except json.JSONDecodeError as e:
        raise ZooError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not VERSION_RE.fullmatch(str(meta.get("version", ""))):
        raise ZooError(f"{path} has no 'version' of the form MAJOR.MINOR.PATCH (got {meta.get('version')!r}).")
    return meta


def bundle_files(bundle: str | os.PathLike) -> list[PurePosixPath]:
    """Files of ``bundle`` that go into its zip (relative POSIX paths, sorted): everything but ``SKIP_DIRS`` and
    ``SKIP_FILES`` (outputs, checkpoints to resume from, caches). Symbolic links to folders are not followed."""
    root = Path(bundle)
    files = []
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not any(fnmatch(d, pattern) for pattern in SKIP_DIRS))
        for name in names:
            if any(fnmatch(name, pattern) for pattern in SKIP_FILES):
                continue
            if (Path(folder) / name).is_file():
                files.append(PurePosixPath(*rel_folder.parts, name))
    return sorted(files)


def published_files(bundle: str | os.PathLike) -> list[tuple[PurePosixPath, Path | bytes]]:
    """What a zip of ``bundle`` holds, before ``large_files.yml`` is made: (relative path, the source file, or the
    bytes of ``configs/metadata.json`` rewritten for ``models/model.pt`` by
    :func:`~frepa_monai.zoo.network_format.shipped_metadata`)."""
    bundle = Path(bundle)
    metadata = shipped_metadata(bundle)
    out: list[tuple[PurePosixPath, Path | bytes]] = []
    for rel in bundle_files(bundle):
        is_metadata = rel == PurePosixPath("configs", "metadata.json") and metadata is not None
        out.append((rel, metadata if is_metadata else bundle / rel))
    return out


def stage_bundle(bundle: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """The published files of ``bundle`` (:func:`published_files`, large files included, as after the model zoo's
    ``download_large_files``) copied into ``dest/<name>``; returns that folder."""
    bundle = Path(bundle)
    root = Path(dest) / bundle.name
    for rel, src in published_files(bundle):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            target.write_bytes(src)
        else:
            shutil.copyfile(src, target)
    return root


def large_files_yml(entries: list[dict]) -> str:
    """The model zoo's ``large_files.yml`` text: a ``large_files`` list of ``path``, ``url``, ``hash_val``,
    ``hash_type`` (values JSON-quoted, which YAML reads as strings)."""
    lines = ["large_files:"]
    for entry in entries:
        for i, key in enumerate(("path", "url", "hash_val", "hash_type")):
            lines.append(f"{'  - ' if i == 0 else '    '}{key}: {json.dumps(str(entry.get(key, '')))}")
    return "\n".join(lines) + "\n"


def read_large_files(bundle: Path) -> tuple[str | None, list[dict]]:
    """The bundle's own ``large_files.{yml,yaml,json}`` (name, entries), if it has one."""
    for candidate in sorted(bundle.glob("large_files*")):
        if candidate.suffix in (".yml", ".yaml", ".json") and candidate.is_file():
            from monai.bundle import ConfigParser

            try:
                entries = ConfigParser.load_config_file(candidate).get("large_files", [])
            except Exception as e:
                raise ZooError(f"{candidate} cannot be read as a large-files list: {e}") from None
            if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e for e in entries):
                raise ZooError(f"{candidate}: 'large_files' must be a list of entries with a 'path'.")
            return candidate.name, entries
    return None, []


def write_zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A reproducible zip at ``path``: entries sorted by name, fixed time stamp and permissions, deflated at a
    fixed level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in sorted(members):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE_TIME)
            info.create_system = 3  # unix, so that the permissions below are read
            info.external_attr = ZIP_FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=ZIP_COMPRESSLEVEL)


def package_bundle(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_url: str,
    max_file_mb: float = MAX_FILE_MB,
    published: str | None = None,
) -> tuple[Path, str]:
    """Zip ``bundle`` into ``out_dir/<name>_v<version>.zip``; returns (zip path, its sha256).

    Files in ``models/`` larger than ``max_file_mb`` are copied to ``out_dir/<name>_v<version>/<path>`` instead
    and listed in the zip's ``large_files.yml`` with the URL ``<base_url>/<name>_v<version>/<path>``.
    ``published``: the sha256 an index already gives this version; a zip with other content is refused (a
    published version never changes: bump it), and nothing is written.
    """
    bundle, out_dir = Path(bundle), Path(out_dir)
    meta = read_metadata(bundle)
    name, version = bundle.name, meta["version"]
    for required in ("LICENSE", "configs/metadata.json"):
        if not (bundle / required).is_file():
            raise ZooError(f"{bundle / required} not found: every bundle zip holds it.")
    limit = max_file_mb * 1024 * 1024
    key = index_key(name, version)
    members, large, copies = [], [], []
    own_large_name, own_large = read_large_files(bundle)
    for rel, src in published_files(bundle):
        if rel.name == own_large_name and len(rel.parts) == 1:
            continue  # merged below
        if isinstance(src, bytes):
            members.append((f"{name}/{rel}", src))
            continue
        if rel.parts[0] == "models" and src.stat().st_size > limit:
            url = f"{base_url.rstrip('/')}/{key}/{rel}"
            large.append({"path": str(rel), "url": url, "hash_val": sha256(src), "hash_type": "sha256"})
            copies.append((src, out_dir / key / rel))
            logger.info(f"{name}: {rel} ({src.stat().st_size / 2**20:.1f} MiB) -> {LARGE_FILES_NAME}, {url}")
            continue
        members.append((f"{name}/{rel}", src.read_bytes()))
    if large or own_large:
        ours = {e["path"] for e in large}
        entries = [e for e in own_large if e["path"] not in ours] + large
        members.append((f"{name}/{LARGE_FILES_NAME if large else own_large_name}", large_files_yml(entries).encode()))
    path = out_dir / zip_name(name, version)
    tmp = path.with_name(f".{path.name}.tmp")
    write_zip(tmp, members)
    checksum = sha256(tmp)
    if published not in (None, checksum):
        tmp.unlink()
        raise ZooError(
            f"{path.name}: version {version} is already published with sha256 {published} and {bundle} now zips to "
            f"{checksum}: bump the version (zoo.py bump) or pass --force to replace it."
        )
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    os.replace(tmp, path)
    logger.info(f"{name} {version}: {path} ({len(members)} files, sha256 {checksum})")
    return path, checksum


def package(
    names: list[str] | None = None,
    bundles_dir: str | os.PathLike = BUNDLES_DIR,
    out_dir: str | os.PathLike = REPO / "dist",
    base_url: str | None = None,
    index: str | os.PathLike | None = None,
    max_file_mb: float = MAX_FILE_MB,
    force: bool = False,
) -> dict[str, dict]:
    """Package the bundles and update the index (default ``out_dir/model_info.json``); returns the new entries.

    ``base_url`` is where ``out_dir`` will be served; by default its ``file://`` URI. A version the index already
    lists with another checksum is refused unless ``force``.
    """
    out_dir = Path(out_dir).resolve()
    base_url = (base_url or out_dir.as_uri()).rstrip("/")
    index = Path(index or out_dir / INDEX_NAME)
    known = read_index(index) if index.exists() else {}
    entries = {}
    for bundle in list_bundles(bundles_dir, names):
        key = index_key(bundle.name, read_metadata(bundle)["version"])
        published = None if force else known.get(key, {}).get("checksum")
        path, checksum = package_bundle(bundle, out_dir, base_url, max_file_mb, published)
        entries[key] = {"checksum": checksum, "source": f"{base_url}/{path.name}"}
    update_index(index, entries)
    return entries


def check_bundle(bundle: str | os.PathLike, work_dir: str | os.PathLike, schema_dirs: list[Path]) -> list[str]:
    """The model zoo's checks (:func:`~frepa_monai.zoo.checks.run_checks`) on a copy of what :func:`package_bundle`
    publishes of ``bundle`` (:func:`stage_bundle`), made in a hidden folder of ``work_dir`` and removed after."""
    bundle = Path(bundle)
    stage = Path(work_dir) / f".check-{bundle.name}-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        return run_checks(stage_bundle(bundle, stage), str(bundle), schema_dirs)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(
    to: str | os.PathLike,
    names: list[str] | None = None,
    bundles_dir: str | os.PathLike = BUNDLES_DIR,
    base_url: str | None = None,
    max_file_mb: float = MAX_FILE_MB,
    force: bool = False,
    checks: bool = True,
) -> dict[str, dict]:
    """The model zoo's checks on every bundle (:func:`check_bundle`; ``checks=False`` skips them, for bundles
    whose weights are not a network's), then ``package`` into the folder ``to`` with ``to/model_info.json``, then
    ``verify`` every new zip. A bundle that fails a check is refused and nothing is published; the schemas are
    read from ``<bundles_dir>/schema``, else from this repository's ``bundles/schema``."""
    to = Path(to)
    if checks:
        schema_dirs = list(dict.fromkeys([Path(bundles_dir) / "schema", BUNDLES_DIR / "schema"]))
        to.mkdir(parents=True, exist_ok=True)
        for bundle in list_bundles(bundles_dir, names):
            check_bundle(bundle, to, schema_dirs)
    entries = package(names, bundles_dir, to, base_url, to / INDEX_NAME, max_file_mb, force)
    for key in entries:
        verify(to / f"{key}.zip", to / INDEX_NAME)
    logger.info(f"published {len(entries)} bundle(s) to {to}: serve it with `python -m http.server --directory {to}`")
    return entries
