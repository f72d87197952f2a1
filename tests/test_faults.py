"""The fault table: every bad input and fault a new user met, one row each (see ``tests/fault_table.py``).

Each row builds real files (images written from the sample data, real checkpoints, cut short or replaced by other
bytes), runs a bundle (in this process through MONAI's ``ConfigWorkflow``, or as ``python -m monai.bundle run``,
killed with real signals), and returns what the user saw. In-process rows return the line the run guard prints
last (:func:`frepa_monai.guard.cause_line`); process rows return the process's output, whose last line it is.
The zoo's rows (a killed fetch, limits on zip members) come from ``tests/fault_cases_zoo.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import bundle_copy, cli_overrides, encoder_checkpoint, run, small_run
from fault_cases_zoo import ZOO_FAULTS
from fault_table import Outcome, last_line, snapshot
from PIL import Image

import frepa_monai.data as data
from frepa_monai.guard import cause_line, lock_path
from frepa_monai.handlers import epoch_checkpoints
from frepa_monai.networks import checkpoint_problem

PRETRAIN_2D = "frepa_pretrain_2d"
TINY_2D = {"cpu_settings#image_size": [32, 32], "cpu_settings#batch_size": 4}
FEW = {"train_datalist": "$@datalist['training'][:8]", "val_datalist": "$@datalist['validation'][:2]"}


# -- scenes ------------------------------------------------------------------------------------------------------------
def sample_images(spatial_dims: int, n: int) -> list[str]:
    """The first ``n`` training images of the sample pretraining datalist."""
    return [item["image"] for item in data.pretrain_datalist(spatial_dims=spatial_dims)["training"][:n]]


def items(*paths) -> list[dict]:
    return [{"image": str(p), "window": "none"} for p in paths]


def as_list(value: list[dict]) -> str:
    """A datalist as a config expression (what ``--train_datalist`` takes on the command line)."""
    return "$" + json.dumps(value)


def run_error(root: Path, configs: list[str], kind: str = "train", **override) -> str:
    """Run a bundle in this process; the line the run guard would print last on its failure."""
    try:
        run(root, configs, kind, **override)
    except Exception as e:
        return cause_line(e)
    pytest.fail(f"{root.name} {configs} ran without error")


def cli(root: Path, config: str, *args: str, timeout: int = 600, wait: bool = True, **env):
    """``python -m monai.bundle run`` of ``root/configs/<config>`` on the CPU preset, MLflow off unless given."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / config)]
    cmd += ["--bundle_root", str(root), "--preset", "cpu", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    if not wait:
        return subprocess.Popen(
            cmd, cwd=root.parent, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    done = subprocess.run(cmd, cwd=root.parent, env=environment, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def wait_for(condition, timeout: float = 300, what: str = "") -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def mlflow_statuses(root: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(root.name)
    return {r.info.run_name: r.info.status for r in client.search_runs([experiment.experiment_id])}


def png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def truncated(source: Path, path: Path) -> Path:
    data_ = source.read_bytes()
    path.write_bytes(data_[: len(data_) // 2])
    return path


# -- 4. bad inputs, caught before any epoch ----------------------------------------------------------------------------
def bad_training_image(tmp_path: Path, make, spatial_dims: int = 2, split: str = "train_datalist") -> Outcome:
    name = PRETRAIN_2D if spatial_dims == 2 else "frepa_pretrain_3d"
    root = bundle_copy(tmp_path, name)
    bad, reason = make(tmp_path)
    good = items(*sample_images(spatial_dims, 2))
    before = snapshot([root / "configs"])
    text = run_error(root, ["train.json"], **small_run(**{split: as_list(good + items(bad))}))
    assert not (root / "models").exists() or not list((root / "models").glob("*.pt")), "an epoch ran"
    return Outcome(text, [str(bad), reason], None, before=before)


def constant_image(tmp_path):
    return bad_training_image(tmp_path, lambda t: (png(t / "flat.png", np.full((64, 64), 7, np.uint8)), "constant"))


def strip_image(tmp_path):
    strip = (np.random.default_rng(0).random((16, 2000)) * 255).astype(np.uint8)
    return bad_training_image(tmp_path, lambda t: (png(t / "strip.png", strip), "smallest side"))


def nan_image(tmp_path):
    values = np.asarray(nib.load(sample_images(2, 1)[0]).dataobj, dtype=np.float32)
    values[3, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    return bad_training_image(tmp_path, lambda t: (path, "NaN or Inf"))


def truncated_nifti(tmp_path):
    source = Path(next(p for p in sample_images(2, 8) if p.endswith(".nii.gz")))
    return bad_training_image(tmp_path, lambda t: (truncated(source, t / "cut.nii.gz"), "truncated"))


def unsupported_format(tmp_path):
    def make(t):
        (t / "notes.txt").write_text("not an image")
        return t / "notes.txt", ".png"

    return bad_training_image(tmp_path, make)


def png_in_3d_bundle(tmp_path):
    return bad_training_image(
        tmp_path, lambda t: (png(t / "photo.png", np.eye(64, dtype=np.uint8) * 200), ".nii.gz"), 3
    )


def nifti_4d_in_validation(tmp_path):
    volume = np.asarray(nib.load(sample_images(3, 1)[0]).dataobj, dtype=np.float32)[:32, :32, :32]
    path = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([volume] * 5, -1), np.eye(4)), path)
    return bad_training_image(tmp_path, lambda t: (path, "5 channels"), 3, split="val_datalist")


def single_slice_series_in_3d(tmp_path):
    import itk

    series = tmp_path / "series"
    series.mkdir()
    ct = np.asarray(nib.load(sample_images(2, 1)[0]).dataobj).astype(np.int16)
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(ct.T)), str(series / "slice.dcm"))
    return bad_training_image(tmp_path, lambda t: (series, "smallest side"), 3)


def ct_dicom_in_2d_bundle(tmp_path):
    """Handled: a CT slice saved as DICOM (loaded one voxel deep) trains in the 2D bundle as the 2D image it is."""
    import itk

    root = bundle_copy(tmp_path, PRETRAIN_2D)
    ct = np.asarray(nib.load(sample_images(2, 1)[0]).dataobj).astype(np.int16)
    dicom = tmp_path / "ct_slice.dcm"
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(ct.T)), str(dicom))
    assert data.check_image(str(dicom), 2, resize_to=32) is None
    listed = items(dicom, *sample_images(2, 2))
    run(root, ["train.json"], **small_run(**TINY_2D, train_datalist=as_list(listed), **{"cpu_settings#max_epochs": 1}))
    assert (root / "models" / "checkpoint_epoch=1.pt").is_file()
    return Outcome(f"trained one epoch with {dicom}", [str(dicom)], 0, expect_rc=0)


def missing_file_in_classification(tmp_path):
    """A real process: the error is the last line and the exit status 1 (it aborted with 134 before)."""
    root = bundle_copy(tmp_path, "frepa_classification_2d")
    missing = tmp_path / "gone.png"
    listed = [{"image": str(missing), "label": 1, "window": "none"}]
    args = cli_overrides({"encoder": "random", "train_datalist": as_list(listed)})
    rc, text = cli(root, "train.json", *args)
    assert rc == 1, f"exit status {rc}"
    return Outcome(text, [str(missing), "does not exist"], rc, expect_rc=1)


# -- 5. checkpoints that are not checkpoints ---------------------------------------------------------------------------
class Payload:
    """Unpickling it would run a command: what a malicious "checkpoint" holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_encoder_checkpoint(tmp_path: Path, make) -> Outcome:
    root = bundle_copy(tmp_path, "frepa_classification_2d")
    path, reason = make(tmp_path)
    before = snapshot([path])
    text = run_error(root, ["train.json"], **small_run(path, **TINY_2D))
    assert "weights_only" not in text
    return Outcome(text, [str(path), reason], None, before=before)


def good_encoder(tmp_path: Path) -> Path:
    return encoder_checkpoint(tmp_path / "good.pt", "vit_tiny", 2, 4, [32, 32])


def truncated_checkpoint(tmp_path):
    return bad_encoder_checkpoint(tmp_path, lambda t: (truncated(good_encoder(t), t / "cut.pt"), "truncated"))


def random_bytes_checkpoint(tmp_path):
    def make(t):
        (t / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
        return t / "noise.pt", "not a PyTorch checkpoint"

    return bad_encoder_checkpoint(tmp_path, make)


def text_checkpoint(tmp_path):
    def make(t):
        (t / "notes.pt").write_text("this is a text file\n")
        return t / "notes.pt", "not a PyTorch checkpoint"

    return bad_encoder_checkpoint(tmp_path, make)


def pickle_payload_checkpoint(tmp_path):
    marker = tmp_path / "payload_ran"

    def make(t):
        torch.save({"state_dict": Payload(marker)}, t / "payload.pt", _use_new_zipfile_serialization=False)
        return t / "payload.pt", "Python objects"

    outcome = bad_encoder_checkpoint(tmp_path, make)
    assert not marker.exists(), "the payload ran"
    return outcome


def truncated_checkpoint_in_inference(tmp_path):
    """A real process: inference with a cut checkpoint ends on the line naming it; the last results stay."""
    root = bundle_copy(tmp_path, PRETRAIN_2D)
    run(root, ["train.json"], **small_run(**TINY_2D, **FEW, **{"cpu_settings#max_epochs": 1}))
    run(root, ["inference.json"], "infer", preset="cpu", image_size=[32, 32])
    model = root / "models" / "model.pt"
    cut = truncated(model, tmp_path / "cut_model.pt")
    before = snapshot([root / "eval" / "inference", model])
    rc, text = cli(root, "inference.json", "--ckpt_path", str(cut), "--image_size", "[32, 32]")
    return Outcome(text, [str(cut), "truncated"], rc, before=before)


# -- 6. resume ---------------------------------------------------------------------------------------------------------
class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record) -> None:
        self.lines.append(record.getMessage())


def resume_past_a_truncated_checkpoint(tmp_path):
    """The newest checkpoint cut short: the run resumes from the older intact one, says which file it passed
    over, and ends with at most ``n_saved`` (1) epoch checkpoints."""
    root = bundle_copy(tmp_path, PRETRAIN_2D)
    small = small_run(**TINY_2D, train_datalist="$@datalist['training'][:8]")
    run(root, ["train.json"], **{**small, "cpu_settings#max_epochs": 1})
    models = root / "models"
    cut = truncated(models / "checkpoint_epoch=1.pt", models / "checkpoint_epoch=2.pt")
    intact = snapshot([models / "checkpoint_epoch=1.pt"])
    captured = Captured()
    logging.getLogger().addHandler(captured)
    try:
        run(root, ["train.json"], **{**small, "cpu_settings#max_epochs": 3})
    finally:
        logging.getLogger().removeHandler(captured)
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=3.pt"]
    warning = next(line for line in captured.lines if "resuming from an older one" in line)
    assert snapshot(intact) != intact  # the intact epoch-1 checkpoint was pruned after epoch 3 was saved
    return Outcome(warning, [str(cut), "truncated"], 0, expect_rc=0)


def resume_with_only_a_truncated_checkpoint(tmp_path):
    root = bundle_copy(tmp_path, PRETRAIN_2D)
    small = small_run(**TINY_2D, train_datalist="$@datalist['training'][:8]")
    run(root, ["train.json"], **{**small, "cpu_settings#max_epochs": 1})
    models = root / "models"
    cut = models / "checkpoint_epoch=1.pt"
    cut.write_bytes(cut.read_bytes()[:1000])
    before = snapshot([models])
    text = run_error(root, ["train.json"], **{**small, "cpu_settings#max_epochs": 2})
    return Outcome(text, [str(cut), "truncated", "remove"], None, before=before)


# -- 2. concurrent runs, signals, MLflow -------------------------------------------------------------------------------
LONG_RUN = cli_overrides({"cpu_settings#max_epochs": 50, "train_datalist": "$@datalist['training'][:8]", **TINY_2D})


def second_run_in_the_same_folder(tmp_path):
    root = bundle_copy(tmp_path, PRETRAIN_2D)
    first = cli(root, "train.json", *LONG_RUN, wait=False)
    try:
        wait_for(lambda: lock_path(root / "models").exists(), what="the first run's lock")
        rc, text = cli(root, "train.json", *LONG_RUN)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    return Outcome(text, [str(root / "models"), f"in use by process {first.pid}"], rc)


def sigterm_ends_the_mlflow_run_killed(tmp_path):
    root = bundle_copy(tmp_path, PRETRAIN_2D)
    proc = cli(root, "train.json", "--tracking", "mlflow", *LONG_RUN, wait=False)
    wait_for(lambda: epoch_checkpoints(root / "models"), what="an epoch checkpoint")
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    newest = epoch_checkpoints(root / "models")
    assert newest and checkpoint_problem(newest[0], deep=True) is None
    assert set(mlflow_statuses(root).values()) == {"KILLED"}, text[-3000:]
    assert not lock_path(root / "models").exists()
    return Outcome(text, ["SIGTERM"], proc.returncode)


def sigkill_then_rerun_takes_the_lock_over(tmp_path):
    root = bundle_copy(tmp_path, PRETRAIN_2D)
    proc = cli(root, "train.json", "--tracking", "mlflow", *LONG_RUN, wait=False)
    wait_for(lambda: epoch_checkpoints(root / "models"), what="an epoch checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed = set(mlflow_statuses(root))
    rc, text = cli(root, "train.json", "--tracking", "mlflow", *LONG_RUN)
    statuses = mlflow_statuses(root)
    assert {statuses[name] for name in killed} == {"KILLED"} and "FINISHED" in statuses.values()
    taken = f"taking over the stale lock {lock_path(root / 'models')} of process {proc.pid}"
    return Outcome(text, [], rc, expect_rc=0, in_text=[taken, "Engine run finished"])


def nan_loss_ends_the_mlflow_run_failed(tmp_path):
    root = bundle_copy(tmp_path, PRETRAIN_2D)
    diverging = {"cpu_settings#max_epochs": 2, "cpu_settings#learning_rate": 1e30, **TINY_2D}
    rc, text = cli(
        root,
        "train.json",
        "--tracking",
        "mlflow",
        *cli_overrides({**diverging, "train_datalist": "$@datalist['training'][:8]"}),
    )
    assert set(mlflow_statuses(root).values()) == {"FAILED"}
    return Outcome(text, ["loss terms", "training stopped"], rc)


# -- 3. inference over a folder ----------------------------------------------------------------------------------------
def trained(tmp_path: Path, name: str = PRETRAIN_2D) -> Path:
    root = bundle_copy(tmp_path, name)
    run(root, ["train.json"], **small_run(**TINY_2D, **FEW, **{"cpu_settings#max_epochs": 1}))
    return root


def inference_skips_bad_files(tmp_path):
    """A real process: the good files are processed, each bad one is named with its reason, the exit status is
    non-zero, and the previous run's results are replaced as a whole."""
    root = trained(tmp_path)
    inputs = tmp_path / "inputs"
    (inputs / "subfolder").mkdir(parents=True)
    (inputs / "README.txt").write_text("notes")
    for k, source in enumerate(p for p in sample_images(2, 8) if p.endswith(".nii.gz")):
        shutil.copy(source, inputs / f"good{k}.nii.gz")
    png(inputs / "flat.png", np.zeros((64, 64), np.uint8))
    truncated(inputs / "good0.nii.gz", inputs / "cut.nii.gz")
    old = root / "eval" / "inference" / "old_result.png"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"old")
    before = snapshot([root / "models"])
    rc, text = cli(root, "inference.json", "--input_dir", str(inputs), "--image_size", "[32, 32]")
    out = root / "eval" / "inference"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["processed"]) == len(list(inputs.glob("good*.nii.gz"))) and len(summary["failed"]) == 2
    assert not old.exists() and len(list(out.glob("good*_recon.png"))) == len(summary["processed"])
    names = [str(inputs / "flat.png"), "constant", str(inputs / "cut.nii.gz"), "truncated"]
    return Outcome(text, names, rc, before=before, in_text=[f"processed {len(summary['processed'])} of"])


def failed_inference_keeps_the_last_results(tmp_path):
    """Classification inference that fails keeps the last ``predictions.csv``: no half-written or stale file."""
    checkpoint = good_encoder(tmp_path)
    root = bundle_copy(tmp_path, "frepa_classification_2d")
    run(root, ["train.json"], **small_run(checkpoint, **TINY_2D, **FEW, **{"cpu_settings#max_epochs": 1}))
    infer = {"preset": "cpu", "cpu_settings#image_size": [32, 32]}
    run(root, ["inference.json"], "infer", **infer)
    before = snapshot([root / "eval" / "inference"])
    cut = truncated(root / "models" / "model.pt", tmp_path / "cut_model.pt")
    text = run_error(root, ["inference.json"], "infer", ckpt_path=str(cut), **infer)
    return Outcome(text, [str(cut), "truncated"], None, before=before)


FAULTS = [
    constant_image,
    strip_image,
    nan_image,
    truncated_nifti,
    unsupported_format,
    png_in_3d_bundle,
    nifti_4d_in_validation,
    single_slice_series_in_3d,
    ct_dicom_in_2d_bundle,
    missing_file_in_classification,
    truncated_checkpoint,
    random_bytes_checkpoint,
    text_checkpoint,
    pickle_payload_checkpoint,
    truncated_checkpoint_in_inference,
    resume_past_a_truncated_checkpoint,
    resume_with_only_a_truncated_checkpoint,
    second_run_in_the_same_folder,
    sigterm_ends_the_mlflow_run_killed,
    sigkill_then_rerun_takes_the_lock_over,
    nan_loss_ends_the_mlflow_run_failed,
    inference_skips_bad_files,
    failed_inference_keeps_the_last_results,
    *ZOO_FAULTS,
]


@pytest.mark.slow
@pytest.mark.parametrize("case", FAULTS, ids=[case.__name__ for case in FAULTS])
def test_fault_table(case, tmp_path):
    """The message's last line names the file and the reason; nothing that existed before changed."""
    outcome = case(tmp_path)
    line = last_line(outcome.text)
    if outcome.expect_rc == "nonzero":
        assert outcome.returncode != 0, outcome.text[-3000:]
    else:
        assert outcome.returncode == outcome.expect_rc, outcome.text[-3000:]
    missing = [name for name in outcome.names if name not in line]
    assert not missing, f"the last line does not name {missing}:\n{line}\n--- output:\n{outcome.text[-3000:]}"
    for expected in outcome.in_text:
        assert expected in outcome.text, f"{expected!r} not in the output:\n{outcome.text[-3000:]}"
    assert snapshot(outcome.before) == outcome.before, "a file that existed before the fault changed or went"
