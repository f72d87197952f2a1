"""The manifest of a fetched bundle: ``<bundle_dir>/<name>/.zoo_manifest.json``, the size and sha256 of every file
of the install, written by :func:`frepa_monai.zoo.fetch` once the install is complete and before it moves the
folder into place, so that a folder holding a manifest was complete when it was installed.

A folder is taken as installed (``already holds ... kept``) only when it has a manifest and every file the
manifest lists is there with its size and sha256: a folder left by an interrupted download, a truncated or edited
file, or a folder made by hand (no manifest) is not. Files the manifest does not list (what running the bundle
writes: ``eval/``, resume checkpoints) do not matter. The manifest is a hidden file, which ``package`` leaves out
of a zip, and it sits inside the folder, so the rename that installs the folder installs it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from frepa_monai.zoo.utils import ZooError, sha256, write_atomic

__all__ = ["MANIFEST_NAME", "write_manifest", "read_manifest", "manifest_problems", "installed_problem"]

MANIFEST_NAME = ".zoo_manifest.json"
SHOWN = 3  # differences a message lists before "and N more"


def _files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files below ``folder`` (symbolic links not followed), the manifest left out."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        rel = Path(root).relative_to(folder)
        files += [str(PurePosixPath(*rel.parts, n)) for n in sorted(names) if (Path(root) / n).is_file()]
    return [f for f in files if f != MANIFEST_NAME]


def write_manifest(folder: str | os.PathLike, name: str, version: str, source: str, checksum: str) -> dict:
    """Write ``folder/.zoo_manifest.json``: the bundle (``name``, ``version``), where its zip came from (``source``,
    its sha256 ``checksum``) and ``files``: ``{path: {"size": bytes, "sha256": hex}}`` of every file below
    ``folder``. Returns the manifest."""
    folder = Path(folder)
    files = {rel: {"size": (folder / rel).stat().st_size, "sha256": sha256(folder / rel)} for rel in _files(folder)}
    manifest = {"name": name, "version": version, "source": source, "checksum": checksum, "files": files}
    write_atomic(folder / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of ``folder``, ``None`` when it has none; a manifest that is not one is a :class:`ZooError`."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"{path} cannot be read: {e}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and {"size", "sha256"} <= set(v) for v in files.values()
    ):
        raise ZooError(f"{path} is not a manifest of zoo.py fetch (no 'files' of 'size' and 'sha256').")
    return manifest


def manifest_problems(folder: str | os.PathLike, manifest: dict) -> list[str]:
    """What differs between ``folder`` and its ``manifest``, one phrase per file (missing, size, sha256); empty
    when every listed file is intact. A file's sha256 is read only when its size matches."""
    folder, problems = Path(folder), []
    for rel, want in sorted(manifest["files"].items()):
        path = folder / rel
        try:
            if not path.is_file():
                problems.append(f"{rel} is missing")
            elif (size := path.stat().st_size) != want["size"]:
                problems.append(f"{rel} has {size} bytes, not {want['size']}")
            elif sha256(path) != want["sha256"]:
                problems.append(f"{rel} has other content (sha256)")
        except OSError as e:
            problems.append(f"{rel} cannot be read ({e.strerror or e})")
    return problems


def installed_problem(target: str | os.PathLike, name: str, version: str) -> str | None:
    """Why ``target`` is not a complete install of ``name`` ``version`` by ``fetch``, or ``None`` when it is: it is
    not a folder, has no manifest, holds another bundle or version, or its files differ from its manifest."""
    target = Path(target)
    if not target.is_dir():
        return f"{target} is not a folder"
    try:
        manifest = read_manifest(target)
    except ZooError as e:
        return str(e).rstrip(".")
    if manifest is None:
        return (
            f"{target} has no {MANIFEST_NAME}, which zoo.py fetch writes once an install is complete (it may be "
            "what an interrupted fetch left, or a folder copied by hand)"
        )
    problems = manifest_problems(target, manifest)
    if problems:
        more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        return f"{target} does not match its {MANIFEST_NAME}: {'; '.join(problems[:SHOWN])}{more}"
    if (manifest.get("name"), manifest.get("version")) != (name, version):
        return f"{target} already holds {manifest.get('name')} {manifest.get('version')}, not {name} {version}"
    return None
