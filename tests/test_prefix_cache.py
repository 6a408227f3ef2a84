"""Generation with a prefix cache: the same tokens as plain batched generation, with less read."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.eval.generate import generate, generation_config, render_prompt
from tuneforge.eval.prefix_cache import (PrefixCache, greedy_decode, plain_greedy, read_prompt,
                                         supports_prefix_cache)
from tuneforge.models.tiny import build_tiny_model

SYSTEM = "You are an agent. Tools: lookup(id), convert(amount, currency), multiply(a, b). Reply with one step."


def conversation(task: str, steps: int) -> list[dict]:
    """The prompt of step `steps` of a task: each later step extends the earlier one by two turns."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]
    for k in range(steps):
        msgs += [{"role": "assistant", "content": f"Step {k}: call lookup with id {k * 7}."},
                 {"role": "user", "content": f"Observation: value {k * 13} for {task[:12]}"}]
    return msgs


PROMPTS = [conversation(task, k) for task in ("Price of order 17 in euros", "Weight of item B-9", "Hi")
           for k in range(4)]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(request.param) / "m", arch=request.param, seed=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def test_same_tokens_as_plain_generation_and_less_read(tiny):
    model, tok = tiny
    assert supports_prefix_cache(model)
    expected = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=4)
    assert any(expected)
    cache = PrefixCache()
    assert generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=4, prefix_cache=cache) == expected
    # Later steps extend earlier ones and every task shares the system prompt: most tokens are reused.
    assert cache.reused_tokens > cache.read_tokens
    # A second call finds everything read already; each task's longest prompt is all that is kept.
    read = cache.read_tokens
    assert generate(model, tok, PROMPTS[::-1], max_new_tokens=10, batch_size=5, prefix_cache=cache) == expected[::-1]
    assert cache.read_tokens == read
    assert len(cache) == 3


def test_entries_beyond_the_budget_go_least_recently_used_first():
    def kv(n):
        return [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]

    cache = PrefixCache(max_bytes=kv(10)[0][0].nbytes * 2 * 5 // 2)  # room for two entries of 10 positions, not three
    a, b, c = (np.arange(10) + s for s in (0, 100, 200))
    cache.add(a, kv(10))
    cache.add(b, kv(10))
    n, entry = cache.longest(a)
    cache.touch(entry)
    cache.add(c, kv(10))  # b is the least recently used
    assert cache.longest(b)[0] == 0 and cache.longest(a)[0] == 10 and cache.longest(c)[0] == 10
    # an entry a newer prompt extends is replaced by it
    longer = np.concatenate([a, [7, 7]])
    cache.add(longer, kv(12), replaces=entry)
    assert len(cache) == 2 and cache.longest(a) == (10, cache.longest(longer)[1])
    # partial overlap: the shared prefix length
    assert cache.longest(np.concatenate([a[:4], [999]]))[0] == 4


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lively(request, tmp_path_factory):
    """A tiny model whose weights are redrawn large (seeded) so that greedy replies vary by prompt and
    step, unlike a freshly built tiny model, which repeats one token."""
    path = build_tiny_model(tmp_path_factory.mktemp(request.param) / "m", arch=request.param, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, AutoTokenizer.from_pretrained(path)


def plain_token_ids(model, tok, prompts, max_new_tokens):
    """transformers' greedy generate on the left-padded batch: the reference."""
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    batch = tok([render_prompt(tok, p) for p in prompts], padding=True, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**batch, generation_config=generation_config(model, tok, max_new_tokens))
    return out[:, batch["input_ids"].shape[1]:]


def test_rows_that_end_early_match_plain_generation(lively):
    """The greedy loop drops rows as they end and trims padding every kept row shares; what each row
    gets is still exactly what transformers' generate gives (fp32), at every batch size."""
    model, tok = lively
    saved = model.generation_config.eos_token_id
    assert plain_greedy(generation_config(model, tok, 12))  # the prompts below take the greedy loop
    ids = plain_token_ids(model, tok, PROMPTS, 12)
    # a token written first at different steps by different rows (and not by all) becomes an end of sequence
    firsts: dict[int, dict[int, int]] = {}  # token -> {row: first step}
    for r, row in enumerate(ids.tolist()):
        for step, t in enumerate(row):
            firsts.setdefault(t, {}).setdefault(r, step)
    stop = max((t for t, rows in firsts.items() if len(rows) < len(PROMPTS) and t != tok.eos_token_id),
               key=lambda t: (len(set(firsts[t].values())), len(firsts[t])))
    assert len(set(firsts[stop].values())) >= 2
    try:
        model.generation_config.eos_token_id = [tok.eos_token_id, stop]
        expected = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=len(PROMPTS))
        lengths = {len(tok(e, add_special_tokens=False)["input_ids"]) for e in expected}
        assert len(lengths) >= 2  # rows ended at different steps
        for batch_size in (3, 5, len(PROMPTS)):
            assert generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=batch_size,
                            prefix_cache=PrefixCache()) == expected
        # token ids too, end-of-sequence and padding included
        rows = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
        cache = PrefixCache()
        kvs = [read_prompt(model, r, cache) for r in rows]
        with torch.inference_mode():
            got = greedy_decode(model, rows, kvs, 12, [tok.eos_token_id, stop], tok.pad_token_id)
        reference = plain_token_ids(model, tok, PROMPTS, 12)
        assert torch.equal(got, reference[:, :got.shape[1]])
        assert (reference[:, got.shape[1]:] == tok.pad_token_id).all()
    finally:
        model.generation_config.eos_token_id = saved


def test_sampling_and_penalties_leave_the_greedy_loop(lively):
    model, tok = lively
    assert plain_greedy(generation_config(model, tok, 8))
    assert not plain_greedy(generation_config(model, tok, 8, temperature=0.7))
    assert not plain_greedy(generation_config(model, tok, 8, stop=["\n"]))
    config = generation_config(model, tok, 8)
    config.repetition_penalty = 1.3
    assert not plain_greedy(config)
    # and such a config still gives transformers' answer through the prefix cache
    expected = generate(model, tok, PROMPTS[:4], max_new_tokens=8, stop_at_newline=True)
    assert generate(model, tok, PROMPTS[:4], max_new_tokens=8, stop_at_newline=True, prefix_cache=PrefixCache()) == expected
