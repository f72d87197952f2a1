"""Checks of a bundle zip before anything of it is written: its members stay inside ``<name>/`` (no absolute
paths, no ``..``, no links; MONAI's ``safe_extract_member`` checks each one too), and :func:`verify` compares a
zip with the zoo index (sha256, members, the version in its metadata)."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from frepa_monai.zoo.index import read_index
from frepa_monai.zoo.utils import ZIP_NAME_RE, ZooError, index_key, sha256

__all__ = ["check_members", "zip_metadata", "verify"]

logger = logging.getLogger("frepa.zoo")


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
