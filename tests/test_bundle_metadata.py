"""Bundle metadata and layout, in the style of the MONAI model zoo's CI (``ci/verify_bundle.py``).

Every folder under ``bundles/`` (except ``bundles/schema``) is a bundle: its ``configs/metadata.json``
must validate with ``monai.bundle.verify_metadata`` against the JSON schema stored in
``bundles/schema/`` (offline: MONAI only downloads the schema when no file exists at ``filepath``;
these tests block sockets and check that the stored file is left as it was), hold the version in
its changelog, name ``frepa-monai`` with the package's version, and describe the network's
input / output so that ``verify_net_in_out`` and MONAI Label can use it.

``bundles/schema/meta_schema_20240725.json`` is the model zoo's bundle metadata schema, byte for
byte: the file that ``https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/
meta_schema_20240725.json`` serves, as copied verbatim into the MONAI website repository
(``Project-MONAI/project-monai.github.io``, branch ``add_bundle_schema``, blob
``875e55b7a3e03967ce2df999073ab6ff073290fa``, later served at
``https://project-monai.github.io/schema/meta_schema_20240725.json``). Its SHA-256 is pinned below.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import re
import socket
from pathlib import Path

import pytest

import frepa_monai

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
SCHEMA_DIR = BUNDLES_DIR / "schema"
SCHEMA_URL_PREFIXES = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/",
    "https://project-monai.github.io/schema/",
)
# upstream schema files stored in bundles/schema, verbatim (sha256 of the upstream text)
KNOWN_SCHEMAS = {
    "meta_schema_20240725.json": "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678",
}
# config files of the model zoo layout that the lead writes alongside (skipped while missing)
WORKFLOW_CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "multi_gpu_evaluate.json")
# the pretraining bundles: expected channel layout and their default datalist function
PRETRAIN = {
    "frepa_pretrain_2d": {"dims": 2, "in": 4, "out": 3, "datalist": "pretrain_2d_datalist"},
    "frepa_pretrain_3d": {"dims": 3, "in": 2, "out": 1, "datalist": "pretrain_3d_datalist"},
}


def _bundle_dirs() -> list[Path]:
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(
        p for p in BUNDLES_DIR.iterdir() if p.is_dir() and p.name != "schema" and not p.name.startswith((".", "_"))
    )


BUNDLES = _bundle_dirs()
IDS = [p.name for p in BUNDLES]


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _schema_file(meta: dict) -> Path:
    return SCHEMA_DIR / meta["schema"].rsplit("/", 1)[-1]


def _spatial_dims(bundle: Path, meta: dict) -> int:
    """From the bundle's name (its last ``_2d`` / ``_3d`` tag), else from the input's spatial shape."""
    tags = re.findall(r"_([23])d(?=_|$)", bundle.name)
    if tags:
        return int(tags[-1])
    return len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"])


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_pretraining_bundles_present():
    for name in PRETRAIN:
        assert (BUNDLES_DIR / name / "configs" / "metadata.json").is_file(), f"bundles/{name} has no metadata"


@pytest.mark.parametrize("name", sorted(KNOWN_SCHEMAS))
def test_stored_schema_is_the_upstream_text(name):
    path = SCHEMA_DIR / name
    assert path.is_file(), f"{path} missing: verify_metadata would try to download it"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == KNOWN_SCHEMAS[name], f"{path} differs from upstream"
    schema = json.loads(path.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"required_packages_version", "network_data_format"} <= set(schema["required"])


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_layout(bundle):
    """Files the model zoo's CI and MONAI Label expect; workflow configs skipped while not yet written."""
    for rel in ("configs/metadata.json", "configs/logging.conf", "LICENSE", "docs/data_license.txt"):
        path = bundle / rel
        assert path.is_file() and path.stat().st_size > 0, f"{bundle.name}: {rel} missing or empty"
    assert "Apache License" in (bundle / "LICENSE").read_text()[:300]
    assert "Licen" in (bundle / "docs" / "data_license.txt").read_text()

    conf = configparser.ConfigParser(interpolation=None)
    conf.read(bundle / "configs" / "logging.conf")
    for section in ("loggers", "handlers", "formatters", "logger_root"):
        assert conf.has_section(section), f"{bundle.name}: logging.conf has no [{section}]"
    for section in ("loggers", "handlers", "formatters"):
        assert conf.get(section, "keys"), f"{bundle.name}: logging.conf [{section}] lists no keys"
    readme = bundle / "docs" / "README.md"
    assert readme.is_file() and readme.stat().st_size > 0, f"{bundle.name}: docs/README.md missing or empty"


@pytest.mark.parametrize("config", WORKFLOW_CONFIGS)
@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_workflow_config_present(bundle, config):
    path = bundle / "configs" / config
    if not path.exists():
        pytest.skip(f"{bundle.name}/configs/{config} not written yet (the bundle's workflow configs come separately)")
    assert isinstance(json.loads(path.read_text()), dict), f"{path} is not a JSON object"


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_verify_metadata_offline(bundle, no_network, monkeypatch):
    """``monai.bundle.verify_metadata`` against the stored schema, without touching the network."""
    import monai.bundle.scripts as scripts
    from monai.bundle import verify_metadata

    meta = _meta(bundle)
    assert meta["schema"].startswith(SCHEMA_URL_PREFIXES), f"{bundle.name}: unexpected schema URL {meta['schema']}"
    schema = _schema_file(meta)
    assert schema.is_file(), f"{bundle.name}: schema {schema.name} not stored in bundles/schema (would be downloaded)"
    before = schema.read_bytes()

    calls = []
    real_download = scripts.download_url

    def checked_download(url, filepath, *args, **kwargs):  # MONAI skips the download when the file exists
        calls.append(Path(filepath))
        assert Path(filepath).is_file(), f"verify_metadata would download {url}"
        return real_download(url, filepath, *args, **kwargs)

    monkeypatch.setattr(scripts, "download_url", checked_download)
    kwargs = {}
    if schema.name in KNOWN_SCHEMAS:
        kwargs = {"hash_val": KNOWN_SCHEMAS[schema.name], "hash_type": "sha256"}
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema), **kwargs)
    assert calls == [schema]
    assert schema.read_bytes() == before, "verify_metadata changed the stored schema"


def test_stored_schema_rejects_bad_metadata(no_network, tmp_path):
    """The stored schema really validates: a metadata without a required field fails."""
    from monai.bundle import verify_metadata

    bundle = BUNDLES_DIR / "frepa_pretrain_3d"
    meta = _meta(bundle)
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(
            meta_file=str(bad),
            filepath=str(_schema_file(meta)),
            hash_val=KNOWN_SCHEMAS.get(_schema_file(meta).name),
            hash_type="sha256",
        )


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_versions(bundle):
    import monai

    meta = _meta(bundle)
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), meta["version"]
    assert meta["version"] in meta["changelog"], f"{bundle.name}: version {meta['version']} not in changelog"
    assert all(isinstance(v, str) and v for v in meta["changelog"].values())
    assert meta["monai_version"] == monai.__version__
    for key in ("pytorch_version", "numpy_version"):
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", meta[key]), f"{bundle.name}: {key}={meta[key]!r} (no local suffix)"
    packages = meta["required_packages_version"]
    assert packages.get("frepa-monai") == frepa_monai.__version__, (
        f"{bundle.name}: required_packages_version must name frepa-monai=={frepa_monai.__version__}"
    )
    for name, version in packages.items():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and isinstance(version, str) and version
    assert isinstance(meta.get("supported_apps", {}), dict)
    assert "not for clinical use" in meta["intended_use"]
    assert any("High-frequency Components" in ref for ref in meta["references"])


def _check_tensor(where: str, fmt: dict, dims: int) -> None:
    for key in (
        "type",
        "format",
        "num_channels",
        "spatial_shape",
        "dtype",
        "value_range",
        "is_patch_data",
        "channel_def",
    ):
        assert key in fmt, f"{where}: no {key}"
    assert len(fmt["spatial_shape"]) == dims, f"{where}: spatial_shape {fmt['spatial_shape']} is not {dims}D"
    assert fmt["dtype"] == "float32"
    assert fmt["value_range"] == [0, 1]
    assert sorted(fmt["channel_def"], key=int) == [str(i) for i in range(fmt["num_channels"])], (
        f"{where}: channel_def {fmt['channel_def']} does not match num_channels {fmt['num_channels']}"
    )


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_network_data_format(bundle):
    meta = _meta(bundle)
    ndf = meta["network_data_format"]
    assert "image" in ndf["inputs"], f"{bundle.name}: no inputs.image"
    assert "pred" in ndf["outputs"], f"{bundle.name}: no outputs.pred"
    dims = _spatial_dims(bundle, meta)
    image, pred = ndf["inputs"]["image"], ndf["outputs"]["pred"]
    _check_tensor(f"{bundle.name} inputs.image", image, dims)
    assert len(pred["spatial_shape"]) == dims, f"{bundle.name}: outputs.pred spatial_shape is not {dims}D"
    if bundle.name in PRETRAIN:
        expected = PRETRAIN[bundle.name]
        assert dims == expected["dims"]
        _check_tensor(f"{bundle.name} outputs.pred", pred, dims)
        # the encoder input is the image plus the Hessian ridge channel; the output is the image
        assert image["num_channels"] == expected["in"] == expected["out"] + 1
        assert "hessian" in image["channel_def"][str(image["num_channels"] - 1)].lower()
        assert pred["num_channels"] == expected["out"]
        assert pred["spatial_shape"] == image["spatial_shape"]
        assert pred["is_patch_data"] == image["is_patch_data"]


@pytest.mark.parametrize("name", sorted(PRETRAIN))
def test_data_license_covers_default_data(name):
    """docs/data_license.txt of a pretraining bundle covers every source of its default datalist."""
    import frepa_monai.data as fd

    bundle = BUNDLES_DIR / name
    text = (bundle / "docs" / "data_license.txt").read_text()
    datalist = getattr(fd, PRETRAIN[name]["datalist"])()
    sources = {item["source"] for split in datalist.values() for item in split}
    for source in sorted(sources):
        for fname in fd.SOURCE_LICENSES[source]:
            first_line = (fd.LICENSES_DIR / fname).read_text().splitlines()[0]
            assert fname in text or first_line in text, f"{name}: data_license.txt lacks {source} ({fname})"
