"""The protocol of the fault table (``tests/test_faults.py``): each row is a bad input or a fault, tried the way a
user meets it (real files, real processes, real signals, a real HTTP server on 127.0.0.1).

A row is a function ``case(tmp_path) -> Outcome``. It builds its scene under ``tmp_path``, takes a
:func:`snapshot` of every file that must survive the fault unchanged (checkpoints, models, earlier outputs),
causes the fault, and returns what the user saw with the words that must be in it. The table's test asserts:

- the process failed (or, for a fault that is handled, ended as documented: ``expect_rc``);
- the last line of the message names each of ``names`` (the file and the reason);
- every snapshotted file is unchanged (same sha256), and none has gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Outcome", "snapshot", "last_line"]


def snapshot(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of each file in ``paths`` (folders: every file below them), by path."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "missing" for f in files}


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (what a user reads first at the end of a failed run)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class Outcome:
    """What a fault did.

    Args:
        text: what the user saw (stderr and stdout of the process, or the message of the exception).
        names: strings the last line must hold: the file or key, and the reason.
        returncode: the process's exit status (``None`` for an in-process call that raised).
        expect_rc: the exit status the row expects: ``"nonzero"`` (default), or a number.
        before: :func:`snapshot` taken before the fault; ``after`` is taken by the table's test.
        in_text: strings that must appear somewhere in ``text`` (e.g. a warning, a summary line).
    """

    text: str
    names: list[str]
    returncode: int | None = 1
    expect_rc: int | str = "nonzero"
    before: dict[str, str] = field(default_factory=dict)
    in_text: list[str] = field(default_factory=list)
