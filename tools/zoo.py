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
  ``<name>/`` (no absolute paths, no ``..``, no links), the zip within the limits (``--max_members``,
  ``--max_unzipped_mb``, ``--max_name_bytes``, ``--max_path_bytes``) and its metadata's version against its file
  name.
- ``publish --to FOLDER [NAME ...]``: the model zoo CI's checks on each bundle (``ci/verify_bundle.py``: files,
  version in the changelog, ``verify_metadata`` against the schema stored in ``bundles/schema``,
  ``check_properties`` of the inference workflow, ``verify_net_in_out``, and, with ``models/model.pt``, a traced
  ``ckpt_export``), on a copy of what it publishes; a bundle that fails one is refused, nothing is written, and the
  error names the bundle, the file and the check. Then ``package`` into ``FOLDER`` with ``FOLDER/model_info.json``
  and ``verify``: a folder that any static HTTP server can serve (``python -m http.server --directory FOLDER``).
  ``package`` and ``publish`` write a published bundle's ``configs/metadata.json`` with a ``network_data_format``
  that describes its ``models/model.pt`` (the network it records: e.g. the CPU preset's input size).
- ``fetch --index URL --name NAME [--version V] --bundle_dir DIR``: reads the index, downloads the zip and refuses
  it (nothing extracted) when its sha256 differs from the index, a member would land outside ``DIR/<name>/`` or
  the zip is over a limit (as ``verify``); extracts it (MONAI's ``safe_extract_member`` for every path) and
  downloads the files of its ``large_files.yml`` (hash-checked), all in ``DIR/.<name>.partial-<pid>``, renamed to
  ``DIR/<name>`` with a manifest of every file's sha256 once complete. A killed fetch leaves no folder that counts
  as installed. An existing ``DIR/<name>`` is kept only when it matches its manifest; otherwise the error says
  what differs (``--replace`` replaces it).

A published zip is also what MONAI's own client downloads:
``python -m monai.bundle download --name <name> --version <v> --url <base_url>/<name>_v<v>.zip --bundle_dir <dir>``.
See ``docs/model_zoo.md``. This file is the command line only: the functions are in ``frepa_monai.zoo``.

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
import logging
import sys
from pathlib import Path

from frepa_monai.zoo import (
    MAX_FILE_MB,
    PARTS,
    ZipLimits,
    ZooError,
    bump,
    fetch,
    list_bundles,
    package,
    package_bundle,
    publish,
    read_index,
    verify,
)

REPO = Path(__file__).resolve().parents[1]  # this clone, also when frepa_monai is installed from a wheel
BUNDLES_DIR = REPO / "bundles"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _add_limits(p: argparse.ArgumentParser) -> None:
    """The options of :class:`ZipLimits`: a zip over any of them is refused before anything is extracted."""
    d = ZipLimits()
    p.add_argument(
        "--max_members", type=_positive_int, default=d.max_members, help="members of a zip (default: %(default)s)"
    )
    p.add_argument(
        "--max_unzipped_mb",
        type=_positive_float,
        default=d.max_unzipped_bytes / 2**20,
        help="MiB the members of a zip may unzip to, all together (default: %(default)g, 4 GiB)",
    )
    p.add_argument(
        "--max_name_bytes",
        type=_positive_int,
        default=d.max_name_bytes,
        help="bytes of each file or folder name in a member's path (default: %(default)s)",
    )
    p.add_argument(
        "--max_path_bytes",
        type=_positive_int,
        default=d.max_path_bytes,
        help="bytes of a member's path (default: %(default)s)",
    )


def _limits(args: argparse.Namespace) -> ZipLimits:
    return ZipLimits(args.max_members, int(args.max_unzipped_mb * 2**20), args.max_name_bytes, args.max_path_bytes)


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
    _add_limits(p)

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
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace (delete) a <bundle_dir>/<name> that is not this version intact, once the new one is complete "
        "(default: refuse, saying what differs)",
    )
    _add_limits(p)
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
                verify(path, args.index, info, _limits(args))
        elif args.command == "publish":
            publish(args.to, args.names, args.bundles_dir, args.base_url, args.max_file_mb, args.force)
        elif args.command == "fetch":
            large_files = not args.no_large_files
            print(fetch(args.index, args.name, args.version, args.bundle_dir, large_files, args.replace, _limits(args)))
    except ZooError as e:
        print(f"zoo.py {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
