"""The checks that the MONAI model zoo's CI runs on a bundle (``ci/verify_bundle.py`` of Project-MONAI/model-zoo),
called the way it calls them. :func:`~frepa_monai.zoo.packaging.publish` runs :func:`run_checks` on a copy of what
it publishes (the files of the zip, ``metadata.json`` rewritten for the weights by
:mod:`~frepa_monai.zoo.network_format`) and refuses a bundle that fails one, with an error naming the bundle, the
file and the check.

In the zoo's order (``verify(bundle, models_path, mode="full")``):

1. ``directory`` (``verify_bundle_directory``): the necessary files ``configs/metadata.json`` and ``LICENSE``, and
   the preferred ``configs/inference.{json,yaml,yml}``. The preferred ``models/model.pt`` is not required: this
   repository publishes configs-only bundles that users train (the checks that need weights are then skipped, and
   the log says so).
2. ``version`` (``verify_version_changes``): ``version`` is in ``changelog``. The zoo also refuses a version that
   ``model_info.json`` lists; :func:`~frepa_monai.zoo.packaging.package` refuses one listed with another checksum
   (publishing the same files again is allowed).
3. ``verify_metadata`` (``verify_metadata_format``): against the schema the metadata names, copied to
   ``eval/schema.json`` as the zoo's ``ci/prepare_schema.py`` does, from this repository's stored copy
   (``bundles/schema/``): never downloaded.
4. ``check_properties`` (``verify_bundle_properties``): the inference workflow made by ``create_workflow`` has
   MONAI's ``MetaProperties`` and ``InferProperties`` (the zoo checks the properties of the apps in
   ``supported_apps``, which are MONAI's plus the app's own).
5. ``verify_net_in_out`` (``verify_data_shape``): the ``network_def`` of the inference config on a random input of
   the metadata's shape. A bundle without weights has the paper preset's metadata; without CUDA (where ``"auto"``
   builds the CPU preset) it is checked at ``preset`` ``gpu`` on PyTorch's ``meta`` device (shapes only).
6. ``ckpt_export`` (``verify_torchscript``): ``models/model.pt`` into ``network_def`` and exported to TorchScript
   (``models/verify_model.ts``); a shipped ``models/model.ts`` must load. Only with weights.

**Tracing.** The networks do not script (``torch.jit.script`` stops at the ViT encoder's ``num_tokens``, which
uses ``math.prod``; see ``tests/test_export.py``). A model zoo bundle cannot say so in its own files: the zoo lists
a bundle that does not script in ``exclude_verify_torchscript_list`` of its ``ci/bundle_custom_data.py`` (and the
bundle's ``docs/README.md`` says so), and gives a bundle exported by tracing ``{"use_trace": True}`` in that
file's ``include_verify_tensorrt_dict``. :data:`EXPORT_ARGS` is that entry for these bundles, which all trace:
``ckpt_export`` then takes the input shape from ``network_data_format``, which publish writes for the weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from frepa_monai.zoo.utils import ZooError

__all__ = [
    "CHECKS",
    "EXPORT_ARGS",
    "NET_ID",
    "find_config",
    "find_schema",
    "check_directory",
    "check_version",
    "check_metadata",
    "check_properties",
    "check_net_in_out",
    "check_export",
    "run_checks",
]

NECESSARY_FILES = ("configs/metadata.json", "LICENSE")  # ci/verify_bundle.py: necessary_files_list
WEIGHTS, TORCHSCRIPT, EXPORTED = "models/model.pt", "models/model.ts", "models/verify_model.ts"
NET_ID = "network_def"  # ci/verify_bundle.py: _get_net_id
EXPORT_ARGS = {"use_trace": True}  # ci/bundle_custom_data.py style entry: the networks trace, they do not script
CHECKS = ("directory", "version", "verify_metadata", "check_properties", "verify_net_in_out", "ckpt_export")

logger = logging.getLogger("frepa.zoo")


def _one_line(error: BaseException, limit: int = 400) -> str:
    """The innermost message of ``error``'s chain that is not one of MONAI's config wrappers, on one line."""
    seen, chain = set(), []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    wrappers = ("Failed to evaluate", "Failed to instantiate component")
    inner = next((e for e in reversed(chain) if str(e) and not str(e).startswith(wrappers)), chain[0])
    text = " ".join(f"{type(inner).__name__}: {inner}".split())
    if type(inner).__name__ == "OptionalImportError":  # MONAI's: "from x import y (No module named 'x')." + a URL
        module = getattr(inner, "name", None) or text.split("(No module named ", 1)[-1].split(")", 1)[0].strip("'\"")
        text = f"{text.split(' For details', 1)[0].split(' Original traceback', 1)[0]} (pip install {module})"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _failed(label: str, check: str, file: str, error: BaseException | str) -> ZooError:
    reason = error if isinstance(error, str) else _one_line(error)
    return ZooError(f"{label}: {file}: the model zoo's check {check} failed: {reason}")


def find_config(root: Path, name: str = "inference") -> Path | None:
    """``configs/<name>.{json,yaml,yml}`` as the zoo finds it (``_find_bundle_file``: the last suffix found)."""
    found = None
    for suffix in ("json", "yaml", "yml"):
        if (root / "configs" / f"{name}.{suffix}").is_file():
            found = root / "configs" / f"{name}.{suffix}"
    return found


def find_schema(meta: dict, schema_dirs: list[Path]) -> Path | None:
    """The stored copy of the schema ``meta["schema"]`` names (its file name) in the first of ``schema_dirs``."""
    name = str(meta.get("schema", "")).rsplit("/", 1)[-1]
    return next((d / name for d in schema_dirs if name and (d / name).is_file()), None)


def check_directory(root: Path, label: str) -> bool:
    """The necessary and preferred files; returns whether ``models/model.pt`` is there."""
    for rel in NECESSARY_FILES:
        if not (root / rel).is_file():
            raise _failed(label, "directory", rel, "necessary file is not existing")
    if find_config(root) is None:
        raise _failed(label, "directory", "configs/inference.json", "inference config file is not existing")
    has_weights = (root / WEIGHTS).is_file()
    if not has_weights:
        logger.warning(f"{label}: no {WEIGHTS} (configs only): verify_net_in_out runs without weights, no ckpt_export")
    return has_weights


def check_version(root: Path, label: str) -> dict:
    """``version`` and ``changelog`` in the metadata, the version in the changelog; returns the metadata."""
    try:
        meta = json.loads((root / "configs" / "metadata.json").read_text())
    except ValueError as e:
        raise _failed(label, "version", "configs/metadata.json", e) from None
    if "version" not in meta or not isinstance(meta.get("changelog"), dict):
        raise _failed(label, "version", "configs/metadata.json", "'version' or 'changelog' is missing")
    if meta["version"] not in meta["changelog"]:
        raise _failed(label, "version", "configs/metadata.json", f"version {meta['version']} is not in 'changelog'")
    return meta


def check_metadata(root: Path, label: str, meta: dict, schema_dirs: list[Path]) -> None:
    """``verify_metadata`` against the stored schema, copied to ``eval/schema.json`` (as ci/prepare_schema.py)."""
    from monai.bundle import verify_metadata

    schema = find_schema(meta, schema_dirs)
    if schema is None:
        where = ", ".join(str(d) for d in schema_dirs)
        reason = f"the schema {meta.get('schema')!r} is not stored in {where} (it is never downloaded): store it there"
        raise _failed(label, "verify_metadata", "configs/metadata.json", reason)
    target = root / "eval" / "schema.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(schema, target)
    try:
        verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(target))
    except Exception as e:
        raise _failed(label, "verify_metadata", "configs/metadata.json", e) from None


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """The root logger as it was after the block: the bundle's ``logging.conf`` (loaded by ``create_workflow``)
    configures the root logger of the calling process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def check_properties(root: Path, label: str) -> None:
    """The inference workflow's required properties (MONAI's ``MetaProperties`` and ``InferProperties``), present
    and parsed: ``create_workflow`` initialises it and ``check_properties`` builds each one."""
    from monai.bundle import create_workflow
    from monai.bundle.properties import InferProperties, MetaProperties

    config = find_config(root)
    logging_file = root / "configs" / "logging.conf"
    kwargs = {
        "workflow_type": "inference",
        "bundle_root": str(root),
        "config_file": str(config),
        "meta_file": str(root / "configs" / "metadata.json"),
    }
    if logging_file.is_file():
        kwargs["logging_file"] = str(logging_file)
    workflow = None
    try:
        with _logging_kept():
            workflow = create_workflow(**kwargs)
            workflow.properties = {**MetaProperties, **InferProperties}
            missing = workflow.check_properties()
    except Exception as e:
        raise _failed(label, "check_properties", config.relative_to(root).as_posix(), e) from None
    finally:
        _finalize(workflow, label)
    if missing:
        reason = f"missing or wrong properties {missing}"
        raise _failed(label, "check_properties", config.relative_to(root).as_posix(), reason)


def _finalize(workflow, label: str) -> None:
    """Run the workflow's ``finalize`` (its ``initialize`` started the bundle's run guard: lock, signal handlers),
    which the zoo's CI, a process that ends right after, leaves out."""
    if workflow is None:
        return
    try:
        with _logging_kept():
            workflow.finalize()
    except Exception as e:  # not one of the zoo's checks
        logger.warning(f"{label}: finalize of the inference workflow failed after check_properties: {_one_line(e)}")


def check_net_in_out(root: Path, label: str, has_weights: bool) -> None:
    """``verify_net_in_out`` of ``network_def`` against ``network_data_format`` (see the module docstring)."""
    import torch
    from monai.bundle import verify_net_in_out

    config = find_config(root)
    kwargs = {
        "net_id": NET_ID,
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(config),
        "bundle_root": str(root),
    }
    where = f"{config.relative_to(root).as_posix()} {NET_ID} vs configs/metadata.json network_data_format"
    paper_on_meta = not has_weights and not torch.cuda.is_available()
    try:
        if paper_on_meta:  # the paper preset the metadata describes, shapes only
            with torch.device("meta"):
                verify_net_in_out(device="meta", preset="gpu", **kwargs)
        else:
            verify_net_in_out(**kwargs)
    except Exception as e:
        raise _failed(label, "verify_net_in_out", where, e) from None


def check_export(root: Path, label: str) -> None:
    """``ckpt_export`` of ``models/model.pt`` to TorchScript (traced, :data:`EXPORT_ARGS`); a shipped
    ``models/model.ts`` must load with ``torch.jit.load``."""
    import torch
    from monai.bundle import ckpt_export

    config = find_config(root)
    try:
        ckpt_export(
            net_id=NET_ID,
            filepath=str(root / EXPORTED),
            ckpt_file=str(root / WEIGHTS),
            meta_file=str(root / "configs" / "metadata.json"),
            config_file=str(config),
            bundle_root=str(root),
            **EXPORT_ARGS,
        )
    except Exception as e:
        raise _failed(
            label, "ckpt_export", f"{WEIGHTS} into {config.relative_to(root).as_posix()} {NET_ID}", e
        ) from None
    if (root / TORCHSCRIPT).is_file():
        try:
            torch.jit.load(str(root / TORCHSCRIPT))
        except Exception as e:
            raise _failed(label, "ckpt_export", TORCHSCRIPT, e) from None


def run_checks(root: str | os.PathLike, label: str | None = None, schema_dirs: list[Path] | None = None) -> list[str]:
    """Every check of the module docstring on the bundle folder ``root`` (it writes ``eval/`` and
    ``models/verify_model.ts`` there, as the zoo's CI does); ``label`` names the bundle in errors (default: the
    folder). Returns the checks that ran; the first that fails raises :class:`ZooError`."""
    root = Path(root)
    label = label or str(root)
    schema_dirs = [Path(d) for d in (schema_dirs or [])]
    ran = ["directory", "version", "verify_metadata", "check_properties", "verify_net_in_out"]
    has_weights = check_directory(root, label)
    meta = check_version(root, label)
    check_metadata(root, label, meta, schema_dirs)
    check_properties(root, label)
    check_net_in_out(root, label, has_weights)
    if has_weights:
        check_export(root, label)
        ran.append("ckpt_export")
    logger.info(f"{label}: the model zoo's checks passed ({', '.join(ran)})")
    return ran
