"""Task metrics comparing generated answers with references (all scores in 0..1)."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable

from tuneforge.errors import UserError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token F1; two empty answers count as a match (score 1)."""
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


_scorer = None


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (rouge_score package, with stemming)."""
    global _scorer
    if _scorer is None:  # built lazily once: construction loads the stemmer
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_scorer.score(ref, pred)["rougeL"].fmeasure)


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
}


def corpus_score(metric: str, predictions: list[str], references: list[str]) -> float:
    """Mean of a per-example metric over a corpus (0.0 for an empty corpus)."""
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}'; available: {', '.join(sorted(METRICS))}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    fn = METRICS[metric]
    return sum(fn(p, r) for p, r in zip(predictions, references)) / len(predictions)
