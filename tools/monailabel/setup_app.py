"""Serve Frepa segmentation bundles with MONAI Label's bundle app (``monaibundle``).

Creates a MONAI Label app folder from MONAI Label's own sample bundle app (``monailabel apps --download --name
monaibundle``, copied from the installed package, no network), places local Frepa bundles at
``<app>/model/<name>`` (``configs/``, ``docs/``, ``LICENSE`` and ``models/model.pt``) and prints the
``start_server`` command. MONAI Label lives in its own venv (its pins differ from the project's): create it with
``--create-venv`` (``python3.11 -m venv`` + ``pip install -r requirements.txt -c constraints.txt -e <repo>``).

Inference needs only ``models/model.pt``: the bundles' ``inference.json`` builds the network with
``encoder_checkpoint: null`` and ``model.pt`` holds every weight, encoder included, so no ``encoder.pt`` is placed.

MONAI Label 0.8.5 with MONAI 1.6 needs three things the bundles' own runs do not (see adapt_for_monailabel);
the placed copy gets them when the bundle lacks them, and the script says so: ``displayable_configs``
``result_extension`` / ``result_dtype`` from the bundle's ``SaveImaged`` (PNG / NIfTI, uint8), for 2D a final
``SqueezeDimd(keys="pred", dim=0)``, and before a ``Spacingd`` a ``DeleteItemsd(keys="image_path")``.

Examples (from the repository root)::

    python tools/monailabel/setup_app.py --create-venv tools/monailabel/.venv
    python tools/monailabel/setup_app.py --app apps/frepa --python tools/monailabel/.venv/bin/python \\
        --bundle frepa_vessel_segmentation_2d --bundle frepa_segmentation_3d --studies studies
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
CONSTRAINTS = HERE / "constraints.txt"
DEFAULT_VENV = HERE / ".venv"
SAMPLE_APP = "monaibundle"
MARKER = ".frepa-monailabel"
INFER_KEYS = ("network_def", "preprocessing", "postprocessing", "inferer")


def venv_python(venv: str | os.PathLike) -> Path:
    """The Python executable of a venv folder."""
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _install_digest(repo: Path) -> str:
    """What the MONAI Label venv was installed from: the pins and this checkout's path."""
    text = REQUIREMENTS.read_text() + CONSTRAINTS.read_text() + str(repo.resolve())
    return hashlib.sha256(text.encode()).hexdigest()


def venv_is_ready(venv: str | os.PathLike, repo: Path = REPO) -> bool:
    """True when ``venv`` was completed by :func:`create_venv` from the current pins for ``repo``."""
    marker = Path(venv) / MARKER
    return venv_python(venv).is_file() and marker.is_file() and marker.read_text().strip() == _install_digest(repo)


def create_venv(venv: str | os.PathLike, repo: Path = REPO, python: str = sys.executable, quiet: bool = True) -> Path:
    """Create (or complete) the MONAI Label venv ``venv`` with the pinned versions and ``repo`` installed editable.

    Returns the venv's Python. Raises ``subprocess.CalledProcessError`` (with pip's output) when pip fails.
    """
    venv = Path(venv).resolve()
    if venv_is_ready(venv, repo):
        return venv_python(venv)
    if str(venv).startswith(tempfile.gettempdir() + os.sep):
        raise ValueError(f"keep the MONAI Label venv out of the system temporary folder: {venv}")
    if not venv_python(venv).is_file():
        subprocess.run([python, "-m", "venv", str(venv)], check=True, cwd=repo)
    pip = [str(venv_python(venv)), "-m", "pip", "install", *(["-q"] if quiet else [])]
    cmd = pip + ["-r", str(REQUIREMENTS), "-c", str(CONSTRAINTS), "-e", str(repo)]
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if quiet else {}
    subprocess.run(cmd, check=True, cwd=repo, text=True, **out)
    (venv / MARKER).write_text(_install_digest(repo) + "\n")
    return venv_python(venv)


def download_sample_app(python: str | os.PathLike, app: Path) -> Path:
    """Copy MONAI Label's sample bundle app (from the package installed beside ``python``) to the new folder ``app``."""
    app = Path(app).resolve()
    if app.exists():
        raise FileExistsError(f"app folder {app} exists; pass --force to replace it")
    app.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".monailabel-app-", dir=app.parent))
    try:
        cmd = [str(python), "-m", "monailabel.main", "apps", "--download", "--name", SAMPLE_APP]
        res = subprocess.run(
            cmd + ["--output", str(staging)], cwd=app.parent, capture_output=True, text=True, check=False
        )
        if res.returncode != 0 or not (staging / SAMPLE_APP / "main.py").is_file():
            raise RuntimeError(
                f"'{shlex.join(cmd)}' did not copy MONAI Label's sample app (is monailabel installed beside "
                f"{python}?):\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
            )
        shutil.move(str(staging / SAMPLE_APP), str(app))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return app


def bundle_dims(bundle: Path) -> int:
    """2 or 3: what MONAI Label reads from the length of the input's ``spatial_shape`` in ``metadata.json``."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image = next(iter(meta["network_data_format"]["inputs"].values()))
    return len(image.get("spatial_shape") or [0, 0, 0])


def check_bundle(bundle: Path) -> dict:
    """Raise a ``ValueError`` naming the file when ``bundle`` cannot be served; return its output ``channel_def``."""
    infer = bundle / "configs" / "inference.json"
    meta_file = bundle / "configs" / "metadata.json"
    for f in (infer, meta_file):
        if not f.is_file():
            raise ValueError(f"{bundle.name}: {f} is missing; MONAI Label reads it")
    config = json.loads(infer.read_text())
    missing = [k for k in INFER_KEYS if k not in config]
    if missing:
        raise ValueError(f"{infer} lacks {missing}; MONAI Label's bundle app reads {list(INFER_KEYS)}")
    meta = json.loads(meta_file.read_text())
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    channel_def = next(iter(outputs.values()), {}).get("channel_def") if outputs else None
    if not channel_def:
        raise ValueError(f"{meta_file}: network_data_format.outputs has no channel_def (MONAI Label's labels)")
    if "segmentation" not in bundle.name:
        raise ValueError(f"{bundle.name}: MONAI Label takes the task from the folder name; only segmentation here")
    return channel_def


def _transforms(config: dict, key: str) -> list:
    section = config[key]
    return section["transforms"] if isinstance(section, dict) else section


def _target(t) -> str:
    return str(t.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(t, dict) else ""


def adapt_for_monailabel(bundle: Path) -> list[str]:
    """Give the placed copy of a bundle what MONAI Label 0.8.5's bundle app needs (see the module docstring).

    - ``displayable_configs`` (MONAI Label's request defaults) ``result_extension`` / ``result_dtype`` taken from
      the bundle's own ``SaveImaged`` (``output_ext``, ``output_dtype``): MONAI Label's writer otherwise uses the
      input's extension (JPEG for CHASE_DB1, which cannot hold a float label) and a float label.
    - 2D: a final ``SqueezeDimd(keys="pred", dim=0)`` in ``postprocessing`` (after ``SaveImaged``, which MONAI
      Label drops): its writer needs a 2D label without channel axis.
    - ``Spacingd`` on ``image``: a ``DeleteItemsd(keys="image_path")`` first. MONAI 1.6's ``Spacingd`` updates
      every ``image_*`` item of a NIfTI input as a metadata dict, and MONAI Label puts the string ``image_path``
      there ("'str' object has no attribute 'update'"); the writer then takes the extension set above.

    Returns the changes made (none when the bundle already has them).
    """
    infer = bundle / "configs" / "inference.json"
    config = json.loads(infer.read_text())
    changes = []
    pre, post = _transforms(config, "preprocessing"), _transforms(config, "postprocessing")
    save = next((t for t in post if _target(t) == "SaveImaged"), {})
    dtype = str(save.get("output_dtype", "")).rsplit(".", 1)[-1] or "uint8"
    defaults = {"result_extension": save.get("output_ext", ".nii.gz"), "result_dtype": dtype}
    shown = config.setdefault("displayable_configs", {})
    for key, value in defaults.items():
        if key not in shown:
            shown[key] = value
            changes.append(f"displayable_configs['{key}'] = {value!r}")
    if bundle_dims(bundle) == 2 and not (post and _target(post[-1]) == "SqueezeDimd"):
        post.append({"_target_": "SqueezeDimd", "keys": "pred", "dim": 0})
        changes.append("postprocessing ends with SqueezeDimd(keys='pred', dim=0)")
    spacing = next((i for i, t in enumerate(pre) if _target(t) == "Spacingd"), None)
    deleted = any(_target(t) == "DeleteItemsd" and t.get("keys") == "image_path" for t in pre[: spacing or 0])
    if spacing is not None and not deleted:
        pre.insert(spacing, {"_target_": "DeleteItemsd", "keys": "image_path"})
        changes.append("preprocessing deletes 'image_path' before Spacingd")
    if changes:
        infer.write_text(json.dumps(config, indent=4) + "\n")
    return changes


def place_bundle(app: Path, source: Path, model: Path | None = None) -> tuple[Path, list[str]]:
    """Copy bundle ``source`` (configs, docs, LICENSE, ``models/model.pt`` or ``model``) to ``<app>/model/<name>``.

    Returns the placed folder and the MONAI Label adaptations made to the copy."""
    source = Path(source).resolve()
    check_bundle(source)
    model = Path(model) if model else source / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(
            f"{model} does not exist: train the bundle first (python -m monai.bundle run --config_file "
            f"{source}/configs/train.json) or pass --model {source.name}=<model.pt>"
        )
    target = app / "model" / source.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source / "configs", target / "configs")
    for extra in ("docs", "LICENSE"):
        if (source / extra).is_dir():
            shutil.copytree(source / extra, target / extra)
        elif (source / extra).is_file():
            shutil.copy2(source / extra, target / extra)
    (target / "models").mkdir()
    shutil.copy2(model, target / "models" / "model.pt")
    return target, adapt_for_monailabel(target)


def server_command(
    python: str | os.PathLike,
    app: Path,
    studies: Path,
    models: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    skip_trainers: bool = False,
) -> list[str]:
    """``python -m monailabel.main start_server ...`` (what the ``monailabel`` launcher runs) for local bundles."""
    cmd = [str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--host", host, "--port", str(port), "--conf", "models", ",".join(models)]
    cmd += ["--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    return cmd + (["--conf", "skip_trainers", "true"] if skip_trainers else [])


def setup_app(
    app: Path,
    bundles: list[str],
    python: str | os.PathLike,
    models: dict[str, Path] | None = None,
    force: bool = False,
) -> dict[str, list[str]]:
    """Create the app folder and place ``bundles`` (names under ``bundles/`` or bundle folders).

    Returns the MONAI Label adaptations made per placed bundle."""
    app = Path(app).resolve()
    sources = [Path(b) if Path(b).is_dir() else REPO / "bundles" / b for b in bundles]
    for s in sources:
        if not (s / "configs").is_dir():
            raise FileNotFoundError(f"bundle {s} not found (a name under {REPO / 'bundles'} or a bundle folder)")
    if force and app.exists():
        shutil.rmtree(app)
    download_sample_app(python, app)
    return {s.name: place_bundle(app, s, (models or {}).get(s.name))[1] for s in sources}


def _parse_models(values: list[str]) -> dict[str, Path]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--model takes NAME=PATH, got {v!r}")
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--create-venv", metavar="DIR", help="create/complete the MONAI Label venv DIR and exit")
    parser.add_argument("--app", type=Path, help="app folder to create (MONAI Label's monaibundle sample app)")
    parser.add_argument(
        "--bundle",
        action="append",
        default=[],
        help="bundle to serve: a name under bundles/ or a bundle folder (repeat; default: both segmentation bundles)",
    )
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH: model.pt to place for bundle NAME")
    parser.add_argument(
        "--python",
        default=str(venv_python(DEFAULT_VENV)) if venv_python(DEFAULT_VENV).is_file() else sys.executable,
        help="Python of the MONAI Label venv (default: tools/monailabel/.venv if present, else this Python)",
    )
    parser.add_argument("--studies", type=Path, default=Path("studies"), help="studies folder for the command")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--skip-trainers", action="store_true", help="add --conf skip_trainers true to the command")
    parser.add_argument("--force", action="store_true", help="replace an existing app folder")
    args = parser.parse_args(argv)

    if args.create_venv:
        try:
            py = create_venv(args.create_venv, quiet=False)
        except subprocess.CalledProcessError as e:
            print(f"'{shlex.join(e.cmd)}' failed ({e.returncode})", file=sys.stderr)
            return 1
        print(f"MONAI Label venv ready: {py}")
        return 0
    if args.app is None:
        parser.error("--app is required (or --create-venv)")
    bundles = args.bundle or ["frepa_vessel_segmentation_2d", "frepa_segmentation_3d"]
    try:
        changes = setup_app(args.app, bundles, args.python, _parse_models(args.model), args.force)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, argparse.ArgumentTypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    app = args.app.resolve()
    for name, made in changes.items():
        print(f"placed {name} at {app / 'model' / name}")
        for c in made:
            print(f"  adapted for MONAI Label: {c}")
    cmd = server_command(
        args.python, app, args.studies.resolve(), list(changes), args.host, args.port, args.skip_trainers
    )
    print("\nstart the server (from a folder without a .env file, not the system temporary folder):")
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
