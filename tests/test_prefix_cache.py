"""Generation with a prefix cache: the same tokens as plain batched generation, with less read."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.eval.generate import generate
from tuneforge.eval.prefix_cache import PrefixCache, supports_prefix_cache
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
