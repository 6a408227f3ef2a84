"""The `passkey` suite: can the model find a number hidden at a given depth of a prompt of a given length?

A grid of prompt lengths (tokens, or multiples of the model's trained context) by depths, `per_cell`
seeded keys per cell. The reply is right when its first number is exactly the key. Reports the
accuracy over all prompts (`acc`), per length (`acc@LENGTH`), per depth (`acc@depthD`) and the whole
grid. Prompts of one length have exactly that many tokens (data/passkey.py), so a batch needs no padding.
"""

from __future__ import annotations

import random
import re

import torch

from tuneforge.config import SuiteConfig
from tuneforge.data.passkey import PasskeyBuilder, PasskeyPrompt, make_key
from tuneforge.errors import UserError
from tuneforge.eval.generate import generation_autocast, generation_config
from tuneforge.models.rope import trained_context

TOKENS_PER_BATCH = 16384  # long prompts go a few at a time: activation memory grows with the batch's tokens
_NUMBER = re.compile(r"\d+")


def suite_lengths(suite: SuiteConfig, model_config) -> list[int]:
    """The prompt lengths: `lengths` as given, and `context_multiples` x the model's trained context."""
    base = trained_context(model_config) if suite.context_multiples else 0
    lengths = sorted({*suite.lengths, *(int(m * base) for m in suite.context_multiples)})
    if not lengths:
        raise UserError(f"suite '{suite.name}': kind passkey needs `lengths` (tokens, e.g. [1024, 2048]) or "
                        "`context_multiples` (of the model's trained context, e.g. [1, 2])")
    return lengths


def passkey_prompts(builder: PasskeyBuilder, suite: SuiteConfig, lengths: list[int],
                    seed: int = 0) -> list[tuple[int, float, PasskeyPrompt]]:
    """(length, depth, prompt) for every cell of the grid, per_cell seeded keys each."""
    out = []
    for length in lengths:
        for depth in suite.depths:
            rng = random.Random(f"{seed}:{suite.name}:{length}:{depth}")
            out += [(length, depth, builder.build(length, depth, make_key(rng))) for _ in range(suite.per_cell)]
    return out


def answer_is_key(reply: str, key: str) -> bool:
    found = _NUMBER.search(reply)
    return found is not None and found.group() == key


def generate_replies(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies to prompts of one length (no padding needed), a few long prompts per batch."""
    device = next(model.parameters()).device
    per_batch = max(1, min(batch_size, TOKENS_PER_BATCH // max(1, len(prompts[0]))))
    gen_config = generation_config(model, tokenizer, max_new_tokens)
    replies: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), generation_autocast(device, device.type == "cuda"):
            for start in range(0, len(prompts), per_batch):
                ids = torch.tensor(prompts[start:start + per_batch], device=device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_config)
                replies += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return replies


def scoring_copy(model, bf16_cpu: bool):
    """The model to answer long prompts with. On a CPU with native bf16, a bf16 copy: a long prompt's
    cost is its prefill, which runs ~3x faster in bf16 weights than in fp32 (8,192 tokens: 8.6 against
    26.8 s, 2 AMX cores), and autocast instead would re-cast every weight at every decode step. The
    copy leaves a training model's fp32 weights as they are. Elsewhere the model itself (CUDA autocasts)."""
    from tuneforge.models.quantize import is_quantized

    if not bf16_cpu or is_quantized(model):  # a quantized base refuses a cast; it computes in its compute dtype
        return model
    import copy

    return copy.deepcopy(model).to(torch.bfloat16).eval()


def _share(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def score_grid(cells: list[tuple[int, float, bool]]) -> dict:
    """acc, acc@LENGTH, acc@depthD and grid {length: {depth: acc}} from (length, depth, right) triples."""
    lengths = sorted({c[0] for c in cells})
    depths = sorted({c[1] for c in cells})
    result: dict = {"acc": _share([c[2] for c in cells]), "n": len(cells)}
    for length in lengths:
        result[f"acc@{length}"] = _share([c[2] for c in cells if c[0] == length])
    for depth in depths:
        result[f"acc@depth{depth:g}"] = _share([c[2] for c in cells if c[1] == depth])
    result["grid"] = {str(length): {f"{depth:g}": _share([c[2] for c in cells if c[:2] == (length, depth)])
                                    for depth in depths} for length in lengths}
    return result


def run_passkey_suite(model, tokenizer, suite: SuiteConfig, seed: int = 0, batch_size: int = 16,
                      generate=generate_replies) -> dict:
    """Score one model on the suite's grid; `generate` maps (model, tokenizer, ids, max_new_tokens,
    batch_size) to replies (a stand-in can be passed to test the scoring alone)."""
    lengths = suite_lengths(suite, model.config)
    prompts = passkey_prompts(PasskeyBuilder(tokenizer, suite.system_prompt), suite, lengths, seed)
    cells, samples = [], []
    for length in lengths:
        group = [(d, p) for n, d, p in prompts if n == length]
        replies = generate(model, tokenizer, [p.ids for _, p in group], suite.max_new_tokens, batch_size)
        for (depth, prompt), reply in zip(group, replies):
            right = answer_is_key(reply, prompt.key)
            cells.append((length, depth, right))
            if sum(s["length"] == length for s in samples) < 2:  # two per length for the report
                samples.append({"length": length, "depth": depth, "key": prompt.key,
                                "prediction": reply.strip()[:80], "right": right})
    # Per prompt, in grid order (the same order for every model on the same suite and seed): what paired
    # comparisons of two models read (recipes/long_context.py).
    return score_grid(cells) | {"lengths": lengths, "main_metric": "acc", "samples": samples,
                                "per_prompt": [[length, depth, right] for length, depth, right in cells]}
