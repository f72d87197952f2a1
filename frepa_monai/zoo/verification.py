"""Checks of a bundle zip before anything of it is written, and :func:`verify` of a zip against the zoo index.

:func:`check_members` refuses a zip whose members would not land inside ``<name>/`` (absolute paths, ``..``,
backslashes, links, another top folder; MONAI's ``safe_extract_member`` checks each one too) or that is over one
of its :class:`ZipLimits`: the number of members, the bytes of a member's path and of each name in it (what a file
system can create), and the total size the members declare once unzipped (a small zip that expands to gigabytes).
The zip's central directory gives all of these, so nothing needs to be extracted to refuse it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from frepa_monai.zoo.index import read_index
from frepa_monai.zoo.utils import ZIP_NAME_RE, ZooError, index_key, sha256

__all__ = ["ZipLimits", "outside_reason", "short_name", "check_members", "zip_metadata", "verify"]

logger = logging.getLogger("frepa.zoo")


@dataclass(frozen=True)
class ZipLimits:
    """What a bundle zip may hold; :func:`check_members` refuses a zip over any of them (``tools/zoo.py`` options
    in brackets).

    Args:
        max_members: members, files and folders (``--max_members``).
        max_unzipped_bytes: the members' total size once unzipped, as the zip declares it (``--max_unzipped_mb``).
            The model zoo's largest bundles are a few hundred MB, and files over 25 MB stay out of the zip.
        max_name_bytes: bytes (UTF-8) of each file or folder name in a member's path (``--max_name_bytes``): 255
            is the limit of ext4, XFS, Btrfs, APFS and NTFS.
        max_path_bytes: bytes (UTF-8) of a member's whole path inside the zip (``--max_path_bytes``).
    """

    max_members: int = 10_000
    max_unzipped_bytes: int = 4 * 2**30
    max_name_bytes: int = 255
    max_path_bytes: int = 1024


def outside_reason(path: str) -> str | None:
    """Why the relative POSIX path ``path`` (a zip member, a ``large_files.yml`` path) would be written outside
    the folder it is extracted to, or ``None``: absolute, a drive letter, a backslash, a ``..``."""
    if "\\" in path or path.startswith("/") or re.match(r"[A-Za-z]:", path) or ".." in PurePosixPath(path).parts:
        return "would be written outside the target folder"
    return None


def short_name(name: str, keep: int = 60) -> str:
    """``repr(name)``, its middle elided when it is longer than ``keep`` characters (one readable error line)."""
    return repr(name) if len(name) <= keep else repr(f"{name[: keep - 20]}...{name[-17:]}")


def check_members(
    zip_path: str | os.PathLike,
    name: str,
    extract_to: str | os.PathLike | None = None,
    label: str | None = None,
    limits: ZipLimits | None = None,
) -> list[str]:
    """Refuse a zip over its ``limits`` (default :class:`ZipLimits`) or whose members would not land inside
    ``<extract_to>/<name>/``: absolute paths, ``..``, backslashes, links, or a top folder other than ``<name>/``.
    MONAI's ``safe_extract_member`` checks each member too (after these checks, which need no MONAI import).
    ``label`` names the zip in errors (default: its file name). Returns the member names."""
    limits = limits or ZipLimits()
    label = label or Path(zip_path).name
    extract_to = str(extract_to or tempfile.gettempdir())
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ZooError(f"{zip_path} is not a readable zip file: {e}") from None
    if len(infos) > limits.max_members:
        raise ZooError(
            f"{label} has {len(infos)} members, over the limit of {limits.max_members} (--max_members): refused."
        )
    for info in infos:
        member = info.filename
        where = f"{label}: member {short_name(member)}"
        parts = PurePosixPath(member).parts
        path_bytes = len(member.encode())
        if path_bytes > limits.max_path_bytes:
            raise ZooError(
                f"{where} has a path of {path_bytes} bytes, over the limit of {limits.max_path_bytes} bytes "
                "(--max_path_bytes): refused."
            )
        name_bytes = max((len(part.encode()) for part in parts), default=0)
        if name_bytes > limits.max_name_bytes:
            raise ZooError(
                f"{where} has a file or folder name of {name_bytes} bytes, over the limit of "
                f"{limits.max_name_bytes} bytes (--max_name_bytes): refused."
            )
        reason = outside_reason(member)
        if reason:
            raise ZooError(f"{where} {reason}: refused.")
        if not parts or parts[0] != name or (len(parts) == 1 and not info.is_dir()):
            raise ZooError(f"{where} is not inside the bundle's folder '{name}/': refused.")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ZooError(f"{where} is a symbolic link: refused.")
    total = sum(info.file_size for info in infos)
    if total > limits.max_unzipped_bytes:
        raise ZooError(
            f"{label} unzips to {total / 2**20:.1f} MiB ({total} bytes), over the limit of "
            f"{limits.max_unzipped_bytes / 2**20:g} MiB (--max_unzipped_mb): refused."
        )
    from monai.apps.utils import safe_extract_member

    for info in infos:
        try:
            safe_extract_member(info, extract_to)
        except ValueError as e:
            raise ZooError(f"{label}: member {short_name(info.filename)}: {e}; refused.") from None
    return [info.filename for info in infos]


def zip_metadata(zip_path: str | os.PathLike, name: str) -> dict:
    """``<name>/configs/metadata.json`` of a bundle zip, read without extracting it."""
    member = f"{name}/configs/metadata.json"
    with zipfile.ZipFile(zip_path) as zf:
        try:
            return json.loads(zf.read(member))
        except KeyError:
            raise ZooError(f"{zip_path} holds no {member}.") from None
        except json.JSONDecodeError as e:
            raise ZooError(f"{zip_path}: {member} is not valid JSON: {e}") from None


def verify(
    zip_path: str | os.PathLike, index: str | os.PathLike, info: dict | None = None, limits: ZipLimits | None = None
) -> dict:
    """Check a zip against the zoo index ``index`` (path or URL; ``info``: its content if already read): sha256,
    members inside ``<name>/`` and within ``limits`` (:func:`check_members`), metadata version equal to the file
    name's. Returns its index entry."""
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
    check_members(zip_path, name, limits=limits)
    found = zip_metadata(zip_path, name).get("version")
    if found != version:
        raise ZooError(f"{zip_path}: {name}/configs/metadata.json says version {found!r}, the file name {version}.")
    logger.info(f"{zip_path.name}: ok (sha256 {actual})")
    return info[key]
