"""Training queries from graded answers: both classes present, and a skewed set balanced (loss weights or
upsampling), because a model that always says "yes" to a 70%-correct set already gets a low loss and
learns nothing."""

from __future__ import annotations

import random
from typing import Callable

from tuneforge.calibration.questions import Graded
from tuneforge.calibration.query import QuerySpec, encode_query
from tuneforge.data.render import Encoded
from tuneforge.errors import UserError


def check_both_classes(labels: list[bool], where: str) -> tuple[int, int]:
    right = sum(labels)
    wrong = len(labels) - right
    if not labels:
        raise UserError(f"{where}: no graded answers in the train split; give more questions")
    if right == 0 or wrong == 0:
        only = "correct" if wrong == 0 else "wrong"
        raise UserError(f"{where}: all {len(labels)} training answers are {only}, so there is nothing to tell apart; "
                        "calibration tuning needs both right and wrong answers: use questions of mixed "
                        "difficulty for this model (or more of them)")
    return right, wrong


def balance(encoded: list[Encoded], labels: list[bool], mode: str, seed: int) -> list[Encoded]:
    """Weight (inverse class frequency, mean weight 1) or upsample the rarer class to parity."""
    right = sum(labels)
    wrong = len(labels) - right
    if mode == "weight":
        w = {True: len(labels) / (2 * right), False: len(labels) / (2 * wrong)}
        for e, y in zip(encoded, labels):
            e.weight = w[y]
        return encoded
    if mode == "upsample":
        minority = [e for e, y in zip(encoded, labels) if y == (right < wrong)]
        extra = abs(right - wrong)
        rng = random.Random(seed)
        return encoded + [minority[rng.randrange(len(minority))] for _ in range(extra)]
    return encoded


def encode_items(items: list[Graded], tokenizer, spec: QuerySpec, max_length: int,
                 answering: Callable[[Graded], list[dict]] | None = None) -> tuple[list[Encoded], list[bool], int]:
    """Queries of graded answers; `answering(g)`: the chat that asked for g's answer, when the
    regulariser reads the answer under it (see encode_query)."""
    encoded, labels, dropped = [], [], 0
    for g in items:
        e = encode_query(tokenizer, g.question, g.answer, g.correct, spec, max_length,
                         answering(g) if answering else None)
        if e is None:
            dropped += 1
            continue
        encoded.append(e)
        labels.append(g.correct)
    return encoded, labels, dropped
