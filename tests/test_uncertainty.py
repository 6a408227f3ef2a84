"""Uncertainty metrics checked against independent reference code, hand-computed cases and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from tuneforge.eval.uncertainty import (auroc, brier, comparison_chart, ece, markdown_table, reliability_diagram,
                                        selective_accuracy, summarize)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- independent reference implementations (plain loops, deliberately unlike the module) ---

def ref_ece(confidence, correct, bins):
    """Top-label ECE by scanning every bin for every example."""
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, hits, confidence sum
    for p, c in zip(confidence, correct):
        says_correct = p >= 0.5
        top = p if says_correct else 1 - p
        hit = 1.0 if says_correct == bool(c) else 0.0
        for k in range(bins):
            lo, hi = k / bins, (k + 1) / bins
            if lo <= top < hi or (k == bins - 1 and top == 1.0):
                totals[k][0] += 1
                totals[k][1] += hit
                totals[k][2] += top
                break
        else:
            raise AssertionError(f"{top} fell in no bin")
    n = len(confidence)
    return sum(cnt / n * abs(h / cnt - s / cnt) for cnt, h, s in totals if cnt)


def ref_auroc(confidence, correct):
    """Probability a right answer outranks a wrong one, ties counted half, over all pairs."""
    pos = [p for p, c in zip(confidence, correct) if c]
    neg = [p for p, c in zip(confidence, correct) if not c]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def random_cases(seed, count=60):
    """Random (confidence, correct, bins) with ties and values on bin edges mixed in."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.integers(1, 120))
        p = rng.random(n)
        if i % 3 == 1:
            p = np.round(p, 1)  # ties and exact edges 0.0, 0.1, ..., 1.0
        elif i % 3 == 2:
            p = np.round(p, 2)
        y = rng.random(n) < rng.random()
        yield p.tolist(), y.tolist(), int(rng.choice([1, 2, 3, 5, 7, 10, 15, 20]))


# --- AUROC ---

def test_auroc_matches_pairwise_definition_on_random_inputs():
    checked = 0
    for p, y, _ in random_cases(seed=1):
        if 0 < sum(y) < len(y):
            assert auroc(p, y) == pytest.approx(ref_auroc(p, y), abs=1e-12)
            checked += 1
    assert checked > 30


def test_auroc_matches_sklearn_on_random_inputs():
    metrics = pytest.importorskip("sklearn.metrics")
    for p, y, _ in random_cases(seed=2):
        if 0 < sum(y) < len(y):
            assert auroc(p, y) == pytest.approx(metrics.roc_auc_score(y, p), abs=1e-12)


def test_auroc_known_values_and_undefined():
    assert auroc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert auroc([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)  # 3 wins + 1 tie of 4 pairs
    assert auroc([0.9, 0.2, 0.5], [True, True, True]) is None
    assert auroc([0.9, 0.2, 0.5], [False, False, False]) is None


# --- ECE ---

def test_ece_matches_reference_on_random_inputs():
    for p, y, bins in random_cases(seed=3):
        assert ece(p, y, bins=bins) == pytest.approx(ref_ece(p, y, bins), abs=1e-12)


def test_ece_matches_reference_on_grid_values():
    rng = np.random.default_rng(4)
    grid = [i / 20 for i in range(21)]  # every bin edge for 2, 4, 5, 10 and 20 bins
    for _ in range(40):
        p = rng.choice(grid, size=int(rng.integers(1, 50))).tolist()
        y = (rng.random(len(p)) < 0.6).tolist()
        for bins in (2, 3, 4, 5, 10, 20):
            assert ece(p, y, bins=bins) == pytest.approx(ref_ece(p, y, bins), abs=1e-12)


@pytest.mark.parametrize("p, y", [
    ([0.9, 0.3, 0.75, 0.6, 0.05], [True] * 5),            # all correct
    ([0.9, 0.3, 0.75, 0.6, 0.05], [False] * 5),           # all wrong
    ([0.7] * 6, [1, 0, 1, 1, 0, 1]),                       # constant confidence
    ([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 0]),                  # exactly 0.5
    ([1.0, 1.0, 0.0, 0.0], [1, 0, 0, 1]),                  # exactly 1.0 and 0.0
    ([0.6, 0.7, 0.8, 0.9, 0.4, 0.3, 0.2, 0.1], [1, 0, 1, 1, 0, 0, 1, 0]),  # bin edges
    ([0.65, 0.65, 0.35, 0.35, 0.65], [1, 0, 0, 1, 1]),     # ties
])
@pytest.mark.parametrize("bins", [1, 3, 10, 15])
def test_ece_edge_cases_match_reference(p, y, bins):
    assert ece(p, y, bins=bins) == pytest.approx(ref_ece(p, y, bins), abs=1e-12)


def test_ece_hand_computed():
    # top labels: 0.9 hit, 0.8 miss, 0.7 (p=0.3 says wrong, is wrong) hit, 0.55 hit; one per bin
    p, y = [0.9, 0.8, 0.3, 0.55], [True, False, False, True]
    assert ece(p, y) == pytest.approx((0.1 + 0.8 + 0.3 + 0.45) / 4)  # 0.4125
    # two bins: all in [0.5, 1]; accuracy 0.75, mean confidence 2.95 / 4 = 0.7375
    assert ece(p, y, bins=2) == pytest.approx(0.0125)


def test_ece_edges_and_half():
    assert ece([0.6, 0.59], [1, 0]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.59)  # 0.6 opens bin 6
    assert ece([0.7] * 4, [1, 1, 1, 0]) == pytest.approx(0.05)
    assert ece([0.5, 0.5], [1, 1]) == pytest.approx(0.5)  # 0.5 predicts "correct": both hits
    assert ece([0.5, 0.5], [0, 0]) == pytest.approx(0.5)  # ... and both misses
    assert ece([1.0, 0.0], [1, 0]) == 0.0  # 1.0 lands in the last (closed) bin
    assert ece([1.0], [0]) == 1.0


# --- Brier and selective accuracy ---

def test_brier_hand_computed():
    assert brier([1.0, 0.0, 0.5], [True, True, False]) == pytest.approx((0 + 1 + 0.25) / 3)
    assert brier([0.8, 0.2], [1, 0]) == pytest.approx(0.04)


def test_selective_accuracy_ties_keep_input_order_and_coverage_rounds_up():
    p, y = [0.9, 0.9, 0.2, 0.9], [False, True, True, True]  # order kept: 0, 1, 3, 2
    assert selective_accuracy(p, y, 0.25) == 0.0
    assert selective_accuracy(p, y, 0.3) == 0.5  # ceil(1.2) = 2
    assert selective_accuracy(p, y, 0.5) == 0.5
    assert selective_accuracy(p, y, 0.6) == pytest.approx(2 / 3)  # ceil(2.4) = 3
    assert selective_accuracy(p, y, 1.0) == 0.75
    assert selective_accuracy([0.5, 0.1, 0.4], [1, 0, 1], 0.5) == 1.0  # ceil(1.5) = 2: 0.5 and 0.4


def test_selective_accuracy_ignores_float_noise_in_coverage():
    p = [1.0 - i / 10 for i in range(10)]
    y = [True] * 7 + [False] * 3
    assert selective_accuracy(p, y, 0.7) == 1.0  # 0.7 * 10 = 7.000000000000001 keeps 7, not 8


@pytest.mark.parametrize("coverage", [0, -0.1, 1.01, float("nan")])
def test_selective_accuracy_rejects_bad_coverage(coverage):
    with pytest.raises(ValueError, match="coverage"):
        selective_accuracy([0.5, 0.6], [1, 0], coverage)


# --- input validation ---

SCORERS = [ece, auroc, brier, lambda p, y: selective_accuracy(p, y, 0.5), summarize]


@pytest.mark.parametrize("fn", SCORERS)
@pytest.mark.parametrize("p, y, message", [
    ([0.2, 0.3, float("nan")], [1, 0, 1], "index 2"),
    ([0.2, 1.5, 0.3], [1, 0, 1], "index 1"),
    ([-0.1, 0.5], [1, 0], "index 0"),
    ([0.2, 0.3], [1, 0, 1], "3"),
    ([], [], "no examples to score"),
    ([0.2, 0.3], [1, 2], "correct at index 1"),
])
def test_bad_inputs_raise_value_error(fn, p, y, message):
    with pytest.raises(ValueError, match=message):
        fn(p, y)


def test_accepts_numpy_arrays():
    p, y = np.array([0.9, 0.2, 0.6]), np.array([1, 0, 0])
    assert brier(p, y) == pytest.approx(brier(p.tolist(), [True, False, False]))


# --- summarize ---

def test_summarize_keys_and_rounding():
    p, y = [0.91234, 0.3, 0.66666], [True, False, True]
    s = summarize(p, y)
    assert set(s) == {"n", "accuracy", "ece", "auroc", "brier", "mean_confidence", "selective_accuracy"}
    assert s["n"] == 3 and isinstance(s["n"], int)
    assert s["accuracy"] == 0.6667
    assert s["mean_confidence"] == round((0.91234 + 0.3 + 0.66666) / 3, 4)
    assert s["ece"] == round(ece(p, y), 4)
    assert s["brier"] == round(brier(p, y), 4)
    assert s["auroc"] == 1.0
    assert s["selective_accuracy"] == {"50": 1.0, "80": 0.6667, "100": 0.6667}  # ceil(2.4) = 3
    for value in [s["accuracy"], s["ece"], s["brier"], s["mean_confidence"], *s["selective_accuracy"].values()]:
        assert isinstance(value, float) and value == round(value, 4)


def test_summarize_undefined_auroc_and_custom_coverages():
    s = summarize([0.9, 0.8], [1, 1], coverages=(0.25, 1.0), bins=5)
    assert s["auroc"] is None
    assert s["selective_accuracy"] == {"25": 1.0, "100": 1.0}


# --- plots and table ---

def _results():
    return {
        "zero-shot": summarize([0.9, 0.2, 0.7, 0.55, 0.4], [1, 0, 0, 1, 1]),
        "calibration-tuned": summarize([0.8, 0.1, 0.3, 0.6, 0.7], [1, 0, 0, 1, 1]),
        "verbalized": summarize([0.9, 0.9, 0.9], [1, 1, 1]),  # AUROC undefined
    }


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(x.name for x in path.parent.iterdir()) == [path.name]  # no temp file left behind


def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(5)
    p = rng.random(200)
    y = rng.random(200) < p
    out = reliability_diagram(p, y, tmp_path / "plots" / "nested" / "reliability.png", title="test split")
    assert out == tmp_path / "plots" / "nested" / "reliability.png"
    _assert_png(out)


def test_reliability_diagram_overwrites(tmp_path):
    out = tmp_path / "r.png"
    out.write_bytes(b"old")
    reliability_diagram([1.0, 0.5, 0.0], [1, 0, 0], out, title="edges", bins=3)
    _assert_png(out)


def test_comparison_chart_handles_missing_auroc(tmp_path):
    _assert_png(comparison_chart(_results(), tmp_path / "a" / "compare.png", title="test split"))
    only_undefined = {"sampling": summarize([0.3, 0.4], [0, 0])}
    _assert_png(comparison_chart(only_undefined, tmp_path / "b" / "compare.png", title="all wrong"))


def test_markdown_table_rows_and_format():
    results = {"test": _results(), "shift": {"zero-shot": _results()["zero-shot"]}}
    lines = markdown_table(results).strip().splitlines()
    assert lines[0] == ("| split | method | n | answer accuracy | ECE ↓ | AUROC ↑ | Brier ↓ "
                        "| sel. acc @50% | @80% | @100% |")
    assert set(lines[1].replace("|", "")) == {"-"}
    rows = lines[2:]
    assert len(rows) == 3 + 1
    assert all(len(row.strip("|").split("|")) == 10 for row in rows)
    assert [tuple(c.strip() for c in row.strip("|").split("|")[:2]) for row in rows] == [
        ("test", "zero-shot"), ("test", "calibration-tuned"), ("test", "verbalized"), ("shift", "zero-shot")]
    verbalized = rows[2].strip("|").split("|")
    assert verbalized[2].strip() == "3" and verbalized[3].strip() == "1.000" and verbalized[5].strip() == "n/a"
    assert rows[0].strip("|").split("|")[3].strip() == "0.600"  # zero-shot accuracy 3/5, 3 decimals
