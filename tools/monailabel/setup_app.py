"""Serve Frepa bundles with MONAI Label's bundle app (``monaibundle``): segmentation (infer and train) and
classification (infer; MONAI Label 0.8.5 cannot train it); detection is refused (tools/monailabel/README.md).

Creates a MONAI Label app folder from MONAI Label's own sample bundle app (``monailabel apps --download --name
monaibundle``, copied from the installed package, no network), places local Frepa bundles at
``<app>/model/<name>`` (``configs/``, ``docs/``, ``LICENSE`` and ``models/model.pt``) and prints the
``start_server`` command. MONAI Label lives in its own venv (its pins differ from the project's): create it with
``--create-venv`` (``python3.11 -m venv`` + ``pip install -r requirements.txt -c constraints.txt -e <repo>``).

Inference needs only ``models/model.pt``: ``model.pt`` holds every weight, the encoder's included. Training
through MONAI Label (``POST /train/<name>``) runs the bundle's ``train.json``, which builds the network with the
pretrained encoder at ``encoder_checkpoint``; its default (``frepa_monai.bundle.pretrained_encoder_path``) is
``models/encoder.pt`` of the pretraining bundle in the folder beside the bundle, so the encoder is placed at
``<app>/model/<pretrain bundle>/models/encoder.pt`` (``--encoder NAME=<encoder.pt>``, else the pretraining
bundle's own ``models/encoder.pt``). MONAI Label serves only the folders named in ``--conf models``, so that
folder holds just the encoder. ``--skip-trainers`` serves inference only and places no encoder.

The app's trainers are ``FrepaBundleTrainTask`` (``frepa_bundle_train.py``, copied to ``lib/trainers``): MONAI
Label's ``BundleTrainTask`` with a copy of ``train#handlers`` per ``/train``, else ``tracking=mlflow`` adds one more
MLflow handler on every run of a server, and with a validation split that is never empty (the bundles write
``models/model.pt`` from their validation).

MONAI Label 0.8.5 with MONAI 1.6 needs three things the segmentation bundles' own runs do not (see
adapt_for_monailabel); the placed copy gets them when the bundle lacks them, and the script says so:
``displayable_configs`` ``result_extension`` / ``result_dtype`` from the bundle's ``SaveImaged`` (PNG / NIfTI,
uint8), for 2D a final ``SqueezeDimd(keys="pred", dim=0)``, and before a ``Spacingd`` a
``DeleteItemsd(keys="image_path")``. A classification bundle's copy ends its postprocessing by dropping the image
(MONAI Label's ``Restored`` would resize the class scores to it) and has no train config (no trainer).

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
TRAIN_TASK = HERE / "frepa_bundle_train.py"
TRAIN_TASK_IN_APP = Path("lib") / "trainers" / "frepa_bundle.py"
MAIN_PY_EDITS = (  # (MONAI Label 0.8.5's monaibundle main.py, what it becomes)
    (
        "from monailabel.tasks.train.bundle import BundleTrainTask\n",
        "from monailabel.tasks.train.bundle import BundleTrainTask\n"
        "from lib.trainers.frepa_bundle import FrepaBundleTrainTask  # setup_app.py: train#handlers copied per run\n",
    ),
    ("t = BundleTrainTask(b, self.conf)", "t = FrepaBundleTrainTask(b, self.conf)"),
)


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
    # --no-compile: byte-compiling the 8 GB of packages costs minutes; Python compiles what it imports, once
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--no-compile", *(["-q"] if quiet else [])]
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


def use_frepa_train_task(app: Path) -> None:
    """Have the sample app's trainers be ``FrepaBundleTrainTask`` (``frepa_bundle_train.py``, copied into the app).

    MONAI Label's ``BundleTrainTask`` hands ``monai.bundle.run`` its long-lived ``train#handlers`` list, to which
    ``tracking="mlflow"`` appends an MLflow handler on every ``/train``; the subclass passes a copy (see its module
    docstring). Raises ``RuntimeError`` naming ``main.py`` when the sample app is not the one this was written for.
    """
    main = Path(app) / "main.py"
    text = main.read_text()
    for old, new in MAIN_PY_EDITS:
        if text.count(old) != 1:
            raise RuntimeError(f"{main}: expected MONAI Label 0.8.5's sample app, whose main.py holds {old.strip()!r}")
        text = text.replace(old, new)
    shutil.copy2(TRAIN_TASK, Path(app) / TRAIN_TASK_IN_APP)
    main.write_text(text)


def bundle_dims(bundle: Path) -> int:
    """2 or 3: what MONAI Label reads from the length of the input's ``spatial_shape`` in ``metadata.json``."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image = next(iter(meta["network_data_format"]["inputs"].values()))
    return len(image.get("spatial_shape") or [0, 0, 0])


def monailabel_task(bundle: Path) -> str:
    """``segmentation`` or ``classification``: the task MONAI Label 0.8.5 gives ``bundle``, from its folder name.

    ``monailabel.tasks.infer.bundle.BundleInferTask._get_type`` picks the infer type from the name (``detection``,
    ``segmentation``, ``classification``; anything else is segmentation). Raises a ``ValueError`` for the detection
    bundles and the others, which its bundle app cannot serve (tools/monailabel/README.md says why)."""
    name = Path(bundle).name.lower()
    if "detection" in name:
        raise ValueError(
            f"{Path(bundle).name}: MONAI Label 0.8.5 serves a bundle named '*detection*' through a 'detector' of "
            "inference.json (BasicInferTask.run_detector, RetinaNet-style) and trains it on 3D Slicer markup boxes "
            "(BundleTrainTask._fetch_datalist); the Frepa detection bundles have neither (tools/monailabel/README.md)"
        )
    for task in ("segmentation", "classification"):
        if task in name:
            return task
    raise ValueError(
        f"{Path(bundle).name}: MONAI Label takes the task from the folder name; only segmentation and "
        "classification bundles are served"
    )


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
    monailabel_task(bundle)
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

    A classification bundle gets only a final ``DeleteItemsd(keys=["image", "image_meta_dict"])`` in
    ``postprocessing``: MONAI Label appends its ``Restored`` to every non-detection bundle's postprocessing, which
    resizes ``pred`` to the image's ``spatial_shape`` (monailabel/transform/post.py; for a vector of class scores:
    "operands could not be broadcast together"); without the image it leaves ``pred`` as it is, and MONAI Label's
    ``ClassificationWriter`` answers the scores as JSON.

    Returns the changes made (none when the bundle already has them).
    """
    infer = bundle / "configs" / "inference.json"
    config = json.loads(infer.read_text())
    changes = []
    pre, post = _transforms(config, "preprocessing"), _transforms(config, "postprocessing")
    if monailabel_task(bundle) == "classification":
        drop = {"_target_": "DeleteItemsd", "keys": ["image", "image_meta_dict"]}
        if not (post and post[-1] == drop):
            post.append(drop)
            infer.write_text(json.dumps(config, indent=4) + "\n")
            changes.append("postprocessing ends with DeleteItemsd(keys=['image', 'image_meta_dict'])")
        return changes
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


def encoder_source(bundle: Path) -> tuple[str, Path] | None:
    """Where ``bundle``'s ``train.json`` takes its pretrained encoder from: ``(pretrain bundle, encoder.pt)``.

    ``encoder_checkpoint`` of the downstream bundles is ``frepa_monai.bundle.pretrained_encoder_path`` of a
    pretraining bundle (``models/encoder.pt`` in the sibling folder ``<pretrain bundle>``); the returned path is
    that bundle's own encoder beside ``bundle``. ``None``: the bundle has no ``train.json``, trains without a
    pretrained encoder (``encoder`` ``random`` / ``none``, ``encoder_checkpoint`` null) or names a fixed file.
    """
    train = bundle / "configs" / "train.json"
    if not train.is_file():
        return None
    config = json.loads(train.read_text())
    ckpt = config.get("encoder_checkpoint")
    if config.get("encoder", "pretrained") in ("random", "none") or not isinstance(ckpt, dict):
        return None
    if str(ckpt.get("_target_", "")).rsplit(".", 1)[-1] != "pretrained_encoder_path":
        return None
    pretrain = ckpt.get("pretrain_bundle")
    if not isinstance(pretrain, str) or not pretrain or "/" in pretrain or pretrain.startswith(("@", "$", ".")):
        raise ValueError(f"{train}: encoder_checkpoint#pretrain_bundle must name a bundle folder, got {pretrain!r}")
    return pretrain, bundle.parent / pretrain / "models" / "encoder.pt"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def required_encoder(source: Path, encoder: Path | None = None) -> tuple[str, Path] | None:
    """``(pretrain bundle, encoder file)`` that ``source``'s ``train.json`` trains on (see :func:`encoder_source`),
    ``encoder`` replacing the pretraining bundle's own ``models/encoder.pt``; ``None`` when it needs none.

    Raises ``FileNotFoundError`` naming the encoder file when it is missing or empty."""
    source = Path(source).resolve()
    needed = encoder_source(source) if monailabel_task(source) == "segmentation" else None
    if needed is None:
        return None
    pretrain, default = needed
    encoder = Path(encoder).resolve() if encoder else default
    if not encoder.is_file() or encoder.stat().st_size == 0:
        raise FileNotFoundError(
            f"{source.name} trains on a pretrained encoder, which MONAI Label's /train needs: pretrain one "
            f"(python -m monai.bundle run --config_file {source.parent / pretrain}/configs/train.json), pass "
            f"--encoder {source.name}=<encoder.pt>, or serve inference only with --skip-trainers; "
            f"{encoder} {'is empty' if encoder.is_file() else 'does not exist'}"
        )
    return pretrain, encoder


def place_encoder(app: Path, source: Path, encoder: Path | None = None) -> Path | None:
    """Put the encoder that ``source``'s ``train.json`` needs (:func:`required_encoder`) where its default finds it.

    That is ``<app>/model/<pretrain bundle>/models/encoder.pt``: ``pretrained_encoder_path`` looks in the
    pretraining bundle's folder beside the bundle root ``<app>/model/<name>``. Returns the placed file (``None``:
    the bundle needs no encoder). Raises ``ValueError`` when another bundle of the app already placed a different
    encoder for the same pretraining bundle.
    """
    needed = required_encoder(source, encoder)
    if needed is None:
        return None
    pretrain, encoder = needed
    target = Path(app) / "model" / pretrain / "models" / "encoder.pt"
    if target.is_file():
        if _sha256(target) != _sha256(encoder):
            raise ValueError(
                f"{Path(source).name} needs the encoder {encoder} at {target}, but another bundle of this app "
                f"placed a different one there (both train from {pretrain}); serve them from separate apps"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(encoder, target)
    return target


def _check_model(source: Path, model: Path | None = None) -> Path:
    """``model`` (default ``<source>/models/model.pt``); ``FileNotFoundError`` naming it when it is missing."""
    model = Path(model) if model else source / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(
            f"train the bundle first (python -m monai.bundle run --config_file {source}/configs/train.json) or "
            f"pass --model {source.name}=<model.pt>; {model} does not exist"
        )
    return model


def place_bundle(app: Path, source: Path, model: Path | None = None) -> tuple[Path, list[str]]:
    """Copy bundle ``source`` (configs, docs, LICENSE, ``models/model.pt`` or ``model``) to ``<app>/model/<name>``.

    Returns the placed folder and the MONAI Label adaptations made to the copy."""
    source = Path(source).resolve()
    check_bundle(source)
    model = _check_model(source, model)
    target = app / "model" / source.name
    if target.exists():
        shutil.rmtree(target)
    trainable = monailabel_task(source) == "segmentation"
    left_out = [] if trainable else [c.name for c in (source / "configs").glob("*train.json")]
    shutil.copytree(source / "configs", target / "configs", ignore=lambda folder, names: set(left_out) & set(names))
    for extra in ("docs", "LICENSE"):
        if (source / extra).is_dir():
            shutil.copytree(source / extra, target / extra)
        elif (source / extra).is_file():
            shutil.copy2(source / extra, target / extra)
    (target / "models").mkdir()
    shutil.copy2(model, target / "models" / "model.pt")
    changes = adapt_for_monailabel(target)
    if left_out:  # no train config: MONAI Label lists no trainer for the bundle
        changes.append(
            f"{', '.join(sorted(left_out))} left out: MONAI Label 0.8.5 cannot train a classification bundle"
        )
    return target, changes


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
    encoders: dict[str, Path] | None = None,
    skip_trainers: bool = False,
) -> dict[str, list[str]]:
    """Create the app folder and place ``bundles`` (names under ``bundles/`` or bundle folders), each with the
    encoder its ``train.json`` needs (:func:`place_encoder`; ``encoders`` by bundle name, none placed with
    ``skip_trainers``).

    Every ``model.pt`` and encoder is checked before the app folder is created. Returns the MONAI Label
    adaptations made per placed bundle (and ``encoder placed at ...`` for each encoder)."""
    app = Path(app).resolve()
    models, encoders = dict(models or {}), dict(encoders or {})
    sources = [(Path(b) if Path(b).is_dir() else REPO / "bundles" / b).resolve() for b in bundles]
    for s in sources:
        if not (s / "configs").is_dir():
            raise FileNotFoundError(f"bundle {s} not found (a name under {REPO / 'bundles'} or a bundle folder)")
    names = {s.name for s in sources}
    for option, given in (("--model", models), ("--encoder", encoders)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise ValueError(f"{option} names bundles that are not served: {unknown} (served: {sorted(names)})")
    for s in sources:  # every file is checked before anything is written
        check_bundle(s)
        _check_model(s, models.get(s.name))
        if not skip_trainers:
            required_encoder(s, encoders.get(s.name))
    if force and app.exists():
        shutil.rmtree(app)
    download_sample_app(python, app)
    use_frepa_train_task(app)
    changes = {}
    for s in sources:
        changes[s.name] = place_bundle(app, s, models.get(s.name))[1]
        placed = None if skip_trainers else place_encoder(app, s, encoders.get(s.name))
        if placed is not None:
            changes[s.name].append(f"encoder placed at {placed}")
    return changes


def _parse_files(values: list[str], option: str = "--model") -> dict[str, Path]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"{option} takes NAME=PATH, got {v!r}")
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
        "--encoder",
        action="append",
        default=[],
        help="NAME=PATH: encoder.pt that bundle NAME trains on (default: its pretraining bundle's models/encoder.pt)",
    )
    parser.add_argument(
        "--python",
        default=str(venv_python(DEFAULT_VENV)) if venv_python(DEFAULT_VENV).is_file() else sys.executable,
        help="Python of the MONAI Label venv (default: tools/monailabel/.venv if present, else this Python)",
    )
    parser.add_argument("--studies", type=Path, default=Path("studies"), help="studies folder for the command")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--skip-trainers", action="store_true", help="inference only: no encoder placed, --conf skip_trainers true"
    )
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
        models, encoders = _parse_files(args.model), _parse_files(args.encoder, "--encoder")
        changes = setup_app(args.app, bundles, args.python, models, args.force, encoders, args.skip_trainers)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, argparse.ArgumentTypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    app = args.app.resolve()
    for name, made in changes.items():
        print(f"placed {name} at {app / 'model' / name}")
        for c in made:
            print(f"  {c}" if c.startswith("encoder placed") else f"  adapted for MONAI Label: {c}")
    cmd = server_command(
        args.python, app, args.studies.resolve(), list(changes), args.host, args.port, args.skip_trainers
    )
    print("\nstart the server (from a folder without a .env file, not the system temporary folder):")
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
