"""The pieces every part of :mod:`frepa_monai.zoo` shares: :class:`ZooError`, the model zoo's file names
(``<name>_v<version>.zip``, the index key ``<name>_v<version>``, ``model_info.json``, ``large_files.yml``), sha256
digests and atomic writes."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = [
    "REPO",
    "BUNDLES_DIR",
    "INDEX_NAME",
    "LARGE_FILES_NAME",
    "MAX_FILE_MB",
    "VERSION_RE",
    "ZIP_NAME_RE",
    "ZooError",
    "sha256",
    "zip_name",
    "index_key",
    "write_atomic",
    "json_style",
]

REPO = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO / "bundles"
INDEX_NAME = "model_info.json"
LARGE_FILES_NAME = "large_files.yml"
MAX_FILE_MB = 25.0  # the model zoo's limit for files inside a bundle zip
VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
ZIP_NAME_RE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)_v(?P<version>\d+\.\d+\.\d+)\.zip")


class ZooError(Exception):
    """A bundle, zip or index that cannot be packaged, verified or fetched; the message names the file."""


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of the file ``path`` (hex digits), read in chunks of 1 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def zip_name(name: str, version: str) -> str:
    """``<name>_v<version>.zip``, the model zoo's file name, also the index key without ``.zip``."""
    return f"{name}_v{version}.zip"


def index_key(name: str, version: str) -> str:
    """``<name>_v<version>``, the key of a version in the zoo index ``model_info.json``."""
    return f"{name}_v{version}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file beside it and a rename: ``path`` holds either
    its old content or ``data``, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def json_style(text: str) -> dict:
    """``json.dumps`` arguments reproducing a file's style: its indent, ASCII escapes, trailing newline."""
    indent = None
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            indent = line[: len(line) - len(stripped)]
            indent = len(indent) if set(indent) == {" "} else indent
            break
    return {"indent": indent, "ensure_ascii": "\\u" in text or all(ord(c) < 128 for c in text)}
