"""Package, version, index, publish and fetch the bundles the way the MONAI model zoo does (the command line is
``tools/zoo.py``; ``docs/model_zoo.md`` describes it).

- :mod:`.utils`: :class:`ZooError`, the zoo's file names (``<name>_v<version>.zip``, ``model_info.json``,
  ``large_files.yml``), sha256, atomic writes;
- :mod:`.index`: the zoo index ``model_info.json``, read from a path or a URL, updated in place;
- :mod:`.packaging`: the bundles of a folder, reproducible zips, ``large_files.yml``, :func:`package`,
  :func:`publish`;
- :mod:`.network_format`: the published ``metadata.json``'s ``network_data_format`` rewritten for the shipped
  ``models/model.pt`` (the network it records);
- :mod:`.checks`: the model zoo CI's checks (``verify_metadata``, ``check_properties``, ``verify_net_in_out``,
  ``ckpt_export``), which :func:`publish` runs on what it publishes;
- :mod:`.verification`: members inside ``<name>/`` and within :class:`ZipLimits` (checked before anything is
  extracted), :func:`verify` of a zip against the index;
- :mod:`.manifest`: the manifest of a fetched bundle (every file's size and sha256), which tells a complete install
  from a partial, truncated or edited folder;
- :mod:`.install`: :func:`fetch` of a bundle listed in an index into ``<bundle_dir>/<name>``, through a partial
  folder renamed into place once complete;
- :mod:`.versions`: :func:`bump` of a bundle's version with a changelog entry.

The package uses the standard library and MONAI only; :mod:`.checks` and :mod:`.network_format` also use torch and
:mod:`frepa_monai.networks` (the build record of ``models/model.pt``), imported when a bundle is checked or ships
weights.
"""

from frepa_monai.zoo.checks import CHECKS, EXPORT_ARGS, run_checks
from frepa_monai.zoo.index import latest_version, read_index, update_index
from frepa_monai.zoo.install import fetch
from frepa_monai.zoo.manifest import MANIFEST_NAME, installed_problem, manifest_problems, read_manifest, write_manifest
from frepa_monai.zoo.network_format import shipped_format, shipped_metadata
from frepa_monai.zoo.packaging import (
    bundle_files,
    check_bundle,
    large_files_yml,
    list_bundles,
    package,
    package_bundle,
    publish,
    published_files,
    read_large_files,
    read_metadata,
    stage_bundle,
    write_zip,
)
from frepa_monai.zoo.utils import (
    BUNDLES_DIR,
    INDEX_NAME,
    LARGE_FILES_NAME,
    MAX_FILE_MB,
    REPO,
    ZooError,
    index_key,
    sha256,
    write_atomic,
    zip_name,
)
from frepa_monai.zoo.verification import ZipLimits, check_members, verify, zip_metadata
from frepa_monai.zoo.versions import PARTS, bump, next_version

__all__ = [
    "bump",
    "bundle_files",
    "check_bundle",
    "CHECKS",
    "EXPORT_ARGS",
    "BUNDLES_DIR",
    "check_members",
    "installed_problem",
    "manifest_problems",
    "MANIFEST_NAME",
    "fetch",
    "index_key",
    "INDEX_NAME",
    "LARGE_FILES_NAME",
    "large_files_yml",
    "latest_version",
    "list_bundles",
    "MAX_FILE_MB",
    "next_version",
    "package",
    "package_bundle",
    "PARTS",
    "publish",
    "published_files",
    "read_index",
    "read_large_files",
    "read_manifest",
    "read_metadata",
    "REPO",
    "run_checks",
    "sha256",
    "shipped_format",
    "shipped_metadata",
    "stage_bundle",
    "update_index",
    "verify",
    "write_atomic",
    "write_manifest",
    "write_zip",
    "zip_metadata",
    "zip_name",
    "ZipLimits",
    "ZooError",
]
