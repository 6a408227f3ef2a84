"""Uncertainty metrics for calibration tuning: how well does a confidence predict correctness?

For each question the model gave one answer; ``correct[i]`` says whether it was right and
``confidence[i]`` in [0, 1] is a method's probability that it is right.  Methods (zero-shot
classifier, verbalized, sampling, calibration-tuned) are compared on:

- ECE (calibration: does 80% confidence mean 80% right?),
- AUROC (discrimination: are right answers ranked above wrong ones?),
- Brier score (both at once),
- selective accuracy (accuracy when only the most confident answers are kept).

All functions take plain sequences or numpy arrays and validate them the same way: equal
lengths, at least one example, confidences finite and in [0, 1], correctness 0/1 or bool.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _validate(confidence: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (float confidences, bool correctness); fail loudly so a bad score never looks fine."""
    p = np.asarray(confidence, dtype=float).reshape(-1)
    y_raw = np.asarray(correct).reshape(-1)
    if p.shape != y_raw.shape:
        raise ValueError(f"confidence has {p.size} values but correct has {y_raw.size}")
    if p.size == 0:
        raise ValueError("no examples to score")
    bad = np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))  # NaN fails both comparisons
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"confidence at index {i} is {p[i]!r}; expected a number in [0, 1]")
    y_num = y_raw.astype(float)
    bad = np.flatnonzero((y_num != 0.0) & (y_num != 1.0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"correct at index {i} is {y_raw[i]!r}; expected a bool or 0/1")
    return p, y_num == 1.0


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, 1]: bin k = [k/bins, (k+1)/bins), last bin closed at 1.

    Edges are exactly ``k / bins`` so a value written as an edge (0.6, 0.7, ...) lands in the bin
    it starts, not the one below through float error in ``value * bins``.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    edges = np.arange(bins + 1) / bins
    return np.minimum(np.searchsorted(edges, values, side="right") - 1, bins - 1)


def _top_label(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label view of a binary prediction: (confidence in [0.5, 1], hit as float)."""
    predicts_correct = p >= 0.5
    return np.maximum(p, 1.0 - p), (predicts_correct == y).astype(float)


def ece(confidence: ArrayLike, correct: ArrayLike, bins: int = 10) -> float:
    """Expected calibration error of the top-label (binary) prediction.

    Definition used here, exactly:

    - the binary prediction is "correct" when ``p >= 0.5`` and "wrong" otherwise, so
      ``p == 0.5`` counts as predicting "correct";
    - its top-label confidence is ``max(p, 1 - p)``, which lies in [0.5, 1];
    - it is a hit when ``(p >= 0.5) == correct``;
    - top-label confidences go into ``bins`` equal-width bins over [0, 1]: bin k is
      ``[k/bins, (k+1)/bins)`` and the last bin also holds 1.0 (with 10 bins only bins 5..9
      can be used);
    - ECE = sum over non-empty bins of ``(n_bin / n) * |mean hit - mean top-label confidence|``.

    Scoring the top label rather than p itself makes a method that says 0.1 for an answer that
    is indeed wrong count as confident and right, as it should.
    """
    p, y = _validate(confidence, correct)
    top, hit = _top_label(p, y)
    idx = _bin_index(top, bins)
    gap = np.bincount(idx, weights=hit, minlength=bins) - np.bincount(idx, weights=top, minlength=bins)
    return float(np.abs(gap).sum() / p.size)  # sum_k n_k/n * |mean_k(hit) - mean_k(top)|


def auroc(confidence: ArrayLike, correct: ArrayLike) -> float | None:
    """Area under the ROC curve of confidence as a detector of correct answers (scikit-learn's).

    It is the probability that a random right answer gets a higher confidence than a random
    wrong one (ties count one half). Returns None when ``correct`` has only one class, where it
    is undefined (scikit-learn would raise).
    """
    from sklearn.metrics import roc_auc_score

    p, y = _validate(confidence, correct)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, p))


def brier(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Mean squared error ``mean((p - correct)^2)``: rewards calibration and sharpness together."""
    p, y = _validate(confidence, correct)
    return float(np.mean((p - y) ** 2))


def selective_accuracy(confidence: ArrayLike, correct: ArrayLike, coverage: float) -> float:
    """Fraction correct among the ``ceil(coverage * n)`` most confident answers.

    This is the accuracy a user gets by answering only when the method is most sure. Answers are
    sorted by p descending with a stable sort, so ties are broken by input order (earlier first).
    ``coverage`` must be in (0, 1]; ``coverage * n`` is rounded to 9 decimals before the ceiling
    so float noise (0.7 * 10 = 7.000000000000001) does not add an answer.
    """
    p, y = _validate(confidence, correct)
    if not (0.0 < coverage <= 1.0):  # also rejects NaN
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    k = max(1, math.ceil(round(coverage * p.size, 9)))
    order = np.argsort(-p, kind="stable")
    return float(y[order[:k]].mean())


def _percent_key(coverage: float) -> str:
    return str(int(round(coverage * 100)))


def summarize(confidence: ArrayLike, correct: ArrayLike, coverages: Sequence[float] = (0.5, 0.8, 1.0),
              bins: int = 10) -> dict:
    """All metrics of one method on one split, floats rounded to 4 decimals, ready for JSON.

    ``selective_accuracy`` is keyed by the integer percent as a string ("50", "80", "100");
    ``auroc`` is None when every answer is right or every answer is wrong.
    """
    p, y = _validate(confidence, correct)
    auc = auroc(p, y)
    return {
        "n": int(p.size),
        "accuracy": round(float(y.mean()), 4),
        "ece": round(ece(p, y, bins=bins), 4),
        "auroc": None if auc is None else round(auc, 4),
        "brier": round(brier(p, y), 4),
        "mean_confidence": round(float(p.mean()), 4),
        "selective_accuracy": {_percent_key(c): round(selective_accuracy(p, y, c), 4) for c in coverages},
    }


def _save_png_atomic(fig, path: str | os.PathLike) -> Path:
    from tuneforge.atomic import atomic_savefig

    return atomic_savefig(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(confidence: ArrayLike, correct: ArrayLike, path: str | os.PathLike, title: str,
                        bins: int = 10) -> Path:
    """PNG of top-label accuracy per confidence bin against the diagonal (perfect calibration).

    Uses the same top-label view and binning as :func:`ece`; each bin's answer count is written
    at the foot of its bar so sparsely populated bins are not over-read.
    """
    p, y = _validate(confidence, correct)
    top, hit = _top_label(p, y)
    idx = _bin_index(top, bins)
    counts = np.bincount(idx, minlength=bins)
    used = counts > 0
    acc = np.bincount(idx, weights=hit, minlength=bins)[used] / counts[used]
    width = 1.0 / bins
    left = np.arange(bins)[used] * width
    x_min = math.floor(0.5 * bins) / bins  # first bin that can hold a top-label confidence

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    ax.bar(left, acc, width=width, align="edge", edgecolor="black", color="tab:blue", alpha=0.8,
           label="top-label accuracy")
    for x, count in zip(left, counts[used]):
        ax.text(x + width / 2, 0.01, f"n={count}", ha="center", va="bottom", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    ax.plot([x_min, 1], [x_min, 1], "--", color="tab:red", label="perfect calibration")
    ax.set_xlim(x_min, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-label confidence max(p, 1 - p)")
    ax.set_ylabel("accuracy of the top-label prediction")
    ax.set_title(f"{title}\nECE = {ece(p, y, bins=bins):.3f} (n = {p.size}, {bins} bins)")
    ax.legend(loc="upper left")
    return _save_png_atomic(fig, path)


def reliability_grid(confidences: dict[str, ArrayLike], correct: ArrayLike, path: str | os.PathLike, title: str,
                     bins: int = 10) -> Path:
    """One PNG with a small reliability diagram per method (same top-label view and bins as
    :func:`ece`), so methods can be compared at a glance."""
    names = list(confidences)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), dpi=110, squeeze=False)
    width = 1.0 / bins
    x_min = math.floor(0.5 * bins) / bins
    for ax, name in zip(axes.flat, names):
        p, y = _validate(confidences[name], correct)
        top, hit = _top_label(p, y)
        idx = _bin_index(top, bins)
        counts = np.bincount(idx, minlength=bins)
        used = counts > 0
        acc = np.bincount(idx, weights=hit, minlength=bins)[used] / counts[used]
        ax.bar(np.arange(bins)[used] * width, acc, width=width, align="edge", edgecolor="black", alpha=0.8)
        for x, count in zip(np.arange(bins)[used] * width, counts[used]):
            ax.text(x + width / 2, 0.01, str(count), ha="center", va="bottom", fontsize=7)
        ax.plot([x_min, 1], [x_min, 1], "--", color="tab:red")
        ax.set_xlim(x_min, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}\nECE {ece(p, y, bins=bins):.3f}", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supxlabel("top-label confidence (bar labels: answers per bin)")
    fig.supylabel("top-label accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return _save_png_atomic(fig, path)


def comparison_chart(results: dict[str, dict], path: str | os.PathLike, title: str) -> Path:
    """PNG with two bar panels, ECE and AUROC, one bar per method in dict order.

    An undefined AUROC (None) is drawn as a missing bar labelled "n/a" rather than as 0, which
    would read as "perfectly wrong".
    """
    if not results:
        raise ValueError("no results to plot")
    names = list(results)
    colors = [f"C{i % 10}" for i in range(len(names))]
    x = np.arange(len(names))

    plt = _pyplot()
    fig, (ax_ece, ax_auc) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(names)), 4.5), dpi=120)
    panels = ((ax_ece, "ece", "ECE (lower is better)"), (ax_auc, "auroc", "AUROC (higher is better)"))
    for ax, key, label in panels:
        values = [results[name].get(key) for name in names]
        for xi, value, color in zip(x, values, colors):
            if value is None:
                ax.text(xi, 0.01, "n/a", ha="center", va="bottom", color="grey")
                continue
            ax.bar(xi, value, color=color, edgecolor="black")
            ax.text(xi, value, f"{value:.3f}", ha="center", va="bottom")
        ax.set_title(label)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.grid(axis="y", alpha=0.3)
    present = [v for v in (results[n].get("ece") for n in names) if v is not None]
    ax_ece.set_ylim(0, max(present + [0.05]) * 1.2)
    ax_auc.set_ylim(0, 1.05)
    ax_auc.axhline(0.5, linestyle="--", color="grey", linewidth=1)
    ax_auc.annotate("chance", xy=(1, 0.5), xycoords=("axes fraction", "data"), xytext=(3, 0),
                    textcoords="offset points", va="center", color="grey")
    fig.suptitle(title)
    return _save_png_atomic(fig, path)


_COLUMNS = ("split", "method", "n", "answer accuracy", "ECE ↓", "AUROC ↑", "Brier ↓",
            "sel. acc @50%", "@80%", "@100%")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """One Markdown table, a row per split x method (split name -> method name -> summarize() dict).

    Numbers have 3 decimals; undefined values (None, or a coverage not computed) read "n/a".
    """
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for split, methods in results.items():
        for method, s in methods.items():
            sel = s.get("selective_accuracy", {})
            cells = [_cell(split), _cell(method), str(s["n"]), _fmt(s.get("accuracy")), _fmt(s.get("ece")),
                     _fmt(s.get("auroc")), _fmt(s.get("brier"))] + [_fmt(sel.get(k)) for k in ("50", "80", "100")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
