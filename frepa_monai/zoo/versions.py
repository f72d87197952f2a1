"""Versions of a bundle: :func:`bump` raises ``version`` in ``configs/metadata.json`` (patch, minor or major) and
puts a changelog entry first, keeping the file's JSON formatting."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from frepa_monai.zoo.packaging import read_metadata
from frepa_monai.zoo.utils import VERSION_RE, ZooError, json_style, write_atomic

__all__ = ["PARTS", "next_version", "bump"]

PARTS = ("patch", "minor", "major")

logger = logging.getLogger("frepa.zoo")


def next_version(version: str, part: str) -> str:
    major, minor, patch = (int(x) for x in VERSION_RE.fullmatch(version).groups())
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"part must be one of {PARTS}, got {part!r}.")


def bump(bundle: str | os.PathLike, part: str, message: str) -> str:
    """Raise the bundle's version (``patch``, ``minor`` or ``major``) in ``configs/metadata.json`` and add the
    changelog entry ``message`` first (the model zoo lists the newest first); returns the new version."""
    path = Path(bundle) / "configs" / "metadata.json"
    if not message or not message.strip():
        raise ZooError(f"{path}: a changelog message is needed for the new version.")
    meta = read_metadata(bundle)
    text = path.read_text()
    style = json_style(text)
    new = next_version(meta["version"], part)
    changelog = meta.get("changelog", {})
    if not isinstance(changelog, dict):
        raise ZooError(f"{path}: 'changelog' is not an object.")
    if new in changelog:
        raise ZooError(f"{path}: version {new} is already in the changelog.")
    old, meta["version"] = meta["version"], new
    meta["changelog"] = {new: message.strip(), **changelog}
    out = json.dumps(meta, **style) + ("\n" if text.endswith("\n") else "")
    write_atomic(path, out.encode())
    logger.info(f"{path}: version {old} -> {new}")
    return new
