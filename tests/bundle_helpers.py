"""Helpers shared by the bundle tests: copy a bundle to a temporary folder and run it through MONAI's
ConfigWorkflow in-process (as the model zoo's CI does), and write small real encoder checkpoints."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from frepa_monai.networks import build_encoder, save_encoder_checkpoint

REPO = Path(__file__).resolve().parents[1]

SMALL_RUN = {"preset": "cpu", "cpu_settings#max_epochs": 2, "cpu_settings#val_interval": 1}
"""Overrides every bundle test starts from: the CPU preset, 2 epochs each validated (MLflow is off unless a test passes
``tracking="mlflow"``: creating its SQLite store takes seconds)."""


def small_run(checkpoint: Path | None = None, **override) -> dict:
    """:data:`SMALL_RUN`, ``encoder_checkpoint`` when ``checkpoint`` is given, then ``override``."""
    out = dict(SMALL_RUN)
    if checkpoint is not None:
        out["encoder_checkpoint"] = str(checkpoint)
    return {**out, **override}


def cli_overrides(override: dict) -> list[str]:
    """Config overrides as ``python -m monai.bundle run`` takes them: ``--key value``, non-string values as JSON."""
    return [arg for k, v in override.items() for arg in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


def assert_same_weights(actual: dict, expected: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Two state dicts hold the same tensors (to float tolerance) and the same recorded network (``_extra_state``,
    compared exactly)."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(actual[key], value, rtol=rtol, atol=atol)
        else:
            assert actual[key] == value, key


def read_metrics_csv(path: Path) -> dict[str, float]:
    """A MONAI ``MetricsSaver`` ``metrics.csv``: ``name,value`` per line."""
    return {k: float(v) for k, v in (line.rsplit(",", 1) for line in path.read_text().splitlines() if line)}


def read_predictions_csv(path: Path) -> dict[str, list[float]]:
    """A MONAI ``ClassificationSaver`` CSV: ``file,p_0,p_1,...`` per line, no header."""
    return {row[0]: [float(v) for v in row[1:]] for row in csv.reader(path.read_text().splitlines())}


def bundle_copy(tmp_path: Path, name: str) -> Path:
    """``bundles/<name>`` copied to ``tmp_path/<name>`` without its models and outputs."""
    root = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("models", "eval"))
    return root


def workflow(
    root: Path, configs: list[str], workflow_type: str = "train", tracking: str | None = None, **override
) -> ConfigWorkflow:
    """An initialised ConfigWorkflow of ``root/configs/<configs>`` whose required properties are all present;
    ``tracking="mlflow"`` is MONAI's ``--tracking mlflow``."""
    files = [str(root / "configs" / c) for c in configs]
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        workflow_type=workflow_type,
        logging_file=False,
        bundle_root=str(root),
        tracking=tracking,
        **override,
    )
    wf.initialize()
    assert wf.check_properties() == []
    return wf


def run(root: Path, configs: list[str], workflow_type: str = "train", **override) -> ConfigWorkflow:
    """Initialise, run and finalise a workflow (see :func:`workflow`)."""
    wf = workflow(root, configs, workflow_type, **override)
    wf.run()
    wf.finalize()
    return wf


def encoder_checkpoint(path: Path, name: str, spatial_dims: int, in_channels: int, img_size, seed: int = 12345) -> Path:
    """A real Frepa encoder checkpoint (random weights of preset ``name``, seeded) at ``path``.

    The default seed differs from the bundles' ``set_determinism(seed=0)``: a bundle's own random encoder must not
    equal the checkpoint, or "the encoder is bit-identical to the checkpoint" would hold without loading it.
    """
    import torch

    torch.manual_seed(seed)
    save_encoder_checkpoint(path, build_encoder(name, spatial_dims, in_channels, img_size))
    return path


def error_messages(error: BaseException | None) -> str:
    """``"<type>: <message>"`` of an exception and of every exception it was raised from, one per line (MONAI wraps
    errors raised inside transforms and workflows, so the file-naming message can sit deep in the chain)."""
    text = []
    while error is not None:
        text.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(text)
