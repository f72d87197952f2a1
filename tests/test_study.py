"""The study (frepa_monai.study, run by tools/reproduce.py): its data split keeps subjects apart, and its GPU path
runs end to end (tiny)."""

from __future__ import annotations

import re

import pytest

from frepa_monai.study import protocol as study
from frepa_monai.study.reproduce import main as reproduce


def test_pretraining_and_test_subjects_are_apart_and_the_test_half_holds_many():
    split = study.study_split()
    pretrain = {i["subject"] for i in split["pretrain"]}
    test = {i["subject"] for i in split["test"]}
    assert not pretrain & test
    assert len(test) >= 10 and len(pretrain) >= 10
    for source in ("CHASE_DB1", "pyradiomics-3.0.1"):  # every source on both sides
        assert any(i["source"] == source for i in split["pretrain"]) and any(
            i["source"] == source for i in split["test"]
        )
    children = {i["subject"] for i in split["test"] if i["source"] == "CHASE_DB1"}
    assert len(children) == 7
    e2e = study.e2e_split()
    assert {i["subject"] for s in e2e.values() for i in s} == children  # the end-to-end run never sees pretraining
    assert [len({i["subject"] for i in e2e[k]}) for k in ("training", "validation", "test")] == [4, 1, 2]


def test_presets_share_one_step_budget_per_run():
    cpu = study.PRESETS["cpu"]
    assert study.steps_per_run(cpu) == cpu.epochs * -(-len(study.study_split()["pretrain"]) // cpu.batch_size)
    settings = study.pretrain_settings(cpu, "frepa_literal", 3)
    assert settings["literal_sizes"] is True and settings["seed"] == 3
    assert settings["cpu_settings#max_epochs"] == cpu.epochs
    assert study.pretrain_settings(cpu, "mae", 0)["use_hessian"] is True


@pytest.mark.slow
def test_gpu_preset_runs_end_to_end_on_cpu_at_a_tiny_size(tmp_path):
    """``reproduce.py --preset gpu`` (ViT-S, AMP where CUDA is) shrunk to 32 px, one seed and one epoch: every part
    runs, the report states the decision rule before the verdicts, and a second invocation only reads the cache."""
    tiny = dict(image_size=32, epochs=1, seeds=1, ablation_seeds=0, vessel_size=64, neighbourhood=1, e2e_epochs=1)
    args = ["--preset", "gpu", "--work_dir", str(tmp_path / "work"), "--output", str(tmp_path / "results.md")]
    for key, value in {**tiny, "e2e_seeds": 1}.items():
        args += ["--set", f"{key}={value}"]
    output = reproduce(args)
    text = output.read_text()
    assert text.index("## Decision rule") < text.index("## Verdicts") < text.index("## Band R^2")
    table = text[text.index("## Verdicts") : text.index("## Probe self-checks")]
    verdicts = re.findall(r"\*\*(confirmed|refuted|inconclusive)\*\*", table)
    assert len(verdicts) == 2 * 5 + 2 + 3 + 3  # Fig. 7 (3 bands), vessels, Fig. 1a; random; sizes; end to end
    assert "Band probe on the raw pixels" in text and "vit_s" in text
    figures = {p.name for p in (tmp_path / "results").iterdir()}
    assert {"band_r2.png", "readouts.png", "vessel_highpass.png", "ablations.png", "corruption_sizes.png"} <= figures
    encoder = tmp_path / "work" / "pretrain" / "frepa_seed0" / "models" / "encoder.pt"
    before = encoder.stat().st_mtime_ns
    reproduce(args)
    assert encoder.stat().st_mtime_ns == before
