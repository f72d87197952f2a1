"""Installing a bundle listed in a zoo index: :func:`fetch` into ``<bundle_dir>/<name>``, all or nothing.

1. An existing ``<bundle_dir>/<name>`` is kept only when it is a complete install of that version: its manifest
   (:mod:`frepa_monai.zoo.manifest`) lists every file with its size and sha256. Any other folder is an error that
   says what differs; ``replace`` replaces it, nothing deletes it otherwise.
2. Everything is written to ``<bundle_dir>/.<name>.partial-<pid>/``, on the file system of the target: the zip
   (sha256 against the index), checked before anything is extracted (members inside ``<name>/``, within
   :class:`~frepa_monai.zoo.verification.ZipLimits`), extracted counting each member's bytes, the files of its
   ``large_files.yml`` (each hash checked), then the manifest.
3. The complete folder is renamed to ``<bundle_dir>/<name>`` (``os.replace``: atomic on one file system).

A fetch killed at any point leaves at most its ``.partial-<pid>`` folder, which no check takes as installed; the
next fetch of the bundle removes those of processes that no longer run. A fetch that fails removes its own and
changes nothing else.

The downloads stream into the partial folder with ``urllib``: MONAI's ``download_url`` writes to the system's
temporary folder and then moves the file, so a kill would leave the bytes there, and a move across file systems
copies them once more. Extraction uses MONAI's ``safe_extract_member`` for every member's path, as
``monai.bundle.download`` does.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urljoin, urlparse
from urllib.request import urlopen

from frepa_monai.zoo.index import latest_version, read_index
from frepa_monai.zoo.manifest import installed_problem, write_manifest
from frepa_monai.zoo.packaging import read_large_files
from frepa_monai.zoo.utils import ZooError, index_key, zip_name
from frepa_monai.zoo.verification import ZipLimits, check_members, outside_reason, short_name, zip_metadata

__all__ = ["PARTIAL", "download", "remove_leftovers", "extract", "fetch"]

logger = logging.getLogger("frepa.zoo")

PARTIAL = ".{name}.partial-{pid}"  # the folder a fetch writes to, beside its target
CHUNK = 1 << 16  # bytes per read: a download grows on disk as it comes
DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, ValueError)  # URLError and HTTPError are OSErrors


def download(url: str, path: Path, hash_type: str = "sha256") -> str:
    """Stream ``url`` (``http(s)://``, ``file://``) into the new file ``path``; returns the digest of what came
    (``hash_type``: a ``hashlib`` name), which the caller compares."""
    digest = hashlib.new(hash_type)
    with urlopen(url, timeout=60) as response, open(path, "xb") as f:
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: take every process as running
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(bundle_dir: Path, name: str) -> None:
    """Remove the partial folders of earlier fetches of ``name`` into ``bundle_dir`` whose process no longer runs
    (a fetch that was killed); those of a running process (a fetch going on now) are left alone."""
    for path in sorted(bundle_dir.glob(PARTIAL.format(name=name, pid="*"))):
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not path.is_dir() or path.is_symlink():
            continue
        if int(pid) != os.getpid() and _running(int(pid)):
            logger.info(f"{path}: a fetch running now (process {pid}) writes there; left alone.")
            continue
        try:
            shutil.rmtree(path)
        except OSError as e:  # it does not count as installed anyway
            logger.warning(f"cannot remove {path}, left by an interrupted fetch: {e.strerror or e}.")
            continue
        logger.info(f"removed {path}, left by an interrupted fetch (process {pid} no longer runs).")


def extract(zip_path: Path, out: Path, label: str) -> None:
    """Extract every member of ``zip_path`` below ``out`` at the path MONAI's ``safe_extract_member`` gives it,
    counting the bytes written: a member that unzips to more than the size the zip declares for it is refused
    (``check_members`` limits the declared sizes; ``zipfile`` itself stops there and checks the CRC). Files are
    created, never overwritten (a member listed twice is refused)."""
    from monai.apps.utils import safe_extract_member

    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            where = f"{label}: member {short_name(info.filename)}"
            path = Path(safe_extract_member(info, str(out)))
            try:
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(path, "xb") as dst:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > info.file_size:
                            raise ZooError(
                                f"{where} unzips to more than the {info.file_size} bytes the zip declares: refused."
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise ZooError(f"{where} cannot be unzipped ({e}): refused.") from None
            except OSError as e:
                raise ZooError(f"{where} cannot be written to {path}: {e.strerror or e}.") from None


def _download_large_files(bundle: Path) -> None:
    """Download the files its ``large_files.yml`` (``.yaml``, ``.json``) lists into ``bundle``, hash checked."""
    list_name, entries = read_large_files(bundle)
    for entry in entries:
        rel, url = str(entry["path"]), str(entry.get("url") or "")
        where = f"{bundle.name}/{list_name}: {short_name(rel)}"
        reason = outside_reason(rel) or ("has no url" if not url else None)
        if reason:
            raise ZooError(f"{where} {reason}: refused.")
        hash_val, hash_type = str(entry.get("hash_val") or "").lower(), str(entry.get("hash_type") or "sha256")
        path = bundle / rel
        if path.is_file() and hash_val:  # in the zip already (MONAI's download_url skips it too)
            with open(path, "rb") as f:
                if hashlib.file_digest(f, hash_type).hexdigest() == hash_val:
                    continue
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            got = download(url, path, hash_type)
        except DOWNLOAD_ERRORS as e:
            raise ZooError(f"{where}: cannot download {url}: {e}") from None
        if hash_val and got != hash_val:
            raise ZooError(f"{where}: {url} does not match its {hash_type} {hash_val}: refused.")
        logger.info(f"{bundle.name}/{rel} <- {url}")


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and next(path.iterdir(), None) is None


def fetch(
    index: str,
    name: str,
    version: str | None = None,
    bundle_dir: str | os.PathLike = ".",
    large_files: bool = True,
    replace: bool = False,
    limits: ZipLimits | None = None,
) -> Path:
    """Install bundle ``name`` (latest version by default) listed in the zoo index ``index`` (path or URL) into
    ``bundle_dir/<name>``; returns that folder.

    The zip is refused, nothing extracted, when its sha256 differs from the index's, a member would land outside
    ``<name>/``, or it is over ``limits`` (default :class:`~frepa_monai.zoo.verification.ZipLimits`). It is
    extracted and the files of its ``large_files.yml`` downloaded (unless not ``large_files``) in
    ``bundle_dir/.<name>.partial-<pid>``, which becomes ``bundle_dir/<name>`` with its manifest only when complete.
    An existing ``bundle_dir/<name>`` that its manifest shows to be this version, intact, is kept. Any other
    (another version, a file missing, truncated or edited, no manifest) is an error saying what differs, unless
    ``replace``: then it is replaced (deleted) once the new folder is complete.
    """
    info = read_index(index)
    version = version or latest_version(info, name)
    key, zname = index_key(name, version), zip_name(name, version)
    if key not in info:
        raise ZooError(
            f"{zname} is not in the zoo index {index} (versions of {name} there: "
            f"{', '.join(sorted(k for k in info if k.startswith(name + '_v'))) or 'none'})."
        )
    checksum = str(info[key]["checksum"]).lower()
    base = str(index) if urlparse(str(index)).scheme else Path(index).resolve().as_uri()
    url = urljoin(base, info[key]["source"])  # a relative source is relative to the index
    bundle_dir = Path(bundle_dir)
    target = bundle_dir / name
    if bundle_dir.is_dir():
        remove_leftovers(bundle_dir, name)
    if (target.exists() or target.is_symlink()) and not _empty_folder(target):
        problem = installed_problem(target, name, version)
        if problem is None:
            logger.info(f"{target} already holds {name} {version}: kept.")
            return target
        if not replace:
            raise ZooError(
                f"{problem}: remove it, use another --bundle_dir, or pass --replace to replace it with "
                f"{name} {version} (its files are then deleted)."
            )
        logger.info(f"{problem}: it is replaced once {name} {version} is complete (--replace).")
    partial = bundle_dir / PARTIAL.format(name=name, pid=os.getpid())
    try:
        bundle_dir.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
    except OSError as e:
        raise ZooError(f"cannot create {partial} to fetch {zname} in: {e.strerror or e}.") from None
    try:
        try:
            got = download(url, partial / zname)
        except DOWNLOAD_ERRORS as e:
            raise ZooError(f"cannot download {zname} from {url}: {e}") from None
        if got != checksum:
            raise ZooError(
                f"{zname} downloaded from {url} does not match its sha256 {checksum} in the zoo index {index}: "
                f"refused, nothing was extracted to {bundle_dir}."
            )
        label = f"{zname} from {url}"
        check_members(partial / zname, name, partial, label=label, limits=limits)
        found = zip_metadata(partial / zname, name).get("version")
        if found != version:
            raise ZooError(f"{label} holds {name} version {found!r}: refused.")
        extract(partial / zname, partial, label)
        (partial / zname).unlink()
        if large_files:
            _download_large_files(partial / name)
        write_manifest(partial / name, name, version, url, checksum)
        _move_into_place(partial, target, replace)
    except OSError as e:
        raise ZooError(f"{zname}: installing it in {partial} failed: {e}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info(f"{name} {version} -> {target}")
    return target


def _move_into_place(partial: Path, target: Path, replace: bool) -> None:
    """Rename the complete ``partial/<name>`` to ``target`` (absent or an empty folder); with ``replace``, what is
    there is moved into ``partial`` first (deleted with it), and back if the rename fails. A kill between the two
    renames leaves no ``target``, and the next fetch installs it."""
    old = None
    if replace and (target.exists() or target.is_symlink()) and not _empty_folder(target):
        old = partial / ".replaced"  # a bundle name starts with a letter or digit
        os.replace(target, old)
    try:
        os.replace(partial / target.name, target)
    except OSError as e:
        if old is not None:
            os.replace(old, target)
        raise ZooError(
            f"{target} cannot be replaced by the fetched bundle ({e.strerror or e}): nothing changed."
        ) from None
