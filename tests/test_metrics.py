import pytest

from tuneforge.errors import UserError
from tuneforge.eval.metrics import (
    METRICS, corpus_score, exact_match, normalize_answer, rouge_l, token_f1,
)


def test_normalize_answer():
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("") == ""


def test_exact_match_ignores_case_punctuation_articles():
    assert exact_match("The answer is 42.", "answer is 42") == 1.0
    assert exact_match("2021-03-05", "2021-03-05") == 1.0
    assert exact_match("2021-03-05", "2021-03-06") == 0.0
    assert exact_match("", "") == 1.0
    assert exact_match("", "x") == 0.0


def test_token_f1_known_values():
    # pred 3 tokens, ref 2 tokens, 2 shared: P=2/3, R=1, F1=0.8
    assert token_f1("red blue green", "blue red") == pytest.approx(0.8)
    assert token_f1("cat", "dog") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "dog") == 0.0
    assert token_f1("the dog", "dog") == 1.0  # articles dropped
    # duplicates count via multiset intersection: P=1/3, R=1 -> F1=0.5
    assert token_f1("x x y", "y") == pytest.approx(0.5)


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("completely different", "nothing shared here") == 0.0
    partial = rouge_l("the cat sat", "the cat sat on the mat")
    assert 0.0 < partial < 1.0
    assert rouge_l("", "") == 0.0 or rouge_l("", "") == 1.0  # defined, no exception


def test_corpus_score_mean_and_errors():
    assert set(METRICS) == {"exact_match", "token_f1", "rouge_l"}
    assert corpus_score("exact_match", ["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)
    assert corpus_score("token_f1", [], []) == 0.0
    with pytest.raises(UserError, match="exact_match"):
        corpus_score("bleu", ["x"], ["x"])
    with pytest.raises(ValueError):
        corpus_score("exact_match", ["x"], [])
