"""The zoo index ``model_info.json`` (the MONAI model zoo's format): one entry per published version,
``"<name>_v<version>": {"checksum": <sha256 of the zip>, "source": <URL of the zip>}``, read from a path or a URL
and updated in place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

from frepa_monai.zoo.utils import ZIP_NAME_RE, ZooError, write_atomic

__all__ = ["read_index", "update_index", "latest_version"]


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
    write_atomic(index_path, (json.dumps(info, indent=4) + "\n").encode())
    return info


def latest_version(info: dict, name: str) -> str:
    """The highest version of bundle ``name`` that the index ``info`` lists."""
    versions = [m["version"] for k in info if (m := ZIP_NAME_RE.fullmatch(f"{k}.zip")) and m["name"] == name]
    if not versions:
        raise ZooError(f"the zoo index has no bundle '{name}' (it lists: {', '.join(sorted(info)) or 'nothing'}).")
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
