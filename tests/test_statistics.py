"""Cluster bootstrap intervals, paired differences and McNemar's test (tuneforge.eval.statistics)."""

import itertools

import numpy as np
import pytest
from scipy import stats

from tuneforge.eval.statistics import (EXACT_BELOW, bootstrap_ci, mcnemar, mean, paired_bootstrap_diff,
                                       ratio_of_sums)

# --------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_matches_the_exact_bootstrap_distribution_by_enumeration():
    # With 4 tasks there are 4^4 equally likely resamples: the exact bootstrap distribution of the
    # mean, whose 2.5% / 97.5% quantiles the Monte Carlo interval must approach (atoms are 0.25 apart).
    values = [0.0, 1.0, 3.0, 10.0]
    exact = sorted(np.mean(c) for c in itertools.product(values, repeat=4))
    lo_exact, hi_exact = np.quantile(exact, [0.025, 0.975])
    point, lo, hi = bootstrap_ci(values, n_boot=40000, seed=1)
    assert point == pytest.approx(3.5)
    assert abs(lo - lo_exact) <= 0.25 and abs(hi - hi_exact) <= 0.25


def test_bootstrap_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(3).normal(size=60)
    _, lo, hi = bootstrap_ci(x, n_boot=20000, seed=0)
    ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                          random_state=np.random.default_rng(0)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)


def test_ratio_of_sums_is_the_step_level_metric_and_reduces_to_the_mean_with_one_step_per_task():
    pairs = [(2, 3), (0, 1), (4, 4), (1, 2)]  # (correct steps, steps) per task
    point, lo, hi = bootstrap_ci(pairs, ratio_of_sums)
    assert point == pytest.approx(7 / 10)  # correct steps / steps, not the mean of per-task rates
    assert lo <= point <= hi
    singles = [1, 0, 1, 1, 0, 1, 0]
    assert bootstrap_ci([(v, 1) for v in singles], ratio_of_sums, seed=5) == bootstrap_ci(singles, mean, seed=5)


def test_bootstrap_is_deterministic_and_level_widens_the_interval():
    x = np.random.default_rng(0).random(30)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    _, lo90, hi90 = bootstrap_ci(x, level=0.90)
    _, lo99, hi99 = bootstrap_ci(x, level=0.99)
    assert lo99 < lo90 and hi99 > hi90


def test_bootstrap_edge_cases():
    assert bootstrap_ci([]) == (None, None, None)
    assert bootstrap_ci([(0, 0), (0, 0)], ratio_of_sums) == (None, None, None)  # no scored step at all
    assert bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)  # one task: nothing to resample
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], level=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], n_boot=0)


def _clustered(rng, n_tasks=20, steps=10):
    """Steps correct with a per-task probability drawn uniformly: true step-level accuracy 0.5, and
    steps of one task strongly correlated (intra-class correlation 1/3)."""
    p = rng.random(n_tasks)
    return (rng.random((n_tasks, steps)) < p[:, None]).astype(float)


def test_clustering_by_task_matters_for_width_and_coverage():
    # Perfectly correlated steps: 20 tasks all right or all wrong. Resampling steps as if they were
    # 200 independent items gives an interval about sqrt(10) times too narrow.
    steps = np.repeat(np.array([1.0, 0.0] * 10)[:, None], 10, axis=1)
    _, lo, hi = bootstrap_ci([(row.sum(), len(row)) for row in steps], ratio_of_sums)
    _, nlo, nhi = bootstrap_ci(steps.ravel())
    assert hi - lo > 2 * (nhi - nlo)

    rng = np.random.default_rng(11)
    covered = {"tasks": 0, "steps": 0}
    sims = 200
    for i in range(sims):
        data = _clustered(rng)
        _, lo, hi = bootstrap_ci([(row.sum(), len(row)) for row in data], ratio_of_sums, n_boot=500, seed=i)
        covered["tasks"] += lo <= 0.5 <= hi
        _, lo, hi = bootstrap_ci(data.ravel(), n_boot=500, seed=i)
        covered["steps"] += lo <= 0.5 <= hi
    assert covered["tasks"] / sims >= 0.85  # near the nominal 95%
    assert covered["steps"] / sims <= 0.80  # the naive step bootstrap under-covers badly


# --------------------------------------------------------------------------- paired_bootstrap_diff


def test_paired_difference_uses_the_same_tasks_for_both_systems():
    rng = np.random.default_rng(2)
    a = rng.random(25)
    # b is a shifted by a constant: on every shared resample the difference is exactly that constant
    assert paired_bootstrap_diff(a, a - 0.1) == pytest.approx((0.1, 0.1, 0.1))
    assert paired_bootstrap_diff(a, a) == (0.0, 0.0, 0.0)
    # the paired interval is much narrower than two independent intervals would suggest
    b = a + rng.normal(0, 0.02, 25) - 0.05
    diff, lo, hi = paired_bootstrap_diff(a, b)
    _, alo, ahi = bootstrap_ci(a)
    assert diff == pytest.approx(np.mean(a) - np.mean(b)) and lo <= diff <= hi
    assert hi - lo < 0.3 * (ahi - alo)


def test_paired_difference_of_step_ratios():
    a = [(2, 3), (1, 1), (0, 2)]
    b = [(1, 3), (1, 1), (2, 2)]
    diff, lo, hi = paired_bootstrap_diff(a, b, ratio_of_sums, seed=4)
    assert diff == pytest.approx(3 / 6 - 4 / 6)
    # same indices as bootstrap_ci with the same seed: the difference of the two resampled statistics
    idx = np.random.default_rng(4).integers(0, 3, size=(2000, 3)).T
    expected = ratio_of_sums(np.asarray(a, float)[idx]) - ratio_of_sums(np.asarray(b, float)[idx])
    assert (lo, hi) == pytest.approx(tuple(np.quantile(expected, [0.025, 0.975])))
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_diff([1, 2], [1, 2, 3])


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_hand_worked_exact_cases():
    a = [True, True, True, False, False, True]
    b = [False, False, True, False, True, True]
    r = mcnemar(a, b)
    assert (r["b10"], r["b01"], r["n"]) == (2, 1, 6)
    assert r["method"] == "exact binomial"
    assert r["p_value"] == pytest.approx(1.0)  # 2 * P(X <= 1), X ~ Bin(3, 1/2) = 2 * 4/8, capped at 1
    r = mcnemar([True] * 6, [False] * 6)
    assert r["p_value"] == pytest.approx(2 / 64)  # 6 wins of 6: 2 * (1/2)^6
    assert mcnemar([True, False], [True, False]) == {"n": 2, "b01": 0, "b10": 0, "method": "exact binomial",
                                                     "statistic": 0.0, "p_value": 1.0}


def test_mcnemar_hand_worked_chi_square_case():
    a = [True] * 30 + [False] * 10 + [True] * 5
    b = [False] * 30 + [True] * 10 + [True] * 5
    r = mcnemar(a, b)
    assert (r["b10"], r["b01"]) == (30, 10) and r["method"].startswith("chi-square")
    assert r["statistic"] == pytest.approx((20 - 1) ** 2 / 40)  # 9.025
    assert r["p_value"] == pytest.approx(stats.chi2.sf(9.025, 1))


def test_mcnemar_switches_to_chi_square_at_25_discordant_pairs():
    for n, method in ((EXACT_BELOW - 1, "exact binomial"), (EXACT_BELOW, "chi-square, continuity corrected")):
        a = [i % 2 == 0 for i in range(n)] + [False] * 3
        b = [i % 2 == 1 for i in range(n)] + [False] * 3  # n discordant pairs; agreeing ones do not count
        assert mcnemar(a, b)["b01"] + mcnemar(a, b)["b10"] == n
        assert mcnemar(a, b)["method"] == method


def test_mcnemar_exact_agrees_with_scipy_binomtest():
    rng = np.random.default_rng(0)
    for _ in range(30):
        a, b = rng.random(40) < 0.6, rng.random(40) < 0.5
        r = mcnemar(a, b)
        if r["method"] == "exact binomial" and r["b01"] + r["b10"]:
            ref = stats.binomtest(r["b10"], r["b01"] + r["b10"], 0.5, alternative="two-sided").pvalue
            assert r["p_value"] == pytest.approx(ref)


def test_mcnemar_agrees_with_statsmodels():
    sm = pytest.importorskip("statsmodels.stats.contingency_tables")
    rng = np.random.default_rng(1)
    for n in (20, 200):
        a, b = rng.random(n) < 0.7, rng.random(n) < 0.5
        r = mcnemar(a, b)
        table = [[np.sum(a & b), r["b10"]], [r["b01"], np.sum(~a & ~b)]]
        ref = sm.mcnemar(table, exact=r["method"] == "exact binomial", correction=True)
        assert r["p_value"] == pytest.approx(ref.pvalue)


def test_mcnemar_rejects_unpaired_input():
    with pytest.raises(ValueError):
        mcnemar([True, False], [True])
