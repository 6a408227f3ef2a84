"""Decide whether a model's answer is right, so calibration tuning has labels to learn from.

Cheap rules come first (option picked, number within tolerance, normalised exact match, target
inside the answer); an optional judge model then rechecks open-ended answers the rules call wrong,
since a correct paraphrase ("six geese" for "6 geese a-laying") defeats every string rule.
Each Graded records which rule decided, so reports can show how much each one contributed.
"""

from __future__ import annotations

import re

from tuneforge.calibration.questions import Graded, Question
from tuneforge.errors import UserError
from tuneforge.eval.generate import generate
from tuneforge.eval.metrics import normalize_answer

GRADERS = ("choice", "numeric", "exact", "substring")
RULE_GRADERS = GRADERS  # decisions a judge may overturn ("given" labels and "empty" answers stay)


def _check_graders(graders) -> tuple[str, ...]:
    graders = (graders,) if isinstance(graders, str) else tuple(graders)
    unknown = [g for g in graders if g not in GRADERS]
    if unknown or not graders:
        raise UserError(f"unknown grader(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                        f"choose from {', '.join(GRADERS)}")
    return graders


# ---------------------------------------------------------------------------------------------
# Multiple choice

# "Answer:", "The answer is", "The correct option is (", ... before the letter.
_LEAD_IN = re.compile(
    r"(?:the\s+)?(?:correct\s+|final\s+|best\s+|right\s+)?(?:answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*"
    r"(?:option\s+|choice\s+)?", re.I)
# A letter only counts when punctuation or the end marks it as one: "B", "B.", "B)", "(B)", "B: ...".
# An upper-case letter followed by a plain space ("A bank") is a word, not a choice.
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)|([A-Za-z])\)")
_MARKED_LETTER = re.compile(r"([A-Z])(?:[.:]|\s+[-\u2013\u2014]\s)")
_ALONE_LETTER = re.compile(r"([A-Za-z])[.:]?\s*(?:\n|$)")


def _strip_decoration(text: str) -> str:
    return text.strip().strip("*_\"'`").strip()


def _letter_and_rest(answer: str) -> tuple[str, str] | None:
    """The option letter the answer starts with (after an optional "Answer:" lead-in), and the text after it."""
    text = _strip_decoration(answer)
    lead = _LEAD_IN.match(text)
    candidates = [text] + ([_strip_decoration(text[lead.end():])] if lead and lead.end() else [])
    for candidate in candidates:
        for pattern in (_PAREN_LETTER, _ALONE_LETTER, _MARKED_LETTER):
            m = pattern.match(candidate)
            if m:
                letter = next(g for g in m.groups() if g)
                return letter.upper(), candidate[m.end():]
    return None


def _contains(haystack: str, needle: str) -> bool:
    """Word-boundary containment of normalised texts (tokens are single-space separated)."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def _option_by_text(text: str, options: list[str]) -> int | None:
    """The single option the text names: equal after normalisation, else the only one it contains."""
    said = normalize_answer(text)
    if not said:
        return None
    norm = [normalize_answer(o) for o in options]
    equal = [i for i, o in enumerate(norm) if o and o == said]
    if len(equal) == 1:
        return equal[0]
    inside = [i for i, o in enumerate(norm) if _contains(said, o)]
    # "river bank" contains option "bank" too; the longer mention is the one meant.
    inside = [i for i in inside if not any(j != i and norm[j] != norm[i] and _contains(norm[j], norm[i])
                                           for j in inside)]
    return inside[0] if len(inside) == 1 else None


def picked_option(answer: str, q: Question) -> int | None:
    """Index of the option the answer picks, or None when it picks none or is ambiguous.

    A letter wins unless the text after it names a different option ("A. library" when A is
    "bank"): such an answer contradicts itself and counts as no pick.
    """
    options = q.options or []
    found = _letter_and_rest(answer)
    if found and found[0] in q.letters:
        index = q.letters.index(found[0])
        rest = normalize_answer(found[1])
        if rest:
            others = [i for i, o in enumerate(options) if i != index and normalize_answer(o) == rest]
            if others and normalize_answer(options[index]) != rest:
                return None
        return index
    return _option_by_text(answer, options)


# ---------------------------------------------------------------------------------------------
# Numbers

# A number not glued to a word ("H2O", "x2" are not numbers): -3.5, 1,200, .5, 12.
_NUMBER = re.compile(r"(?<![\w.])(-)?((?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|\.\d+)")


def first_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if not m:
        return None
    value = float(m.group(2).replace(",", ""))
    return -value if m.group(1) else value


_RESULT_MARK = re.compile(r"=|\bis\b|\bequals\b", re.I)


def answer_number(text: str) -> float | None:
    """The number an answer gives: the first after its last "=", "is" or "equals" that has one
    (small models echo the sum before the result: "4 + 9 = 13", "7 * 4 is 28"), else its first."""
    for mark in reversed(list(_RESULT_MARK.finditer(text))):
        after = first_number(text[mark.end():])
        if after is not None:
            return after
    return first_number(text)


def _numeric(answer: str, targets: list[str], tolerance: float) -> bool | None:
    """None when the rule does not apply: no target holds a number, or the answer has none."""
    wanted = [n for n in (first_number(t) for t in targets) if n is not None]
    got = answer_number(answer)
    if not wanted or got is None:
        return None
    return any(abs(got - b) <= tolerance * max(1.0, abs(b)) for b in wanted)


# ---------------------------------------------------------------------------------------------
# Grading

def grade(answer: str, q: Question, graders=GRADERS, tolerance: float = 1e-4) -> Graded:
    """Grade one answer with the enabled rules, in the order of GRADERS; the first that applies decides."""
    enabled = _check_graders(graders)
    if not answer or not answer.strip():
        return Graded(q, answer or "", False, "empty")
    if q.options and "choice" in enabled:
        index = picked_option(answer, q)
        correct = index is not None and q.letters[index] == q.answer_letter
        return Graded(q, answer, correct, "choice")
    if "numeric" in enabled:
        verdict = _numeric(answer, q.targets, tolerance)
        if verdict is not None:
            return Graded(q, answer, verdict, "numeric")
    said = normalize_answer(answer)
    wanted = [t for t in (normalize_answer(t) for t in q.targets) if t]
    if "exact" in enabled and said and said in wanted:
        return Graded(q, answer, True, "exact")
    if "substring" in enabled and any(_contains(said, t) for t in wanted):
        return Graded(q, answer, True, "substring")
    last = [g for g in GRADERS if g in enabled][-1]
    return Graded(q, answer, False, last)


# ---------------------------------------------------------------------------------------------
# Judge

JUDGE_PROMPT = ("Question: {question}\nReference answer: {reference}\nProposed answer: {answer}\n"
                "Does the proposed answer mean the same as the reference answer? Answer yes or no.")
_YES_NO = re.compile(r"[\W_]*(yes|no)\b", re.I)


def parse_yes_no(text: str) -> bool:
    """True only for a leading "yes"; "no" and anything unreadable count as not equivalent."""
    m = _YES_NO.match(text or "")
    return bool(m) and m.group(1).lower() == "yes"


def judge_equivalent(model, tokenizer, items: list[tuple[str, str, str]], batch_size: int = 16) -> list[bool]:
    """Ask the model whether each (question, reference, answer) answer means the reference."""
    if not items:
        return []
    prompts = [JUDGE_PROMPT.format(question=q, reference=r, answer=a) for q, r, a in items]
    replies = generate(model, tokenizer, prompts, max_new_tokens=3, batch_size=batch_size, stop_at_newline=True)
    return [parse_yes_no(r) for r in replies]


def _judgeable(g: Graded) -> bool:
    q = g.question
    return (not g.correct and not q.options and bool(q.targets) and bool(g.answer.strip())
            and g.grader in RULE_GRADERS)


def regrade_with_judge(graded: list[Graded], model, tokenizer, batch_size: int = 16) -> int:
    """Let the judge rescue open-ended answers the rules marked wrong; returns how many it flipped.

    Multiple-choice picks are exact already, and empty answers or given labels are not the rules'
    verdicts, so only those items go to the (slow) judge. The first reference is the one shown.
    """
    todo = [g for g in graded if _judgeable(g)]
    verdicts = judge_equivalent(model, tokenizer, [(g.question.question, g.question.targets[0], g.answer)
                                                   for g in todo], batch_size=batch_size)
    flipped = 0
    for g, same in zip(todo, verdicts):
        if same:
            g.correct, g.grader = True, "judge"
            flipped += 1
    return flipped
