"""The run guard: locks that name their process, stale locks taken over, and the cause found under MONAI's
wrappers (real processes, real files)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from frepa_monai.guard import RunGuard, RunInUseError, cause_line, lock_path, root_cause


def test_root_cause_is_the_first_error_under_monai_wrappers():
    try:
        try:
            try:
                raise ValueError("image /data/a.png is constant")
            except ValueError as e:
                raise RuntimeError("Failed to instantiate component 'monai.data.CacheDataset'") from e
        except RuntimeError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@train#trainer.run()") from e
    except RuntimeError as e:
        error = e
    assert isinstance(root_cause(error), ValueError)
    assert cause_line(error) == "ValueError: image /data/a.png is constant"
    # an error of its own is its own cause; a multi-line message gives its first line
    assert cause_line(KeyError("x")) == "KeyError: 'x'"
    assert cause_line(ValueError("first\nsecond")) == "ValueError: first (details above)"


def test_a_live_lock_refuses_and_names_its_process(tmp_path):
    folder = tmp_path / "models"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder.mkdir()
        lock_path(folder).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "command": "x"}))
        with pytest.raises(RunInUseError, match=f"{folder} is in use by process {holder.pid}"):
            RunGuard([str(folder)]).start()
        assert json.loads(lock_path(folder).read_text())["pid"] == holder.pid  # left as it was
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning_and_released_at_finish(tmp_path, caplog):
    folder = tmp_path / "eval"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder.mkdir()
    lock_path(folder).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with caplog.at_level(logging.WARNING):
        guard = RunGuard([str(folder)]).start()
    assert any(
        "taking over the stale lock" in r.getMessage() and dead.stdout.strip() in r.getMessage() for r in caplog.records
    )
    assert json.loads(lock_path(folder).read_text())["pid"] == os.getpid()
    guard.finish()
    assert not lock_path(folder).exists()


def test_a_half_written_lock_is_taken_over(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    lock_path(folder).write_text("")
    guard = RunGuard([str(folder)]).start()
    assert json.loads(lock_path(folder).read_text())["pid"] == os.getpid()
    guard.finish()
