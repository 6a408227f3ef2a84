"""Generated questions for calibration tuning: arithmetic of graded difficulty (the training set),
and two other distributions for the shift check (arithmetic written in words, date rewriting).

A calibration signal needs answers whose correctness varies item by item. Multiple-choice questions
at chance level do not have it (a right answer is a lucky guess); open arithmetic does: the answer
is graded exactly (a guess is almost never right), and difficulty runs from one-digit sums a small
model gets right to two-digit products it gets wrong.

Each level is its own source ("arithmetic 2d+2d"), so the per-source prior (the accuracy of each
level) is a reference row every method must beat: a method that only reads how many digits a
question has does not beat it, and the AUROC within a level asks whether it knows which of the
equally hard questions it got wrong.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    op: str  # "+", "-" or "*"
    digits_a: int
    digits_b: int

    @property
    def name(self) -> str:
        symbol = {"+": "+", "-": "-", "*": "x"}[self.op]
        return f"arithmetic {self.digits_a}d{symbol}{self.digits_b}d"


# Easiest first. The mix is chosen so the embedded 135M model answers somewhere between 30% and 70%
# overall (docs/calibration.md has the measured accuracy of each level).
LEVELS = (
    Level("+", 1, 1), Level("-", 1, 1), Level("*", 1, 1),
    Level("+", 2, 1), Level("+", 2, 2), Level("*", 2, 1),
)
PHRASING = "What is {a} {op} {b}? Give the result as a number."


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 1, 10 ** digits - 1)


def arithmetic_questions(n: int, seed: int = 0, levels: tuple[Level, ...] = LEVELS) -> list[dict]:
    """n question dicts (Question.to_dict form), spread evenly over `levels`, no question twice."""
    rng = random.Random(seed)
    out, seen = [], set()
    for i in range(n):
        level = levels[i % len(levels)]
        while True:
            a, b = _operand(rng, level.digits_a), _operand(rng, level.digits_b)
            if level.op == "-" and b > a:
                a, b = b, a  # results stay non-negative
            if (level, a, b) not in seen:
                seen.add((level, a, b))
                break
        value = {"+": a + b, "-": a - b, "*": a * b}[level.op]
        shown = "*" if level.op == "*" else level.op
        out.append({"question": PHRASING.format(a=a, op=shown, b=b), "target": str(value), "targets": [str(value)],
                    "options": None, "context": None, "source": level.name, "where": f"arithmetic[{i}]"})
    rng.shuffle(out)
    return out


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0..99 in English words ("forty-two")."""
    if not 0 <= n < 100:
        raise ValueError(f"number_words covers 0..99, not {n}")
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])


def word_arithmetic_questions(n: int, seed: int = 0) -> list[dict]:
    """Sums and differences of numbers up to 99 written in words ("What is forty-two plus seven?"):
    the training skill in another form, answered with digits."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        a, b = rng.randint(1, 60), rng.randint(1, 39)
        op = rng.choice(["plus", "minus"])
        if op == "minus" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = a + b if op == "plus" else a - b
        out.append({"question": f"What is {number_words(a)} {op} {number_words(b)}? Give the result as a number.",
                    "target": str(value), "targets": [str(value)], "options": None, "context": None,
                    "source": f"words {op}", "where": f"words[{len(out)}]"})
    return out


def date_questions(n: int, seed: int = 0) -> list[dict]:
    """Rewrite a human-written date as YYYY-MM-DD (the demo task): another skill entirely."""
    from tuneforge.data.demo_tasks import make_dates_examples

    return [{"question": f"{d['instruction']}\n{d['input']}", "target": d["output"], "targets": [d["output"]],
             "options": None, "context": None, "source": "dates", "where": f"dates[{i}]"}
            for i, d in enumerate(make_dates_examples(n, seed))]


GENERATED = {"arithmetic": arithmetic_questions, "words": word_arithmetic_questions, "dates": date_questions}
