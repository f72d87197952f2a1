"""Installing a bundle listed in a zoo index: :func:`fetch` downloads its zip, refuses it (nothing extracted) when
its sha256 differs from the index or a member would land outside ``<bundle_dir>/<name>/``, extracts it and
downloads the files of its ``large_files.yml``."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urljoin, urlparse

from frepa_monai.zoo.index import latest_version, read_index
from frepa_monai.zoo.packaging import read_metadata
from frepa_monai.zoo.utils import LARGE_FILES_NAME, ZooError, index_key, zip_name
from frepa_monai.zoo.verification import check_members, zip_metadata

__all__ = ["fetch"]

logger = logging.getLogger("frepa.zoo")


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
    version = version or latest_version(info, name)
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
