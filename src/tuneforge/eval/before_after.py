"""Score held-out examples with a model: generate answers and compare with a task metric, or loss."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence

from tuneforge.config import EvalConfig
from tuneforge.data.formats import Example
from tuneforge.eval.generate import generate
from tuneforge.eval.metrics import METRICS, corpus_score
from tuneforge.eval.statistics import bootstrap_ci, mcnemar, paired_bootstrap_diff


def _messages(example: Example) -> list[dict]:
    return [{"role": s.role, "content": s.text} for s in example.prompt_segments()]


def generative_examples(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """The first `limit` examples that have a prompt and a reference; read lazily, so a cache entry's
    held-out examples are decoded only as far as needed."""
    usable = (e for e in examples if e.prompt_segments() and e.segments[0].role != "text" and e.reference)
    return list(itertools.islice(usable, limit) if limit else usable)


# Fewer held-out examples than this are not cut for time: below it an interval says little.
MIN_TIMED_EXAMPLES = 64


def score_generations(model, tokenizer, examples: list[Example], cfg: EvalConfig, bf16: bool,
                      time_budget_s: float | None = None, log=None) -> dict:
    """Generate an answer per example and score it. With `time_budget_s`, the first batch is timed and
    only as many examples as fit are scored (never fewer than MIN_TIMED_EXAMPLES), said through `log`;
    "n" in the result is how many were scored, so a later evaluation can score the same ones."""
    prompts = [_messages(e) for e in examples]
    refs = [e.reference for e in examples]

    def answer(chunk: list) -> list[str]:
        return generate(model, tokenizer, chunk, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                        autocast_bf16=bf16)

    if time_budget_s is None or len(prompts) <= cfg.batch_size:
        preds = answer(prompts)
    else:
        start = time.perf_counter()
        preds = answer(prompts[:cfg.batch_size])
        per_batch = time.perf_counter() - start
        fits = cfg.batch_size * max(1, int(time_budget_s // max(per_batch, 1e-9)))
        n = min(len(prompts), max(fits, MIN_TIMED_EXAMPLES))
        if n < len(prompts) and log is not None:
            log(f"eval.time_budget_s {time_budget_s:.0f} s: a batch of {cfg.batch_size} took {per_batch:.1f} s, "
                f"so {n} of {len(prompts)} held-out examples are scored (before and after alike)")
        preds += answer(prompts[cfg.batch_size:n])
        refs = refs[:n]
    return {"score": corpus_score(cfg.metric, preds, refs), "predictions": preds, "n": len(preds)}


def compare(metric: str, before: list[str], after: list[str], refs: list[str]) -> dict:
    """Before and after on the same items: each score's 95% bootstrap interval over items, the paired
    difference with its interval, and for exact match McNemar's test on the items that changed."""
    fn = METRICS[metric]
    return compare_scores([fn(p, r) for p, r in zip(before, refs)], [fn(p, r) for p, r in zip(after, refs)],
                          binary=metric == "exact_match")


def compare_scores(before: list[float], after: list[float], binary: bool | None = None) -> dict:
    """The statistics of `compare` from per-item scores (item i of both lists is one item): intervals,
    the paired difference, and McNemar's test when every score is 0 or 1 (`binary` None: look)."""
    if binary is None:
        binary = all(x in (0.0, 1.0) for x in (*before, *after))
    out = {"n": len(before), "before_ci": list(bootstrap_ci(before)[1:]), "after_ci": list(bootstrap_ci(after)[1:]),
           "difference": list(paired_bootstrap_diff(after, before))}
    if binary:
        out["mcnemar"] = mcnemar([x == 1.0 for x in after], [x == 1.0 for x in before])
    return out


def loss_summary(loss: float) -> dict:
    return {"score": loss, "perplexity": math.exp(min(loss, 50))}
