"""The evaluation harness of tools/ (issue 8): the Fig. 7 probe, the Fig. 1a high-pass evaluation, the ablation
table and the results writer, at a tiny budget on the real sample data."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from bundle_helpers import tool_module

from frepa_monai.metrics import frequency_fidelity

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tools():
    """The harness modules of ``tools/`` (they import each other by name, so ``tools/`` goes on the path)."""
    return argparse.Namespace(
        eval=tool_module("frepa_eval"),
        frequency=tool_module("evaluate_frequency"),
        highpass=tool_module("evaluate_highpass"),
        ablations=tool_module("run_ablations"),
        reproduce=tool_module("reproduce"),
        folds=tool_module("run_folds"),
    )


@pytest.fixture(scope="module")
def random_encoder(tools, tmp_path_factory):
    """The harness's ``random`` variant: an untrained vit_tiny checkpoint of the pretraining architecture."""
    work = tmp_path_factory.mktemp("harness")
    return work, tools.eval.encoder_path(work, "random", epochs=3)


def test_random_variant_is_the_pretraining_architecture(tools, random_encoder):
    from frepa_monai.networks import build_encoder_from_checkpoint, read_encoder_checkpoint

    work, path = random_encoder
    _, config = read_encoder_checkpoint(path)
    assert {k: config[k] for k in ("name", "spatial_dims", "in_channels")} == {
        "name": "vit_tiny",
        "spatial_dims": 2,
        "in_channels": 4,
    }
    assert list(config["img_size"]) == [128, 128]
    encoder = build_encoder_from_checkpoint(path)
    assert encoder(torch.zeros(1, 4, 128, 128)).shape == (1, encoder.out_channels, 16, 16)
    # cached: asking again (any pretraining budget: random is never trained) returns the same file untouched
    before = path.stat().st_mtime_ns
    assert tools.eval.encoder_path(work, "random", epochs=9) == path and path.stat().st_mtime_ns == before


def test_a_cached_encoder_of_another_budget_is_refused(tools, random_encoder, tmp_path):
    _, random_path = random_encoder
    root = tmp_path / "pretrain" / "frepa"
    (root / "models").mkdir(parents=True)
    shutil.copyfile(random_path, root / "models" / "encoder.pt")
    settings = tools.eval.pretrain_settings("frepa", 25)
    (root / "settings.json").write_text(json.dumps({"overrides": settings, "seconds": 1.0}))
    assert tools.eval.encoder_path(tmp_path, "frepa", 25) == root / "models" / "encoder.pt"
    with pytest.raises(SystemExit, match=r"pretrain/frepa/models/encoder.pt was pretrained with .*max_epochs.*25"):
        tools.eval.encoder_path(tmp_path, "frepa", 3)


def test_variants_switch_exactly_one_thing(tools):
    v = tools.eval.VARIANTS
    for name in tools.eval.ABLATIONS:
        key = name.removeprefix("wo_")
        assert v[name] == {key: False}
    assert v["mae"]["strategy_name"] == "mae" and v["mfm"]["strategy_name"] == "mfm"
    assert v["mae"]["use_hessian"] is True and v["mfm"]["use_hessian"] is True  # one encoder input for all
    budgets = {k: tools.eval.pretrain_settings(k, 25) for k in v}
    assert {b["cpu_settings#max_epochs"] for b in budgets.values()} == {25}
    assert {b["seed"] for b in budgets.values()} == {0}


@pytest.mark.slow
def test_probe_trains_a_fresh_decoder_and_reports_the_fidelity_of_its_reconstructions(tools, random_encoder):
    _, path = random_encoder
    untrained = tools.eval.probe_encoder(path, seed=0, epochs=0)
    trained = tools.eval.probe_encoder(path, seed=0, epochs=6)
    again = tools.eval.probe_encoder(path, seed=0, epochs=6)
    other = tools.eval.probe_encoder(path, seed=1, epochs=6)
    images = tools.eval.probe_images()["test"][0]
    assert trained["recon"].shape == images.shape == (22, 3, 128, 128)
    flat_mse = float((images - images.mean(dim=(2, 3), keepdim=True)).square().mean())
    # the decoder learns from the frozen features, beyond each image's mean colour
    assert trained["mse"] < 0.5 * flat_mse < untrained["mse"]
    assert trained["rho_low"] > untrained["rho_low"]
    rho = frequency_fidelity(trained["recon"], images)
    for band in ("rho_low", "rho_mid", "rho_high"):
        assert trained[band] == pytest.approx(float(rho[band].mean()), abs=1e-6)
        assert len(trained["per_image"][band]) == 22 and trained[band] <= 1.0
    torch.testing.assert_close(again["recon"], trained["recon"])  # seeded
    assert not torch.equal(other["recon"], trained["recon"])


@pytest.mark.slow
def test_highpass_accuracy_on_raw_slices_equals_the_bundles_own_evaluation(tools, random_encoder, tmp_path):
    _, encoder = random_encoder
    root = tmp_path / "highpass" / "random_fold0"
    override = tools.highpass.train_classifier(root, encoder, fold=0, epochs=2)
    tools.folds.run_workflow(tools.highpass.BUNDLE, ["train.json", "evaluate.json"], "eval", override)
    bundle_acc = tools.folds.read_metrics(root / "eval" / "metrics.csv")["val_acc"]
    out = tools.highpass.highpass_predictions(override, [0.0, 0.16])
    raw = [p == t for p, t in zip(out["pred"][0.0], out["labels"])]
    assert len(raw) == 6  # fold 0's test subject
    assert sum(raw) / len(raw) == pytest.approx(bundle_acc)
    for c in (0.0, 0.16):  # the class is the argmax of the softmax whose tumour probability is reported
        assert out["pred"][c] == [int(p > 0.5) for p in out["prob"][c]]
    x, filtered = out["examples"][0.0], out["examples"][0.16]
    assert filtered.shape == x.shape and not torch.allclose(filtered, x)
    torch.testing.assert_close(filtered.mean(), x.mean(), atol=1e-5, rtol=0)  # the mean is kept
    # trained once: a second call with the same settings does not train again
    before = (root / "models" / "model.pt").stat().st_mtime_ns
    tools.highpass.train_classifier(root, encoder, fold=0, epochs=2)
    assert (root / "models" / "model.pt").stat().st_mtime_ns == before


def _synthetic_results():
    freq = {
        "runs": {
            "frepa": {"0": {"rho_low": 0.9, "rho_mid": 0.95, "rho_high": 0.97, "mse": 0.01},
                      "1": {"rho_low": 0.92, "rho_mid": 0.95, "rho_high": 0.98, "mse": 0.02}},
            "mae": {"0": {"rho_low": 0.9, "rho_mid": 0.94, "rho_high": 0.96, "mse": 0.01},
                    "1": {"rho_low": 0.9, "rho_mid": 0.94, "rho_high": 0.96, "mse": 0.01}},
        }
    }  # fmt: skip
    hp = {
        "cutoffs": [0.0, 0.1],
        "n_slices": 10,
        "majority": 0.6,
        "accuracy": {
            "frepa": {"0.0": {"value": 0.8, "fold_std": 0.1}, "0.1": {"value": 0.6, "fold_std": None}},
            "mae": {"0.0": {"value": 0.7, "fold_std": 0.1}, "0.1": {"value": 0.4, "fold_std": None}},
        },
        "auc": {
            "frepa": {"0.0": {"value": 0.9, "fold_std": 0.05}, "0.1": {"value": 0.7, "fold_std": 0.1}},
            "mae": {"0.0": {"value": 0.8, "fold_std": 0.05}, "0.1": {"value": 0.5, "fold_std": 0.1}},
        },
    }
    scores = {
        "frepa": {"rho_low": [0.9], "rho_mid": [0.95], "rho_high": [0.97, 0.99], "vessel_dsc": [0.40, 0.44]},
        "wo_fm": {"rho_low": [0.9], "rho_mid": [0.94], "rho_high": [0.95, 0.95], "vessel_dsc": [0.30, 0.30]},
        "wo_hm": {"rho_low": [0.9], "rho_mid": [0.94], "rho_high": [0.99, 0.99], "vessel_dsc": [0.43, 0.43]},
    }
    abl = {"scores": scores, "pretrain_seconds": {"frepa": 80.0, "wo_fm": 60.0}, "vessel_seeds": [0, 1]}
    return freq, hp, abl


def test_tables_hold_the_means_spreads_and_differences(tools):
    freq, hp, abl = _synthetic_results()
    table = tools.frequency.markdown(freq)
    assert "| Frepa | 0.9100 +- 0.0141 | 0.9500 +- 0.0000 | 0.9750 +- 0.0071 | 0.01500 +- 0.00707 |" in table
    freq = {**freq, "pixels": {"0": {"rho_low": 0.99, "rho_mid": 0.98, "rho_high": 0.985, "mse": 0.001}}}
    assert "| *reference: no encoder, the raw pixels of each 8 x 8 patch* | 0.9900 | 0.9800 | 0.9850 | 0.00100 |" in (
        tools.frequency.markdown(freq)
    )
    assert "| method | raw | d_c = 0.1 |" in tools.highpass.markdown(hp)
    assert "| MAE | 0.700 +- 0.100 | 0.400 |" in tools.highpass.markdown(hp)
    assert "| *reference: always the majority class* | 0.600 | 0.600 |" in tools.highpass.markdown(hp)
    assert "| Frepa | 0.900 +- 0.050 | 0.700 +- 0.100 |" in tools.highpass.markdown(hp, "auc")
    rows = {line.split(" | ")[0]: line for line in tools.ablations.markdown(abl).splitlines()}
    # rho_high 0.95 - 0.98 = -0.03, DSC 0.30 - 0.42 = -0.12
    assert rows["| w/o FM (image masking only)"].endswith("| -0.0300 | -0.1200 | 60 |")
    assert rows["| Frepa"].endswith("|  |  | 80 |")


def test_findings_say_whether_a_difference_exceeds_the_seed_spread(tools):
    compare = tools.reproduce.compare
    assert compare([0.9, 0.92], [0.8, 0.81]) == (pytest.approx(0.105), "higher")
    assert compare([0.9, 0.92], [0.91, 0.93])[1] == "within the seed spread"
    assert compare([0.5, 0.5], [0.7, 0.7])[1] == "lower"
    assert compare([0.5], [0.4])[1] == "higher (one seed)"
    freq, hp, abl = _synthetic_results()
    lines = tools.reproduce.ablation_findings(abl)
    assert lines[0].startswith("- `rho_high`: 1 of 2 ablations score below full Frepa (w/o FM (image masking only))")
    assert "largest drop is w/o FM (image masking only) (+0.0300)" in lines[0]
    assert "vessel DSC: 1 of 2 ablations" in lines[1]  # w/o HM: 0.43 > 0.42
    noisy = tools.reproduce.ablation_findings(abl, vessel_noise=0.05)[1]
    assert noisy.endswith("drops larger than that: w/o FM (image masking only).")  # 0.12 > 0.05 > -0.01
    claim = tools.reproduce.ablation_findings(abl, vessel_noise=0.05)[-1]
    assert claim.endswith("**Here**: 1 of 2 removals lower the vessel DSC by more than Frepa's seed spread (0.0500) "
                          "(w/o FM): disagrees; the others score the same or higher with one seed each.")  # fmt: skip
    text = "\n".join(tools.reproduce.frequency_findings(freq))
    assert "`rho_high`, Frepa minus: MAE +0.0150 (higher)" in text
    assert "mid band agrees, high band agrees, low band agrees (not lower than either)." in text
    freq["reference"] = {"rho_low": 0.7, "rho_mid": 0.9, "rho_high": 0.974}
    freq["pixels"] = {"0": {"rho_high": 0.99}, "1": {"rho_high": 0.99}}
    text = "\n".join(tools.reproduce.frequency_findings(freq))
    assert "A flat image (no reconstruction at all) scores `rho_high` 0.9740; the best method 0.9750 (+0.0010)." in text
    assert "No encoder lets the decoder bring back the high band" in text
    assert "reaches `rho_high` 0.9900: the probe can bring back high frequencies" in text


def test_results_page_links_every_figure_it_copies(tools, tmp_path):
    freq, hp, abl = _synthetic_results()
    work = tmp_path / "work"
    work.mkdir()
    for name in tools.reproduce.FIGURES:
        (work / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "docs" / "results.md"
    args = argparse.Namespace(pretrain_epochs=25, probe_epochs=30, vessel_epochs=60)
    methods = {
        "scores": {k: abl["scores"][k] for k in ("frepa", "wo_fm")},
        "pretrain_seconds": {},
        "vessel_seeds": [0, 1],
    }
    tools.reproduce.write_results(out, work, {"Fig. 7": 60.0}, args, freq, hp, abl, methods)
    text = out.read_text()
    for name in tools.reproduce.FIGURES:
        assert f"](results/{name})" in text and (out.parent / "results" / name).is_file()
    assert "25 epochs" in text and "Vessel DSC, Frepa minus: w/o FM (image masking only) +0.1200" in text
