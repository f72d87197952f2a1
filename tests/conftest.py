"""Shared fixtures: real images from the package's sample data, loaded once per test session; and the MONAI Label
venv's creation started in the background when its tests will run (see :func:`pytest_collection_modifyitems`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.transforms import LoadImage, ScaleIntensity

from frepa_monai.data import pretrain_3d_datalist, vessel_segmentation_datalist


def _load(path: str) -> torch.Tensor:
    return torch.as_tensor(LoadImage(image_only=True, ensure_channel_first=True)(path)).float()


@pytest.fixture(scope="session")
def fundus():
    """A CHASE_DB1 fundus photo ``(3, H, W)`` in [0, 1], its vessel mask and its field-of-view mask ``(H, W)``."""
    item = vessel_segmentation_datalist()["training"][0]
    image = ScaleIntensity()(_load(item["image"]))
    label = _load(item["label"])[0] > 0
    fov = _load(item["mask"])[0] > 0
    return image.as_tensor() if hasattr(image, "as_tensor") else image, label, fov


@pytest.fixture(scope="session")
def volume():
    """A real 3D volume ``(1, H, W, D)`` of the 3D pretraining set, scaled to [0, 1]."""
    item = pretrain_3d_datalist()["training"][0]
    image = ScaleIntensity()(_load(item["image"]))
    return image.as_tensor() if hasattr(image, "as_tensor") else image


_REPO = Path(__file__).resolve().parents[1]
_CREATE_VENV = """
import fcntl, sys
sys.path.insert(0, sys.argv[1])
import setup_app
venv = setup_app.DEFAULT_VENV
venv.mkdir(parents=True, exist_ok=True)
with open(venv / ".frepa-lock", "w") as lock:  # the lock tests/test_monailabel.py's fixture takes
    fcntl.flock(lock, fcntl.LOCK_EX)
    setup_app.create_venv(venv)
"""
_background: list[subprocess.Popen] = []


def pytest_collection_modifyitems(session, config, items):
    """Creating the MONAI Label venv (pip, mostly disk) takes minutes on a fresh clone; when its tests are selected,
    start it now, beside the other tests, instead of when the first of them runs. The tests' fixture takes the same
    lock, so it waits for this creation (or, if it failed, creates the venv itself and reports the error)."""
    if os.environ.get("FREPA_MONAILABEL_PYTHON", "").strip() or not any(
        item.path.name == "test_monailabel.py" and item.get_closest_marker("slow") for item in items
    ):
        return
    sys.path.insert(0, str(_REPO / "tools" / "monailabel"))
    import setup_app

    if setup_app.venv_is_ready(setup_app.DEFAULT_VENV):
        return
    setup_app.DEFAULT_VENV.mkdir(parents=True, exist_ok=True)
    log = open(setup_app.DEFAULT_VENV / "creation.log", "w")  # noqa: SIM115 (inside the git-ignored venv)
    cmd = [sys.executable, "-c", _CREATE_VENV, str(_REPO / "tools" / "monailabel")]
    _background.append(subprocess.Popen(cmd, cwd=_REPO, stdout=log, stderr=subprocess.STDOUT))


def pytest_sessionfinish(session, exitstatus):
    """A creation still running when the session ends (tests deselected, -x) is stopped; it resumes next time."""
    for proc in _background:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
