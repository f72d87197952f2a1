"""Intervals and verdicts of the Frepa study: a hierarchical bootstrap with the pretraining seed as the unit.

A method's score is a table ``values`` ``(seeds, images)``: one row per pretraining seed, one column per test
image, each image belonging to a test subject. Its statistic is the mean over subjects of the subject's mean over
its images and the method's seeds, so every subject weighs the same however many images it has. The bootstrap
(Saravanan et al., "Application of the hierarchical bootstrap to multi-level data in neuroscience", 2020)
resamples every level with replacement, independently in each replicate: the seeds of each method, the test
subjects, and the images within each drawn subject. Two methods share the subject and image draws (they are
scored on the same images) and draw their seeds independently (their pretraining runs share nothing), so the
interval of a difference holds both sources of variation.

:func:`verdict` applies the study's decision rule to an interval: the claim "A is better than B by at least
``delta``", or "A is not worse than B by more than ``delta``".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["BETTER", "NOT_WORSE", "hierarchical_bootstrap", "statistic", "verdict"]

BETTER = "better"
"""A claim that the first method scores higher than the second by at least the smallest effect of interest."""
NOT_WORSE = "not worse"
"""A claim that the first method scores no lower than the second by more than the smallest effect of interest."""


def _subject_index(subjects: Sequence[str]) -> list[np.ndarray]:
    names = sorted(set(subjects))
    return [np.flatnonzero(np.asarray(subjects) == name) for name in names]


def statistic(values: np.ndarray, subjects: Sequence[str]) -> float:
    """Mean over subjects of each subject's mean over its images and all seeds of ``values`` ``(seeds, images)``."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.mean([values[:, index].mean() for index in _subject_index(subjects)]))


def _image_weights(subjects: Sequence[str], replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``(replicates, images)`` weights of the subject and within-subject image draws; each row sums to 1."""
    groups = _subject_index(subjects)
    drawn = rng.multinomial(len(groups), np.full(len(groups), 1.0 / len(groups)), size=replicates)
    weights = np.zeros((replicates, len(subjects)))
    for j, index in enumerate(groups):
        k = len(index)
        counts = rng.multinomial(drawn[:, j] * k, np.full(k, 1.0 / k))  # k images per drawn copy of subject j
        weights[:, index] = counts / (k * len(groups))
    return weights


def hierarchical_bootstrap(
    values: Mapping[str, np.ndarray],
    subjects: Sequence[str],
    pairs: Sequence[tuple[str, str]] = (),
    replicates: int = 4000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Point estimates and percentile intervals of each method's :func:`statistic` and of differences.

    Args:
        values: method -> ``(seeds, images)`` scores on the same test images (NaN is not allowed).
        subjects: the subject of each test image.
        pairs: ``(a, b)`` pairs whose difference ``a - b`` is wanted.
        replicates: bootstrap replicates.
        confidence: coverage of the percentile interval.
        seed: seed of the bootstrap's random generator (the result is deterministic).

    Returns:
        ``{"methods": {m: {"estimate", "low", "high", "seeds"}}, "differences": {(a, b): {"estimate", "low",
        "high"}}}``.
    """
    rng = np.random.default_rng(seed)
    tables = {m: np.asarray(v, dtype=np.float64) for m, v in values.items()}
    for m, table in tables.items():
        if table.ndim != 2 or table.shape[1] != len(subjects):
            raise ValueError(f"scores of '{m}' must be (seeds, {len(subjects)} images), got {table.shape}.")
        if not np.isfinite(table).all():
            raise ValueError(f"scores of '{m}' hold NaN or Inf values.")
    weights = _image_weights(subjects, replicates, rng)
    draws = {}
    for m, table in tables.items():
        seeds = rng.multinomial(len(table), np.full(len(table), 1.0 / len(table)), size=replicates) / len(table)
        draws[m] = np.einsum("rs,si,ri->r", seeds, table, weights)
    tail = 100 * (1 - confidence) / 2

    def summary(estimate: float, replicated: np.ndarray) -> dict:
        low, high = np.percentile(replicated, [tail, 100 - tail])
        return {"estimate": estimate, "low": float(low), "high": float(high)}

    out = {"methods": {}, "differences": {}}
    for m, table in tables.items():
        out["methods"][m] = {**summary(statistic(table, subjects), draws[m]), "seeds": len(table)}
    for a, b in pairs:
        estimate = statistic(tables[a], subjects) - statistic(tables[b], subjects)
        out["differences"][(a, b)] = summary(estimate, draws[a] - draws[b])
    return out


def verdict(low: float, high: float, delta: float, claim: str = BETTER) -> str:
    """The decision rule of the study, applied to the interval ``[low, high]`` of a difference ``a - b``.

    - ``BETTER`` (``a`` beats ``b`` by at least ``delta``): ``"refuted"`` when the whole interval lies below
      ``delta`` (an advantage that large is excluded, whether or not a smaller one exists), else ``"confirmed"``
      when it lies above 0, else ``"inconclusive"``.
    - ``NOT_WORSE`` (``a`` is at most ``delta`` below ``b``): ``"refuted"`` when the whole interval lies below
      ``-delta``, ``"confirmed"`` when it lies above ``-delta``, else ``"inconclusive"``.
    """
    if claim == BETTER:
        if high < delta:
            return "refuted"
        return "confirmed" if low > 0 else "inconclusive"
    if claim == NOT_WORSE:
        if high < -delta:
            return "refuted"
        return "confirmed" if low > -delta else "inconclusive"
    raise ValueError(f"claim must be {BETTER!r} or {NOT_WORSE!r}, got {claim!r}.")
