"""One MLflow path: MONAI's ``--tracking mlflow``. Each engine logs once into one run per invocation, with the executed
config (bundle metadata included) as an artifact; no bundle carries MLflow handlers of its own that could log twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_helpers import REPO, bundle_copy, run

TINY = {
    "preset": "cpu",
    "cpu_settings#max_epochs": 3,
    "cpu_settings#val_interval": 2,
    "cpu_settings#image_size": [32, 32],
    "cpu_settings#batch_size": 4,
    "train_datalist": "$@datalist['training'][:8]",
    "val_datalist": "$@datalist['validation'][:2]",
}


def _handlers(config):
    if isinstance(config, dict):
        if config.get("_target_", "").endswith("MLFlowHandler"):
            yield config
        for value in config.values():
            yield from _handlers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _handlers(value)


@pytest.mark.parametrize(
    "path", sorted((REPO / "bundles").glob("*/configs/*.json")), ids=lambda p: p.parent.parent.name
)
def test_no_bundle_config_logs_to_mlflow_by_itself(path):
    """MONAI's tracking adds the only MLFlowHandlers; a bundle's own would log every value twice."""
    assert list(_handlers(json.loads(path.read_text()))) == [], path


def _runs(root: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'eval' / 'mlruns.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


@pytest.mark.slow
def test_tracking_logs_each_value_once(tmp_path):
    """``--tracking mlflow``: one run, in the bundle's SQLite store; ``train_loss`` once per iteration, each loss
    term's epoch mean and each validation metric once per epoch that computes it; the executed config (with the
    bundle's metadata) is an artifact."""
    name = "frepa_pretrain_2d"
    root = bundle_copy(tmp_path, name)
    wf = run(root, ["train.json"], tracking="mlflow", **TINY)
    iterations = wf.parser.get_parsed_content("train#trainer").state.iteration
    assert iterations == 3 * 2  # 8 images, batch 4, 3 epochs
    client, runs = _runs(root, name)
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.info.status == "FINISHED" and run_.info.run_name.startswith("run_")
    history = {key: client.get_metric_history(run_.info.run_id, key) for key in run_.data.metrics}
    assert len(history["train_loss"]) == iterations
    assert [m.step for m in history["train_loss"]] == list(range(1, iterations + 1))
    terms = [k for k in history if k.startswith("train_") and k != "train_loss"]
    assert {"train_rmse", "train_grad", "train_hfl", "train_con"} == set(terms)
    for key in terms:
        assert [m.step for m in history[key]] == [1, 2, 3], key
    for key in ("val_rmse", "val_r2_low", "val_r2_mid", "val_r2_high"):
        assert [m.step for m in history[key]] == [2, 3], key  # val_interval 2, and the last epoch
    artifacts = [a.path for a in client.list_artifacts(run_.info.run_id)]
    configs = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    assert len(configs) == 1
    logged = json.loads(Path(client.download_artifacts(run_.info.run_id, configs[0], str(tmp_path))).read_text())
    assert logged["_meta_"]["version"] == json.loads((root / "configs" / "metadata.json").read_text())["version"]
    assert logged["experiment_name"] == name

    run(root, ["train.json"], tracking="mlflow", **{**TINY, "cpu_settings#max_epochs": 4})  # resumes: a new run
    assert len(_runs(root, name)[1]) == 2


@pytest.mark.slow
def test_no_tracking_writes_no_store(tmp_path):
    name = "frepa_pretrain_2d"
    root = bundle_copy(tmp_path, name)
    run(root, ["train.json"], **{**TINY, "cpu_settings#max_epochs": 1})
    assert not (root / "eval" / "mlruns.db").exists()
