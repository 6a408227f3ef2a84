"""Score held-out examples with a model: generate answers and compare with a task metric, or loss."""

from __future__ import annotations

import math

from tuneforge.config import EvalConfig
from tuneforge.data.formats import Example
from tuneforge.eval.generate import generate
from tuneforge.eval.metrics import corpus_score


def _messages(example: Example) -> list[dict]:
    return [{"role": s.role, "content": s.text} for s in example.prompt_segments()]


def generative_examples(examples: list[Example], limit: int | None) -> list[Example]:
    usable = [e for e in examples if e.prompt_segments() and e.segments[0].role != "text" and e.reference]
    return usable[:limit] if limit else usable


def score_generations(model, tokenizer, examples: list[Example], cfg: EvalConfig, bf16: bool) -> dict:
    prompts = [_messages(e) for e in examples]
    preds = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                     autocast_bf16=bf16)
    refs = [e.reference for e in examples]
    return {"score": corpus_score(cfg.metric, preds, refs), "predictions": preds}


def loss_summary(loss: float) -> dict:
    return {"score": loss, "perplexity": math.exp(min(loss, 50))}
