"""Named phases of a pretraining step, for ``torch.profiler`` and for the step benchmarks in ``tools/``.

The strategies and :class:`~frepa_monai.losses.FrepaLoss` wrap each part of a step (the Hessian channel, the
corruption, the forward pass, every loss term) in :func:`phase`. Outside a profiler and a :class:`PhaseTimer`
a phase costs one ``record_function`` (about a microsecond); under ``torch.profiler`` it shows as
``frepa::<name>``; inside ``with PhaseTimer() as timer`` its wall time is added to ``timer.seconds[name]``
(on CUDA the device is synchronised at the phase's ends, so the time is the phase's own).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

__all__ = ["phase", "PhaseTimer"]

_active_timers: list[PhaseTimer] = []


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def phase(name: str):
    """Mark the enclosed code as the step phase ``name`` (see the module docstring)."""
    with torch.profiler.record_function(f"frepa::{name}"):
        if not _active_timers:
            yield
            return
        _synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            elapsed = time.perf_counter() - start
            for timer in _active_timers:
                timer.seconds[name] += elapsed


class PhaseTimer:
    """Wall time per :func:`phase` name while the timer is entered; nested phases count in both names."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def __enter__(self) -> PhaseTimer:
        _active_timers.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _active_timers.remove(self)
