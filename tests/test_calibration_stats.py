"""Issue 15's pieces: the Jensen-Shannon regulariser on the answering prompt, Platt scaling, the
intervals and noise floor of the uncertainty metrics, and the trivial reference predictors."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import jensenshannon

from tuneforge.calibration.fit import fit_platt
from tuneforge.calibration.query import answer_messages, encode_query, make_query_spec
from tuneforge.calibration.questions import Question
from tuneforge.data.pack import collate
from tuneforge.eval.uncertainty import auroc, brier, ece
from tuneforge.eval.uncertainty_stats import (auroc_within, brier_skill, ece_equal_mass, ece_noise_floor, intervals,
                                              paired_difference, reference_predictors, split_statistics,
                                              statistics_markdown)
from tuneforge.models.load import load_model, load_tokenizer
from tuneforge.train.losses.calibration import CalibrationLoss, divergence

Q = Question(question="What is 17 + 25?", targets=["42"], source="arithmetic")


def test_js_divergence_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(5, 12, generator=gen), -1)
    q = torch.log_softmax(torch.randn(5, 12, generator=gen), -1)
    ours = divergence(p, q, "js").numpy()
    # scipy's Jensen-Shannon *distance* is the square root of the divergence (natural log here)
    theirs = np.array([jensenshannon(a, b) ** 2 for a, b in zip(p.exp().numpy(), q.exp().numpy())])
    assert ours == pytest.approx(theirs, rel=1e-4)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load_model(str(tiny_llama)).eval(), load_tokenizer(str(tiny_llama))


def test_answering_sequence_follows_the_query_with_restarted_positions(tiny):
    tok = tiny[1]
    spec = make_query_spec(tok, "Is the proposed answer correct?", ("no", "yes"))
    chat = answer_messages(Q, [], "Answer with the letter.", "Answer with a number.")
    plain = encode_query(tok, Q, "42", True, spec, 512)
    e = encode_query(tok, Q, "42", True, spec, 512, answering=chat)
    n = len(plain.ids)
    assert e.ids[:n] == plain.ids and e.mask[:n] == plain.mask and sum(e.mask) == 1  # the query, unchanged
    assert e.restarts == [n]
    assert not any(e.aux_mask[:n])  # the regulariser reads the answer under the answering prompt only
    assert tok.decode([i for i, m in zip(e.ids, e.aux_mask) if m]).strip() == "42"
    assert Q.question in tok.decode(e.ids[n:]) and "Is the proposed answer correct?" not in tok.decode(e.ids[n:])
    assert encode_query(tok, Q, "42", True, spec, n + 3, answering=chat) is None  # the pair must fit as a whole


def test_js_regulariser_on_the_answering_prompt_is_zero_at_init_and_grows(tiny_llama):
    from tuneforge.config import LoraMethod
    from tuneforge.models.methods import apply_method

    torch.manual_seed(0)
    model = apply_method(load_model(str(tiny_llama)), LoraMethod(r=4))
    tok = load_tokenizer(str(tiny_llama))
    spec = make_query_spec(tok, "Is the proposed answer correct?", ("no", "yes"))
    chat = answer_messages(Q, [], "Answer with the letter.", "Answer with a number.")
    encoded = [encode_query(tok, Q, "42", True, spec, 512, answering=chat),
               encode_query(tok, Q, "41", False, spec, 512, answering=chat)]
    batch = collate([[0, 1]], encoded, tok.pad_token_id, CalibrationLoss.extra_fields)
    plain, js = CalibrationLoss(model, spec.token_ids), CalibrationLoss(model, spec.token_ids, "js", 1.0)
    with torch.no_grad():
        assert js(**batch).item() == pytest.approx(plain(**batch).item(), abs=1e-5)  # LoRA B = 0: same model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
        assert js(**batch).item() > plain(**batch).item() + 1e-4


def test_platt_scaling_recovers_known_parameters():
    gen = torch.Generator().manual_seed(0)
    margins = torch.randn(20000, generator=gen) * 2
    y = torch.rand(20000, generator=gen) < torch.sigmoid(1.7 * margins - 0.6)
    a, b = fit_platt(margins, y)
    assert a == pytest.approx(1.7, abs=0.08) and b == pytest.approx(-0.6, abs=0.06)


def test_equal_mass_ece_hand_worked():
    # top-label confidences 0.6, 0.6, 0.9, 0.9 (p = 0.4 predicts "wrong" with confidence 0.6); two bins of two
    p = [0.4, 0.6, 0.9, 0.9]
    y = [False, False, True, False]  # hits: 1, 0, 1, 0
    # bin {0.6, 0.6}: |0.5 - 0.6| * 2; bin {0.9, 0.9}: |0.5 - 0.9| * 2; over 4
    assert ece_equal_mass(p, y, bins=2) == pytest.approx((0.1 * 2 + 0.4 * 2) / 4)


def test_brier_skill_against_the_base_rate():
    y = np.array([1, 1, 0, 0, 0], dtype=bool)
    assert brier_skill(np.full(5, 0.4), y) == pytest.approx(0.0)  # the base rate itself: no skill
    assert brier_skill(y.astype(float), y) == pytest.approx(1.0)
    assert brier_skill([0.5] * 3, [True] * 3) is None


def test_bootstrap_interval_of_the_brier_score_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    p = rng.random(2000)
    y = rng.random(2000) < p
    iv = intervals(p, y, n_boot=2000, seed=0)["brier"]
    sq = (p - y) ** 2
    half = stats.norm.ppf(0.975) * sq.std(ddof=1) / np.sqrt(sq.size)
    assert iv["point"] == pytest.approx(brier(p, y))
    assert iv["lo"] == pytest.approx(sq.mean() - half, abs=0.15 * half)
    assert iv["hi"] == pytest.approx(sq.mean() + half, abs=0.15 * half)


def test_noise_floor_matches_the_exact_binomial_expectation():
    # Constant confidence 0.7: one bin, ECE = |hits/n - 0.7| with hits ~ Binomial(n, 0.7).
    n = 200
    k = np.arange(n + 1)
    exact_mean = float((stats.binom.pmf(k, n, 0.7) * np.abs(k / n - 0.7)).sum())
    floor = ece_noise_floor(np.full(n, 0.7), n_sim=4000, seed=0)
    assert floor["mean"] == pytest.approx(exact_mean, rel=0.05)
    # its 95th percentile: the smallest |k/n - 0.7| with at least 95% of the mass at or below it
    gaps = np.abs(k / n - 0.7)
    order = np.argsort(gaps)
    cdf = np.cumsum(stats.binom.pmf(k[order], n, 0.7))
    assert floor["floor"] == pytest.approx(gaps[order][np.searchsorted(cdf, 0.95)], abs=0.006)


def test_a_source_prior_wins_pooled_auroc_but_not_within_sources():
    rng = np.random.default_rng(0)
    sources = ["easy"] * 300 + ["hard"] * 300
    y = np.concatenate([rng.random(300) < 0.8, rng.random(300) < 0.2])
    train_y = np.concatenate([rng.random(300) < 0.8, rng.random(300) < 0.2])
    refs = reference_predictors(train_y, sources, sources)
    assert refs["base rate"] == pytest.approx([train_y.mean()] * 600)
    prior = np.asarray(refs["per-source prior"])
    assert auroc(prior, y) > 0.75  # "which dataset is this" looks like discrimination when pooled
    within = auroc_within(prior, y, sources)
    assert within["by_source"] == {"easy": 0.5, "hard": 0.5} and within["mean"] == 0.5
    assert reference_predictors([True, False], ["a", "a"], ["b"])["per-source prior"] == [0.5]  # unseen source


def test_paired_difference_and_report():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    good = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, 0.15, 400), 0, 1)
    noise = rng.random(400)
    d = paired_difference(good, noise, y, "auroc", n_boot=500)
    assert d["diff"] == pytest.approx(auroc(good, y) - auroc(noise, y))
    assert d["lo"] > 0 and d["p_value"] < 0.01
    same = paired_difference(good, good, y, "ece", n_boot=200)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0
    stats_ = split_statistics({"tuned": good, "noise": noise}, y, ["s"] * 400, "tuned", n_boot=200)
    assert stats_["methods"]["tuned"]["intervals"]["ece"]["point"] == pytest.approx(ece(good, y))
    md = statistics_markdown(stats_, "test")
    assert "noise floor" in md and "| noise |" in md and "tuned minus each method" in md


# ------------------------------------------------------------------------------ question builder

def test_arithmetic_levels_are_even_distinct_and_right():
    from tuneforge.calibration.generated import LEVELS, arithmetic_questions

    rows = arithmetic_questions(12 * len(LEVELS), seed=3)
    assert len({r["question"] for r in rows}) == len(rows)
    assert {r["source"] for r in rows} == {lv.name for lv in LEVELS}
    assert all(sum(r["source"] == lv.name for r in rows) == 12 for lv in LEVELS)
    for r in rows:
        expr = r["question"].split("What is ", 1)[1].split("?", 1)[0]
        assert str(eval(expr)) == r["target"] and int(r["target"]) >= 0  # noqa: S307 - our own digits and + - *
    assert rows == arithmetic_questions(12 * len(LEVELS), seed=3)


def test_arithmetic_fills_from_the_levels_with_room_and_refuses_more_than_exist():
    from tuneforge.calibration.generated import LEVELS, _pairs, arithmetic_questions
    from tuneforge.errors import UserError

    rows = arithmetic_questions(3120, seed=0)  # the default size: more than the one-digit levels hold
    assert len({r["question"] for r in rows}) == 3120
    per_level = {lv.name: sum(r["source"] == lv.name for r in rows) for lv in LEVELS}
    assert per_level["arithmetic 1d-1d"] == 45 and per_level["arithmetic 1d+1d"] == 81  # all there are
    assert per_level["arithmetic 2d+2d"] == 3120 - 81 - 45 - 81 - 810 - 810
    assert len(_pairs(LEVELS[1])) == 45 and all(a >= b for a, b in _pairs(LEVELS[1]))
    with pytest.raises(UserError, match="distinct"):
        arithmetic_questions(sum(len(_pairs(lv)) for lv in LEVELS) + 1)


def test_story_problems_are_distinct_and_right():
    from tuneforge.calibration.generated import story_questions

    rows = story_questions(700, seed=1)
    assert len({r["question"] for r in rows}) == 700 and rows == story_questions(700, seed=1)
    assert {r["source"] for r in rows} == {"story gets more", "story in all", "story bags"}
    for r in rows:
        a, b = [int(w) for w in r["question"].replace(".", " ").split() if w.isdigit()]
        assert int(r["target"]) == (a * b if r["source"] == "story bags" else a + b)


def test_words_and_dates():
    from tuneforge.calibration.generated import date_questions, number_words, word_arithmetic_questions

    assert [number_words(n) for n in (0, 13, 20, 42, 99)] == ["zero", "thirteen", "twenty", "forty-two",
                                                               "ninety-nine"]
    words = {w: n for n in range(100) for w in [number_words(n)]}
    for r in word_arithmetic_questions(30, seed=1):
        a, op, b = r["question"][len("What is "):].split("?")[0].split(" ")
        assert int(r["target"]) == (words[a] + words[b] if op == "plus" else words[a] - words[b])
    d = date_questions(3, seed=0)
    assert all(r["source"] == "dates" and len(r["target"]) == 10 for r in d)


def test_question_sets_from_generated_sources(tmp_path):
    from tuneforge.calibration.questions import load_questions, write_question_sets
    from tuneforge.errors import UserError

    q_path, s_path = write_question_sets(tmp_path, ["arithmetic"], 60, ["words", "dates"], 21, seed=0)
    train, _ = load_questions(str(q_path))
    shift, _ = load_questions(str(s_path))
    assert len(train) == 60 and len(shift) == 21
    assert sum(q.source == "dates" for q in shift) == 10 and sum(q.source.startswith("words") for q in shift) == 11
    with pytest.raises(UserError, match="both a training source and a shift source"):
        write_question_sets(tmp_path, ["arithmetic"], 5, ["arithmetic"], 5)
    with pytest.raises(UserError, match="neither generated"):
        write_question_sets(tmp_path, ["algebra"], 5, ["dates"], 5)


def test_the_answer_number_follows_the_result_mark():
    from tuneforge.calibration.grade import answer_number, grade

    assert [answer_number(t) for t in ("4 + 9 = 13", "7 * 4 is 28.", "85", "The answer is 12.", "no number")] == \
        [13, 28, 85, 12, None]
    q = Question(question="What is 4 + 9?", targets=["13"])
    assert grade("4 + 9 = 13", q).correct and not grade("4 + 9 = 12", q).correct


def test_grading_summary_names_sources_near_chance():
    from tuneforge.calibration.questions import Graded
    from tuneforge.recipes.calibration.grade import grading_summary

    mc = Question(question="?", targets=["a"], options=["a", "b", "c", "d"], source="mc")
    graded = [Graded(mc, "A", i < 3, "choice") for i in range(10)]  # 30% on 4 options: chance 25%
    graded += [Graded(Q, "42", i < 3, "numeric") for i in range(10)]  # 30% on open questions: chance 0
    sources = grading_summary(graded)["sources"]
    assert sources["mc"]["chance"] == 0.25 and sources["mc"]["near_chance"]
    assert sources["arithmetic"]["chance"] == 0 and not sources["arithmetic"]["near_chance"]


def test_results_block_replaces_only_between_the_markers(tmp_path):
    from tuneforge.docs_block import markers, write_block
    from tuneforge.errors import UserError

    begin, end = markers("calibration")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\nbefore\n\n{begin}\nold numbers\n{end}\n\nafter\n")
    write_block(doc, "calibration", "| new | table |", "make calibration-demo", wall_seconds=600)
    text = doc.read_text()
    assert "old numbers" not in text and "| new | table |" in text and "`make calibration-demo`; 10 min" in text
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    doc.write_text("no markers here\n")
    with pytest.raises(UserError, match="needs one line"):
        write_block(doc, "calibration", "x", "cmd")


def test_vectorised_resamples_equal_the_scalar_metrics_row_by_row():
    # The bootstrap scores all resamples in one pass; each row must be what the metric itself says,
    # ties and single-class resamples (AUROC, Brier skill undefined -> NaN) included.
    from tuneforge.eval.uncertainty_stats import METRICS, _batch_metrics, _resamples

    rng = np.random.default_rng(3)
    for n in (3, 11, 97):
        p = np.round(rng.random(n), 1)  # coarse values: many ties
        y = rng.random(n) < 0.3
        rows = _resamples(n, 200, seed=n)
        batch = _batch_metrics(p, y, rows)
        for name, fn in METRICS.items():
            expected = [fn(p[r], y[r]) for r in rows]
            got = batch[name]
            for e, g in zip(expected, got):
                assert (e is None and np.isnan(g)) or g == pytest.approx(e, abs=1e-12), (n, name)
