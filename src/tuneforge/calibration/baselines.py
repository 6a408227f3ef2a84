"""The untuned ways to get a confidence, against which calibration tuning is judged.

zero-shot classifier: the uncertainty query to the untuned model, P(yes) over the two options
    (computed with calibration.query.score_queries on the base model).
verbalized: ask the model for a percentage and parse it; unparseable replies count as 0.5.
sampling: draw several answers at a temperature; the confidence is the share that agree with the
    greedy answer (agreement judged like grading: same option, same number, same normalised text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneforge.calibration.grade import grade, picked_option
from tuneforge.calibration.questions import Question
from tuneforge.calibration.query import question_block
from tuneforge.eval.generate import generate

VERBALIZED_PROMPT = ("{block}\n\nProposed answer: {answer}\n\n"
                     "How likely is it that the proposed answer is correct? "
                     "Reply with a percentage between 0% and 100%.")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(%|percent)?", re.IGNORECASE)


def parse_verbalized(text: str) -> float | None:
    """A confidence in [0, 1] from replies like '80%', '0.8', 'about 75 percent'; None if there is none.

    A bare number up to 1 reads as a probability, up to 100 as a percentage; anything else is
    unparseable rather than guessed.
    """
    m = _NUMBER.search(text.replace(",", ""))
    if not m:
        return None
    value = float(m.group(1))
    if m.group(2) or value > 1:
        return value / 100 if value <= 100 else None
    return value


@dataclass
class Verbalized:
    confidence: list[float]
    replies: list[str]
    unparsed: int  # replies without a usable number, scored 0.5


def verbalized_confidence(model, tokenizer, questions: list[Question], answers: list[str],
                          max_new_tokens: int = 8, batch_size: int = 16) -> Verbalized:
    prompts = [VERBALIZED_PROMPT.format(block=question_block(q), answer=a.strip()) for q, a in zip(questions, answers)]
    replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       stop_at_newline=True)
    parsed = [parse_verbalized(r) for r in replies]
    return Verbalized([0.5 if p is None else p for p in parsed], replies, sum(p is None for p in parsed))


def agrees(sample: str, greedy: str, q: Question, tolerance: float = 1e-4) -> bool:
    """Whether a sampled answer says the same as the greedy one, using the graders' notion of same."""
    if not greedy.strip():
        return not sample.strip()
    if q.options:
        chosen = picked_option(greedy, q)
        if chosen is not None:
            return picked_option(sample, q) == chosen
    reference = Question(question=q.question, targets=[greedy.strip()])
    return grade(sample, reference, graders=("numeric", "exact"), tolerance=tolerance).correct


def sampling_confidence(model, tokenizer, prompts: list, greedy: list[str], questions: list[Question],
                        samples: int = 5, temperature: float = 1.0, max_new_tokens: int = 24,
                        batch_size: int = 16, seed: int = 0) -> list[float]:
    """Share of `samples` sampled answers per prompt that agree with that prompt's greedy answer."""
    repeated = [p for p in prompts for _ in range(samples)]
    drawn = generate(model, tokenizer, repeated, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     temperature=temperature, stop_at_newline=True, seed=seed)
    out = []
    for i, (q, g) in enumerate(zip(questions, greedy)):
        mine = drawn[i * samples:(i + 1) * samples]
        out.append(sum(agrees(s, g, q) for s in mine) / samples)
    return out
