"""Answer with a calibrated confidence: what `generate --confidence`, `chat --confidence` and the server call.

The answer comes from the untuned model (adapter off), exactly as the graded answers did in
training, and the confidence from the tuned uncertainty query with the fitted Platt scaling (or the
fitted temperature in runs without one), so the number means what the evaluation measured.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.calibration.artifact import CalibrationModels, load_calibration_info
from tuneforge.calibration.questions import Question
from tuneforge.calibration.query import (QuerySpec, answer_messages, margin_to_confidence, platt_confidence, query_text,
                                         score_queries)
from tuneforge.eval.generate import generate
from tuneforge.models.load import SAFE, LoadPolicy


class ConfidenceModel:
    def __init__(self, run: str | Path, policy: LoadPolicy = SAFE):
        self.run = Path(run)
        self.info = load_calibration_info(self.run)
        self.models = CalibrationModels(self.run, self.info, policy)
        self.tokenizer = self.models.tokenizer
        self.spec = QuerySpec.from_dict(self.info)
        self.temperature = float(self.info.get("temperature", 1.0))
        self.platt = self.info.get("platt")  # {"scale", "bias"}: fitted on validation, it subsumes the temperature

    def confidence(self, questions: list[Question], answers: list[str]) -> list[float]:
        texts = [query_text(self.tokenizer, q, a, self.spec) for q, a in zip(questions, answers)]
        margins, _ = score_queries(self.models.tuned, self.tokenizer, texts, self.spec)
        if self.platt:
            return platt_confidence(margins, self.platt["scale"], self.platt["bias"])
        return margin_to_confidence(margins, self.temperature)

    def answer_many(self, questions: list[str | Question], max_new_tokens: int | None = None) -> list[tuple[str, float]]:
        qs = [q if isinstance(q, Question) else Question(question=q, targets=[]) for q in questions]
        prompts = [answer_messages(q, [], self.info["instruction_choice"], self.info["instruction_open"]) for q in qs]
        with self.models.base() as base:
            answers = generate(base, self.tokenizer, prompts, stop_at_newline=True,
                               max_new_tokens=max_new_tokens or self.info.get("answer_max_new_tokens", 24))
        return list(zip(answers, self.confidence(qs, answers)))

    def answer(self, question: str | Question, max_new_tokens: int | None = None) -> tuple[str, float]:
        return self.answer_many([question], max_new_tokens)[0]
