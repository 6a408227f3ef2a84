"""Uncertainty of evaluation results: cluster bootstrap intervals, paired differences, McNemar's test.

The unit of resampling is the *task* (a cluster), never the step: steps of one task share an
instruction, tools and history, so their outcomes are correlated, and resampling steps as if they
were independent gives intervals that are too narrow. Each function takes one entry per task.

A statistic ``stat`` reduces axis 0 (the tasks). It is called once on the data, shape
``(n_tasks, *item)``, and once on all resamples stacked, shape ``(n_tasks, n_boot, *item)``, so
write it with ``axis=0`` and ``...`` indexing, like :func:`mean` and :func:`ratio_of_sums`. A
metric defined over steps (plan accuracy = correct steps / steps) is given as per-task
``(numerator, denominator)`` pairs with :func:`ratio_of_sums`, which is the step-level metric on
every resample of tasks.

Intervals are percentile bootstrap intervals. A resample whose statistic is undefined (a ratio
whose resampled tasks have no denominator at all) is left out of the percentiles.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats as _scipy_stats

Stat = Callable[[np.ndarray], "np.ndarray | float"]

# Below this many discordant pairs McNemar's chi-square approximation is poor (the usual rule of
# thumb), so the exact binomial test is used instead.
EXACT_BELOW = 25


def mean(x: np.ndarray):
    """Mean over tasks (axis 0)."""
    return np.mean(x, axis=0)


def ratio_of_sums(x: np.ndarray):
    """Sum of numerators over sum of denominators, for per-task ``(numerator, denominator)`` pairs;
    NaN where the denominators sum to 0."""
    num, den = np.sum(x[..., 0], axis=0), np.sum(x[..., 1], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _as_array(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim == 0:
        raise ValueError("expected one value (or one tuple) per task")
    return x


def _finite_or_none(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_tasks, n_boot) task indices drawn with replacement; the layout ``stat`` expects."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n)).T


def _percentiles(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None, None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")


def bootstrap_ci(values_per_task: Sequence, stat: Stat = mean, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(point, lo, hi): ``stat`` on the data and its percentile bootstrap interval over tasks.

    ``values_per_task`` holds one value per task, or one tuple per task (e.g. ``(correct steps,
    steps)`` with ``stat=ratio_of_sums``). All three are None when there are no tasks; the point
    is None when ``stat`` is undefined on the data.
    """
    _check(n_boot, level)
    x = _as_array(values_per_task)
    if len(x) == 0:
        return None, None, None
    point = _finite_or_none(stat(x))
    if point is None:
        return None, None, None
    lo, hi = _percentiles(np.asarray(stat(x[_resample_indices(len(x), n_boot, seed)]), dtype=float), level)
    return point, lo, hi


def paired_bootstrap_diff(a_per_task: Sequence, b_per_task: Sequence, stat: Stat = mean, n_boot: int = 2000,
                          seed: int = 0, level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(diff, lo, hi) of ``stat(a) - stat(b)``, both systems scored on the same resampled tasks.

    Entry i of both sequences must be the same task; resampling the pairs together keeps what the
    systems share (a task that is hard for both), so the interval is that of the difference, not of
    two independent estimates.
    """
    _check(n_boot, level)
    a, b = _as_array(a_per_task), _as_array(b_per_task)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same shape (one entry per task): {a.shape} != {b.shape}")
    if len(a) == 0:
        return None, None, None
    diff = _finite_or_none(stat(a) - stat(b))
    if diff is None:
        return None, None, None
    idx = _resample_indices(len(a), n_boot, seed)
    lo, hi = _percentiles(np.asarray(stat(a[idx]) - stat(b[idx]), dtype=float), level)
    return diff, lo, hi


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """McNemar's test of two systems scored on the same items (entry i of both is one item).

    ``b10``: items a got right and b wrong; ``b01``: a wrong and b right. Only these discordant
    pairs carry information. With fewer than ``EXACT_BELOW`` (25) of them the exact two-sided
    binomial test of ``b10`` against Binomial(b01 + b10, 1/2) is used (``statistic`` = min(b01,
    b10)), since the chi-square approximation is poor for small counts; otherwise the chi-square
    test with continuity correction, ``(|b01 - b10| - 1)^2 / (b01 + b10)`` on 1 degree of freedom.
    With no discordant pair the p-value is 1.
    """
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("mcnemar needs two equally long 1-d sequences of booleans")
    b10, b01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = b01 + b10
    if n == 0:
        return {"n": len(a), "b01": 0, "b10": 0, "method": "exact binomial", "statistic": 0.0, "p_value": 1.0}
    if n < EXACT_BELOW:
        k = min(b01, b10)
        p = min(1.0, 2 * float(_scipy_stats.binom.cdf(k, n, 0.5)))
        return {"n": len(a), "b01": b01, "b10": b10, "method": "exact binomial", "statistic": float(k),
                "p_value": p}
    statistic = (abs(b01 - b10) - 1) ** 2 / n
    return {"n": len(a), "b01": b01, "b10": b10, "method": "chi-square, continuity corrected",
            "statistic": float(statistic), "p_value": float(_scipy_stats.chi2.sf(statistic, 1))}
