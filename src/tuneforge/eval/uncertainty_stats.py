"""How much to trust a confidence method's scores: intervals, a noise floor, within-source AUROC,
and the trivial predictors every method must beat.

- **Intervals.** ECE, equal-mass ECE, AUROC, Brier and Brier skill get 95% percentile bootstrap
  intervals over items (the questions are independent draws); two methods scored on the same items
  get a *paired* bootstrap of their difference.
- **The ECE noise floor.** ECE is biased upward on a finite sample: a perfectly calibrated predictor
  with the same confidences still shows some ECE by chance. Outcomes drawn as Bernoulli(confidence)
  give that predictor's ECE distribution; an ECE below its 95th percentile is within the noise.
- **AUROC within each source.** Pooled AUROC rewards telling datasets apart ("MMLU is hard"); the
  AUROC inside each source asks whether the method tells right from wrong answers of one kind.
- **Reference predictors.** A constant at the training base rate (perfect ECE in expectation, AUROC
  0.5) and the training accuracy of each item's source: a method that cannot beat them has learned
  nothing about the items.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tuneforge.eval.uncertainty import _bin_index, _top_label, _validate, auroc, brier, ece

N_BOOT = 1000
LEVEL = 0.95


def ece_equal_mass(confidence, correct, bins: int = 10) -> float:
    """Top-label ECE with bins of (nearly) equal counts instead of equal widths: no bin is nearly
    empty, so the estimate is less noisy where confidences crowd together."""
    p, y = _validate(confidence, correct)
    top, hit = _top_label(p, y)
    order = np.argsort(top, kind="stable")
    gaps = [abs(hit[idx].mean() - top[idx].mean()) * idx.size for idx in np.array_split(order, min(bins, p.size))
            if idx.size]
    return float(sum(gaps) / p.size)


def brier_skill(confidence, correct) -> float | None:
    """1 - Brier / Brier of the constant predictor at these items' own base rate (the climatology):
    0 = no better than always saying the base rate, 1 = perfect. None when every answer is alike."""
    p, y = _validate(confidence, correct)
    rate = y.mean()
    reference = rate * (1 - rate)
    return None if reference == 0 else float(1 - brier(p, y) / reference)


METRICS: dict[str, Callable] = {"ece": ece, "ece_equal_mass": ece_equal_mass, "auroc": auroc, "brier": brier,
                                "brier_skill": brier_skill}


def _percentiles(values: list, level: float) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None, None
    alpha = (1 - level) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _batch_metrics(p: np.ndarray, y: np.ndarray, rows: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Every metric of METRICS on each resample at once: row r scores items rows[r]. NaN where the
    metric is undefined (AUROC, Brier skill with one class). Equal to METRICS[name](p[i], y[i]) per row
    up to float summation order (tested); one vectorised pass instead of a Python loop over 1,000
    resamples, which took minutes per table with scikit-learn's AUROC."""
    from scipy.stats import rankdata

    P, Y = p[rows], y[rows].astype(float)
    n = P.shape[1]
    top = np.maximum(P, 1.0 - P)
    hit = ((P >= 0.5) == (Y == 1.0)).astype(float)
    out = {"brier": np.mean((P - Y) ** 2, axis=1)}
    idx = _bin_index_matrix(top, bins) + bins * np.arange(P.shape[0])[:, None]
    gap = (np.bincount(idx.ravel(), weights=hit.ravel(), minlength=bins * P.shape[0])
           - np.bincount(idx.ravel(), weights=top.ravel(), minlength=bins * P.shape[0]))
    out["ece"] = np.abs(gap.reshape(P.shape[0], bins)).sum(axis=1) / n
    order = np.argsort(top, axis=1, kind="stable")
    sizes = [part.size for part in np.array_split(np.arange(n), min(bins, n))]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    segment_gap = (np.add.reduceat(np.take_along_axis(hit, order, axis=1), starts, axis=1)
                   - np.add.reduceat(np.take_along_axis(top, order, axis=1), starts, axis=1))
    out["ece_equal_mass"] = np.abs(segment_gap).sum(axis=1) / n
    positives = Y.sum(axis=1)
    negatives = n - positives
    rank_sum = (rankdata(P, axis=1) * Y).sum(axis=1)  # average ranks: a tie counts one half
    with np.errstate(invalid="ignore", divide="ignore"):
        out["auroc"] = np.where((positives > 0) & (negatives > 0),
                                (rank_sum - positives * (positives + 1) / 2) / (positives * negatives), np.nan)
        rate = positives / n
        out["brier_skill"] = np.where((rate > 0) & (rate < 1), 1 - out["brier"] / (rate * (1 - rate)), np.nan)
    return out


def _bin_index_matrix(values: np.ndarray, bins: int) -> np.ndarray:
    return _bin_index(values.ravel(), bins).reshape(values.shape)


def _nan_percentiles(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    return _percentiles([None if np.isnan(v) else float(v) for v in values], level)


def intervals(confidence, correct, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """metric -> {point, lo, hi} for every metric in METRICS, bootstrapping items."""
    p, y = _validate(confidence, correct)
    batch = _batch_metrics(p, y, _resamples(p.size, n_boot, seed))
    out = {}
    for name, fn in METRICS.items():
        lo, hi = _nan_percentiles(batch[name], level)
        out[name] = {"point": fn(p, y), "lo": lo, "hi": hi}
    return out


def paired_difference(confidence_a, confidence_b, correct, metric: str, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> dict:
    """metric(a) - metric(b) on the same items, with a paired bootstrap interval (the same resampled
    items for both) and a two-sided bootstrap p-value (twice the smaller tail share beyond 0)."""
    fn = METRICS[metric]
    a, y = _validate(confidence_a, correct)
    b, _ = _validate(confidence_b, correct)
    point_a, point_b = fn(a, y), fn(b, y)
    rows = _resamples(y.size, n_boot, seed)
    d = _batch_metrics(a, y, rows)[metric] - _batch_metrics(b, y, rows)[metric]
    d = d[~np.isnan(d)]
    lo, hi = _nan_percentiles(d, level)
    p_value = None if d.size == 0 else float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
    diff = None if point_a is None or point_b is None else point_a - point_b
    return {"diff": diff, "lo": lo, "hi": hi, "p_value": p_value}


def ece_noise_floor(confidence, n_sim: int = N_BOOT, seed: int = 0, bins: int = 10, level: float = LEVEL) -> dict:
    """The ECE a perfectly calibrated predictor with these confidences shows by chance: outcomes are
    drawn as Bernoulli(confidence). Returns its mean and its `level` quantile (the floor)."""
    p = np.asarray(confidence, dtype=float).reshape(-1)
    rng = np.random.default_rng(seed)
    outcomes = rng.random((n_sim, p.size)) < p  # the same draws, in order, as one row per simulation
    top = np.maximum(p, 1.0 - p)
    hit = (p >= 0.5) == outcomes
    idx = _bin_index(top, bins)
    sims = np.abs(np.stack([hit[:, idx == k].sum(axis=1) - top[idx == k].sum() for k in range(bins)])).sum(0) / p.size
    return {"mean": float(sims.mean()), "floor": float(np.quantile(sims, level)), "n": int(p.size)}


def auroc_within(confidence, correct, sources: Sequence[str], min_each: int = 5) -> dict:
    """AUROC inside each source with at least `min_each` right and `min_each` wrong answers, and
    their mean weighted by items ("mean"); sources with fewer are left out (listed under "left_out")."""
    p, y = _validate(confidence, correct)
    src = np.asarray(list(sources))
    per, weights, left_out = {}, {}, []
    for s in sorted(set(src.tolist())):
        m = src == s
        if y[m].sum() < min_each or (~y[m]).sum() < min_each:
            left_out.append(s)
            continue
        per[s] = auroc(p[m], y[m])
        weights[s] = int(m.sum())
    mean = (sum(per[s] * weights[s] for s in per) / sum(weights.values())) if per else None
    return {"by_source": per, "mean": mean, "left_out": left_out}


def reference_predictors(train_correct: Sequence[bool], train_sources: Sequence[str],
                         sources: Sequence[str]) -> dict[str, list[float]]:
    """Confidences of the two trivial predictors for items from `sources`, both fitted on the
    training answers: the base rate for every item, and the accuracy of the item's source (the base
    rate for a source the training split lacks)."""
    y = np.asarray(train_correct, dtype=float)
    rate = float(y.mean())
    by_source: dict[str, list[float]] = {}
    for s, c in zip(train_sources, y):
        by_source.setdefault(s, []).append(c)
    prior = {s: float(np.mean(v)) for s, v in by_source.items()}
    return {"base rate": [rate] * len(sources), "per-source prior": [prior.get(s, rate) for s in sources]}


def split_statistics(confidences: dict[str, Sequence[float]], correct, sources: Sequence[str], reference: str,
                     n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Everything the report says about one split: per method the intervals, the ECE noise floor and
    the AUROC within sources; and `reference` minus every other method, paired on the same items."""
    methods = {}
    for name, conf in confidences.items():
        methods[name] = {"intervals": intervals(conf, correct, n_boot, seed),
                         "noise_floor": ece_noise_floor(conf, n_boot, seed),
                         "auroc_within": auroc_within(conf, correct, sources)}
    paired = {name: {m: paired_difference(confidences[reference], conf, correct, m, n_boot, seed)
                     for m in ("auroc", "ece", "brier")}
              for name, conf in confidences.items() if name != reference}
    return {"n": len(sources), "reference": reference, "methods": methods, "paired": paired}


def _ci(d: dict, digits: int = 3) -> str:
    if d.get("point", d.get("diff")) is None:
        return "n/a"
    point = d.get("point", d.get("diff"))
    sign = "+" if "diff" in d else ""
    lo, hi = d.get("lo"), d.get("hi")
    return f"{point:{sign}.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None else f"{point:.{digits}f}"


def statistics_markdown(stats: dict, split: str) -> str:
    """The tables of one split: every method with intervals, then the reference minus each method."""
    ref = stats["reference"]
    lines = [f"**{split}** (n = {stats['n']} answers; 95% bootstrap intervals over answers, {N_BOOT} resamples)", "",
             "| method | ECE ↓ | ECE noise floor | within noise? | equal-mass ECE ↓ | AUROC ↑ | AUROC within sources ↑ "
             "| Brier ↓ | Brier skill ↑ |",
             "|---|---:|---:|:---:|---:|---:|---:|---:|---:|"]
    for name, m in stats["methods"].items():
        iv, floor, within = m["intervals"], m["noise_floor"], m["auroc_within"]
        inside = "yes" if iv["ece"]["point"] <= floor["floor"] else "no"
        mean_within = "n/a" if within["mean"] is None else f"{within['mean']:.3f} ({len(within['by_source'])} sources)"
        lines.append(f"| {name} | {_ci(iv['ece'])} | {floor['floor']:.3f} | {inside} | {_ci(iv['ece_equal_mass'])} "
                     f"| {_ci(iv['auroc'])} | {mean_within} | {_ci(iv['brier'])} | {_ci(iv['brier_skill'])} |")
    lines += ["", f"{ref} minus each method, paired on the same answers (p: two-sided paired bootstrap):", "",
              "| method | Δ AUROC | p | Δ ECE | p | Δ Brier | p |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, d in stats["paired"].items():
        cells = []
        for metric in ("auroc", "ece", "brier"):
            p = d[metric]["p_value"]
            cells += [_ci(d[metric]), "n/a" if p is None else f"{p:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "A difference whose interval contains 0 is no difference. The noise floor is the 95th percentile "
              "of the ECE a perfectly calibrated predictor with the same confidences shows on this many answers.",
              ""]
    return "\n".join(lines)
