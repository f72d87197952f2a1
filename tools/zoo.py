#!/usr/bin/env python
"""Package, version, index, publish and fetch the bundles the way the MONAI model zoo does.

Subcommands (each ``--help``-able):

- ``package [NAME ...]``: every bundle under ``bundles/`` (a folder with ``configs/metadata.json``), or the named
  ones, as a reproducible zip ``<name>_v<version>.zip`` (fixed timestamps and permissions, sorted entries: two runs
  give byte-identical zips) whose top folder is ``<name>/``. The zip holds ``LICENSE``, ``configs/``, ``docs/`` and
  ``models/`` (weights), not ``eval/``, caches, ``checkpoint_epoch=*.pt`` or MLflow stores. Files in ``models/``
  over ``--max_file_mb`` (25 MB, the model zoo's limit) stay out of the zip: they are copied next to it
  (``<name>_v<version>/<path>``) and listed in the zip's ``large_files.yml`` (``path``, ``url``, ``hash_val``
  (sha256), ``hash_type``), which ``python -m monai.bundle download_large_files`` reads. The zoo index
  ``model_info.json`` (the model zoo's format: ``"<name>_v<version>": {"checksum": <sha256 of the zip>, "source":
  <URL of the zip>}``) is created or updated.
- ``bump NAME {patch,minor,major} --message TEXT``: the bundle's next version in its ``configs/metadata.json``,
  with a changelog entry, keeping the file's JSON formatting (indent, trailing newline).
- ``verify ZIP [ZIP ...] --index model_info.json``: a zip's sha256 against the index, every member inside
  ``<name>/`` (no absolute paths, no ``..``, no links) and its metadata's version against its file name.
- ``publish --to FOLDER [NAME ...]``: ``package`` into ``FOLDER`` with ``FOLDER/model_info.json``, then ``verify``:
  a folder that any static HTTP server can serve (``python -m http.server --directory FOLDER``).
- ``fetch --index URL --name NAME [--version V] --bundle_dir DIR``: reads the index, downloads the zip with MONAI's
  ``download_url`` and refuses it (nothing extracted) when its sha256 differs from the index or a member would land
  outside ``DIR/<name>/``; then extracts it with MONAI's own safe extraction (``monai.apps.utils.extractall``, as
  ``monai.bundle.download`` does) and downloads the files of its ``large_files.yml`` with
  ``monai.bundle.download_large_files`` (hash-checked).

A published zip is also what MONAI's own client downloads:
``python -m monai.bundle download --name <name> --version <v> --url <base_url>/<name>_v<v>.zip --bundle_dir <dir>``.
See ``docs/model_zoo.md``.

Examples::

    python tools/zoo.py package                                   # every bundle -> dist/*.zip + dist/model_info.json
    python tools/zoo.py bump frepa_classification_2d patch --message "retrained head"
    python tools/zoo.py publish --to site --base_url https://example.org/frepa
    python tools/zoo.py verify site/frepa_pretrain_3d_v0.1.0.zip --index site/model_info.json
    python tools/zoo.py fetch --index https://example.org/frepa/model_info.json --name frepa_pretrain_3d \\
        --bundle_dir downloads
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlparse
from urllib.request import urlopen

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
INDEX_NAME = "model_info.json"
LARGE_FILES_NAME = "large_files.yml"
MAX_FILE_MB = 25.0  # the model zoo's limit for files inside a bundle zip
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
ZIP_FILE_MODE = 0o100644  # regular file, rw-r--r--
ZIP_COMPRESSLEVEL = 9
SKIP_DIRS = ("eval", "mlruns", "__pycache__", ".*")  # outputs, MLflow stores, caches, hidden folders
SKIP_FILES = ("checkpoint_epoch=*.pt", "mlruns.db", "events.out.tfevents.*", "*.pyc", ".*")
VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
ZIP_NAME_RE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)_v(?P<version>\d+\.\d+\.\d+)\.zip")
PARTS = ("patch", "minor", "major")

logger = logging.getLogger("frepa.zoo")


class ZooError(Exception):
    """A bundle, zip or index that cannot be packaged, verified or fetched; the message names the file."""


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def zip_name(name: str, version: str) -> str:
    """``<name>_v<version>.zip``, the model zoo's file name, also the index key without ``.zip``."""
    return f"{name}_v{version}.zip"


def index_key(name: str, version: str) -> str:
    return f"{name}_v{version}"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------- bundles
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


def large_files_yml(entries: list[dict]) -> str:
    """The model zoo's ``large_files.yml`` text: a ``large_files`` list of ``path``, ``url``, ``hash_val``,
    ``hash_type`` (values JSON-quoted, which YAML reads as strings)."""
    lines = ["large_files:"]
    for entry in entries:
        for i, key in enumerate(("path", "url", "hash_val", "hash_type")):
            lines.append(f"{'  - ' if i == 0 else '    '}{key}: {json.dumps(str(entry.get(key, '')))}")
    return "\n".join(lines) + "\n"


def _existing_large_files(bundle: Path) -> tuple[str | None, list[dict]]:
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
    own_large_name, own_large = _existing_large_files(bundle)
    for rel in bundle_files(bundle):
        src = bundle / rel
        if rel.name == own_large_name and len(rel.parts) == 1:
            continue  # merged below
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


# ------------------------------------------------------------------------------------------------------------- index
def read_index(index: str | os.PathLike) -> dict:
    """A ``model_info.json`` from a local path or a URL (``http(s)://``, ``file://``)."""
    text_index = str(index)
    try:
        if urlparse(text_index).scheme in ("http", "https", "file"):
            with urlopen(text_index, timeout=60) as response:
                data = response.read()
        else:
            data = Path(text_index).read_bytes()
    except Exception as e:
        raise ZooError(f"cannot read the zoo index {text_index}: {e}") from None
    try:
        info = json.loads(data)
    except json.JSONDecodeError as e:
        raise ZooError(f"zoo index {text_index} is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise ZooError(f"zoo index {text_index} is not a JSON object of '<name>_v<version>' entries.")
    bad = [k for k, v in info.items() if not (isinstance(v, dict) and {"checksum", "source"} <= set(v))]
    if bad:
        raise ZooError(f"zoo index {text_index}: every entry needs 'checksum' and 'source' (not: {bad[:3]}).")
    return info


def update_index(index_path: str | os.PathLike, entries: dict[str, dict]) -> dict:
    """Add or replace ``entries`` in the index file (created if missing); keys sorted, 4-space indent."""
    index_path = Path(index_path)
    info = read_index(index_path) if index_path.exists() else {}
    info.update(entries)
    info = {k: info[k] for k in sorted(info)}
    _write_atomic(index_path, (json.dumps(info, indent=4) + "\n").encode())
    return info


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


def publish(
    to: str | os.PathLike,
    names: list[str] | None = None,
    bundles_dir: str | os.PathLike = BUNDLES_DIR,
    base_url: str | None = None,
    max_file_mb: float = MAX_FILE_MB,
    force: bool = False,
) -> dict[str, dict]:
    """``package`` into the folder ``to`` with ``to/model_info.json``, then ``verify`` every new zip."""
    to = Path(to)
    entries = package(names, bundles_dir, to, base_url, to / INDEX_NAME, max_file_mb, force)
    for key in entries:
        verify(to / f"{key}.zip", to / INDEX_NAME)
    logger.info(f"published {len(entries)} bundle(s) to {to}: serve it with `python -m http.server --directory {to}`")
    return entries


# ------------------------------------------------------------------------------------------------------ verification
def check_members(
    zip_path: str | os.PathLike, name: str, extract_to: str | os.PathLike | None = None, label: str | None = None
) -> list[str]:
    """Refuse a zip whose members would not land inside ``<extract_to>/<name>/``: absolute paths, ``..``,
    backslashes, links, or a top folder other than ``<name>/``. MONAI's ``safe_extract_member`` checks each
    member too. ``label`` names the zip in errors (default: its file name). Returns the member names."""
    from monai.apps.utils import safe_extract_member

    extract_to = str(extract_to or tempfile.gettempdir())
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ZooError(f"{zip_path} is not a readable zip file: {e}") from None
    for info in infos:
        member = info.filename
        where = f"{label or Path(zip_path).name}: member {member!r}"
        parts = PurePosixPath(member).parts
        if "\\" in member or member.startswith("/") or re.match(r"[A-Za-z]:", member) or ".." in parts:
            raise ZooError(f"{where} would be written outside the target folder: refused.")
        if not parts or parts[0] != name or (len(parts) == 1 and not info.is_dir()):
            raise ZooError(f"{where} is not inside the bundle's folder '{name}/': refused.")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ZooError(f"{where} is a symbolic link: refused.")
        try:
            safe_extract_member(info, extract_to)
        except ValueError as e:
            raise ZooError(f"{where}: {e}; refused.") from None
    return [info.filename for info in infos]


def zip_metadata(zip_path: str | os.PathLike, name: str) -> dict:
    member = f"{name}/configs/metadata.json"
    with zipfile.ZipFile(zip_path) as zf:
        try:
            return json.loads(zf.read(member))
        except KeyError:
            raise ZooError(f"{zip_path} holds no {member}.") from None
        except json.JSONDecodeError as e:
            raise ZooError(f"{zip_path}: {member} is not valid JSON: {e}") from None


def verify(zip_path: str | os.PathLike, index: str | os.PathLike, info: dict | None = None) -> dict:
    """Check a zip against the zoo index ``index`` (path or URL; ``info``: its content if already read): sha256,
    members inside ``<name>/``, metadata version equal to the file name's. Returns its index entry."""
    zip_path = Path(zip_path)
    match = ZIP_NAME_RE.fullmatch(zip_path.name)
    if not match:
        raise ZooError(f"{zip_path}: the file name is not <name>_v<MAJOR.MINOR.PATCH>.zip.")
    name, version = match["name"], match["version"]
    info = read_index(index) if info is None else info
    key = index_key(name, version)
    if key not in info:
        raise ZooError(f"{zip_path.name}: no entry '{key}' in the zoo index {index}.")
    actual = sha256(zip_path)
    if actual != info[key]["checksum"]:
        raise ZooError(
            f"{zip_path} does not match the zoo index {index}: sha256 {actual}, the index says {info[key]['checksum']}."
        )
    check_members(zip_path, name)
    found = zip_metadata(zip_path, name).get("version")
    if found != version:
        raise ZooError(f"{zip_path}: {name}/configs/metadata.json says version {found!r}, the file name {version}.")
    logger.info(f"{zip_path.name}: ok (sha256 {actual})")
    return info[key]


# ------------------------------------------------------------------------------------------------------------- fetch
def _latest(info: dict, name: str) -> str:
    versions = [m["version"] for k in info if (m := ZIP_NAME_RE.fullmatch(f"{k}.zip")) and m["name"] == name]
    if not versions:
        raise ZooError(f"the zoo index has no bundle '{name}' (it lists: {', '.join(sorted(info)) or 'nothing'}).")
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def fetch(
    index: str,
    name: str,
    version: str | None = None,
    bundle_dir: str | os.PathLike = ".",
    large_files: bool = True,
) -> Path:
    """Download bundle ``name`` (latest version by default) listed in the zoo index ``index`` into
    ``bundle_dir/<name>``; returns that folder.

    The zip is downloaded by MONAI's ``download_url`` with the index's sha256 and refused (nothing extracted)
    when it differs, or when a member would land outside ``bundle_dir/<name>``; it is then extracted by MONAI's
    ``extractall`` (safe extraction, hash checked again), and the files of its ``large_files.yml`` are downloaded
    by ``monai.bundle.download_large_files``. An existing ``bundle_dir/<name>`` of the same version is kept
    (MONAI's behaviour); one of another version is an error.
    """
    from monai.apps.utils import HashCheckError, download_url, extractall

    info = read_index(index)
    version = version or _latest(info, name)
    key = index_key(name, version)
    if key not in info:
        raise ZooError(
            f"{zip_name(name, version)} is not in the zoo index {index} (versions of {name} there: "
            f"{', '.join(sorted(k for k in info if k.startswith(name + '_v'))) or 'none'})."
        )
    checksum = info[key]["checksum"]
    base = str(index) if urlparse(str(index)).scheme else Path(index).resolve().as_uri()
    url = urljoin(base, info[key]["source"])  # a relative source is relative to the index
    bundle_dir = Path(bundle_dir)
    target = bundle_dir / name
    if target.is_dir() and any(target.iterdir()):
        present = read_metadata(target)["version"]
        if present == version:
            logger.info(f"{target} already holds {name} {version}: kept.")
            return target
        raise ZooError(
            f"{target} already holds {name} {present}, not {version}: remove it or use another --bundle_dir."
        )
    bundle_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="frepa_zoo_") as tmp:
        local = Path(tmp) / f"{name}.zip"  # monai.bundle.download's name: extractall's base folder is <name>
        try:
            download_url(url=url, filepath=local, hash_val=checksum, hash_type="sha256", progress=False)
        except HashCheckError:
            raise ZooError(
                f"{zip_name(name, version)} downloaded from {url} does not match its sha256 {checksum} in the zoo "
                f"index {index}: refused, nothing was extracted to {bundle_dir}."
            ) from None
        except Exception as e:
            raise ZooError(f"cannot download {zip_name(name, version)} from {url}: {e}") from None
        check_members(local, name, bundle_dir, label=f"{zip_name(name, version)} from {url}")
        found = zip_metadata(local, name).get("version")
        if found != version:
            raise ZooError(f"{zip_name(name, version)} from {url} holds {name} version {found!r}: refused.")
        extractall(filepath=local, output_dir=bundle_dir, hash_val=checksum, hash_type="sha256", has_base=True)
    if large_files and (target / LARGE_FILES_NAME).is_file():
        from monai.bundle import download_large_files

        try:
            download_large_files(bundle_path=str(target))
        except Exception as e:
            raise ZooError(f"{target / LARGE_FILES_NAME}: downloading its files failed: {e}") from None
    logger.info(f"{name} {version} -> {target}")
    return target


# -------------------------------------------------------------------------------------------------------------- bump
def next_version(version: str, part: str) -> str:
    major, minor, patch = (int(x) for x in VERSION_RE.fullmatch(version).groups())
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"part must be one of {PARTS}, got {part!r}.")


def _json_style(text: str) -> dict:
    """``json.dumps`` arguments reproducing a file's style: its indent, ASCII escapes, trailing newline."""
    indent = None
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            indent = line[: len(line) - len(stripped)]
            indent = len(indent) if set(indent) == {" "} else indent
            break
    return {"indent": indent, "ensure_ascii": "\\u" in text or all(ord(c) < 128 for c in text)}


def bump(bundle: str | os.PathLike, part: str, message: str) -> str:
    """Raise the bundle's version (``patch``, ``minor`` or ``major``) in ``configs/metadata.json`` and add the
    changelog entry ``message`` first (the model zoo lists the newest first); returns the new version."""
    path = Path(bundle) / "configs" / "metadata.json"
    if not message or not message.strip():
        raise ZooError(f"{path}: a changelog message is needed for the new version.")
    meta = read_metadata(bundle)
    text = path.read_text()
    style = _json_style(text)
    new = next_version(meta["version"], part)
    changelog = meta.get("changelog", {})
    if not isinstance(changelog, dict):
        raise ZooError(f"{path}: 'changelog' is not an object.")
    if new in changelog:
        raise ZooError(f"{path}: version {new} is already in the changelog.")
    old, meta["version"] = meta["version"], new
    meta["changelog"] = {new: message.strip(), **changelog}
    out = json.dumps(meta, **style) + ("\n" if text.endswith("\n") else "")
    _write_atomic(path, out.encode())
    logger.info(f"{path}: version {old} -> {new}")
    return new


# --------------------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    first, rest = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        prog="zoo.py", description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bundles_dir = {"default": str(BUNDLES_DIR), "help": "folder of the bundles (default: %(default)s)"}
    base_url = {"help": "URL where the output folder is served (default: its file:// URI)"}
    max_mb = {
        "type": float,
        "default": MAX_FILE_MB,
        "help": "models/ files above this stay out of the zip and go to large_files.yml (default: %(default)s)",
    }
    force_help = "replace a version the index lists with another checksum (default: refuse, bump it instead)"

    p = sub.add_parser(
        "package", help="zip bundles reproducibly and update the zoo index", description=package_bundle.__doc__
    )
    p.add_argument("names", nargs="*", help="bundle names or folders (default: every bundle)")
    p.add_argument("--bundles_dir", **bundles_dir)
    p.add_argument("--out_dir", default=str(REPO / "dist"), help="where the zips go (default: %(default)s)")
    p.add_argument("--base_url", **base_url)
    p.add_argument("--index", help="zoo index to create / update (default: <out_dir>/model_info.json)")
    p.add_argument("--max_file_mb", **max_mb)
    p.add_argument("--force", action="store_true", help=force_help)

    p = sub.add_parser("bump", help="raise a bundle's version with a changelog entry", description=bump.__doc__)
    p.add_argument("name", help="bundle name or folder")
    p.add_argument("part", choices=PARTS)
    p.add_argument("--message", "-m", required=True, help="changelog entry of the new version")
    p.add_argument("--bundles_dir", **bundles_dir)

    p = sub.add_parser("verify", help="check zips against a zoo index", description=verify.__doc__)
    p.add_argument("zips", nargs="+", help="<name>_v<version>.zip files")
    p.add_argument("--index", required=True, help="model_info.json (path or URL)")

    p = sub.add_parser("publish", help="package + index + verify into a folder to serve", description=publish.__doc__)
    p.add_argument("names", nargs="*", help="bundle names or folders (default: every bundle)")
    p.add_argument("--to", required=True, help="folder to publish to (zips, large files, model_info.json)")
    p.add_argument("--bundles_dir", **bundles_dir)
    p.add_argument("--base_url", **base_url)
    p.add_argument("--max_file_mb", **max_mb)
    p.add_argument("--force", action="store_true", help=force_help)

    p = sub.add_parser("fetch", help="download a bundle listed in a zoo index", description=fetch.__doc__)
    p.add_argument("--index", required=True, help="URL (or path) of model_info.json")
    p.add_argument("--name", required=True, help="bundle name")
    p.add_argument("--version", help="bundle version (default: the latest in the index)")
    p.add_argument("--bundle_dir", default=".", help="folder that receives <name>/ (default: the current folder)")
    p.add_argument("--no_large_files", action="store_true", help="do not download the files of large_files.yml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "package":
            package(args.names, args.bundles_dir, args.out_dir, args.base_url, args.index, args.max_file_mb, args.force)
        elif args.command == "bump":
            print(bump(list_bundles(args.bundles_dir, [args.name])[0], args.part, args.message))
        elif args.command == "verify":
            info = read_index(args.index)
            for path in args.zips:
                verify(path, args.index, info)
        elif args.command == "publish":
            publish(args.to, args.names, args.bundles_dir, args.base_url, args.max_file_mb, args.force)
        elif args.command == "fetch":
            print(fetch(args.index, args.name, args.version, args.bundle_dir, not args.no_large_files))
    except ZooError as e:
        print(f"zoo.py {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
